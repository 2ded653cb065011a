"""How far the per-kernel model and the roofline lower bound are from the measurements,
per family and overall, from results directories alone (their stored predictions).

  python benchmarks/prediction.py results/repro_cpu_quick [DIR ...] [--markdown]

For each family: points, then for the model (prediction.model_s) and the roofline lower
bound (prediction.lower_s) the median and p90 of |measured / predicted - 1| and the
fractions within 10% and 20%. The model's profile is measured on microbenchmarks when
the sweep starts, never fitted on these points.
"""

import sys
from collections import defaultdict

import numpy as np

from batchlab import record
from batchlab.report import sources


def errors(records: list[dict]) -> dict[str, dict[str, list[float]]]:
    """family -> {"model": [...], "roofline": [...]} of |measured/predicted - 1|."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"model": [], "roofline": []})
    for r in records:
        if not record.is_point(r):
            continue
        t, p = r["time"]["median_s"], r["prediction"]
        if p.get("model_s"):
            out[r["model"]]["model"].append(abs(t / p["model_s"] - 1))
            out[r["model"]]["roofline"].append(abs(t / p["lower_s"] - 1))
    return dict(out)


def stats(values: list[float]) -> tuple:
    a = np.asarray(values)
    if not a.size:
        return (0, None, None, None, None)
    return (a.size, np.median(a), np.percentile(a, 90), np.mean(a <= 0.1), np.mean(a <= 0.2))


def table(by_family: dict) -> str:
    head = (
        "| family | points | model median | model p90 | model <=10% | model <=20% | "
        "roofline median | roofline p90 | roofline <=10% | roofline <=20% |"
    )
    lines = [head, "|" + "---|" * 10]
    every = {"model": [], "roofline": []}
    for family, e in sorted(by_family.items()):
        every["model"] += e["model"]
        every["roofline"] += e["roofline"]
        lines.append(_row(family, e))
    lines.append(_row("**all**", every))
    return "\n".join(lines)


def _row(name: str, e: dict) -> str:
    n, *m = stats(e["model"])
    _, *r = stats(e["roofline"])

    def f(v, pct=False):
        return "-" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:.3f}")

    cells = [f(m[0]), f(m[1]), f(m[2], True), f(m[3], True), f(r[0]), f(r[1]), f(r[2], True), f(r[3], True)]
    return f"| {name} | {n} | " + " | ".join(cells) + " |"


def main(paths: list[str]) -> None:
    read = sources.read(paths, lambda m: print(f"warning: {m}", file=sys.stderr))
    by_family = errors(read.records())
    if not by_family:
        sys.exit("error: no points with a per-kernel model prediction (prediction.model_s) found")
    print(table(by_family))


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--")])
