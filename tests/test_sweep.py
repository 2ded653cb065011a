"""The sweep engine end to end: records, resume, failures, isolation, plots."""

import gzip
import json
import os
from pathlib import Path

import pytest
from conftest import make_config, run_cli, run_in_process

from batchlab import plotting, record, results, summary, sweep
from batchlab.config import grid_points
from batchlab.errors import ConfigError
from batchlab.record import point_id


def load(out_dir):
    return results.load(os.path.join(out_dir, results.RESULTS))


def test_one_record_per_point_with_provenance_and_prediction(smoke_dir):
    records = load(smoke_dir)
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    assert len({r["id"] for r in records}) == 8
    r = records[0]
    assert r["schema"] == record.SCHEMA_VERSION
    for key in (
        "batchlab",
        "jax",
        "jaxlib",
        "flax",
        "backend",
        "device_kind",
        "device_count",
        "host",
        "git_commit",
        "timestamp",
        "xla_flags",
    ):
        assert key in r["provenance"]
    t = r["time"]
    assert t["min_s"] <= t["median_s"] and t["count"] >= 3 and t["iqr_s"] >= 0
    # The stored prediction follows from the stored cost and ceilings.
    c, ceil, p = r["cost"], r["ceilings"], r["prediction"]
    assert p["t_mem_s"] == pytest.approx(c["total_bytes"] / ceil["bandwidth"])
    assert p["t_math_s"] == pytest.approx(c["flops"] / ceil["peak_flops"])
    assert p["rel_error"] == pytest.approx(t["median_s"] / p["lower_s"] - 1)
    assert r["time_per_example_s"] == pytest.approx(t["median_s"] / r["batch"])
    assert r["xla"]["cost_analysis"]["flops"] == pytest.approx(c["flops"], rel=0.02)


def test_rerun_resumes_without_measuring_again(smoke_dir):
    cfg = make_config(
        smoke_dir,
        grid={"depths": ["2"], "widths": ["32", "64"]},
        batch_sizes=("1", "2", "4", "8", "16"),
    )
    before = load(smoke_dir)
    assert sweep.pending(cfg) == [
        (
            {"depth": 2, "width": 32, "input_width": 0},
            16,
            "mlp/depth=2,input_width=0,width=32/b=16",
        ),
        (
            {"depth": 2, "width": 64, "input_width": 0},
            16,
            "mlp/depth=2,input_width=0,width=64/b=16",
        ),
    ]
    assert before == load(smoke_dir)


def test_interrupted_sweep_resumes_with_no_point_lost_or_repeated(tmp_path):
    cfg = make_config(tmp_path, batch_sizes=("1", "2", "4", "8"))
    calls = []

    def interrupt_at_third_point(line):
        calls.append(line)
        if len(calls) == 3:  # after the second point's record: like Ctrl-C mid-sweep
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_process(cfg, log=interrupt_at_third_point)
    assert len(load(tmp_path)) == 2
    assert run_in_process(cfg) == 0
    ids = [r["id"] for r in load(tmp_path)]
    expected = [point_id("mlp", p, b) for p, b in grid_points(cfg)]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))


def test_torn_last_line_is_skipped_and_remeasured(tmp_path):
    cfg = make_config(tmp_path, batch_sizes=("1", "2"))
    run_in_process(cfg)
    path = os.path.join(tmp_path, results.RESULTS)
    lines = Path(path).read_text().splitlines()
    with open(path, "w") as f:
        f.write(lines[0] + "\n" + lines[1][:40])  # a crash mid-write
    warnings = []
    assert len(results.load(path, warn=warnings.append)) == 1
    assert "results.jsonl:2" in warnings[0]
    assert len(sweep.pending(cfg, log=lambda m: None)) == 1


def test_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    cfg = make_config(
        tmp_path,
        model="fault",
        grid={},
        batch_sizes=("1", "3", "4"),
        family_modules=("fault_family",),
    )
    assert run_in_process(cfg) == 0
    by_batch = {r["batch"]: r for r in load(tmp_path)}
    assert by_batch[3]["status"] == "failed" and by_batch[3]["failure"] == "error"
    assert "deliberate failure" in by_batch[3]["error"]
    assert "fault_family.py" in by_batch[3]["traceback"]  # where it broke
    assert by_batch[1]["status"] == by_batch[4]["status"] == "ok"
    assert "1 point(s) failed" in summary.table(load(tmp_path))
    # Failed points are retried only when asked.
    assert sweep.pending(cfg) == []
    retry = make_config(
        tmp_path,
        model="fault",
        grid={},
        batch_sizes=("1", "3", "4"),
        family_modules=("fault_family",),
        retry_failed=True,
    )
    assert [b for _, b, _ in sweep.pending(retry)] == [3]


