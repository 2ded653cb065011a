"""Shared fixtures: a repository-root cwd for CLI runs, an in-process smoke sweep, and
tests marked `alone` kept from running beside another (pytest-xdist, -n 2)."""

import contextlib
import fcntl
import os
import shutil
import tempfile

import pytest

from batchlab import config, sweep, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fixed ceilings keep tests off the calibration path (tested on its own) and deterministic.
FAST_TIMING = timing.TimingSpec(
    target_spread=0.5, time_budget_s=0.05, min_reps=3, warmup_reps=1, warmup_s=0.0
)
FIXED = dict(peak_flops=100e9, bandwidth=20e9)
# Tests measure no device profile (tests/test_model_profile.py does, on a tiny plan).
NO_MODEL = dict(model_profile="off")
NO_MODEL_FLAG = "--model_profile=off"
# Command-line flags of a seconds-long sweep: short timing, fixed ceilings, no model.
FAST_FLAGS = [
    "--time_budget_s=0.01",
    "--min_reps=2",
    "--warmup_reps=0",
    "--peak_flops=1e11",
    "--bandwidth=1e10",
    "--predict_for=",
    NO_MODEL_FLAG,
]
# A small decoder point (GQA, RoPE, SwiGLU) for tests of the decoder families.
SMALL_DECODER = {
    "depth": 2,
    "width": 64,
    "heads": 4,
    "kv_heads": 2,
    "ffn": 96,
    "ffn_kind": "gated",
    "position_kind": "rope",
    "embeddings": "tied",
    "vocab": 101,
    "max_len": 64,
}


# The scripts that run sweeps from the sweep's flags.
SWEEPS = ("experiments.sweep", "experiments.routing")
_runner = None


def run_cli(*args, module="experiments.sweep", timeout=300, fresh=False, env=None):
    """Runs `python -m MODULE ARGS` from the repository root (in `env`, by default this
    process's environment); returns the CompletedProcess.

    The command runs in a process forked from tests/cli_server.py's, which has imported
    the libraries and batchlab already (seconds per command); experiments is imported
    afresh in each. fresh=True, or BATCHLAB_TEST_FORK=0 for all: a new interpreter."""
    global _runner
    import cli_server  # here: tests/sharded_check.py imports this file as tests.conftest

    if module in SWEEPS:
        args = (NO_MODEL_FLAG, *args)  # a later --model_profile (a flagfile's too) wins
    if _runner is None:
        _runner = cli_server.Runner(ROOT, tempfile.mkdtemp(prefix="batchlab-cli-"))
    return _runner.run(module, args, timeout, fresh, env)


@contextlib.contextmanager
def _turn(item):
    """Under pytest-xdist: a test marked `alone` (it asserts on how fast something runs)
    waits until the other workers' tests are done and holds theirs back until it is;
    other tests run side by side. Setup and teardown (module fixtures too) count."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    where = os.path.dirname(str(item.config.getoption("basetemp")))  # the run's, above ours
    alone = item.get_closest_marker("alone") is not None
    with (
        open(os.path.join(where, "door"), "a") as door,
        open(os.path.join(where, "room"), "a") as room,
    ):
        # Through the door one at a time: a test waiting to be alone keeps it shut, so no
        # new test enters the room until the ones inside have left and it is done.
        fcntl.flock(door, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(door, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)


# The files that take longest (about 3, 3 and 1 minutes on the 2-core machine), first:
# pytest-xdist hands out whole files in collection order, so the last ones handed out
# are short and the two workers finish together.
SLOWEST_FIRST = ("test_distributed.py", "test_hardening.py", "test_device_run.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _turn(item):
        return (yield)


def pytest_unconfigure(config):
    if _runner is not None:
        _runner.close()
        shutil.rmtree(_runner.scratch, ignore_errors=True)


def make_config(out_dir, model="mlp", grid=None, batch_sizes=("1", "2", "4"), **kwargs):
    """A validated SweepConfig with small, fast defaults."""
    kwargs = {"timing": FAST_TIMING, "isolate": False, **FIXED, **NO_MODEL, **kwargs}
    return config.build(
        model,
        grid or {"depths": ["2"], "widths": ["32"]},
        list(batch_sizes),
        out_dir=str(out_dir),
        **kwargs,
    )


def run_in_process(cfg, log=lambda line: None):
    """What experiments.sweep does with --noisolate."""
    return sweep.run_job(cfg, "# test\n", log=log)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    """A finished in-process MLP sweep: 2 widths x 4 batches."""
    out = tmp_path_factory.mktemp("smoke")
    cfg = make_config(
        out,
        grid={"depths": ["2"], "widths": ["32", "64"]},
        batch_sizes=("1", "2", "4", "8"),
        predict_for=("t4",),
    )
    assert run_in_process(cfg) == 0
    return out


def synthetic(
    model,
    params,
    batch,
    numerics,
    ceilings,
    seconds=None,
    prov=None,
    config_name="",
    predict_for=(),
    spread=0.01,
    count=1000,
):
    """A record as the sweep writes it (its stored b* and datasheet predictions included)
    for a point timed at `seconds`, or at its roofline lower bound when None."""
    from batchlab import record, roofline, workloads
    from batchlab.config import SweepConfig

    family = workloads.get(model)
    cfg = SweepConfig(
        model=model,
        grid={k: (v,) for k, v in params.items()},
        batch_sizes=(batch,),
        out_dir="",
        numerics=numerics,
        predict_for=tuple(predict_for),
        config_name=config_name,
    )
    base = record.base(
        pid=record.point_id(model, params, batch),
        model=model,
        params=params,
        batch=batch,
        numerics=numerics,
        weight_copies=1,
        fingerprint="test",
        config_name=config_name,
        provenance=dict(prov or {"backend": "cpu", "device_kind": "cpu", "host": "test"}),
    )
    cost = family.cost(params, batch, numerics)
    pred = roofline.predict(cost, ceilings)
    t = pred.lower_s if seconds is None else seconds
    time = {
        "median_s": t,
        "min_s": t,
        "mean_s": t,
        "iqr_s": spread * t,
        "count": count,
        "spread": spread,
        "unstable": False,
    }
    return record.measured(
        base,
        time=time,
        compile_info={"lower_s": 0.0, "compile_s": 0.0},
        cost=cost,
        device_cost=cost,
        xla={},
        ceilings=ceilings,
        empty_call_s=0.0,
        prediction=pred,
        model={},
        **sweep.roofline_fields(cfg, params, batch, ceilings),
        working_set={"bytes": cost.total_bytes, "fits_in": "memory"},
        extra={},
    )
