"""Builds the reproduction report from existing results directories, of any devices:

python -m experiments.report RESULTS_DIR [RESULTS_DIR ...] --out_dir=runs/report

A RESULTS_DIR may hold results.jsonl or directories that do (an experiments.reproduce
OUT_DIR, say); a run on a CPU, one on a GPU and one on a TPU go side by side.
"""

import sys

from absl import flags

from batchlab import report
from batchlab.errors import ConfigError
from experiments import cli

OUT_DIR = flags.DEFINE_string("out_dir", "runs/report", "Where REPORT.md and its plots go.")
PREDICT_FOR = flags.DEFINE_list(
    "predict_for", list(report.PREDICT_FOR), "Datasheet devices to predict for."
)


def main(argv):
    if len(argv) < 2:
        raise ConfigError("give one or more results directories: python -m experiments.report DIR")
    path = report.build(
        report.ReportConfig(
            paths=tuple(argv[1:]),
            out_dir=OUT_DIR.value,
            predict_for=tuple(PREDICT_FOR.value),
            command="python -m experiments.report " + " ".join(sys.argv[1:]),
        ),
        warn=lambda message: print(f"warning: {message}", file=sys.stderr),
    )
    print(f"report: {path}")


if __name__ == "__main__":
    cli.run(main, takes_args=True)
