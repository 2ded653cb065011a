"""Where and with what a point was measured: versions, host, device, the command typed."""

import datetime
import functools
import os
import platform
import socket
import subprocess
import sys

import batchlab


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
def _static() -> dict:
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
    }


def provenance(device=None, argv=None) -> dict:
    """The facts of this process and `device` (none when no device answered). `argv` is
    the command the user typed: a measuring child passes its parent's on."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out = _static() | {"argv": list(sys.argv if argv is None else argv), "timestamp": now}
    if device is None:
        return out
    import jax

    return out | {
        "backend": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }
