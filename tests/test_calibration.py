"""Calibrated ceilings: plausible on this machine, cached per device and numerics."""

import json
from pathlib import Path

import pytest

from batchlab import calibration, hardware, sweep
from batchlab.numerics import Numerics
from batchlab.roofline import Ceilings


def test_measure_gives_plausible_ceilings_and_names_the_kernels():
    c = calibration.measure(Numerics())
    assert 1e9 < c.peak_flops < 1e14  # between 1 GFLOP/s and 100 TFLOP/s
    assert 1e9 < c.bandwidth < 1e13
    assert "matmul on CPU cores (float32)" in c.flops_kernel  # the unit that ran it
    assert "rotated copies" in c.bandwidth_kernel and c.source == "calibrated"


def test_measure_follows_its_plan_and_names_the_plans_unit():
    tiny = calibration.Plan((64,), ((32, 64),), 1024, 2**16, calibration.SPEC, "tf32 tensor cores")
    c = calibration.measure(Numerics(), how=tiny)
    assert c.flops_kernel == "64x64x64 float32 matmul on tf32 tensor cores"
    assert c.bandwidth_kernel.startswith(("32x64 matrix-vector", "elementwise x*c over 1024"))


GIB = 2**30


def test_a_cpu_calibrates_as_it_always_did():
    p = calibration.plan("cpu", Numerics(), memory_bytes=None)
    assert p.matmuls == (1024, 2048) and p.stream_elements == 2**24
    assert p.matvecs == ((2048, 2048), (4096, 4096), (8192, 8192))
    assert p.cold_bytes == 256 * 2**20 and p.spec == calibration.SPEC  # one warm-up call


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_an_accelerator_streams_a_gib_with_matmuls_that_approach_the_peak(platform):
    big = calibration.plan(platform, Numerics(), memory_bytes=141e9, compute_capability="9.0")
    stream = big.stream_elements * 4
    assert stream >= GIB and stream <= 141e9 / 8
    assert all(r * c * 4 >= GIB for r, c in big.matvecs)  # every stream, not just one
    assert min(big.matmuls) >= 8192 and 16384 in big.matmuls
    assert big.spec.warmup_s >= 0.2 and big.spec.warmup_agree is not None
    # No: a 4 GiB device gets streams capped at an eighth of its memory, and a 16 GB one
    # no 16384 float32 matmul (its three matrices, 3 GiB, are more than an eighth).
    small = calibration.plan(platform, Numerics(), memory_bytes=4 * GIB)
    assert small.stream_elements * 4 == GIB // 2 and small.cold_bytes == GIB // 2
    assert calibration.plan(platform, Numerics(), memory_bytes=16e9).matmuls == (8192,)
    half = calibration.plan(platform, Numerics("bfloat16"), memory_bytes=16e9)
    assert half.matmuls == (8192, 16384)  # 1.5 GiB in bf16 fits


@pytest.mark.parametrize(
    "platform,numerics,cc,unit",
    [
        ("gpu", Numerics(), "8.0", "tf32 tensor cores"),  # Ampere and newer: TF32 by default
        ("gpu", Numerics("float32", "highest"), "9.0", "fp32 cores"),
        ("gpu", Numerics("bfloat16"), "9.0", "bfloat16 tensor"),
        ("gpu", Numerics(), "7.5", "fp32 cores"),  # a T4 has no TF32
        ("gpu", Numerics("bfloat16"), "7.5", "fp32 cores (no native bf16)"),
        ("cpu", Numerics(), None, "CPU cores (float32)"),
    ],
)
def test_every_calibrated_peak_names_its_unit(platform, numerics, cc, unit):
    assert calibration.unit(platform, numerics, cc) == unit
    assert calibration.plan(platform, numerics, 80e9, cc).unit == unit


def test_units_are_named_as_the_datasheet_names_them():
    """A TPU's float32 as bf16 MXU passes, and every datasheet row's unit the same as the
    one calibration names for a device of its kind and generation."""
    tpu = calibration.unit("tpu", Numerics())
    assert "bf16 MXU" in tpu and "x1" in tpu
    assert "x6" in calibration.unit("tpu", Numerics("float32", "highest"))
    for spec in hardware.DATASHEET.values():
        cc = "9.0" if spec.tf32 else "7.5"
        for numerics in (Numerics(), Numerics("bfloat16"), Numerics("float32", "highest")):
            want = hardware.peak_flops(spec, numerics)[1]
            assert calibration.unit(spec.kind, numerics, cc) == want, spec.key


