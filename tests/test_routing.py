"""Routers, balance metrics and losses against hand calculations and plain numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchlab import timing
from batchlab.moe import balance, compare, routing

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


def test_routing_comparison_on_identical_inputs(tmp_path):
    cfg = compare.CompareConfig(
        out_dir=str(tmp_path),
        routers=("token_choice", "expert_choice"),
        skews=(0.0, 3.0),
        batch_sizes=(32,),
        width=16,
        ffn=16,
        experts=4,
        dispatch="slots",
        timing_spec=timing.TimingSpec(target_spread=0.5, time_budget_s=0.02, min_reps=3),
        bandwidth=1e10,
    )
    records = compare.run(cfg, log=lambda s: None)
    by = {(r["router"], r["skew"]): r for r in records}
    assert len(records) == 5  # the dense yardstick, then 2 routers x 2 skews
    tc0, tc3 = by[("token_choice", 0.0)]["metrics"], by[("token_choice", 3.0)]["metrics"]
    ec3 = by[("expert_choice", 3.0)]["metrics"]
    assert tc3["max_vio"] > tc0["max_vio"] and tc3["dropped_fraction"] > tc0["dropped_fraction"]
    assert tc3["load_before"][-1] == max(tc3["load_before"])  # the skew favours the last
    assert ec3["load_before"] == tc3["load_before"]  # same tokens, same router weights
    assert ec3["max_vio_after"] == 0
    assert by[("dense", 0.0)]["k_experts_read_s"] == pytest.approx(2 * 3 * 16 * 16 * 4 / 1e10)
    text = compare.summary(records)
    assert "How much slower is a layer whose busiest expert" in text
    x0, x3 = (f"{100 * m['max_vio']:+.0f}" for m in (tc0, tc3))
    assert "token_choice (slots): time" in text and f"b=32: X {x0}/{x3}% -> time 1.00/" in text
    assert compare.run(cfg, log=lambda s: None) == records  # a rerun measures nothing
