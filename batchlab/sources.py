"""Results directories read for a report: found under the paths given, checked line by
line (a bad line is skipped with a message naming its file and line), grouped by device."""

import dataclasses
import json
import os

from batchlab import results, workloads
from batchlab.errors import ConfigError
from batchlab.plotting import device_label

REPRODUCE = "reproduce.json"  # what experiments.reproduce ran and skipped, in its OUT_DIR
# What the report reads from a successful record; a record without one is skipped.
REQUIRED = {
    "model": str,
    "params": dict,
    "batch": int,
    "dtype": str,
    "precision": str,
    "time": dict,
    "time_per_example_s": (int, float),
    "cost": dict,
    "ceilings": dict,
    "prediction": dict,
    "provenance": dict,
}


@dataclasses.dataclass
class Source:
    """One results directory."""

    path: str
    records: list[dict]  # the valid ones, ok and failed
    calibration: dict  # calibration.json: {"<device_kind>|<dtype>|<precision>": ceilings}
    config: dict  # config.json's "config", or {}


@dataclasses.dataclass
class Sources:
    """Everything read from the paths given to a report."""

    dirs: list[Source]
    runs: list[dict]  # reproduce.json files found at the top of the paths given

    def records(self) -> list[dict]:
        """Every valid record, the last of each point per device (a later directory's
        record of the same point on the same device supersedes an earlier one)."""
        latest = {}
        for source in self.dirs:
            for r in source.records:
                key = (device_label(r), r["id"], r["dtype"], r["precision"])
                latest[key + (r.get("weight_copies", 1),)] = r
        return list(latest.values())

    def by_device(self) -> dict[str, list[dict]]:
        """device label -> its records, in the order the devices were first seen."""
        out: dict[str, list[dict]] = {}
        for r in self.records():
            out.setdefault(device_label(r), []).append(r)
        return out

    def calibration(self, device: str) -> dict:
        """The calibrations saved beside the records of `device`."""
        out = {}
        for source in self.dirs:
            if any(device_label(r) == device for r in source.records):
                out |= source.calibration
        return out


def find_results_dirs(path: str, warn) -> list[str]:
    """`path` if it holds results.jsonl, else every directory below it that does."""
    if os.path.isfile(os.path.join(path, results.RESULTS)):
        return [path]
    if not os.path.isdir(path):
        warn(f"{path}: no such directory")
        return []
    found = []
    for here, subdirs, files in os.walk(path):
        subdirs.sort()
        if results.RESULTS in files:
            found.append(here)
            subdirs.clear()  # shard-*-of-* below a merged directory are in it already
    if not found:
        warn(f"{path}: no {results.RESULTS} in it or below it")
    return found


def _problem(record: dict) -> str | None:
    """What makes a parsed record unusable for the report, or None."""
    needed = REQUIRED if record["status"] == "ok" else {k: REQUIRED[k] for k in ("model",)}
    for name, kind in needed.items():
        if not isinstance(record.get(name), kind):
            return f"record {record['id']} has no valid {name!r}"
    if record["status"] == "ok":
        t = record["time"].get("median_s")
        if not isinstance(t, (int, float)) or t <= 0:
            return f"record {record['id']} has no positive time.median_s"
        if record["model"] not in workloads.REGISTRY:
            return (
                f"record {record['id']}: unknown model family {record['model']!r} "
                "(its module is not importable here)"
            )
    return None


def read_results(path: str, warn) -> list[dict]:
    """The usable records of a results.jsonl; each bad line is skipped and named."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = results.check_line(line)
            except results.MalformedResults as e:
                warn(f"{path}:{n}: skipped: {e}")
                continue
            problem = _problem(record)
            if problem:
                warn(f"{path}:{n}: skipped: {problem}")
            else:
                records.append(record)
    return records


def _json(path: str, warn) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        warn(f"{path}: not read: {e}")
        return {}
    if not isinstance(data, dict):
        warn(f"{path}: not read: not a JSON object")
        return {}
    return data


def read(paths, warn) -> Sources:
    """The results directories at or below `paths`, with the calibrations and reproduce
    runs found there. Nothing raises: problems go to `warn` and are left out."""
    dirs, runs = [], []
    for path in paths:
        run = _json(os.path.join(path, REPRODUCE), warn)
        if run:
            runs.append(run | {"path": path})
        # experiments.reproduce calibrates once at the top and shares it with each sweep.
        top = _json(os.path.join(path, results.CALIBRATION), warn)
        for d in find_results_dirs(path, warn):
            config = _json(os.path.join(d, results.CONFIG), warn).get("config") or {}
            try:
                workloads.import_family_modules(config.get("family_modules", ()))
            except ConfigError as e:
                warn(f"{os.path.join(d, results.CONFIG)}: {e}")
            cal = top | _json(os.path.join(d, results.CALIBRATION), warn)
            # The last record of each point: a retried point supersedes its failure.
            records = list(
                results.latest_by_id(read_results(os.path.join(d, results.RESULTS), warn)).values()
            )
            if not records:
                warn(f"{os.path.join(d, results.RESULTS)}: no usable records")
            dirs.append(Source(d, records, cal, config))
    return Sources(dirs, runs)
