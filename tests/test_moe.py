"""The MoE layer and decoder: every dispatch against a dense reference, cached decoding
against the full pass, the analytic cost by hand and against XLA, the sweep's records."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config, run_cli, run_in_process

from batchlab import autotune, claims, kernels, results, timing
from batchlab.models import decoder as dec
from batchlab.models import moe as mm
from batchlab.moe import cost as moecost
from batchlab.moe import dispatch, routing
from batchlab.numerics import Numerics
from batchlab.workloads import decoder as dec_wl
from batchlab.workloads import moe as wl

B, D, F, E, K = 37, 16, 24, 5, 2
X = jax.random.normal(jax.random.PRNGKey(0), (B, D))
W_ROUTER = jax.random.normal(jax.random.PRNGKey(2), (D, E))


def experts(gated=True):
    return mm.expert_list(mm.init_experts(jax.random.PRNGKey(1), D, F, E, gated, jnp.float32))


@jax.jit
def dense_reference(ws, r):
    """Every expert on every token, weighted by the token's renormalized top-k gate."""
    outs = jnp.stack([dispatch.expert_ffn(w, X) for w in ws], 1)  # B E D
    p = jnp.take_along_axis(r.probs_BxE, r.chosen_Bxk, 1)
    g = jnp.zeros((B, E)).at[jnp.arange(B)[:, None], r.chosen_Bxk].set(p / p.sum(1, keepdims=True))
    return jnp.einsum("be,bed->bd", g, outs)


def run(name, ws, r, **kw):
    return jax.jit(lambda x, r: dispatch.run(name, ws, x, r, **kw))(X, r)


@pytest.mark.parametrize(
    "name,gated", [(n, True) for n in dispatch.IMPLS] + [("slots", False)], ids=str
)
def test_dropless_equals_dense_reference(name, gated):
    ws = experts(gated)
    r = routing.route(routing.router_logits(X, W_ROUTER), "dropless", K, 1.0)
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(run(name, ws, r), dense_reference(ws, r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(dispatch.IMPLS))
def test_capacity_that_drops_nothing_equals_dropless(name):
    ws = experts()
    logits = routing.router_logits(X, W_ROUTER)
    roomy = routing.route(logits, "token_choice", K, E / K)  # C = B: nothing can drop
    assert roomy.capacity == B and int((roomy.expert_M == E).sum()) == 0
    dropless = routing.route(logits, "dropless", K, 1.0)
    np.testing.assert_allclose(
        run(name, ws, roomy), run("slots", ws, dropless), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "router,names",
    [("token_choice", list(dispatch.IMPLS)), ("expert_choice", ["sorted"])],
)
def test_every_dispatch_agrees_with_drops_and_a_skewed_load(router, names):
    """One expert wanted by nearly every token: the sorted dispatch's pieces and padding."""
    ws = experts()
    logits = routing.router_logits(X, W_ROUTER, offset=jnp.array([4.0, 0, 0, 0, 0]))
    r = routing.route(logits, router, K, 1.0)
    want = run("slots", ws, r, skip_idle=False)
    for name in names:
        np.testing.assert_allclose(run(name, ws, r), want, rtol=1e-5, atol=1e-5)


def test_a_dropped_copy_leaves_only_the_residual():
    ws = experts()
    r = routing.route(routing.router_logits(X, W_ROUTER), "token_choice", 1, 0.2)
    y = np.asarray(run("slots", ws, r))
    served = {int(t) for t, e in zip(r.token_M, r.expert_M) if e < E}
    assert 0 < len(served) < B
    assert np.all(y[[t for t in range(B) if t not in served]] == 0)


# ---- the MoE decoder ------------------------------------------------------------------------

CFG = dec.DecoderConfig(vocab=101, width=32, layers=2, heads=4, kv_heads=2, ffn=48, max_len=64)


@pytest.fixture(scope="module")
def decoder_weights():
    """Weights of a 2-layer decoder whose FFNs are both MoE; shapes do not depend on the
    router, so every router's decoder shares them (one init: it is slow to compile)."""
    return mm.init(mm.moe_decoder(CFG, mm.MoEConfig(experts=4, top_k=2), 1), jax.random.PRNGKey(0))


def test_moe_decoder_cached_decode_equals_full_forward(decoder_weights):
    # Dropless: with a capacity, drops depend on the group, and a decode step's group (one
    # token per sequence) is not the full pass's.
    moe = mm.MoEConfig(experts=4, top_k=2, router="dropless", dispatch="sorted")
    model, v = mm.moe_decoder(CFG, moe, every=1), decoder_weights
    assert "experts" in v["params"]["block_0"]["ffn"] and "experts" in v["params"]["block_1"]["ffn"]
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 10), 0, CFG.vocab)
    full = jax.jit(lambda v, t: dec.forward(model, v, t))(v, tokens)
    cache = dec.init_cache(CFG, 3, 10)
    step = jax.jit(lambda v, c, t, p: mm.decode_step(model, moe, v, c, t, p))
    for p in range(10):
        cache, logits = step(v, cache, tokens[:, p], jnp.full((3,), p))
        np.testing.assert_allclose(logits, full[:, p], rtol=1e-5, atol=1e-5)


