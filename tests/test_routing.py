"""Routers, balance metrics and losses against hand calculations and plain numpy; the
routing comparison (experiments.routing) as four ordinary sweeps on identical inputs."""

import ast
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, run_cli

from batchlab import distributed, record, results, routing_report, timing
from batchlab.errors import ConfigError
from batchlab.moe import balance, dispatch, routing
from batchlab.moe import cost as moecost
from batchlab.numerics import Numerics
from batchlab.workloads import ffn as ffn_wl
from batchlab.workloads import moe as wl

LN3 = math.log(3.0)
# Eager, every op would compile on its own: jit the whole function once.
metrics = jax.jit(balance.metrics)
token_choice = jax.jit(routing.token_choice, static_argnames=("k", "capacity", "priority"))


@pytest.mark.parametrize(
    "tokens,k,experts,factor,want",
    [(256, 2, 8, 1.0, 64), (100, 2, 8, 1.25, 32), (40, 2, 8, 1.1, 11), (3, 2, 8, 1.0, 1)]
    + [(4, 2, 2, 2.0, 4)],  # at most B: an expert takes each token once
)
def test_capacity_convention(tokens, k, experts, factor, want):
    assert routing.capacity(tokens, k, experts, factor) == want


def test_bad_top_k_and_capacity_factor_are_refused():
    with pytest.raises(ValueError, match="top-k 5"):
        routing.token_choice(jnp.zeros((3, 4)), 5)
    with pytest.raises(ValueError, match="capacity factor"):
        routing.capacity(10, 2, 4, 0.0)


def test_expert_choice_gives_every_expert_exactly_its_top_c_tokens():
    logits = jax.random.normal(jax.random.PRNGKey(0), (13, 4))
    c = routing.capacity(13, 2, 4, 1.0)  # ceil(2·13/4) = 7
    r = routing.expert_choice(logits, 2, c)
    probs = np.asarray(jax.nn.softmax(logits))
    token_ExC = np.asarray(r.token_M).reshape(4, c)
    for e in range(4):
        assert sorted(token_ExC[e]) == sorted(np.argsort(-probs[:, e])[:c])
        np.testing.assert_allclose(np.asarray(r.gate_M).reshape(4, c)[e], probs[token_ExC[e], e])
    m = metrics(r)
    np.testing.assert_array_equal(m["load_after"], [c] * 4)
    assert float(m["max_vio_after"]) == 0.0


def test_first_choices_get_slots_before_second_choices():
    # Experts 0,1,2; k=2, C=2. Tokens 0,1 pick 1 then 0; tokens 2,3 pick 0 then 2. Expert 0
    # is wanted by the first choices of 2,3 and the second choices of 0,1: those two drop,
    # though tokens 0 and 1 come first in token order.
    logits = jnp.array([[2.0, 3, 0], [2, 3, 0], [3, 0, 2], [3, 0, 2]])
    c = routing.capacity(4, 2, 3, 0.75)
    assert c == 2
    r = token_choice(logits, 2, c)
    expert = np.asarray(r.expert_M)
    pairs = {(int(t), int(e)) for t, e in zip(np.asarray(r.token_M), expert) if e < 3}
    assert pairs == {(0, 1), (1, 1), (2, 0), (3, 0), (2, 2), (3, 2)}
    slots = {int(t): int(s) for t, e, s in zip(r.token_M, expert, r.slot_M) if e == 0}
    assert slots == {2: 0, 3: 1}
    assert float(metrics(r)["dropped_fraction"]) == pytest.approx(2 / 8)


def _priority_reference(expert_Bxk, order_B, c, e):
    """Plain loop: walk copies choice by choice, tokens in `order_B`; keep while room."""
    used, kept = [0] * e, set()
    for j in range(expert_Bxk.shape[1]):
        for t in order_B:
            ex = int(expert_Bxk[t, j])
            if used[ex] < c:
                used[ex] += 1
                kept.add((int(t), ex))
    return kept


