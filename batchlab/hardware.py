"""Device ceilings: the datasheet table (REFERENCE 3) and detection of the device at hand."""

import dataclasses
import os
import re

from batchlab.errors import ConfigError
from batchlab.numerics import Numerics
from batchlab.roofline import Ceilings

TERA, GIGA, MIB = 1e12, 1e9, 2**20


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Dense datasheet peaks in FLOP/s, bandwidth in B/s (REFERENCE 3)."""

    key: str
    name: str
    match: tuple[str, ...]  # regexes searched in jax's lower-cased device_kind
    fp32: float
    tf32: float | None  # None: no tf32 units (T4, TPUs)
    bf16: float | None  # bf16/fp16 tensor peak; None where bf16 is not native (T4)
    fp16: float
    bandwidth: float
    memory_bytes: float
    cache_bytes: float | None  # last-level cache (GPU L2), for REFERENCE 2.9
    kind: str = "gpu"  # "gpu" or "tpu": tpu fp32 runs as bf16 passes
    link: float | None = None  # interconnect B/s per device, one direction (see LINKS)


def _gpu(key, name, match, fp32, tf32, bf16, fp16, bw, mem_gb, l2_mb, link_gb):
    return DeviceSpec(
        key,
        name,
        match,
        fp32 * TERA,
        tf32 and tf32 * TERA,
        bf16 and bf16 * TERA,
        fp16 * TERA,
        bw * GIGA,
        mem_gb * GIGA,
        l2_mb and l2_mb * MIB,
        link=link_gb * GIGA,
    )


def _tpu(key, name, match, bf16, bw, mem_gb, link_gb):
    return DeviceSpec(
        key,
        name,
        match,
        bf16 * TERA,
        None,
        bf16 * TERA,
        bf16 * TERA,
        bw * GIGA,
        mem_gb * GIGA,
        None,
        kind="tpu",
        link=link_gb * GIGA,
    )


# Dense peaks; NVIDIA's "with sparsity" figures are halved (REFERENCE 3).
# LINKS (last column, GB/s one direction; vendor pages, not in REFERENCE): half the
# bidirectional NVLink figure (A100 600, H100/H200 900, B200 1800 GB/s), PCIe x16 for
# the PCIe cards (gen3 T4, gen4 L4/A10, gen5 H100 PCIe), half the per-chip ICI figure for
# TPUs (v4 2400, v5e 1600, v5p 4800, v6e 3584 Gbps). Only the collective roof of a
# sharded point uses them; a measured all_to_all is the better number.
DATASHEET: dict[str, DeviceSpec] = {
    d.key: d
    for d in (
        _gpu("t4", "NVIDIA T4", (r"\bt4\b",), 8.1, None, None, 65, 320, 16, 4, 16),
        _gpu("l4", "NVIDIA L4", (r"\bl4\b",), 30.3, 60, 121, 121, 300, 24, 48, 32),
        _gpu("a10", "NVIDIA A10", (r"\ba10\b",), 31.2, 62.5, 125, 125, 600, 24, 6, 32),
        _gpu(
            "a100_40gb",
            "NVIDIA A100 40GB",
            (r"\ba100\b.*40gb",),
            *(19.5, 156, 312, 312, 1555, 40, 40, 300),
        ),
        _gpu(
            "a100_80gb",
            "NVIDIA A100 80GB",
            (r"\ba100\b",),
            *(19.5, 156, 312, 312, 2039, 80, 40, 300),
        ),
        _gpu(
            "h100_pcie",
            "NVIDIA H100 PCIe",
            (r"\bh100\b.*pcie",),
            *(51, 378, 756, 756, 2000, 80, 50, 64),
        ),
        _gpu(
            "h100_sxm",
            "NVIDIA H100 SXM",
            (r"\bh100\b",),
            *(67, 494.7, 989.4, 989.4, 3350, 80, 50, 450),
        ),
        _gpu("h200", "NVIDIA H200", (r"\bh200\b",), 67, 494.7, 989.4, 989.4, 4800, 141, 60, 450),
        _gpu("b200", "NVIDIA B200", (r"\bb200\b",), 80, 1100, 2250, 2250, 8000, 192, 126, 900),
        _tpu("tpu_v4", "TPU v4", (r"tpu v4",), 275, 1200, 32 * 1.073741824, 150),
        _tpu("tpu_v5e", "TPU v5e", (r"tpu v5 ?(lite|e)",), 197, 819, 16, 100),
        _tpu("tpu_v5p", "TPU v5p", (r"tpu v5p?$",), 459, 2765, 95, 300),
        _tpu("tpu_v6e", "TPU v6e", (r"tpu v6 ?(lite|e)",), 918, 1640, 32, 224),
    )
}


def lookup(device_kind: str) -> DeviceSpec | None:
    """The datasheet row for jax's `device_kind`, or None (every CPU)."""
    kind = device_kind.lower()
    for spec in DATASHEET.values():  # ordered so specific patterns come first
        if any(re.search(m, kind) for m in spec.match):
            return spec
    return None


