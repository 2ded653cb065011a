"""Markdown for the report: tables and the numbers in them."""

import os

from batchlab import roofline


def num(v) -> str:
    """A number in a table: 3 significant digits; None as "-"."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if v == float("inf") else f"{v:.3g}"
    return str(v)


def numbers(values) -> str:
    """A verdict's numbers, "name value, ..."."""
    return ", ".join(f"{k} {num(v)}" for k, v in values.items())


def table(head: list[str], rows: list[list]) -> str:
    """A GitHub table; a "|" in a cell is escaped."""

    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def rate(v: float, unit: str) -> str:
    """A rate in G or T units: 105 GFLOP/s, 3.35 TB/s."""
    return f"{v / 1e12:.3g} T{unit}" if v >= 1e12 else f"{v / 1e9:.3g} G{unit}"


def ceilings_text(c: roofline.Ceilings) -> str:
    """Peak and bandwidth, each with the kernel or source that set it."""
    return (
        f"{rate(c.peak_flops, 'FLOP/s')} ({c.flops_kernel or c.source}), "
        f"{rate(c.bandwidth, 'B/s')} ({c.bandwidth_kernel or c.source})"
    )


def rel(path: str, out_dir: str) -> str:
    """`path` as a link from a file in `out_dir`."""
    return os.path.relpath(path, out_dir).replace(os.sep, "/")
