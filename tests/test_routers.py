"""Routers against hand-computed cases: the two routing faults of issue 14 (regression
tests from its inputs), DeepSeek-V3-style routing, shared experts and the
sequence-level balance loss."""

import math

import jax.numpy as jnp
import pytest

from batchlab.errors import ConfigError
from batchlab.models import moe as mm
from batchlab.moe import routing
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
