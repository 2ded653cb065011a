"""A test-only family whose points fail as a broken device would:
--family_modules=tests.device_fault_family.

batch 2 raises with a CUDA driver error code (a device fault on any platform); batch 3
raises an XLA `INTERNAL: ` status, which on a CPU is not a device fault; batch 5 prints
XLA's CHECK failure on a CUDA error to stderr and aborts, as XLA does; every other batch
is a small matmul. Each build appends "BATCH PID" to $BATCHLAB_PID_LOG when it is set, so a
test can tell which points shared a worker.
"""

import os
import sys

import jax.numpy as jnp

from batchlab import workloads
from batchlab.workloads.base import Cost, Family, Param, Workload

CUDA_FAULT, CPU_INTERNAL, ABORTS = 2, 3, 5
CUDA_TEXT = "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered (deliberate)"
INTERNAL_TEXT = "INTERNAL: deliberate XLA status raised on the host"
ABORT_TEXT = (
    "F0000 00:00:00.000000 1 cuda_executor.cc:1] Check failed: "
    "cuStreamSynchronize(stream) failed: CUDA_ERROR_LAUNCH_FAILED (deliberate)"
)


def cost(point, batch, numerics):
    n = point["size"]
    return Cost(2 * batch * n * n, 4 * n * n, 4 * 2 * batch * n)


def build(point, batch, numerics, key):
    log = os.environ.get("BATCHLAB_PID_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{batch} {os.getpid()}\n")
    if batch == CUDA_FAULT:
        raise RuntimeError(CUDA_TEXT)
    if batch == CPU_INTERNAL:
        raise RuntimeError(INTERNAL_TEXT)
    if batch == ABORTS:
        sys.stderr.write(ABORT_TEXT + "\n")
        sys.stderr.flush()
        os.abort()
    n = point["size"]
    w, x = jnp.ones((n, n)), jnp.ones((batch, n))
    return Workload(
        fn=lambda w, x: x @ w, weights=w, inputs=(x,), cost=cost(point, batch, numerics)
    )


workloads.register(
    Family(
        name="device_fault",
        description="fails as a broken device would at some batch sizes",
        params=(Param("size", "fault_sizes", int, (16,), "Matrix size.", minimum=1),),
        cost=cost,
        build=build,
        examples=({"size": 16}, {"size": 8}),
    )
)