def test_every_other_layer_is_moe():
    model = mm.moe_decoder(CFG, mm.MoEConfig(experts=4), every=2)
    shapes = jax.eval_shape(lambda: mm.init(model, jax.random.PRNGKey(0)))["params"]
    assert "up" in shapes["block_0"]["ffn"] and "experts" in shapes["block_1"]["ffn"]
    assert mm.moe_layers(8, 2) == [1, 3, 5, 7] and mm.moe_layers(3, 1) == [0, 1, 2]


def test_expert_choice_prefills_but_refuses_to_decode(decoder_weights):
    moe = mm.MoEConfig(experts=4, top_k=2, router="expert_choice")
    model, v = mm.moe_decoder(CFG, moe, every=1), decoder_weights
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, CFG.vocab)
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    rs = jax.jit(lambda v, t: mm.routings(model, v, t, pos, dec.init_cache(CFG, 2, 6)))(v, tokens)
    assert len(rs) == 2
    c = routing.capacity(12, 2, 4, 1.0)
    for r in rs:  # every expert takes exactly C of the group's 12 tokens
        np.testing.assert_array_equal(np.bincount(np.asarray(r.expert_M), minlength=4), [c] * 4)
    with pytest.raises(ValueError, match="not causal"):
        mm.decode_step(model, moe, v, dec.init_cache(CFG, 2, 8), tokens[:, 0], jnp.full((2,), 6))


# ---- cost ----------------------------------------------------------------------------------

POINT = {
    "width": 32,
    "ffn": 48,
    "ffn_kind": "gated",
    "experts": 4,
    "top_k": 2,
    "router": "token_choice",
    "capacity_factor": 1.0,
    "priority": "choice",
    "dispatch": "slots",
    "router_checkpoint": "",
    "skew": 0.0,
    "token_mean": 0.0,
    "shared_experts": 0,
    "expert_groups": 1,
    "top_groups": 1,
    "route_scale": 1.0,
}


def test_layer_cost_by_hand():
    c = moecost.layer_cost(POINT, 16, Numerics())
    per_expert = 3 * 32 * 48
    touched = 4 * (1 - 0.5**16)
    rows = touched * 8  # the slots dispatch: each expert reached runs C = ceil(2·16/4) rows
    assert c.flops == pytest.approx(2 * 16 * 32 * 4 + 2 * rows * per_expert)
    assert c.weight_bytes == pytest.approx(4 * (32 * 4 + touched * per_expert))
    act = 4 * (2 * 16 * 32 + rows * (2 * 32 + 2 * (32 + 48) + (48 + 32))) + 4 * 16 * 4
    assert c.activation_bytes == pytest.approx(act)
    one = moecost.layer_cost(POINT | {"router": "dropless"}, 1, Numerics())
    assert one.weight_bytes == 4 * (32 * 4 + 2 * per_expert)  # k experts touched at b=1
    ec = moecost.layer_cost(POINT | {"router": "expert_choice"}, 1, Numerics())
    assert ec.weight_bytes == 4 * (32 * 4 + 4 * per_expert)  # every expert takes C >= 1


