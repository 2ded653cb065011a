"""Roofline formulas and the datasheet table against hand calculations."""

import math

import pytest

from batchlab import hardware, roofline
from batchlab.errors import ConfigError
from batchlab.numerics import Numerics
from batchlab.workloads import mlp
from batchlab.workloads.base import Cost

T4_300 = roofline.Ceilings(65e12, 300e9, "test")


def dense(m, n, s_w, s_a):
    """A bias-free m x n layer: the REFERENCE 2.2 cost model."""
    return lambda b: Cost(2 * b * m * n, s_w * m * n, s_a * b * (m + n))


def test_predict_bounds_and_regime():
    c = Cost(flops=2e9, weight_bytes=1e9, activation_bytes=0.5e9)
    p = roofline.predict(c, roofline.Ceilings(1e12, 1e11, "test"), overhead_s=1e-3)
    assert p.t_math_s == pytest.approx(2e-3)
    assert p.t_mem_s == pytest.approx(1.5e-2)
    assert p.lower_s == pytest.approx(1.5e-2) and p.regime == "bandwidth"
    assert p.upper_s == pytest.approx(1.5e-2 + 2e-3 + 1e-3)
    assert roofline.predict(c, roofline.Ceilings(1e12, 1e11, "t"), 1.0).regime == "overhead"
    assert roofline.predict(c, roofline.Ceilings(1e9, 1e15, "t")).regime == "compute"


def test_collective_roof_uses_the_interconnect_or_else_memory():
    c = Cost(flops=1e9, weight_bytes=1e8, activation_bytes=0, collective_bytes=4e8)
    p = roofline.predict(c, roofline.Ceilings(1e12, 1e11, "t", interconnect=1e10))
    assert p.t_collective_s == pytest.approx(4e-2) and p.regime == "collective"
    assert p.upper_s == pytest.approx(1e-3 + 1e-3 + 4e-2)
    through_memory = roofline.predict(c, roofline.Ceilings(1e12, 1e11, "t"))
    assert through_memory.t_collective_s == pytest.approx(4e-3)  # fake CPU devices
    assert c.total_bytes == 1e8  # collective bytes are not memory traffic
    assert hardware.datasheet_ceilings(hardware.DATASHEET["h100_sxm"], Numerics()).link == 450e9


def test_critical_batch_the_posts_216_for_fp16_weights():
    # REFERENCE 2.3: b* = 65e12 * 2 / (2 * 300e9) = 216.7; 203 at 320 GB/s.
    b = roofline.critical_batch(dense(4096, 4096, 2, 2), T4_300, with_activations=False)
    assert b == pytest.approx(65e12 * 2 / (2 * 300e9), rel=1e-3)
    b320 = roofline.critical_batch(
        dense(4096, 4096, 2, 2), roofline.Ceilings(65e12, 320e9, "t"), with_activations=False
    )
    assert b320 == pytest.approx(203.1, abs=0.1)
    # 1-byte weights give the reader's 108.
    b1 = roofline.critical_batch(dense(4096, 4096, 1, 1), T4_300, with_activations=False)
    assert b1 == pytest.approx(108.3, abs=0.1)


def test_critical_batch_with_activations_closed_form():
    # b* = (s_w R/2) / (1 - s_a R (m+n) / (2mn)) for m = n = D.
    r, d = T4_300.ridge, 1024
    expected = (2 * r / 2) / (1 - 2 * r / d)
    got = roofline.critical_batch(dense(d, d, 2, 2), T4_300, with_activations=True)
    assert got == pytest.approx(expected, rel=1e-3)
    assert 300 < got < 400  # "the mid 300s" of REFERENCE 2.3


def test_critical_batch_never_for_narrow_layers():
    # D <= s_a R: activation bytes grow as fast as FLOPs: never compute-bound.
    assert roofline.critical_batch(dense(256, 256, 2, 2), T4_300, with_activations=True) is None
    assert roofline.critical_batch(dense(256, 256, 2, 2), T4_300, with_activations=False) > 200


def test_critical_batch_of_mlp_family_matches_formula():
    ceil = roofline.Ceilings(200e9, 30e9, "test")
    got = roofline.critical_batch(
        lambda b: mlp.cost({"depth": 8, "width": 1024, "input_width": 0}, b, Numerics()),
        ceil,
        with_activations=False,
    )
    # Bias and ReLU add a little work per example: within 0.2% of R*s_w/2.
    assert got == pytest.approx(ceil.ridge * 4 / 2, rel=2e-3)


def test_explain_prints_the_derivation_numbers():
    text = roofline.explain_critical_batch("NVIDIA T4", T4_300, s_w=2, s_a=2, width=1024)
    assert "216.7" in text  # R and b* for 2-byte weights
    assert "108.3" in text  # R/2 for 1-byte weights
    assert "8.1 TFLOP/s" in text


