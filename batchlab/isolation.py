"""Runs a sweep in a child process so that a point that crashes it cannot end the sweep.

A point that kills its process (a segfault, the OOM killer, an abort inside XLA) leaves
`inflight.json` behind; the supervisor records that point as failed (`device` when the
worker's last stderr shows a device fault, faults.py) and starts a new worker, which
resumes after it. A point that raises out of memory or a device fault is recorded by the
worker, which then exits for a fresh one (sweep.RESTART_EXIT_CODE). A point measured for
longer than --point_timeout_s is killed and recorded as failed (timeout). The worker
holds OUT_DIR's lock with the supervisor (its descriptor is passed down), never outlives
it (batchlab.worker), and stops with it on SIGINT or SIGTERM. The parent never starts a
JAX backend (tests/test_accelerator.py checks it); the worker inherits its environment
(JAX_PLATFORMS, XLA_FLAGS, XLA_PYTHON_CLIENT_*), which provenance records.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from batchlab import faults, files, record, results, sweep
from batchlab.config import SweepConfig, grid_points
from batchlab.errors import ConfigError

SAID_WHY = 2  # a worker's exit code after its one `error:` line: not a point's fault
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # a worker that was told to stop
GRACE_S = 5.0  # a worker told to stop gets this long before it is killed
POLL_S = 0.2  # how often the supervisor looks at the point in flight
TAIL_BYTES = 4096  # of the worker's stderr, kept to tell an abort on std::bad_alloc


def _describe_exit(rc: int) -> str:
    """ "killed by SIGSEGV", "exited with code 1"."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"


def _oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended, or None."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class _Worker:
    """One `python -m batchlab.worker JOB`; its stderr is passed through, its tail kept."""

    def __init__(self, cmd: list[str], keep_fds: tuple[int, ...]):
        self.oom_kills, self.killed, self.tail = _oom_kills(), False, b""
        try:
            self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, pass_fds=keep_fds)
        except OSError as e:
            raise ConfigError(
                f"cannot start the measuring process (python -m batchlab.worker): {e}"
            ) from None
        self._pump = threading.Thread(target=self._pass_stderr, daemon=True)
        self._pump.start()

    def _pass_stderr(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 1 << 16):
            with contextlib.suppress(OSError):
                os.write(2, chunk)
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def wait(self, timeout=None) -> int:
        rc = self.proc.wait(timeout)
        self._pump.join(timeout=1)
        return rc

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.wait()

    def stop(self) -> None:
        """SIGTERM, GRACE_S to stop (after the call it is in), then SIGKILL; returns once
        it is gone, so that nothing writes OUT_DIR once the supervisor lets go of it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self.wait()

    def memory_cause(self) -> str | None:
        """What says memory ended it: the kernel's OOM killer (its count rose while the
        worker ran, and a SIGKILL no one here sent ended it), or an abort on bad_alloc."""
        rc = self.proc.returncode
        if rc == -signal.SIGKILL and not self.killed:
            now = _oom_kills()
            if self.oom_kills is not None and now is not None and now > self.oom_kills:
                return "the kernel's out-of-memory killer ended it"
        if rc < 0 and b"bad_alloc" in self.tail:
            return "it aborted on std::bad_alloc"
        if rc < 0 and faults.out_of_memory(self.tail.decode("utf-8", "replace")):
            return "it aborted on the device's out-of-memory error"
        return None


def run_supervised(
    config: SweepConfig, flagfile_text: str, log=print, lock: files.DirLock | None = None
) -> int:
    """Runs `python -m batchlab.worker JOB` until the grid is done; returns an exit code.
    `lock` is OUT_DIR's (sweep.hold_out_dir): the worker inherits it."""
    job = {
        "config": config.to_json(),
        "flagfile": flagfile_text,
        "argv": sys.argv,
        "supervisor": os.getpid(),
    }
    with _job_file(job) as path:
        cmd = [sys.executable, "-m", "batchlab.worker", path]
        return _supervise(cmd, config, log, (lock.fd,) if lock else ())


@contextlib.contextmanager
def _job_file(job: dict):
    """The job as a temporary JSON file for the block; a full disk is one line."""
    fd, path = -1, os.path.join(tempfile.gettempdir(), "batchlab-job-*.json")
    try:
        with files.writing(path):
            fd, path = tempfile.mkstemp(suffix=".json", prefix="batchlab-job-")
            files.write_all(fd, json.dumps(job).encode())
        yield path
    finally:
        if fd >= 0:
            os.close(fd)
            os.unlink(path)


