"""The record: one JSON object per point in results.jsonl, and the one place that knows
its shape: the point id, the series key, the builders of measured, failed and predicted
records and of router training's records, the fields a reader may rely on, the device
label, and how schema 1 is read.

A record's `kind` says what made it: a sweep point (SWEEP), one round of a point measured
with --rounds (ROUND: the sweep combines a point's rounds into its SWEEP record), a
router-training step (TRAIN_STEP) or a trained router evaluated on fresh tokens
(ROUTER_EVAL). Its `origin`
says whether its time was measured or is a roofline prediction built by a reader
(`as_predicted`, `on_datasheet`); predicted records are never written to results files.
WORKSPACE.md lists every field.
"""

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from batchlab import hardware, roofline
from batchlab.cost import Cost
from batchlab.numerics import Numerics

SCHEMA_VERSION = 2
SWEEP, ROUND, TRAIN_STEP, ROUTER_EVAL = "sweep", "round", "train_step", "router_eval"
MEASURED, PREDICTED = "measured", "predicted"
NO_CONFIG = ""  # config_name of a sweep not started from a named (seed) flagfile


class MalformedRecord(ValueError):
    """A results line that is not a record this version can read."""


def point_id(model: str, point: Mapping, batch: int) -> str:
    """A stable, readable id: mlp/depth=8,input_width=0,width=1024/b=16."""
    params = ",".join(f"{k}={point[k]}" for k in sorted(point))
    return f"{model}/{params}/b={batch}"


# ---- what a series is ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class SeriesKey:
    """What the points of one curve share: everything but the swept axis (batch, say).

    Points of two configs or two devices never share a series, so an id measured by two
    seed configs stays two points.
    """

    model: str
    params: tuple[tuple[str, Any], ...]  # every parameter but the axis, sorted by name
    dtype: str
    precision: str
    config: str = NO_CONFIG
    device: str = ""
    weight_copies: int = 1

    @property
    def point(self) -> dict:
        return dict(self.params)

    def get(self, name: str, default=None):
        return self.point.get(name, default)

    @property
    def numerics(self) -> Numerics:
        return Numerics(self.dtype, self.precision)

    @property
    def label(self) -> str:
        """'mlp depth=8 input_width=0 width=1024 float32' (copies shown when > 1)."""
        words = [self.model, *(f"{k}={v}" for k, v in self.params), self.dtype]
        return " ".join(
            words + ([f"copies={self.weight_copies}"] if self.weight_copies > 1 else [])
        )


def x_value(record: dict, x: str = "batch"):
    """The record's value on axis `x`: "batch" or a family parameter."""
    return record["batch"] if x == "batch" else record["params"][x]


def series_key(record: dict, x: str = "batch") -> SeriesKey:
    """The series `record` belongs to along axis `x`; off the batch axis the batch is a
    parameter of the series."""
    params = {k: v for k, v in record["params"].items() if k != x}
    if x != "batch":
        params["batch"] = record["batch"]
    return SeriesKey(
        record["model"],
        tuple(sorted(params.items())),
        record["dtype"],
        record["precision"],
        record.get("config_name", NO_CONFIG),
        device_label(record),
        record.get("weight_copies", 1),
    )


def device_label(record: dict) -> str:
    """The device of a record: jax's device kind, with the host for a CPU (every CPU's
    device kind is just "cpu")."""
    prov = record.get("provenance") or {}
    kind = prov.get("device_kind") or prov.get("backend") or "unknown device"
    return f"cpu ({prov['host']})" if kind == "cpu" and prov.get("host") else kind


def backend(record: dict) -> str:
    """ "cpu", "gpu", "tpu", or "unknown"."""
    prov = record.get("provenance") or {}
    return prov.get("backend") or ("cpu" if prov.get("device_kind") == "cpu" else "unknown")


def b_star(record: dict, with_activations: bool = True) -> float | None:
    """The stored critical batch of the record's series on its ceilings; None: never
    compute-bound, or not known (has_b_star says which)."""
    return (record.get("critical_batch") or {}).get(
        "with_activations" if with_activations else "weights_only"
    )


def has_b_star(record: dict) -> bool:
    return "with_activations" in (record.get("critical_batch") or {})


def is_predicted(record: dict) -> bool:
    return record.get("origin") == PREDICTED


def is_point(record: dict) -> bool:
    """A successful sweep point: what series, plots and most claims read."""
    return record.get("kind", SWEEP) == SWEEP and record.get("status") == "ok"


# ---- building records (the sweep) --------------------------------------------------------


