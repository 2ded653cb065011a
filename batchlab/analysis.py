"""Numbers drawn from records alone: series, the knee test, slopes, median precision.

Nothing here knows a model family or runs a cost model: what a record does not store,
this module does not know.
"""

import dataclasses
import math
from collections import defaultdict

import numpy as np
from scipy import stats

from batchlab import record
from batchlab.record import SeriesKey, x_value

# The knee test (fit_knee).
MIN_POINTS = 5  # batch sizes a two-segment fit needs: 4 parameters and 1 to spare
ALPHA = 0.05  # the F-test's level
NOISE_FLOOR = 0.01  # rms in log time below which misfit is timing noise: 1%
LINEAR_SLOPE = 0.7  # past a knee, time grows at least like b^0.7 ("then linear")
MIN_BEND = 0.3  # and the log-log slope rises by at least this much at the knee
# A point is evidence when the 95% interval of its median is within this of the median.
MAX_MEDIAN_ERROR = 0.10


@dataclasses.dataclass(frozen=True)
class Knee:
    """The result of the knee test on one curve: where time turns from flat to linear.

    `batch` is None when the test finds no knee inside the batches; `reason` says why.
    `batch` is where the roofline's shape (flat, then slope 1) fitted to the curve turns:
    the linear part extrapolated back to the flat level, the measured counterpart of b*.
    `bend` and the slopes are those of the two-segment fit the test uses (log time per
    log batch); on a clean roofline curve `bend` and `batch` agree.
    """

    batch: float | None
    reason: str
    bend: float | None = None
    slope_before: float | None = None
    slope_after: float | None = None
    p_value: float | None = None
    points: int = 0

    @property
    def found(self) -> bool:
        return self.batch is not None

    def text(self) -> str:
        """'14.5' or 'none (why)', for tables."""
        return f"{self.batch:.1f}" if self.found else f"none ({self.reason})"