@pytest.mark.parametrize("priority", routing.PRIORITIES)
def test_capacity_drops_exactly_the_overflow_in_priority_order(priority):
    b, e, k = 40, 4, 2
    logits = jax.random.normal(jax.random.PRNGKey(3), (b, e)) + jnp.array([1.5, 0, 0, 0])
    c = routing.capacity(b, k, e, 0.8)
    r = token_choice(logits, k, c, priority=priority)
    probs = np.asarray(jax.nn.softmax(logits))
    chosen = np.argsort(-probs, axis=1)[:, :k]
    np.testing.assert_array_equal(np.asarray(r.chosen_Bxk), chosen)
    order = np.arange(b) if priority == "choice" else np.argsort(-probs.max(1), kind="stable")
    want = _priority_reference(chosen, order, c, e)
    got = {(int(t), int(x)) for t, x in zip(np.asarray(r.token_M), np.asarray(r.expert_M)) if x < e}
    assert got == want
    wanted = np.bincount(chosen.reshape(-1), minlength=e)
    m = metrics(r)
    np.testing.assert_array_equal(m["load_before"], wanted)
    np.testing.assert_array_equal(m["load_after"], np.minimum(wanted, c))
    dropped = np.maximum(wanted - c, 0).sum()
    assert dropped > 0  # the test means something
    assert float(m["dropped_fraction"]) == pytest.approx(dropped / (b * k))


def test_gates_are_renormalized_top_k_probabilities():
    logits = jnp.array([[0.0, 1.0, 2.0, 3.0]])
    p = np.exp([0, 1, 2, 3]) / np.exp([0, 1, 2, 3]).sum()
    r2 = token_choice(logits, 2)
    np.testing.assert_allclose(sorted(np.asarray(r2.gate_M)), sorted(p[[3, 2]] / p[[3, 2]].sum()))
    r1 = token_choice(logits, 1)  # Switch: the probability itself
    np.testing.assert_allclose(np.asarray(r1.gate_M), [p[3]], rtol=1e-6)


def test_selection_bias_changes_the_pick_not_the_gate():
    logits = jnp.array([[1.0, 0.0]])
    r = token_choice(logits, 1, bias_E=jnp.array([0.0, 1.0]))
    assert int(r.expert_M[0]) == 1
    np.testing.assert_allclose(float(r.gate_M[0]), 1 / (1 + math.e), rtol=1e-6)


# ---- metrics and losses by hand -------------------------------------------------------------

# probs: [.75, .25] for tokens 0, 1, 3 and [.25, .75] for token 2; top-1 picks 0, 0, 1, 0.
TINY = jnp.array([[LN3, 0.0], [LN3, 0.0], [0.0, LN3], [LN3, 0.0]])


def test_losses_by_hand():
    r = token_choice(TINY, 1)
    # f = [3/4, 1/4], P = [2.5/4, 1.5/4]: E·Σ f·P = 2·(0.46875 + 0.09375)
    assert float(balance.load_balancing_loss(r.probs_BxE, r.chosen_Bxk)) == pytest.approx(1.125)
    assert float(balance.z_loss(TINY)) == pytest.approx(math.log(4) ** 2)
    # Balanced minimum of the load-balancing loss is k (REFERENCE 5).
    flat = jnp.zeros((8, 4))
    chosen = jnp.array([[0, 1], [2, 3]] * 4)
    assert float(balance.load_balancing_loss(jax.nn.softmax(flat), chosen)) == pytest.approx(2.0)


def test_metrics_by_hand():
    r = token_choice(TINY, 1, capacity=routing.capacity(4, 1, 2, 1.0))  # C = 2
    m = balance.to_host(metrics(r))
    assert m["load_before"] == [3, 1] and m["load_after"] == [2, 1]
    assert m["cv"] == pytest.approx(0.5)  # std [3, 1] / mean = 1 / 2
    assert m["max_vio"] == pytest.approx(0.5)  # 3/2 - 1
    assert m["max_vio_after"] == pytest.approx(2 / 1.5 - 1)
    assert m["entropy"] == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    )
    assert m["dropped_fraction"] == pytest.approx(0.25)  # token 3's only copy
    assert m["unrouted_fraction"] == pytest.approx(0.25)
    assert m["experts_per_token"] == [1, 3, 0]
    assert m["confidence"] == pytest.approx(0.75)
    assert m["experts_touched"] == 2 and m["capacity"] == 2


