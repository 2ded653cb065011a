"""`python -m MODULE ARGS` without paying the imports each time: conftest.run_cli's runner.

A server (`python -m tests.cli_server`, started once per test process) imports what
every command imports: the libraries (jax, flax, optax, orbax, scipy, matplotlib, absl)
and batchlab (about 3-4 s of each start on the 2-core CI machine), but nothing of
experiments: each script defines its absl flags when imported. For each command it
forks a child that becomes the command: the request's cwd and environment, stdin
/dev/null, stdout and stderr to files, sys.argv and sys.orig_argv as `python -m` sets
them, and the module run as __main__ (runpy, as `-m` does), so experiments/__init__.py
and the script are imported fresh. The child exits as the interpreter would (an uncaught
exception's traceback, SystemExit's code, atexit handlers). No JAX backend is started
before the fork, and no thread. batchlab imports each of its modules by name (`from
batchlab import x`, `import batchlab.x as x`), so having them imported already hides no
missing import; test_cli starts each entry point in a real new interpreter as well.

Not a test module itself (pytest collects test_*.py only). BATCHLAB_TEST_FORK=0 makes
run_cli start a real process for every command instead.
"""

import json
import os
import signal
import subprocess
import sys
import time

# What commands import, besides batchlab; none of it starts a thread.
LIBRARIES = (
    "absl.app",
    "absl.flags",
    "absl.logging",
    "numpy",
    "scipy.stats",
    "jax",
    "jax.numpy",
    "flax.linen",
    "optax",
    "orbax.checkpoint",
    "matplotlib.pyplot",
)
# A command whose environment differs from the server's in these gets a real process:
# the libraries read them at import time.
IMPORT_TIME_ENV = ("JAX_", "XLA_", "TF_", "PYTHON", "LD_", "CUDA", "TPU_", "MPL")


def _become(request) -> int:
    """In the forked child: run the command; returns its exit status."""
    module, args = request["module"], request["args"]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, (path, flags) in enumerate(
        [
            (os.devnull, os.O_RDONLY),
            (request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ]
    ):
        new = os.open(path, flags, 0o600)
        os.dup2(new, fd)
        os.close(new)
    sys.argv = [module, *args]
    sys.orig_argv = [sys.executable, "-m", module, *args]
    import runpy

    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as the interpreter ends on one
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit status as subprocess reports it, or None (killed) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def serve() -> None:
    import importlib
    import pkgutil

    import batchlab

    modules = [m.name for m in pkgutil.walk_packages(batchlab.__path__, "batchlab.")]
    for name in (*LIBRARIES, *modules):
        if name != "batchlab.worker":  # the measuring child's main, a process of its own
            importlib.import_module(name)
    import gc

    gc.freeze()  # what the server imported is never collected: each child's exit is quick
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "w")
    replies.write("ready\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            sys.exit(_become(request))  # the interpreter's own exit: atexit, flushes
        rc = _wait(pid, request["timeout"])
        replies.write(json.dumps({"returncode": rc}) + "\n")
        replies.flush()


class Runner:
    """The client: one server, started on first use; run() returns a CompletedProcess."""

    def __init__(self, root: str, scratch: str):
        self.root, self.scratch, self.proc, self.env, self.n = root, scratch, None, None, 0

    def _start(self):
        self.env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_server"],
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline() == "ready\n", "tests.cli_server did not start"

    def forks(self, env: dict) -> bool:
        """Whether a command with `env` can run in a child of the server."""
        if os.environ.get("BATCHLAB_TEST_FORK", "1") == "0":
            return False
        if self.proc is None:
            return True
        keys = {k for k in set(env) | set(self.env) if k.startswith(IMPORT_TIME_ENV)}
        return all(env.get(k) == self.env.get(k) for k in keys)

    def run(self, module, args, timeout, fresh=False, env=None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", module, *args]
        env = dict(os.environ if env is None else env)
        if fresh or not self.forks(env):
            return subprocess.run(
                cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
            )
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.n += 1
        out, err = (os.path.join(self.scratch, f"{self.n}.{s}") for s in ("out", "err"))
        request = {"module": module, "args": list(args), "cwd": self.root, "env": env}
        request |= {"stdout": out, "stderr": err, "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "tests.cli_server died"
        rc = json.loads(reply)["returncode"]
        stdout, stderr = (_text(p) for p in (out, err))
        if rc is None:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, rc, stdout, stderr)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _text(path: str) -> str:
    """A file's bytes as subprocess's text mode gives them (universal newlines)."""
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    serve()