def test_expert_parallel_cost_by_hand():
    point = POINT | {"routing_group": "batch"}  # E=4, k=2, D=32, F=48, gated, cf=1
    per_expert = 3 * 32 * 48
    # 64 tokens on 8 devices, experts along an axis of 2: C = 2·64/4 = 32, capped at the 8
    # local tokens; each device computes E·8 = 32 rows and reads its 2 experts.
    assert moecost.ep_buffer_capacity(point, 64, 8) == 8
    c = moecost.expert_parallel_cost(point, 64, Numerics(), 8, 2)
    assert c.flops == 2 * 8 * 32 * 4 + 2 * 32 * per_expert
    assert c.weight_bytes == 4 * (32 * 4 + 2 * per_expert)
    gathered = 4 * 56 * 4  # the other devices' fp32 logits
    assert c.collective_bytes == 2 * 4 * 32 * 32 / 2 + gathered
    # Device groups: 8 tokens each, C = ceil(2·8/4) = 4, nothing gathered.
    local = point | {"routing_group": "device"}
    assert moecost.ep_buffer_capacity(local, 64, 8) == 4
    assert moecost.expert_parallel_cost(local, 64, Numerics(), 8, 2).collective_bytes == (
        2 * 4 * 16 * 32 / 2
    )
    # Dropless: every local token may reach one expert, whichever the group.
    assert moecost.ep_buffer_capacity(point | {"router": "dropless"}, 64, 8) == 8
    assert moecost.ep_buffer_capacity(local | {"router": "dropless"}, 64, 8) == 8


def test_expected_touched_and_critical_batch():
    assert moecost.expected_touched(8, 2, 1) == pytest.approx(2.0)
    assert moecost.expected_touched(8, 2, 2) == pytest.approx(8 * (1 - 0.75**2))
    assert moecost.tokens_to_touch_all(8, 2) == 10  # 8·0.75^10 = 0.45 < 0.5
    # b* = P·s/(2·BW) = 100, times E/k = 4
    assert moecost.critical_batch_estimate(1e12, 2e10, POINT | {"experts": 8}, Numerics()) == 400


@pytest.mark.parametrize("name", ["slots", "sorted", "sorted_gather", "auto"])
def test_the_moe_cost_follows_the_chosen_dispatch(name):
    """Dropless on the slots dispatch runs every expert some copy reached on B rows, E·B
    here (cost_analysis counts them); sorted runs the B·k copies (and its chunk padding,
    which cost_analysis counts every branch of); sorted_gather every row of its blocks,
    all of which run; "auto" costs what it resolves to."""
    p = POINT | {"router": "dropless", "dispatch": name}
    work = wl.LAYER.build(p, 16, Numerics(), jax.random.PRNGKey(0))
    chosen = work.resolved.get("dispatch", name)
    touched = 4 * (1 - 0.5**16)  # of E = 4 experts, top-2, 16 tokens
    # sorted_gather: 32 copies in blocks of 8 rows; 4 + 4·7/8 -> 7 blocks for any loads.
    assert dispatch.gather_blocks(32, 16, 4, 16) == (8, 7)
    rows = {"slots": touched * 16, "sorted": 16 * 2, "ragged": 16 * 2, "sorted_gather": 56}
    assert work.cost.flops == pytest.approx(2 * 16 * 32 * 4 + 2 * rows[chosen] * 3 * 32 * 48)
    if chosen in ("slots", "sorted_gather"):
        compiled = timing.compile_ahead(work.fn, (work.weights, *work.inputs))
        xla = compiled.cost_analysis["flops"]
        assert work.cost.flops <= xla <= 1.1 * work.cost.flops
        counted = kernels.totals(kernels.of_compiled(compiled.compiled, work.branch_fraction))
        if chosen == "sorted_gather":  # nothing conditional: every kernel runs, once
            assert work.branch_fraction == 1.0
            assert counted["flops"] == pytest.approx(xla, rel=0.01)
    if chosen == "sorted_gather":  # the gathered weight copies, written and read
        plain = moecost.layer_cost(p | {"dispatch": "sorted"}, 16, Numerics())
        extra = work.cost.activation_bytes - plain.activation_bytes
        assert extra == pytest.approx(4 * (2 * 7 * 3 * 32 * 48 + (56 - 32) * (2 * 32 + 80 * 3)))


