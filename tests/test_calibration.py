"""Calibrated ceilings: plausible on this machine, cached per device and numerics."""

import json
from pathlib import Path

import pytest

from batchlab import calibration, sweep
from batchlab.numerics import Numerics
from batchlab.roofline import Ceilings


def test_measure_gives_plausible_ceilings_and_names_the_kernels():
    c = calibration.measure(Numerics())
    assert 1e9 < c.peak_flops < 1e14  # between 1 GFLOP/s and 100 TFLOP/s
    assert 1e9 < c.bandwidth < 1e13
    assert "matmul" in c.flops_kernel
    assert "rotated copies" in c.bandwidth_kernel and c.source == "calibrated"


def test_cache_is_per_device_and_numerics(tmp_path, monkeypatch):
    calls = []

    def fake_measure(numerics, device=None, large=False):
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
