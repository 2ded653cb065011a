"""Run by test_distributed with 8 fake CPU devices: sharded workloads equal unsharded ones.

Not a test module itself (pytest collects test_*.py only); prints "OK <case>" per check.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from batchlab import distributed, timing
from batchlab.models import moe as mm
from batchlab.numerics import Numerics
from batchlab.workloads import REGISTRY
from batchlab.workloads import moe as wl_moe
from tests.conftest import SMALL_DECODER as DECODER

# The family's defaults (E=8, k=2, token choice, capacity 1), at a small width.
LAYER = {p.name: p.default[0] for p in REGISTRY["moe_layer"].params} | {
    "width": 32,
    "ffn": 48,
    "dispatch": "slots",
}
MOE = {k: v for k, v in LAYER.items() if k not in ("width", "ffn", "ffn_kind", "routing_group")}
DATA_8 = (("data", 8),)
# (name, family, point, batch, mesh)
CASES = [
    ("mlp", "mlp", {"depth": 2, "width": 64, "input_width": 0}, 16, DATA_8),
    ("decode", "decode", DECODER | {"context": 12}, 16, DATA_8),
    ("prefill", "prefill", DECODER | {"prompt_len": 8}, 16, DATA_8),
    ("moe_layer", "moe_layer", LAYER, 64, DATA_8),
    ("moe_decode", "moe_decode", DECODER | MOE | {"moe_every": 1, "context": 12}, 16, DATA_8),
] + [
    (
        f"ep {router} {','.join(f'{a}:{n}' for a, n in mesh)}",
        "moe_layer",
        LAYER | {"router": router},
        64,
        mesh,
    )
    for router in ("token_choice", "dropless", "expert_choice")
    for mesh in ((("expert", 8),), (("data", 2), ("expert", 4)))
]


def per_device_groups(work, point, devices: int):
    """The single-device layer run on each device's tokens as its own group."""
    (x_BxD,) = work.inputs
    w, moe = work.weights, wl_moe.moe_config(point)
    groups = jnp.split(x_BxD, devices)
    return jnp.concatenate(
        [mm.moe_apply(w["params"], w["balance"]["bias"], x, moe)[0] for x in groups]
    )


def close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


_BUILT = {}


def built(family, point, batch):
    """(workload, its unsharded result), built once for the meshes that share it (the
    build, a compiled Flax init, is most of this check's time)."""
    key = (family, json.dumps(point, sort_keys=True), batch)
    if key not in _BUILT:
        work = REGISTRY[family].build(point, batch, Numerics(), jax.random.PRNGKey(0))
        _BUILT[key] = work, jax.jit(work.fn)(work.weights, *work.inputs)
    return _BUILT[key]


def run_case(family, point, batch, spec):
    """(sharded result, unsharded result, the unsharded workload, the Placed workload)."""
    mesh = distributed.make_mesh(spec)
    work, want = built(family, point, batch)
    placed = distributed.place_workload(work, batch, mesh)
    got = jax.jit(placed.fn)(placed.weights, *placed.inputs)
    first = jax.tree.leaves(placed.inputs)[0]
    assert len(first.sharding.device_set) == 8
    assert first.addressable_shards[0].data.shape[0] == batch // 8
    return got, want, work, placed


def check_flops(placed, point, batch, spec):
    """One device's FLOPs as XLA counts them (padded buffers included) match the analytic
    per-device cost, within softmax and routing extras."""
    xla = timing.compile_ahead(placed.fn, (placed.weights, *placed.inputs)).cost_analysis
    cost = distributed.cost_on_mesh(REGISTRY["moe_layer"], point, batch, Numerics(), spec)
    assert cost.collective_bytes > 0 or "expert" not in dict(spec)
    assert cost.flops <= xla["flops"] <= 1.1 * cost.flops, (xla, cost)


def main():
    assert jax.device_count() == 8, jax.device_count()
    for name, family, point, batch, spec in CASES:
        got, want, work, placed = run_case(family, point, batch, spec)
        close(got, want)
        if name.startswith("ep"):
            assert placed.metrics["dispatch"]["chosen"] == "all_to_all"
            assert "expert" in placed.specs["experts"]
            check_flops(placed, point, batch, spec)
        if name.startswith("ep token_choice"):  # capacity drops copies: routing must match
            assert work.metrics["balance"][0]["dropped_fraction"] > 0
        print("OK", name, jax.tree.leaves(placed.inputs)[0].sharding.spec)

    # Each device its own routing group: equals the layer run per device, and (capacity
    # drops depend on the group) differs from the whole batch as one group.
    # On a data-only mesh too: the expert-parallel path with every expert at home.
    point = LAYER | {"routing_group": "device"}
    for spec in ((("data", 2), ("expert", 4)), DATA_8):
        got, whole, work, placed = run_case("moe_layer", point, 64, spec)
        close(got, per_device_groups(work, point, 8))
        check_flops(placed, point, 64, spec)
        assert placed.metrics["dispatch"]["routing_group"] == "device"
        assert not np.allclose(np.asarray(got), np.asarray(whole), atol=1e-3)
    print("OK ep device groups")


if __name__ == "__main__":
    main()