def base(
    *,
    pid: str,
    model: str,
    params: Mapping,
    batch: int,
    numerics: Numerics,
    weight_copies: int,
    fingerprint: str,
    config_name: str,
    provenance: dict,
) -> dict:
    """The fields every sweep record has, ok or failed."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": SWEEP,
        "origin": MEASURED,
        "id": pid,
        "model": model,
        "params": dict(params),
        "batch": batch,
        "dtype": numerics.dtype,
        "precision": numerics.precision,
        "weight_copies": weight_copies,
        "fingerprint": fingerprint,
        "config_name": config_name,
        "provenance": provenance,
    }


def _trained(kind: str, pid: str, method: str, config_name: str, provenance: dict) -> dict:
    """The fields every record of router training has (batchlab.train)."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "origin": MEASURED,
        "id": pid,
        "status": "ok",
        "config_name": config_name,
        "provenance": provenance,
        "method": method,
    }


def train_step(
    *, method: str, step: int, metrics: dict, config_name: str, provenance: dict
) -> dict:
    """One training step of one balancing method: its losses and balance metrics."""
    out = _trained(TRAIN_STEP, f"{method}/{step}", method, config_name, provenance)
    return out | {"step": step, "metrics": metrics}


def router_eval(
    *,
    method: str,
    step: int,
    tokens: int,
    params: Mapping,
    metrics: dict,
    config_name: str,
    provenance: dict,
) -> dict:
    """A trained router (after `step` steps) evaluated on `tokens` fresh tokens as one
    routing group: the balance metrics of that routing (batchlab.moe.balance), and the
    layer's shape in `params` (experts, top_k, ...)."""
    out = _trained(ROUTER_EVAL, f"{method}/eval", method, config_name, provenance)
    return out | {"step": step, "tokens": tokens, "params": dict(params), "metrics": metrics}


def failed(base_fields: dict, failure: str, error: str, traceback: str | None = None) -> dict:
    """A point that failed: `failure` is "error", "oom" or "crash"; `error` one line."""
    out = base_fields | {"status": "failed", "failure": failure, "error": error}
    return out | ({"traceback": traceback} if traceback else {})


def critical_batches(cost_at: Callable[[int], Cost], ceilings: roofline.Ceilings) -> dict:
    """b* with weights only and with activations (REFERENCE 2.2); None means never."""
    return {
        "weights_only": roofline.critical_batch(cost_at, ceilings, with_activations=False),
        "with_activations": roofline.critical_batch(cost_at, ceilings, with_activations=True),
    }


def target_key(device_key: str, numerics: Numerics) -> str:
    """The key of a datasheet prediction in a record: "t4|float16|default"."""
    return f"{device_key}|{numerics.dtype}|{numerics.precision}"


def prediction_entry(
    device_name: str,
    device_backend: str,
    numerics: Numerics,
    cost: Cost,
    ceilings: roofline.Ceilings,
    critical: dict,
    fits_in: str,
) -> dict:
    """What the roofline predicts for this point on a datasheet device (no overhead roof:
    a datasheet gives none), stored so readers need no cost model. `fits_in`: the cache
    level of that device the working set fits in (REFERENCE 2.9)."""
    pred = roofline.predict(cost, ceilings)
    return {
        "device_kind": device_name,
        "backend": device_backend,
        "dtype": numerics.dtype,
        "precision": numerics.precision,
        "cost": cost.as_dict(),
        "ceilings": ceilings.as_dict(),
        "prediction": pred.as_dict(),
        "critical_batch": critical,
        "fits_in": fits_in,
    }


def attained(cost: Mapping, seconds: float, ceilings: Mapping) -> dict:
    """Rates a time implies: FLOP/s and B/s, their fractions of the ceilings, and which
    ceilings the point exceeds (a ceiling is never below what a point attains: one that
    is, was measured too low)."""
    flops, moved = cost["flops"], cost["total_bytes"]
    peak = flops / seconds / ceilings["peak_flops"]
    bandwidth = moved / seconds / ceilings["bandwidth"]
    return {
        "flops_per_s": flops / seconds,
        "fraction_of_peak": peak,
        "bytes_per_s": moved / seconds,
        "fraction_of_bandwidth": bandwidth,
        "above_ceiling": [n for n, f in (("peak", peak), ("bandwidth", bandwidth)) if f > 1 + 1e-9],
    }


