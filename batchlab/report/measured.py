"""What the results say about the devices and the sweeps, as Markdown: measured ceilings
beside the datasheet's, the critical-batch derivation (REFERENCE 2.3), and each sweep's
knees against the predicted b* with the cache level at the knee (REFERENCE 2.9)."""

import os

import numpy as np

import batchlab.claims.verdict as vd
import batchlab.report.markdown as md
import batchlab.report.sources as sources
from batchlab import analysis, hardware, plotting, record, roofline
from batchlab.numerics import Numerics
from batchlab.timing import fmt_time


def devices(read: sources.Sources, by_device: dict) -> str:
    """Per device: what it is, the ceilings the roofline used, what calibration attained
    and the datasheet side by side (and the one as a share of the other), the best the
    sweeps attained, the empty-call floor and compile times."""
    out = []
    for device, records in by_device.items():
        ok = [r for r in records if record.is_point(r)]
        if not ok:
            continue
        prov = ok[0]["provenance"]
        kind = prov.get("device_kind", "")
        spec = hardware.lookup(kind)
        software = ", ".join(
            f"{k} {prov[k]}" for k in ("jax", "jaxlib", "flax", "batchlab") if prov.get(k)
        )
        head = (
            f"### {device}\n\nbackend {prov.get('backend', '?')}, "
            f"{prov.get('device_count', '?')} device(s); {software}; git "
            f"{prov.get('git_commit') or '?'}; {len(records)} points."
        )
        rows = []
        calibration = read.calibration(device)
        used_sets = dict.fromkeys(
            (r["dtype"], r["precision"], tuple(sorted(r["ceilings"].items()))) for r in ok
        )
        for dtype, precision, used in used_sets:
            numerics, used = Numerics(dtype, precision), roofline.Ceilings(**dict(used))
            mine = [
                r
                for r in ok
                if (r["dtype"], r["precision"], roofline.Ceilings(**r["ceilings"]))
                == (dtype, precision, used)
            ]
            sheet = hardware.datasheet_ceilings(spec, numerics) if spec else None
            reached = attainable(calibration.get(f"{kind}|{dtype}|{precision}"), mine, used)
            rows.append(
                [
                    f"{dtype}, {precision} ({len(mine)} points)",
                    f"{md.ceilings_text(used)} [{used.source}]; ridge {used.ridge:.3g} FLOP/B",
                    md.ceilings_text(reached) if reached else "not measured",
                    f"{md.ceilings_text(sheet)}; ridge {sheet.ridge:.3g} FLOP/B"
                    if sheet
                    else "no datasheet row",
                    _share(reached, sheet),
                ]
            )

        def attained(r, what):
            return (r.get("attained") or {}).get(what, 0.0)

        best_f = max(ok, key=lambda r: attained(r, "flops_per_s"))
        best_b = max(ok, key=lambda r: attained(r, "bytes_per_s"))
        floors = [r["empty_call_s"] for r in ok if r.get("empty_call_s")]
        facts = [
            f"- best attained: {md.rate(attained(best_f, 'flops_per_s'), 'FLOP/s')} "
            f"(`{best_f['id']}`), {md.rate(attained(best_b, 'bytes_per_s'), 'B/s')} "
            f"(`{best_b['id']}`)",
            f"- empty jitted call: {fmt_time(float(np.median(floors)))}" if floors else "",
            _compile_line(ok),
        ]
        over = [r for r in ok if (r.get("attained") or {}).get("fraction_of_peak", 0) > 1]
        if over:
            worst = max(r["attained"]["fraction_of_peak"] for r in over)
            facts.append(
                f"- {len(over)} point(s) ran faster than the peak they were judged against "
                f"(up to {100 * worst:.0f}%): the ceilings are too low for them (a "
                "calibration under load?), so knees and regimes judged with them are suspect"
            )
        table = md.table(
            [
                "numerics",
                "used by the roofline",
                "attainable (calibrated here)",
                "datasheet",
                "attainable / datasheet",
            ],
            rows,
        )
        if spec and spec.source:
            table += f"\n\nDatasheet row `{spec.key}` ({spec.name}): {spec.source}."
        out.append(head + "\n\n" + table + "\n\n" + "\n".join(f for f in facts if f))
    return "\n\n".join(out)


def attainable(cached: dict | None, records: list[dict], used: roofline.Ceilings):
    """What the device reached by calibration: the results directory's calibration.json
    entry, else the records' own (ceilings_calibrated, stored beside datasheet ceilings),
    else the ceilings used when they were calibrated; None when nothing measured them."""
    if cached:
        return roofline.Ceilings(**cached)
    stored = next((r["ceilings_calibrated"] for r in records if r.get("ceilings_calibrated")), None)
    if stored:
        return roofline.Ceilings(**stored)
    return used if used.source.startswith("calibrated") else None


def _share(reached, sheet) -> str:
    """'80% of peak, 90% of bandwidth': what the device attains of its datasheet."""
    if reached is None or sheet is None:
        return "-"
    return (
        f"{100 * reached.peak_flops / sheet.peak_flops:.0f}% of peak, "
        f"{100 * reached.bandwidth / sheet.bandwidth:.0f}% of bandwidth"
    )


def _compile_line(ok: list[dict]) -> str:
    """Median compile time, apart for points compiled with a persistent compilation cache."""
    groups: dict = {}
    for r in ok:
        c = r.get("compile") or {}
        if "compile_s" in c:
            groups.setdefault(c.get("cache_dir"), []).append(c["compile_s"])
    parts = [
        f"median {np.median(v):.3g} s over {len(v)} points "
        + (f"with the compilation cache `{k}`" if k else "without a compilation cache")
        for k, v in groups.items()
    ]
    return "- compile: " + "; ".join(parts) if parts else ""


