"""C3 (the post's MLP: flat, then a knee, then linear), C4 (every width has a knee, small
widths stay flat) and C5 (the critical batch is P·s_w/(2·BW), checked against the knee)."""

import batchlab.claims.verdict as vd
from batchlab import analysis, hardware, record, roofline
from batchlab.claims.verdict import Verdict
from batchlab.record import SeriesKey

FLAT_GROWTH = 1.5  # C3 "flat": time grows at most this much up to the knee
C4_FLAT_GROWTH = 2.0  # C4: a width whose time grows less than this over the sweep is flat
SLOPE_RANGE = (0.7, 1.3)  # C3 "then rises sharply": log-log slope after the knee
KNEE_FACTOR = 4.0  # C3: a knee further than this from the predicted b* is a caveat
T4_KNEE = (64, 512)  # C3: "near 128-256 on a T4", with a factor of 2 of slack
C5_FACTOR = 2.0  # C5: the measured knee within this factor of the predicted b*
POST_BATCHES = (1, 512)


def is_post_mlp(key: SeriesKey) -> bool:
    """The post's MLP: depth 8, width 1024, input width 1024."""
    return (
        key.model == "mlp"
        and key.get("depth") == 8
        and key.get("width") == 1024
        and key.get("input_width") in (0, 1024)
    )


def _span(points: list[dict]) -> str:
    return f"b={points[0]['batch']}..{points[-1]['batch']}"


def _b_star_text(points: list[dict]) -> str:
    if not record.has_b_star(points[-1]):
        return "b* not stored"
    return f"b* {roofline.fmt_batch(record.b_star(points[-1]))}"


def c3(records: list[dict]) -> list[Verdict]:
    """C3 on the post's MLP (8 x 1024): flat, then a knee, then time linear in batch."""
    out = [_c3(k, ps) for k, ps in analysis.series(records).items() if is_post_mlp(k)]
    if not out:
        why = "needs the post's MLP, depth 8 width 1024 (configs/seed/mlp.flags)"
        out = [Verdict("C3", vd.NOT_MEASURED, why)]
    return out


def _c3(key: SeriesKey, points: list[dict]) -> Verdict:
    label, how = key.label, vd.measured_or_predicted(points)
    points, thin, caveats = vd.evidence("C3", label, points, analysis.MIN_POINTS)
    if thin:
        return thin
    batches, times = analysis.times(points)
    knee = analysis.fit_knee(batches, times)
    b_star = record.b_star(points[-1])
    numbers = {
        "knee": knee.batch,
        "predicted_b_star": b_star,
        "slope_before": knee.slope_before,
        "slope_after": knee.slope_after,
        "knee_p_value": knee.p_value,
        "t_first_s": times[0],
        "t_last_s": times[-1],
    }
    if not knee.found:
        beyond = b_star is None or b_star > batches[-1]
        why = (
            f"no knee inside {_span(points)}: {knee.reason}; the roofline's "
            f"{_b_star_text(points)}" + (" lies beyond the batches" if beyond else "")
        )
        return Verdict("C3", vd.FAILS, why, label, numbers)
    before = [t for b, t in zip(batches, times) if b <= knee.batch]
    after = [(b, t) for b, t in zip(batches, times) if b >= 2 * knee.batch]
    if len(after) < 2:
        after = [(b, t) for b, t in zip(batches, times) if b >= knee.batch]
    growth = before[-1] / before[0]
    slope = analysis.log_slope(*zip(*after)) if len(after) >= 2 else None
    numbers |= {"flat_growth": growth, "slope_after_knee": slope}
    problems = []
    if growth > FLAT_GROWTH:
        problems.append(f"time grows {growth:.2f}x before the knee (flat: <= {FLAT_GROWTH:g}x)")
    if slope is None or not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:
        problems.append(
            "after the knee time grows with log-log slope "
            + ("(too few points)" if slope is None else f"{slope:.2f}")
            + f", not linearly ({SLOPE_RANGE[0]:g}..{SLOPE_RANGE[1]:g})"
        )
    kind = points[0]["provenance"].get("device_kind", "")
    if hardware.lookup(kind) is hardware.DATASHEET["t4"]:
        if not T4_KNEE[0] <= knee.batch <= T4_KNEE[1]:
            caveats.append(f"on a T4 the post saw the knee near 128-256, here {knee.batch:.0f}")
    elif b_star is not None and not 1 / KNEE_FACTOR <= knee.batch / b_star <= KNEE_FACTOR:
        caveats.append(f"the knee is {knee.batch / b_star:.2g}x the predicted b* {b_star:.1f}")
    if (batches[0], batches[-1]) != POST_BATCHES:
        caveats.append(f"batches {batches[0]}..{batches[-1]}, not the post's 1..512")
    shape = (
        f"{how} knee at b={knee.batch:.1f} (p = {knee.p_value:.2g}; {_b_star_text(points)}), "
        f"then log-log slope {'-' if slope is None else f'{slope:.2f}'}"
    )
    if problems:
        return Verdict("C3", vd.FAILS, "; ".join([*problems, shape]), label, numbers)
    return vd.judged(
        "C3", True, f"time grows {growth:.2f}x up to the {shape}", caveats, label, numbers
    )