def test_expected_uniform_cv():
    # Binomial(B, p) loads: sqrt(B p (1-p)) / (B p)
    assert balance.expected_uniform_cv(64, 2, 8) == pytest.approx(math.sqrt(64 * 0.25 * 0.75) / 16)


def test_loss_free_bias_moves_load_toward_balance_on_a_skewed_stream():
    e, k = 8, 2
    skew = jnp.linspace(-1.0, 1.0, e)  # the last experts are favoured

    @jax.jit
    def step(bias, key):
        r = token_choice(jax.random.normal(key, (256, e)) + skew, k, bias_E=bias)
        m = balance.metrics(r)
        return routing.update_bias(bias, m["load_before"], 2e-3), m["max_vio"]

    bias, vio = jnp.zeros(e), []
    for i in range(300):
        bias, v = step(bias, jax.random.PRNGKey(i))
        vio.append(float(v))
    first, last = vio[0], float(np.mean(vio[-20:]))
    assert first > 1.0  # the skew really skews
    assert last < 0.3 * first
    assert float(bias[-1]) < 0 < float(bias[0])  # favoured experts pushed down


# ---- the routing comparison ------------------------------------------------------------

LAYER = {p.name: p.default[0] for p in wl.LAYER.params} | {
    "width": 16,
    "ffn": 16,
    "experts": 4,
    "dispatch": "slots",
}


def layer(batch, **kw):
    """moe_layer at `batch` with the sweep's key for it (seed 0)."""
    key = jax.random.fold_in(jax.random.PRNGKey(0), batch)
    return wl.LAYER.build(LAYER | kw, batch, Numerics(), key)


