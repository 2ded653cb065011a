"""What a first GPU or TPU run relies on, checked on this CPU: one process per device (the
supervisor never starts a JAX backend), the child's environment and versions in
provenance, a worker with a broken device context replaced, a multi-host TPU slice
without --distributed refused at once, and a dry run that says device memory was not
probed."""

import json
import os
import subprocess
import sys

import device_fault_family as fam
import pytest
from conftest import FAST_FLAGS, ROOT, make_config, run_cli

from batchlab import distributed, faults, isolation, record, reproduce, results, sweep
from batchlab.config import grid_points

FAST = FAST_FLAGS
TINY = ["--model=mlp", "--depths=1", "--widths=16", "--batch_sizes=1,2", *FAST]


# Runs experiments.sweep in this process as `python -m` would, then says on stderr whether
# anything in it started a JAX backend (after the summary and plots; not in an atexit
# hook, since jax's own clears its backends first).
NO_BACKEND_WRAPPER = """
import runpy, sys

sys.argv = ["experiments.sweep", *sys.argv[1:]]
try:
    runpy.run_module("experiments.sweep", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
from jax._src import xla_bridge
sys.stderr.write(f"\\nPARENT_BACKENDS={xla_bridge.backends_are_initialized()}\\n")
sys.exit(code)
"""


def load(out):
    return results.load(os.path.join(out, results.RESULTS))


# ---- 1. one process per device ------------------------------------------------------------


