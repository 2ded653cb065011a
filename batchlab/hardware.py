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
    """Dense datasheet peaks of one JAX device in FLOP/s, bandwidth in B/s (REFERENCE 3).

    One row per JAX device: where a chip shows JAX two devices (TPU v3's TensorCores,
    TPU7x's chiplets) the row is half the chip's figures."""

    key: str
    name: str
    match: tuple[str, ...]  # each fullmatched against the normalised device_kind
    fp32: float
    tf32: float | None  # None: no tf32 units (T4, TPUs)
    bf16: float | None  # bf16/fp16 tensor peak; None where bf16 is not native (T4)
    fp16: float
    bandwidth: float
    memory_bytes: float
    cache_bytes: float | None  # last-level cache (GPU L2), for REFERENCE 2.9; None: unknown
    kind: str = "gpu"  # "gpu" or "tpu": tpu fp32 runs as bf16 passes
    link: float | None = None  # interconnect B/s per device, one direction (see LINKS)
    fp8: float | None = None  # dense fp8 tensor peak; None: the part has none
    int8: float | None = None  # dense int8 tensor peak (OP/s); None: the part has none
    source: str = ""  # where the figures come from


def _gpu(key, name, match, fp32, tf32, bf16, fp16, bw, mem_gb, l2_mb, link_gb, fp8, int8, source):
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
        link=link_gb and link_gb * GIGA,
        fp8=fp8 and fp8 * TERA,
        int8=int8 and int8 * TERA,
        source=source,
    )


def _tpu(key, name, match, bf16, bw, mem_gb, link_gb, fp8, int8, source):
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
        link=link_gb and link_gb * GIGA,
        fp8=fp8 and fp8 * TERA,
        int8=int8 and int8 * TERA,
        source=source,
    )


GIB = 1.073741824  # GB per GiB, for the TPU pages that give GiB