def derivation(by_device: dict) -> str:
    """REFERENCE 2.3 for each measured device and dtype, then for a T4 in fp16."""
    blocks = []
    for device, records in by_device.items():
        ok = [r for r in records if record.is_point(r)]
        for dtype, precision in dict.fromkeys((r["dtype"], r["precision"]) for r in ok):
            mine = [r for r in ok if (r["dtype"], r["precision"]) == (dtype, precision)]
            # The MLP's ceilings, if any: C5 compares its knee with them.
            r = next((r for r in mine if r["model"] == "mlp"), mine[0])
            s = Numerics(dtype, precision).itemsize
            blocks.append(
                roofline.explain_critical_batch(
                    f"{device} ({dtype})", roofline.Ceilings(**r["ceilings"]), s, s, 1024
                )
            )
    t4 = hardware.DATASHEET["t4"]
    fp16 = Numerics("float16")
    blocks.append(
        roofline.explain_critical_batch(
            "NVIDIA T4 (float16, the post's)", hardware.datasheet_ceilings(t4, fp16), 2, 2, 1024
        )
    )
    return (
        "For each device and dtype measured, then for the post's T4 in fp16; activations at "
        "the post's width D = 1024.\n\n```text\n" + "\n\n".join(blocks) + "\n```"
    )


def sweeps(out_dir: str, read: sources.Sources) -> str:
    """Per results directory: its plots, and each series' knee against its stored b*,
    with the cache level its working set fitted in at the knee (REFERENCE 2.9)."""
    out = []
    for source in read.dirs:
        ok = [r for r in source.records if record.is_point(r)]
        kinds = ", ".join(dict.fromkeys(record.device_label(r) for r in ok))
        name = source.records[0].get("config_name") if source.records else ""
        head = (
            f"### `{md.rel(source.path, out_dir)}`\n\n{len(source.records)} records "
            f"({sum(r['status'] != 'ok' for r in source.records)} failed) on {kinds or '-'}"
            + (f"; config `{name}`" if name else "")
            + "."
        )
        plots = sorted(
            f for f in os.listdir(source.path) if f.startswith("plot") and f.endswith(".png")
        )
        images = " ".join(f"![{p}]({md.rel(os.path.join(source.path, p), out_dir)})" for p in plots)
        groups = plotting.series_by_device(ok)
        rows = []
        for model in dict.fromkeys(key.model for key, _ in groups.values()):
            mine = {label: kp for label, kp in groups.items() if kp[0].model == model}
            short = vd.short_subjects(mine)
            rows += [[short[label], *_knee_cells(points)] for label, (_, points) in mine.items()]
        if len(groups) > 1 and len({key.model for key, _ in groups.values()}) == 1:
            head += f" Every series: {vd.common_words(groups)}."
        table = md.table(
            [
                "series",
                "predicted b* (weights only / with activations)",
                "measured knee",
                "model knee",
                "knee / b*",
                "working set at the knee",
                "regime at the knee",
            ],
            rows,
        )
        out.append("\n\n".join(x for x in (head, images, table if rows else "") if x))
    return "\n\n".join(out)


def model_error_table(records: list[dict]) -> str:
    """The per-kernel model's error beside the roofline lower bound's, per family and
    device and over all, from the stored predictions ("" when no point carries one)."""
    by = analysis.prediction_errors(records, lambda r: (r["model"], record.device_label(r)))
    if not by:
        return ""
    every = {"model": [], "roofline": []}
    rows = []
    for (family, device), e in sorted(by.items()):
        every["model"] += e["model"]
        every["roofline"] += e["roofline"]
        rows.append([family, device, *_error_cells(e)])
    rows.append(["**all**", "", *_error_cells(every)])
    head = ["family", "device", "points"]
    for who in ("model", "roofline"):
        head += [f"{who} median", f"{who} p90", f"{who} <=10%", f"{who} <=20%"]
    return md.table(head, rows)


def _error_cells(e: dict) -> list[str]:
    m, r = analysis.ErrorStats.of(e["model"]), analysis.ErrorStats.of(e["roofline"])
    cells = [str(m.points)]
    for s in (m, r):
        cells += [f"{s.median:.3f}", f"{s.p90:.3f}"]
        cells += [f"{100 * s.within_10:.0f}%", f"{100 * s.within_20:.0f}%"]
    return cells


def _batch(b: float | None) -> str:
    """A predicted critical batch; 1 means compute-bound from b=1 on."""
    return "<= 1" if b == 1.0 else roofline.fmt_batch(b)


def _knee_cells(points: list[dict]) -> list[str]:
    """Stored b*, the knee test, their ratio, and where the working set was at the knee."""
    last = points[-1]
    if not last["cost"].get("weight_bytes"):
        predicted = "n/a"
    elif not record.has_b_star(last):
        predicted = "not stored"
    else:
        predicted = f"{_batch(record.b_star(last, False))} / {_batch(record.b_star(last))}"
    knee = analysis.fit_knee(*analysis.times(points))
    model = analysis.model_knee(points)
    model = "-" if model is None else (f"{model.batch:.1f}" if model.found else model.text())
    if not knee.found:
        return [predicted, knee.text(), model, "-", "-", "-"]
    at = min(points, key=lambda r: abs(np.log(r["batch"] / knee.batch)))
    ws = at.get("working_set", {})
    fits = f"{ws.get('fits_in', '?')} ({ws.get('bytes', 0) / 2**20:.3g} MiB at b={at['batch']})"
    b_a = record.b_star(last)
    ratio = f"{knee.batch / b_a:.2f}" if b_a else "-"
    return [predicted, f"{knee.batch:.1f}", model, ratio, fits, at["prediction"]["regime"]]