# Real device_kind strings (jax.devices()[0].device_kind) and the one row each must get.
REAL_KINDS = [
    ("Tesla T4", "t4"),
    ("NVIDIA A100-SXM4-80GB", "a100_80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100_40gb"),
    ("NVIDIA A100 80GB PCIe", "a100_80gb_pcie"),
    ("NVIDIA A100-PCIE-40GB", "a100_40gb_pcie"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA A10G", "a10g"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA H100 80GB HBM3", "h100_sxm"),
    ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA H100 NVL", "h100_nvl"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200_nvl"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA GH200 144G HBM3e", "gh200_144gb"),
    ("NVIDIA B200", "b200"),
    ("TPU v3", "tpu_v3"),
    ("TPU v4", "tpu_v4"),
    ("TPU v5 lite", "tpu_v5e"),
    ("TPU v5", "tpu_v5p"),
    ("TPU v6 lite", "tpu_v6e"),
    ("TPU7x", "tpu7x"),
]


@pytest.mark.parametrize("kind,key", REAL_KINDS)
def test_each_real_device_kind_matches_exactly_its_row(kind, key):
    assert [s.key for s in hardware.matches(kind)] == [key]  # one row, not the first of two
    assert hardware.lookup(kind).key == key
    assert hardware.lookup(f"  {kind.upper()} ").key == key  # case and spaces do not matter


@pytest.mark.parametrize(
    "kind",
    [
        "cpu",
        "TPU v4 lite",  # the v4i inference chip: not a v4, and no row of its own
        "TPU v2",
        "NVIDIA A100-SXM4-80GB MIG 3g.40gb",  # a MIG slice has a fraction of the card
        "NVIDIA H100 NVL MIG 1g.12gb",
        "NVIDIA H800",
        "NVIDIA A10G-X",
        "NVIDIA GeForce RTX 4090",
        "NVIDIA H200 NVL2",
        "Quadro RTX T4000",
        "",
    ],
)
def test_unknown_device_kinds_get_no_row(kind):
    assert hardware.matches(kind) == [] and hardware.lookup(kind) is None


def test_every_row_names_its_source_and_predict_for_keys_still_work():
    for spec in hardware.DATASHEET.values():
        assert spec.source, spec.key
        assert spec.bandwidth > 0 and spec.memory_bytes > 0 and spec.fp32 > 0
    for key in ("t4", "a100_40gb", "a100_80gb", "h100_sxm", "h100_pcie", "h200", "tpu_v5e"):
        assert hardware.by_key(key).key == key
    with pytest.raises(ConfigError, match="unknown device 'h100'"):
        hardware.by_key("h100")


def test_rows_differ_where_the_parts_do():
    sheet = hardware.DATASHEET
    assert sheet["a100_80gb_pcie"].bandwidth == 1935e9 < sheet["a100_80gb"].bandwidth == 2039e9
    assert sheet["h100_nvl"].memory_bytes == 94e9 and sheet["h100_nvl"].bandwidth == 3900e9
    assert sheet["h200_nvl"].bf16 == pytest.approx(835.5e12)
    assert sheet["h200"].bf16 == pytest.approx(989.4e12)
    assert sheet["gh200"].bandwidth == 4000e9 < sheet["gh200_144gb"].bandwidth
    # fp8 where the part has it (Hopper, Ada, Blackwell, TPU7x); int8 on Ampere and T4.
    assert sheet["h100_sxm"].fp8 == pytest.approx(2 * sheet["h100_sxm"].bf16, rel=1e-3)
    assert sheet["l40s"].fp8 == pytest.approx(733e12)
    assert sheet["a100_80gb"].fp8 is None and sheet["a100_80gb"].int8 == 624e12
    assert sheet["t4"].int8 == 130e12 and sheet["t4"].fp8 is None
    # A chip that shows JAX two devices gets half a chip per row.
    assert sheet["tpu7x"].bf16 == pytest.approx(2307e12 / 2)
    assert sheet["tpu_v3"].memory_bytes == 16 * 2**30


def test_peak_flops_follows_dtype_and_precision():
    t4, h100, v5e = (hardware.DATASHEET[k] for k in ("t4", "h100_sxm", "tpu_v5e"))
    assert hardware.peak_flops(t4, Numerics("float16"))[0] == 65e12
    assert hardware.peak_flops(t4, Numerics("float32"))[0] == 8.1e12  # no tf32 on a T4
    assert hardware.peak_flops(h100, Numerics("float32"))[0] == pytest.approx(494.7e12)
    assert hardware.peak_flops(h100, Numerics("float32", "highest"))[0] == 67e12
    assert hardware.peak_flops(h100, Numerics("bfloat16"))[0] == pytest.approx(989.4e12)
    assert hardware.peak_flops(v5e, Numerics("float32", "highest"))[0] == pytest.approx(197e12 / 6)
    # The stated TPU assumption: float32 at default precision is one bf16 pass.
    assert hardware.peak_flops(v5e, Numerics("float32")) == (197e12, "bf16 MXU x1 passes")


def test_fits_in_picks_the_smallest_cache():
    caches = {"L1": 32 * 2**10, "L2": 2**20, "L3": 32 * 2**20}
    assert hardware.fits_in(1000, caches) == "L1"
    assert hardware.fits_in(2**20, caches) == "L2"
    assert hardware.fits_in(33 * 2**20, caches) == "memory"
    assert math.isfinite(hardware.DATASHEET["h200"].cache_bytes)
