"""Plots a results directory: python -m experiments.plot RESULTS_DIR [RESULTS_DIR ...]"""

import os

from batchlab import plotting, results
from batchlab.errors import ConfigError
from experiments import cli


def main(argv):
    if len(argv) < 2:
        raise ConfigError("give one or more results directories: python -m experiments.plot DIR")
    for out_dir in argv[1:]:
        if not os.path.exists(os.path.join(out_dir, results.RESULTS)):
            raise ConfigError(f"{out_dir}: no {results.RESULTS} there")
        try:
            print("\n".join(plotting.plot_dir(out_dir)))
        except ValueError as e:
            raise ConfigError(f"{out_dir}: {e}") from None


if __name__ == "__main__":
    cli.run(main, takes_args=True)
