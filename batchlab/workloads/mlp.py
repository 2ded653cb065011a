"""The MLP family: claims C3 (a knee in time against batch), C4 (every width has one) and
C5 (the critical batch is P·s_w/(2·BW), checked against the knee)."""

import dataclasses

import jax
import numpy as np

from batchlab import analysis, hardware, roofline
from batchlab import verdicts as vd
from batchlab.models.mlp import MLP
from batchlab.numerics import Numerics
from batchlab.verdicts import Verdict
from batchlab.workloads.base import Cost, Family, Param, Point, Workload


def layer_shapes(point: Point) -> list[tuple[int, int]]:
    """(inputs, outputs) of each Dense layer."""
    widths = [point["input_width"] or point["width"]] + [point["width"]] * point["depth"]
    return list(zip(widths[:-1], widths[1:]))


def dense_cost(m: int, n: int, batch: int, numerics: Numerics, relu: bool) -> Cost:
    """One Dense layer m x n with bias (REFERENCE 2.2): 2bmn FLOPs, s_w(mn+n), s_a b(m+n)."""
    s = numerics.itemsize
    elementwise = batch * n * (2 if relu else 1)  # bias add, then max(x, 0)
    return Cost(
        flops=2 * batch * m * n + elementwise,
        weight_bytes=s * (m * n + n),
        activation_bytes=s * batch * (m + n),
    )


def cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    """Summed over layers; the last layer has no ReLU."""
    shapes = layer_shapes(point)
    return sum(
        (
            dense_cost(m, n, batch, numerics, relu=i < len(shapes) - 1)
            for i, (m, n) in enumerate(shapes)
        ),
        Cost(0, 0, 0),
    )


def build(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """Random weights and a random non-zero input batch, on the default device."""
    model = MLP(point["depth"], point["width"], numerics.jnp_dtype, numerics.lax_precision)
    in_width = layer_shapes(point)[0][0]
    init_key, x_key = jax.random.split(key)
    x_BxI = jax.random.normal(x_key, (batch, in_width), numerics.jnp_dtype)
    weights = jax.jit(model.init)(init_key, x_BxI[:1])
    return Workload(
        fn=model.apply, weights=weights, inputs=(x_BxI,), cost=cost(point, batch, numerics)
    )


# ---- what the sweep says: C3, C4, C5 -------------------------------------------------------

FLAT_GROWTH = 1.5  # "flat": time grows at most this much up to the knee (C3)
C4_FLAT_GROWTH = 2.0  # a width whose time grows less than this over the sweep stays flat (C4)
SLOPE_RANGE = (0.7, 1.3)  # "then rises sharply": log-log slope after the knee (C3)
KNEE_FACTOR = 4.0  # C3: a knee further than this from the predicted b* is a caveat
T4_KNEE = (64, 512)  # C3: "near 128-256 on a T4", with a factor of 2 of slack
C5_FACTOR = 2.0  # C5: the measured knee within this factor of the predicted b*


def _line(v: Verdict) -> Verdict:
    """The verdict with its printed line."""
    subject = f" {v.subject}" if v.subject else ""
    return dataclasses.replace(v, lines=(f"{v.claim}{subject}: {v.text}. {v.claim} {v.status}.",))


def _times(points: list[dict]) -> tuple[list[int], list[float]]:
    return [r["batch"] for r in points], [r["time"]["median_s"] for r in points]


def _is_post_mlp(key: tuple) -> bool:
    p = dict(key[1])
    return p.get("depth") == 8 and p.get("width") == 1024 and p.get("input_width") in (0, 1024)


def c3(records: list[dict]) -> list[Verdict]:
    """C3 on the post's MLP (8 x 1024): flat, then a knee, then time linear in batch."""
    out = [_line(_c3(k, ps)) for k, ps in analysis.series(records).items() if _is_post_mlp(k)]
    if not out and records:
        why = "needs the post's MLP, depth 8 width 1024 (configs/seed/mlp.flags)"
        out = [Verdict("C3", vd.NOT_MEASURED, why)]
    return out


def _c3(key: tuple, points: list[dict]) -> Verdict:
    label = analysis.series_label(key)
    batches, times = _times(points)
    knee = analysis.fit_knee(batches, times)
    if knee is None:
        return Verdict("C3", vd.NOT_MEASURED, "needs 3 batch sizes or more", label)
    ceilings = roofline.Ceilings(**points[-1]["ceilings"])
    b_star = analysis.predicted_critical_batch(key, ceilings, with_activations=True)
    before = [t for b, t in zip(batches, times) if b <= knee.batch]
    after = [(b, t) for b, t in zip(batches, times) if b >= 2 * knee.batch]
    if len(after) < 2:
        after = [(b, t) for b, t in zip(batches, times) if b >= knee.batch]
    growth = before[-1] / before[0] if before else None
    slope = _log_slope(after) if len(after) >= 2 else None
    numbers = {
        "knee": knee.batch,
        "predicted_b_star": b_star,
        "flat_growth": growth,
        "slope_after_knee": slope,
        "t_first_s": times[0],
        "t_last_s": times[-1],
    }
    problems = []
    if knee.note:
        problems.append(f"no knee inside b={batches[0]}..{batches[-1]} ({knee.note})")
    elif growth is not None and growth > FLAT_GROWTH:
        noisy = sum(bool(r["time"].get("unstable")) for r in points if r["batch"] <= knee.batch)
        problems.append(
            f"time grows {growth:.2f}x before the knee (flat: <= {FLAT_GROWTH:g}x)"
            + (f", with {noisy} of those points unstable" if noisy else "")
        )
    if not knee.note and (slope is None or not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]):
        problems.append(
            "after the knee time grows with log-log slope "
            + ("(too few points)" if slope is None else f"{slope:.2f}")
            + f", not linearly ({SLOPE_RANGE[0]:g}..{SLOPE_RANGE[1]:g})"
        )
    caveats = vd.unstable_caveat(points)
    kind = points[0].get("provenance", {}).get("device_kind", "")
    if hardware.lookup(kind) is hardware.DATASHEET["t4"]:
        if not T4_KNEE[0] <= knee.batch <= T4_KNEE[1]:
            caveats.append(f"on a T4 the post saw the knee near 128-256, here {knee.batch:.0f}")
    elif b_star is not None and not 1 / KNEE_FACTOR <= knee.batch / b_star <= KNEE_FACTOR:
        caveats.append(f"the knee is {knee.batch / b_star:.2g}x the predicted b* {b_star:.1f}")
    if batches[0] != 1 or batches[-1] < 256:
        caveats.append(f"batches {batches[0]}..{batches[-1]}, not the post's 1..512")
    shape = (
        f"knee at b={knee.batch:.1f} (predicted b* {roofline.fmt_batch(b_star)}), then "
        f"log-log slope {'-' if slope is None else f'{slope:.2f}'}"
    )
    if problems:
        return Verdict("C3", vd.FAILS, "; ".join([*problems, shape]), label, numbers)
    flat = f"time grows {'-' if growth is None else f'{growth:.2f}x'} up to the {shape}"
    return vd.judged("C3", True, flat, caveats, label, numbers)


