"""The sweep under kills, races, full disks, corrupt state and hostile results
directories: nothing lost, nothing measured twice, one line and no traceback.

Tiny MLP sweeps with fixed ceilings keep each run to seconds; supervisor logic is also
driven by fake workers (a `python -c` that does what a dying worker does), which need
no JAX at all.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_FLAGS, ROOT, make_config, run_cli

from batchlab import combine, files, isolation, record, report, results, summary, sweep
from batchlab.config import grid_points
from batchlab.errors import ConfigError
from batchlab.report import sources

FAST = [*FAST_FLAGS, "--noplot"]
TINY = ["--model=mlp", "--depths=1", "--widths=16", *FAST]
BATCHES = "--batch_sizes=1,2,3,4,5,6,7,8"
IDS = {f"mlp/depth=1,input_width=0,width=16/b={b}" for b in range(1, 9)}


def start(args, env=None, module="experiments.sweep"):
    """`python -m MODULE ARGS` in a process group of its own (so that its worker can be
    found and the whole group killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def live(group: int) -> list[int]:
    """The processes of a process group that still run (zombies excluded)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                pids.append(int(name))
    return pids


def children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(name))
    return out


def wait_gone(group: int, within: float = 5.0) -> float:
    """Seconds until no process of `group` runs; fails after `within`."""
    t0 = time.monotonic()
    while live(group):
        assert time.monotonic() - t0 < within, f"still running: {live(group)}"
        time.sleep(0.01)
    return time.monotonic() - t0


def wait_for(path: Path, within: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < within, f"{path} never appeared"
        time.sleep(0.02)


def lines_of(out: Path) -> list[bytes]:
    """The complete lines of OUT/results.jsonl, each checked to be a valid record."""
    data = (out / results.RESULTS).read_bytes()
    complete = data.split(b"\n")[:-1]
    for raw in complete:
        record.parse(raw.decode())  # raises on an invalid line
    return complete


def assert_each_point_once(out: Path) -> None:
    data = (out / results.RESULTS).read_bytes()
    assert data.endswith(b"\n")
    ids = [json.loads(raw)["id"] for raw in lines_of(out)]
    assert sorted(ids) == sorted(IDS), ids
    leftovers = [n for n in os.listdir(out) if n.endswith(".tmp") or n == results.INFLIGHT]
    assert not leftovers and not (out / files.LOCK).exists()


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished supervised sweep of the tiny MLP, to copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli(*TINY, "--batch_sizes=1,2", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    return out


# ---- 1. one writer per OUT_DIR -------------------------------------------------------------


def test_a_second_sweep_is_refused_in_one_line_naming_the_first(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = snapshot(out)
    with files.DirLock(str(out), "--out_dir", "sweep"):
        proc = run_cli(*TINY, "--batch_sizes=1,2,4", f"--out_dir={out}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: --out_dir={out}: sweep pid {os.getpid()} on host ")
    assert socket.gethostname() in line and "is writing there" in line
    assert " ".join(sys.argv) in line  # the command of the holder
    assert snapshot(out) == before  # nothing written, not even a lock file left


def test_two_sweeps_started_together_measure_each_point_once(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, BATCHES, f"--out_dir={out}"]
    procs = [start(args), start(args)]
    outcomes = sorted((p.wait(timeout=120), p.stderr.read()) for p in procs)
    (ok, _), (refused, err) = outcomes
    assert ok == 0 and refused == 2, outcomes
    assert "is writing there" in err and err.count("\n") == 1 and "Traceback" not in err
    assert_each_point_once(out)


def test_the_lock_dies_with_its_holder(tmp_path):
    code = (
        "import sys, time; from batchlab import files; "
        f"files.DirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    assert "pid" in files.holder(str(tmp_path))
    with pytest.raises(ConfigError, match="is writing there"):
        files.DirLock(str(tmp_path)).__enter__()
    holder.kill()  # no chance to clean up: the kernel lets go of the lock
    holder.wait()
    assert (tmp_path / files.LOCK).exists() and files.holder(str(tmp_path)) is None
    with files.DirLock(str(tmp_path)):
        pass
    assert not (tmp_path / files.LOCK).exists()


def test_merge_report_and_plot_never_write_into_a_directory_a_sweep_holds(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shard = tmp_path / "merged" / "shard-0-of-1"
    shutil.copytree(finished, shard)
    before = snapshot(out)
    with files.DirLock(str(out), "--out_dir", "sweep"):
        with pytest.raises(ConfigError, match="is writing there"):
            report.build(report.ReportConfig((str(finished),), str(out)), warn=lambda m: None)
        with pytest.raises(ConfigError, match="is writing there"):
            combine.combine([str(shard)], str(out), warn=lambda m: None)
        with pytest.raises(ConfigError, match="still writing there"):
            combine.combine([str(out)], str(tmp_path / "elsewhere"), warn=lambda m: None)
        proc = run_cli(str(out), module="experiments.plot")
        assert proc.returncode == 2 and "is writing there" in proc.stderr
        warnings = []
        assert sources.read([str(out)], warnings.append).records()  # reading is fine
        assert any("still writing there; read as it is now" in w for w in warnings)
    assert snapshot(out) == before


# ---- 2. the worker never outlives its supervisor; signals stop both ------------------------


def test_the_worker_dies_with_its_supervisor(tmp_path):
    out = tmp_path / "run"
    proc = start([*TINY, BATCHES, "--time_budget_s=0.3", f"--out_dir={out}"])
    wait_for(out / results.INFLIGHT)  # the worker is measuring
    assert children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(proc.pid, within=2.0) < 2.0
    again = run_cli(*TINY, BATCHES, f"--out_dir={out}")  # the same command, at once
    assert again.returncode == 0, again.stderr
    assert_each_point_once(out)


@pytest.mark.parametrize("how", ["SIGTERM to the sweep", "SIGINT to the group (Ctrl-C)"])
def test_sigterm_and_sigint_stop_both_with_one_line(how, tmp_path):
    out = tmp_path / "run"
    proc = start([*TINY, BATCHES, "--time_budget_s=0.3", f"--out_dir={out}"])
    wait_for(out / results.RESULTS)  # a point is done, the next one being measured
    signum = signal.SIGTERM if "TERM" in how else signal.SIGINT
    if "group" in how:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert err == f"interrupted ({name}); run the same command again to resume\n"
    wait_gone(proc.pid, within=2.0)
    assert not (out / results.INFLIGHT).exists() and not (out / files.LOCK).exists()
    lines_of(out)
    again = run_cli(*TINY, BATCHES, f"--out_dir={out}")
    assert again.returncode == 0, again.stderr
    assert_each_point_once(out)


def test_kills_at_random_moments_lose_nothing_and_measure_nothing_twice(tmp_path):
    """Seeded: the sweep, its worker or the whole group is killed (or told to stop) at a
    random moment, six times; then the same command finishes the grid."""
    rng = random.Random(13)
    out = tmp_path / "run"
    args = [*TINY, BATCHES, "--time_budget_s=0.05", f"--out_dir={out}"]
    ways = ["kill the sweep", "kill the worker", "kill the group", "SIGTERM", "SIGINT (Ctrl-C)"]
    t0 = time.monotonic()
    for _ in range(6):
        proc = start(args)
        time.sleep(rng.uniform(0.3, 4.0))
        how = rng.choice(ways)
        worker = children(proc.pid)
        if how == "kill the worker" and worker:
            os.kill(worker[0], signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 1.0))  # the supervisor records it, then on
            os.killpg(proc.pid, signal.SIGKILL)
        elif how in ("kill the sweep", "kill the worker"):
            os.kill(proc.pid, signal.SIGKILL)
        elif how == "kill the group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err
        wait_gone(proc.pid)
        if (out / results.RESULTS).exists():
            lines_of(out)  # every complete line valid (a torn tail is cut off later)
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr
    assert_each_point_once(out)
    print(f"fault injection: {time.monotonic() - t0:.1f} s")


# ---- 3. exactly once ------------------------------------------------------------------------


def _ok(pid: str) -> dict:
    return {"id": pid, "status": "ok", "schema": 2, "model": "mlp"}


@pytest.mark.parametrize("tail", [b'{"id": "mlp/x/b=9", "stat', b"\0" * 700])
def test_a_torn_tail_is_moved_aside_before_the_next_append(tail, tmp_path):
    path = tmp_path / results.RESULTS
    path.write_bytes(json.dumps(_ok("a")).encode() + b"\n" + tail)
    warnings = []
    results.append(str(path), _ok("b"), warn=warnings.append)
    (warning,) = warnings
    quarantine = f"{path}{files.QUARANTINE_SUFFIX}"
    assert quarantine in warning and f"{len(tail)} bytes" in warning
    assert Path(quarantine).read_bytes() == tail + b"\n"
    assert [r["id"] for r in results.load(str(path), complete=False)] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n")


def test_a_sweep_resuming_after_a_torn_line_measures_the_point_once(tmp_path):
    cfg = make_config(tmp_path, batch_sizes=("1", "2"))
    sweep.run_job(cfg, "# test\n", log=lambda m: None)
    path = tmp_path / results.RESULTS
    first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + second[:100])  # killed while writing the second point
    logs = []
    assert sweep.run_job(cfg, "# test\n", log=logs.append) == 0
    assert any("a write cut short" in m and files.QUARANTINE_SUFFIX in m for m in logs)
    ids = [r["id"] for r in results.load(str(path))]
    assert len(ids) == 2 and len(set(ids)) == 2


def test_a_worker_killed_just_after_writing_its_record_gets_no_crash_record(tmp_path):
    """A fake worker does what a killed one does: writes inflight.json, appends the
    point's ok record, and dies by SIGKILL before it can remove inflight.json."""
    cfg = make_config(tmp_path, batch_sizes=("1",), isolate=True)
    ((point, batch),) = grid_points(cfg)
    pid = record.point_id("mlp", point, batch)
    os.makedirs(tmp_path, exist_ok=True)
    script = f"""
import json, os, signal
from batchlab import results
out = {str(tmp_path)!r}
results.write_json_atomic(os.path.join(out, "inflight.json"),
    {{"id": {pid!r}, "params": {point!r}, "batch": {batch}, "results_size": 0}})
results.append(os.path.join(out, "results.jsonl"), {_ok(pid)!r})
os.kill(os.getpid(), signal.SIGKILL)
"""
    rc = isolation._supervise([sys.executable, "-c", script], cfg, lambda m: None, ())
    assert rc == 0
    assert [r["status"] for r in results.load(str(tmp_path / results.RESULTS), complete=False)] == [
        "ok"
    ]
    assert not (tmp_path / results.INFLIGHT).exists()


def test_the_duplicate_rule():
    ok, crash, error = _ok("p"), _ok("p") | {"status": "failed", "failure": "crash"}, None
    error = _ok("p") | {"status": "failed", "failure": "error"}
    assert record.latest([ok, crash])["p"] is ok  # never replaced by a later failure
    assert record.latest([error, ok])["p"] is ok  # a retried point supersedes its failure
    assert record.latest([error, crash])["p"] is crash  # else the later wins
    assert record.latest([ok, dict(ok, n=2)])["p"]["n"] == 2


HOSTILE = [
    b"[" * 100_000,  # nested too deep for the parser
    b"{" + b'"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"id": "x", "status": "ok"}\0\0\0',
    b"\0" * 64,
    b"\xff\xfe not utf-8",
    b"[1, 2]",
    b'"a string"',
    b"1e999999",
    b'{"id": ["a"], "status": "ok"}',
    b'{"id": "k", "status": "ok", "kind": ["sweep"]}',
    b'{"id": "t", "status": "ok", "model": "mlp", "time": "fast"}',
    b'{"id": "f", "status": "failed", "model": "mlp", "params": 3, "batch": 1}',
    b'{"id": "g", "status": "failed", "model": "mlp", "params": {}, "batch": 1, "dtype": [1]}',
    b'{"id": "torn at the end", "st',
]


def test_a_reader_survives_any_line_and_names_it(smoke_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke_dir, out)
    path = out / results.RESULTS
    good = path.read_bytes()
    path.write_bytes(good + b"\n".join(HOSTILE))
    warnings = []
    recs = results.load(str(path), warnings.append)
    assert len(recs) == good.count(b"\n") and len(warnings) == len(HOSTILE)
    n = good.count(b"\n")
    assert [w.split(": skipped")[0] for w in warnings] == [
        f"{path}:{n + i}" for i in range(1, len(HOSTILE) + 1)
    ]
    # Every reader of the directory goes on with the good records.
    assert "critical batch" in summary.table(results.load(str(path)))
    assert sources.read([str(out)], lambda m: None).records()
    cfg = make_config(
        out,
        grid={"depths": ["2"], "widths": ["32", "64"]},
        batch_sizes=("1", "2", "4", "8"),
        predict_for=("t4",),
    )
    assert sweep.pending(cfg, log=lambda m: None) == []
    proc = run_cli(str(out), module="experiments.plot")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


# ---- 4. out of memory is named; 9. the per-point time limit --------------------------------


def test_out_of_memory_and_a_hung_point_are_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        *FAST,
        "--family_modules=tests.hostile_family",
        "--model=hostile",
        "--batch_sizes=1,2,4,6,8",
        "--point_timeout_s=3",
        f"--out_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    by_batch = {r["batch"]: r for r in results.load(str(out / results.RESULTS))}
    assert sorted(by_batch) == [1, 2, 4, 6, 8]
    assert by_batch[1]["status"] == by_batch[8]["status"] == "ok"
    hung = by_batch[2]
    assert (hung["status"], hung["failure"]) == ("failed", "timeout")
    assert hung["error"] == "timeout: still measuring after --point_timeout_s=3 s"
    for b in (4, 6):  # XLA's allocator refused, then numpy's MemoryError
        r = by_batch[b]
        assert (r["status"], r["failure"]) == ("failed", "oom")
        assert r["error"].startswith("out of memory (the cost model's working set ")
        assert r["memory"]["cost_model_bytes"] == sweep.working_set_bytes(
            make_config(out, model="hostile", grid={}, family_modules=("hostile_family",)),
            {"size": 16},
            b,
        )
    xla = by_batch[4]["memory"]
    assert xla["failed_allocation_bytes"] == 4 * 2**38  # what it tried to allocate
    assert xla["memory_analysis"]["temp_size_in_bytes"] >= 4 * 2**38  # the compile knew
    assert "XLA's temporaries 1.1 TB" in by_batch[4]["error"]


def test_a_worker_that_cannot_start_says_why_in_one_line(tmp_path):
    # The module raises MemoryError when imported by the measuring process only.
    proc = run_cli(
        *FAST,
        "--family_modules=tests.unstartable_family",
        "--model=unstartable",
        "--batch_sizes=1",
        f"--out_dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: out of memory in the measuring process, before a point")


def _fake_worker(script: str, tmp_path, inflight: bool):
    cfg = make_config(tmp_path / "run", batch_sizes=("1",), isolate=True)
    ((point, batch),) = grid_points(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if inflight:
        pid = record.point_id("mlp", point, batch)
        state = {"id": pid, "params": point, "batch": batch, "cost_model_bytes": 1536}
        results.write_json_atomic(os.path.join(cfg.out_dir, results.INFLIGHT), state)
    return cfg, [sys.executable, "-c", script]


ABORTS_ON_BAD_ALLOC = (
    "import os, sys; "
    "sys.stderr.write(\"terminate called after throwing an instance of 'std::bad_alloc'\\n\"); "
    "sys.stderr.flush(); os.abort()"
)


def test_an_abort_on_bad_alloc_is_named_out_of_memory(tmp_path, capfd):
    cfg, cmd = _fake_worker(ABORTS_ON_BAD_ALLOC, tmp_path, inflight=True)
    assert isolation._supervise(cmd, cfg, lambda m: None, ()) == 0
    (r,) = results.load(os.path.join(cfg.out_dir, results.RESULTS))
    assert (r["status"], r["failure"]) == ("failed", "oom")
    assert r["error"] == (
        "out of memory (the cost model's working set 1.54 kB): worker process killed by "
        "SIGABRT: it aborted on std::bad_alloc"
    )
    assert "bad_alloc" in capfd.readouterr().err  # the worker's stderr passed through
    # Before any point: one line, and what killed it.
    cfg, cmd = _fake_worker(ABORTS_ON_BAD_ALLOC, tmp_path / "2", inflight=False)
    with pytest.raises(ConfigError, match=r"ended before it measured a point \(killed by "
                       r"SIGABRT; out of memory: it aborted on std::bad_alloc\)$"):  # fmt: skip
        isolation._supervise(cmd, cfg, lambda m: None, ())


# ---- 5. a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, or a skip saying why there can be none here."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
    except OSError as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves `leave` bytes free on `disk`."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    free = st.f_bavail * st.f_frsize + (filler.stat().st_size if filler.exists() else 0)
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def no_temporaries(d: Path) -> bool:
    return not [p for p in d.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_is_one_line_and_the_same_command_finishes_after(small_disk):
    out = small_disk / "run"
    args = [*TINY, BATCHES, f"--out_dir={out}"]
    filler = fill(small_disk, 0)  # full before it starts
    proc = run_cli(*args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: no space left on device writing {out}/")
    assert not out.exists() and no_temporaries(small_disk)

    fill(small_disk, 6 * 4096)  # room for the state files and a few records
    proc = run_cli(*args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: no space left on device writing {out}/"), line
    assert 0 < len(lines_of(out)) < 8
    assert (out / results.RESULTS).read_bytes().endswith(b"\n")  # no partial line
    assert no_temporaries(small_disk) and not (out / results.INFLIGHT).exists()

    filler.unlink()  # space freed: the same command completes every point
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert_each_point_once(out)

    fill(small_disk, 0)  # a plot on a full disk: one line, no half plot.png
    proc = run_cli(str(out), module="experiments.plot")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no space left on device writing")
    assert not (out / results.PLOT).exists() and no_temporaries(small_disk)


# ---- 6. state files validated before anything is written; no link followed -----------------


STATE = [
    ("config.json", b'{"fingerprint": {"model": "ml', "config.json: not valid JSON"),
    ("config.json", b"[1, 2]", "config.json: not a JSON object (a list)"),
    ("config.json", b'{"someone": "else"}', "config.json: not a batchlab config.json"),
    ("calibration.json", b'{"cpu|float32|default": ', "calibration.json: not valid JSON"),
    ("calibration.json", b'{"cpu": {"peak_flops": -1}}', "calibration.json: entry 'cpu'"),
    ("inflight.json", b"{", "inflight.json: not valid JSON"),
    ("inflight.json", b'{"id": 3}', "inflight.json: not the point a sweep was measuring"),
    ("flags.txt", b"\x00\xff\xfe", "flags.txt: not a flagfile a sweep wrote"),
]
WAY_OUT = {
    "config.json": "choose another --out_dir",
    "calibration.json": "use --recalibrate or a new --out_dir",
    "inflight.json": "remove it",
    "flags.txt": "remove it",
}


@pytest.mark.parametrize("name,content,message", STATE, ids=lambda x: str(x)[:30])
def test_a_corrupt_or_foreign_state_file_is_refused_and_nothing_changes(
    name, content, message, finished, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / name).write_bytes(content)
    before = snapshot(out)
    proc = run_cli(*TINY, "--batch_sizes=1,2,4", f"--out_dir={out}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert message in line and WAY_OUT[name] in line and str(out) in line, line
    assert snapshot(out) == before


def test_a_link_planted_in_out_dir_is_refused_and_never_followed(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / results.RESULTS).rename(tmp_path / "moved")
    (out / results.RESULTS).symlink_to(victim)
    proc = run_cli(*TINY, "--batch_sizes=1,2,4", f"--out_dir={out}")
    assert proc.returncode == 2 and "results.jsonl there is not a plain file" in proc.stderr
    assert victim.read_text() == "precious"
    # A replace writes a new file where a link was; it never writes through it.
    link = tmp_path / "config.json"
    link.symlink_to(victim)
    files.write_atomic(str(link), "{}")
    assert victim.read_text() == "precious" and not link.is_symlink()


# ---- 7. every entry point: one line, exit 2 -------------------------------------------------


def test_a_bad_slurm_variable_is_one_line_naming_it(tmp_path):
    env = os.environ | {"SLURM_ARRAY_TASK_ID": "seven", "SLURM_ARRAY_TASK_COUNT": "8"}
    proc = run_cli("--dry_run", f"--out_dir={tmp_path / 'o'}", env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "error: $SLURM_ARRAY_TASK_ID='seven': not an integer (SLURM sets it for job arrays); "
        "unset it or give --shard_index\n"
    )


def test_an_out_dir_that_cannot_be_made_is_one_line():
    proc = run_cli(*TINY, "--batch_sizes=1", "--out_dir=/proc/batchlab/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: --out_dir=/proc/batchlab/x: cannot create it")


def test_report_and_merge_with_no_valid_input_exit_nonzero(tmp_path):
    empty, invalid = tmp_path / "empty", tmp_path / "invalid"
    empty.mkdir()
    invalid.mkdir()
    (invalid / results.RESULTS).write_text("not json\n[1]\n")
    (invalid / results.CONFIG).write_text('{"fingerprint": {}, "config": {}}')
    for d in (empty, tmp_path / "missing", invalid):
        out = tmp_path / f"report_{d.name}"
        proc = run_cli(str(d), f"--out_dir={out}", module="experiments.report")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.splitlines()[-1].startswith(f"error: no valid records in {d}")
        assert not out.exists()
    shards = tmp_path / "shards"
    for i in (0, 1):
        shutil.copytree(invalid, shards / f"shard-{i}-of-2")
    proc = run_cli(str(shards), module="experiments.merge")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: no valid records in")
    assert not (shards / results.RESULTS).exists()


def test_merge_of_odd_shard_directories_is_one_line(finished, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(finished, shards / "shard-0-of-2")
    shutil.copytree(finished, shards / "shard-1-of-2")
    (shards / "shard-x-of-2").mkdir()  # an unexpected name beside the shards
    proc = run_cli(str(shards), module="experiments.merge")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {shards / 'shard-x-of-2'}: not a shard-I-of-N directory" in proc.stderr
    (shards / "shard-1-of-2" / results.CONFIG).write_text('{"fingerprint": {"mo')  # truncated
    proc = run_cli(str(shards), module="experiments.merge")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert line.startswith(f"error: {shards / 'shard-1-of-2' / results.CONFIG}: not valid JSON")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run_cli(str(blocker), str(shards / "shard-0-of-2"), module="experiments.merge")
    assert (
        proc.returncode == 2 and proc.stderr == f"error: {blocker}: exists and is not a directory\n"
    )


def test_a_damaged_checkpoint_names_its_step_directory_and_the_way_out(tmp_path):
    args = [
        "--methods=none",
        "--width=16",
        "--ffn_width=16",
        "--experts=4",
        "--clusters=4",
        "--tokens=64",
        "--checkpoint_every=5",
        "--eval_tokens=64",
        "--noplot",
        f"--out_dir={tmp_path}",
    ]
    first = run_cli(*args, "--steps=5", module="experiments.train_router")
    assert first.returncode == 0, first.stderr
    step = tmp_path / "none" / "checkpoints" / "5"
    for manifest in step.rglob("manifest.ocdbt"):
        manifest.write_bytes(os.urandom(100))
    proc = run_cli(*args, "--steps=10", module="experiments.train_router")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert f"the checkpoint of step 5 ({step}) cannot be restored" in line
    assert line.endswith("delete that step's directory to resume from an earlier checkpoint, "
                         "or choose another --out_dir")  # fmt: skip


# ---- 8. reading results runs no code from them -----------------------------------------------


def test_a_results_directory_naming_a_module_does_not_import_it(finished, tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = tmp_path / "IMPORTED"
    (mods / "evil_family.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    d = tmp_path / "theirs"
    shutil.copytree(finished, d)
    saved = json.loads((d / results.CONFIG).read_text())
    saved["fingerprint"]["family_modules"] = saved["config"]["family_modules"] = ["evil_family"]
    (d / results.CONFIG).write_text(json.dumps(saved))
    recs = results.load(str(d / results.RESULTS))
    alien = [r | {"model": "evil", "id": r["id"].replace("mlp", "evil")} for r in recs]
    with open(d / results.RESULTS, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in alien)
    for i in (0, 1):
        shutil.copytree(d, tmp_path / "split" / f"shard-{i}-of-2")
    env = os.environ | {"PYTHONPATH": f"{mods}{os.pathsep}{ROOT}"}

    def cli(module, *args):
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )

    reported = cli("experiments.report", d, f"--out_dir={tmp_path / 'report'}")
    assert reported.returncode == 0, reported.stderr
    assert "family evil not known here" in reported.stderr  # named, read from its fields
    assert cli("experiments.plot", d).returncode == 0
    assert cli("experiments.merge", tmp_path / "split").returncode == 0
    resumed = cli("experiments.sweep", *TINY, "--batch_sizes=1", f"--out_dir={d}")
    assert resumed.returncode == 2 and "different config" in resumed.stderr
    assert not marker.exists()
