"""The serving view of results: per series, throughput and latency at each batch, and
the batch that serves the most under a latency target, measured and predicted.

python -m experiments.serve RESULTS_DIR [RESULTS_DIR ...] [--slo_ms=50] [--plot=serving.png]

A RESULTS_DIR may hold results.jsonl or directories that do (an experiments.reproduce
OUT_DIR, say). The target is checked against each batch's p99 when the records hold one,
else its median (batchlab.serving says which). --plot writes the throughput-latency plot:
the Pareto curve of each series, its points labelled with their batch.
"""

import sys

from absl import flags

from batchlab import export, serving
from batchlab.errors import ConfigError
from experiments import cli

SLO_MS = flags.DEFINE_float(
    "slo_ms", None, "Latency target per call in ms (TPOT for decode, TTFT for prefill)."
)
PLOT = flags.DEFINE_string("plot", "", "Where to write the throughput-latency plot; empty: none.")


def main(argv):
    if len(argv) < 2:
        raise ConfigError("give one or more results directories: python -m experiments.serve DIR")
    if SLO_MS.value is not None and SLO_MS.value <= 0:
        raise ConfigError(f"--slo_ms={SLO_MS.value}: must be > 0")
    warn = lambda message: print(f"warning: {message}", file=sys.stderr)
    records = export.records_under(argv[1:], warn)
    slo_s = None if SLO_MS.value is None else SLO_MS.value / 1e3
    if not serving.series(records):
        raise ConfigError(f"no successful sweep points under {' '.join(argv[1:])}")
    print(serving.text(records, slo_s))
    if PLOT.value:
        print(f"plot: {serving.plot(records, PLOT.value, slo_s)}")


if __name__ == "__main__":
    cli.run(main, takes_args=True)
