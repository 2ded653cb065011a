"""Measured ceilings for devices without a datasheet row (every CPU), cached per device.

It calibrates to the best the engine reaches, not to one kernel: XLA:CPU's elementwise
copy streams far below what a matrix-vector product reaches, so each ceiling is the
best of a few kernels, and the winner is recorded (issue 2, REFERENCE 2.9).
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp

from batchlab import hardware, timing
from batchlab.numerics import Numerics
from batchlab.roofline import Ceilings

SPEC = timing.TimingSpec(target_spread=0.05, time_budget_s=0.4, min_reps=5, warmup_reps=1)
MIB, GIB = 2**20, 2**30
COLD_BYTES = 256 * MIB  # CPU: rotate over at least this much, to defeat caches
# An accelerator (issue 15): streams of at least STREAM_BYTES, capped at an eighth of the
# device's memory, so one call takes far longer than its dispatch (a 64 MiB stream is
# 15-60 us on an H200, of which dispatch is 15-40%); square matmuls of MATMUL_SIZES whose
# three matrices fit in that eighth (8192 always), large enough to approach the peak.
STREAM_BYTES = GIB
MEMORY_SHARE = 8
MATMUL_SIZES = (8192, 16384)
MATVEC_COLUMNS = 8192


@dataclasses.dataclass(frozen=True)
class Plan:
    """What calibration runs on one device: square matmul sizes, matrix-vector products
    (rows, columns), the elementwise stream's elements, the bytes each kernel's rotated
    copies must exceed, the timing spec, and the matmul unit the peak is measured on."""

    matmuls: tuple[int, ...]
    matvecs: tuple[tuple[int, int], ...]
    stream_elements: int
    cold_bytes: int
    spec: timing.TimingSpec
    unit: str


def _representative(kind: str, tensor_cores: bool) -> hardware.DeviceSpec | None:
    """A datasheet row of that kind, with (Ampere or newer) or without tf32 units."""
    for spec in hardware.DATASHEET.values():
        if spec.kind == kind and (kind == "tpu" or bool(spec.tf32) == tensor_cores):
            return spec
    return None


def unit(platform: str, numerics: Numerics, compute_capability: str | None = None) -> str:
    """The matmul unit these numerics run on, named as hardware.peak_flops names a
    datasheet row's: on an NVIDIA GPU of compute capability 8.0 (Ampere) or newer, float32
    at default precision runs on TF32 tensor cores and bf16 is native; older GPUs (Volta,
    Turing) have neither; a TPU runs float32 as bf16 MXU passes (REFERENCE 3)."""
    if platform == "cpu":
        return f"CPU cores ({numerics.dtype})"
    if platform == "tpu":
        row = _representative("tpu", True)
    else:
        try:
            major = int(str(compute_capability).split(".")[0])
        except ValueError:
            return f"GPU {numerics.dtype} units (compute capability unknown)"
        row = _representative("gpu", major >= 8)
    if row is None:  # no datasheet row of that kind to name the unit from
        return f"{platform} {numerics.dtype} units"
    return hardware.peak_flops(row, numerics)[1]


def plan(
    platform: str,
    numerics: Numerics,
    memory_bytes: float | None = None,
    compute_capability: str | None = None,
) -> Plan:
    """The calibration of a device of `platform` with `memory_bytes` of memory (None:
    unknown): a CPU as it always was (matmuls 1024 and 2048, square matrix-vector products
    2048-8192 and a 2^24-element stream, each rotated over COLD_BYTES); an accelerator
    with streams of STREAM_BYTES capped at memory / MEMORY_SHARE, MATMUL_SIZES that fit in
    that share, and its warm-up (timing.for_platform)."""
    s = numerics.itemsize
    name = unit(platform, numerics, compute_capability)
    if platform == "cpu":
        squares = tuple((n, n) for n in (2048, 4096, 8192))
        return Plan((1024, 2048), squares, 2**24, COLD_BYTES, SPEC, name)
    share = memory_bytes / MEMORY_SHARE if memory_bytes else None
    stream = STREAM_BYTES if share is None else min(STREAM_BYTES, int(share))
    fits = [n for n in MATMUL_SIZES if share is not None and 3 * n * n * s <= share]
    matmuls = tuple(dict.fromkeys((MATMUL_SIZES[0], *fits)))
    rows = max(1, stream // (MATVEC_COLUMNS * s))
    # A stream this large is past every cache (GPU L2 <= 126 MB): two copies suffice.
    return Plan(
        matmuls,
        ((rows, MATVEC_COLUMNS),),
        stream // s,
        stream,
        timing.for_platform(SPEC, platform),
        name,
    )


def plan_for(device, numerics: Numerics) -> Plan:
    """plan() for a jax device: its platform, memory (memory_stats) and compute capability."""
    platform = device.platform if device is not None else jax.default_backend()
    memory = None
    if device is not None and platform != "cpu":
        try:
            memory = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # not every backend has memory_stats
            memory = None
    return plan(platform, numerics, memory, getattr(device, "compute_capability", None))


def _rate(make, spec: timing.TimingSpec) -> tuple[float, str]:
    """(work per second of the fastest call, name) of one kernel; its buffers are freed
    on return, before the next kernel's are made."""
    name, work, fn, arg_sets = make()
    compiled = timing.compile_ahead(fn, arg_sets[0]).compiled
    stats = timing.time_calls(
        lambda i: compiled(*arg_sets[i % len(arg_sets)]).block_until_ready(), spec
    )
    # The fastest call, not the median: another process can only slow a call down, and
    # the ceiling is what the engine can reach.
    return work / stats.min_s, name


