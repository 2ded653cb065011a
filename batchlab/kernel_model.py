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
                           in bytes past its largest size; cold rows where the call's
                           working set is past the last cache level
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
    "collective": "collective",  # bytes the kernel moves: each device's send and receive
    "other": "stream",
}


# A copy that keeps rows of its source's minor dimension whole (kernels.py tags it with
# its run) is a block copy, priced from the copy table; one without is a true transpose,
# element by element, priced from the transpose table. The decoders' KV-cache layout
# changes are of both kinds and run at different rates (a plain 2-D transpose priced
# them up to 2x off).


def _table(k: Kernel) -> str:
    """The bytes table that prices kernel `k` (not a matmul or conv)."""
    if k.cls == "copy" and not k.dim("run", 0):
        return "transpose"
    return BYTES_TABLE.get(k.cls, "stream")


def tables_for(ks) -> set[str]:
    """The profile tables the model needs to price these kernels (the stream table
    always: the fallback of every other; and the fresh pages of every call)."""
    need = {"stream", "fresh"}
    for k in ks:
        if k.cls == "matmul":
            need.add("batched" if k.dim("batch") > 1 else "matmul")
        elif k.cls == "conv":
            need.add("conv")
        else:
            need.add(_table(k))
    return need


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
    fresh_s: float = 0.0  # the call's results and temporaries in new pages

    @property
    def model_s(self) -> float:
        return self.floor_s + self.fresh_s + sum(k.total_s for k in self.kernels)

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
        for what, seconds in (("per-call floor", self.floor_s), ("fresh pages", self.fresh_s)):
            if seconds > 0:
                rows.append(
                    {"kernels": what, "count": 1, "seconds": seconds, "share": seconds / total}
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


def _bounded_by_neighbours(rows: list) -> list:
    """Matmul rows (m, d, cold, s) bounded by the other rows of the same width, both ways a
    library could run a product as another: fewer rows padded to a larger M (so no slower
    than any larger M), and more rows as row blocks of a smaller M (so no slower per FLOP
    than any smaller M). A row past either bound was caught by noise or a poor path the
    model should not expect."""
    out = []
    for m, d, cold, s in rows:
        same = [(q[0], q[3]) for q in rows if q[1] == d]
        padded = [s2 for m2, s2 in same if m2 > m]
        blocked = [s2 * m / m2 for m2, s2 in same if m2 < m]
        out.append([m, d, cold, min([s, *padded, *blocked])])
    return out


def _warm_rows(rows: list) -> list:
    """A bytes table's (bytes, s) measured with the same input each call."""
    return [r[:2] for r in rows if len(r) < 3 or not r[2]]


def _cold_rows(rows: list) -> list:
    """A bytes table's (bytes, s) for inputs that come from memory: its cold rows where
    measured, its warm rows below them (launches dominate) and past them (a single input
    already outgrows the caches)."""
    cold, warm = [r[:2] for r in rows if len(r) > 2 and r[2]], _warm_rows(rows)
    if not cold:
        return warm
    lo, hi = min(r[0] for r in cold), max(r[0] for r in cold)
    return [r for r in warm if r[0] < lo or r[0] > hi] + cold


class Lookup:
    """A profile's tables as sorted log-space arrays, built once and queried per kernel."""

    def __init__(self, profile: dict):
        t = profile["tables"]
        self.floor_s = profile["floor_s"]
        # One more kernel in a call never costs less than the launch cost measured in a
        # chain (a lone tiny kernel's table time nets out to about nothing beside the
        # floor program, which runs one too).
        self.launch_s = profile.get("launch_s", 0.0)
        # A table not measured (profiles measure tables as sweeps need them) falls back
        # to the stream table, which every profile has.
        self.bytes, self.bytes_cold = {}, {}
        for name in {*BYTES_TABLE.values(), "transpose"}:
            rows = t.get(name) or t["stream"]
            self.bytes[name] = self._loglog_table(_warm_rows(rows))
            self.bytes_cold[name] = self._loglog_table(_cold_rows(rows))
        self.fresh = sorted(t.get("fresh") or [])
        rows = [(bh * tt * kk * 4, s) for bh, tt, kk, s in t.get("batched", [])]
        self.batched = self._loglog_table(rows) if rows else self.bytes["stream"]
        # matmul: seconds per FLOP on a grid of (log M) per width; cold where measured.
        self.matmul = {}
        for cold in (0, 1):
            use = _bounded_by_neighbours([r for r in t.get("matmul", []) if r[2] == cold])
            self.matmul[cold] = self._grid((r[0], r[1], r[3] / (2 * r[0] * r[1] ** 2)) for r in use)
        self.cold_m = max((r[0] for r in t.get("matmul", []) if r[2] == 1), default=0)
        # conv: seconds per FLOP on a grid of (log outputs) per channel count, per kernel.
        self.conv = {}
        for side in {r[1] for r in t.get("conv", [])}:
            use = [r for r in t["conv"] if r[1] == side]
            self.conv[side] = self._grid(
                (p * b * c, c, s / (2.0 * p * b * k * k * c * c)) for c, k, p, b, s in use
            )

    @staticmethod
    def _loglog_table(rows):
        rows = sorted(rows)
        return (
            np.log([r[0] for r in rows]),
            np.log([max(r[1], 1e-12) for r in rows]),
            rows[-1][0],
            rows[-1][1],
        )

    @staticmethod
    def _grid(points):
        """{log y: (log x array, log z array)} from points (x, y, z)."""
        by_y = defaultdict(list)
        for x, y, z in points:
            by_y[math.log(y)].append((math.log(x), math.log(z)))
        grid = {y: tuple(np.array(v) for v in zip(*sorted(pts))) for y, pts in by_y.items()}
        return dict(sorted(grid.items()))

    @staticmethod
    def _at(grid, x: float, y: float) -> float:
        """z at (x, y): along x within each y row (clamped), then along y."""
        ys = list(grid)
        zs = [float(np.interp(math.log(x), xs, z)) for xs, z in grid.values()]
        return math.exp(float(np.interp(math.log(y), ys, zs)))

    @staticmethod
    def _bytes_seconds(table, nbytes: float) -> float:
        """Log-log inside the table, linear in bytes past its largest size."""
        logb, logt, last_b, last_t = table
        if nbytes >= last_b:
            return last_t * nbytes / last_b
        return math.exp(float(np.interp(math.log(max(nbytes, 1.0)), logb, logt)))

    def fresh_seconds(self, nbytes: float) -> float:
        """What `nbytes` of results and temporaries in new pages cost a call: linear in
        bytes between the sizes measured and past them, none below (the allocator's
        reused memory)."""
        if not self.fresh or nbytes < self.fresh[0][0]:
            return 0.0
        sizes, secs = [r[0] for r in self.fresh], [r[1] for r in self.fresh]
        if nbytes >= sizes[-1]:
            return secs[-1] * nbytes / sizes[-1]
        return float(np.interp(nbytes, sizes, secs))

    def seconds(self, k: Kernel, cold: bool) -> float:
        """One launch of kernel `k` on the profiled device, net of the per-call floor."""
        if k.cls == "matmul":
            if k.dim("batch") > 1:
                return self._bytes_seconds(self.batched, k.bytes)
            m, d = k.dim("m"), math.sqrt(max(1, k.dim("n") * k.dim("k")))
            # Past the batches measured cold, the weights no longer dominate: warm rates.
            grid = (
                self.matmul[1] if cold and m <= self.cold_m and self.matmul[1] else self.matmul[0]
            )
            return max(k.flops, 1.0) * self._at(grid, m, d)
        if k.cls == "conv" and self.conv:
            side = 3 if k.dim("taps") > 1 else 1
            grid = self.conv.get(side) or next(iter(self.conv.values()))
            c = math.sqrt(k.dim("c_in") * k.dim("c_out"))
            return max(k.flops, 1.0) * self._at(grid, max(k.dim("outputs"), 1), c)
        tables = self.bytes_cold if cold else self.bytes
        return self._bytes_seconds(tables[_table(k)], k.bytes)


def fresh_bytes(memory_analysis: dict | None) -> float:
    """Bytes a call writes into memory it allocates anew: its results that do not alias
    a donated input, and its temporaries (XLA's memory_analysis)."""
    m = memory_analysis or {}
    results = m.get("output_size_in_bytes", 0) - m.get("alias_size_in_bytes", 0)
    return max(0.0, results) + m.get("temp_size_in_bytes", 0)


def predict(
    kernels: list[Kernel],
    profile: "dict | Lookup",
    working_set_bytes: float,
    cache_bytes: float,
    fresh: float = 0.0,
) -> ModelPrediction:
    """The model's time for one call of an executable with these kernels. Weights count
    as cold when the call's working set exceeds the last cache level (`cache_bytes`);
    `fresh`: the bytes it writes into new memory (fresh_bytes)."""
    lookup = profile if isinstance(profile, Lookup) else Lookup(profile)
    cold = working_set_bytes > cache_bytes
    times = tuple(KernelTime(k, max(lookup.launch_s, lookup.seconds(k, cold))) for k in kernels)
    return ModelPrediction(lookup.floor_s, times, lookup.fresh_seconds(fresh))