def c4(records: list[dict]) -> list[Verdict]:
    """C4 per (depth, input width, numerics): every width flat or with a knee, at least
    one knee, and the smallest width flat."""
    groups: dict[tuple, dict[int, tuple[SeriesKey, list[dict]]]] = {}
    for key, points in analysis.series(records).items():
        setup = (key.config, key.device, key.get("depth"), key.get("input_width"), key.dtype)
        groups.setdefault(setup, {})[key.get("width")] = (key, points)
    out = [_c4(by_width) for _, by_width in sorted(groups.items())]
    if not any(v.status != vd.NOT_MEASURED for v in out):
        out = [Verdict("C4", vd.NOT_MEASURED, "needs 2 or more --widths (seed mlp_widths)")]
    return out


def _shape(points: list[dict]) -> tuple[str, analysis.Knee, float]:
    """("knee" | "flat" | "rises", the knee test, growth over the sweep) of one width."""
    batches, times = analysis.times(points)
    knee = analysis.fit_knee(batches, times)
    growth = times[-1] / times[0]
    if knee.found:
        return "knee", knee, growth
    return ("flat" if growth < C4_FLAT_GROWTH else "rises"), knee, growth


def _c4(by_width: dict[int, tuple[SeriesKey, list[dict]]]) -> Verdict:
    key0 = next(iter(by_width.values()))[0]
    subject = " ".join(w for w in key0.label.split() if not w.startswith("width="))
    shapes, caveats, thin = {}, [], []
    for width, (key, points) in sorted(by_width.items()):
        good, short, left = vd.evidence("C4", key.label, points, analysis.MIN_POINTS)
        if short:
            thin.append(width)
            continue
        caveats += [f"width {width}: {c}" for c in left]
        shapes[width] = _shape(good)
    if len(shapes) < 2:
        why = "needs 2 or more widths of 5+ batch sizes with medians known within ±10%"
        status = vd.NOT_ENOUGH if thin else vd.NOT_MEASURED
        return Verdict("C4", status, why, subject)
    if thin:
        caveats.append(f"width {', '.join(map(str, thin))} left out: not enough evidence")
    numbers = {f"knee_w{w}": k.batch for w, (_, k, _) in shapes.items()}
    numbers |= {f"growth_w{w}": g for w, (_, _, g) in shapes.items()}

    def desc(s, k, g):
        return f"knee {k.batch:.0f}" if s == "knee" else f"{s} ({g:.1f}x)"

    text = "by width: " + ", ".join(f"{w}: {desc(*v)}" for w, v in shapes.items())
    rising = [(w, k) for w, (s, k, _) in shapes.items() if s == "rises"]
    knees = [(w, k.batch) for w, (s, k, _) in shapes.items() if s == "knee"]
    if rising or not knees:
        w, k = rising[0] if rising else (None, None)
        why = (
            f"width {w} is neither flat nor with a knee ({k.reason})"
            if rising
            else "no width shows a knee"
        )
        return Verdict("C4", vd.FAILS, f"{why}; {text}", subject, numbers)
    smallest = min(shapes)
    if shapes[smallest][0] != "flat":
        caveats.append(
            f"the smallest width, {smallest}, is not flat (knee {shapes[smallest][1].batch:.0f})"
        )
    # b* falls as the width grows (REFERENCE 2.2: the activations' share shrinks).
    later = [(a, b) for (a, ka), (b, kb) in zip(knees, knees[1:]) if kb > 2 * ka]
    if later:
        caveats.append(f"the knee moves later from width {later[0][0]} to {later[0][1]}")
    return vd.judged("C4", True, text, caveats, subject, numbers)


