"""The printed summary of a sweep, from its records alone: one table per series (each
median with its 95% interval and p99) with the predicted and measured critical batch,
the other devices' predictions; the throughput per batch (batchlab.serving); the
failures."""

from batchlab import analysis, record, roofline, serving
from batchlab.timing import fmt_time


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e3:.3f}"


def _interval(r: dict) -> str:
    """'1.203-1.221' ms: the median's 95% interval; '~' marks the normal approximation of
    records that stored none (analysis.interval)."""
    lo, hi = analysis.interval(r)
    approx = "" if "ci95_s" in r["time"] else "~"
    return f"{approx}{lo * 1e3:.3f}-{hi * 1e3:.3f}"


def critical_batch_line(points: list[dict]) -> str:
    """'critical batch: predicted 13.2 (weights only), 13.5 (with activations); measured
    knee 14.5' from the stored b* and the knee test."""
    last = points[-1]
    if not last["cost"]["weight_bytes"]:
        pred = "n/a (no weights for a batch to share)"
    elif not record.has_b_star(last):
        pred = "not stored in these records"
    else:
        pred = (
            f"predicted {roofline.fmt_batch(record.b_star(last, False))} (weights only), "
            f"{roofline.fmt_batch(record.b_star(last))} (with activations)"
        )
    knee = analysis.fit_knee(*analysis.times(points))
    model = analysis.model_knee(points)
    model = f"; model knee {model.text()}" if model else ""
    return f"critical batch: {pred}; measured knee {knee.text()}{model}"


def table(records: list[dict], targets=None) -> str:
    """One block per series: the points, then predicted and measured critical batch and,
    for each datasheet target the records carry (or those in `targets`), its times."""
    lines = []
    for key, points in analysis.series(records).items():
        ceilings = roofline.Ceilings(**points[-1]["ceilings"])
        lines += [
            f"\n{key.label}  (P {ceilings.peak_flops / 1e9:.1f} GFLOP/s, "
            f"BW {ceilings.bandwidth / 1e9:.1f} GB/s, {ceilings.source})",
            f"{'batch':>7} {'median ms':>10} {'95% CI ms':>17} {'p99 ms':>9} {'spread':>7} "
            f"{'ms/example':>11} {'pred ms':>9} {'regime':>9} {'err':>7} {'model ms':>9} "
            f"{'err':>7} {'%peak':>6} {'fits in':>7}  model: where the time goes",
        ]
        for r in points:
            t, p = r["time"], r["prediction"]
            model_err = f"{100 * p['model_error']:>+6.0f}%" if "model_error" in p else "      -"
            lines.append(
                f"{r['batch']:>7} {_ms(t['median_s']):>10} {_interval(r):>17} "
                f"{_ms(t.get('p99_s')):>9} {100 * t['spread']:>6.1f}% "
                f"{_ms(r['time_per_example_s']):>11} {_ms(p['lower_s']):>9} {p['regime']:>9} "
                f"{100 * p['rel_error']:>+6.0f}% {_ms(p.get('model_s')):>9} {model_err} "
                f"{100 * r['attained']['fraction_of_peak']:>5.1f}% "
                f"{r['working_set']['fits_in']:>7}  {p.get('model_text', '')}"
                + ("  unstable" if t["unstable"] else "")
            )
        lines.append(critical_batch_line(points))
        for target in targets if targets is not None else record.targets(points):
            lines.append(_target_line(points, target))
    lines += serving.section(records)
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        lines.append(f"\n{len(failed)} point(s) failed:")
        lines += [f"  {r['id']}: {r.get('failure')}: {r.get('error')}" for r in failed]
    lines += _rounds_lines(records)
    err = analysis.median_abs_rel_error(records)
    if err is not None:
        lines.append(
            f"\nroofline vs measurement: median |measured/predicted - 1| = "
            f"{100 * err:.0f}% over {sum(record.is_point(r) for r in records)} points"
        )
    model = analysis.ErrorStats.of(
        [e for v in analysis.prediction_errors(records).values() for e in v["model"]]
    )
    if model:
        lines.append(
            f"per-kernel model vs measurement: median {100 * model.median:.0f}%, "
            f"{100 * model.within_20:.0f}% of {model.points} points within 20%"
        )
    lines += [_above_ceiling_line(r) for r in analysis.above_ceiling(records)]
    return "\n".join(lines)


def _rounds_lines(records: list[dict]) -> list[str]:
    """With --rounds: how often whole rounds disagreed more than samples within one."""
    rounded = [r for r in records if record.is_point(r) and "round_medians_s" in r["time"]]
    if not rounded:
        return []
    apart = [r for r in rounded if r["time"]["rounds_disagree"]]
    n = max(r["time"]["rounds"] for r in rounded)
    lines = [
        f"\n{n} rounds per point (medians of their medians): the spread between rounds "
        f"exceeds the spread within them at {len(apart)} of {len(rounded)} points"
    ]
    for r in apart[:5]:
        t = r["time"]
        lines.append(
            f"  {r['id']}: rounds {' '.join(fmt_time(m) for m in t['round_medians_s'])} "
            f"(between {100 * t['between_round_spread']:.0f}%, within {100 * t['spread']:.0f}%)"
        )
    if len(apart) > 5:
        lines.append(f"  and {len(apart) - 5} more")
    return lines


def _above_ceiling_line(r: dict) -> str:
    """A point faster than a ceiling allows: the ceiling is wrong, not the point."""
    a, c = r["attained"], r["ceilings"]
    rates = {
        "peak": f"{a['flops_per_s'] / 1e9:.1f} GFLOP/s > {c['peak_flops'] / 1e9:.1f}",
        "bandwidth": f"{a['bytes_per_s'] / 1e9:.1f} GB/s > {c['bandwidth'] / 1e9:.1f}",
    }
    over = ", ".join(rates[n] for n in a["above_ceiling"])
    return (
        f"warning: {r['id']} attains {over} ({c['source']} ceiling): the ceiling is too "
        "low; --recalibrate, or give --peak_flops/--bandwidth"
    )


def _target_line(points: list[dict], target: str) -> str:
    """Roofline times on a datasheet target, as stored with the points (no overhead roof)."""
    mine = record.on_datasheet_all(points, target)
    if not mine:
        return f"  {target}: not predicted in these records"
    name = record.target_label(target, {points[0]["dtype"]})
    times = " ".join(f"b{r['batch']}: {fmt_time(r['time']['median_s'])}" for r in mine)
    b = roofline.fmt_batch(record.b_star(mine[-1]))
    return f"  on {name} ({mine[-1]['ceilings']['flops_kernel']}): b* {b}; {times}"
