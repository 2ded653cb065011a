"""Router training: checkpoints round-trip, an interrupted run resumes to the same
parameters, its records are the report's, a trained router loads into a sweep, and bad
input fails in one line."""

import ast
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, run_cli

from batchlab import claims, record, results, routing_report, train
from batchlab import router_checkpoint as rc
from batchlab.claims import verdict as vd
from batchlab.errors import ConfigError
from batchlab.numerics import Numerics
from batchlab.report import sources
from batchlab.workloads import moe as wl

TINY = dict(width=16, ffn=16, experts=4, clusters=4, tokens=64, steps=12, checkpoint_every=5)


def tiny(out_dir, **kw):
    kw = {"methods": ("loss_free",), "config_name": "train_router"} | kw
    return train.TrainConfig(out_dir=str(out_dir), **(TINY | kw))


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def without_provenance(records):
    return [{k: v for k, v in r.items() if k != "provenance"} for r in records]


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
    path = tmp_path / "loss_free" / results.RESULTS
    assert all(r["kind"] == record.TRAIN_STEP for r in lines(path))  # not trained: no eval
    resumed = train.run(tiny(tmp_path), log=logs.append)["loss_free"]
    assert logs == ["loss_free: resumed from the checkpoint at step 5"]
    assert int(resumed["step"]) == 12
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Steps 6 and 7 were redone, not logged twice; every record equals the whole run's
    # but for where and when it was made.
    got = lines(path)
    want = lines(f"{whole_cfg.out_dir}/loss_free/{results.RESULTS}")
    assert [r["id"] for r in got] == [f"loss_free/{i}" for i in range(1, 13)] + ["loss_free/eval"]
    assert without_provenance(got) == without_provenance(want)
    assert max(map(abs, want[-2]["metrics"]["bias"])) > 0  # the loss-free bias moved
    # A rerun of a finished run trains and evaluates nothing again.
    train.run(tiny(tmp_path), log=logs.append)
    assert lines(path) == got


def test_records_carry_schema_provenance_and_the_eval(trained):
    cfg, state = trained
    recs = lines(f"{cfg.out_dir}/loss_free/{results.RESULTS}")
    steps, (ev,) = recs[:-1], recs[-1:]
    for r in recs:
        assert r["schema"] == record.SCHEMA_VERSION and r["status"] == "ok"
        assert r["config_name"] == "train_router" and r["method"] == "loss_free"
        assert r["provenance"]["device_kind"] and r["provenance"]["jax"] == jax.__version__
        assert record.problem(r) is None
    assert {r["kind"] for r in steps} == {record.TRAIN_STEP}
    assert {"loss", "task_loss", "cv", "max_vio", "bias"} <= set(steps[0]["metrics"])
    assert ev["kind"] == record.ROUTER_EVAL and ev["id"] == "loss_free/eval"
    assert ev["step"] == 12 and ev["tokens"] == 4096
    assert ev["params"] | {"experts": 4, "top_k": 2} == ev["params"]
    assert sum(ev["metrics"]["load_before"]) == 4096 * 2  # k copies of each fresh token
    assert ev["metrics"] == train.evaluate(cfg, state)  # the final parameters and bias
    config = json.loads(Path(cfg.out_dir, "loss_free", results.CONFIG).read_text())
    assert config["fingerprint"] == cfg.fingerprint("loss_free")
    assert config["config"]["steps"] == 12


def test_the_report_reads_the_records_and_claim_c9_uses_the_eval(trained):
    cfg, _ = trained
    read = sources.read([cfg.out_dir], print)
    kinds = [r["kind"] for r in read.records()]
    assert kinds.count(record.TRAIN_STEP) == 12 and kinds.count(record.ROUTER_EVAL) == 1
    verdict, parts = claims.judge(claims.CLAIMS["C9"], read.records())
    (part,) = parts
    assert part.subject.startswith("trained router, loss_free")  # the claim's own wording
    assert part.numbers["gate"] == "trained" and part.numbers["tokens"] == 4096
    assert verdict.status != vd.NOT_MEASURED


