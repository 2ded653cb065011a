"""The "ffn" family: `copies` dense FFNs of one expert's size on the same tokens, summed.

With k copies it is the yardstick of a top-k MoE layer (experiments.routing): the work of
a perfectly balanced layer with no router, no dispatch and no padding, on the tokens the
moe_layer family gets at the same batch (`tokens` makes both).
"""

import jax
import jax.numpy as jnp

import batchlab.workloads.decoder as dec_wl
from batchlab.cost import Cost
from batchlab.models import moe as mm
from batchlab.moe import cost as moecost
from batchlab.moe import dispatch
from batchlab.numerics import Numerics
from batchlab.workloads.base import Family, Param, Point, Workload

_DECODER = {p.name: p for p in dec_wl.MODEL_PARAMS}
COPIES = Param(
    "copies",
    "copies",
    int,
    (1,),
    "Dense FFNs of one expert's size, run on the same tokens and summed (k: the "
    "yardstick of a top-k MoE layer).",
    minimum=1,
)
PARAMS = (_DECODER["width"], _DECODER["ffn"], _DECODER["ffn_kind"], COPIES)


def tokens(key, batch: int, width: int, dtype, mean: float = 0.0):
    """The B×D tokens of a one-layer family at a batch: standard normal, plus `mean` times
    a direction every token shares (as a transformer's hidden states share one). Made
    from the point's key alone, so every family and router at a batch gets the same."""
    _, k_x = jax.random.split(key)
    x_BxD = jax.random.normal(k_x, (batch, width), dtype)
    if mean:
        shared_D = jax.random.normal(jax.random.fold_in(k_x, 1), (width,))
        x_BxD = (x_BxD.astype(jnp.float32) + mean * shared_D).astype(dtype)
    return x_BxD


def cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    """`copies` times one dense FFN (batchlab.moe.cost.dense_ffn_cost)."""
    one, n = moecost.dense_ffn_cost(point, batch, numerics), point["copies"]
    return Cost(
        flops=n * one.flops,
        weight_bytes=n * one.weight_bytes,
        activation_bytes=n * one.activation_bytes,
    )


def build(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    k_init, _ = jax.random.split(key)
    gated, precision = point["ffn_kind"] == "gated", numerics.lax_precision
    experts = mm.init_experts(
        k_init, point["width"], point["ffn"], point["copies"], gated, numerics.jnp_dtype
    )

    def fn(ws, x_BxD):
        return sum(dispatch.expert_ffn(w, x_BxD, precision) for w in ws)

    return Workload(
        fn=fn,
        weights=mm.expert_list(experts),
        inputs=(tokens(key, batch, point["width"], numerics.jnp_dtype),),
        cost=cost(point, batch, numerics),
    )


FAMILY = Family(
    name="ffn",
    description="`copies` dense FFNs of one expert's size on the same tokens, summed",
    params=PARAMS,
    cost=cost,
    build=build,
    batch_unit="tokens",
    examples=({"width": 64, "ffn": 48, "copies": 2}, {"width": 64, "ffn": 48, "ffn_kind": "plain"}),
)
