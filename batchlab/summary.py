"""The printed summary of a sweep: the table, critical batches, other devices, the derivation."""

from batchlab import analysis, distributed, hardware, roofline, workloads
from batchlab.numerics import Numerics


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e3:.3f}"


def fmt_time(t: float) -> str:
    """Seconds in the unit that reads best: 12.3 us, 4.56 ms, 1.23 s."""
    if t < 1e-3:
        return f"{t * 1e6:.3g} us"
    return f"{t * 1e3:.4g} ms" if t < 1 else f"{t:.3g} s"


def _ceilings_of(record: dict) -> roofline.Ceilings:
    return roofline.Ceilings(**record["ceilings"])


def table(records: list[dict], predict_for=()) -> str:
    """One block per series: the points, then predicted and measured critical batch."""
    lines = []
    for key, points in analysis.series(records).items():
        ceilings = _ceilings_of(points[-1])
        lines += [
            f"\n{analysis.series_label(key)}  "
            f"(P {ceilings.peak_flops / 1e9:.1f} GFLOP/s, "
            f"BW {ceilings.bandwidth / 1e9:.1f} GB/s, {ceilings.source})",
            f"{'batch':>7} {'median ms':>10} {'spread':>7} {'ms/example':>11} "
            f"{'pred ms':>9} {'regime':>9} {'err':>7} {'%peak':>6} {'fits in':>7}",
        ]
        for r in points:
            t, p = r["time"], r["prediction"]
            lines.append(
                f"{r['batch']:>7} {_ms(t['median_s']):>10} {100 * t['spread']:>6.1f}% "
                f"{_ms(r['time_per_example_s']):>11} {_ms(p['lower_s']):>9} {p['regime']:>9} "
                f"{100 * p['rel_error']:>+6.0f}% {100 * r['attained']['fraction_of_peak']:>5.1f}% "
                f"{r['working_set']['fits_in']:>7}" + ("  unstable" if t["unstable"] else "")
            )
        knee = analysis.fit_knee(
            [r["batch"] for r in points], [r["time"]["median_s"] for r in points]
        )
        b_w = analysis.predicted_critical_batch(key, ceilings, with_activations=False)
        b_a = analysis.predicted_critical_batch(key, ceilings, with_activations=True)
        measured = (
            "-" if knee is None else f"{knee.batch:.1f}" + (f" ({knee.note})" if knee.note else "")
        )
        predicted = (
            f"predicted {roofline.fmt_batch(b_w)} (weights only), "
            f"{roofline.fmt_batch(b_a)} (with activations)"
            if points[0]["cost"]["weight_bytes"]
            else "n/a (no weights for a batch to share)"
        )
        lines.append(f"critical batch: {predicted}; measured knee {measured}")
        for dev in predict_for:
            lines.append(_other_device_line(key, points, hardware.by_key(dev)))
    ok = [r for r in records if r.get("status") == "ok"]
    for model in dict.fromkeys(r["model"] for r in ok):
        verdicts = workloads.get(model).verdicts([r for r in ok if r["model"] == model])
        if verdicts:
            lines += ["", *verdicts]
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        lines.append(f"\n{len(failed)} point(s) failed:")
        lines += [f"  {r['id']}: {r.get('failure')}: {r.get('error')}" for r in failed]
    err = analysis.median_abs_rel_error(records)
    if err is not None:
        lines.append(
            f"\nroofline vs measurement: median |measured/predicted - 1| = "
            f"{100 * err:.0f}% over {sum(r.get('status') == 'ok' for r in records)} "
            "points"
        )
    return "\n".join(lines)


def _other_device_line(key: tuple, points: list[dict], spec: hardware.DeviceSpec) -> str:
    """Roofline times on a datasheet device, from the analytic costs (no overhead roof)."""
    numerics = Numerics(key[2], key[3])
    ceilings = hardware.datasheet_ceilings(spec, numerics)
    times = " ".join(
        f"b{r['batch']}: "
        f"{fmt_time(roofline.predict(workloads.Cost.from_dict(r['cost']), ceilings).lower_s)}"
        for r in points
    )
    b = analysis.predicted_critical_batch(key, ceilings, with_activations=True)
    return f"  on {spec.name} ({ceilings.flops_kernel}): b* {roofline.fmt_batch(b)}; {times}"


def explain(config, device_name: str, ceilings: roofline.Ceilings | None) -> str:
    """The critical-batch derivation for the device at hand and each --predict_for device."""
    s = config.numerics.itemsize
    width = config.grid.get("width", (None,))[0]
    blocks = []
    if ceilings is not None:
        blocks.append(roofline.explain_critical_batch(device_name, ceilings, s, s, width))
    for key in config.predict_for or ("t4",):
        spec = hardware.by_key(key)
        blocks.append(
            roofline.explain_critical_batch(
                spec.name, hardware.datasheet_ceilings(spec, config.numerics), s, s, width
            )
        )
    return "\n".join(blocks)


def grid_text(config) -> str:
    """The grid a sweep would measure: each point's analytic cost and its roofline time on
    each --predict_for device; nothing compiled."""
    from batchlab.config import grid_points, point_id

    family = workloads.get(config.model)
    devices = [hardware.by_key(k) for k in config.predict_for]
    ceilings = [hardware.datasheet_ceilings(d, config.numerics) for d in devices]
    lines = [
        f"{'point':<50} {'GFLOP':>10} {'weight MB':>10} {'activ. MB':>10} {'state MB':>9}"
        + "".join(f" {d.key:>10}" for d in devices)
    ]
    for point, batch in grid_points(config):
        c = distributed.cost_on_mesh(family, point, batch, config.numerics, config.mesh)
        lines.append(
            f"{point_id(config.model, point, batch):<50} {c.flops / 1e9:>10.4g} "
            f"{c.weight_bytes / 1e6:>10.4g} {c.activation_bytes / 1e6:>10.4g} "
            f"{c.state_bytes / 1e6:>9.4g}"
            + "".join(f" {fmt_time(roofline.predict(c, ceil).lower_s):>10}" for ceil in ceilings)
        )
    lines.append(
        f"{len(lines) - 1} points, {config.numerics.dtype}, "
        f"precision {config.numerics.precision}; out_dir {config.out_dir}"
        + (f"; costs per device of mesh {dict(config.mesh)}" if config.mesh else "")
        + ("; device columns: roofline time from the datasheet" if devices else "")
    )
    return "\n".join(lines)
