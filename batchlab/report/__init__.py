"""The reproduction report: REPORT.md with its plots, from results directories of any
devices. It opens with one screen (each claim, its verdict per device, one number, one
plot) and folds the rest: what was measured, why each verdict, and the verdict the
roofline predicts on each measured device and on datasheet devices (REFERENCE 3)."""

import dataclasses
import datetime
import os

import batchlab.claims.verdict as vd
import batchlab.report.markdown as md
from batchlab import claims, files, hardware, plotting, record
from batchlab.errors import ConfigError
from batchlab.report import measured, sources

REPORT = "REPORT.md"
PREDICT_FOR = ("t4", "a100_80gb", "h100_sxm", "h200", "tpu_v5e")
MAX_WARNINGS = 50  # listed in the report; the rest are counted


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What to read, where to write, and which datasheet devices to predict for."""

    paths: tuple[str, ...]  # results directories, or directories holding them
    out_dir: str
    predict_for: tuple[str, ...] = PREDICT_FOR  # device keys; each in every dtype stored
    command: str = ""  # the command that made it, shown at the top


def build(config: ReportConfig, warn=print, lock: files.DirLock | None = None) -> str:
    """Writes OUT_DIR/REPORT.md and its plots; returns the report's path. A bad results
    line or directory is named in the report (and told to `warn`) and left out; with no
    valid record at all it is a ConfigError and nothing is written. OUT_DIR is locked
    while it is written (files.DirLock; `lock` when the caller holds it): a directory a
    sweep is writing is refused."""
    for key in config.predict_for:
        hardware.by_key(key)
    problems = []

    def note(message):
        problems.append(message)
        warn(message)

    read = sources.read(config.paths, note, config.predict_for)
    if not read.records():
        raise ConfigError(
            f"no valid records in {', '.join(config.paths)}; nothing to report, "
            f"{os.path.join(config.out_dir, REPORT)} not written"
        )
    files.make_dir(config.out_dir, "--out_dir")
    with files.held(config.out_dir, "--out_dir", "report", lock):
        return _write(config, read, note, problems)


def _write(config: ReportConfig, read: sources.Sources, note, problems: list[str]) -> str:
    """REPORT.md and its plots, from what was read."""
    devices = read.by_device()
    judged = {
        cid: {dev: _judge(claim, recs, note) for dev, recs in devices.items()}
        for cid, claim in claims.CLAIMS.items()
    }
    plots = {cid: _plot(config, c, read, note) for cid, c in claims.CLAIMS.items()}
    sections = [
        _claim(config, c, judged[c.id], plots[c.id], read, note) for c in claims.CLAIMS.values()
    ]
    sweeps = measured.sweeps(config.out_dir, read)
    blocks = [
        _header(config, read, devices),
        _summary(judged, devices, plots),
        _problems(problems, read),
        "## The claims",
        *sections,
        _fold("Devices: ceilings measured and on the datasheet", measured.devices(read, devices)),
        _fold('C5: the "216 vs 108" derivation', measured.derivation(devices)),
        _fold("The sweeps: knees, critical batches, plots", sweeps),
        _model_errors(read),
        _fold("How this was run", _runs(read)),
    ]
    path = os.path.join(config.out_dir, REPORT)
    files.write_atomic(path, "\n\n".join(b for b in blocks if b) + "\n")
    return path


def _model_errors(read: sources.Sources) -> str:
    """The per-kernel model's error per family and device, folded ("" without one)."""
    table = measured.model_error_table(read.records())
    if not table:
        return ""
    note = (
        "|measured / predicted - 1| of the per-kernel model (`prediction.model_s`: the "
        "per-call floor plus each kernel of the compiled program priced from a device "
        "profile measured on microbenchmarks, never fitted to these points) and of the "
        "roofline lower bound, over the same points."
    )
    return _fold("The per-kernel model: its error per family and device", f"{note}\n\n{table}")


def _fold(title: str, body: str) -> str:
    """A section folded under its title."""
    return f"<details><summary><b>{title}</b></summary>\n\n{body}\n\n</details>" if body else ""


def _judge(claim: claims.Claim, records: list[dict], warn) -> tuple[vd.Verdict, list]:
    """claims.judge, turning a judge's crash into a 'not judged' verdict."""
    try:
        return claims.judge(claim, records)
    except Exception as e:  # a record this judge did not expect must not end the report
        warn(f"{claim.id}: its judge failed: {type(e).__name__}: {e}")
        return vd.Verdict(claim.id, vd.NOT_JUDGED, f"its judge failed ({e})"), []


