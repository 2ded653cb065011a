"""A test-only family for the hardening tests: --family_modules=tests.hostile_family.

batch 2 hangs (for --point_timeout_s); batch 4 compiles a call that sorts 1 TiB, so XLA's
allocator refuses it when it runs (a real out-of-memory error, with the compile's memory
analysis known); batch 6 asks numpy for 8 TiB (MemoryError); every other batch is a
small matmul.
"""

import time

import jax.numpy as jnp
import numpy as np

from batchlab import workloads
from batchlab.workloads.base import Cost, Family, Param, Workload

HANGS, XLA_OOM, NUMPY_OOM = 2, 4, 6


def cost(point, batch, numerics):
    n = point["size"]
    return Cost(2 * batch * n * n, 4 * n * n, 4 * 2 * batch * n)


def build(point, batch, numerics, key):
    if batch == HANGS:
        time.sleep(3600)
    if batch == NUMPY_OOM:
        np.ones((2**40,), np.float64)
    n = point["size"]
    w = jnp.ones((n, n))
    x = jnp.ones((batch, n))
    fn = _sorts_a_tebibyte if batch == XLA_OOM else lambda w, x: x @ w
    return Workload(fn=fn, weights=w, inputs=(x,), cost=cost(point, batch, numerics))


def _sorts_a_tebibyte(w, x):
    big = x[0, 0] + jnp.arange(2**38, dtype=jnp.float32)
    return x @ w + jnp.sort(big)[0]


workloads.register(
    Family(
        name="hostile",
        description="hangs or runs out of memory on purpose at some batch sizes",
        params=(Param("size", "fault_sizes", int, (16,), "Matrix size.", minimum=1),),
        cost=cost,
        build=build,
        examples=({"size": 16}, {"size": 8}),
    )
)