def c5(records: list[dict]) -> list[Verdict]:
    """C5 per numerics and device: the knee against b* = P·s_w/(2·BW) (REFERENCE 2.2-2.3),
    on the post's MLP, else on the widest MLP measured."""
    by_setup: dict[tuple, list] = {}
    for key, points in analysis.series(records).items():
        if points[0]["cost"]["weight_bytes"]:
            by_setup.setdefault((key.config, key.device, key.dtype, key.precision), []).append(
                (key, points)
            )
    out = []
    for candidates in by_setup.values():
        post = [c for c in candidates if is_post_mlp(c[0])]
        out.append(_c5(*(post or sorted(candidates, key=lambda c: -c[0].get("width", 0)))[0]))
    if not out:
        out = [Verdict("C5", vd.NOT_MEASURED, "needs an MLP series (configs/seed/mlp.flags)")]
    return out


def _c5(key: SeriesKey, points: list[dict]) -> Verdict:
    label, how = key.label, vd.measured_or_predicted(points)
    points, thin, caveats = vd.evidence("C5", label, points, analysis.MIN_POINTS)
    if thin:
        return thin
    if not record.has_b_star(points[-1]):
        return Verdict("C5", vd.NOT_ENOUGH, "these records store no critical batch", label)
    ceilings = roofline.Ceilings(**points[-1]["ceilings"])
    s_w = key.numerics.itemsize
    r = ceilings.ridge
    b_w = r * s_w / 2
    b_star = record.b_star(points[-1])
    knee = analysis.fit_knee(*analysis.times(points))
    ratio = knee.batch / b_star if knee.found and b_star else None
    numbers = {
        "ridge": r,
        "s_w": s_w,
        "b_star_weights": b_w,
        "b_star_activations": b_star,
        "knee": knee.batch,
        "knee_over_b_star": ratio,
    }
    text = (
        f"P/BW = {r:.4g} FLOP/B; b* = P·s_w/(2·BW) = {b_w:.4g} with s_w = {s_w} "
        f"({roofline.fmt_batch(b_star)} with activations); {how} knee "
    )
    if knee.found:
        near = min(points, key=lambda p: abs(p["batch"] - knee.batch))
        fits = near.get("working_set", {}).get("fits_in", "?")
        numbers["fits_in_at_knee"] = fits
        text += f"{knee.batch:.1f}, {ratio:.2f}x b*; working set at the knee in {fits}"
    else:
        text += f"none inside {_span(points)} ({knee.reason})"
    holds = ratio is not None and 1 / C5_FACTOR <= ratio <= C5_FACTOR
    if s_w != 2:
        caveats.append(
            f"b* = P/BW, the post's formula, only for 2-byte weights; with s_w = {s_w} "
            f"it is {s_w / 2:g}·P/BW"
        )
    if not holds:
        text += f"; agreement needs a knee inside the batches, within {C5_FACTOR:g}x of b*"
    return vd.judged("C5", holds, text, caveats, label, numbers)