def _best(kernels, spec: timing.TimingSpec) -> tuple[float, str]:
    """(rate, name) of the fastest kernel; each kernel is a function returning (name,
    work, fn, arg sets), called only when its turn comes."""
    return max((_rate(make, spec) for make in kernels), default=(0.0, ""))


def _copies(base, min_total):
    """Distinct buffers of `base` (scaled, so values differ) that together exceed
    `min_total` bytes: cycling through them streams from main memory, not cache."""
    n = max(2, -(-min_total // base.nbytes))
    scale = jax.jit(lambda x, c: x * c)
    return [base] + [scale(base, jnp.asarray(1 + i / 64, base.dtype)) for i in range(1, n)]


def _size(nbytes: float) -> str:
    return f"{nbytes / GIB:.3g} GiB" if nbytes >= GIB else f"{nbytes / MIB:.3g} MiB"


def measure(numerics: Numerics, device=None, how: Plan | None = None) -> Ceilings:
    """Matmul peak and streaming bandwidth measured on `device` for these numerics, as
    the plan `how` says (default: plan_for the device). The peak's kernel names the unit
    that ran it ("8192x8192x8192 float32 matmul on tf32 tensor cores")."""
    plan = how or plan_for(device, numerics)
    dtype, prec = numerics.jnp_dtype, numerics.lax_precision
    key = jax.random.PRNGKey(0)

    def rand(shape, i=0):
        return jax.device_put(jax.random.normal(jax.random.fold_in(key, i), shape, dtype), device)

    def matmul(a, b):
        return jnp.matmul(a, b, precision=prec)

    def square(n):
        return lambda: (
            f"{n}x{n}x{n} {numerics.dtype} matmul on {plan.unit}",
            2 * n**3,
            matmul,
            [(rand((n, n)), rand((n, n), 1))],
        )

    flops, flops_kernel = _best([square(n) for n in plan.matmuls], plan.spec)
    s = numerics.itemsize

    def matvec(rows, cols):  # weights streamed once per call by a matrix-vector product
        def make():
            mats = _copies(rand((rows, cols)), plan.cold_bytes)
            return (
                f"{rows}x{cols} matrix-vector ({_size(rows * cols * s)}), "
                f"{len(mats)} rotated copies",
                rows * cols * s,
                matmul,
                [(rand((1, rows)), m) for m in mats],
            )

        return make

    def elementwise():  # bytes read + written
        big = plan.stream_elements
        xs = _copies(rand((big,)), plan.cold_bytes)
        return (
            f"elementwise x*c over {big} elements ({_size(big * s)}), {len(xs)} rotated copies",
            2 * big * s,
            lambda x: x * 1.0001,
            [(x,) for x in xs],
        )

    kernels = [matvec(r, c) for r, c in plan.matvecs] + [elementwise]
    bandwidth, bandwidth_kernel = _best(kernels, plan.spec)
    return Ceilings(flops, bandwidth, "calibrated", flops_kernel, bandwidth_kernel)


def cached(path: str, device_kind: str, numerics: Numerics, device=None) -> Ceilings:
    """Ceilings from the cache file at `path`, measuring and saving them on a miss."""
    entries = {}
    if os.path.exists(path):
        with open(path) as f:
            entries = json.load(f)
    key = f"{device_kind}|{numerics.dtype}|{numerics.precision}"
    if key not in entries:
        entries[key] = measure(numerics, device).as_dict()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(entries, f, indent=1)
        os.replace(tmp, path)
    return Ceilings(**entries[key])