def _log_slope(pairs: list[tuple[int, float]]) -> float:
    """Least-squares slope of log time against log batch."""
    x, y = np.log([b for b, _ in pairs]), np.log([t for _, t in pairs])
    return float(np.polyfit(x, y, 1)[0])


def c4(records: list[dict]) -> list[Verdict]:
    """C4 per (depth, input width, dtype): every width shows a knee, small widths stay flat."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for key, points in analysis.series(records).items():
        p = dict(key[1])
        setup = (p["depth"], p["input_width"], key[2], key[3])
        groups.setdefault(setup, {})[p["width"]] = points
    out = [_line(_c4(setup, by_width)) for setup, by_width in sorted(groups.items())]
    if records and all(v.status == vd.NOT_MEASURED for v in out):
        out = [Verdict("C4", vd.NOT_MEASURED, "needs 2 or more --widths (seed mlp_widths)")]
    return out


def _c4(setup: tuple, by_width: dict[int, list[dict]]) -> Verdict:
    depth, input_width, dtype, _ = setup
    subject = f"mlp depth={depth}" + (f" input_width={input_width}" if input_width else "")
    subject += f" {dtype}"
    shapes = {}  # width -> ("flat" | "knee" | "linear", knee batch, growth)
    for width, points in sorted(by_width.items()):
        batches, times = _times(points)
        knee = analysis.fit_knee(batches, times)
        if knee is None:
            continue
        growth = times[-1] / times[0]
        if growth < C4_FLAT_GROWTH or knee.note == "not reached by the largest batch":
            shapes[width] = ("flat", knee.batch, growth)
        elif knee.note == "below the smallest batch":
            shapes[width] = ("linear", knee.batch, growth)
        else:
            shapes[width] = ("knee", knee.batch, growth)
    if len(shapes) < 2:
        return Verdict("C4", vd.NOT_MEASURED, "needs 2 or more widths of 3+ batches", subject)
    numbers = {f"knee_w{w}": (k if s == "knee" else None) for w, (s, k, _) in shapes.items()}
    numbers |= {f"growth_w{w}": g for w, (_, _, g) in shapes.items()}
    desc = ", ".join(
        f"{w}: " + (f"knee {k:.0f}" if s == "knee" else s + (f" ({g:.1f}x)" if s == "flat" else ""))
        for w, (s, k, g) in shapes.items()
    )
    linear = [w for w, (s, _, _) in shapes.items() if s == "linear"]
    knees = [(w, k) for w, (s, k, _) in shapes.items() if s == "knee"]
    if linear or not knees:
        why = (
            f"width {', '.join(map(str, linear))} grows from the smallest batch (no flat part)"
            if linear
            else "no width shows a knee"
        )
        return Verdict("C4", vd.FAILS, f"{why}; by width: {desc}", subject, numbers)
    caveats = vd.unstable_caveat([r for ps in by_width.values() for r in ps])
    smallest = min(shapes)
    if shapes[smallest][0] != "flat":
        caveats.append(
            f"the smallest width, {smallest}, is not flat (knee {shapes[smallest][1]:.0f})"
        )
    # b* falls as the width grows (REFERENCE 2.2: the activations' share shrinks).
    later = [(a, b) for (a, ka), (b, kb) in zip(knees, knees[1:]) if kb > 2 * ka]
    if later:
        caveats.append(f"the knee moves later from width {later[0][0]} to {later[0][1]}")
    return vd.judged("C4", True, f"by width: {desc}", caveats, subject, numbers)


def c5(records: list[dict]) -> list[Verdict]:
    """C5 per dtype: the measured knee against b* = P·s_w/(2·BW) (REFERENCE 2.2-2.3)."""
    by_numerics: dict[tuple, list] = {}
    for key, points in analysis.series(records).items():
        if len(points) >= 3 and points[0]["cost"]["weight_bytes"]:
            by_numerics.setdefault((key[2], key[3]), []).append((key, points))
    out = []
    for candidates in by_numerics.values():
        post = [c for c in candidates if _is_post_mlp(c[0])]
        key, points = (post or sorted(candidates, key=lambda c: -dict(c[0][1])["width"]))[0]
        out.append(_line(_c5(key, points)))
    if not out and records:
        out = [Verdict("C5", vd.NOT_MEASURED, "needs an MLP series of 3 batch sizes or more")]
    return out


def _c5(key: tuple, points: list[dict]) -> Verdict:
    label = analysis.series_label(key)
    ceilings = roofline.Ceilings(**points[-1]["ceilings"])
    s_w = Numerics(key[2], key[3]).itemsize
    r = ceilings.ridge
    b_w = r * s_w / 2
    b_star = analysis.predicted_critical_batch(key, ceilings, with_activations=True)
    batches, times = _times(points)
    knee = analysis.fit_knee(batches, times)
    near = min(points, key=lambda p: abs(np.log(p["batch"] / knee.batch)))
    fits = near.get("working_set", {}).get("fits_in", "?")
    ratio = knee.batch / b_star if b_star else None
    numbers = {
        "ridge": r,
        "s_w": s_w,
        "b_star_weights": b_w,
        "b_star_activations": b_star,
        "knee": knee.batch,
        "knee_over_b_star": ratio,
        "fits_in_at_knee": fits,
    }
    note = f" ({knee.note})" if knee.note else ""
    text = (
        f"P/BW = {r:.4g} FLOP/B; b* = P·s_w/(2·BW) = {b_w:.4g} with s_w = {s_w} "
        f"({roofline.fmt_batch(b_star)} with activations); measured knee "
        f"{knee.batch:.1f}{note}, {'-' if ratio is None else f'{ratio:.2f}'}x b*; working "
        f"set at the knee in {fits}"
    )
    holds = ratio is not None and not knee.note and 1 / C5_FACTOR <= ratio <= C5_FACTOR
    caveats = vd.unstable_caveat(points)
    if s_w != 2:
        caveats.append(
            f"b* = P/BW, the post's formula, only for 2-byte weights; with s_w = {s_w} "
            f"it is {s_w / 2:g}·P/BW"
        )
    if not holds:
        text += f"; agreement needs a knee inside the batches, within {C5_FACTOR:g}x of b*"
    return vd.judged("C5", holds, text, caveats, label, numbers)


def verdicts(records: list[dict]) -> list[str]:
    """C3 on the post's 8 x 1024 MLP, C4 across widths, C5 the critical-batch arithmetic."""
    return vd.lines(c3(records), c4(records), c5(records))


FAMILY = Family(
    name="mlp",
    description="depth x Dense(width) with ReLU between layers",
    params=(
        Param("depth", "depths", int, (8,), "Dense layers in the MLP.", minimum=1),
        Param("width", "widths", int, (1024,), "Width of each Dense layer.", minimum=1),
        Param(
            "input_width",
            "input_widths",
            int,
            (0,),
            "Width of the MLP's input; 0 means the same as --widths.",
            minimum=0,
        ),
    ),
    cost=cost,
    build=build,
    verdicts=verdicts,
)
