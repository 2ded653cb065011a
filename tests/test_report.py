"""The reproduction report: verdicts computed from the data, two devices in one report,
bad results lines named, the reproduce plan; from records made here, no real sweeps."""

import dataclasses
import json
import os

import pytest
from conftest import run_cli

from batchlab import claims, plotting, report, reproduce, roofline, sources, workloads
from batchlab import verdicts as vd
from batchlab.numerics import Numerics

CPU = {"backend": "cpu", "device_kind": "cpu", "host": "fixture-cpu", "jax": "0.10.2"}
T4 = {"backend": "gpu", "device_kind": "Tesla T4", "host": "fixture-gpu", "jax": "0.10.2"}
CPU_CEILINGS = roofline.Ceilings(100e9, 20e9, "calibrated", "matmul", "matvec")  # R = 5
T4_CEILINGS = roofline.Ceilings(8.1e12, 320e9, "datasheet", "fp32 cores", "datasheet")
MS = 1e-3


def point(model: str, **overrides) -> dict:
    """The family's default point with `overrides`."""
    return {p.name: p.default[0] for p in workloads.get(model).params} | overrides


def records(model, time_of, batches, grid=({},), prov=CPU, ceilings=CPU_CEILINGS, dtype="float32"):
    """Records of `model` at each grid point and batch, timed by time_of(params, batch)."""
    out = []
    for overrides in grid:
        params = point(model, **overrides)
        for b in batches:
            out.append(
                claims.synthetic_record(
                    model, params, b, Numerics(dtype), ceilings, time_of(params, b), prov
                )
            )
    return out


def knee_at(k, base=MS):
    """Flat, then linear from batch k."""
    return lambda p, b: base * max(1.0, b / k)


BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WIDTHS = tuple({"width": w} for w in (64, 256, 1024, 4096))
POST_MLP = ({"width": 1024},)
CONV = tuple({"channels": c, "image_size": 56} for c in (64, 256))
POOL = tuple({"image_size": s, "pool": p} for s in (28, 56, 112) for p in ("max", "avg"))
DECODE = tuple({"context": t} for t in (256, 2048))

# claim -> (records where it holds, the status expected there, records where it does not)
CASES = {
    "C1": (
        lambda: records("resnet50", lambda p, b: 80 * MS * b, (1, 2, 4, 8, 16, 32)),
        vd.HOLDS,
        lambda: records("resnet50", lambda p, b: 80 * MS, (1, 2, 4, 8, 16, 32)),
    ),
    "C2": (
        lambda: records(
            "resnet50", knee_at(4), (1, 2, 3, 4, 8, 16, 32), prov=T4, ceilings=T4_CEILINGS
        ),
        vd.HOLDS,
        lambda: records(
            "resnet50", lambda p, b: MS * b, (1, 2, 3, 4, 8), prov=T4, ceilings=T4_CEILINGS
        ),
    ),
    "C3": (
        lambda: records("mlp", knee_at(16), BATCHES, POST_MLP),
        vd.HOLDS,
        lambda: records("mlp", lambda p, b: MS * b, BATCHES, POST_MLP),  # no flat part
    ),
    "C4": (
        lambda: records("mlp", lambda p, b: knee_at(2**16 / p["width"])(p, b), BATCHES, WIDTHS),
        vd.HOLDS,  # width 64's knee is at 1024: it stays flat over 1..512
        lambda: records("mlp", lambda p, b: MS * b, BATCHES, WIDTHS),
    ),
    "C5": (
        # fp32 on R = 5: b* = R·s_w/2 = 10 (10.2 with activations), the knee at 10.
        lambda: records("mlp", knee_at(10), BATCHES, POST_MLP),
        vd.CAVEAT,  # the post's P/BW is b* only for 2-byte weights
        lambda: records("mlp", knee_at(200), BATCHES, POST_MLP),
    ),
    "C6": (
        lambda: records("conv", lambda p, b: MS * b, (1, 2, 4, 8, 16, 32), CONV),
        vd.HOLDS,
        lambda: records("conv", knee_at(64), (1, 2, 4, 8, 16, 32, 64, 128, 256), CONV),
    ),
    "C7": (
        lambda: records("pooling", lambda p, b: 1e-6 * p["image_size"] ** 2 * b, (1, 4), POOL),
        vd.HOLDS,
        lambda: records("pooling", lambda p, b: 1e-5 * p["image_size"] * b, (1, 4), POOL),
    ),
    "C8": (
        # KV share 2.5% at b=1, T=256 but 45% at b=4, T=2048: minimal only at short context.
        lambda: records("decode", lambda p, b: 1e-2 + 1e-6 * b * p["context"], (1, 4), DECODE),
        vd.CAVEAT,
        lambda: records("decode", lambda p, b: 1e-4 + 1e-6 * b * p["context"], (1, 4), DECODE),
    ),
}