# Dense peaks; NVIDIA's "with sparsity" tensor figures are halved (REFERENCE 3). Every
# figure is the vendor's, from the source named in the row, except where a comment says
# otherwise. Columns: fp32, tf32, bf16, fp16 (TFLOP/s), bandwidth (GB/s), memory (GB),
# L2 (MiB), link (GB/s one direction), fp8, int8 (dense TFLOP/s, TOP/s).
# LINKS (vendor pages, not in REFERENCE): half the bidirectional NVLink figure (A100 600,
# H100/H200/GH200 900, H100/H200 NVL bridge 600/900, B200 1800 GB/s), PCIe x16 one
# direction for cards without NVLink (gen3 T4, gen4 L4/A10/A10G/L40S/A100 PCIe, gen5 H100
# PCIe), half the per-chip ICI figure for TPUs (v4 2400, v5e 1600, v5p 4800, v6e 3584
# Gbps; TPU7x 1200 GB/s bidirectional per chip, split over its two devices). Only the
# collective roof of a sharded point uses them; a measured all_to_all is the better number.
# L2: NVIDIA gives none for the H200, the NVL parts or GH200; they get the 50 MB of the
# H100 SXM5 and PCIe (Hopper architecture whitepaper), the same GH100 configuration. The
# L40S datasheet gives none either: left unknown (None) rather than guessed.
# float32 on TPU: JAX's DEFAULT precision runs a float32 matmul as one bf16 pass (HIGH 3,
# HIGHEST 6), per the jax.lax.Precision docstring (jax 0.10.2) and REFERENCE 3, so a
# float32 TPU peak is the bf16 peak / passes (peak_flops). benchmarks/device_facts.py
# times fp32 default against highest and bf16 to check it on the first TPU run.
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/a100)"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100)"
_H200 = "NVIDIA H200 Tensor Core GPU page (nvidia.com/en-us/data-center/h200)"
_GH200 = "NVIDIA GH200 Grace Hopper Superchip datasheet (nvidia.com/grace-hopper-superchip)"
_TPU = "Cloud TPU system architecture, cloud.google.com/tpu/docs/"
# fmt: off
DATASHEET: dict[str, DeviceSpec] = {
    d.key: d
    for d in (
        #    key, name, patterns,
        #    fp32, tf32, bf16, fp16, bandwidth, memory, L2, link, fp8, int8, source
        _gpu("t4", "NVIDIA T4", (r"(tesla|nvidia) t4",),
             8.1, None, None, 65, 320, 16, 4, 16, None, 130,
             "NVIDIA T4 Tensor Core GPU datasheet (nvidia.com/t4)"),
        _gpu("l4", "NVIDIA L4", (r"nvidia l4",),
             30.3, 60, 121, 121, 300, 24, 48, 32, 242.5, 242.5,
             "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/l4)"),
        _gpu("a10", "NVIDIA A10", (r"nvidia a10",),
             31.2, 62.5, 125, 125, 600, 24, 6, 32, None, 250,
             "NVIDIA A10 Tensor Core GPU datasheet (nvidia.com/a10)"),
        # AWS G5's A10G has no NVIDIA datasheet; AWS gives 24 GB. These are the A10's
        # figures (the same GA102 part and 600 GB/s GDDR6), a stand-in, not a vendor
        # figure: AWS counts 320 tensor cores (80 SMs to the A10's 72), so the A10G's
        # peaks may be up to 11% higher at the same clock. The sweep records calibrated
        # figures beside them (ceilings_calibrated).
        _gpu("a10g", "NVIDIA A10G", (r"nvidia a10g",),
             31.2, 62.5, 125, 125, 600, 24, 6, 32, None, 250,
             "no NVIDIA datasheet: the A10's figures; 24 GB per AWS EC2 G5"),
        _gpu("a100_40gb", "NVIDIA A100 40GB SXM", (r"nvidia a100-sxm4?-40gb",),
             19.5, 156, 312, 312, 1555, 40, 40, 300, None, 624, _A100),
        _gpu("a100_80gb", "NVIDIA A100 80GB SXM", (r"nvidia a100-sxm4?-80gb",),
             19.5, 156, 312, 312, 2039, 80, 40, 300, None, 624, _A100),
        _gpu("a100_40gb_pcie", "NVIDIA A100 40GB PCIe",
             (r"nvidia a100-pcie-40gb", r"nvidia a100 40gb pcie"),
             19.5, 156, 312, 312, 1555, 40, 40, 32, None, 624, _A100),
        _gpu("a100_80gb_pcie", "NVIDIA A100 80GB PCIe",
             (r"nvidia a100 80gb pcie", r"nvidia a100-pcie-80gb"),
             19.5, 156, 312, 312, 1935, 80, 40, 32, None, 624, _A100),
        _gpu("h100_pcie", "NVIDIA H100 PCIe", (r"nvidia h100 pcie",),
             51, 378, 756, 756, 2000, 80, 50, 64, 1513, 1513, _H100),
        _gpu("h100_sxm", "NVIDIA H100 SXM", (r"nvidia h100 80gb hbm3",),
             67, 494.7, 989.4, 989.4, 3350, 80, 50, 450, 1978.9, 1978.9, _H100),
        _gpu("h100_nvl", "NVIDIA H100 NVL", (r"nvidia h100 nvl",),
             60, 417.5, 835.5, 835.5, 3900, 94, 50, 300, 1670.5, 1670.5, _H100),
        _gpu("h200", "NVIDIA H200", (r"nvidia h200",),
             67, 494.7, 989.4, 989.4, 4800, 141, 50, 450, 1978.9, 1978.9, _H200),
        _gpu("h200_nvl", "NVIDIA H200 NVL", (r"nvidia h200 nvl",),
             60, 417.5, 835.5, 835.5, 4800, 141, 50, 450, 1670.5, 1670.5, _H200),
        # "480GB" is the superchip's 480 GB of LPDDR5X; the GPU has 96 GB of HBM3.
        _gpu("gh200", "NVIDIA GH200 96GB HBM3", (r"nvidia gh200 480gb",),
             67, 494.7, 989.4, 989.4, 4000, 96, 50, 450, 1978.9, 1978.9, _GH200),
        _gpu("gh200_144gb", "NVIDIA GH200 144GB HBM3e", (r"nvidia gh200 144g hbm3e",),
             67, 494.7, 989.4, 989.4, 4900, 144, 50, 450, 1978.9, 1978.9, _GH200),
        _gpu("b200", "NVIDIA B200", (r"nvidia b200",),
             80, 1100, 2250, 2250, 8000, 192, 126, 900, 4500, 4500,
             "REFERENCE 3 (NVIDIA HGX B200 figures)"),
        _gpu("l40s", "NVIDIA L40S", (r"nvidia l40s",),
             91.6, 183, 362.05, 362.05, 864, 48, None, 32, 733, 733,
             "NVIDIA L40S GPU datasheet (nvidia.com/l40s)"),
        #    key, name, patterns, bf16, bandwidth, memory, link, fp8, int8, source
        # TPU v3 shows JAX each of a chip's two TensorCores: half of 123 TFLOP/s, 32 GiB
        # and 900 GB/s per chip (cloud.google.com/tpu/docs/v3). No int8; ICI not given.
        _tpu("tpu_v3", "TPU v3 (one TensorCore)", (r"tpu v3",),
             61.5, 450, 16 * GIB, None, None, None, _TPU + "v3 (per chip; halved)"),
        _tpu("tpu_v4", "TPU v4", (r"tpu v4",),
             275, 1200, 32 * GIB, 150, None, 275, _TPU + "v4"),
        _tpu("tpu_v5e", "TPU v5e", (r"tpu v5 lite", r"tpu v5e"),
             197, 819, 16, 100, None, 394, _TPU + "v5e"),
        _tpu("tpu_v5p", "TPU v5p", (r"tpu v5", r"tpu v5p"),
             459, 2765, 95, 300, None, 918, _TPU + "v5p"),
        _tpu("tpu_v6e", "TPU v6e", (r"tpu v6 lite", r"tpu v6e"),
             918, 1640, 32, 224, None, 1836, _TPU + "v6e"),
        # TPU7x (Ironwood) shows JAX each of a chip's two chiplets as a device: half of
        # 2307 bf16 / 4614 fp8 TFLOP/s, 192 GiB and 7380 GB/s per chip (its tpu7x page).
        _tpu("tpu7x", "TPU7x (Ironwood, one chiplet)", (r"tpu ?7x", r"tpu v7x?"),
             1153.5, 3690, 96 * GIB, 300, 2307, None, _TPU + "tpu7x (per chip; halved)"),
    )
}
# fmt: on


def normalise(device_kind: str) -> str:
    """Lower case, runs of spaces as one, trimmed: the text the patterns must match whole."""
    return " ".join(device_kind.lower().split())


def matches(device_kind: str) -> list[DeviceSpec]:
    """Every row whose pattern matches the whole device_kind (one at most: tested)."""
    kind = normalise(device_kind)
    return [s for s in DATASHEET.values() if any(re.fullmatch(m, kind) for m in s.match)]


def lookup(device_kind: str) -> DeviceSpec | None:
    """The datasheet row for jax's `device_kind`, or None (every CPU, and any device kind
    not named exactly: a MIG slice, a part the table lacks; those are calibrated)."""
    found = matches(device_kind)
    return found[0] if len(found) == 1 else None


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
