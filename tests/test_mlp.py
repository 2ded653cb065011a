"""The MLP family: model output, analytic cost by hand and against XLA's cost analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchlab import timing
from batchlab.numerics import Numerics
from batchlab.workloads import mlp


def test_forward_matches_plain_jnp_reference():
    point = {"depth": 3, "width": 32, "input_width": 16}
    work = mlp.build(point, 5, Numerics(), jax.random.PRNGKey(0))
    got = work.fn(work.weights, *work.inputs)
    x = np.asarray(work.inputs[0], np.float64)
    params = work.weights["params"]
    for i in range(3):
        layer = params[f"dense_{i}"]
        x = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < 2:
            x = np.maximum(x, 0)
    assert got.shape == (5, 32)
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-5, atol=1e-5)


def test_inputs_and_weights_are_random_and_nonzero():
    work = mlp.build(
        {"depth": 2, "width": 8, "input_width": 0}, 4, Numerics(), jax.random.PRNGKey(1)
    )
    leaves = [work.inputs[0], *jax.tree.leaves(work.weights)]
    assert all(float(jnp.min(jnp.abs(a))) > 0 for a in leaves)
    assert float(jnp.std(work.inputs[0])) > 0.5


def test_cost_by_hand():
    # depth 2, width 4, input 3, batch 2, fp32: layers 3x4 (ReLU) and 4x4.
    c = mlp.cost({"depth": 2, "width": 4, "input_width": 3}, 2, Numerics("float32"))
    assert c.flops == (2 * 2 * 3 * 4 + 2 * 4 * 2) + (2 * 2 * 4 * 4 + 2 * 4)  # = 136
    assert c.weight_bytes == 4 * ((3 * 4 + 4) + (4 * 4 + 4))  # = 144
    assert c.activation_bytes == 4 * 2 * ((3 + 4) + (4 + 4))  # = 120
    half = mlp.cost({"depth": 2, "width": 4, "input_width": 3}, 2, Numerics("bfloat16"))
    assert half.weight_bytes == 72 and half.flops == 136


def test_post_mlp_is_8_million_weights():
    c = mlp.cost({"depth": 8, "width": 1024, "input_width": 0}, 1, Numerics())
    assert c.weight_bytes == 4 * 8 * (1024 * 1024 + 1024)
    assert c.flops == pytest.approx(2 * 8 * 1024 * 1024, rel=2e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "point,batch",
    [
        ({"depth": 3, "width": 32, "input_width": 16}, 4),
        ({"depth": 1, "width": 64, "input_width": 0}, 7),
    ],
)
def test_weight_traffic_and_bf16_flops_match_cost_analysis(point, batch, dtype):
    """Float32 FLOPs are checked for every family in tests/test_families.py."""
    numerics = Numerics(dtype)
    work = mlp.build(point, batch, numerics, jax.random.PRNGKey(0))
    xla = timing.compile_ahead(work.fn, (work.weights, *work.inputs)).cost_analysis
    # XLA reports the bytes of parameter 1 (the flattened weights) separately.
    if dtype == "float32":
        assert xla["bytes accessed1{}"] == pytest.approx(work.cost.weight_bytes, rel=0.02)
    else:  # XLA:CPU upcasts bf16 to f32: the converts add FLOPs and weight traffic
        assert work.cost.flops <= xla["flops"] <= 1.3 * work.cost.flops
        assert xla["bytes accessed1{}"] >= work.cost.weight_bytes
