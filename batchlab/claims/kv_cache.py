"""C8: with a KV cache "the time taken by attention is minimal" (REFERENCE 2.4): true
only while b·T·kv_bytes is small against the weights.

Read from the measurements near each context: the KV cache's share of the step at
context T_i is slope_i·T_i / t(T_i), slope_i the time per cached position between T_i
and the next context measured (the last one uses the pair before it). The measured
crossover T× (KV time equals everything else: share 1/2) is interpolated between the
contexts where the share crosses 1/2, or extrapolated from the nearest pair and said so.
"""

import math

import batchlab.claims.verdict as vd
from batchlab import analysis
from batchlab.claims.verdict import Verdict

MINIMAL_SHARE = 0.2  # the KV cache's share of the step counts as "minimal" up to this
HEADER = (
    "C8 (with a KV cache 'the time taken by attention is minimal'): holds only while "
    "b·T·kv_bytes << weight bytes (REFERENCE 2.4)."
)


def predicted_crossover(r: dict) -> float:
    """T× = weight bytes / (b · KV bytes per cached token), from a decode record's stored
    cost: a step reads context + 1 entries and writes one (batchlab.workloads.decoder)."""
    per_token = r["cost"]["state_bytes"] / (r["batch"] * (r["params"]["context"] + 2))
    return r["cost"]["weight_bytes"] / (r["batch"] * per_token)


def shares(points: list[dict]) -> list[tuple[int, float, tuple[int, int], float]]:
    """(context, KV share of the step, the pair of contexts its slope came from, slope in
    s per position) at each context of one batch, in context order."""
    ctx = [r["params"]["context"] for r in points]
    t = [r["time"]["median_s"] for r in points]
    out = []
    for i in range(len(points)):
        j = i if i + 1 < len(points) else i - 1
        slope = max(0.0, (t[j + 1] - t[j]) / (ctx[j + 1] - ctx[j]))
        out.append((ctx[i], min(1.0, slope * ctx[i] / t[i]), (ctx[j], ctx[j + 1]), slope))
    return out


def crossover(points: list[dict], found) -> tuple[float, str]:
    """(T×, where it came from) for one batch, from its shares."""
    for (c0, s0, _, _), (c1, s1, _, _) in zip(found, found[1:]):
        if s0 < 0.5 <= s1:
            f = (0.5 - s0) / (s1 - s0)
            return math.exp(math.log(c0) + f * (math.log(c1) - math.log(c0))), f"T={c0}..{c1}"
    end = found[-1] if found[-1][1] < 0.5 else found[0]
    (a, b), slope = end[2], end[3]
    t_a = next(r["time"]["median_s"] for r in points if r["params"]["context"] == a)
    fixed = t_a - slope * a  # the step's time without its KV reads, on that pair's line
    where = "beyond" if end is found[-1] else "below"
    if slope <= 0 or fixed <= 0:
        return math.inf, f"{where} T={a}..{b} (no positive slope there)"
    return fixed / slope, f"{where} the contexts timed, extrapolated from T={a}..{b}"


def c8(records: list[dict]) -> list[Verdict]:
    """C8 per decoder setup (every parameter but the context)."""
    setups: dict[tuple, dict[int, list[dict]]] = {}
    for key, points in analysis.series(records, x="context").items():
        rest = tuple((k, v) for k, v in key.params if k != "batch")
        setup = (key.config, key.device, rest, key.dtype, key.precision)
        setups.setdefault(setup, {})[key.get("batch")] = points
    return [_c8(setup, per_batch) for setup, per_batch in sorted(setups.items())]


def _c8(setup: tuple, per_batch: dict[int, list[dict]]) -> Verdict:
    config, _, rest, dtype, _ = setup
    subject = f"{config or 'decode'} {dtype} " + " ".join(
        f"{k}={v}" for k, v in rest if k in ("depth", "width", "kv_heads")
    )
    lines, every, crossings, caveats = [], [], {}, []
    for batch, points in sorted(per_batch.items()):
        good, _, left = vd.evidence("C8", subject, points, 2, "context")
        caveats += [f"b={batch}: {c}" for c in left]
        predicted = predicted_crossover(points[0])
        if len(good) < 2:
            lines.append(
                f"  b={batch}: predicted crossover T× = {predicted:.0f}; needs 2+ contexts"
            )
            continue
        found = shares(good)
        every += [(s, batch, c, pair) for c, s, pair, _ in found]
        t_x, where = crossover(good, found)
        crossings[batch] = (t_x, where, predicted)
        lines.append(
            f"  b={batch}: KV share "
            + ", ".join(f"T={c}: {100 * s:.0f}%" for c, s, _, _ in found)
            + f"; crossover T× {t_x:.0f} ({where}), from the bytes {predicted:.0f}"
        )
    if not every:
        why = "needs 2 or more --contexts at some batch, timed within ±10%"
        return Verdict("C8", vd.NOT_ENOUGH, why, subject, {}, tuple(lines))
    first = min(every, key=lambda s: (s[1], s[2]))  # smallest batch, shortest context
    worst = max(every)
    b0 = min(crossings)
    t_x, where, predicted = crossings[b0]
    numbers = {
        "kv_share_shortest": first[0],
        "kv_share_largest": worst[0],
        "crossover_batch": b0,
        "crossover_measured": t_x,
        "crossover_predicted": predicted,
    }
    how = vd.measured_or_predicted(per_batch[b0])
    cross = (
        f"crossover T× at b={b0} {how} {t_x:.0f} ({where}); weight bytes / KV bytes per "
        f"token give {predicted:.0f}"
    )
    at = f"b={first[1]}, T={first[2]} (slope from T={first[3][0]}..{first[3][1]})"
    if first[0] > MINIMAL_SHARE:
        why = (
            f"even at {at} the KV cache takes {100 * first[0]:.0f}% of the step (minimal: "
            f"<= {100 * MINIMAL_SHARE:.0f}%); {cross}"
        )
        return Verdict("C8", vd.FAILS, why, subject, numbers, tuple(lines))
    if worst[0] > MINIMAL_SHARE:
        caveats.insert(
            0,
            f"only at short context: {100 * worst[0]:.0f}% of the step at b={worst[1]}, "
            f"T={worst[2]}",
        )
    text = f"the KV cache takes {100 * first[0]:.0f}% of the step at {at}; {cross}"
    return vd.judged("C8", True, text, caveats, subject, numbers, lines)
