"""Runs a sweep in a child process so that a point that crashes it cannot end the sweep.

A point that kills its process (a segfault, the OOM killer, an abort inside XLA) leaves
`inflight.json` behind; the supervisor records that point as failed and starts a new
worker, which resumes after it. The parent never starts a JAX backend.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile

from batchlab import record, results, sweep
from batchlab.config import SweepConfig, grid_points


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"worker process killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"worker process killed by signal {-rc}"
    return f"worker process exited with code {rc}"


def run_supervised(config: SweepConfig, flagfile_text: str, log=print) -> int:
    """Runs `python -m batchlab.worker JOB` until the grid is done; returns an exit code."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="batchlab-job-") as job:
        json.dump({"config": config.to_json(), "flagfile": flagfile_text, "argv": sys.argv}, job)
        job.flush()
        return _supervise([sys.executable, "-m", "batchlab.worker", job.name], config, log)


def _supervise(cmd: list[str], config: SweepConfig, log) -> int:
    inflight_path = os.path.join(config.out_dir, results.INFLIGHT)
    for _ in range(len(grid_points(config)) + 1):  # each restart retires one point
        rc = subprocess.run(cmd).returncode
        if rc == 0:
            return 0
        if not os.path.exists(inflight_path):
            if rc == sweep.RESTART_EXIT_CODE:
                continue
            return rc  # not a point's fault (the worker said why)
        with open(inflight_path) as f:
            inflight = json.load(f)
        reason = _describe_exit(rc)
        base = sweep.base_record(config, inflight["params"], inflight["batch"], None)
        results.append(
            os.path.join(config.out_dir, results.RESULTS), record.failed(base, "crash", reason)
        )
        os.remove(inflight_path)
        log(f"{inflight['id']}  FAILED (crash): {reason}; continuing in a new process")
    return 1
