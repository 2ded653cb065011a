"""The device profile (batchlab.profile) and the per-kernel model in a sweep: what is
measured, stored and re-measured, what the records carry, and what readers make of it."""

import json
import os
import subprocess
import sys
import time

import jax
import pytest
from conftest import ROOT, make_config, run_cli, run_in_process, synthetic
from test_kernels import PROFILE

from batchlab import (
    analysis,
    errors,
    hardware,
    kernel_model,
    kernels,
    profile,
    record,
    results,
    summary,
    timing,
)
from batchlab.numerics import Numerics
from batchlab.roofline import Ceilings

F32 = Numerics()
# Every table, at shapes small enough to measure in seconds.
TINY_PLAN = profile.Plan(
    matmul_m=(1, 4),
    matmul_d=(64,),
    cold_m=(1,),
    stream_bytes=(2**10, 2**14, 2**18),
    cold_bytes=2**20,
    conv=((8, 3, 8, 1), (8, 1, 8, 1)),
    batched=((2, 16, 8, 1),),
    max_flops=1e9,
)


def test_every_table_is_measured_on_a_tiny_plan():
    got = profile.measure(F32, p=TINY_PLAN)
    assert set(got["tables"]) == set(profile.TABLES)
    assert 0 < got["floor_s"] < 1e-2 and 0 <= got["launch_s"] < 1e-3
    t = got["tables"]
    # Each matmul shape warm, and cold at the batches that stream weights.
    assert sorted((m, d, c) for m, d, c, _ in t["matmul"]) == [
        (1, 64, 0),
        (1, 64, 1),
        (4, 64, 0),
    ]
    assert [r[:4] for r in t["conv"]] == [[8, 3, 64, 1], [8, 1, 64, 1]]
    assert [r[:3] for r in t["batched"]] == [[2, 16, 8]]
    # Bytes tables: one row per size, bytes as moved (a stream reads and writes), and a
    # cold one from 256 KiB (inputs rotated over the plan's 1 MiB); reductions warm only.
    assert [r[0] for r in t["stream"] if not r[2]] == [2 * 2**10, 2 * 2**14, 2 * 2**18]
    assert [r[0] for r in t["stream"] if r[2]] == [2 * 2**18]
    assert not [r for r in t["reduction"] if r[2]]
    assert [r[0] for r in t["gather"]] == [2**14]  # every other size from 16 KiB
    for name, rows in t.items():
        if name != "collective":  # one device: none (the next test has several)
            seconds = [r[-1] if name in ("matmul", "batched", "conv") else r[1] for r in rows]
            assert rows and all(x > 0 or name == "fresh" and x == 0 for x in seconds), name
    assert [r[0] for r in t["fresh"]] == [2**18]  # from 256 KiB: smaller reuse memory


WINDOW_SPEC = timing.TimingSpec(target_spread=0.05, time_budget_s=0.1, warmup_reps=1, warmup_s=0.0)


def _sleeper(seconds_at, log, name):
    """A call that sleeps seconds_at(elapsed since its first call) and logs its name."""
    start = []

    def call(i):
        start.append(start[0] if start else time.perf_counter())
        log.append(name)
        time.sleep(seconds_at(time.perf_counter() - start[0]))

    return profile._Call(call, WINDOW_SPEC)


def test_a_slow_spell_in_one_window_does_not_set_a_row():
    # 4 ms calls for the first 30 ms (longer than a window of 0.1 s / PASSES), 0.5 ms after.
    spell = _sleeper(lambda t: 4e-3 if t < 0.03 else 5e-4, [], "a")
    steady = _sleeper(lambda t: 4e-3, [], "b")  # slow throughout: the row must say so
    got_spell, got_steady = profile._medians([spell, steady])
    assert got_spell < 1.5e-3, "the spell's window set the row"
    assert got_steady > 3.5e-3