@pytest.mark.parametrize("cid", sorted(CASES))
def test_verdicts_come_from_the_data(cid):
    good, expected, bad = CASES[cid]
    claim = claims.CLAIMS[cid]
    verdict, parts = claims.judge(claim, good())
    assert verdict.status == expected, verdict.text
    assert parts and all(p.claim == cid for p in parts)
    verdict, _ = claims.judge(claim, bad())
    assert verdict.status == vd.FAILS, verdict.text


def test_c5_holds_plainly_for_two_byte_weights():
    # fp16 on R = 5: b* = R = 5 (5.04 with activations at width 1024).
    rs = records("mlp", knee_at(5), BATCHES, POST_MLP, dtype="float16")
    verdict, _ = claims.judge(claims.CLAIMS["C5"], rs)
    assert verdict.status == vd.HOLDS, verdict.text
    assert verdict.numbers["s_w"] == 2 and abs(verdict.numbers["b_star_weights"] - 5) < 1e-9


def test_claims_that_need_another_device_or_other_results():
    cpu_resnet = records("resnet50", lambda p, b: 80 * MS * b, (1, 2, 3, 4))
    c2, _ = claims.judge(claims.CLAIMS["C2"], cpu_resnet)
    assert c2.status == vd.UNTESTABLE and "T4" in c2.summary
    assert c2.numbers["t4_float32_t3_over_t1"] == pytest.approx(3.0)  # compute-bound, fp32
    gpu_resnet = records("resnet50", knee_at(4), (1, 2, 3, 4), prov=T4, ceilings=T4_CEILINGS)
    assert claims.judge(claims.CLAIMS["C1"], gpu_resnet)[0].status == vd.UNTESTABLE
    c8, _ = claims.judge(claims.CLAIMS["C8"], cpu_resnet)
    assert c8.status == vd.NOT_MEASURED and "decode" in c8.summary


def test_combine_counts_series():
    def v(status, subject):
        return vd.Verdict("C6", status, "why", f"conv channels={subject} float32")

    two_of_three = vd.combine("C6", [v(vd.HOLDS, 1), v(vd.HOLDS, 2), v(vd.FAILS, 3)])
    assert two_of_three.status == vd.CAVEAT
    assert "holds for 2 of 3 series; not for channels=3" in two_of_three.summary
    assert vd.combine("C6", [v(vd.HOLDS, 1), v(vd.FAILS, 2), v(vd.FAILS, 3)]).status == vd.FAILS
    assert vd.combine("C6", [v(vd.UNTESTABLE, 1), v(vd.NOT_MEASURED, 2)]).status == vd.UNTESTABLE
    assert vd.combine("C6", []).status == vd.NOT_MEASURED


def test_a_plugged_in_claim_and_one_with_no_function(monkeypatch):
    mlp = records("mlp", knee_at(16), (1, 4, 16, 64), POST_MLP)
    unjudged = dataclasses.replace(claims.CLAIMS["C9"], models=("mlp",), judge=None)
    verdict, parts = claims.judge(unjudged, mlp)
    assert verdict.status == vd.NOT_JUDGED
    assert any(line.startswith("C3 mlp") for line in parts[0].lines)  # the family's lines

    def c9(rs):
        return [vd.judged("C9", len(rs) == 4, f"{len(rs)} points")]

    monkeypatch.setitem(claims.CLAIMS, "C9", dataclasses.replace(unjudged, judge=c9))
    verdict, _ = claims.judge(claims.CLAIMS["C9"], mlp)
    assert (verdict.status, verdict.summary) == (vd.HOLDS, "4 points")


def write_dir(path, rs, extra_lines=()):
    """A results directory as a sweep leaves it: results.jsonl and config.json."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rs)
        f.writelines(line + "\n" for line in extra_lines)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"fingerprint": {}, "config": {"family_modules": []}}, f)
    return str(path)


def _row(text: str, cid: str) -> list[str]:
    """The cells of claim `cid`'s row in the report's verdict table."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {cid} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_puts_two_devices_side_by_side(tmp_path):
    def device(prov, ceilings, knee):
        return records(
            "mlp", knee_at(knee), BATCHES, POST_MLP, prov=prov, ceilings=ceilings
        ) + records("resnet50", knee_at(4), (1, 2, 3, 4, 8, 16), prov=prov, ceilings=ceilings)

    cpu = write_dir(tmp_path / "cpu", device(CPU, CPU_CEILINGS, 10))
    gpu = write_dir(tmp_path / "gpu", device(T4, T4_CEILINGS, 128))
    out = tmp_path / "report"
    path = report.build(report.ReportConfig((cpu, gpu), str(out)), warn=lambda m: None)
    with open(path) as f:
        text = f.read()
    header = next(ln for ln in text.splitlines() if ln.startswith("| claim |"))
    assert "cpu (fixture-cpu)" in header and "Tesla T4" in header
    # C1 is a CPU claim and C2 a GPU one; here ResNet is flat to b=4 on both.
    assert _row(text, "C1")[2:] == ["**does not hold here**", vd.UNTESTABLE]
    assert _row(text, "C2")[2:] == [vd.UNTESTABLE, "**holds**"]
    assert _row(text, "C9")[2:] == [vd.NOT_MEASURED] * 2
    assert "NVIDIA T4 (float16, the post's)" in text and "TPU v5e" in text
    assert "R = P/BW = 203.1 FLOPs/byte" in text  # the T4 fp16 derivation (REFERENCE 2.3)
    for png in ("c1.png", "c2.png", "c3.png"):
        assert (out / png).stat().st_size > 10_000 and f"]({png})" in text
    # One plot, each line labelled with its device.
    labels = plotting.series_by_device(sources.read([cpu, gpu], print).records())
    assert {label.split(":")[0] for label in labels} == {"cpu (fixture-cpu)", "Tesla T4"}


