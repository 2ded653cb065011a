"""Several devices, several processes and split sweeps, on fake CPU devices and 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import NO_MODEL_FLAG, ROOT, run_cli

from batchlab import config, record, results
from batchlab.distributed import parse_mesh, shard_of
from batchlab.errors import ConfigError

FIXED = ["--peak_flops=1e11", "--bandwidth=1e10", "--noplot"]


def env_with_devices(n):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")


def run_with_devices(n, *args, module="experiments.sweep"):
    """`python -m MODULE ARGS` with n fake CPU devices; returns the CompletedProcess."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            *([NO_MODEL_FLAG] if module == "experiments.sweep" else []),
            *args,
        ],
        cwd=ROOT,
        env=env_with_devices(n),
        capture_output=True,
        text=True,
        timeout=300,
    )


def load(out):
    return results.load(os.path.join(out, results.RESULTS))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(args, flagfile="configs/smoke.flags"):
    """A sweep (the smoke one by default) as processes 0 and 1 of one job on 127.0.0.1."""
    common = [
        f"--flagfile={flagfile}",
        "--num_processes=2",
        f"--coordinator_address=127.0.0.1:{free_port()}",
        *FIXED,
        *args,
    ]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.sweep", *common, f"--process_id={i}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]


def test_sharded_workloads_equal_single_device():
    proc = run_with_devices(8, module="tests.sharded_check")
    assert proc.returncode == 0, proc.stderr[-2000:]
    checked = [ln.split(" P(")[0] for ln in proc.stdout.splitlines()]
    assert checked == [
        "OK mlp",
        "OK decode",
        "OK prefill",
        "OK moe_layer",
        "OK moe_decode",
        *(
            f"OK ep {router} {mesh}"
            for router in ("token_choice", "dropless", "expert_choice")
            for mesh in ("expert:8", "data:2,expert:4")
        ),
        "OK ep device groups",
    ]


def test_data_sharded_sweep_records_mesh_and_per_device_share(tmp_path):
    out = tmp_path / "m"
    proc = run_with_devices(
        4,
        "--flagfile=configs/smoke.flags",
        f"--out_dir={out}",
        "--mesh=data:4",
        "--batch_sizes=4,16",
        *FIXED,
    )
    assert proc.returncode == 0, proc.stderr
    for r in load(out):
        assert r["mesh"] == {"data": 4} and r["per_device_batch"] == r["batch"] // 4
        assert r["shardings"]["inputs"] == ["P('data', None)"]
        assert r["cost_per_device"]["flops"] == pytest.approx(r["cost"]["flops"] / 4)
        assert r["cost_per_device"]["weight_bytes"] == r["cost"]["weight_bytes"]
        assert r["prediction"]["t_math_s"] == pytest.approx(
            r["cost_per_device"]["flops"] / r["ceilings"]["peak_flops"]
        )


MOE_SMOKE = "configs/smoke/moe_layer.flags"
EP_ARGS = ["--routers=token_choice", "--dispatches=slots", "--batch_sizes=4,64"]


def test_expert_parallel_sweep_records_layout_and_collective(tmp_path):
    out = tmp_path / "ep"
    proc = run_with_devices(
        4, f"--flagfile={MOE_SMOKE}", *EP_ARGS, *FIXED, f"--out_dir={out}", "--mesh=expert:4"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (small, big) = sorted(load(out), key=lambda r: r["batch"])
    assert big["mesh"] == {"expert": 4} and big["per_device_batch"] == 16
    assert big["shardings"]["experts"] == "P('expert',)"
    assert big["shardings"]["tokens"] == "P('expert', None)"
    assert big["metrics"]["dispatch"] == {
        "chosen": "all_to_all",
        "routing_group": "batch",
        "buffer_capacity": 16,
    }
    # By hand, 64 tokens on 4 devices, E=8, k=2, cf=1, D=64, fp32: C = 2·64/8 = 16 rows
    # per expert, min(C, 16 local tokens) = 16 rows sent to each expert, 8·16 rows in all;
    # all_to_all there and back sends 3/4 of 2·128·64·4 bytes, the logits all_gather
    # 4·(64 − 16)·8 bytes.
    collective = 3 / 4 * 2 * 128 * 64 * 4 + 4 * 48 * 8
    assert big["cost_per_device"]["collective_bytes"] == pytest.approx(collective)
    # No interconnect in the calibrated ceilings: the collective goes through memory.
    assert big["prediction"]["t_collective_s"] == pytest.approx(collective / 1e10)
    # Each device reads its 2 of the 8 experts (3 matrices of 64×128) and the router.
    assert big["cost_per_device"]["weight_bytes"] == 4 * (64 * 8 + 2 * 3 * 64 * 128)
    assert small["metrics"]["dispatch"]["buffer_capacity"] == 1  # C = 1 at 4 tokens


def test_two_processes_run_an_expert_parallel_sweep(tmp_path):
    out = tmp_path / "ep2"
    args = [*EP_ARGS, f"--out_dir={out}", "--mesh=expert:2", "--distributed_timeout_s=30"]
    procs = start_two_processes(args, flagfile=MOE_SMOKE)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-1500:] + outs[1][1][-1500:]
    records = load(out)
    assert sorted(r["batch"] for r in records) == [4, 64]
    for r in records:
        assert r["status"] == "ok" and r["provenance"]["process_count"] == 2
        assert r["mesh"] == {"expert": 2} and r["cost_per_device"]["collective_bytes"] > 0


