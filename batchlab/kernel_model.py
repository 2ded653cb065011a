"""The per-kernel performance model: a call's time is the empty-call floor plus the sum
of its kernels' times, each looked up in a device profile (batchlab.profile) at its
class and shape. The roofline bounds are the physics; this is the engineering.

  matmul (no batch dims)   seconds per FLOP interpolated in (log M, log sqrt(N·K)) from
                           the profile's matmuls; weights streaming from memory (the
                           call's working set past the last cache level) use the cold
                           ones where measured
  matmul with batch dims   attention-shaped: seconds per byte from the batched table
  conv                     seconds per FLOP in (log sqrt(C_in·C_out), log outputs) at the
                           nearest kernel size measured
  the rest                 seconds against the bytes the kernel moves, interpolated in
                           log-log over the class's table (which shows the caches), linear
                           in bytes past its largest size
"""

import dataclasses
import math
from collections import defaultdict

import numpy as np

from batchlab.kernels import Kernel

BYTES_TABLE = {
    "elementwise": "stream",
    "reduction": "reduction",
    "copy": "copy",
    "reduce_window": "reduce_window",
    "gather": "gather",
    "dynamic_slice": "gather",
    "scatter": "scatter",
    "dynamic_update_slice": "scatter",
    "sort": "stream",
    "custom_call": "stream",
    "collective": "stream",
    "other": "stream",
}


@dataclasses.dataclass(frozen=True)
class KernelTime:
    kernel: Kernel
    seconds: float  # one launch of it

    @property
    def total_s(self) -> float:
        return self.seconds * self.kernel.count


@dataclasses.dataclass(frozen=True)
class ModelPrediction:
    floor_s: float
    kernels: tuple[KernelTime, ...]

    @property
    def model_s(self) -> float:
        return self.floor_s + sum(k.total_s for k in self.kernels)

    def top(self, n: int = 3) -> list[dict]:
        """The largest groups of kernels (class and shape bucket), with their share."""
        groups: dict[str, list[KernelTime]] = defaultdict(list)
        for kt in self.kernels:
            groups[describe(kt.kernel)].append(kt)
        total = self.model_s
        rows = [
            {
                "kernels": what,
                "count": sum(k.kernel.count for k in ks),
                "seconds": sum(k.total_s for k in ks),
                "share": sum(k.total_s for k in ks) / total,
            }
            for what, ks in groups.items()
        ]
        rows.append(
            {
                "kernels": "per-call floor",
                "count": 1,
                "seconds": self.floor_s,
                "share": self.floor_s / total,
            }
        )
        return sorted(rows, key=lambda r: -r["seconds"])[:n]

    def text(self, n: int = 2) -> str:
        """'82% in 8 matmul M=4; 10% per-call floor'."""
        return "; ".join(
            f"{100 * r['share']:.0f}% in {r['count']:g} {r['kernels']}" for r in self.top(n)
        )


def describe(k: Kernel) -> str:
    """A kernel's class and the shape that sets its cost, for grouping: 'matmul M=4'."""
    if k.cls == "matmul":
        if k.dim("batch") > 1:
            return "batched matmul (attention-like)"
        return f"matmul M={k.dim('m')}"
    if k.cls == "conv":
        return f"conv {int(round(math.sqrt(k.dim('taps'))))}x{int(round(math.sqrt(k.dim('taps'))))}"
    return k.cls.replace("_", " ")


def _interp1(xs, ys, x: float) -> float:
    """Linear interpolation in the table (xs sorted), clamped at both ends."""
    return float(np.interp(x, xs, ys))


def _loglog(table, nbytes: float) -> float:
    """Seconds for `nbytes` from rows (bytes, seconds): log-log inside, linear beyond."""
    rows = sorted(table)
    b = np.log([r[0] for r in rows])
    t = np.log([max(r[1], 1e-9) for r in rows])
    if nbytes >= rows[-1][0]:
        return rows[-1][1] * nbytes / rows[-1][0]
    return math.exp(_interp1(b, t, math.log(max(nbytes, 1.0))))


def _grid(rows, x: float, y: float) -> float:
    """Interpolate z over points (x_i, y_i, z_i) that form rows of a grid in y: along x
    within each y (clamped), then along y."""
    by_y: dict[float, list] = defaultdict(list)
    for xi, yi, zi in rows:
        by_y[yi].append((xi, zi))
    ys = sorted(by_y)
    zs = []
    for yi in ys:
        pts = sorted(by_y[yi])
        zs.append(_interp1([p[0] for p in pts], [p[1] for p in pts], x))
    return _interp1(ys, zs, y)


def _matmul_seconds(k: Kernel, tables: dict, cold: bool) -> float:
    m, n, kk = k.dim("m"), k.dim("n"), k.dim("k")
    d = math.sqrt(max(1, n * kk))
    flops = max(k.flops, 1.0)
    rows = tables["matmul"]
    use = [r for r in rows if r[2] == int(cold)]
    if cold:
        cold_m = max(r[0] for r in use) if use else 0
        if m > cold_m:  # past the batches measured cold, the weights no longer dominate
            use = [r for r in rows if r[2] == 0]
    pts = [(math.log(r[0]), math.log(r[1]), math.log(r[3] / (2 * r[0] * r[1] ** 2))) for r in use]
    return flops * math.exp(_grid(pts, math.log(m), math.log(d)))


def _batched_seconds(k: Kernel, tables: dict) -> float:
    rows = [(bh * t * kk * 4, s) for bh, t, kk, s in tables["batched"]]
    return _loglog(rows, k.bytes) if rows else _loglog(tables["stream"], k.bytes)


def _conv_seconds(k: Kernel, tables: dict) -> float:
    taps = k.dim("taps")
    side = 3 if taps > 1 else 1
    rows = [r for r in tables["conv"] if r[1] == side] or tables["conv"]
    c = math.sqrt(k.dim("c_in") * k.dim("c_out"))
    pts = []
    for ch, kern, pixels, batch, s in rows:
        flops = 2.0 * pixels * batch * kern * kern * ch * ch
        pts.append((math.log(pixels * batch * ch), math.log(ch), math.log(s / flops)))
    outputs = k.dim("outputs")  # output elements = pixels · batch · C_out
    return max(k.flops, 1.0) * math.exp(_grid(pts, math.log(max(outputs, 1)), math.log(c)))


def kernel_seconds(k: Kernel, profile: dict, cold: bool) -> float:
    """One launch of kernel `k` on the profiled device, net of the per-call floor."""
    tables = profile["tables"]
    if k.cls == "matmul":
        if k.dim("batch") > 1:
            return _batched_seconds(k, tables)
        return _matmul_seconds(k, tables, cold)
    if k.cls == "conv":
        return _conv_seconds(k, tables)
    return _loglog(tables[BYTES_TABLE.get(k.cls, "stream")], k.bytes)


def predict(
    kernels: list[Kernel], profile: dict, working_set_bytes: float, cache_bytes: float
) -> ModelPrediction:
    """The model's time for one call of an executable with these kernels. Weights count
    as cold when the call's working set exceeds the last cache level (`cache_bytes`)."""
    cold = working_set_bytes > cache_bytes
    times = tuple(KernelTime(k, kernel_seconds(k, profile, cold)) for k in kernels)
    return ModelPrediction(profile["floor_s"], times)
