"""Run by test_distributed with 8 fake CPU devices: sharded workloads equal unsharded ones.

Not a test module itself (pytest collects test_*.py only); prints "OK <family>" per check.
"""

import jax
import numpy as np

from batchlab import distributed
from batchlab.numerics import Numerics
from batchlab.workloads import REGISTRY

DECODER = {
    "depth": 2,
    "width": 64,
    "heads": 4,
    "kv_heads": 2,
    "ffn": 96,
    "ffn_kind": "gated",
    "position_kind": "rope",
    "embeddings": "tied",
    "vocab": 101,
    "max_len": 64,
}
CASES = {
    "mlp": {"depth": 2, "width": 64, "input_width": 0},
    "decode": DECODER | {"context": 12},
    "prefill": DECODER | {"prompt_len": 8},
}


def main():
    assert jax.device_count() == 8, jax.device_count()
    mesh = distributed.make_mesh((("data", 8),))
    for name, point in CASES.items():
        work = REGISTRY[name].build(point, 16, Numerics(), jax.random.PRNGKey(0))
        want = jax.jit(work.fn)(work.weights, *work.inputs)
        weights, inputs, specs = distributed.place(work.weights, work.inputs, 16, mesh)
        got = jax.jit(work.fn)(weights, *inputs)
        first = jax.tree.leaves(inputs)[0]
        assert (
            len(first.sharding.device_set) == 8 and first.addressable_shards[0].data.shape[0] == 2
        )
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
        print("OK", name, specs["inputs"][0])


if __name__ == "__main__":
    main()
