"""Whether an error's text shows a device fault: a broken device context that the process
cannot recover from, so the next point needs a fresh worker (as after an out-of-memory).

Two kinds of pattern. The CUDA, cuDNN/cuBLAS and TPU-halt ones name the device itself and
count on any platform. XLA's generic status codes (`INTERNAL: `, `DEADLINE_EXCEEDED: ` at
the start of a line) and "Failed to ... device" count only off CPU: XLA:CPU raises
INTERNAL for its own bugs and for a Python callback that raised, and a CPU has no device
context to lose. A callback's INTERNAL (`... Callback error ...`) is not a fault anywhere:
the Python code failed, not the device.
"""

import re

# The device's own words for out of memory: a failure of the point's size, not of the
# device (sweep classes it "oom", which also gets a fresh worker).
_MEMORY = re.compile(
    r"\bCUDA_ERROR_OUT_OF_MEMORY\b|\bcudaErrorMemoryAllocation\b|\bCU[A-Z]+_STATUS_ALLOC_FAILED\b"
)
_STATUS_AT = r"(?:^|\] |\b[Ff]ailed: )(?:[\w.]+(?:Error|Exception): )?"
_ANYWHERE = (
    # CUDA driver API codes (CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_LAUNCH_FAILED, ...).
    re.compile(r"\bCUDA_ERROR_(?!OUT_OF_MEMORY\b)[A-Z0-9_]+\b"),
    # CUDA runtime API codes (cudaErrorIllegalAddress, cudaErrorLaunchFailure, ...).
    re.compile(r"\bcudaError(?!MemoryAllocation\b)[A-Z]\w*"),
    # What cudaErrorIllegalAddress prints.
    re.compile(r"\ban illegal memory access was encountered\b"),
    # cuDNN / cuBLAS / cuFFT / cuSOLVER / cuSPARSE status codes, except those that mean the
    # call's arguments were refused (the context is fine): SUCCESS, NOT_SUPPORTED*,
    # BAD_PARAM*, INVALID_VALUE.
    re.compile(
        r"\bCU(?:DNN|BLAS|FFT|SOLVER|SPARSE)_STATUS_"
        r"(?!SUCCESS\b|NOT_SUPPORTED|BAD_PARAM|INVALID_VALUE\b|ALLOC_FAILED\b)[A-Z0-9_]+\b"
    ),
    # A TPU that stopped: "Core halted unexpectedly", "TPU halted", "chip halted".
    re.compile(r"\b(?:TPU|TensorCore|[Cc]ore|[Cc]hip)s? (?:has |have )?halted\b"),
    re.compile(r"\bhalted (?:unexpectedly|prematurely)\b"),
)
_OFF_CPU = (
    # An XLA status where a status goes: at the start of a line or of a log line's message
    # ("...cc:123] "), after an exception's type or "failed: "; not a Python callback's
    # error carried up through it.
    re.compile(_STATUS_AT + r"INTERNAL: (?!.*\b[Cc]allback error\b)"),
    re.compile(_STATUS_AT + r"DEADLINE_EXCEEDED: "),
    # "Failed to launch kernel on device", "failed to synchronize device", "Failed to
    # allocate device memory" (an out-of-memory error is classed before this is asked).
    re.compile(r"\b[Ff]ailed to [^\n.;]{0,80}?\bdevice\b"),
)


def out_of_memory(text: str) -> bool:
    """Whether `text` holds CUDA's or cuBLAS/cuDNN's own out-of-memory code."""
    return bool(_MEMORY.search(text))


def device_fault(text: str, platform: str | None) -> str | None:
    """The line of `text` that shows a device fault on `platform` ("cpu", "gpu", "tpu";
    None when not known: every pattern counts), trimmed to 300 characters, or None."""
    patterns = _ANYWHERE + (() if platform == "cpu" else _OFF_CPU)
    for line in text.splitlines():
        if any(p.search(line) for p in patterns):
            return line.strip()[:300]
    return None