def measured(
    base_fields: dict,
    *,
    time: dict,
    compile_info: dict,
    cost: Cost,
    device_cost: Cost,
    xla: dict,
    ceilings: roofline.Ceilings,
    empty_call_s: float,
    prediction: roofline.Prediction,
    model: dict,
    critical_batch: dict,
    predicted: dict,
    working_set: dict,
    extra: dict,
) -> dict:
    """A measured point. `cost` is the whole call's; `device_cost` what the roofline and
    the attained rates judge (one device's share under a mesh, else the same); `extra`
    holds the family's metrics, the mesh layout and the kernels, as they come; `model`
    the per-kernel model's fields of the prediction ({} without a profile)."""
    median = time["median_s"]
    return (
        base_fields
        | {
            "status": "ok",
            "time": time,
            "time_per_example_s": median / base_fields["batch"],
            "compile": compile_info,
            "cost": cost.as_dict(),
            "xla": xla,
            "ceilings": ceilings.as_dict(),
            "empty_call_s": empty_call_s,
            "prediction": prediction.as_dict()
            | {"rel_error": median / prediction.lower_s - 1}
            | model,
            "attained": attained(device_cost.as_dict(), median, ceilings.as_dict()),
            "working_set": working_set,
            "critical_batch": critical_batch,
            "predicted": predicted,
        }
        | extra
    )


# ---- rounds (--rounds) -------------------------------------------------------------------


def round_id(pid: str, r: int) -> str:
    """The id of round `r` of point `pid` (its own id, so the duplicate rule keeps each)."""
    return f"{pid}#round{r}"


def as_round(rec: dict, r: int, rounds: int) -> dict:
    """A measured point's record as round `r` of `rounds`."""
    return (
        rec
        | {"kind": ROUND, "id": round_id(rec["id"], r), "point_id": rec["id"]}
        | {
            "round": r,
            "rounds": rounds,
        }
    )


def combine_rounds(rounds: list[dict]) -> dict:
    """A point's SWEEP record from its ROUND records: the median of the rounds' medians,
    each round's median, the spread between rounds against the spread within them, and
    a 95% interval that holds every round's (between-round shifts are part of the
    uncertainty). The rest (compile, kernels, predictions) is the last round's."""
    rounds = sorted(rounds, key=lambda r: r["round"])
    last, times = rounds[-1], [r["time"] for r in rounds]
    medians = [t["median_s"] for t in times]
    median = _median(medians)
    within = _median([t["spread"] for t in times])
    between = (max(medians) - min(medians)) / median
    time = dict(last["time"]) | {
        "median_s": median,
        "min_s": min(t["min_s"] for t in times),
        "mean_s": sum(t["mean_s"] for t in times) / len(times),
        "iqr_s": _median([t["iqr_s"] for t in times]),
        "count": sum(t["count"] for t in times),
        "spread": within,
        "unstable": any(t["unstable"] for t in times),
        "rounds": len(rounds),
        "round_medians_s": medians,
        "between_round_spread": between,
        "rounds_disagree": between > within,
    }
    for q in ("p10_s", "p90_s", "p99_s"):
        if all(q in t for t in times):
            time[q] = _median([t[q] for t in times])
    if all("ci95_s" in t for t in times):
        time["ci95_s"] = [min(t["ci95_s"][0] for t in times), max(t["ci95_s"][1] for t in times)]
    out = {k: v for k, v in last.items() if k not in ("round", "rounds", "point_id")}
    out |= {"kind": SWEEP, "id": last["point_id"], "time": time}
    out["time_per_example_s"] = median / last["batch"]
    p = dict(last["prediction"], rel_error=median / last["prediction"]["lower_s"] - 1)
    if p.get("model_s"):
        p["model_error"] = median / p["model_s"] - 1
    out["prediction"] = p
    out["attained"] = attained(
        last.get("cost_per_device") or last["cost"], median, last["ceilings"]
    )
    return out


def _median(values) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


# ---- predicted records (readers) ---------------------------------------------------------


def _timed(seconds: float) -> dict:
    return {
        "median_s": seconds,
        "min_s": seconds,
        "mean_s": seconds,
        "iqr_s": 0.0,
        "count": 1,
        "spread": 0.0,
        "unstable": False,
    }


def _predicted(r: dict, seconds: float, **fields) -> dict:
    out = r | fields | {"origin": PREDICTED, "time": _timed(seconds)}
    out["time_per_example_s"] = seconds / r["batch"]
    out["attained"] = attained(out["cost"], seconds, out["ceilings"])
    out["prediction"] = dict(out["prediction"], rel_error=0.0)
    return out


ROOFLINE, MODEL = "roofline", "model"  # who predicts: the lower bound, the per-kernel model


