"""Roofline arithmetic as pure functions (REFERENCE 2). Times in seconds, rates per second."""

import dataclasses
from collections.abc import Callable

from batchlab.cost import Cost

MAX_BATCH = 2**30  # searching past this means "never compute-bound"


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """What a device can do: peak FLOP/s, memory bandwidth, and where the numbers came from."""

    peak_flops: float
    bandwidth: float
    source: str  # "datasheet", "calibrated" or "flags"
    flops_kernel: str = ""  # which unit or kernel set the peak
    bandwidth_kernel: str = ""
    # Bytes/s one device sends to the others (one direction); None: through memory, at
    # `bandwidth` (fake CPU devices share the host's memory).
    interconnect: float | None = None

    @property
    def link(self) -> float:
        """Bandwidth of the collective roof."""
        return self.interconnect or self.bandwidth

    @property
    def ridge(self) -> float:
        """R = P / BW in FLOPs per byte (REFERENCE 2.2)."""
        return self.peak_flops / self.bandwidth

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Roofline bounds for one point (REFERENCE 2.1, 2.8)."""

    t_math_s: float
    t_mem_s: float
    t_overhead_s: float
    lower_s: float  # max of the roofs: perfect overlap
    upper_s: float  # their sum: no overlap
    regime: str  # which roof is highest: "overhead", "bandwidth", "compute" or "collective"
    t_collective_s: float = 0.0  # collective bytes over the interconnect (several devices)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def predict(cost: Cost, ceilings: Ceilings, overhead_s: float = 0.0) -> Prediction:
    """Lower bound max(T_math, T_mem, T_overhead, T_collective), upper bound their sum;
    T_collective = collective bytes / interconnect, when the call exchanges any."""
    roofs = {
        "overhead": overhead_s,
        "bandwidth": cost.total_bytes / ceilings.bandwidth,
        "compute": cost.flops / ceilings.peak_flops,
        "collective": cost.collective_bytes / ceilings.link,
    }
    regime = max(roofs, key=roofs.get)
    return Prediction(
        roofs["compute"],
        roofs["bandwidth"],
        overhead_s,
        roofs[regime],
        sum(roofs.values()),
        regime,
        roofs["collective"],
    )


def critical_batch(
    cost_at: Callable[[int], Cost], ceilings: Ceilings, with_activations: bool = True
) -> float | None:
    """Smallest batch b at which FLOPs/P >= bytes/BW, or None if never (REFERENCE 2.2).

    For costs affine in b this is W·R / (f1 − a1·R) (W weight bytes, f1 and a1 the FLOPs
    and activation bytes per example); solved numerically so any cost model works, then
    refined to a real number by linear interpolation between the integer neighbours.
    """

    def excess(b: int) -> float:  # compute time minus memory time, in FLOP units
        c = cost_at(b)
        moved = c.total_bytes if with_activations else c.weight_bytes + c.state_bytes
        return c.flops - moved * ceilings.ridge

    if excess(1) >= 0:
        return 1.0
    hi = 2
    while excess(hi) < 0:
        hi *= 2
        if hi > MAX_BATCH:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if excess(mid) >= 0 else (mid, hi)
    e_lo, e_hi = excess(lo), excess(hi)
    return lo + (-e_lo) / (e_hi - e_lo)


def critical_batch_from_costs(
    batches, costs: list[Cost], ceilings: Ceilings, with_activations: bool = True
) -> float | None:
    """b* as critical_batch finds it, from costs known only at `batches` (sorted): the
    excess FLOPs − bytes·R is interpolated linearly between them and extrapolated from
    the last two, which is exact when the cost is affine in the batch (dense layers,
    convolutions, a decode step) and an estimate otherwise. Needs two batches or more."""

    def excess(c: Cost) -> float:
        moved = c.total_bytes if with_activations else c.weight_bytes + c.state_bytes
        return c.flops - moved * ceilings.ridge

    e = [excess(c) for c in costs]
    if len(batches) < 2:
        raise ValueError("critical_batch_from_costs needs two batches or more")
    i = next((i for i, v in enumerate(e) if v >= 0), None)
    if i == 0:
        if batches[0] == 1:
            return 1.0
        i = 1  # compute-bound already: extrapolate down from the first two
    if i is None:
        i = len(e) - 1  # never reached: extrapolate up from the last two
    (b0, b1), (e0, e1) = batches[i - 1 : i + 1], e[i - 1 : i + 1]
    if e1 <= e0:
        return None if e1 < 0 else 1.0
    b = b0 + (0 - e0) * (b1 - b0) / (e1 - e0)
    return None if b > MAX_BATCH else max(1.0, b)


def fmt_batch(b: float | None) -> str:
    """A critical batch for printing; None means never compute-bound."""
    return "never" if b is None else f"{b:.1f}"


def explain_critical_batch(
    device: str, ceilings: Ceilings, s_w: int, s_a: int, width: int | None = None
) -> str:
    """The post's "216 vs 108" derivation (REFERENCE 2.3) for one device and dtype."""
    p, bw, r = ceilings.peak_flops, ceilings.bandwidth, ceilings.ridge
    lines = [
        f"{device}: P = {p / 1e12:.4g} TFLOP/s ({ceilings.flops_kernel or ceilings.source}), "
        f"BW = {bw / 1e9:.4g} GB/s ({ceilings.bandwidth_kernel or ceilings.source})",
        f"  R = P/BW = {r:.4g} FLOPs/byte: an intensity, not a batch size.",
        f"  Dense m x n layer, batch b: FLOPs 2·b·m·n, weight bytes s_w·m·n with s_w = {s_w}.",
        f"  Compute time = weight time at b* = P·s_w/(2·BW) = R·s_w/2 = {r * s_w / 2:.4g}.",
        f"  s_w = 2 (fp16/bf16) gives b* = R exactly, the post's '216' for a T4 at 65 TFLOP/s and"
        f" 300 GB/s; 1-byte weights give R/2 = {r / 2:.4g}, the reader's '108';"
        f" 4-byte weights give 2R = {2 * r:.4g}.",
        "  The peak must be the one of the unit that runs this dtype: a T4's 65 TFLOP/s is"
        " fp16 tensor cores, its fp32 peak is 8.1 TFLOP/s.",
    ]
    if width:
        denom = 1 - s_a * r / width
        with_act = f"{r * s_w / 2 / denom:.4g}" if denom > 0 else "never (layer too narrow)"
        lines.append(
            f"  With activations (s_a = {s_a}) at width D = {width}: "
            f"b* = (s_w·R/2) / (1 − s_a·R/D) = {with_act}."
        )
    return "\n".join(lines)