def _wait(worker: _Worker, config: SweepConfig) -> bool:
    """Waits for the worker to exit, killing it once one point has been in flight longer
    than --point_timeout_s; returns whether it was killed for that."""
    path = os.path.join(config.out_dir, results.INFLIGHT)
    seen, since = None, 0.0
    while True:
        try:
            worker.wait(POLL_S if config.point_timeout_s else None)
            return False
        except subprocess.TimeoutExpired:
            pass
        try:
            st = os.stat(path)
            now = (st.st_ino, st.st_mtime_ns)  # each point writes a new inflight.json
        except FileNotFoundError:
            now = None
        if now != seen:
            seen, since = now, time.monotonic()
        if seen is not None and time.monotonic() - since > config.point_timeout_s:
            worker.kill()
            return True


def _recorded(path: str, inflight: dict) -> bool:
    """Whether the point in flight has a record after all: written after inflight's
    `results_size` by a worker killed before it could remove inflight.json."""
    start = inflight.get("results_size")
    if not isinstance(start, int):
        return False
    return any(r["id"] == inflight["id"] for r in results.load(path, complete=False, start=start))


def _failed(config: SweepConfig, inflight: dict, worker: _Worker, timed_out: bool) -> dict:
    """The record of the point in flight when its worker died or was killed."""
    base = sweep.base_record(config, inflight["params"], inflight["batch"], None)
    if timed_out:
        limit = f"--point_timeout_s={config.point_timeout_s:g}"
        return record.failed(base, "timeout", f"timeout: still measuring after {limit} s")
    reason = "worker process " + _describe_exit(worker.proc.returncode)
    cause = worker.memory_cause()
    if cause:
        memory, error = sweep.out_of_memory(inflight.get("cost_model_bytes"), f"{reason}: {cause}")
        return record.failed(base | {"memory": memory}, "oom", error)
    platform = inflight.get("platform") if isinstance(inflight.get("platform"), str) else None
    fault = faults.device_fault(worker.tail.decode("utf-8", "replace"), platform)
    if fault:  # e.g. XLA's CHECK on a CUDA error aborts the process
        return record.failed(base, "device", f"{reason}: device fault: {fault}")
    return record.failed(base, "crash", reason)


def _supervise(cmd: list[str], config: SweepConfig, log, keep_fds: tuple[int, ...]) -> int:
    out = config.out_dir
    results_path = os.path.join(out, results.RESULTS)
    inflight_path = os.path.join(out, results.INFLIGHT)
    for attempt in range(len(grid_points(config)) + 1):  # each restart retires a point
        if attempt and not sweep.pending(config, log=lambda line: None):
            return 0  # the point that ended the last worker was the last one
        worker = _Worker(cmd, keep_fds)
        try:
            timed_out = _wait(worker, config)
        except KeyboardInterrupt:  # SIGINT or SIGTERM to the supervisor: stop both
            worker.stop()
            with contextlib.suppress(FileNotFoundError):
                os.remove(inflight_path)  # that point has no record: it is measured again
            raise
        rc = worker.proc.returncode
        if rc == 0:
            return 0
        if rc in STOPPED and not timed_out:  # someone stopped the worker alone
            print(
                f"the measuring process was stopped ({signal.Signals(rc - 128).name}); run "
                "the same command again to resume",
                file=sys.stderr,
            )
            return rc
        inflight = results.read_inflight(out)
        if not inflight:
            if rc == sweep.RESTART_EXIT_CODE:
                continue
            if rc == SAID_WHY:
                return rc
            cause = worker.memory_cause()
            raise ConfigError(
                "the measuring process (python -m batchlab.worker) ended before it measured "
                f"a point ({_describe_exit(rc)}" + (f"; out of memory: {cause})" if cause else ")")
            )
        if rc == SAID_WHY:  # e.g. a full disk as it recorded the point: measured again
            os.remove(inflight_path)
            return rc
        if not _recorded(results_path, inflight):
            rec = _failed(config, inflight, worker, timed_out)
            results.append(results_path, rec, warn=log)
            log(f"{inflight['id']}  FAILED ({rec['failure']}): {rec['error']}; continuing")
        os.remove(inflight_path)
    return 1
