"""The reproduction report: REPORT.md with its plots, from results directories of any
devices. For each claim of the post (REFERENCE 1): what was measured, the verdict, and
the verdict the roofline predicts here and on datasheet devices (REFERENCE 3)."""

import dataclasses
import datetime
import os

from batchlab import claims, hardware, measured, plotting, sources
from batchlab import markdown as md
from batchlab import verdicts as vd

REPORT = "REPORT.md"
PREDICT_FOR = ("t4", "a100_80gb", "h100_sxm", "h200", "tpu_v5e")
MAX_WARNINGS = 50  # listed in the report; the rest are counted


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What to read, where to write, and which datasheet devices to predict for."""

    paths: tuple[str, ...]  # results directories, or directories holding them
    out_dir: str
    predict_for: tuple[str, ...] = PREDICT_FOR
    command: str = ""  # the command that made it, shown at the top


def build(config: ReportConfig, warn=print) -> str:
    """Writes OUT_DIR/REPORT.md and its plots; returns the report's path. A bad results
    line or directory is named in the report (and told to `warn`) and left out."""
    for key in config.predict_for:
        hardware.by_key(key)
    problems = []

    def note(message):
        problems.append(message)
        warn(message)

    read = sources.read(config.paths, note)
    os.makedirs(config.out_dir, exist_ok=True)
    devices = read.by_device()
    judged = {
        cid: {dev: _judge(claim, recs, note) for dev, recs in devices.items()}
        for cid, claim in claims.CLAIMS.items()
    }
    # Claims before problems: drawing their plots may add to the problems.
    sections = [_claim(config, c, judged[cid], read, note) for cid, c in claims.CLAIMS.items()]
    sweeps = measured.sweeps(config.out_dir, read, note)
    blocks = [
        _header(config, read, devices),
        _summary(judged, devices),
        _problems(problems, read),
        measured.devices(read, devices),
        measured.derivation(devices),
        "## The claims",
        *sections,
        sweeps,
        _runs(read),
    ]
    path = os.path.join(config.out_dir, REPORT)
    with open(path, "w") as f:
        f.write("\n\n".join(b for b in blocks if b) + "\n")
    return path


def _judge(claim: claims.Claim, records: list[dict], warn) -> tuple[vd.Verdict, list]:
    """claims.judge, turning a verdict function's crash into a 'not judged' verdict."""
    try:
        return claims.judge(claim, records)
    except Exception as e:  # a record this function did not expect must not end the report
        warn(f"{claim.id}: its verdict function failed: {type(e).__name__}: {e}")
        return vd.Verdict(claim.id, vd.NOT_JUDGED, f"verdict function failed ({e})"), []


def _status(s: str) -> str:
    return f"**{s}**" if s in vd.TESTED else s


def _header(config: ReportConfig, read: sources.Sources, devices: dict) -> str:
    records = read.records()
    failed = sum(r["status"] != "ok" for r in records)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        '# Reproducing "How does batching work on modern GPUs?"',
        f"Built {when} from {len(read.dirs)} results directories ({len(records)} points, "
        f"{failed} failed) measured on: {', '.join(devices) or 'no device'}.",
        "Each claim of the post is judged from the measurements; the same verdict "
        "functions, run on the roofline's predicted times, give the prediction for each "
        "measured device and for datasheet devices. "
        "Verdicts: holds / holds with a caveat / does not hold here / cannot be tested on "
        "this device / not measured in these results.",
    ]
    if config.command:
        lines.append(f"Made by `{config.command}`.")
    return "\n\n".join(lines)


def _summary(judged: dict, devices: dict) -> str:
    rows = [
        [cid, claims.CLAIMS[cid].text] + [_status(per[d][0].status) for d in devices]
        for cid, per in judged.items()
    ]
    return "## Verdicts\n\n" + md.table(["claim", "", *devices], rows)


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
            if c.get("status") == "skipped":
                lines.append(f"- {run['path']}: config `{name}` skipped: {c.get('reason')}")
            elif c.get("status") == "failed":
                lines.append(f"- {run['path']}: config `{name}` failed: {c.get('reason')}")
            for d in c.get("dropped", []):
                lines.append(f"- {run['path']}: config `{name}`: {d}")
    return "## Problems and omissions\n\n" + "\n".join(lines) if lines else ""