def test_router_checkpoint_loads_into_a_sweep(trained):
    cfg, state = trained
    path = f"{cfg.out_dir}/loss_free"
    tcfg, router, bias = rc.load_router(path, "--router_checkpoints")
    assert tcfg.fingerprint("loss_free") == cfg.fingerprint("loss_free")
    np.testing.assert_array_equal(router, state["params"]["router"])
    np.testing.assert_array_equal(bias, state["balance"]["bias"])
    point = {p.name: p.default[0] for p in wl.LAYER.params} | {
        "width": 16,
        "ffn": 32,
        "experts": 4,
        "router": "dropless",
        "dispatch": "slots",
        "router_checkpoint": path,
    }
    wl.validate_layer(point)
    work = wl.LAYER.build(point, 32, Numerics(), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(work.weights["params"]["router"], router)
    np.testing.assert_array_equal(work.weights["balance"]["bias"], bias)
    # The tokens come from the training task: they share its direction.
    shared = np.asarray(rc.task(tcfg)["shared_D"])
    assert np.corrcoef(np.asarray(work.inputs[0]).mean(0), shared)[0, 1] > 0.5
    with pytest.raises(ConfigError, match="--router_checkpoints=.*width 16 and 4 experts"):
        wl.validate_layer(point | {"width": 32})
    with pytest.raises(ConfigError, match="--token_means: 0.5 with --router_checkpoints"):
        wl.validate_layer(point | {"token_mean": 0.5})


def test_a_damaged_or_missing_checkpoint_is_one_line_naming_the_path(trained, tmp_path):
    cfg, _ = trained
    copy = tmp_path / "loss_free"
    shutil.copytree(Path(cfg.out_dir, "loss_free"), copy)
    flag = "--router_checkpoints"
    with pytest.raises(ConfigError, match=f"{flag}={tmp_path}: not a router checkpoint"):
        rc.load_router(str(tmp_path), flag)
    for f in Path(copy, rc.CHECKPOINTS).rglob("*"):  # every file of every step, emptied
        if f.is_file():
            f.write_bytes(b"")
    with pytest.raises(ConfigError, match=f"{flag}={copy}: the checkpoint of step 12") as e:
        rc.load_router(str(copy), flag)
    assert "\n" not in str(e.value)
    shutil.rmtree(Path(copy, rc.CHECKPOINTS))
    Path(copy, rc.CHECKPOINTS).mkdir()
    with pytest.raises(ConfigError, match=f"^{flag}={copy}: holds no checkpoint yet$"):
        rc.load_router(str(copy), flag)
    Path(copy, results.CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match=f"{flag}={copy}: .*config.json is not a router"):
        rc.check_router_fits(str(copy), 16, 4, flag)


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
    path = Path(cfg.out_dir, "loss_free", results.RESULTS)
    before = path.read_text()
    with pytest.raises(ConfigError, match="--out_dir=.*experts 4 there, 8 now"):
        train.run(tiny(cfg.out_dir, experts=8))
    with pytest.raises(ConfigError, match="config_name 'train_router' there, '' now"):
        train.run(tiny(cfg.out_dir, config_name=""))
    with pytest.raises(ConfigError, match="^--config_name=a b: use letters"):
        train.run(tiny(cfg.out_dir, config_name="a b"))
    assert path.read_text() == before


def test_summary_and_plot_read_the_records(trained):
    cfg, _ = trained
    records = routing_report.load(cfg.out_dir)
    text = routing_report.train_summary(records)
    assert text.splitlines()[1].split()[:2] == ["loss_free", "12"]
    assert "the trained routers on 4096 fresh tokens:" in text
    fig = routing_report.train_figure(records)
    fig.canvas.draw()
    assert_legends_clear(fig)
    assert Path(routing_report.train_plot(cfg.out_dir, records)).stat().st_size > 10_000


def assert_legends_clear(fig):
    """Every legend of `fig` lies outside every axes' area, after layout."""
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    for legend in fig.legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), (legend, ax)


def _imports(path: str) -> set[str]:
    tree = ast.parse(Path(path).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in out if name.startswith("batchlab")}


def test_what_a_sweep_loads_a_router_with_sits_below_the_workloads():
    allowed = ("batchlab.models", "batchlab.moe", "batchlab.errors", "batchlab.numerics")
    for name in _imports(os.path.join(ROOT, "batchlab", "router_checkpoint.py")):
        assert name.startswith(allowed), name
    workloads = Path(ROOT, "batchlab", "workloads")
    for path in workloads.glob("*.py"):
        assert not {"batchlab.train", "batchlab.sweep", "batchlab.results"} & _imports(path)


BAD = [
    ("experiments.train_router", ["--top_k=9", "--experts=8"], "--top_k"),
    ("experiments.routing", ["--capacity_factors=-0.5"], "--capacity_factors"),
    ("experiments.routing", ["--variants=routers,sparse"], "--variants"),
    ("experiments.routing", ["--model=mlp"], "--model"),
]


@pytest.mark.parametrize("module,args,flag", BAD, ids=str)
def test_bad_input_gets_one_clear_line(module, args, flag, tmp_path):
    proc = run_cli(*args, f"--out_dir={tmp_path / 'o'}", module=module)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and flag in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
