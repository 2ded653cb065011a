"""Times a model over batch sizes and explains the times with the roofline.

python -m experiments.sweep --flagfile=configs/seed/mlp.flags
"""

import contextlib
import dataclasses
import os
import sys

from absl import flags

from batchlab import (
    claims,
    distributed,
    dry_run,
    files,
    isolation,
    plotting,
    results,
    summary,
    sweep,
)
from experiments import cli, sweep_flags

F = sweep_flags.define()
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Validate everything and print the grid; compile and write nothing."
)
PLOT = flags.DEFINE_bool("plot", True, "Write OUT_DIR/plot.png at the end.")


def main(argv):
    config = sweep_flags.sweep_config(F)
    sweep.check_out_dir(config, recalibrate=F.recalibrate.value)
    if DRY_RUN.value:
        print(dry_run.grid_text(config))
        if config.explain:
            print(dry_run.explain(config, "", None))
        return
    if config.distributed:
        # Before anything starts a backend. A dead process must fail the job, not be
        # retried in a child, so the processes measure in-process.
        distributed.initialize(
            config.coordinator_address,
            config.num_processes,
            config.process_id,
            config.distributed_timeout_s,
        )
        config = dataclasses.replace(config, isolate=False)
    # Only process 0 writes; a single process asks no backend (the measuring child does).
    writer = not config.distributed or distributed.is_writer()
    with sweep.hold_out_dir(config) if writer else contextlib.nullcontext() as lock:
        if F.recalibrate.value and writer:
            sweep.forget_calibration(config)  # once per job: restarted workers reuse it
        flagfile = sweep_flags.resolved_flagfile(F)
        if config.isolate:
            rc = isolation.run_supervised(config, flagfile, lock=lock)
        else:
            rc = sweep.run_job(config, flagfile)
        if rc:
            sys.exit(rc)
        if writer:
            print_results(config)


def print_results(config) -> None:
    """The summary table, the claims' lines and the plots, from the records written."""
    records = results.load(os.path.join(config.out_dir, results.RESULTS), warn=print)
    print(summary.table(records))
    lines = claims.sweep_lines(records)
    if lines:
        print("\n" + "\n".join(lines))
    if PLOT.value and any(r["status"] == "ok" for r in records):
        with files.writing(os.path.join(config.out_dir, results.PLOT)):
            print(f"plots: {', '.join(plotting.plot_dir(config.out_dir))}")
    print(f"results: {os.path.join(config.out_dir, results.RESULTS)}")


if __name__ == "__main__":
    cli.run(main)
