"""The results directory: its files, JSON lines flushed per record, and the check that a
directory holds results of the same config before anything is added to it.

Layout of OUT_DIR:
  results.jsonl     one record per measured or failed point (batchlab.record)
  config.json       {"fingerprint": {...}, "config": {...}}; a rerun must match it
  flags.txt         the resolved flags, a flagfile that re-runs the sweep
  calibration.json  measured device ceilings, per device kind and numerics
  inflight.json     the point being measured (present only while one is)
  plot.png          written by batchlab.plotting
"""

import json
import os

from batchlab import record
from batchlab.errors import ConfigError

RESULTS, CONFIG, FLAGS, CALIBRATION, INFLIGHT, PLOT = (
    "results.jsonl",
    "config.json",
    "flags.txt",
    "calibration.json",
    "inflight.json",
    "plot.png",
)


def append(path: str, rec: dict) -> None:
    """Appends one record and forces it to disk: a crash loses at most the point in flight."""
    with open(path, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load(path: str, warn=None, complete: bool = False) -> list[dict]:
    """The records of a results file. A malformed line (a torn last line after a crash,
    say) is skipped, and `warn` is told its file and line; nothing else is lost. With
    `complete`, records lacking what readers rely on (record.problem) are skipped too."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = record.parse(line)
                problem = record.problem(r) if complete else None
            except record.MalformedRecord as e:
                problem = str(e)
            if problem is None:
                records.append(r)
            elif warn:
                warn(f"{path}:{n}: skipped: {problem}")
    return records


def latest_by_id(records: list[dict]) -> dict[str, dict]:
    """The last record of each point id: a retried point supersedes its failure."""
    return {r["id"]: r for r in records}


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


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
    config_path = os.path.join(out, CONFIG)
    if os.path.exists(config_path):
        with open(config_path) as f:
            earlier = json.load(f).get("fingerprint") or {}
        if earlier != fingerprint:
            diff = "; ".join(
                f"{k} {earlier.get(k)!r} there, {fingerprint[k]!r} now"
                for k in fingerprint
                if earlier.get(k) != fingerprint[k]
            )
            raise ConfigError(
                f"{flag}={out_dir}: holds results of a different config ({diff}); choose "
                f"another {flag}"
            )
    elif os.path.exists(os.path.join(out, RESULTS)):
        raise ConfigError(
            f"{flag}={out_dir}: holds {RESULTS} but no {CONFIG}; choose another {flag}"
        )


def init_dir(
    out_dir: str, fingerprint: dict, config: dict, flagfile_text: str | None = None
) -> None:
    """Checks `out_dir` (check_dir), then saves the config and, if given, the flagfile."""
    check_dir(out_dir, fingerprint)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, CONFIG), {"fingerprint": fingerprint, "config": config})
    if flagfile_text is not None:
        with open(os.path.join(out_dir, FLAGS), "w") as f:
            f.write(flagfile_text)