def by_key(key: str, flag: str = "--predict_for") -> DeviceSpec:
    """A datasheet row by its short key, or a ConfigError listing them."""
    if key not in DATASHEET:
        raise ConfigError(f"{flag}: unknown device {key!r}; allowed are {', '.join(DATASHEET)}")
    return DATASHEET[key]


def prediction_target(text: str, numerics: Numerics, flag="--predict_for") -> tuple[str, Numerics]:
    """'t4' (in `numerics`) or 't4:float16' (that dtype, same precision) -> (key, numerics)."""
    key, _, dtype = text.partition(":")
    by_key(key, flag)
    if not dtype:
        return key, numerics
    try:
        return key, Numerics(dtype, numerics.precision)
    except ConfigError:
        raise ConfigError(
            f"{flag}: {text!r}: unknown dtype {dtype!r}; write DEVICE or DEVICE:DTYPE"
        ) from None


def peak_flops(spec: DeviceSpec, numerics: Numerics) -> tuple[float, str]:
    """Dense peak for this dtype and precision, and which unit it assumes (REFERENCE 3)."""
    if numerics.dtype == "float32":
        if spec.kind == "tpu":
            # fp32 matmuls run as bf16 passes: 1 (default), 3 (high), 6 (highest).
            passes = {"default": 1, "high": 3, "highest": 6}[numerics.precision]
            return spec.bf16 / passes, f"bf16 MXU x{passes} passes"
        if numerics.precision != "highest" and spec.tf32:
            return spec.tf32, "tf32 tensor cores"
        return spec.fp32, "fp32 cores"
    if numerics.dtype == "bfloat16" and spec.bf16 is None:
        return spec.fp32, "fp32 cores (no native bf16)"
    return (spec.fp16 if numerics.dtype == "float16" else spec.bf16), f"{numerics.dtype} tensor"


def datasheet_ceilings(spec: DeviceSpec, numerics: Numerics) -> Ceilings:
    """The roofline ceilings of a datasheet row for these numerics."""
    peak, unit = peak_flops(spec, numerics)
    return Ceilings(peak, spec.bandwidth, "datasheet", unit, "datasheet", spec.link)


def host_cache_levels() -> dict[str, int]:
    """CPU data/unified cache sizes from sysfs, e.g. {"L1": 32768, "L2": ..., "L3": ...}."""
    levels: dict[str, int] = {}
    root = "/sys/devices/system/cpu/cpu0/cache"
    for entry in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(f"{root}/{entry}/type") as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(f"{root}/{entry}/level") as f:
                level = f"L{f.read().strip()}"
            with open(f"{root}/{entry}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
        levels[level] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return levels


def cache_levels(platform: str, spec: DeviceSpec | None) -> dict[str, int]:
    """The caches a working set may fit in, smallest first."""
    if platform == "cpu":
        return host_cache_levels()
    if spec is not None and spec.cache_bytes:
        return {"L2": int(spec.cache_bytes)}
    return {}


def fits_in(working_set_bytes: float, caches: dict[str, int]) -> str:
    """The smallest cache level holding the working set, else "memory" (REFERENCE 2.9)."""
    for level, size in sorted(caches.items(), key=lambda kv: kv[1]):
        if working_set_bytes <= size:
            return level
    return "memory"
