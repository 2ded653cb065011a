"""Writes one flat row per sweep point, for pandas and spreadsheets:

python -m experiments.export RESULTS_DIR [RESULTS_DIR ...] --format=csv --out=points.csv

A RESULTS_DIR may hold results.jsonl or directories that do (an experiments.reproduce
OUT_DIR, say). Columns are dotted record fields with units in their names
(`time.median_s`, `cost.flops`; batchlab.export lists them), in a stable order;
`pandas.read_csv("points.csv")` loads the file as it is. Without --out the rows go to
standard output.
"""

import sys

from absl import flags

from batchlab import export
from batchlab.errors import ConfigError
from experiments import cli

FORMAT = flags.DEFINE_enum("format", "csv", export.FORMATS, "csv, or jsonl (an object a line).")
OUT = flags.DEFINE_string("out", "", "The file to write; empty: standard output.")


def main(argv):
    if len(argv) < 2:
        raise ConfigError(
            "give one or more results directories: python -m experiments.export DIR --format=csv"
        )
    warn = lambda message: print(f"warning: {message}", file=sys.stderr)
    records = export.records_under(argv[1:], warn)
    if not any(r.get("kind", "sweep") == "sweep" for r in records):
        raise ConfigError(f"no sweep records under {' '.join(argv[1:])}")
    if not OUT.value:
        export.write(records, FORMAT.value, sys.stdout)
        return
    with open(OUT.value, "w", newline="") as f:
        n = export.write(records, FORMAT.value, f)
    print(f"{OUT.value}: {n} points", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, takes_args=True)