def _predicted_s(prediction: dict, by: str) -> float | None:
    """The predicted seconds `by` the roofline (its lower bound) or the model (None when
    the point stored no model prediction)."""
    return prediction["lower_s"] if by == ROOFLINE else prediction.get("model_s")


def as_predicted(r: dict, by: str = ROOFLINE) -> dict | None:
    """`r` with its time replaced by what the roofline (its lower bound, with the
    empty-call floor) or the per-kernel model expected on the device that measured it;
    None when `by` stored nothing for it."""
    seconds = _predicted_s(r["prediction"], by)
    return None if seconds is None else _predicted(r, seconds)


def on_datasheet(r: dict, key: str, by: str = ROOFLINE) -> dict | None:
    """`r` as the roofline or the model predicts it on the datasheet target `key`
    ("t4|float16|default"), from the prediction stored at sweep time; None when none was
    stored."""
    entry = (r.get("predicted") or {}).get(key)
    seconds = entry and _predicted_s(entry["prediction"], by)
    if seconds is None:
        return None
    prov = {"backend": entry["backend"], "device_kind": entry["device_kind"], "host": "datasheet"}
    return _predicted(
        r,
        seconds,
        dtype=entry["dtype"],
        precision=entry["precision"],
        cost=entry["cost"],
        ceilings=entry["ceilings"],
        prediction=entry["prediction"],
        critical_batch=entry["critical_batch"],
        empty_call_s=0.0,
        provenance=prov,
        predicted={},
        working_set=dict(r.get("working_set") or {}, fits_in=entry.get("fits_in", "?")),
    )


# ---- reading -----------------------------------------------------------------------------

# What a reader may rely on in a successful sweep record; one without them is skipped.
REQUIRED = {
    "model": str,
    "params": dict,
    "batch": int,
    "dtype": str,
    "precision": str,
    "time": dict,
    "time_per_example_s": (int, float),
    "cost": dict,
    "ceilings": dict,
    "prediction": dict,
    "provenance": dict,
}
REQUIRED_FAILED = {"model": str, "params": dict, "batch": int}
# Fields readers use when a record has them (keys, labels, provenance).
OPTIONAL = {
    "kind": str,
    "config_name": str,
    "dtype": str,
    "precision": str,
    "weight_copies": int,
    "provenance": dict,
    "failure": str,
    "error": str,
}
# Numbers inside them that every reader computes with.
NUMBERS = {
    "prediction": ("lower_s",),
    "cost": ("flops", "total_bytes"),
    "ceilings": ("peak_flops", "bandwidth"),
}
REQUIRED_BY_KIND = {
    ROUND: REQUIRED | {"round": int, "rounds": int, "point_id": str},
    TRAIN_STEP: {"method": str, "step": int, "metrics": dict, "provenance": dict},
    ROUTER_EVAL: {
        "method": str,
        "tokens": int,
        "params": dict,
        "metrics": dict,
        "provenance": dict,
    },
}


