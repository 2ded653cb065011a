"""Results directories read for a report: found under the paths given, checked line by
line (a bad line is skipped with a message naming its file and line), grouped by device.

Reading runs no code named by the results: a record of a family this process does not
know keeps its stored fields, which are all a reader uses.
"""

import dataclasses
import json
import os

from batchlab import hardware, record, results

REPRODUCE = "reproduce.json"  # what experiments.reproduce ran and skipped, in its OUT_DIR


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
        """Every valid record, the last of each point per config and device (a later
        directory's record of the same point supersedes an earlier one)."""
        latest = {}
        for source in self.dirs:
            for r in source.records:
                key = (
                    r.get("kind", record.SWEEP),
                    r.get("config_name", ""),
                    record.device_label(r),
                    r["id"],
                    r.get("dtype"),
                    r.get("precision"),
                    r.get("weight_copies", 1),
                )
                latest[key] = r
        return list(latest.values())

    def by_device(self) -> dict[str, list[dict]]:
        """device label -> its records, in the order the devices were first seen."""
        out: dict[str, list[dict]] = {}
        for r in self.records():
            out.setdefault(record.device_label(r), []).append(r)
        return out

    def calibration(self, device: str) -> dict:
        """The calibrations saved beside the records of `device`."""
        out = {}
        for source in self.dirs:
            if any(record.device_label(r) == device for r in source.records):
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


def _json(path: str, warn) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        warn(f"{path}: not read: {e}")
        return {}
    if not isinstance(data, dict):
        warn(f"{path}: not read: not a JSON object")
        return {}
    return data


def _config_name(d: str, config: dict, runs: list[dict]) -> str:
    """The named config of a results directory: config.json says so since schema 2; a
    schema-1 directory of a reproduction is named after the seed config it ran."""
    if config.get("config_name"):
        return config["config_name"]
    for run in runs:
        name = os.path.basename(os.path.normpath(d))
        same = os.path.normpath(os.path.join(run["path"], name)) == os.path.normpath(d)
        if same and name in run.get("configs", {}):
            return name
    return ""


def read(paths, warn, predict_for=()) -> Sources:
    """The results directories at or below `paths`, with the calibrations and reproduce
    runs found there. Schema-1 records are upgraded as they are read (record.upgrade_v1),
    with datasheet predictions for the `predict_for` device keys. Nothing raises:
    problems go to `warn` and are left out."""
    dirs, runs = [], []
    targets = [(k, hardware.DATASHEET[k]) for k in predict_for]
    for path in paths:
        run = _json(os.path.join(path, REPRODUCE), warn)
        if run:
            runs.append(run | {"path": path})
        # experiments.reproduce calibrates once at the top and shares it with each sweep.
        top = _json(os.path.join(path, results.CALIBRATION), warn)
        for d in find_results_dirs(path, warn):
            config = _json(os.path.join(d, results.CONFIG), warn).get("config") or {}
            config = config if isinstance(config, dict) else {}
            cal = top | _json(os.path.join(d, results.CALIBRATION), warn)
            # The last record of each point: a retried point supersedes its failure.
            recs = list(
                results.latest_by_id(
                    results.load(os.path.join(d, results.RESULTS), warn, complete=True)
                ).values()
            )
            record.upgrade_v1(recs, _config_name(d, config, runs), targets)
            if not recs:
                warn(f"{os.path.join(d, results.RESULTS)}: no usable records")
            dirs.append(Source(d, recs, cal, config))
    return Sources(dirs, runs)