@pytest.mark.parametrize("recalibrate", [False, True])
def test_the_supervisor_never_starts_a_backend_and_the_worker_inherits_its_env(
    recalibrate, tmp_path
):
    out = tmp_path / "run"
    args = [*TINY, f"--out_dir={out}"] + (["--recalibrate"] if recalibrate else [])
    env = os.environ | {"JAX_PLATFORMS": "cpu", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    proc = subprocess.run(
        [sys.executable, "-c", NO_BACKEND_WRAPPER, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "PARENT_BACKENDS=False" in proc.stderr  # the parent: no backend, even at exit
    rs = load(out)
    assert len(rs) == 2 and all(r["status"] == "ok" for r in rs)
    assert (out / "plot.png").exists()  # the parent drew the plots without a backend
    for r in rs:  # the child measured, with the parent's environment
        prov = r["provenance"]
        assert prov["backend"] == "cpu" and prov["platform_version"]
        assert prov["env"]["JAX_PLATFORMS"] == "cpu"
        assert prov["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        assert prov["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] is None
        assert prov["cuda_driver"] is prov["cuda_runtime"] is prov["cudnn"] is None  # CPU


def test_the_wrapper_would_see_a_backend_the_parent_started(tmp_path):
    """The check above can fail: a parent that asks jax for its devices is caught."""
    script = NO_BACKEND_WRAPPER.replace(
        'runpy.run_module("experiments.sweep", run_name="__main__", alter_sys=True)',
        "import jax; jax.devices()",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "PARENT_BACKENDS=True" in proc.stderr


# ---- 2. a worker with a broken device context is replaced --------------------------------

# (text, platform, expected): each pattern of faults.py tried with a sample of what the
# device's stack prints, and texts that must not count.
FAULTS = [
    ("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered", "gpu", True),
    ("Check failed: cuStreamSynchronize failed: CUDA_ERROR_LAUNCH_FAILED", None, True),
    ("CUDA_ERROR_ECC_UNCORRECTABLE", "cpu", True),  # names the device: counts anywhere
    ("cudaErrorIllegalAddress: an illegal memory access", "gpu", True),
    ("CUDA error: an illegal memory access was encountered", "gpu", True),
    ("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED", "gpu", True),
    ("CUDNN_STATUS_INTERNAL_ERROR in conv", "gpu", True),
    ("cuBLAS call failed: CUBLAS_STATUS_EXECUTION_FAILED", "gpu", True),
    ("INTERNAL: Failed to launch CUDA kernel: fusion_12", "gpu", True),
    ("XlaRuntimeError: INTERNAL: stream did not block host until done", "gpu", True),
    ("INTERNAL: Core halted unexpectedly: INTERNAL: Accelerator device halted", "tpu", True),
    ("DEADLINE_EXCEEDED: TPU program execution timed out", "tpu", True),
    ("TPU halted after an on-device check failure", "tpu", True),
    ("Failed to synchronize the stop event on device 0", "gpu", True),
    ("Failed to get device attribute 13 for device 0", "gpu", True),
    # Not device faults:
    ("INTERNAL: deliberate XLA status raised on the host", "cpu", False),  # XLA:CPU's own
    ("INTERNAL: CpuCallback error calling callback: ValueError: boom", "cpu", False),
    ("INTERNAL: CUDA callback error: ValueError: boom", "gpu", False),  # Python failed
    ("DEADLINE_EXCEEDED: Barrier timed out", "cpu", False),
    ("Failed to transfer buffer to device", "cpu", False),
    ("CUDNN_STATUS_NOT_SUPPORTED: no kernel for this conv", "gpu", False),  # arguments
    ("CUBLAS_STATUS_INVALID_VALUE", "gpu", False),
    ("CUDA_ERROR_OUT_OF_MEMORY: out of memory", "gpu", False),  # out of memory, not a fault
    ("RuntimeError: deliberate failure for batch 3", "gpu", False),
    ("ValueError: shapes (3,4) and (5,6) are not aligned; an internal: note", "gpu", False),
    ("the INTERNAL: marker mid-line is not a status", "gpu", False),
    ("pjrt.cc:1] Execution failed: INTERNAL: Failed to launch CUDA kernel", "gpu", True),
    ("pjrt.cc:1] DEADLINE_EXCEEDED: TPU program did not finish", "tpu", True),
    ("the job was halted by the scheduler", "tpu", False),
]


@pytest.mark.parametrize("text,platform,fault", FAULTS)
def test_device_fault_patterns(text, platform, fault):
    assert (faults.device_fault(text, platform) is not None) == fault
    # Found on any line of a longer text (a traceback, a stderr tail), never invented.
    found = faults.device_fault(f"Traceback (most recent call last):\n  ...\n{text}\n", platform)
    assert (found == text) if fault else found is None


def test_a_point_failure_is_classed_out_of_memory_then_device_then_error():
    reason = sweep._failure_reason
    assert reason(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"), "gpu")[0] == "oom"
    assert reason(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"), "gpu")[0] == "oom"
    kind, line = reason(RuntimeError("INTERNAL: Failed to launch CUDA kernel"), "gpu")
    assert kind == "device" and line == (
        "device fault: RuntimeError: INTERNAL: Failed to launch CUDA kernel"
    )
    # The fault on a later line of the message is named in the one-line error.
    kind, line = reason(RuntimeError("step failed\nCUDNN_STATUS_EXECUTION_FAILED"), "gpu")
    assert kind == "device" and line.endswith("step failed [CUDNN_STATUS_EXECUTION_FAILED]")
    assert reason(RuntimeError("INTERNAL: x"), "cpu") == ("error", "RuntimeError: INTERNAL: x")
    assert sweep.FRESH_PROCESS == ("oom", "device")


def test_device_faults_get_a_fresh_worker_and_other_errors_do_not(tmp_path):
    """b=2 raises a CUDA error: recorded `device`, the next point in a new worker; b=3
    raises INTERNAL on this CPU: an ordinary error, the worker carries on; b=5 aborts
    after XLA's CHECK on a CUDA error: the supervisor records `device` from its stderr."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    env = os.environ | {"BATCHLAB_PID_LOG": str(pids)}
    proc = run_cli(
        "--family_modules=tests.device_fault_family",
        "--model=device_fault",
        "--batch_sizes=1,2,3,4,5,6",
        f"--out_dir={out}",
        "--noplot",
        *FAST,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    by_batch = {r["batch"]: r for r in load(out)}
    assert [by_batch[b]["status"] for b in (1, 4, 6)] == ["ok"] * 3
    assert by_batch[2]["failure"] == "device"
    assert by_batch[2]["error"] == f"device fault: RuntimeError: {fam.CUDA_TEXT}"
    assert by_batch[3]["failure"] == "error" and fam.INTERNAL_TEXT in by_batch[3]["error"]
    assert by_batch[5]["failure"] == "device"
    assert by_batch[5]["error"] == (
        f"worker process killed by SIGABRT: device fault: {fam.ABORT_TEXT}"
    )
    assert "the next point gets a fresh measuring process" in proc.stdout
    worker = dict(line.split() for line in pids.read_text().splitlines())
    assert worker["1"] == worker["2"]  # one worker until the fault
    assert worker["3"] != worker["2"]  # a fresh one after it
    assert worker["3"] == worker["4"] == worker["5"]  # INTERNAL on a CPU: no restart
    assert worker["6"] != worker["5"]  # the abort: a new worker


LOG = "E0000 00:00:00.000000 1 pjrt_stream_executor_client.cc:1] "  # XLA's log prefix


def _fake_worker(tmp_path, stderr_text: str, platform: str | None):
    """A config, and a worker that prints `stderr_text` and aborts during the point."""
    cfg = make_config(tmp_path / "run", batch_sizes=("1",), isolate=True)
    ((point, batch),) = grid_points(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    state = {"id": record.point_id("mlp", point, batch), "params": point, "batch": batch}
    if platform:
        state["platform"] = platform
    results.write_json_atomic(os.path.join(cfg.out_dir, results.INFLIGHT), state)
    script = (
        f"import os, sys; sys.stderr.write({stderr_text!r} + '\\n'); sys.stderr.flush(); os.abort()"
    )
    return cfg, [sys.executable, "-c", script]


@pytest.mark.parametrize(
    "text,platform,failure",
    [
        (
            LOG + "Execution of replica 0 failed: INTERNAL: Failed to launch CUDA kernel",
            "gpu",
            "device",
        ),
        (LOG + "INTERNAL: Failed to launch CUDA kernel", None, "device"),
        (LOG + "INTERNAL: an XLA:CPU check", "cpu", "crash"),  # not a device
        ("Check failed: CUDA_ERROR_OUT_OF_MEMORY", "gpu", "oom"),
        ("Segmentation fault in user code", "gpu", "crash"),
    ],
)
def test_a_crashed_worker_is_recorded_from_its_stderr(text, platform, failure, tmp_path, capfd):
    cfg, cmd = _fake_worker(tmp_path, text, platform)
    assert isolation._supervise(cmd, cfg, lambda m: None, ()) == 0
    (r,) = load(cfg.out_dir)
    assert r["failure"] == failure
    assert r["error"].startswith("worker process killed by SIGABRT") or failure == "oom"
    if failure == "device":
        assert r["error"].endswith(f"device fault: {text}")


# ---- 4. a multi-host TPU slice needs --distributed ----------------------------------------


@pytest.mark.parametrize(
    "env,hosts",
    [
        ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"}, True),
        ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, True),
        ({"TPU_WORKER_ID": "3"}, True),
        ({"CLOUD_TPU_TASK_ID": "1"}, True),
        ({"MEGASCALE_NUM_SLICES": "2"}, True),
        ({"TPU_HOST_BOUNDS": "1,1,2"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, False),  # one host
        ({"TPU_HOST_BOUNDS": "1,1,1", "MEGASCALE_NUM_SLICES": "1"}, False),
        ({"CLOUD_TPU_TASK_ID": "0"}, False),
        ({}, False),
    ],
)
def test_a_multi_host_tpu_slice_is_detected_from_its_environment(env, hosts):
    found = distributed.multihost_tpu(env)
    assert (found is not None) == hosts
    if hosts:
        assert next(iter(env)) in found  # names the variable that said so


def test_a_slice_host_without_distributed_stops_at_once_naming_the_flag(tmp_path):
    env = os.environ | {"TPU_WORKER_HOSTNAMES": "w-0,w-1", "TPU_WORKER_ID": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *TINY, f"--out_dir={tmp_path / 'x'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "$TPU_WORKER_HOSTNAMES" in line and "add --distributed" in line
    assert not (tmp_path / "x").exists()  # stopped before anything was written


# ---- 5. a dry run plans against host RAM and says so -------------------------------------


def test_reproduce_dry_run_says_device_memory_was_not_probed(tmp_path):
    proc = run_cli(
        "--budget=quick", f"--out_dir={tmp_path / 'r'}", "--dry_run", module="experiments.reproduce"
    )
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout.splitlines()[0]
    assert "GB (host RAM; device memory not probed" in head and "--memory_gb" in head
    # The plan says where its memory figure came from, and only a dry run's is host RAM.
    given = reproduce.plan_text([], {"kind": "x"}, 16e9, "quick", "--memory_gb")
    assert given == "device x, memory 16.0 GB (--memory_gb); quick budget:"
    probed = {"kind": "NVIDIA H200", "memory_source": "the device's memory_stats bytes_limit"}
    text = reproduce.plan_text([], probed, 140e9, "quick", probed["memory_source"])
    assert "140.0 GB (the device's memory_stats" in text and "not probed" not in text


def test_provenance_json_is_plain(tmp_path):
    from batchlab.provenance import environment, provenance

    assert set(environment()) >= {"JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION"}
    json.dumps(provenance())  # no device: no backend asked, and plain JSON


# ---- 3. datasheet and attainable, side by side ---------------------------------------------


class _Device:
    """What sweep.calibrated_beside reads of a device, without one."""

    def __init__(self, platform, kind):
        self.platform, self.device_kind = platform, kind


def test_a_datasheet_device_also_records_what_calibration_attains(tmp_path, monkeypatch):
    from batchlab import calibration
    from batchlab.roofline import Ceilings

    measured = Ceilings(7.9e14, 4.3e12, "calibrated", "8192^3 bf16 matmul", "copy 1 GiB")
    asked = []
    monkeypatch.setattr(calibration, "cached", lambda *a, **k: asked.append(a) or measured)
    h200 = _Device("gpu", "NVIDIA H200")
    cfg = make_config(tmp_path, peak_flops=None, bandwidth=None)
    used = sweep.resolve_ceilings(cfg, h200)
    assert used.source == "datasheet" and used.bandwidth == 4800e9
    assert sweep.calibrated_beside(cfg, h200, used) == measured
    assert asked[0][0] == os.path.join(str(tmp_path), results.CALIBRATION)
    # Not when the sweep's ceilings are calibrated or given, nor with --ceilings=datasheet.
    cpu = _Device("cpu", "cpu")
    assert sweep.calibrated_beside(cfg, cpu, measured) is None
    fixed = make_config(tmp_path)  # --peak_flops and --bandwidth
    assert sweep.calibrated_beside(fixed, h200, sweep.resolve_ceilings(fixed, h200)) is None
    only = make_config(tmp_path, peak_flops=None, bandwidth=None, ceilings="datasheet")
    assert sweep.calibrated_beside(only, h200, used) is None
    assert len(asked) == 1


def test_the_report_shows_datasheet_and_attainable_side_by_side():
    from conftest import synthetic

    from batchlab import hardware
    from batchlab.numerics import Numerics
    from batchlab.report import measured, sources

    prov = {"backend": "gpu", "device_kind": "NVIDIA H200", "host": "g"}
    sheet = hardware.datasheet_ceilings(hardware.DATASHEET["h200"], Numerics("bfloat16"))
    point = {"depth": 2, "width": 64, "input_width": 0}
    reached = {"peak_flops": 7.9e14, "bandwidth": 4.32e12, "source": "calibrated"}
    reached |= {"flops_kernel": "8192^3 matmul", "bandwidth_kernel": "copy", "interconnect": None}
    rs = [synthetic("mlp", point, b, Numerics("bfloat16"), sheet, prov=prov) for b in (1, 2, 4)]
    for r in rs:
        r["ceilings_calibrated"] = reached
    cpu = [synthetic("mlp", point, 1, Numerics(), measured_cpu := _cpu_ceilings())]
    read = sources.Sources([sources.Source("d", rs + cpu, {}, {})], [])
    text = measured.devices(read, read.by_device())
    parts = {p.split("\n")[0]: p for p in text.split("### ")[1:]}
    h200 = next(p for k, p in parts.items() if "H200" in k)
    assert "attainable (calibrated here)" in h200 and "attainable / datasheet" in h200
    assert "80% of peak, 90% of bandwidth" in h200  # 790/989.4 and 4.32/4.8
    assert "Datasheet row `h200`" in h200 and "nvidia.com" in h200
    # A CPU has no row: its calibrated ceilings, nothing to compare them with.
    (cpu_part,) = (p for k, p in parts.items() if "H200" not in k)
    assert "2048^3 matmul" in cpu_part and "no datasheet row" in cpu_part
    assert "% of peak" not in cpu_part and measured_cpu.source == "calibrated"


def _cpu_ceilings():
    from batchlab.roofline import Ceilings

    return Ceilings(1e11, 2e10, "calibrated", "2048^3 matmul", "gemv")