def _claim(config: ReportConfig, claim: claims.Claim, per_device: dict, read, warn) -> str:
    seeds = ", ".join(f"`configs/seed/{s}.flags`" for s in claim.seeds) or "-"
    out = [
        f"### {claim.id}: {claim.text}",
        f"Where it can be tested: {claim.where}. Seed configs: {seeds}.",
        md.table(
            ["device", "verdict", "why"],
            [[d, _status(v.status), v.text] for d, (v, _) in per_device.items()],
        ),
    ]
    numbers = [[d, md.numbers(v.numbers)] for d, (v, _) in per_device.items() if v.numbers]
    if numbers:
        out.append("Key numbers:\n\n" + md.table(["device", "numbers"], numbers))
    parts = [(d, p) for d, (_, ps) in per_device.items() if len(ps) > 1 for p in ps]
    if parts:
        name = vd.short_subjects(p.subject for _, p in parts)
        rows = [
            [d, name[p.subject], _status(p.status), p.text, md.numbers(p.numbers)] for d, p in parts
        ]
        out.append(
            "Per series:\n\n" + md.table(["device", "series", "verdict", "why", "numbers"], rows)
        )
    mine = [
        r
        for r in read.records()
        if r["status"] == "ok" and r["model"] in claim.models and claim.plot_filter(r)
    ]
    if mine:
        name = f"{claim.id.lower()}.png"
        try:
            title = f"{claim.id}: measured (solid) vs roofline (dashed)"
            path = os.path.join(config.out_dir, name)
            plotting.plot_records(mine, path, claim.plot_x, title, short_labels=True)
            out.append(f"![{claim.id}: measured (solid) and roofline (dashed)]({name})")
        except (ValueError, KeyError) as e:
            warn(f"{claim.id}: no plot ({e})")
        if claim.judge is not None:
            out.append(_predictions(config, claim, read, warn))
    lines = []
    for device, (_, ps) in per_device.items():
        mine = [line for p in ps for line in p.lines]
        lines += ([f"# {device}"] if len(per_device) > 1 and mine else []) + mine
    if lines:
        out.append(
            "<details><summary>What the sweeps print for this claim</summary>\n\n```text\n"
            + "\n".join(lines)
            + "\n```\n\n</details>"
        )
    return "\n\n".join(out)


def _predictions(config: ReportConfig, claim: claims.Claim, read, warn) -> str:
    """The verdict on the roofline's times: on each measured device (its ceilings and
    empty-call floor), and on each datasheet device in the records' dtype and, for a T4,
    in the post's fp16."""
    rows = []
    for device, records in read.by_device().items():
        v, _ = _judge(claim, claims.as_predicted(records), warn)
        if v.status != vd.NOT_MEASURED:
            rows.append([f"{device} (its ceilings, empty-call floor)", _status(v.status), v.text])
    every = [r for r in read.records() if r["status"] == "ok" and r["model"] in claim.models]
    targets = [(k, None) for k in config.predict_for]
    if "t4" in config.predict_for and any(r["dtype"] != "float16" for r in every):
        targets.insert(config.predict_for.index("t4") + 1, ("t4", "float16"))
    for key, dtype in targets:
        spec = hardware.DATASHEET[key]
        v, _ = _judge(claim, claims.on_datasheet(every, spec, dtype), warn)
        label = spec.name + (f" ({dtype}, the post's)" if dtype else "")
        rows.append([label, _status(v.status), v.text])
    merged: dict[tuple, list[str]] = {}  # devices with the same verdict and reason: one row
    for device, status, why in rows:
        merged.setdefault((status, why), []).append(device)
    rows = [[", ".join(devices), status, why] for (status, why), devices in merged.items()]
    return (
        "Predicted by the roofline (lower bound max(FLOPs/P, bytes/BW), plus the empty-call "
        "floor where it was measured; datasheet devices have no overhead roof):\n\n"
        + md.table(["device", "predicted verdict", "why"], rows)
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
            f"## How this was run\n\n`{run.get('command', '')}` (budget {run.get('budget')}, "
            f"{run.get('wall_s', 0):.0f} s in all, device {run.get('device', {}).get('kind', '?')})"
            "\n\n" + md.table(["config", "flagfile", "status", "wall time", "flags added"], rows)
        )
    return "\n\n".join(out)
