"""The results directory: its files, records appended one whole line at a time and read
back whatever the file holds, and the checks that its state files are what batchlab
wrote, made before anything is added to it.

Layout of OUT_DIR:
  results.jsonl     one record per measured or failed point (batchlab.record)
  config.json       {"fingerprint": {...}, "config": {...}}; a rerun must match it
  flags.txt         the resolved flags, a flagfile that re-runs the sweep
  calibration.json  measured device ceilings, per device kind and numerics
  inflight.json     the point being measured (present only while one is)
  plot.png          written by batchlab.plotting
  .lock             while a writer holds the directory (batchlab.files.DirLock)
  results.jsonl.quarantine  torn tails cut off results.jsonl before an append, if any
"""

import dataclasses
import json
import os

from batchlab import files, record, roofline
from batchlab.errors import ConfigError

RESULTS, CONFIG, FLAGS, CALIBRATION, INFLIGHT, PLOT = (
    "results.jsonl",
    "config.json",
    "flags.txt",
    "calibration.json",
    "inflight.json",
    "plot.png",
)
PROFILE = "profile.json"  # the per-kernel model's device profile (batchlab.profile)
STATE = (RESULTS, CONFIG, FLAGS, CALIBRATION, INFLIGHT, PROFILE)


def append(path: str, rec: dict, warn=None) -> None:
    """Appends one record as one line in one write, forced to disk, after moving a torn
    tail aside (files.append_line, which tells `warn`): a crash loses at most the point
    in flight, and the next record is always readable."""
    files.append_line(path, (json.dumps(rec, sort_keys=True) + "\n").encode(), warn)


def repair(path: str, warn=None) -> None:
    """Moves the torn tail of the results file at `path`, if any, aside (files.repair_tail)."""
    if not os.path.exists(path):
        return
    with files.writing(path):
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            files.repair_tail(fd, path, warn)
        finally:
            os.close(fd)


def _parse(raw: bytes, last: bool) -> dict:
    if last:
        raise record.MalformedRecord("no newline at its end (a write cut short)")
    try:
        return record.parse(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise record.MalformedRecord("not UTF-8 text") from None


def load(path: str, warn=None, complete: bool = True, start: int = 0) -> list[dict]:
    """The records of a results file (from byte `start`), whatever the file holds. A line
    that is not a record (torn, NULs, not UTF-8, not JSON, nested too deep, not an
    object) is skipped and `warn` is told its file and line, as is a last line without
    its newline (a write cut short: the next append moves it aside). With `complete`,
    records lacking what readers rely on (record.problem) are skipped too. Lines are
    counted from `start`."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    records = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            r = _parse(raw, n == len(lines))
            problem = record.problem(r) if complete else None
        except record.MalformedRecord as e:
            problem = str(e)
        if problem is None:
            records.append(r)
        elif warn:
            warn(f"{path}:{n}: skipped: {problem}")
    return records


def latest_by_id(records: list[dict]) -> dict[str, dict]:
    """One record per point id, by the duplicate rule (record.supersedes): the later wins,
    but a failed record never replaces an ok one."""
    return record.latest(records)


def write_json_atomic(path: str, obj, durable: bool = True) -> None:
    """`obj` as JSON at `path`, written whole or not at all (files.write_atomic)."""
    files.write_atomic(path, json.dumps(obj, indent=1, sort_keys=True), durable)


# ---- state files: what a sweep wrote, or refused in one line ------------------------------


def _config_problem(d: dict) -> str | None:
    if not isinstance(d.get("fingerprint"), dict) or not isinstance(d.get("config"), dict):
        return "not a batchlab config.json (it needs fingerprint and config objects)"
    return None


def read_config(out_dir: str, flag: str = "--out_dir") -> dict:
    """OUT_DIR/config.json ({} when there is none); ConfigError when it is not one."""
    return files.read_state(
        os.path.join(out_dir, CONFIG), f"choose another {flag}", _config_problem
    )


_CEILING_FIELDS = {f.name for f in dataclasses.fields(roofline.Ceilings)}


def ceilings_problem(entries: dict) -> str | None:
    """What makes calibration.json not one batchlab wrote: each entry must be ceilings
    with a positive peak_flops and bandwidth."""
    for key, c in entries.items():
        numbers = isinstance(c, dict) and all(
            isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool) and c[k] > 0
            for k in ("peak_flops", "bandwidth")
        )
        if not numbers or not set(c) <= _CEILING_FIELDS:
            return f"entry {key!r} is not measured ceilings (positive peak_flops and bandwidth)"
    return None


def read_calibration(path: str, way_out: str = "use --recalibrate or a new --out_dir") -> dict:
    """A calibration.json ({} when there is none); ConfigError naming the way out."""
    return files.read_state(path, way_out, ceilings_problem)


def _inflight_problem(d: dict) -> str | None:
    point = isinstance(d.get("id"), str) and isinstance(d.get("params"), dict)
    if not point or not isinstance(d.get("batch"), int):
        return "not the point a sweep was measuring (it needs id, params and batch)"
    return None


def read_inflight(out_dir: str) -> dict:
    """OUT_DIR/inflight.json, the point being measured ({} when none is)."""
    return files.read_state(
        os.path.join(out_dir, INFLIGHT),
        "remove it (it names the point a killed sweep was measuring, which is measured "
        "again) or choose another --out_dir",
        _inflight_problem,
    )


def check_flags(path: str) -> None:
    """A flags.txt, if there, must be a flagfile: UTF-8 text of comments and --flags."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(
            f"{files.describe(e, path, 'reading')}; choose another --out_dir"
        ) from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines, problem = [], "not UTF-8 text"
    else:
        bad = [n for n, ln in enumerate(lines, 1) if "\0" in ln or not ln.startswith(("#", "--"))]
        problem = f"line {bad[0]} is neither a comment nor a --flag" if bad else None
    if problem:
        raise ConfigError(
            f"{path}: not a flagfile a sweep wrote ({problem}); remove it (the sweep writes "
            "it again) or choose another --out_dir"
        )


