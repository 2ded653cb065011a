"""Merges the results of workers that split one sweep (--num_shards) into one directory.

python -m experiments.merge OUT_DIR              # merges OUT_DIR/shard-*-of-*
python -m experiments.merge OUT_DIR DIR [DIR...] # merges the given directories
"""

import os
import sys

from batchlab import combine, files, plotting, results, summary
from batchlab.errors import ConfigError
from experiments import cli


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv):
    if len(argv) < 2:
        raise ConfigError("give the output directory: python -m experiments.merge OUT_DIR [DIR...]")
    out_dir, dirs = argv[1], argv[2:] or combine.shard_dirs(argv[1], warn)
    records = combine.combine(dirs, out_dir, warn)
    print(summary.table(records))
    if any(r["status"] == "ok" for r in records):
        plot = os.path.join(out_dir, results.PLOT)
        with files.DirLock(out_dir, what="merge"), files.writing(plot):  # no sweep took it
            print(f"plots: {', '.join(plotting.plot_dir(out_dir, warn))}")
    print(
        f"merged {len(dirs)} directories: {os.path.join(out_dir, results.RESULTS)} "
        f"({len(records)} points)"
    )


if __name__ == "__main__":
    cli.run(main, takes_args=True)
