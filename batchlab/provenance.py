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


# What decides how a process uses the device, read from the environment (the measuring
# child inherits its parent's): None when unset.
ENVIRONMENT = (
    "JAX_PLATFORMS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "CUDA_VISIBLE_DEVICES",
)
# jax's CUDA plugin's version readers (jax._src.lib.cuda_versions), as record fields.
CUDA_VERSIONS = {
    "cuda_driver": "cuda_driver_get_version",
    "cuda_runtime": "cuda_runtime_get_version",
    "cudnn": "cudnn_get_version",
}


def environment() -> dict:
    """The device-related environment variables, each its value or None."""
    return {k: os.environ.get(k) for k in ENVIRONMENT}


@functools.cache
def device_versions(platform: str) -> dict:
    """The driver, CUDA runtime and cuDNN versions as integers (12080 is 12.8) where the
    backend exposes them (a GPU with jax's CUDA plugin), else None each. Asked only of a
    process that already has a device, so it starts no backend of its own."""
    out = dict.fromkeys(CUDA_VERSIONS)
    if platform != "gpu":
        return out
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        return out
    for field, name in CUDA_VERSIONS.items():
        fn = getattr(cuda_versions, name, None) if cuda_versions is not None else None
        try:
            out[field] = int(fn()) if callable(fn) else None
        except Exception:  # a plugin without that reader, or one that fails: unknown
            out[field] = None
    return out


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
        "env": environment(),
    }


def provenance(device=None, argv=None) -> dict:
    """The facts of this process and `device` (none when no device answered). `argv` is
    the command the user typed: a measuring child passes its parent's on."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out = _static() | {"argv": list(sys.argv if argv is None else argv), "timestamp": now}
    if device is None:
        return out
    import jax

    try:
        platform_version = str(device.client.platform_version)
    except Exception:  # a backend without it
        platform_version = None
    return out | {
        "backend": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "platform_version": platform_version,
        **device_versions(device.platform),
    }
