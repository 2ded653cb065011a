"""Plots a results directory: python -m experiments.plot RESULTS_DIR [RESULTS_DIR ...]

Plots come from the stored records alone: a family this process does not know is named
and plotted against batch from its records (reading results imports nothing they name).
"""

import os
import sys

from batchlab import files, plotting, results, workloads
from batchlab.errors import ConfigError
from experiments import cli


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv):
    if len(argv) < 2:
        raise ConfigError("give one or more results directories: python -m experiments.plot DIR")
    for out_dir in argv[1:]:
        path = os.path.join(out_dir, results.RESULTS)
        if not os.path.isfile(path):
            raise ConfigError(f"{out_dir}: no {results.RESULTS} there")
        records = results.load(path, warn)
        if not any(r["status"] == "ok" for r in records):
            raise ConfigError(f"{path}: no valid record of a measured point; nothing to plot")
        unknown = sorted({r["model"] for r in records} - set(workloads.REGISTRY))
        if unknown:
            warn(
                f"{out_dir}: family {', '.join(unknown)} not known here (reading results "
                "imports no module they name): plotted against batch from the stored records"
            )
        with (
            files.DirLock(out_dir, what="plot"),
            files.writing(os.path.join(out_dir, results.PLOT)),
        ):
            try:
                print("\n".join(plotting.plot_dir(out_dir, warn=lambda m: None)))
            except ValueError as e:
                raise ConfigError(f"{out_dir}: {e}") from None


if __name__ == "__main__":
    cli.run(main, takes_args=True)
