"""Routers against hand-computed cases: the two routing faults of issue 14 (regression
tests from its inputs), DeepSeek-V3-style routing, shared experts and the
sequence-level balance loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchlab import timing
from batchlab.errors import ConfigError
from batchlab.models import decoder as dec
from batchlab.models import moe as mm
from batchlab.moe import balance, dispatch, routing
from batchlab.numerics import Numerics
from batchlab.workloads import moe as wl


def served(r) -> dict[int, int]:
    """token -> expert of every copy an expert runs."""
    return {int(t): int(e) for t, e in zip(r.token_M, r.expert_M) if e < r.probs_BxE.shape[1]}


# ---- the faults ----------------------------------------------------------------------------


def test_batch_prioritized_routing_ranks_by_the_selected_gate():
    # Token 0: probs [.269, .731]; token 1: [.881, .119]. The bias [-1, 0] sends both to
    # expert 1, with gates .731 and .119. One slot: the .731 gate takes it, though token
    # 1's unbiased top-1 probability (.881, of expert 0, which it does not use) is higher.
    logits = jnp.array([[0.0, 1.0], [2.0, 0.0]])
    r = routing.token_choice(logits, 1, 1, bias_E=jnp.array([-1.0, 0.0]), priority="confidence")
    assert served(r) == {0: 1}
    kept = [float(g) for g, e in zip(r.gate_M, r.expert_M) if e < 2]
    assert kept == pytest.approx([1 / (1 + math.e**-1)])  # 0.731


def test_batch_prioritized_routing_lets_a_later_token_change_an_earlier_ones_routing():
    # Both tokens pick expert 1; token 1 (0.881) is more confident than token 0 (0.731).
    # Alone, token 0 gets the one slot; with token 1 after it, it is dropped. Token order
    # (priority "choice") keeps token 0's slot either way.
    both, alone = jnp.array([[0.0, 1.0], [0.0, 2.0]]), jnp.array([[0.0, 1.0]])
    assert served(routing.token_choice(alone, 1, 1, priority="confidence")) == {0: 1}
    assert served(routing.token_choice(both, 1, 1, priority="confidence")) == {1: 1}
    assert served(routing.token_choice(both, 1, 1, priority="choice")) == {0: 1}


def test_decoders_refuse_batch_prioritized_routing_with_the_reason():
    point = {p.name: p.default[0] for p in wl.DECODE.params} | {"priority": "confidence"}
    with pytest.raises(ConfigError, match="^--priorities=confidence: batch-prioritized .* not "):
        wl.DECODE.validate(point)
    wl.DECODE.validate(point | {"router": "dropless"})  # nothing dropped: causal
    prefill = {p.name: p.default[0] for p in wl.PREFILL.params} | {"priority": "confidence"}
    wl.PREFILL.validate(prefill)  # the whole prompt is known, as for expert choice
    with pytest.raises(ValueError, match="not causal"):
        mm.check_causal(mm.MoEConfig(priority="confidence"))
    mm.check_causal(mm.MoEConfig(priority="choice"))


# ---- DeepSeek-V3-style routing -------------------------------------------------------------


def logit(p):
    p = np.asarray(p, np.float64)
    return jnp.asarray(np.log(p / (1 - p)), jnp.float32)


def test_deepseek_v3_gates_are_sigmoid_scores_normalised_over_the_selected_and_scaled():
    s = np.array([0.5, 0.7, 0.9, 0.2])
    r = routing.route(logit([s]), "deepseek_v3", 2, 1.0, scale=2.5)
    assert [int(e) for e in r.chosen_Bxk[0]] == [2, 1]
    np.testing.assert_allclose(np.asarray(r.gate_M), 2.5 * s[[2, 1]] / s[[2, 1]].sum(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(r.probs_BxE[0]), s / s.sum(), rtol=1e-6)
    assert r.capacity == 1 and int((r.expert_M == 4).sum()) == 0  # dropless


def test_group_limited_selection_picks_inside_the_best_groups_by_their_top_two():
    # 4 groups of 2. Group sums of the two scores: 1.0, 1.2, 1.25, 0.4; the best two groups
    # are 2 and 1, so expert 0 (0.9, the best single score) is out, and the picks are
    # 4 (0.7) and 2 (0.62). Without the group limit they would be 0 and 4.
    s = np.array([0.9, 0.1, 0.62, 0.58, 0.7, 0.55, 0.2, 0.2])
    limited = routing.route(logit([s]), "deepseek_v3", 2, 1.0, groups=4, top_groups=2)
    free = routing.route(logit([s]), "deepseek_v3", 2, 1.0)
    assert [int(e) for e in limited.chosen_Bxk[0]] == [4, 2]
    assert [int(e) for e in free.chosen_Bxk[0]] == [0, 4]
    # The bias enters the group scores too: lifting group 3 by 0.5 makes it the best.
    bias = jnp.array([0, 0, 0, 0, 0, 0, 0.5, 0.5])
    biased = routing.route(logit([s]), "deepseek_v3", 2, 1.0, bias_E=bias, groups=4, top_groups=1)
    assert sorted(int(e) for e in biased.chosen_Bxk[0]) == [6, 7]
    np.testing.assert_allclose(np.asarray(biased.gate_M), [0.5, 0.5], rtol=1e-6)  # unbiased


def test_without_groups_or_bias_deepseek_v3_picks_what_softmax_top_k_picks():
    logits = jax.random.normal(jax.random.PRNGKey(7), (64, 8))
    ds = routing.route(logits, "deepseek_v3", 2, 1.0)
    tc = routing.route(logits, "dropless", 2, 1.0)
    np.testing.assert_array_equal(np.asarray(ds.chosen_Bxk), np.asarray(tc.chosen_Bxk))


def test_group_and_scale_settings_belong_to_deepseek_v3():
    with pytest.raises(ValueError, match="deepseek_v3's"):
        routing.route(jnp.zeros((2, 4)), "token_choice", 1, 1.0, groups=2)
    with pytest.raises(ValueError, match="top-k 3 is more than the 2 experts"):
        routing.route(jnp.zeros((2, 8)), "deepseek_v3", 3, 1.0, groups=4, top_groups=1)
    point = {p.name: p.default[0] for p in wl.LAYER.params}
    for change, flag in (
        ({"expert_groups": 2}, "--expert_groups: 2 is deepseek_v3's"),
        ({"route_scale": 2.5}, "--route_scales: 2.5 is deepseek_v3's"),
        ({"router": "deepseek_v3", "expert_groups": 3}, "--expert_groups: 8 experts"),
        ({"router": "deepseek_v3", "expert_groups": 2, "top_groups": 3}, "--top_groups: 3 is"),
        ({"router": "deepseek_v3", "expert_groups": 8}, "--top_groups: top-k 2"),
        ({"router": "deepseek_v3", "route_scale": 0.0}, "--route_scales: 0.0"),
    ):
        with pytest.raises(ConfigError, match="^" + flag):
            wl.LAYER.validate(point | change)
    wl.LAYER.validate(point | {"router": "deepseek_v3", "expert_groups": 4, "top_groups": 2})


# ---- the sequence-wise balance loss ---------------------------------------------------------

# probs: [.75, .25] for tokens 0, 1, 3 and [.25, .75] for token 2; top-1 picks 0, 0, 1, 0.
TINY = jnp.array([[math.log(3), 0.0], [math.log(3), 0.0], [0.0, math.log(3)], [math.log(3), 0.0]])


def test_sequence_balance_loss_by_hand():
    r = routing.token_choice(TINY, 1)
    # One sequence of 4: f = 2/(1·4)·[3, 1] = [1.5, 0.5], P = [0.625, 0.375]: 1.125.
    assert float(balance.sequence_balance_loss(r.probs_BxE, r.chosen_Bxk)) == pytest.approx(1.125)
    # Two of 2: [2, 0]·[.75, .25] = 1.5 and [1, 1]·[.5, .5] = 1.0; their mean 1.25.
    two = balance.sequence_balance_loss(r.probs_BxE, r.chosen_Bxk, 2)
    assert float(two) == pytest.approx(1.25)
    # Balanced: 1, for any k.
    flat, chosen = jax.nn.softmax(jnp.zeros((8, 4))), jnp.array([[0, 1], [2, 3]] * 4)
    assert float(balance.sequence_balance_loss(flat, chosen, 4)) == pytest.approx(1.0)
    assert float(balance.metrics(r, 2)["seq_balance_loss"]) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="do not split into sequences of 3"):
        balance.sequence_balance_loss(r.probs_BxE, r.chosen_Bxk, 3)


# ---- shared experts -------------------------------------------------------------------------

LAYER = {p.name: p.default[0] for p in wl.LAYER.params} | {
    "width": 16,
    "ffn": 24,
    "experts": 4,
    "dispatch": "slots",
}


def layer(batch, **kw):
    key = jax.random.fold_in(jax.random.PRNGKey(0), batch)
    return wl.LAYER.build(LAYER | kw, batch, Numerics(), key)


def test_shared_experts_run_on_every_token_beside_the_same_routing():
    plain, shared = layer(8), layer(8, shared_experts=2)
    np.testing.assert_array_equal(plain.inputs[0], shared.inputs[0])
    for a, b in zip(
        jax.tree.leaves(plain.weights["params"]["experts"]),
        jax.tree.leaves(shared.weights["params"]["experts"]),
    ):
        np.testing.assert_array_equal(a, b)  # the routed experts are the same
    x = shared.inputs[0]
    extra = sum(
        dispatch.expert_ffn(w, x) for w in mm.expert_list(shared.weights["params"]["shared"])
    )
    with jax.default_matmul_precision("highest"):
        got = jax.jit(shared.fn)(shared.weights, *shared.inputs)
        want = jax.jit(plain.fn)(plain.weights, *plain.inputs) + extra
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (m,) = shared.metrics["balance"]
    assert m["shared_experts"] == 2 and m["load_shared"] == [8, 8]
    # The routed copies run (k = 2 each, less the capacity's drops), plus 2 shared rows.
    assert m["rows_per_token"] == pytest.approx(sum(m["load_after"]) / 8 + 2)
    assert 3.5 <= m["rows_per_token"] <= 4
    assert plain.metrics["balance"][0]["load_before"] == m["load_before"]


def test_shared_experts_are_counted_in_the_cost_by_hand_and_by_xla():
    work, plain = layer(8, shared_experts=1), layer(8)
    per_expert = 3 * 16 * 24  # SwiGLU: three D×F matrices
    assert work.cost.flops - plain.cost.flops == 2 * 8 * per_expert
    assert work.cost.weight_bytes - plain.cost.weight_bytes == 4 * per_expert
    # Per token: each matmul's input and output, and the output added in (4-byte floats).
    rows = 16 + (16 + 24) + (16 + 24) + (24 + 16)
    assert work.cost.activation_bytes - plain.cost.activation_bytes == 4 * 8 * rows
    xla = timing.compile_ahead(work.fn, (work.weights, *work.inputs)).cost_analysis["flops"]
    assert work.cost.flops <= xla <= 1.1 * work.cost.flops  # as for moe_layer (test_families)


def test_expert_parallelism_refuses_what_it_does_not_run_yet():
    for change, flag in (({"shared_experts": 1}, "--shared_experts"), ({}, None)):
        point = LAYER | change
        if flag is None:
            assert wl.layer_mesh_cost(point, 8, Numerics(), (("expert", 2),)) is not None
            continue
        with pytest.raises(ConfigError, match=f"^{flag}: the expert-parallel layer"):
            wl.layer_mesh_cost(point, 8, Numerics(), (("expert", 2),))
    assert wl.layer_mesh_cost(LAYER | {"shared_experts": 1}, 8, Numerics(), ()) is None


def test_a_deepseek_v3_decoder_with_a_shared_expert_decodes_as_its_full_pass():
    cfg = dec.DecoderConfig(vocab=101, width=32, layers=2, heads=4, kv_heads=2, ffn=48, max_len=16)
    moe = mm.MoEConfig(
        experts=4, top_k=2, router="deepseek_v3", groups=2, top_groups=1, shared_experts=1
    )
    model = mm.moe_decoder(cfg, moe, every=1)
    v = mm.init(model, jax.random.PRNGKey(0))
    assert "shared" in v["params"]["block_0"]["ffn"]
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, cfg.vocab)
    full = jax.jit(lambda v, t: dec.forward(model, v, t))(v, tokens)
    cache = dec.init_cache(cfg, 2, 6)
    step = jax.jit(lambda v, c, t, p: mm.decode_step(model, moe, v, c, t, p))
    for p in range(6):
        cache, logits = step(v, cache, tokens[:, p], jnp.full((2,), p))
        np.testing.assert_allclose(logits, full[:, p], rtol=1e-5, atol=1e-5)
