"""Entry point of the measuring child process: `python -m batchlab.worker JOB_JSON`.

JOB_JSON holds {"config": SweepConfig as JSON, "flagfile": the resolved flags, "argv":
the command the user typed, for the records' provenance, "supervisor": the parent's pid}.

It never outlives its supervisor: on Linux the kernel kills it when the parent dies
(PR_SET_PDEATHSIG); elsewhere a thread notices it was orphaned. SIGINT and SIGTERM stop
it quietly with exit code 130 / 143 (the supervisor says what happened). An expected
failure (bad config, a full disk, no memory to start) is one `error:` line and exit code
2 (isolation.SAID_WHY).
"""

import ctypes
import json
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Ends this process when `parent` does."""
    try:
        linux = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):  # not Linux
        linux = False
    if os.getppid() != parent:  # it died before the kernel was asked
        os._exit(1)
    if not linux:

        def watch():
            while os.getppid() == parent:
                time.sleep(0.2)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


class _Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM: args[0] is the signal."""


def _stop(signum, frame):
    for s in (signal.SIGINT, signal.SIGTERM):  # a second one must not interrupt the exit
        signal.signal(s, signal.SIG_IGN)
    raise _Stop(signum)


def _log(line: str) -> None:
    print(line, flush=True)


def _run(job_path: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    _die_with(job.get("supervisor", os.getppid()))
    try:
        from batchlab import sweep, workloads
        from batchlab.config import SweepConfig
        from batchlab.errors import ConfigError
    except (ImportError, MemoryError) as e:
        print(
            f"error: the measuring process cannot start: {type(e).__name__}: {e}", file=sys.stderr
        )
        return 2
    try:
        config = SweepConfig.from_json(job["config"])
        workloads.import_family_modules(config.family_modules)
        return sweep.run_job(config, job["flagfile"], log=_log, argv=job["argv"])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # outside any point: starting, or the empty-call floor
        print(
            f"error: out of memory in the measuring process, before a point: {e}", file=sys.stderr
        )
        return 2


def main(argv: list[str]) -> int:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stop)
    try:
        (job_path,) = argv
        return _run(job_path)
    except _Stop as e:
        return 128 + e.args[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