def _status(s: str) -> str:
    return f"**{s}**" if s in vd.TESTED else s


def _headline(claim: claims.Claim, verdict: vd.Verdict, parts: list) -> str:
    """The claim's one number from its verdict, else from its first series that has it."""
    key, name = claim.headline
    for v in [verdict, *parts]:
        found = [k for k in v.numbers if k == key] or [k for k in v.numbers if k.startswith(key)]
        if found and v.numbers[found[-1]] is not None:
            return f"{name}: {md.num(v.numbers[found[-1]])}"
    return "-"


def _header(config: ReportConfig, read: sources.Sources, devices: dict) -> str:
    records = read.records()
    points = [r for r in records if r.get("kind", record.SWEEP) == record.SWEEP]
    failed = sum(r["status"] != "ok" for r in points)
    others = (
        f", {len(records) - len(points)} router-training records"
        if len(points) < len(records)
        else ""
    )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        '# Reproducing "How does batching work on modern GPUs?"',
        f"Built {when} from {len(read.dirs)} results directories ({len(points)} points, "
        f"{failed} failed{others}) measured on: {', '.join(devices) or 'no device'}."
        + (f" Made by `{config.command}`." if config.command else ""),
    ]
    return "\n\n".join(lines)


def _summary(judged: dict, devices: dict, plots: dict) -> str:
    rows = []
    for cid, per in judged.items():
        claim = claims.CLAIMS[cid]
        first = next(iter(per.values()), (vd.Verdict(cid, vd.NOT_MEASURED, ""), []))
        plot = f"[plot]({plots[cid]})" if plots[cid] else "-"
        rows.append(
            [f"[{cid}](#{cid.lower()})", claim.text]
            + [_status(per[d][0].status) for d in devices]
            + [_headline(claim, *first), plot]
        )
    legend = (
        "Verdicts: holds / holds with a caveat / does not hold here / not enough evidence / "
        "cannot be tested on this device / not measured in these results. Each claim is "
        "judged on the results of its own seed configs; its section below says why."
    )
    return (
        "## Summary\n\n"
        + md.table(["claim", "", *devices, "one number (first device)", "plot"], rows)
        + "\n\n"
        + legend
    )


