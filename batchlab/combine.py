"""Combining results directories measured by independent workers (--num_shards)."""

import glob
import json
import os

from batchlab import results
from batchlab.errors import ConfigError


def shard_dirs(out_dir: str) -> list[str]:
    """OUT_DIR/shard-I-of-N directories, in shard order."""
    found = glob.glob(os.path.join(out_dir, "shard-*-of-*"))
    return sorted(found, key=lambda d: int(os.path.basename(d).split("-")[1]))


def _config(d: str) -> dict:
    path = os.path.join(d, results.CONFIG)
    if not os.path.exists(path):
        raise ConfigError(f"{d}: no {results.CONFIG}; not a batchlab results directory")
    with open(path) as f:
        return json.load(f)


def combine(dirs: list[str], out_dir: str, warn=print) -> list[dict]:
    """Writes OUT_DIR/results.jsonl holding every point of `dirs` once; returns the records.

    All directories must come from the same config (the same fingerprint), and so must
    results already in OUT_DIR. A point measured in several places keeps its successful
    record, else the last one.
    """
    if not dirs:
        raise ConfigError(f"{out_dir}: no shard-I-of-N directories to merge")
    first = _config(dirs[0])
    for d in dirs[1:] + (
        [out_dir] if os.path.exists(os.path.join(out_dir, results.CONFIG)) else []
    ):
        other = _config(d)
        if other["fingerprint"] != first["fingerprint"]:
            diff = "; ".join(
                f"{k} {first['fingerprint'].get(k)!r} vs {v!r}"
                for k, v in other["fingerprint"].items()
                if first["fingerprint"].get(k) != v
            )
            raise ConfigError(
                f"{d}: results of a different config than {dirs[0]} ({diff}); refusing to merge"
            )
    merged: dict[str, dict] = {}
    for d in [out_dir, *dirs]:
        for r in results.load(os.path.join(d, results.RESULTS), warn=warn):
            if r["status"] == "ok" or merged.get(r["id"], {}).get("status") != "ok":
                merged[r["id"]] = r
    os.makedirs(out_dir, exist_ok=True)
    config = dict(first["config"], out_dir=out_dir, shard_index=0, num_shards=1)
    results.write_json_atomic(
        os.path.join(out_dir, results.CONFIG),
        {"fingerprint": first["fingerprint"], "config": config},
    )
    tmp = os.path.join(out_dir, results.RESULTS + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in merged.values())
    os.replace(tmp, os.path.join(out_dir, results.RESULTS))
    return list(merged.values())