def test_plan_for_reads_the_devices_memory_and_generation():
    class Gpu:
        platform, compute_capability = "gpu", "8.6"

        def memory_stats(self):
            return {"bytes_limit": 24e9}

    p = calibration.plan_for(Gpu(), Numerics())
    assert p.unit == "tf32 tensor cores" and p.stream_elements * 4 == GIB
    assert p.matmuls == (8192,)  # 3 GiB of 16384² float32 is more than 24 GB / 8

    class NoStats(Gpu):
        compute_capability = None

        def memory_stats(self):
            return None

    p = calibration.plan_for(NoStats(), Numerics())
    assert "unknown" in p.unit and p.stream_elements * 4 == GIB and p.matmuls == (8192,)


def test_cache_is_per_device_and_numerics(tmp_path, monkeypatch):
    calls = []

    def fake_measure(numerics, device=None, how=None):
        calls.append(numerics.dtype)
        return Ceilings(1e11 * len(calls), 1e10, "calibrated", "k", "k")

    monkeypatch.setattr(calibration, "measure", fake_measure)
    path = str(tmp_path / "calibration.json")
    a = calibration.cached(path, "cpu", Numerics("float32"))
    assert calibration.cached(path, "cpu", Numerics("float32")) == a
    b = calibration.cached(path, "cpu", Numerics("bfloat16"))
    assert calls == ["float32", "bfloat16"] and b.peak_flops == 2e11
    assert set(json.loads(Path(path).read_text())) == {
        "cpu|float32|default",
        "cpu|bfloat16|default",
    }


@pytest.mark.parametrize(
    "peak,bw,source",
    [
        (3e11, 4e10, "flags"),
        (3e11, None, "flags over calibrated"),
    ],
)
def test_flags_override_calibration(tmp_path, peak, bw, source, monkeypatch):
    from conftest import make_config

    monkeypatch.setattr(
        calibration, "measure", lambda *a, **k: Ceilings(1e11, 1e10, "calibrated", "k", "k")
    )
    cfg = make_config(tmp_path, peak_flops=peak, bandwidth=bw)

    class Cpu:
        device_kind, platform = "cpu", "cpu"

    c = sweep.resolve_ceilings(cfg, Cpu())
    assert (c.peak_flops, c.bandwidth, c.source) == (peak, bw or 1e10, source)


def test_recalibrate_measures_again_instead_of_reusing_the_cache(tmp_path):
    from conftest import run_cli

    out = tmp_path / "o"
    args = ["--flagfile=configs/smoke.flags", f"--out_dir={out}", "--noplot"]
    assert run_cli(*args, "--batch_sizes=1").returncode == 0
    cache = out / "calibration.json"
    entries = json.loads(cache.read_text())
    stale = {k: v | {"peak_flops": 1.0} for k, v in entries.items()}  # a nonsense peak
    cache.write_text(json.dumps(stale))
    proc = run_cli(*args, "--batch_sizes=1,4", "--recalibrate")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in lines] == [1, 4]
    assert lines[1]["ceilings"]["peak_flops"] > 1e9  # measured again, not the stale 1.0
    assert all(v["peak_flops"] > 1e9 for v in json.loads(cache.read_text()).values())


def test_cpu_devices_of_one_mesh_share_the_calibrated_host():
    import numpy as np

    class Cpu:
        platform, process_index = "cpu", 0

    class Mesh:  # four fake CPU devices of this process
        devices = np.array([Cpu()] * 4)

    calibrated = Ceilings(8e10, 4e10, "calibrated", "k", "k")
    shared = sweep.share_of_host(calibrated, Cpu(), Mesh())
    assert (shared.peak_flops, shared.bandwidth) == (2e10, 1e10)
    assert shared.source == "calibrated / 4 CPU devices sharing the host"
    assert sweep.share_of_host(calibrated, Cpu(), None) == calibrated  # no mesh: whole host
    flags = Ceilings(8e10, 4e10, "flags")
    assert sweep.share_of_host(flags, Cpu(), Mesh()) == flags  # the user said what they are