def _problems(problems: list[str], read: sources.Sources) -> str:
    lines = [f"- {p}" for p in problems[:MAX_WARNINGS]]
    if len(problems) > MAX_WARNINGS:
        lines.append(f"- ... and {len(problems) - MAX_WARNINGS} more")
    for source in read.dirs:
        failed = [r for r in source.records if r["status"] != "ok"]
        if failed:
            ids = ", ".join(f"`{r['id']}` ({r.get('failure')})" for r in failed[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            lines.append(f"- {source.path}: {len(failed)} point(s) failed: {ids}{more}")
    for run in read.runs:
        for name, c in run.get("configs", {}).items():
            if c.get("status") in ("skipped", "failed"):
                lines.append(f"- {run['path']}: config `{name}` {c['status']}: {c.get('reason')}")
            for d in c.get("dropped", []):
                lines.append(f"- {run['path']}: config `{name}`: {d}")
    if not lines:
        return ""
    return _fold(f"Problems and omissions ({len(lines)})", "\n".join(lines))


def _plot(config: ReportConfig, claim: claims.Claim, read, warn) -> str:
    """cN.png of the claim's own records, or "" when there is nothing to draw."""
    mine = [r for r in claims.records_of(claim, read.records()) if record.is_point(r)]
    mine = [r for r in mine if claim.plot_filter(r)]
    if not mine:
        return ""
    name = f"{claim.id.lower()}.png"
    try:
        title = f"{claim.id}: measured (solid) vs roofline (dashed)"
        plotting.plot_records(mine, os.path.join(config.out_dir, name), claim.plot_x, title)
    except (ValueError, KeyError) as e:
        warn(f"{claim.id}: no plot ({e})")
        return ""
    return name


def _claim(
    config: ReportConfig, claim: claims.Claim, per_device: dict, plot: str, read, warn
) -> str:
    seeds = ", ".join(f"`{claims.flagfile(s)}`" for s in claim.seeds)
    out = [
        f'<a id="{claim.id.lower()}"></a>\n### {claim.id}: {claim.text}',
        f"Where it can be tested: {claim.where}. Judged on: {seeds}"
        + (f"; compared with {', '.join(claim.reads)}" if claim.reads else "")
        + ".",
        md.table(
            ["device", "verdict", "why"],
            [[d, _status(v.status), v.text] for d, (v, _) in per_device.items()],
        ),
    ]
    if plot:
        out.append(f"![{claim.id}: measured (solid) and roofline (dashed)]({plot})")
    details = []
    parts = [(d, p) for d, (_, ps) in per_device.items() if len(ps) > 1 for p in ps]
    if parts:
        name = vd.short_subjects(p.subject for _, p in parts)
        rows = [
            [d, name[p.subject], _status(p.status), p.text, md.numbers(p.numbers)] for d, p in parts
        ]
        details.append(
            "Per series:\n\n" + md.table(["device", "series", "verdict", "why", "numbers"], rows)
        )
    numbers = [[d, md.numbers(v.numbers)] for d, (v, _) in per_device.items() if v.numbers]
    if numbers:
        details.append("Key numbers:\n\n" + md.table(["device", "numbers"], numbers))
    if any(claims.records_of(claim, rs) for rs in read.by_device().values()):
        details.append(_predictions(config, claim, read, warn))
    lines = []
    for device, (_, ps) in per_device.items():
        mine = [line for p in ps for line in (p.line, *p.lines)]
        lines += ([f"# {device}"] if len(per_device) > 1 and mine else []) + mine
    if lines:
        details.append(
            "What the sweeps print for this claim:\n\n```text\n" + "\n".join(lines) + "\n```"
        )
    if details:
        out.append(_fold(f"{claim.id} in detail", "\n\n".join(details)))
    return "\n\n".join(out)


def _predictions(config: ReportConfig, claim: claims.Claim, read, warn) -> str:
    """The verdict on the roofline's times: on each measured device (its ceilings and
    empty-call floor), and on each datasheet target the records stored predictions for."""
    if not claim.predictable:
        return (
            "Predicted: none. What this claim judges depends on the router and its tokens, "
            "not on the device, so the roofline has nothing to predict."
        )
    rows = []
    every = claims.records_of(claim, read.records())
    dtypes = {r["dtype"] for r in every}
    for by, what in ((record.ROOFLINE, "roofline"), (record.MODEL, "per-kernel model")):
        for device, records in read.by_device().items():
            v, _ = _judge(claim, record.as_predicted_all(records, by), warn)
            if v.status != vd.NOT_MEASURED:
                where = "its ceilings, empty-call floor" if by == record.ROOFLINE else "its profile"
                rows.append([f"{device}: {what}, {where}", _status(v.status), v.text])
        for target in record.targets(every):
            if target.split("|")[0] not in config.predict_for:
                continue
            # One prediction per point and target, whichever device measured it.
            found = record.on_datasheet_all(every, target, by)
            if not found:
                continue
            points = {(r["config_name"], r["id"]): r for r in found}
            v, _ = _judge(claim, list(points.values()), warn)
            label = record.target_label(target, dtypes)
            if by == record.MODEL:
                label += " (datasheet model, not validated)"
            rows.append([f"{label}: {what}", _status(v.status), v.text])
    merged: dict[tuple, list[str]] = {}  # devices with the same verdict and reason: one row
    for device, status, why in rows:
        merged.setdefault((status, why), []).append(device)
    rows = [[", ".join(devices), status, why] for (status, why), devices in merged.items()]
    return (
        "Predicted by the roofline (lower bound max(FLOPs/P, bytes/BW), plus the empty-call "
        "floor where it was measured; datasheet devices have no overhead roof) and by the "
        "per-kernel model (the per-call floor plus each compiled kernel priced from a "
        "device profile: measured, or built from the datasheet row with stated "
        "efficiencies and launch costs):\n\n"
        + md.table(["predicted for", "predicted verdict", "why"], rows)
    )


def _runs(read: sources.Sources) -> str:
    """What experiments.reproduce ran, with its wall times."""
    out = []
    for run in read.runs:
        rows = [
            [
                name,
                f"`{c.get('flagfile', '')}`",
                c.get("status", "?"),
                f"{c['wall_s']:.0f} s" if c.get("wall_s") is not None else "-",
                " ".join(c.get("extra_flags", [])) or "-",
            ]
            for name, c in run.get("configs", {}).items()
        ]
        out.append(
            f"`{run.get('command', '')}` (budget {run.get('budget')}, "
            f"{run.get('wall_s', 0):.0f} s in all, device {run.get('device', {}).get('kind', '?')})"
            "\n\n" + md.table(["config", "flagfile", "status", "wall time", "flags added"], rows)
        )
    return "\n\n".join(out)