def test_mesh_parsing():
    assert parse_mesh("data:2,expert:4") == (("data", 2), ("expert", 4))
    assert parse_mesh("") == ()
    for bad in ("data", "data:0", "data:2,data:2", "Data:2"):
        with pytest.raises(ConfigError, match="--mesh"):
            parse_mesh(bad)


BAD = [
    (["--mesh=data:2", "--batch_sizes=2"], "--mesh: data:2 needs 2 devices; there are 1"),
    (["--mesh=expert:1"], "--mesh: axis 'expert' is not used by model mlp"),
    (["--mesh=data:2", "--batch_sizes=3"], "--batch_sizes: 3 does not split"),
    (["--num_processes=2", "--process_id=2"], "--process_id=2: must be in 0..1"),
    (["--num_shards=2", "--shard_index=2"], "--shard_index=2: must be in 0..1"),
    (
        ["--model=moe_layer", "--depths=", "--experts=6", "--mesh=expert:4", "--batch_sizes=4"],
        "--experts: 6 does not split over the mesh's expert axis of 4 devices",
    ),
]


@pytest.mark.parametrize("args,message", BAD, ids=str)
def test_bad_scale_out_input_gets_one_clear_line(args, message, tmp_path):
    out = tmp_path / "o"
    proc = run_cli("--flagfile=configs/smoke.flags", f"--out_dir={out}", *args, *FIXED)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists()


def test_two_processes_run_the_sweep_and_only_process_0_writes(tmp_path):
    out, single = tmp_path / "two", tmp_path / "one"
    common = [f"--out_dir={out}", "--distributed_timeout_s=30"]
    procs = start_two_processes(common)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-1500:] + outs[1][1][-1500:]
    assert "[1/3]" in outs[0][0] and "[1/" not in outs[1][0]  # only process 0 reports
    two = load(out)
    assert len(two) == 3 and all(r["provenance"]["process_count"] == 2 for r in two)
    one = run_cli("--flagfile=configs/smoke.flags", f"--out_dir={single}", "--noisolate", *FIXED)
    assert one.returncode == 0, one.stderr
    assert sorted(r["id"] for r in two) == sorted(r["id"] for r in load(single))


def test_killed_worker_resumes_its_shard_with_no_point_lost_or_repeated(tmp_path):
    out = tmp_path / "split"
    args = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--flagfile=configs/smoke.flags",
        f"--out_dir={out}",
        "--num_shards=2",
        "--shard_index=0",
        "--noisolate",
        "--batch_sizes=1,2,3,4,5,6,7,8",
        "--time_budget_s=0.5",
        "--target_spread=1e-6",
        *FIXED,
    ]
    shard = out / "shard-0-of-2"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not load(shard) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # until the first point is on disk
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = len(load(shard))
    assert first >= 1
    assert run_cli(*args[3:]).returncode == 0  # the same command again
    cfg = config.build(
        "mlp",
        {"depths": ["2"], "widths": ["64"]},
        [str(b) for b in range(1, 9)],
        out_dir=str(shard),
    )
    mine = sorted(
        record.point_id("mlp", p, b)
        for p, b in config.grid_points(cfg)
        if shard_of(record.point_id("mlp", p, b), 2) == 0
    )
    ids = [r["id"] for r in load(shard)]
    assert sorted(ids) == mine and len(ids) == len(set(ids))


def test_merge_combines_shards_and_refuses_different_configs(tmp_path):
    out = tmp_path / "m"
    for i in (0, 1):
        proc = run_cli(
            "--flagfile=configs/smoke.flags",
            f"--out_dir={out}",
            "--num_shards=2",
            f"--shard_index={i}",
            "--batch_sizes=1,2,4,8",
            "--noisolate",  # what is merged, not how it was measured
            *FIXED,
        )
        assert proc.returncode == 0, proc.stderr
    merged = run_cli(str(out), module="experiments.merge")
    assert merged.returncode == 0, merged.stderr
    assert sorted(r["batch"] for r in load(out)) == [1, 2, 4, 8]
    other = tmp_path / "other"
    assert (
        run_cli(
            "--flagfile=configs/smoke.flags",
            f"--out_dir={other}",
            "--dtype=bfloat16",
            "--noisolate",
            *FIXED,
        ).returncode
        == 0
    )
    refused = run_cli(
        str(tmp_path / "x"), str(out / "shard-0-of-2"), str(other), module="experiments.merge"
    )
    assert refused.returncode == 2 and "different config" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "x").exists()


def test_a_dead_process_fails_the_others_within_the_timeout(tmp_path):
    common = [
        f"--out_dir={tmp_path / 'o'}",
        "--distributed_timeout_s=5",
        "--batch_sizes=1,2,3,4,5,6,7,8,9,10,11,12",
        "--time_budget_s=1",
        "--target_spread=1e-6",
    ]
    procs = start_two_processes(common)
    deadline = time.time() + 120
    while not load(tmp_path / "o") and time.time() < deadline:
        time.sleep(0.1)  # both processes are measuring
    procs[1].kill()
    killed_at = time.time()
    _, err = procs[0].communicate(timeout=90)
    assert procs[0].returncode != 0
    assert time.time() - killed_at < 60  # bounded: a 5 s heartbeat, not a hang
    assert "heartbeat" in err or "distributed service detected fatal errors" in err
