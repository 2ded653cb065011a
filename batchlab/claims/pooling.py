"""C7: pooling cost is linear in the number of pixels (REFERENCE 2.6), at every batch.

Rule for small images: per batch, time is fitted as t = t0 + c·pixels (relative least
squares); t0 is the real per-call floor of this kernel (launch and fixed work, often far
above the empty-call floor, REFERENCE 2.8). An image size whose time is under 2·t0 is
overhead-bound: its pixels do not set its time, so it is left out. A batch is judged
when two sizes or more remain; there the log-log slope of the pixel-dependent time
t − t0 against pixels must be within 1 ± SLOPE_TOLERANCE.
"""

import numpy as np

import batchlab.claims.verdict as vd
from batchlab import analysis
from batchlab.claims.verdict import Verdict

SLOPE_TOLERANCE = 0.2
OVERHEAD_FACTOR = 2.0  # a size under this many per-call floors is overhead-bound


def per_call_floor(pixels, times) -> float:
    """t0 of t = t0 + c·pixels, fitted on relative errors, at least 0."""
    p, t = np.asarray(pixels, float), np.asarray(times, float)
    basis = np.stack([1 / t, p / t], axis=1)  # (t0 + c·p) / t ≈ 1
    (t0, _), *_ = np.linalg.lstsq(basis, np.ones_like(t), rcond=None)
    return max(0.0, float(t0))


def c7(records: list[dict]) -> list[Verdict]:
    """C7 per pooling setup (every parameter but the image size), over its batches."""
    setups: dict[tuple, dict[int, list[dict]]] = {}
    for key, points in analysis.series(records, x="image_size").items():
        rest = tuple((k, v) for k, v in key.params if k != "batch")
        setup = (rest, key.dtype, key.precision, key.config, key.device)
        setups.setdefault(setup, {})[key.get("batch")] = points
    if not setups:
        why = "needs two image sizes or more (--image_sizes)"
        return [Verdict("C7", vd.NOT_MEASURED, why)]
    return [_c7(setup, per_batch) for setup, per_batch in sorted(setups.items())]


def _c7(setup: tuple, per_batch: dict[int, list[dict]]) -> Verdict:
    rest, dtype = setup[0], setup[1]
    subject = "pooling " + " ".join(f"{k}={v}" for k, v in rest) + f" {dtype}"
    judged, skipped, caveats, lines = {}, [], [], []
    for batch, points in sorted(per_batch.items()):
        good, _, left = vd.evidence("C7", subject, points, 2, "image_size")
        caveats += [f"b={batch}: {c}" for c in left]
        if len(good) < 2:
            skipped.append(f"b={batch}: fewer than 2 image sizes timed within ±10%")
            continue
        pixels = [r["params"]["image_size"] ** 2 for r in good]
        times = [r["time"]["median_s"] for r in good]
        t0 = per_call_floor(pixels, times)
        kept = [(p, t) for p, t in zip(pixels, times) if t >= OVERHEAD_FACTOR * t0]
        sizes = [int(round(p**0.5)) for p, _ in kept]
        floor = good[0].get("empty_call_s", 0.0)
        lines.append(
            f"  b={batch}: per-call floor t0 {t0 * 1e6:.3g} us (empty call "
            f"{floor * 1e6:.3g} us); sizes above 2·t0: {sizes or 'none'}"
        )
        if len(kept) < 2:
            skipped.append(f"b={batch}: overhead-bound (t0 = {t0 * 1e6:.3g} us per call)")
            continue
        pix, rest = zip(*((p, t - t0) for p, t in kept))
        judged[batch] = (analysis.log_slope(pix, rest), sizes)
    if not judged:
        return Verdict("C7", vd.NOT_ENOUGH, "; ".join(skipped), subject, {}, tuple(lines))
    numbers = {f"slope_b{b}": s for b, (s, _) in judged.items()}
    desc = ", ".join(
        f"b={b}: {s:.2f} ({sizes[0]}..{sizes[-1]} px)" for b, (s, sizes) in judged.items()
    )
    off = [b for b, (s, _) in judged.items() if abs(s - 1) > SLOPE_TOLERANCE]
    text = f"slope of log time vs log pixels {desc} (linear: 1 ± {SLOPE_TOLERANCE:g})"
    if off:
        text = f"not linear at b={', '.join(map(str, off))}: {text}"
    caveats += [f"{s}; not judged there" for s in skipped]
    return vd.judged("C7", not off, text, caveats, subject, numbers, lines)
