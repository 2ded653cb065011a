"""Times a model over batch sizes and explains the times with the roofline.

python -m experiments.sweep --flagfile=configs/seed/mlp.flags
"""

import os
import sys

from absl import flags

from batchlab import isolation, plotting, results, summary, sweep
from experiments import cli, sweep_flags

DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Validate everything and print the grid; compile and write nothing."
)
PLOT = flags.DEFINE_bool("plot", True, "Write OUT_DIR/plot.png at the end.")


def main(argv):
    config = sweep_flags.sweep_config()
    if DRY_RUN.value:
        sweep.check_out_dir(config)
        print(summary.grid_text(config))
        if config.explain:
            print(summary.explain(config, "", None))
        return
    sweep.init_out_dir(config, sweep_flags.resolved_flagfile())
    rc = isolation.run_supervised(config) if config.isolate else sweep.run(config)
    if rc:
        sys.exit(rc)
    records = results.load(os.path.join(config.out_dir, results.RESULTS), warn=print)
    print(summary.table(records, config.predict_for))
    if PLOT.value and any(r["status"] == "ok" for r in records):
        print(f"plots: {', '.join(plotting.plot_dir(config.out_dir))}")
    print(f"results: {os.path.join(config.out_dir, results.RESULTS)}")


if __name__ == "__main__":
    cli.run(main)