def test_rows_sharing_buffers_are_timed_in_interleaved_passes():
    log = []
    calls = [_sleeper(lambda t: 1e-4, log, name) for name in "ab"]
    profile._medians(calls)
    runs = [n for i, n in enumerate(log) if i == 0 or log[i - 1] != n]
    # Passes a b | b a | a b | ...: every other one reversed, so b's windows and a's
    # meet; in one order every pass (a b | a b | ...) would give 2 * PASSES runs.
    assert runs == ["a", "b"] * ((profile.PASSES + 1) // 2) + ["a"] * (1 - profile.PASSES % 2)
    assert len(runs) == profile.PASSES + 1


def test_a_call_longer_than_a_window_is_called_once_a_window_after_the_first():
    log = []
    profile._medians([_sleeper(lambda t: 0.03, log, "slow")])  # windows of 20 ms
    first = WINDOW_SPEC.warmup_reps + profile.PASS_MIN_REPS
    assert len(log) == first + (profile.PASSES - 1)


def write_profile(path, entry=PROFILE, device_kind="cpu", stamp=None):
    stamp = stamp or {"profile_version": profile.VERSION, "jax": jax.__version__}
    body = {profile.key(device_kind, F32): dict(entry, stamp=stamp)}
    path.write_text(json.dumps(body))


def test_a_stored_profile_is_used_and_a_stale_one_measured_again(tmp_path, monkeypatch):
    device = jax.devices()[0]
    path = tmp_path / "profile.json"
    write_profile(path, device_kind=device.device_kind)
    calls = []
    monkeypatch.setattr(
        profile, "measure", lambda *a, names=(), **k: calls.append(tuple(names)) or _fresh(names)
    )
    monkeypatch.setattr(profile, "drift", lambda *a: (1.0, 8))  # the machine has not moved
    store = profile.Store(str(path), device, F32)
    assert store.profile(["matmul", "conv"])["tables"]["matmul"] == PROFILE["tables"]["matmul"]
    assert calls == []  # all there, stamped by this version: nothing measured
    write_profile(path, device_kind=device.device_kind, stamp={"profile_version": -1})
    got = store.profile(["stream"])
    assert calls == [(), ("stream",)]  # the floor first, then the one table asked for
    assert got["tables"] == {"stream": [[1, 1.0]]}
    on_disk = json.loads(path.read_text())[profile.key(device.device_kind, F32)]
    assert on_disk["stamp"]["profile_version"] == profile.VERSION
    store.profile(["conv"])  # a table not yet measured is added, the rest kept
    assert calls[-1] == ("conv",)
    assert set(json.loads(path.read_text())[store.key]["tables"]) == {"stream", "conv"}


@pytest.mark.parametrize(
    "ratio, measured_again",
    [(1.4, True), (0.7, True), (1.1, False), (1 / 1.1, False), (None, False)],
)
def test_a_stored_profile_the_machine_drifted_from_is_measured_again(
    tmp_path, monkeypatch, ratio, measured_again
):
    device = jax.devices()[0]
    path = tmp_path / "profile.json"
    write_profile(path, device_kind=device.device_kind)
    calls, said, checks = [], [], []
    monkeypatch.setattr(
        profile, "measure", lambda *a, names=(), **k: calls.append(tuple(names)) or _fresh(names)
    )
    monkeypatch.setattr(
        profile, "drift", lambda *a: checks.append(1) or (ratio, 0 if ratio is None else 8)
    )
    store = profile.Store(str(path), device, F32, log=said.append)
    got = store.profile(["stream"])
    if measured_again:  # the floor, then only the table asked for: the others are dropped
        assert calls == [(), ("stream",)] and got["tables"] == {"stream": [[1, 1.0]]}
        assert set(json.loads(path.read_text())[store.key]["tables"]) == {"stream"}
        assert said == [
            f"profile: 8 sentinel rows take {ratio:.2f}x their stored time; "
            "measuring its tables again as they are needed"
        ]
    else:
        assert calls == [] and got["tables"] == PROFILE["tables"]
        assert said == (
            []
            if ratio is None
            else [f"profile: 8 sentinel rows take {ratio:.2f}x their stored time"]
        )
    store.profile(["stream"])
    assert checks == [1]  # once per Store: not at every point


@pytest.mark.parametrize("ratio, warned", [(1.3, True), (1 / 1.3, True), (1.05, False)])
def test_the_recheck_at_a_sweeps_end_warns_only_when_the_machine_moved(
    tmp_path, monkeypatch, ratio, warned
):
    device = jax.devices()[0]
    path = tmp_path / "profile.json"
    write_profile(path, device_kind=device.device_kind)
    said = []
    monkeypatch.setattr(profile, "drift", lambda *a: (ratio, 8))
    store = profile.Store(str(path), device, F32, log=said.append)
    assert store.recheck() == ratio
    assert said[0].startswith(f"profile: at the sweep's end 8 sentinel rows take {ratio:.2f}x")
    assert ("the machine moved during the sweep" in said[0]) == warned
    write_profile(path, device_kind=device.device_kind, stamp={"profile_version": -1})
    assert store.recheck() is None and len(said) == 1  # a stale profile: nothing to compare


def test_a_sweep_rechecks_its_profile_at_its_end(tmp_path, monkeypatch):
    path = tmp_path / "profile.json"
    write_profile(path, device_kind=jax.devices()[0].device_kind)
    ratios = iter([1.0, 1.3])  # as found at the first point, then at the end
    monkeypatch.setattr(profile, "drift", lambda *a: (next(ratios), 8))
    cfg = make_config(str(tmp_path / "out"), batch_sizes=("1", "2"), model_profile=str(path))
    lines = []
    run_in_process(cfg, log=lines.append)
    said = [line for line in lines if line.startswith("profile:")]
    assert said == [
        "profile: 8 sentinel rows take 1.00x their stored time",
        "profile: at the sweep's end 8 sentinel rows take 1.30x their stored time: the machine "
        "moved during the sweep, and the model's errors include it",
    ]


def test_drift_compares_the_sentinel_rows_now_with_the_stored_ones():
    device = jax.devices()[0]
    sentinels = profile._sentinel_plan(profile._device_plan(device))
    now = profile.measure(F32, device, sentinels, names=profile.SENTINEL_TABLES)
    ratio, n = profile.drift(now, F32, device)
    assert n == 4 + 2 + 2  # matmuls at M = 4, 64 and two widths; two streams; two convs
    assert 0.5 < ratio < 2  # the same rows again: about 1 (a loaded machine moves them)
    slow = {"tables": {}}  # stored three times slower (a slow spell): now about a third
    for name, rows in now["tables"].items():
        slow["tables"][name] = [
            r[:-1] + [3 * r[-1]] if name in ("matmul", "conv") else [r[0], 3 * r[1], *r[2:]]
            for r in rows
        ]
    ratio, _ = profile.drift(slow, F32, device)
    assert ratio < 1 / (1 + profile.DRIFT) and 0.5 / 3 < ratio < 2 / 3
    assert profile.drift({"tables": {"gather": [[1e3, 1e-6]]}}, F32, device) == (None, 0)


def _fresh(names):
    return {"floor_s": 1e-6, "launch_s": 1e-7, "tables": {n: [[1, 1.0]] for n in names}}


@pytest.mark.parametrize("text", ["{", "[]", '{"cpu|float32|default": {"tables": {}}}', '{"k": 3}'])
def test_a_corrupt_profile_is_refused_in_one_line(tmp_path, text):
    path = tmp_path / "profile.json"
    path.write_text(text)
    store = profile.Store(str(path), jax.devices()[0], F32)
    with pytest.raises(errors.ConfigError) as e:
        store.profile()
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_text() == text  # nothing written


def _model_sweep(tmp_path, monkeypatch, **kw):
    # A hand-made profile: the sentinel check would find the machine "drifted" from it.
    monkeypatch.setattr(profile, "drift", lambda *a: (None, 0))
    path = tmp_path / "profile.json"
    write_profile(path, device_kind=jax.devices()[0].device_kind)
    cfg = make_config(
        str(tmp_path / "out"),
        batch_sizes=("1", "4", "16"),
        model_profile=str(path),
        predict_for=("h100_sxm",),
        **kw,
    )
    run_in_process(cfg)
    return cfg, results.load(os.path.join(cfg.out_dir, results.RESULTS))


@pytest.mark.alone
def test_a_sweep_records_the_models_prediction_from_its_own_kernels(tmp_path, monkeypatch):
    cfg, recs = _model_sweep(tmp_path, monkeypatch)
    assert [r["batch"] for r in recs] == [1, 4, 16]
    assert kernel_model.fresh_bytes(recs[-1]["xla"]["memory_analysis"]) >= 16 * 32 * 4
    cache = max(hardware.cache_levels("cpu", hardware.lookup("cpu")).values(), default=0)
    for r in recs:
        ks = [kernels.Kernel.from_dict(k) for k in r["kernels"]]
        assert {k.cls for k in ks} >= {"matmul"}
        p = r["prediction"]
        # The same profile, the stored kernels and working set: the same time, independently.
        fresh = kernel_model.fresh_bytes(r["xla"]["memory_analysis"])
        want = kernel_model.predict(ks, PROFILE, r["working_set"]["bytes"], cache, fresh)
        # Results of 1 kB and more are new pages (the profile's fresh table starts there).
        assert (want.fresh_s > 0) == (fresh >= 1e3)
        assert p["model_s"] == pytest.approx(want.model_s, rel=1e-9)
        assert p["model_error"] == pytest.approx(r["time"]["median_s"] / p["model_s"] - 1)
        assert p["model_text"] and "matmul" in p["model_kernels"][0]["kernels"] + p["model_text"]
        assert p["model_source"].startswith("profile measured here")
        h100 = r["predicted"][record.target_key("h100_sxm", F32)]["prediction"]
        assert h100["model_source"] == "datasheet model, not validated"
        # The datasheet model has a floor and launches: never under the roofline bound.
        assert h100["model_s"] > h100["lower_s"]
        assert r["compile"]["kernels_s"] < r["compile"]["compile_s"] + 0.05
    text = summary.table(recs)
    assert "model ms" in text and "per-kernel model vs measurement" in text
    on_h100 = record.on_datasheet_all(recs, record.target_key("h100_sxm", F32), record.MODEL)
    assert [r["time"]["median_s"] for r in on_h100] == [
        r["predicted"][record.target_key("h100_sxm", F32)]["prediction"]["model_s"] for r in recs
    ]


def test_recalibrate_measures_the_outdirs_profile_again_but_keeps_a_named_one(tmp_path):
    from batchlab import sweep

    out = tmp_path / "out"
    out.mkdir()
    (out / results.PROFILE).write_text("{}")
    named = tmp_path / "mine.json"
    named.write_text("{}")
    sweep.forget_calibration(make_config(str(out), model_profile=str(named)))
    assert (out / results.PROFILE).exists() and named.exists()
    sweep.forget_calibration(make_config(str(out), model_profile="auto"))
    assert not (out / results.PROFILE).exists() and named.exists()


def test_model_profile_off_records_no_model_and_readers_do_without(tmp_path):
    cfg = make_config(str(tmp_path / "out"), model_profile="off")
    run_in_process(cfg)
    recs = results.load(os.path.join(cfg.out_dir, results.RESULTS))
    assert recs and not any("model_s" in r["prediction"] for r in recs)
    assert analysis.prediction_errors(recs) == {}
    assert record.as_predicted_all(recs, record.MODEL) == []
    assert "per-kernel model vs" not in summary.table(recs)


def test_an_empty_model_profile_flag_is_refused():
    proc = run_cli("--model=mlp", "--model_profile=", "--dry_run")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --model_profile")


CPU = Ceilings(peak_flops=100e9, bandwidth=20e9, source="calibrated")


def test_a_point_faster_than_its_ceiling_is_flagged_and_others_are_not():
    point = {"depth": 2, "width": 1024, "input_width": 0}
    lower = synthetic("mlp", point, 1, F32, CPU, None)["prediction"]["lower_s"]
    honest = synthetic("mlp", point, 1, F32, CPU, 1.5 * lower)
    fast = synthetic("mlp", point, 1, F32, CPU, 0.8 * lower)  # past the bandwidth
    assert honest["attained"]["above_ceiling"] == []
    assert fast["attained"]["above_ceiling"] == ["bandwidth"]
    assert analysis.above_ceiling([honest, fast]) == [fast]
    assert "ceiling is too low" in summary.table([fast])
    assert "ceiling is too low" not in summary.table([honest])


def _with_model(r, seconds):
    return r | {"prediction": r["prediction"] | {"model_s": seconds}}


def test_the_model_knee_is_where_its_curve_leaves_the_flat_part():
    point = {"depth": 2, "width": 1024, "input_width": 0}
    batches = [1, 2, 4, 8, 16, 32, 64, 128]
    recs = [synthetic("mlp", point, b, F32, CPU, 1e-3) for b in batches]
    flat_then_linear = [_with_model(r, max(1e-3, 1e-3 * b / 16)) for r, b in zip(recs, batches)]
    knee = analysis.model_knee(flat_then_linear)
    assert knee.found and knee.batch == pytest.approx(16, rel=0.15)
    linear = [_with_model(r, 1e-4 * b) for r, b in zip(recs, batches)]
    assert not analysis.model_knee(linear).found  # no flat part: no knee
    assert analysis.model_knee(recs) is None  # no model stored


def test_the_datasheet_profile_fills_a_gpu_only_with_enough_outputs():
    t4 = hardware.DATASHEET["t4"]
    half = Numerics("float16")
    prof = profile.from_datasheet(t4, half)
    peak = hardware.datasheet_ceilings(t4, half).peak_flops
    rows = {(c, k, p, b): s for c, k, p, b, s in prof["tables"]["conv"]}
    launch = prof["launch_s"]

    def per_flop(c, k, p, b):
        return (rows[(c, k, p, b)] - launch) / (2.0 * p * b * k * k * c * c)

    full = 1 / (peak * profile.CONV_EFFICIENCY)
    # 32 images of 56x56 and 512 channels fill it; one 14x14 image runs at the least fill.
    assert per_flop(512, 3, 56 * 56, 32) == pytest.approx(full)
    assert per_flop(512, 3, 14 * 14, 1) == pytest.approx(full / profile.CONV_MIN_FILL)
    assert prof["source"] == "datasheet model, not validated"


def test_the_collective_table_needs_several_devices():
    assert profile.measure(F32, p=TINY_PLAN, names=("collective",))["tables"]["collective"] == []
    code = (
        "import json; from batchlab import profile; from batchlab.numerics import Numerics; "
        "from test_model_profile import TINY_PLAN; "
        "print(json.dumps(profile.measure(Numerics(), p=TINY_PLAN, names=('collective',))))"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["tables"]["collective"]
    # One row per size from 16 KiB, in the kernel's bytes: each device's shard in and out.
    assert [r[0] for r in rows] == [2 * 2**14] and rows[0][1] > 0
