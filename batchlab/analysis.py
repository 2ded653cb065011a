"""Numbers drawn from a sweep's records: series, the measured knee, predicted b*."""

import dataclasses
import math
from collections import defaultdict

import numpy as np

from batchlab import roofline, workloads
from batchlab.numerics import Numerics


@dataclasses.dataclass(frozen=True)
class Knee:
    """The batch where time turns from flat to linear, fitted in log-log space."""

    batch: float
    note: str  # "", "below the smallest batch" or "not reached by the largest batch"
    rms_log_error: float


def fit_knee(batches, times) -> Knee | None:
    """Least-squares fit of log t = a + max(0, log b − log k): flat, then slope 1.

    This is the roofline's own shape (REFERENCE 2.1, lower bound), so the fitted k is the
    measured counterpart of the predicted critical batch. Needs three points or more.
    """
    if len(batches) < 3:
        return None
    x, y = np.log2(np.asarray(batches, float)), np.log(np.asarray(times, float))
    candidates = np.linspace(x.min() - 1, x.max() + 1, 2001)
    ramp = np.maximum(0.0, x[None, :] - candidates[:, None]) * math.log(2)
    a = (y[None, :] - ramp).mean(axis=1)
    sse = ((y[None, :] - a[:, None] - ramp) ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    k = candidates[best]
    note = ""
    if k <= x.min():
        note = "below the smallest batch"
    elif k >= x.max():
        note = "not reached by the largest batch"
    return Knee(float(2**k), note, float(math.sqrt(sse[best] / len(x))))


def x_value(record: dict, x: str):
    """The record's value on axis `x`: "batch" or a family parameter."""
    return record["batch"] if x == "batch" else record["params"][x]


def series(records: list[dict], x: str = "batch") -> dict[tuple, list[dict]]:
    """Successful records grouped by everything but axis `x`, each sorted along `x`.

    The key is (model, params without x, dtype, precision); when x is not the batch,
    the batch joins the params as ("batch", b).
    """
    groups = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            params = {k: v for k, v in r["params"].items() if k != x}
            if x != "batch":
                params["batch"] = r["batch"]
            key = (r["model"], tuple(sorted(params.items())), r["dtype"], r["precision"])
            groups[key].append(r)
    return {k: sorted(v, key=lambda r: x_value(r, x)) for k, v in groups.items()}


def series_label(key: tuple) -> str:
    model, params, dtype, _ = key
    return f"{model} " + " ".join(f"{k}={v}" for k, v in params) + f" {dtype}"


def predicted_critical_batch(
    key: tuple, ceilings: roofline.Ceilings, with_activations: bool
) -> float | None:
    """b* for a series from its family's analytic cost (REFERENCE 2.2)."""
    model, params, dtype, precision = key
    family = workloads.get(model)
    numerics = Numerics(dtype, precision)
    return roofline.critical_batch(
        lambda b: family.cost(dict(params), b, numerics), ceilings, with_activations
    )


def median_abs_rel_error(records: list[dict]) -> float | None:
    """Median |measured / predicted − 1| over successful points."""
    errs = [abs(r["prediction"]["rel_error"]) for r in records if r.get("status") == "ok"]
    return float(np.median(errs)) if errs else None
