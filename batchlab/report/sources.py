"""Results directories read for a report: found under the paths given, checked line by
line (a bad line is skipped with a message naming its file and line), grouped by device.

Reading runs no code named by the results (config.json's family_modules are never
imported): a record of a family this process does not know is named as such and keeps
its stored fields, which are all a reader uses. A directory a sweep is writing is read as
it is, with a warning.
"""

import dataclasses
import os

from batchlab import files, hardware, record, results, workloads
from batchlab.errors import ConfigError

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
        """Every valid record, one per point, config and device: a later directory's
        record of the same point supersedes an earlier one (record.supersedes)."""
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
                if record.supersedes(r, latest.get(key)):
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
    for here, subdirs, names in os.walk(path):
        subdirs.sort()
        if results.RESULTS in names:
            found.append(here)
            subdirs.clear()  # shard-*-of-* below a merged directory are in it already
    if not found:
        warn(f"{path}: no {results.RESULTS} in it or below it")
    return found


def _json(path: str, warn, check=None) -> dict:
    """A JSON object batchlab wrote at `path`; {} (and `warn` told why) when it is not."""
    try:
        return files.read_state(path, "left out", check)
    except ConfigError as e:
        warn(f"not read: {e}")
        return {}


def _records(d: str, warn) -> list[dict]:
    """The usable records of one directory, the latest of each point (record.latest)."""
    path = os.path.join(d, results.RESULTS)
    who = files.holder(d)
    if who:
        warn(f"{d}: {who} is still writing there; read as it is now")
    try:
        recs = list(results.latest_by_id(results.load(path, warn, complete=True)).values())
    except OSError as e:
        warn(f"{files.describe(e, path, 'reading')}; left out")
        return []
    unknown = sorted(
        {r["model"] for r in recs if r.get("kind", record.SWEEP) == record.SWEEP}
        - set(workloads.REGISTRY)
    )
    if unknown:
        warn(
            f"{path}: family {', '.join(unknown)} not known here (reading results imports no "
            "module they name): read from the records' stored fields"
        )
    return recs


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
        top = _json(os.path.join(path, results.CALIBRATION), warn, results.ceilings_problem)
        for d in find_results_dirs(path, warn):
            config = _json(os.path.join(d, results.CONFIG), warn).get("config") or {}
            config = config if isinstance(config, dict) else {}
            own = _json(os.path.join(d, results.CALIBRATION), warn, results.ceilings_problem)
            cal = top | own
            recs = _records(d, warn)
            record.upgrade_v1(recs, _config_name(d, config, runs), targets)
            if not recs:
                warn(f"{os.path.join(d, results.RESULTS)}: no usable records")
            dirs.append(Source(d, recs, cal, config))
    return Sources(dirs, runs)
