"""Flat rows for pandas and spreadsheets: one per point, dotted columns with units, a
stable order, loaded back as they are (pandas when installed, else the csv module)."""

import csv
import io
import json
import os

import numpy as np
import pytest
from conftest import run_cli, synthetic
from test_plots import CPU

from batchlab import export, record, results, timing
from batchlab.numerics import Numerics

MLP = {"depth": 2, "width": 32, "input_width": 0}


def points() -> list[dict]:
    """Two timed MLP points (with the new statistics), one failed point, one MoE point."""
    prov, ceilings = CPU
    out = []
    for b in (1, 8):
        r = synthetic("mlp", MLP, b, Numerics(), ceilings, 1e-3 * b, prov, "mlp", ("t4",))
        samples = np.random.default_rng(b).normal(1e-3 * b, 5e-5 * b, 100)
        out.append(r | {"time": timing.summarize(samples, 0.05).as_dict()})
    failed = record.failed(
        {k: out[0][k] for k in ("schema", "kind", "origin", "model", "params", "dtype")}
        | {"id": "mlp/x/b=64", "batch": 64, "precision": "default", "provenance": prov},
        "oom",
        "out of memory, 12 GB asked",
    )
    moe_point = _moe_defaults() | {"width": 16, "ffn": 16}
    moe = synthetic("moe_layer", moe_point, 4, Numerics(), ceilings, 2e-3, prov)
    layer = {"cv": 0.5, "max_vio": 1.0, "load_before": [3, 1, 2, 2]}
    moe["metrics"] = {"tokens": 4, "dispatch": {"chosen": "slots"}, "balance": [layer]}
    return out + [failed, moe]


def _moe_defaults() -> dict:
    from batchlab.workloads import moe as wl

    return {p.name: p.default[0] for p in wl.LAYER.params}


def load_csv(text: str):
    """(columns, rows as dicts of strings, or pandas' frame when pandas is installed)."""
    try:
        import pandas
    except ImportError:
        reader = csv.DictReader(io.StringIO(text))
        return reader.fieldnames, list(reader), None
    frame = pandas.read_csv(io.StringIO(text))
    return list(frame.columns), None, frame


def test_a_row_per_point_with_dotted_columns_and_units():
    recs = points()
    out = io.StringIO()
    assert export.write(recs, "csv", out) == 4
    columns, rows, frame = load_csv(out.getvalue())
    assert columns[:9] == list(export.COLUMNS[:9])  # id ... device
    names = sorted({f"params.{k}" for r in recs for k in r["params"]})
    assert columns[9 : 9 + len(names)] == names  # every family's parameters, sorted
    for name in ("time.median_s", "time.ci95_lo_s", "time.ci95_hi_s", "time.p99_s", "cost.flops"):
        assert name in columns
    assert "ceilings.peak_flops_per_s" in columns and "ceilings.peak_flops" not in columns
    assert "predicted.t4.float32.default.lower_s" in columns
    assert "metrics.balance.cv" in columns and "metrics.dispatch.chosen" in columns
    assert not any(c.startswith(("xla", "provenance.argv")) for c in columns)
    ok = recs[0]
    if frame is not None:
        first = frame[frame["id"] == ok["id"]].iloc[0]
        assert first["time.median_s"] == ok["time"]["median_s"]
        assert first["time.ci95_lo_s"] == ok["time"]["ci95_s"][0]
        assert bool(first["time.unstable"]) is ok["time"]["unstable"]
        assert frame[frame["status"] == "failed"]["time.median_s"].isna().all()
    else:
        first = next(r for r in rows if r["id"] == ok["id"])
        assert float(first["time.median_s"]) == ok["time"]["median_s"]  # repr round-trips
        assert float(first["time.ci95_lo_s"]) == ok["time"]["ci95_s"][0]
        assert first["time.unstable"] == str(ok["time"]["unstable"])
        failed = next(r for r in rows if r["status"] == "failed")
        assert failed["time.median_s"] == "" and failed["error"] == "out of memory, 12 GB asked"


def test_the_column_order_is_stable_and_jsonl_carries_the_same_rows():
    recs = points()
    a, b = io.StringIO(), io.StringIO()
    export.write(recs, "csv", a)
    export.write(list(reversed(recs)), "csv", b)
    assert a.getvalue() == b.getvalue()
    lines = io.StringIO()
    export.write(recs, "jsonl", lines)
    objs = [json.loads(line) for line in lines.getvalue().splitlines()]
    columns, _ = export.rows(recs)
    assert all(list(o) == columns for o in objs)
    assert objs[0]["time.median_s"] == export.rows(recs)[1][0]["time.median_s"]
    with pytest.raises(ValueError, match="format 'xls'"):
        export.write(recs, "xls", io.StringIO())


def _write_dir(path, recs) -> None:
    os.makedirs(path)
    for r in recs:
        results.append(os.path.join(path, results.RESULTS), r)


def test_the_script_reads_nested_directories_and_keeps_each_point_once(tmp_path):
    recs = points()
    _write_dir(tmp_path / "repro" / "a", recs[:2])
    later = dict(recs[1], time=dict(recs[1]["time"], median_s=9.0))
    _write_dir(tmp_path / "repro" / "b", [later, recs[3]])
    assert len(export.records_under([str(tmp_path / "repro")])) == 3
    out = tmp_path / "points.csv"
    proc = run_cli(str(tmp_path / "repro"), f"--out={out}", module="experiments.export")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"{out}: 3 points"
    _, rows, frame = load_csv(out.read_text())
    medians = (
        list(frame["time.median_s"])
        if frame is not None
        else [float(r["time.median_s"]) for r in rows]
    )
    assert 9.0 in medians and recs[1]["time"]["median_s"] not in medians
    empty = run_cli(str(tmp_path / "nothing"), module="experiments.export")
    assert empty.returncode == 2 and empty.stderr.startswith("error: no sweep records under")