def parse(line: str) -> dict:
    """One results line as a record, or MalformedRecord saying what is wrong."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise MalformedRecord(f"not valid JSON ({why})") from None
    if not isinstance(record, dict):
        raise MalformedRecord(f"not a batchlab record (a JSON {type(record).__name__})")
    if not isinstance(record.get("id"), str) or record.get("status") not in ("ok", "failed"):
        raise MalformedRecord("not a batchlab record (no id, or no status ok or failed)")
    schema = record.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise MalformedRecord(f"schema {schema!r} is newer than {SCHEMA_VERSION}")
    return record


def problem(record: dict) -> str | None:
    """What makes a parsed record unusable for readers, or None."""
    kind = record.get("kind", SWEEP)
    if not isinstance(kind, str):
        return f"record {record['id']} has an invalid 'kind'"
    if kind in REQUIRED_BY_KIND:
        needed = REQUIRED_BY_KIND[kind]
    elif kind != SWEEP:
        return f"record {record['id']}: unknown kind {kind!r}"
    else:
        needed = REQUIRED if record["status"] == "ok" else REQUIRED_FAILED
    for name, types in needed.items():
        if not isinstance(record.get(name), types) or isinstance(record.get(name), bool):
            return f"record {record['id']} has no valid {name!r}"
    for name, types in OPTIONAL.items():
        if name in record and not isinstance(record[name], types):
            return f"record {record['id']} has an invalid {name!r}"
    if kind == SWEEP and record["status"] == "ok":
        t = record["time"].get("median_s")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            return f"record {record['id']} has no positive time.median_s"
        for part, names in NUMBERS.items():
            for name in names:
                v = record[part].get(name)
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    return f"record {record['id']} has no number {part}.{name}"
    return None


def supersedes(new: dict, old: dict | None) -> bool:
    """The rule for two records of one point id, `new` read after `old`: the later wins,
    except that a failed record never replaces an ok one. A sweep never measures again a
    point that has an ok record, so a failure after it is a crash recorded for a worker
    killed just after it wrote the point (or a copy merged from elsewhere), not news."""
    return old is None or new["status"] == "ok" or old["status"] != "ok"


def latest(records) -> dict[str, dict]:
    """One record per point id, by `supersedes`, in the order the ids first appear."""
    out: dict[str, dict] = {}
    for r in records:
        if supersedes(r, out.get(r["id"])):
            out[r["id"]] = r
    return out


def upgrade_v1(records: list[dict], config_name: str, targets: list[tuple[str, Any]]) -> None:
    """Fills, in place, what schema 2 stores and schema 1 records lack, from their own
    stored fields (no cost model is run): kind, origin and config_name; each series'
    critical batches from its stored costs (roofline.critical_batch_from_costs: exact
    when the cost is affine in the batch); and the datasheet predictions of `targets`
    ((device key, DeviceSpec) pairs) in each record's own numerics."""
    old = [r for r in records if r.get("schema", 1) == 1]
    for r in old:
        r |= {"kind": SWEEP, "origin": MEASURED, "config_name": config_name, "upgraded_from": 1}
    groups: dict[SeriesKey, list[dict]] = {}
    for r in old:
        if r["status"] == "ok":
            groups.setdefault(series_key(r), []).append(r)
    for points in groups.values():
        points.sort(key=lambda r: r["batch"])
        batches = [r["batch"] for r in points]
        costs = [Cost.from_dict(r["cost"]) for r in points]
        numerics = Numerics(points[0]["dtype"], points[0]["precision"])
        own = _derived_b_star(batches, costs, roofline.Ceilings(**points[-1]["ceilings"]))
        sheet = {}
        for key, spec in targets:
            ceilings = hardware.datasheet_ceilings(spec, numerics)
            crit = _derived_b_star(batches, costs, ceilings)
            sheet[target_key(key, numerics)] = (spec, ceilings, crit)
        for r, cost in zip(points, costs):
            if own is not None:
                r["critical_batch"] = own
            r["predicted"] = {
                k: prediction_entry(
                    spec.name, spec.kind, numerics, cost, c, crit or {}, _fits(r, spec)
                )
                for k, (spec, c, crit) in sheet.items()
            }


def _fits(r: dict, spec) -> str:
    """The cache level of a datasheet device that r's working set fits in."""
    ws = (r.get("working_set") or {}).get("bytes", r["cost"]["total_bytes"])
    return hardware.fits_in(ws, hardware.cache_levels(spec.kind, spec))


def _derived_b_star(batches, costs, ceilings) -> dict | None:
    """critical_batches from costs stored at `batches`; None below two batches."""
    if len(batches) < 2:
        return None
    return {
        "weights_only": roofline.critical_batch_from_costs(batches, costs, ceilings, False),
        "with_activations": roofline.critical_batch_from_costs(batches, costs, ceilings, True),
    }


def as_predicted_all(records: list[dict], by: str = ROOFLINE) -> list[dict]:
    """Every successful point, as_predicted `by` the roofline or the model (points that
    stored no model prediction are left out)."""
    out = (as_predicted(r, by) for r in records if is_point(r))
    return [r for r in out if r is not None]


def on_datasheet_all(records: list[dict], key: str, by: str = ROOFLINE) -> list[dict]:
    """Every successful point predicted on target `key`; points that stored none are left
    out."""
    out = (on_datasheet(r, key, by) for r in records if is_point(r))
    return [r for r in out if r is not None]


def targets(records: list[dict]) -> list[str]:
    """The datasheet targets the records carry predictions for, in datasheet order."""
    found = {k for r in records if is_point(r) for k in (r.get("predicted") or {})}
    order = {key: i for i, key in enumerate(hardware.DATASHEET)}
    return sorted(found, key=lambda k: (order.get(k.split("|")[0], len(order)), k))


def target_label(key: str, measured_dtypes) -> str:
    """'NVIDIA T4', or 'NVIDIA T4 (float16)' when the dtype is not one that was measured."""
    device, dtype, _ = key.split("|")
    name = hardware.DATASHEET[device].name if device in hardware.DATASHEET else device
    return name if dtype in measured_dtypes else f"{name} ({dtype})"