def test_bad_lines_are_named_and_the_rest_is_built(tmp_path):
    good = records("mlp", knee_at(16), BATCHES, POST_MLP)
    no_time = {k: v for k, v in good[0].items() if k != "time"} | {"id": "mlp/x/b=1"}
    alien = good[0] | {"model": "not_a_family", "id": "alien/b=1"}
    d = write_dir(
        tmp_path / "run",
        good,
        ['{"id": "torn', json.dumps(no_time), json.dumps(alien), json.dumps([1, 2])],
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    warnings = []
    path = report.build(
        report.ReportConfig((d, str(empty)), str(tmp_path / "out")), warnings.append
    )
    with open(path) as f:
        text = f.read()
    results_file = os.path.join(d, "results.jsonl")
    n = len(good)
    expected = [
        f"{results_file}:{n + 1}: skipped: not valid JSON",
        f"{results_file}:{n + 2}: skipped: record mlp/x/b=1 has no valid 'time'",
        f"{results_file}:{n + 3}: skipped: record alien/b=1: unknown model family",
        f"{results_file}:{n + 4}: skipped: not a batchlab record",
        f"{empty}: no results.jsonl in it or below it",
    ]
    for message in expected:
        assert any(w.startswith(message) for w in warnings), (message, warnings)
        assert f"- {message}" in text
    assert _row(text, "C3")[2] == "**holds**"  # the good lines still make their verdict


def test_reproduce_plans_budgets_and_memory(tmp_path):
    root = reproduce.repo_root()
    flags = reproduce.read_flags(["--flagfile=configs/seed/mlp.flags", "--dtype=bfloat16"], root)
    assert flags["dtype"] == "bfloat16" and flags["model"] == "mlp"  # later wins
    assert flags["min_reps"] == "10"  # from configs/base.flags, nested
    cfg = reproduce.ReproduceConfig(str(tmp_path), configs=("mlp", "resnet50"))
    planned = reproduce.plan(cfg, root)
    assert [p.name for p in planned] == ["mlp", "resnet50"]
    resnet = planned[1]
    assert resnet.flags[0] == "--batch_sizes=1,2,3,4,8,16"  # quick budget, after the seed
    assert resnet.flags[-1].startswith("--compilation_cache_dir=")
    # ResNet-50 at b=16 moves ~2 GB; 3x that plus 1 GB does not fit in 4 GB.
    reproduce.fit_memory(planned, 4e9, root)
    assert planned[0].status == "planned" and not planned[0].dropped
    assert resnet.flags[-1] == "--batch_sizes=1,2,3,4" and "8,16 left out" in resnet.dropped[0]
    reproduce.fit_memory(planned, 0.5e9, root)
    assert all(p.status == "skipped" and "0.5 GB available" in p.reason for p in planned)
    with pytest.raises(reproduce.ConfigError, match="--budget=huge"):
        reproduce.plan(dataclasses.replace(cfg, budget="huge"), root)


def test_command_lines(tmp_path):
    d = write_dir(tmp_path / "run", records("mlp", knee_at(16), (1, 4, 16, 64), POST_MLP))
    proc = run_cli(d, f"--out_dir={tmp_path / 'out'}", module="experiments.report")
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(tmp_path / "out" / "REPORT.md")
    proc = run_cli(module="experiments.report")
    assert proc.returncode == 2 and proc.stderr.startswith("error: give one or more")
    proc = run_cli(
        "--dry_run",
        "--memory_gb=0.5",
        f"--out_dir={tmp_path / 'r'}",
        module="experiments.reproduce",
    )
    assert proc.returncode == 0, proc.stderr
    seeds = reproduce.seed_names(os.path.join(reproduce.repo_root(), "configs", "seed"))
    assert proc.stdout.count(" skipped ") == len(seeds) > 0
    assert not os.path.exists(tmp_path / "r")  # a dry run writes nothing
