"""Thin command-line scripts: flags -> a batchlab config -> one library call.

While one of them is the program (`python -m experiments.NAME`), SIGINT and SIGTERM end
it with one line from its first import on, before anything is written, until
experiments.cli.run installs the handler that stops what runs cleanly.
"""

import os
import signal
import sys


def _starting(signum, frame):
    os.write(2, f"interrupted ({signal.Signals(signum).name}) while starting\n".encode())
    os._exit(128 + signum)


_argv = getattr(sys, "orig_argv", [])
if any(a == "-m" and b.startswith(f"{__name__}.") for a, b in zip(_argv, _argv[1:])):
    for _s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_s, _starting)
