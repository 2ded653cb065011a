"""Measured ceilings for devices without a datasheet row (every CPU), cached per device.

It calibrates to the best the engine reaches, not to one kernel: XLA:CPU's elementwise
copy streams far below what a matrix-vector product reaches, so each ceiling is the
best of a few kernels, and the winner is recorded (issue 2, REFERENCE 2.9).
"""

import json
import os

import jax
import jax.numpy as jnp

from batchlab import timing
from batchlab.numerics import Numerics
from batchlab.roofline import Ceilings

SPEC = timing.TimingSpec(target_spread=0.05, time_budget_s=0.4, min_reps=5, warmup_reps=1)
COLD_BYTES = 256 * 2**20  # rotate over at least this much, to defeat caches


def _best(kernels):
    """(rate, name) of the fastest kernel; each kernel is (name, work, fn, arg sets)."""
    best = (0.0, "")
    for name, work, fn, arg_sets in kernels:
        compiled = timing.compile_ahead(fn, arg_sets[0]).compiled

        def call(i, compiled=compiled, arg_sets=arg_sets):
            return compiled(*arg_sets[i % len(arg_sets)]).block_until_ready()

        stats = timing.time_calls(call, SPEC)
        # The fastest call, not the median: another process can only slow a call down,
        # and the ceiling is what the engine can reach.
        best = max(best, (work / stats.min_s, name))
    return best


def _copies(base, min_total):
    """Distinct buffers of `base` (scaled, so values differ) that together exceed
    `min_total` bytes: cycling through them streams from main memory, not cache."""
    n = max(2, -(-min_total // base.nbytes))
    scale = jax.jit(lambda x, c: x * c)
    return [base] + [scale(base, jnp.asarray(1 + i / 64, base.dtype)) for i in range(1, n)]


def measure(numerics: Numerics, device=None, large: bool = False) -> Ceilings:
    """Matmul peak and streaming bandwidth measured on `device` for these numerics."""
    dtype, prec = numerics.jnp_dtype, numerics.lax_precision
    key = jax.random.PRNGKey(0)

    def rand(shape, i=0):
        return jax.device_put(jax.random.normal(jax.random.fold_in(key, i), shape, dtype), device)

    def matmul(a, b):
        return jnp.matmul(a, b, precision=prec)

    sizes = (1024, 2048, 4096, 8192) if large else (1024, 2048)
    flops, flops_kernel = _best(
        (
            f"{n}x{n}x{n} {numerics.dtype} matmul",
            2 * n**3,
            matmul,
            [(rand((n, n)), rand((n, n), 1))],
        )
        for n in sizes
    )
    s = numerics.itemsize
    bw_kernels = []
    for n in (2048, 4096, 8192):  # weights streamed once per call by a matrix-vector product
        v = rand((1, n))
        mats = _copies(rand((n, n)), COLD_BYTES)
        bw_kernels.append(
            (
                f"{n}x{n} matrix-vector, {len(mats)} rotated copies",
                n * n * s,
                matmul,
                [(v, m) for m in mats],
            )
        )
    big = 2**24  # elementwise: bytes read + written
    xs = _copies(rand((big,)), COLD_BYTES)
    bw_kernels.append(
        (
            f"elementwise x*c over {big} elements, {len(xs)} rotated copies",
            2 * big * s,
            lambda x: x * 1.0001,
            [(x,) for x in xs],
        )
    )
    bandwidth, bandwidth_kernel = _best(bw_kernels)
    return Ceilings(flops, bandwidth, "calibrated", flops_kernel, bandwidth_kernel)


def cached(path: str, device_kind: str, numerics: Numerics, device=None) -> Ceilings:
    """Ceilings from the cache file at `path`, measuring and saving them on a miss."""
    entries = {}
    if os.path.exists(path):
        with open(path) as f:
            entries = json.load(f)
    key = f"{device_kind}|{numerics.dtype}|{numerics.precision}"
    if key not in entries:
        platform = device.platform if device is not None else jax.default_backend()
        entries[key] = measure(numerics, device, large=platform != "cpu").as_dict()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(entries, f, indent=1)
        os.replace(tmp, path)
    return Ceilings(**entries[key])