def test_out_of_memory_asks_for_a_fresh_process(tmp_path):
    cfg = make_config(
        tmp_path,
        model="fault",
        grid={},
        batch_sizes=("7", "8"),
        family_modules=("fault_family",),
        isolate=True,
    )
    assert run_in_process(cfg) == sweep.RESTART_EXIT_CODE
    (r,) = load(tmp_path)
    assert r["failure"] == "oom" and r["batch"] == 7


def test_crash_is_isolated_recorded_and_the_sweep_finishes(tmp_path):
    """A segfault at b=5 and an OOM at b=7 in child processes; the CLI still finishes."""
    out = tmp_path / "crash"
    proc = run_cli(
        "--family_modules=tests.fault_family",
        "--model=fault",
        "--batch_sizes=1,5,7,8",
        f"--out_dir={out}",
        "--time_budget_s=0.05",
        "--min_reps=3",
        "--peak_flops=1e11",
        "--bandwidth=1e10",
        "--noplot",
    )
    assert proc.returncode == 0, proc.stderr
    by_batch = {r["batch"]: r for r in load(out)}
    assert sorted(by_batch) == [1, 5, 7, 8]
    assert by_batch[5]["failure"] == "crash" and "SIGSEGV" in by_batch[5]["error"]
    assert by_batch[7]["failure"] == "oom"
    assert by_batch[1]["status"] == by_batch[8]["status"] == "ok"
    assert not os.path.exists(out / results.INFLIGHT)


def test_results_from_a_different_config_are_refused(smoke_dir):
    other = make_config(smoke_dir, numerics=make_config(smoke_dir).numerics.__class__("bfloat16"))
    with pytest.raises(ConfigError, match="different config.*dtype 'float32' there"):
        sweep.check_out_dir(other)


def test_config_round_trips_through_json(smoke_dir):
    saved = json.loads((smoke_dir / results.CONFIG).read_text())
    cfg = make_config(
        smoke_dir,
        grid={"depths": ["2"], "widths": ["32", "64"]},
        batch_sizes=("1", "2", "4", "8"),
        predict_for=("t4",),
    )
    assert type(cfg).from_json(saved["config"]) == cfg


def test_plot_is_written(smoke_dir, tmp_path):
    path = plotting.plot_records(load(smoke_dir), str(tmp_path / "p.png"))
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000


def test_summary_table_lists_every_point_and_the_critical_batch(smoke_dir):
    text = summary.table(load(smoke_dir))
    assert text.count("width=32") >= 1 and text.count("width=64") >= 1
    assert text.count("critical batch: predicted") == 2
    assert "on NVIDIA T4" in text and "median |measured/predicted - 1|" in text


def test_profile_traces_and_compilation_cache(tmp_path):
    out, trace, cache = tmp_path / "run", tmp_path / "trace", tmp_path / "cc"
    args = [
        "--flagfile=configs/smoke.flags",
        f"--out_dir={out}",
        f"--profile_dir={trace}",
        "--profile_batches=4",
        f"--compilation_cache_dir={cache}",
        "--peak_flops=1e11",
        "--bandwidth=1e10",
        "--noplot",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    traced = os.listdir(trace)
    assert traced == ["mlp__depth2_input_width0_width64__b4"]  # only the selected batch
    assert list((trace / traced[0]).rglob("*.xplane.pb"))
    # Each traced call is annotated with the point's id (what XProf and Perfetto show).
    (events,) = list((trace / traced[0]).rglob("*.trace.json.gz"))
    names = {e.get("name") for e in json.loads(gzip.decompress(events.read_bytes()))["traceEvents"]}
    assert "mlp/depth=2,input_width=0,width=64/b=4" in names
    assert "mlp/depth=2,input_width=0,width=64/b=1" not in names
    assert any(name.startswith("jit_apply") for name in os.listdir(cache))
    assert all(r["compile"]["cache_dir"] == str(cache) for r in load(out))