def test_gather_blocks_hold_any_loads():
    """However the kept copies fall on the experts, their blocks fit in gather_blocks'."""
    rng = np.random.default_rng(0)
    for copies, tokens, experts, cap in [(2, 1, 8, 1), (32, 16, 4, 16), (200, 100, 8, 25)]:
        big, n = dispatch.gather_blocks(copies, tokens, experts, cap)
        kept = min(copies, experts * cap)
        for _ in range(200):
            loads = np.minimum(rng.multinomial(kept, rng.dirichlet(np.ones(experts) * 0.3)), cap)
            assert sum(-(-v // big) for v in loads) <= n
        # The worst case: every expert one row past a whole block.
        worst = [min(cap, big + 1)] * min(experts, kept // (big + 1))
        assert sum(-(-v // big) for v in worst) <= n
    assert dispatch.gather_blocks(2, 1, 8, 1) == (8, 2)  # one token, top-2: two experts read


def test_ragged_gets_its_stacked_weights_outside_the_timed_call():
    """The weights the sweep times hold the experts stacked E×D×F, and the timed function
    stacks nothing; given separate arrays, ragged stacks them inside the call (the old
    unfair way), which is what the stacked layout saves."""
    work = wl.LAYER.build(POINT | {"dispatch": "ragged"}, 8, Numerics(), jax.random.PRNGKey(0))
    stacked = work.weights["params"]["experts"]
    assert {k: v.shape for k, v in stacked.items()} == {
        "gate": (4, 32, 48),
        "up": (4, 32, 48),
        "down": (4, 48, 32),
    }

    def stacks_made(fn, *args) -> int:  # nested jaxprs included: read the text
        text = str(jax.make_jaxpr(fn)(*args))
        return len(re.findall(r"f32\[4,32,48\] = (?:concatenate|stack)\b", text))

    assert stacks_made(work.fn, work.weights, *work.inputs) == 0
    separate = mm.for_dispatch(work.weights, "slots")
    assert "expert_0" in separate["params"]["experts"]
    moe = wl.moe_config(POINT, "ragged")

    def unfair(w, x):  # ragged on separate arrays: it stacks them in the call
        return mm.moe_apply(w["params"], w["balance"]["bias"], x, moe)[0]

    assert stacks_made(unfair, separate, *work.inputs) == 2  # gate and up, each a stack
    np.testing.assert_allclose(
        jax.jit(unfair)(separate, *work.inputs),
        jax.jit(work.fn)(work.weights, *work.inputs),
        rtol=1e-6,
        atol=1e-6,
    )


def test_sorted_gather_is_offered_on_accelerators_only():
    assert "sorted_gather" not in dispatch.candidates("cpu")
    assert set(dispatch.candidates("cpu")) == {"slots", "sorted", "ragged"}
    for platform in ("gpu", "tpu"):
        assert set(dispatch.candidates(platform)) == set(dispatch.IMPLS)


DECODER_POINT = POINT | {
    "depth": 2,
    "heads": 4,
    "kv_heads": 2,
    "position_kind": "rope",
    "embeddings": "tied",
    "vocab": 101,
    "max_len": 64,
    "moe_every": 1,
}


def test_decode_records_the_balance_of_its_moe_layer():
    point = DECODER_POINT | {"context": 15, "depth": 1}
    work = wl.DECODE.build(point, 2, Numerics(), jax.random.PRNGKey(0))
    assert len(work.metrics["balance"]) == 1


def test_prefill_cost_swaps_each_moe_layers_ffn():
    """The dense decoder's prefill cost, with 2 of 4 FFNs replaced by MoE over b·S tokens."""
    point = DECODER_POINT | {"prompt_len": 8, "depth": 4, "moe_every": 2}
    n, numerics = 3 * 8, Numerics()
    moe, dense = wl.prefill_cost(point, 3, numerics), dec_wl.prefill_cost(point, 3, numerics)
    layer, ffn = moecost.layer_cost(point, n, numerics), moecost.dense_ffn_cost(point, n, numerics)
    assert moe.flops - dense.flops == 2 * (layer.flops - ffn.flops)
    assert moe.weight_bytes - dense.weight_bytes == pytest.approx(
        2 * (layer.weight_bytes - ffn.weight_bytes)
    )
    assert moe.state_bytes == dense.state_bytes


def test_auto_dispatch_is_measured_and_recorded():
    work = wl.LAYER.build(POINT | {"dispatch": "auto"}, 4, Numerics(), jax.random.PRNGKey(0))
    info = work.metrics["dispatch"]
    assert set(info["candidates_s"]) == set(dispatch.candidates("cpu"))
    assert info["chosen"] == min(info["candidates_s"], key=info["candidates_s"].get)
    assert set(info["candidates_ci95_s"]) == set(info["candidates_s"])
    assert info["timed_as"]["platform"] == "cpu" and info["timed_as"]["weight_copies"] == 1
    # The chosen dispatch's weights are the workload's, in its layout.
    stacked = "expert_0" not in work.weights["params"]["experts"]
    assert stacked == (info["chosen"] in dispatch.STACKED)


def _chain(w, x):  # 30 dependent matmuls: far slower than one add
    for _ in range(30):
        x = jnp.tanh(x @ w["a"])
    return x


def test_autotune_picks_the_faster_candidate_timed_as_the_sweep_times_it(monkeypatch):
    x, w = jnp.ones((64, 64)), {"a": jnp.full((64, 64), 1 / 64)}
    made, real = [], timing.weight_copies
    monkeypatch.setattr(timing, "weight_copies", lambda ws, n: made.append(n) or real(ws, n))
    spec = timing.TimingSpec(warmup_reps=3, warmup_s=0.0)
    fns = {"slow": (_chain, w), "fast": (lambda w, x: x + w["a"], w)}
    with autotune.timed_like(3, spec):
        chosen, info = autotune.fastest(fns, (x,))
    assert chosen == "fast" == info["chosen"]  # the slower one is not chosen
    assert info["candidates_s"]["slow"] > info["candidates_s"]["fast"]
    assert made == [3, 3]  # each candidate rotates the sweep's 3 weight copies
    assert info["timed_as"] == {
        "weight_copies": 3,
        "platform": "cpu",
        "warmup_reps": 3,
        "warmup_s": 0.0,
        "warmup_agree": None,
    }
    # Outside a sweep: one copy, the default warm-up. With several processes, process 0's
    # choice (here: always the first candidate) wins over this process's own.
    chosen, info = autotune.fastest(fns, (x,), autotune.Like(decide=lambda i: 0))
    assert chosen == "slow" and made[2:] == [1, 1]


def test_autotune_warms_up_as_the_sweep_does_on_the_platform():
    like = autotune.Like(spec=timing.TimingSpec(warmup_reps=4))
    gpu = autotune.spec_for(like, "gpu")
    assert gpu.warmup_s >= 0.2 and gpu.warmup_agree is not None and gpu.warmup_reps == 4
    assert gpu.time_budget_s == autotune.SPEC.time_budget_s  # its own short stopping rule
    cpu = autotune.spec_for(like, "cpu")  # no: a CPU keeps the sweep's short warm-up
    assert cpu.warmup_s == 0.05 and cpu.warmup_agree is None and cpu.warmup_reps == 4


def test_the_sweep_times_dispatch_candidates_with_its_weight_copies(tmp_path):
    grid = {"widths": ["32"], "ffn_widths": ["48"], "experts": ["4"], "dispatches": ["auto"]}
    cfg = make_config(tmp_path, model="moe_layer", grid=grid, batch_sizes=("2",), weight_copies=2)
    assert run_in_process(cfg) == 0
    (r,) = results.load(str(tmp_path / results.RESULTS))
    info = r["metrics"]["dispatch"]
    assert info["timed_as"]["weight_copies"] == 2 and info["timed_as"]["warmup_reps"] == 1
    assert set(info["candidates_s"]) == set(dispatch.candidates("cpu"))
    assert r["params"]["dispatch"] == "auto" and info["chosen"] in info["candidates_s"]
    assert r["time"]["warmup_calls"] == 1  # a CPU: the count alone (FAST_TIMING: 1, 0 s)


# ---- the sweep ------------------------------------------------------------------------------


def test_sweep_records_balance_metrics_and_prints_the_verdicts(tmp_path):
    grid = {"widths": ["32"], "ffn_widths": ["48"], "experts": ["4"], "dispatches": ["slots"]}
    grid |= {"routers": ["token_choice", "expert_choice"]}
    cfg = make_config(
        tmp_path, model="moe_layer", grid=grid, batch_sizes=("1",), config_name="moe_layer"
    )
    assert run_in_process(cfg) == 0
    records = results.load(str(tmp_path / results.RESULTS))
    assert [r["status"] for r in records] == ["ok"] * 2
    for r in records:
        (m,) = r["metrics"]["balance"]
        assert sum(m["load_before"]) == 2 * r["batch"]  # k copies per token
        assert r["metrics"]["dispatch"]["chosen"] == "slots"
    ec = [r for r in records if r["params"]["router"] == "expert_choice"]
    assert all(r["metrics"]["balance"][0]["max_vio_after"] == 0 for r in ec)
    text = "\n".join(claims.sweep_lines(records))
    assert "C9 moe_layer top-k gate" in text and "C9 moe_layer expert_choice gate" in text
    assert "REFERENCE 2.7" in text and "b=1: 2.0 touched" in text  # top-2: two experts read


BAD = [
    (["--model=moe_layer", "--experts=4", "--top_ks=5"], "--top_ks"),
    (["--model=moe_layer", "--capacity_factors=0"], "--capacity_factors"),
    (["--model=moe_decode", "--routers=expert_choice"], "--routers"),
]


@pytest.mark.parametrize("args,flag", BAD, ids=str)
def test_bad_moe_input_gets_one_clear_line(args, flag, tmp_path):
    proc = run_cli(*args, f"--out_dir={tmp_path / 'o'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and flag in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_run_fraction_counts_the_conditional_work_that_runs():
    # slots: experts some copy reached, of E.
    assert dispatch.run_fraction("slots", [3, 0, 1, 0], tokens=4, copies=8) == 0.5
    # sorted, 16 tokens, 32 copies, 4 experts: pieces of 8, 8, then 4 padded to 8 rows, so
    # 24 rows an expert could run; a load of 8 runs one piece, 9 two (the rest padded).
    assert dispatch._pieces(32, 16, 4) == (8, [8, 8, 4])
    assert dispatch.run_fraction("sorted", [8, 8, 8, 8], tokens=16, copies=32) == 8 / 24
    assert dispatch.run_fraction("sorted", [9, 7, 16, 0], 16, 32) == (16 + 8 + 16 + 0) / 96
    assert dispatch.run_fraction("ragged", [1, 2, 3, 4], 4, 8) == 1.0
    # The layer's workload carries it for the per-kernel model: at one token, top-2 of 4
    # experts, the slots dispatch runs 2 of the 4 expert branches.
    work = wl.LAYER.build(POINT, 1, Numerics(), jax.random.PRNGKey(0))
    assert work.branch_fraction == 0.5