def _power_law_rss(x, y) -> tuple[float, float]:
    """(slope, residual sum of squares) of y = a + s·x."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(((intercept + slope * x - y) ** 2).sum())


def _two_segment(x, y):
    """(rss, knee, slope before, slope after) of y = a + s1·x + (s2 − s1)·max(0, x − k),
    k searched on a fine grid leaving at least two points on each side."""
    best = None
    for k in np.linspace(x[1], x[-2], 481):
        basis = np.stack([np.ones_like(x), x, np.maximum(0.0, x - k)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
        rss = float(((basis @ coef - y) ** 2).sum())
        if best is None or rss < best[0] - 1e-15:
            best = (rss, float(k), float(coef[1]), float(coef[1] + coef[2]))
    return best


def _roofline_knee(x, y) -> float:
    """k of the least-squares fit y = a + max(0, x − k): flat, then slope 1."""
    candidates = np.linspace(x.min(), x.max(), 2001)
    ramp = np.maximum(0.0, x[None, :] - candidates[:, None])
    a = (y[None, :] - ramp).mean(axis=1)
    sse = ((y[None, :] - a[:, None] - ramp) ** 2).sum(axis=1)
    return float(candidates[int(np.argmin(sse))])


def fit_knee(batches, times) -> Knee:
    """The knee test: is time flat, then linear in batch, inside the batches given?

    Whether there is one: on x = log b, y = log t, a two-segment line (free slopes before
    and after a free knee k, 4 parameters) is compared with one power law (2 parameters)
    by an F-test, F = ((RSS_1 − RSS_2)/2) / (RSS_2/(n − 4)), at p < ALPHA; RSS_2 is
    floored at n·NOISE_FLOOR², since no timing resolves misfit below 1%. The knee is
    reported only if the fit is significantly better, time past it grows with log-log
    slope at least LINEAR_SLOPE (the roofline's compute-bound slope is 1, REFERENCE 2.1),
    and the slope rises by at least MIN_BEND at k. Otherwise `batch` is None and `reason`
    says which condition failed. Where it is: Knee.batch. Needs MIN_POINTS batch sizes.

    On power laws of slope 0 to 1 with 3-10% noise over 1..512 it reports a knee in at
    most 2% of draws (the search over k makes the F-test alone anti-conservative; the
    slope conditions make up for it), and finds a roofline knee at 4, 16 or 64 under 10%
    noise every time (tests/test_analysis.py).
    """
    order = np.argsort(np.asarray(batches, float))
    x = np.log(np.asarray(batches, float)[order])
    y = np.log(np.asarray(times, float)[order])
    n = len(x)
    if n < MIN_POINTS:
        return Knee(None, f"needs {MIN_POINTS}+ batch sizes, has {n}", points=n)
    slope, rss1 = _power_law_rss(x, y)
    rss2, k, before, after = _two_segment(x, y)
    floored = max(rss2, n * NOISE_FLOOR**2)
    f = max(0.0, (rss1 - floored) / 2) / (floored / (n - 4))
    p = float(stats.f.sf(f, 2, n - 4)) if f > 0 else 1.0
    fields = dict(bend=math.exp(k), slope_before=before, slope_after=after, p_value=p, points=n)
    if p >= ALPHA:
        why = f"one power law of slope {slope:.2f} fits as well (p = {p:.2g})"
    elif after < LINEAR_SLOPE:
        why = (
            f"time bends near b={math.exp(k):.0f} but then grows with log-log slope "
            f"{after:.2f}, not linearly (>= {LINEAR_SLOPE:g})"
        )
    elif after - before < MIN_BEND:
        why = f"the slope changes only from {before:.2f} to {after:.2f}"
    else:
        return Knee(math.exp(_roofline_knee(x, y)), "", **fields)
    return Knee(None, why, **fields)


def log_slope(xs, ys) -> float:
    """Least-squares slope of log y against log x: 1 means y grows in proportion to x."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def series(records: list[dict], x: str = "batch") -> dict[SeriesKey, list[dict]]:
    """Successful sweep points grouped by their series along axis `x` (record.series_key),
    each sorted along `x`."""
    groups = defaultdict(list)
    for r in records:
        if record.is_point(r):
            groups[record.series_key(r, x)].append(r)
    return {k: sorted(v, key=lambda r: x_value(r, x)) for k, v in sorted(groups.items())}


def times(points: list[dict]) -> tuple[list[int], list[float]]:
    """(batches, median times) of a series' points."""
    return [r["batch"] for r in points], [r["time"]["median_s"] for r in points]


def median_error(r: dict) -> float:
    """Half-width of the 95% interval of a point's median, relative to it: from the
    interval recorded with it when there is one, else the normal approximation
    1.96·1.2533·σ/√n with σ = IQR/1.349 (a predicted point: 0)."""
    t = r["time"]
    if "ci95_s" in t:
        lo, hi = t["ci95_s"]
        return (hi - lo) / 2 / t["median_s"]
    if t.get("count", 1) <= 1:
        return 0.0
    return 1.96 * 1.2533 * t.get("spread", 0.0) / 1.349 / math.sqrt(t["count"])


def usable(points: list[dict]) -> tuple[list[dict], list[dict]]:
    """(points whose median is known within MAX_MEDIAN_ERROR, the others)."""
    good = [r for r in points if median_error(r) <= MAX_MEDIAN_ERROR]
    return good, [r for r in points if median_error(r) > MAX_MEDIAN_ERROR]


def median_abs_rel_error(records: list[dict]) -> float | None:
    """Median |measured / predicted − 1| over successful points."""
    errs = [abs(r["prediction"]["rel_error"]) for r in records if record.is_point(r)]
    return float(np.median(errs)) if errs else None


def model_knee(points: list[dict]) -> Knee | None:
    """The knee test on the per-kernel model's curve (prediction.model_s): where the
    model says time leaves its flat part. None when the points carry no model."""
    model = [r["prediction"].get("model_s") for r in points]
    if not points or not all(model):
        return None
    return fit_knee([r["batch"] for r in points], model)


def prediction_errors(records: list[dict], group=lambda r: r["model"]) -> dict:
    """group -> {"model": [...], "roofline": [...]}: |measured / predicted - 1| of the
    per-kernel model (prediction.model_s) and of the roofline lower bound, over the
    points that carry a model prediction (so both lists judge the same points)."""
    out: dict = defaultdict(lambda: {"model": [], "roofline": []})
    for r in records:
        p = r["prediction"] if record.is_point(r) else {}
        if p.get("model_s"):
            t = r["time"]["median_s"]
            out[group(r)]["model"].append(abs(t / p["model_s"] - 1))
            out[group(r)]["roofline"].append(abs(t / p["lower_s"] - 1))
    return dict(out)


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    """How far predictions are from measurements: |measured / predicted - 1|."""

    points: int
    median: float
    p90: float
    within_10: float  # fraction of points within 10%
    within_20: float

    @classmethod
    def of(cls, errors) -> "ErrorStats | None":
        a = np.asarray(errors, float)
        if not a.size:
            return None
        return cls(
            int(a.size),
            float(np.median(a)),
            float(np.percentile(a, 90)),
            float(np.mean(a <= 0.1)),
            float(np.mean(a <= 0.2)),
        )


def above_ceiling(records: list[dict]) -> list[dict]:
    """Points whose attained FLOP/s or bytes/s exceed their ceilings: a ceiling below a
    rate the device reached is wrong (record.attained flags them)."""
    return [r for r in records if record.is_point(r) and r["attained"].get("above_ceiling")]


def interval(r: dict) -> tuple[float, float]:
    """The 95% interval of a point's median: `time.ci95_s` when recorded (the bootstrap),
    else the median ± median_error (the normal approximation; 0 for a predicted point)."""
    t = r["time"]
    if "ci95_s" in t:
        lo, hi = t["ci95_s"]
        return float(lo), float(hi)
    half = median_error(r) * t["median_s"]
    return t["median_s"] - half, t["median_s"] + half


@dataclasses.dataclass(frozen=True)
class Difference:
    """Two points' medians compared: b's over a's, and whether it is more than noise."""

    ratio: float  # median of b / median of a
    real: bool  # the two 95% intervals do not overlap

    def text(self) -> str:
        """'1.23x (real: the intervals separate)' or '1.02x (within noise: ...)'."""
        why = "real: the 95% intervals separate" if self.real else "within noise: they overlap"
        return f"{self.ratio:.3g}x ({why})"


def compare(a: dict, b: dict) -> Difference:
    """Whether b's median really differs from a's (two runs, two configs): only when their
    95% intervals separate. Overlap is the cautious rule: two intervals of equal width
    that just touch mean a difference at p ≈ 0.006, so "real" is not said of noise."""
    (lo_a, hi_a), (lo_b, hi_b) = interval(a), interval(b)
    return Difference(b["time"]["median_s"] / a["time"]["median_s"], hi_a < lo_b or hi_b < lo_a)
