"""How far the per-kernel model and the roofline lower bound are from the measurements,
per family and device and overall, from results directories alone (their stored
predictions).

  python benchmarks/prediction.py results/repro_cpu_quick [DIR ...]

For each family: points, then for the model (prediction.model_s) and the roofline lower
bound (prediction.lower_s) the median and p90 of |measured / predicted - 1| and the
fractions within 10% and 20% (a markdown table, as the report shows it). The model's
profile is measured on microbenchmarks when the sweep starts, never fitted on these
points.
"""

import sys

from batchlab.report import measured, sources


def main(paths: list[str]) -> None:
    read = sources.read(paths, lambda m: print(f"warning: {m}", file=sys.stderr))
    table = measured.model_error_table(read.records())
    if not table:
        sys.exit("error: no points with a per-kernel model prediction (prediction.model_s) found")
    print(table)


if __name__ == "__main__":
    if not sys.argv[1:]:
        sys.exit("usage: python benchmarks/prediction.py RESULTS_DIR [RESULTS_DIR ...]")
    main(sys.argv[1:])