def check_dir(out_dir: str, fingerprint: dict, flag: str = "--out_dir") -> None:
    """Writes nothing: `out_dir` must be writable, and any results already in it must
    carry the same fingerprint (ConfigError naming `flag` and what differs)."""
    out = os.path.abspath(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"{flag}={out_dir}: exists and is not a directory")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{flag}={out_dir}: cannot write there ({parent} is not a writable directory)"
        )
    for name in (*STATE, files.LOCK):
        path = os.path.join(out, name)
        if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
            raise ConfigError(
                f"{flag}={out_dir}: {name} there is not a plain file (a link or a directory); "
                f"batchlab writes only files it made; choose another {flag}"
            )
    earlier = read_config(out_dir, flag)
    if earlier:
        if earlier["fingerprint"] != fingerprint:
            diff = "; ".join(
                f"{k} {earlier['fingerprint'].get(k)!r} there, {fingerprint[k]!r} now"
                for k in fingerprint
                if earlier["fingerprint"].get(k) != fingerprint[k]
            )
            raise ConfigError(
                f"{flag}={out_dir}: holds results of a different config ({diff}); choose "
                f"another {flag}"
            )
        return
    for name in (RESULTS, FLAGS, INFLIGHT):
        if os.path.exists(os.path.join(out, name)):
            raise ConfigError(
                f"{flag}={out_dir}: holds {name} but no {CONFIG}; choose another {flag}"
            )


def init_dir(
    out_dir: str, fingerprint: dict, config: dict, flagfile_text: str | None = None
) -> None:
    """Checks `out_dir` (check_dir), then saves the config and, if given, the flagfile."""
    check_dir(out_dir, fingerprint)
    files.make_dir(out_dir, "--out_dir")
    write_json_atomic(os.path.join(out_dir, CONFIG), {"fingerprint": fingerprint, "config": config})
    if flagfile_text is not None:
        files.write_atomic(os.path.join(out_dir, FLAGS), flagfile_text)
