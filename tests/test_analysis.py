"""The knee test, b* from stored costs, median precision and series keys, against curves
and numbers worked out by hand."""

import numpy as np
import pytest

from batchlab import analysis, record, roofline
from batchlab.cost import Cost

B = 2.0 ** np.arange(10)  # 1..512, the post's batches


@pytest.mark.parametrize("knee", [4.0, 24.0, 100.0])
def test_a_noisy_roofline_knee_is_found_where_it_is(knee):
    rng = np.random.default_rng(0)
    t = np.maximum(1.0, B / knee) * np.exp(rng.normal(0, 0.02, B.size))
    fit = analysis.fit_knee(B, t)
    assert fit.found, fit.reason
    assert fit.batch == pytest.approx(knee, rel=0.15)
    assert fit.slope_after == pytest.approx(1.0, abs=0.1) and abs(fit.slope_before) < 0.1
    assert fit.p_value < analysis.ALPHA


def test_the_predicted_h100_curve_has_no_knee_inside_1_to_512():
    """The fault of the first round: the roofline of the post's MLP on an H100 (tf32, fp32
    weights) is bandwidth-bound over 1..512 (b* = 697), yet the old fit put a knee at 221.
    Its time is (W + a·b)/BW with W = 33.6 MB of weights and a = 65.5 kB of activations
    per example: it bends, but its log-log slope reaches only 0.5 by b = 512."""
    w, a = 8 * (1024 * 1024 + 1024) * 4, 8 * 2 * 1024 * 4
    fit = analysis.fit_knee(B, (w + a * B) / 3.35e12)
    assert not fit.found
    assert "not linearly" in fit.reason and fit.slope_after < analysis.LINEAR_SLOPE


def test_power_laws_rarely_get_a_knee_and_real_knees_always_do():
    rng = np.random.default_rng(1)
    false = [
        analysis.fit_knee(B, B**slope * np.exp(rng.normal(0, noise, B.size))).found
        for slope in (0.0, 0.3, 0.5, 0.7, 0.85, 1.0)
        for noise in (0.03, 0.1)
        for _ in range(50)
    ]
    assert np.mean(false) <= 0.05
    found = [
        analysis.fit_knee(B, np.maximum(1, B / k) * np.exp(rng.normal(0, 0.1, B.size))).found
        for k in (4, 16, 64)
        for _ in range(50)
    ]
    assert all(found)


def test_curves_without_a_knee_say_why():
    flat = analysis.fit_knee(B, 1e-3 * (1 + 0.01 * np.sin(B)))
    assert not flat.found and "one power law" in flat.reason
    linear = analysis.fit_knee(B, 1e-3 * B)
    assert not linear.found and "slope 1.00 fits as well" in linear.reason
    sqrt = analysis.fit_knee(B, 1e-3 * B**0.5)
    assert not sqrt.found and "slope 0.50" in sqrt.reason
    three = analysis.fit_knee([1, 4, 16], [1.0, 1.0, 3.0])  # the smoke sweep's three points
    assert not three.found and three.reason == "needs 5+ batch sizes, has 3"


def test_a_knee_needs_more_than_timing_noise():
    """A 3% step in a flat curve is not a knee, however clean the numbers."""
    assert not analysis.fit_knee(B, np.where(B > 20, 1.03, 1.0)).found


def test_b_star_from_stored_costs_equals_the_closed_form_for_affine_costs():
    ceilings = roofline.Ceilings(100e9, 20e9, "test")  # R = 5
    for m, s in ((1024, 4), (64, 4), (1024, 2)):

        def dense(b, m=m, s=s):
            return Cost(2 * b * m * m, s * m * m, s * b * 2 * m)

        batches = [1, 2, 4, 8, 16]
        costs = [dense(b) for b in batches]
        for acts in (False, True):
            exact = roofline.critical_batch(dense, ceilings, acts)
            derived = roofline.critical_batch_from_costs(batches, costs, ceilings, acts)
            assert derived == pytest.approx(exact, rel=1e-6), (m, s, acts)
    # Width 4 in fp32 never turns compute-bound with activations (D <= s_a·R = 20).
    narrow = [Cost(2 * b * 16, 64, 4 * b * 8) for b in (1, 2, 4)]
    assert roofline.critical_batch_from_costs([1, 2, 4], narrow, ceilings, True) is None


def _point(median, spread, count, **extra):
    return {"time": {"median_s": median, "spread": spread, "count": count} | extra}


def test_median_precision_decides_which_points_are_evidence():
    # 1.96 · 1.2533 · (0.3/1.349) / sqrt(n): ±1.4% at n = 1590 (the reference b=1 point),
    # ±26% at n = 4 (a prefill point of the reference run).
    many, few = _point(1e-3, 0.30, 1590), _point(1e-3, 0.30, 4)
    assert analysis.median_error(many) == pytest.approx(0.0137, rel=0.02)
    assert analysis.median_error(few) == pytest.approx(0.273, rel=0.02)
    assert analysis.usable([many, few]) == ([many], [few])
    bootstrapped = _point(1.0, 0.5, 3, ci95_s=[0.99, 1.01])
    assert analysis.median_error(bootstrapped) == pytest.approx(0.01)


def test_an_id_of_two_configs_is_two_series():
    base = {
        "kind": "sweep",
        "status": "ok",
        "model": "mlp",
        "params": {"depth": 8, "width": 1024, "input_width": 0},
        "dtype": "float32",
        "precision": "default",
        "provenance": {"device_kind": "cpu", "host": "h"},
    }
    rs = [
        base | {"batch": b, "config_name": c, "id": f"x/b={b}"}
        for c in ("mlp", "mlp_widths")
        for b in (1, 2)
    ]
    groups = analysis.series(rs)
    assert sorted(k.config for k in groups) == ["mlp", "mlp_widths"]
    assert all(len(v) == 2 for v in groups.values())
    assert next(iter(groups)).label == "mlp depth=8 input_width=0 width=1024 float32"
    assert record.series_key(rs[0], "width").get("batch") == 1
