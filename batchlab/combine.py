"""Combining results directories measured by independent workers (--num_shards)."""

import json
import os
import re

from batchlab import files, record, results
from batchlab.errors import ConfigError

SHARD = re.compile(r"shard-(\d+)-of-(\d+)")


def shard_dirs(out_dir: str, warn=print) -> list[str]:
    """OUT_DIR/shard-I-of-N directories, in shard order; anything else there is left
    alone, and `warn` is told of a name that looks like a shard but is not one, and of
    shards missing from 0..N-1."""
    found = {}
    for entry in (
        sorted(os.scandir(out_dir), key=lambda e: e.name) if os.path.isdir(out_dir) else []
    ):
        m = SHARD.fullmatch(entry.name)
        if m and entry.is_dir(follow_symlinks=False):
            found[(int(m.group(2)), int(m.group(1)))] = entry.path
        elif entry.name.startswith("shard-"):
            warn(f"{entry.path}: not a shard-I-of-N directory; left out")
    for n in sorted({n for n, _ in found}):
        missing = [i for i in range(n) if (n, i) not in found]
        if missing:
            warn(
                f"{out_dir}: of {n} shards, {', '.join(map(str, missing))} missing; merged without"
            )
    return [found[k] for k in sorted(found)]


def _config(d: str) -> dict:
    if not os.path.exists(os.path.join(d, results.CONFIG)):
        raise ConfigError(f"{d}: no {results.CONFIG}; not a batchlab results directory")
    return results.read_config(d, "directory to merge")


def _not_written(d: str) -> None:
    who = files.holder(d)
    if who:
        raise ConfigError(f"{d}: {who} is still writing there; merge once it has finished")


def combine(
    dirs: list[str], out_dir: str, warn=print, lock: files.DirLock | None = None
) -> list[dict]:
    """Writes OUT_DIR/results.jsonl holding every point of `dirs` once; returns the records.

    All directories must come from the same config (the same fingerprint), and so must
    results already in OUT_DIR; none may be one a sweep is writing. A point measured in
    several places keeps its record by record.supersedes (an ok one over a failure, else
    the last). Nothing is written when no directory holds a valid record. OUT_DIR is
    locked while it is written (files.DirLock; `lock` when the caller holds it).
    """
    if not dirs:
        raise ConfigError(f"{out_dir}: no shard-I-of-N directories to merge")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir}: exists and is not a directory")
    first = _config(dirs[0])
    has_own = os.path.exists(os.path.join(out_dir, results.CONFIG))
    for d in dirs[1:] + ([out_dir] if has_own else []):
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
    loaded = []
    for d in dirs:
        _not_written(d)
        loaded += results.load(os.path.join(d, results.RESULTS), warn=warn)
    if not loaded:
        raise ConfigError(f"no valid records in {', '.join(dirs)}; nothing merged into {out_dir}")
    files.make_dir(out_dir)
    with files.held(out_dir, "", "merge", lock):
        own = results.load(os.path.join(out_dir, results.RESULTS), warn=warn)
        merged = record.latest(own + loaded)
        config = dict(first["config"], out_dir=out_dir, shard_index=0, num_shards=1)
        results.write_json_atomic(
            os.path.join(out_dir, results.CONFIG),
            {"fingerprint": first["fingerprint"], "config": config},
        )
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged.values())
        files.write_atomic(os.path.join(out_dir, results.RESULTS), text)
    return list(merged.values())
