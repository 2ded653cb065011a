"""Records as flat rows for pandas and spreadsheets: one row per sweep point, dotted
column names with units, a stable column order (experiments.export writes them).

A row is the record's nested fields joined by dots (`time.median_s`, `cost.flops`,
`params.width`), with these exceptions:
- the median's interval `time.ci95_s` is two columns, `time.ci95_lo_s` and `time.ci95_hi_s`;
- fields whose record name carries no unit get one (RENAMED: `ceilings.peak_flops_per_s`,
  `ceilings.bandwidth_bytes_per_s`, `cost.intensity_flops_per_byte`, ...);
- `device` is the record's device label (record.device_label), and of `provenance` only
  PROVENANCE is kept (the command line and the platform string are left out);
- each datasheet prediction gives `predicted.<device>.<dtype>.<precision>.lower_s` and
  `.regime`; `xla` (XLA's own analyses, whose keys vary by backend) is left out;
- MoE balance metrics (`metrics.balance`, one dict per MoE layer) give each scalar
  metric's mean over the layers as `metrics.balance.<name>` (one layer in moe_layer);
  per-expert lists are left out, and so is a failed point's traceback.
Times are in seconds, rates per second, sizes in bytes. Columns come in COLUMNS order
(the point's parameters, sorted, after `device`), then every other column sorted by
name, so the same records always give the same columns in the same order; a column a
record lacks is empty (None in JSON lines).
"""

import csv
import json
import math
import os
from collections.abc import Iterable

from batchlab import record, results

RENAMED = {
    "ceilings.peak_flops": "ceilings.peak_flops_per_s",
    "ceilings.bandwidth": "ceilings.bandwidth_bytes_per_s",
    "ceilings.interconnect": "ceilings.interconnect_bytes_per_s",
    "cost.intensity": "cost.intensity_flops_per_byte",
    "cost_per_device.intensity": "cost_per_device.intensity_flops_per_byte",
}
PROVENANCE = (
    "backend",
    "device_kind",
    "host",
    "device_count",
    "process_count",
    "jax",
    "jaxlib",
    "batchlab",
    "git_commit",
    "timestamp",
)
LEFT_OUT = ("xla", "predicted", "provenance", "metrics", "traceback", "shardings")
COLUMNS = (
    "id",
    "status",
    "model",
    "config_name",
    "batch",
    "dtype",
    "precision",
    "weight_copies",
    "device",  # the parameters come here
    "time.median_s",
    "time.ci95_lo_s",
    "time.ci95_hi_s",
    "time.p10_s",
    "time.p90_s",
    "time.p99_s",
    "time.min_s",
    "time.mean_s",
    "time.iqr_s",
    "time.spread",
    "time.count",
    "time.unstable",
    "time_per_example_s",
    "prediction.lower_s",
    "prediction.upper_s",
    "prediction.model_s",
    "prediction.model_error",
    "prediction.model_text",
    "prediction.model_source",
    "prediction.regime",
    "prediction.rel_error",
    "prediction.t_math_s",
    "prediction.t_mem_s",
    "prediction.t_overhead_s",
    "prediction.t_collective_s",
    "empty_call_s",
    "cost.flops",
    "cost.weight_bytes",
    "cost.activation_bytes",
    "cost.state_bytes",
    "cost.collective_bytes",
    "cost.total_bytes",
    "cost.intensity_flops_per_byte",
    "ceilings.peak_flops_per_s",
    "ceilings.bandwidth_bytes_per_s",
    "ceilings.interconnect_bytes_per_s",
    "ceilings.source",
    "ceilings.flops_kernel",
    "ceilings.bandwidth_kernel",
    "attained.flops_per_s",
    "attained.fraction_of_peak",
    "attained.bytes_per_s",
    "attained.fraction_of_bandwidth",
    "critical_batch.weights_only",
    "critical_batch.with_activations",
    "working_set.bytes",
    "working_set.fits_in",
    "compile.lower_s",
    "compile.compile_s",
    "failure",
    "error",
)
FORMATS = ("csv", "jsonl")


