"""C1 (ResNet-50 on a CPU: time linear in batch from b=1) and C2 (on a T4: b=1,2,3 cost
the same, then time grows linearly)."""

import batchlab.claims.verdict as vd
from batchlab import analysis, hardware, record
from batchlab.claims.verdict import Verdict

LINEAR_SLACK = 0.8  # C1 holds while time per example stays within 0.8x..1.25x of b=1's
FLAT_SLACK = 1.2  # C2's "same cost": t(3) within 20% of t(1)
C1_MIN_BATCH = 8  # C1 shown only up to a smaller batch holds with a caveat
LINEAR_SLOPE_SLACK = 0.3  # C2's "then linear": log-log slope from b=8 within 1 ± this
MIN_POINTS = 3


def c1(records: list[dict]) -> list[Verdict]:
    """C1 per series: time per example at the largest batch against the smallest's."""
    out = []
    for key, points in analysis.series(records).items():
        label = key.label
        if record.backend(points[0]) != "cpu":
            why = f"C1 is about CPUs and this is a {record.backend(points[0])}"
            out.append(Verdict("C1", vd.UNTESTABLE, why, label))
            continue
        points, thin, caveats = vd.evidence("C1", label, points, MIN_POINTS)
        if thin:
            out.append(thin)
            continue
        first, last = points[0], points[-1]
        ratio = last["time_per_example_s"] / first["time_per_example_s"]
        slope = analysis.log_slope(*analysis.times(points))
        holds = LINEAR_SLACK <= ratio <= 1 / LINEAR_SLACK
        numbers = {
            "first_batch": first["batch"],
            "last_batch": last["batch"],
            "per_example_ratio": ratio,
            "log_slope": slope,
        }
        text = (
            f"time per example at b={last['batch']} is {ratio:.2f}x that at "
            f"b={first['batch']} (linear: within {LINEAR_SLACK:g}..{1 / LINEAR_SLACK:g}x), "
            f"log-log slope {slope:.2f}"
        )
        if first["batch"] != 1:
            caveats.append(f"starts at b={first['batch']}, not 1")
        if last["batch"] < C1_MIN_BATCH:
            caveats.append(f"only up to b={last['batch']}")
        if key.get("image_size") != 224:
            caveats.append(f"{key.get('image_size')} px images, not the post's 224")
        out.append(vd.judged("C1", holds, text, caveats, label, numbers))
    return out


def c2(records: list[dict]) -> list[Verdict]:
    """C2 per series on a GPU; elsewhere not testable, with the stored T4 prediction."""
    out = []
    for key, points in analysis.series(records).items():
        if record.backend(points[0]) == "gpu":
            out.append(_c2_measured(key.label, points))
        else:
            out.append(_c2_elsewhere(key.label, points))
    return out


def _c2_measured(label: str, points: list[dict]) -> Verdict:
    how = vd.measured_or_predicted(points)
    points, thin, caveats = vd.evidence("C2", label, points, MIN_POINTS)
    if thin:
        return thin
    t = {r["batch"]: r["time"]["median_s"] for r in points}
    if not {1, 2, 3} <= t.keys():
        why = "needs batch sizes 1, 2 and 3 (with medians known within ±10%)"
        return Verdict("C2", vd.NOT_MEASURED, why, label)
    flat = t[3] / t[1] <= FLAT_SLACK
    numbers = {"t2_over_t1": t[2] / t[1], "t3_over_t1": t[3] / t[1]}
    kind = points[0]["provenance"].get("device_kind", "")
    if hardware.lookup(kind) is not hardware.DATASHEET["t4"]:
        caveats.append(f"{how} on {kind or 'a GPU'}, not the post's T4")
    # "... then time grows linearly": the slope over the batches from 8 up.
    big = [r for r in points if r["batch"] >= 8]
    if len(big) >= 2:
        slope = analysis.log_slope(*analysis.times(big))
        numbers["log_slope_from_b8"] = slope
        if not 1 - LINEAR_SLOPE_SLACK <= slope <= 1 + LINEAR_SLOPE_SLACK:
            caveats.append(f"above b=8 time grows with log-log slope {slope:.2f}, not linearly")
    else:
        caveats.append("no batches from 8 up to show the linear part")
    text = (
        f"{how} t(3)/t(1) = {t[3] / t[1]:.2f} (flat: at most {FLAT_SLACK:g}), "
        f"t(2)/t(1) = {t[2] / t[1]:.2f}"
    )
    return vd.judged("C2", flat, text, caveats, label, numbers)


def _c2_elsewhere(label: str, points: list[dict]) -> Verdict:
    """Not testable off a GPU; the T4 predictions stored with the points, when there are."""
    by_batch = {r["batch"]: r for r in points}
    numbers, parts, lines = {}, [], []
    if {1, 3} <= by_batch.keys():
        keys = [k for k in by_batch[1].get("predicted", {}) if k.startswith("t4|")]
        for key in keys:
            t = {
                b: r["predicted"][key]["prediction"]["lower_s"]
                for b, r in by_batch.items()
                if key in r.get("predicted", {})
            }
            if 3 not in t:
                continue
            dtype = key.split("|")[1]
            numbers[f"t4_{dtype}_t3_over_t1"] = t[3] / t[1]
            parts.append(f"{t[3] / t[1]:.2f} in {dtype}")
            lines.append(
                f"  T4 roofline, {dtype}: "
                + ", ".join(f"t({b}) {1e3 * v:.3f} ms" for b, v in sorted(t.items()) if b <= 4)
            )
    backend = record.backend(points[0])
    text = f"needs a GPU, this is a {backend}"
    if parts:
        text += f"; the roofline predicts t(3)/t(1) {', '.join(parts)} on a T4 (no overhead roof)"
    return Verdict("C2", vd.UNTESTABLE, text, label, numbers, tuple(lines))
