"""A test-only family that fails on purpose: registered with --family_modules=tests.fault_family.

batch 3 raises inside the function's build; batch 5 kills its process with SIGSEGV;
batch 7 reports an out-of-memory error; every other batch is a small matmul.
"""

import os
import signal

import jax
import jax.numpy as jnp

from batchlab import workloads
from batchlab.workloads.base import Cost, Family, Param, Workload

RAISES, SEGFAULTS, OOMS = 3, 5, 7


def cost(point, batch, numerics):
    n = point["size"]
    return Cost(2 * batch * n * n, 4 * n * n, 4 * 2 * batch * n)


def build(point, batch, numerics, key):
    if batch == RAISES:
        raise RuntimeError("deliberate failure for batch 3")
    if batch == SEGFAULTS:
        os.kill(os.getpid(), signal.SIGSEGV)
    if batch == OOMS:
        raise MemoryError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    n = point["size"]
    w = jax.random.normal(key, (n, n))
    x = jnp.ones((batch, n)) + 1
    return Workload(
        fn=lambda w, x: x @ w, weights=w, inputs=(x,), cost=cost(point, batch, numerics)
    )


workloads.register(
    Family(
        name="fault",
        description="fails on purpose at some batch sizes",
        params=(Param("size", "fault_sizes", int, (16,), "Matrix size.", minimum=1),),
        cost=cost,
        build=build,
        examples=({"size": 16}, {"size": 8}),
    )
)