def test_every_router_at_a_batch_gets_the_same_tokens_and_weights():
    tc, ec = layer(32), layer(32, router="expert_choice", skew=3.0)
    uni, ffn = (
        layer(32, router="uniform"),
        ffn_wl.FAMILY.build(
            {"width": 16, "ffn": 16, "ffn_kind": "gated", "copies": 2},
            32,
            Numerics(),
            jax.random.fold_in(jax.random.PRNGKey(0), 32),
        ),
    )
    for other in (ec, uni, ffn):
        np.testing.assert_array_equal(tc.inputs[0], other.inputs[0])
    for a, b in zip(
        jax.tree.leaves(tc.weights["params"]["experts"]),
        jax.tree.leaves(ec.weights["params"]["experts"]),
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(tc.weights["params"]["router"], ec.weights["params"]["router"])
    assert len(tc.inputs) == 1  # no skew, no offset: the layer the seed sweeps time
    ramp = 3.0 * np.array([-1, -1 / 3, 1 / 3, 1])
    np.testing.assert_allclose(ec.inputs[1], np.broadcast_to(ramp, (32, 4)), rtol=1e-6)
    # Uniform: no router weights, random logits per token, so the picks ignore the tokens.
    assert not np.any(uni.weights["params"]["router"]) and uni.inputs[1].shape == (32, 4)
    assert np.std(np.asarray(uni.inputs[1])) > 0.5
    # A shared direction in the tokens moves them all the same way.
    key = jax.random.fold_in(jax.random.PRNGKey(0), 32)
    shifted = ffn_wl.tokens(key, 32, 16, jnp.float32, 2.0) - tc.inputs[0]
    assert np.allclose(shifted, shifted[0], atol=1e-5) and np.abs(shifted[0]).mean() > 0.5


def test_the_dense_yardstick_costs_k_ffns_of_one_expert():
    point = {"width": 16, "ffn": 24, "ffn_kind": "gated", "copies": 2}
    work = ffn_wl.FAMILY.build(point, 8, Numerics(), jax.random.PRNGKey(0))
    one = moecost.dense_ffn_cost(point, 8, Numerics())
    assert work.cost.flops == 2 * one.flops == 2 * 2 * 8 * 3 * 16 * 24
    assert work.cost.weight_bytes == 2 * 4 * 3 * 16 * 24
    xla = timing.compile_ahead(work.fn, (work.weights, *work.inputs)).cost_analysis
    assert work.cost.flops <= xla["flops"] <= 1.1 * work.cost.flops
    out = jax.jit(work.fn)(work.weights, *work.inputs)
    want = sum(dispatch.expert_ffn(w, work.inputs[0]) for w in work.weights)
    np.testing.assert_allclose(out, want, rtol=1e-5)


def test_a_skewed_layer_on_one_expert_axis_equals_the_single_device_layer():
    work = layer(16, skew=2.0, router="token_choice")
    mesh = distributed.make_mesh((("expert", 1),))
    placed = distributed.place_workload(work, 16, mesh)
    assert placed.metrics["dispatch"]["chosen"] == "all_to_all" and len(placed.inputs) == 2
    got = jax.jit(placed.fn)(placed.weights, *placed.inputs)
    np.testing.assert_allclose(got, jax.jit(work.fn)(work.weights, *work.inputs), atol=1e-5)


@pytest.mark.parametrize("family", [wl.DECODE, wl.PREFILL], ids=lambda f: f.name)
def test_decoders_refuse_the_uniform_router(family):
    point = {p.name: p.default[0] for p in family.params} | {"router": "uniform"}
    with pytest.raises(ConfigError, match="^--routers=uniform: random picks .*moe_layer"):
        family.validate(point)


ROUTING = [
    "--routers=token_choice,expert_choice,uniform",
    "--skews=0,3",
    "--shared_experts=1",  # DeepSeek-V3's layout: the deepseek variant's alone
    "--expert_groups=2",
    "--top_groups=1",
    "--route_scales=2.5",
    "--batch_sizes=32",
    "--widths=16",
    "--ffn_widths=16",
    "--experts=4",
    "--dispatches=slots",
    "--config_name=routing",
    "--predict_for=",
    "--peak_flops=1e11",
    "--bandwidth=1e10",
    "--target_spread=0.5",
    "--time_budget_s=0.02",
    "--min_reps=3",
    "--warmup_reps=1",
    "--noisolate",
]


def files(out) -> dict:
    return {p: p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """(OUT_DIR, stdout) of one run of experiments.routing."""
    out = tmp_path_factory.mktemp("routing")
    proc = run_cli(*ROUTING, f"--out_dir={out}", module="experiments.routing")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def _by(out):
    recs = routing_report.load(str(out))
    moe = {
        (routing_report.router_label(r), r["params"]["skew"]): r["metrics"]["balance"][0]
        for r in recs
        if r["model"] == "moe_layer"
    }
    return recs, moe


def test_the_comparison_is_four_ordinary_sweeps_on_identical_inputs(comparison):
    out, stdout = comparison
    for name, model, n in (
        ("routers", "moe_layer", 6),
        ("bpr", "moe_layer", 2),
        ("deepseek", "moe_layer", 2),
        ("dense", "ffn", 1),
    ):
        d = out / name
        assert {"config.json", "flags.txt", "results.jsonl"} <= set(os.listdir(d))
        config = json.loads((d / results.CONFIG).read_text())
        assert config["fingerprint"]["model"] == model
        assert config["fingerprint"]["config_name"] == "routing"
        recs = results.load(str(d / results.RESULTS))
        assert len(recs) == n and all(r["status"] == "ok" for r in recs)
        for r in recs:
            assert r["schema"] == record.SCHEMA_VERSION and r["kind"] == record.SWEEP
            assert r["config_name"] == "routing" and r["provenance"]["device_kind"]
            assert record.problem(r) is None
    assert "--priorities=confidence" in (out / "bpr" / results.FLAGS).read_text()
    deepseek = (out / "deepseek" / results.FLAGS).read_text()
    assert "--routers=deepseek_v3" in deepseek and "--shared_experts=1" in deepseek
    for name in ("routers", "bpr"):  # the others run without DeepSeek-V3's layout
        assert "--shared_experts=1" not in (out / name / results.FLAGS).read_text()
    recs, by = _by(out)
    ds0 = by[("deepseek_v3_g2/1+1shared", 0.0)]
    assert ds0["load_shared"] == [32] and ds0["dropped_fraction"] == 0
    assert sum(ds0["load_before"]) == sum(by[("token_choice", 0.0)]["load_before"])
    tc0, tc3 = by[("token_choice", 0.0)], by[("token_choice", 3.0)]
    # The same tokens and router weights in every sweep: each top-k router asks for the
    # same load at a skew (expert choice's load_before is token choice's picks).
    for s in (0.0, 3.0):
        assert by[("expert_choice", s)]["load_before"] == by[("token_choice", s)]["load_before"]
        assert by[("token_choice_bpr", s)]["load_before"] == by[("token_choice", s)]["load_before"]
    assert tc3["max_vio"] > tc0["max_vio"] and tc3["dropped_fraction"] > tc0["dropped_fraction"]
    assert tc3["load_before"][-1] == max(tc3["load_before"])  # the skew favours the last
    assert by[("expert_choice", 3.0)]["max_vio_after"] == 0
    # Uniform random picks: balanced, within the null model of C9 (32 tokens, 2 of 4).
    null = balance.uniform_cv_null(32, 2, 4)
    assert by[("uniform", 0.0)]["cv"] <= np.quantile(null, 0.99) < tc3["cv"]
    # The yardstick and the summary, from the stored records only.
    (dense,) = [r for r in recs if r["model"] == "ffn"]
    assert dense["params"]["copies"] == 2 and dense["cost"]["weight_bytes"] == 2 * 3 * 16 * 16 * 4
    assert routing_report.read_time(dense)[0] == pytest.approx(2 * 3 * 16 * 16 * 4 / 1e10)
    assert "How much slower is a layer whose busiest expert" in stdout
    assert f"reading k experts' weights at 10.0 GB/s: {2 * 3 * 16 * 16 * 4 / 1e7:.3f} ms" in stdout
    x0, x3 = (f"{100 * m['max_vio']:+.0f}" for m in (tc0, tc3))
    assert "token_choice (slots): time" in stdout and f"b=32: X {x0}/{x3}% -> time 1.00/" in stdout
    assert "token_choice_bpr (slots): time" in stdout and "uniform (slots): time" in stdout
    assert "deepseek_v3_g2/1+1shared (slots): time" in stdout
    assert "* the two medians' 95% intervals separate" in stdout
    for name in routing_report.FILES:
        assert (out / name).stat().st_size > 10_000


def test_a_rerun_measures_nothing_twice(comparison):
    out, _ = comparison
    before = files(out)
    proc = run_cli(*ROUTING, f"--out_dir={out}", "--noplot", module="experiments.routing")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("nothing to measure") == 4
    assert files(out) == before


def test_a_different_config_is_refused_in_one_line(comparison):
    out, _ = comparison
    before = files(out)
    proc = run_cli(*ROUTING, f"--out_dir={out}", "--seed=1", module="experiments.routing")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: --out_dir={out}/routers: holds results of a different")
    assert "seed 0 there, 1 now" in proc.stderr
    assert files(out) == before


def test_the_plots_keep_their_legends_off_the_data(comparison):
    out, _ = comparison
    figures = routing_report.figures(routing_report.load(str(out)))
    assert set(figures) == set(routing_report.FILES)
    for fig in figures.values():
        fig.canvas.draw()
        assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
        for legend in fig.legends:
            box = legend.get_window_extent()
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent()), (legend, ax)


def test_the_moe_kernels_import_nothing_above_them():
    allowed = ("batchlab.moe", "batchlab.cost", "batchlab.numerics", "batchlab.errors")
    moe = Path(ROOT, "batchlab", "moe")
    assert sorted(p.name for p in moe.glob("*.py")) == [
        "__init__.py",
        "balance.py",
        "cost.py",
        "dispatch.py",
        "expert_parallel.py",
        "routing.py",
    ]
    for path in moe.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("batchlab"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                assert all(n.startswith(allowed) for n in names), (path.name, names)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("batchlab") for a in node.names), path.name
