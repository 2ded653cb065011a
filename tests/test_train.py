"""Router training: checkpoints round-trip, an interrupted run resumes to the same
parameters, a trained router loads into a sweep, and bad input fails in one line."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_cli

from batchlab import train
from batchlab.errors import ConfigError
from batchlab.moe import plots
from batchlab.numerics import Numerics
from batchlab.workloads import moe as wl

TINY = dict(width=16, ffn=16, experts=4, clusters=4, tokens=64, steps=12, checkpoint_every=5)


def tiny(out_dir, **kw):
    return train.TrainConfig(out_dir=str(out_dir), methods=("loss_free",), **(TINY | kw))


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted run: (config, final state)."""
    cfg = tiny(tmp_path_factory.mktemp("whole"))
    return cfg, train.run(cfg, log=lambda s: None)["loss_free"]


def test_interrupted_run_resumes_to_the_same_parameters(trained, tmp_path):
    whole_cfg, whole = trained
    logs = []
    first = train.run(tiny(tmp_path, stop_after=7), log=logs.append)["loss_free"]
    assert int(first["step"]) == 7  # stopped, as if killed; the last checkpoint is step 5
    resumed = train.run(tiny(tmp_path), log=logs.append)["loss_free"]
    assert logs == ["loss_free: resumed from the checkpoint at step 5"]
    assert int(resumed["step"]) == 12
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Steps 6 and 7 were redone, not logged twice; every line equals the whole run's.
    got = lines(tmp_path / "loss_free" / train.METRICS)
    want = lines(f"{whole_cfg.out_dir}/loss_free/{train.METRICS}")
    assert [r["step"] for r in got] == list(range(1, 13))
    assert got == want
    assert max(map(abs, want[-1]["bias"])) > 0  # the loss-free bias moved and was saved


def test_router_checkpoint_loads_into_a_sweep(trained):
    cfg, state = trained
    path = f"{cfg.out_dir}/loss_free"
    tcfg, router, bias = train.load_router(path, "--router_checkpoints")
    assert tcfg.fingerprint("loss_free") == cfg.fingerprint("loss_free")
    np.testing.assert_array_equal(router, state["params"]["router"])
    np.testing.assert_array_equal(bias, state["balance"]["bias"])
    point = {
        "width": 16,
        "ffn": 32,
        "ffn_kind": "gated",
        "experts": 4,
        "top_k": 2,
        "router": "dropless",
        "capacity_factor": 1.0,
        "priority": "choice",
        "dispatch": "slots",
        "router_checkpoint": path,
    }
    wl.validate_layer(point)
    work = wl.LAYER.build(point, 32, Numerics(), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(work.weights["params"]["router"], router)
    np.testing.assert_array_equal(work.weights["balance"]["bias"], bias)
    # The tokens come from the training task: they share its direction.
    shared = np.asarray(train.task(tcfg)["shared_D"])
    assert np.corrcoef(np.asarray(work.inputs[0]).mean(0), shared)[0, 1] > 0.5
    with pytest.raises(ConfigError, match="--router_checkpoints=.*width 16 and 4 experts"):
        wl.validate_layer(point | {"width": 32})


def test_a_router_trained_for_another_shape_is_refused_in_one_line(trained, tmp_path):
    cfg, _ = trained
    proc = run_cli(
        "--model=moe_layer", "--widths=32", "--experts=4", "--dry_run",
        f"--router_checkpoints={cfg.out_dir}/loss_free", f"--out_dir={tmp_path / 'o'}",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --router_checkpoints=")
    assert "trained for width 16 and 4 experts" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_different_config_is_refused_and_nothing_overwritten(trained):
    cfg, _ = trained
    metrics = Path(cfg.out_dir, "loss_free", train.METRICS)
    before = metrics.read_text()
    with pytest.raises(ConfigError, match="--out_dir=.*experts 4 there, 8 now"):
        train.run(tiny(cfg.out_dir, experts=8))
    assert metrics.read_text() == before


def test_summary_and_plot_read_the_metrics_files(trained):
    cfg, _ = trained
    text = train.summary(train.load_metrics(cfg.out_dir))
    assert text.splitlines()[1].split()[:2] == ["loss_free", "12"]
    assert Path(plots.train_plot(cfg.out_dir)).stat().st_size > 10_000


BAD = [
    ("experiments.train_router", ["--top_k=9", "--experts=8"], "--top_k"),
    ("experiments.routing", ["--capacity_factor=-0.5"], "--capacity_factor"),
]


@pytest.mark.parametrize("module,args,flag", BAD, ids=str)
def test_bad_input_gets_one_clear_line(module, args, flag, tmp_path):
    proc = run_cli(*args, f"--out_dir={tmp_path / 'o'}", module=module)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and flag in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
