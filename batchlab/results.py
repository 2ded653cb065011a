"""The results directory: JSON lines with provenance, flushed per point, and resumable.

Layout of OUT_DIR:
  results.jsonl     one record per measured or failed point (SCHEMA_VERSION)
  config.json       the sweep config and its fingerprint; a rerun must match it
  flags.txt         the resolved flags, a flagfile that re-runs the sweep
  calibration.json  measured device ceilings, per device kind and numerics
  inflight.json     the point being measured (present only while one is)
  plot.png          written by batchlab.plotting
"""

import datetime
import functools
import json
import os
import platform
import socket
import subprocess
import sys

import batchlab

SCHEMA_VERSION = 1
RESULTS, CONFIG, FLAGS, CALIBRATION, INFLIGHT, PLOT = (
    "results.jsonl",
    "config.json",
    "flags.txt",
    "calibration.json",
    "inflight.json",
    "plot.png",
)


class MalformedResults(ValueError):
    """A results file line that is not a valid record."""


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(batchlab.__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _static_provenance() -> dict:
    import flax
    import jax
    import jaxlib

    return {
        "batchlab": batchlab.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "git_commit": _git_commit(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "argv": sys.argv,
    }


def provenance(device=None) -> dict:
    """Where and with what a point was measured; without a device when none answered."""
    now = {"timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if device is None:
        return _static_provenance() | now
    import jax

    return (
        _static_provenance()
        | now
        | {
            "backend": device.platform,
            "device_kind": device.device_kind,
            "device_count": jax.device_count(),
            "process_count": jax.process_count(),
        }
    )


def append(path: str, record: dict) -> None:
    """Appends one record and forces it to disk: a crash loses at most the point in flight."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_line(line: str) -> dict:
    """One results line as a record, or MalformedResults saying what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise MalformedResults(f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or "id" not in record or "status" not in record:
        raise MalformedResults("not a batchlab record (no id or status)")
    if record.get("schema", 0) > SCHEMA_VERSION:
        raise MalformedResults(f"schema {record['schema']} is newer than {SCHEMA_VERSION}")
    return record


def load(path: str, warn=None) -> list[dict]:
    """The records of a results file. A malformed line (a torn last line after a crash,
    say) is skipped, and `warn` is told its file and line; nothing else is lost."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(check_line(line))
            except MalformedResults as e:
                if warn:
                    warn(f"{path}:{n}: skipped: {e}")
    return records


def latest_by_id(records: list[dict]) -> dict[str, dict]:
    """The last record of each point id: a retried point supersedes its failure."""
    return {r["id"]: r for r in records}


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