def records_under(paths: Iterable[str], warn=None) -> list[dict]:
    """Every usable record of every results.jsonl at or below `paths` (a results
    directory, or one that holds some: an experiments.reproduce OUT_DIR), the last of
    each point per file; a point found in two directories is kept once, the later
    path's (as the report keeps it). A bad line is skipped and `warn` told."""
    latest: dict[tuple, dict] = {}
    for path in paths:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            if results.RESULTS not in files:
                continue
            loaded = results.load(os.path.join(root, results.RESULTS), warn, complete=True)
            for r in results.latest_by_id(loaded).values():
                key = (
                    r.get("kind", record.SWEEP),
                    r.get("config_name", record.NO_CONFIG),
                    record.device_label(r),
                    r["id"],
                    r.get("dtype"),
                    r.get("precision"),
                    r.get("weight_copies", 1),
                )
                latest[key] = r
    return list(latest.values())


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        return  # per-expert loads, argv: not one cell
    else:
        out[RENAMED.get(prefix, prefix)] = value


def row(r: dict) -> dict:
    """One sweep record as a flat dict (module docstring), in no particular order."""
    out: dict = {}
    _flat("", {k: v for k, v in r.items() if k not in LEFT_OUT}, out)
    ci = (r.get("time") or {}).get("ci95_s")
    if ci is not None:
        out["time.ci95_lo_s"], out["time.ci95_hi_s"] = ci
    out["device"] = record.device_label(r)
    prov = r.get("provenance") or {}
    out |= {f"provenance.{k}": prov[k] for k in PROVENANCE if k in prov}
    for key, entry in (r.get("predicted") or {}).items():
        name = "predicted." + key.replace("|", ".")
        out[f"{name}.lower_s"] = entry["prediction"]["lower_s"]
        out[f"{name}.regime"] = entry["prediction"]["regime"]
    metrics = r.get("metrics") or {}
    _flat("metrics", {k: v for k, v in metrics.items() if k != "balance"}, out)
    layers = metrics.get("balance") or []
    scalar = [k for k, v in (layers[0] if layers else {}).items() if isinstance(v, (int, float))]
    for name in scalar:
        out[f"metrics.balance.{name}"] = sum(m[name] for m in layers) / len(layers)
    return out


def rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """(columns, one row per sweep point, ok or failed) in a stable order: points by
    device, config, model and id; columns as the module docstring says."""
    points = [r for r in records if r.get("kind", record.SWEEP) == record.SWEEP]
    points.sort(
        key=lambda r: (record.device_label(r), r.get("config_name", ""), r["model"], r["id"])
    )
    flat = [row(r) for r in points]
    present = {c for f in flat for c in f}
    known = [c for c in COLUMNS if c in present]
    params = sorted(c for c in present if c.startswith("params."))
    head, tail = known[: known.index("device") + 1], known[known.index("device") + 1 :]
    columns = head + params + tail + sorted(present - set(known) - set(params))
    return columns, [{c: f.get(c) for c in columns} for f in flat]


def csv_cell(value) -> str:
    """A value as a spreadsheet reads it: empty for None and NaN, repr for floats (which
    round-trips), True/False for booleans."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write(records: list[dict], fmt: str, out) -> int:
    """Writes the rows of `records` to the text file `out` as "csv" (a header line, then
    a line per point) or "jsonl" (an object per point, keys in column order); returns
    the number of rows."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: allowed are {', '.join(FORMATS)}")
    columns, flat = rows(records)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([csv_cell(f[c]) for c in columns] for f in flat)
    else:
        for f in flat:
            clean = {
                c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in f.items()
            }
            out.write(json.dumps(clean, allow_nan=False) + "\n")
    return len(flat)
