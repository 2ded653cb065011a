"""The MLP family: depth x Dense(width), ReLU between (REFERENCE 2.2)."""

import jax

from batchlab.models.mlp import MLP
from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Family, Param, Point, Workload


def layer_shapes(point: Point) -> list[tuple[int, int]]:
    """(inputs, outputs) of each Dense layer."""
    widths = [point["input_width"] or point["width"]] + [point["width"]] * point["depth"]
    return list(zip(widths[:-1], widths[1:]))


def dense_cost(m: int, n: int, batch: int, numerics: Numerics, relu: bool) -> Cost:
    """One Dense layer m x n with bias (REFERENCE 2.2): 2bmn FLOPs, s_w(mn+n), s_a b(m+n)."""
    s = numerics.itemsize
    elementwise = batch * n * (2 if relu else 1)  # bias add, then max(x, 0)
    return Cost(
        flops=2 * batch * m * n + elementwise,
        weight_bytes=s * (m * n + n),
        activation_bytes=s * batch * (m + n),
    )


def cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    """Summed over layers; the last layer has no ReLU."""
    shapes = layer_shapes(point)
    return sum(
        (
            dense_cost(m, n, batch, numerics, relu=i < len(shapes) - 1)
            for i, (m, n) in enumerate(shapes)
        ),
        Cost(0, 0, 0),
    )


def build(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """Random weights and a random non-zero input batch, on the default device."""
    model = MLP(point["depth"], point["width"], numerics.jnp_dtype, numerics.lax_precision)
    in_width = layer_shapes(point)[0][0]
    init_key, x_key = jax.random.split(key)
    x_BxI = jax.random.normal(x_key, (batch, in_width), numerics.jnp_dtype)
    weights = jax.jit(model.init)(init_key, x_BxI[:1])
    return Workload(
        fn=model.apply, weights=weights, inputs=(x_BxI,), cost=cost(point, batch, numerics)
    )


FAMILY = Family(
    name="mlp",
    description="depth x Dense(width) with ReLU between layers",
    params=(
        Param("depth", "depths", int, (8,), "Dense layers in the MLP.", minimum=1),
        Param("width", "widths", int, (1024,), "Width of each Dense layer.", minimum=1),
        Param(
            "input_width",
            "input_widths",
            int,
            (0,),
            "Width of the MLP's input; 0 means the same as --widths.",
            minimum=0,
        ),
    ),
    cost=cost,
    build=build,
    examples=({"depth": 2, "width": 32}, {"depth": 3, "width": 24, "input_width": 16}),
)
