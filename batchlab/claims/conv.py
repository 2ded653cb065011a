"""C6: conv layers gain less from batching than MLPs, since each weight is reused at every
pixel. Judged like with like: against a measured MLP of the conv's width on the same
device, else by the conv's own intensity against the ridge (REFERENCE 2.6)."""

import batchlab.claims.verdict as vd
from batchlab import analysis
from batchlab.claims.verdict import Verdict
from batchlab.record import SeriesKey

MIN_POINTS = 3
NO_GAIN = 1.5  # without an MLP to compare with: "gains little" is at most this per example


def gain(points: list[dict]) -> float:
    """What batching saves per example: time per example at the first batch over the last."""
    return points[0]["time_per_example_s"] / points[-1]["time_per_example_s"]


def c6(records: list[dict]) -> list[Verdict]:
    """C6 per conv series."""
    every = analysis.series(records)
    mlps = {k: ps for k, ps in every.items() if k.model == "mlp"}
    return [_c6(k, ps, mlps) for k, ps in every.items() if k.model == "conv"]


def _reference(key: SeriesKey, points: list[dict], mlps: dict) -> tuple[SeriesKey, list] | None:
    """The MLP of the conv's width on the same device and numerics that covers the conv's
    first and last batch, the deepest first (the post's MLP is 8 deep)."""
    first, last = points[0]["batch"], points[-1]["batch"]
    found = [
        (k, [r for r in ps if first <= r["batch"] <= last])
        for k, ps in mlps.items()
        if k.get("width") == key.get("channels")
        and (k.device, k.dtype, k.precision) == (key.device, key.dtype, key.precision)
        and {first, last} <= {r["batch"] for r in ps}
    ]
    return max(found, key=lambda kp: kp[0].get("depth", 0)) if found else None


def _c6(key: SeriesKey, points: list[dict], mlps: dict) -> Verdict:
    label, how = key.label, vd.measured_or_predicted(points)
    points, thin, caveats = vd.evidence("C6", label, points, MIN_POINTS)
    if thin:
        return thin
    g = gain(points)
    first, last = points[0], points[-1]
    ridge = first["ceilings"]["peak_flops"] / first["ceilings"]["bandwidth"]
    intensity = first["cost"]["intensity"]
    numbers = {"gain": g, "intensity_first": intensity, "ridge": ridge}
    span = f"b={first['batch']} -> {last['batch']}"
    ref = _reference(key, points, mlps)
    if ref is not None:
        mkey, mpoints = ref
        g_mlp = gain(mpoints)
        numbers |= {"mlp_gain": g_mlp}
        text = (
            f"batching {span} saves {g:.2f}x per example, the {how} MLP "
            f"{mkey.get('depth')}x{mkey.get('width')} {g_mlp:.2f}x on the same device"
        )
        return vd.judged("C6", g < g_mlp, text, caveats, label, numbers)
    # No MLP to compare with: the roofline's reason for the claim, checked on this conv.
    bound = "compute" if intensity >= ridge else "bandwidth"
    reuse = "enough already" if bound == "compute" else "too little"
    text = (
        f"at b={first['batch']} the conv does {intensity:.1f} FLOP/B against a ridge of "
        f"{ridge:.1f} ({bound}-bound: its weights are reused {reuse}); batching {span} "
        f"saves {g:.2f}x per example (little: <= {NO_GAIN:g}x)"
    )
    caveats.append("no MLP of its width in these results on this device; judged by intensity")
    return vd.judged("C6", bound == "compute" and g <= NO_GAIN, text, caveats, label, numbers)
