"""Error bars: each median's 95% interval in the table and on the plots, and a
difference called real only when two intervals separate."""

import numpy as np
import pytest
from conftest import synthetic
from matplotlib.collections import LineCollection
from test_plots import CPU, layout_problems

from batchlab import analysis, plotting, summary, timing
from batchlab.numerics import Numerics

MLP = {"depth": 2, "width": 32, "input_width": 0}


def point(batch: int, samples) -> dict:
    """An MLP record whose time is the summary of `samples`, as the sweep records it."""
    prov, ceilings = CPU
    r = synthetic("mlp", MLP, batch, Numerics(), ceilings, 1e-3, prov)
    stats = timing.summarize(samples, 0.05).as_dict()
    return r | {"time": stats, "time_per_example_s": stats["median_s"] / batch}


def noisy(median: float, n: int = 200, seed: int = 0):
    return np.random.default_rng(seed).normal(median, 0.05 * median, n)


def test_two_medians_differ_only_when_their_intervals_separate():
    a, far, near = (
        point(1, noisy(1e-3)),
        point(1, noisy(1.2e-3, seed=1)),
        point(1, noisy(1.005e-3, seed=2)),
    )
    assert analysis.compare(a, far).real and analysis.compare(far, a).real
    assert analysis.compare(a, far).ratio == pytest.approx(1.2, rel=0.02)
    assert not analysis.compare(a, near).real
    assert "within noise" in analysis.compare(a, near).text()
    assert analysis.compare(a, far).text().startswith("1.2")


def test_the_interval_is_the_recorded_one_or_the_normal_approximation():
    r = point(1, noisy(1e-3))
    assert analysis.interval(r) == tuple(r["time"]["ci95_s"])
    old = dict(r, time={k: v for k, v in r["time"].items() if k != "ci95_s"})
    lo, hi = analysis.interval(old)
    m = old["time"]["median_s"]
    half = analysis.median_error(old) * m
    assert half > 0 and (lo, hi) == pytest.approx((m - half, m + half), rel=1e-9)


def test_the_table_shows_each_interval_and_p99():
    r = point(4, noisy(2e-3))
    lo, hi = r["time"]["ci95_s"]
    text = summary.table([r])
    assert "95% CI ms" in text and "p99 ms" in text
    assert f"{lo * 1e3:.3f}-{hi * 1e3:.3f}" in text
    assert f"{r['time']['p99_s'] * 1e3:.3f}" in text
    old = dict(r, time={k: v for k, v in r["time"].items() if k not in ("ci95_s", "p99_s")})
    assert "~" in summary.table([old])  # an approximation, said so


def test_the_plot_draws_each_interval_as_an_error_bar():
    rs = [point(b, noisy(1e-3 * (1 + b / 8), seed=b)) for b in (1, 2, 4, 8, 16)]
    fig = plotting.figure(rs)
    assert layout_problems(fig) == []
    bars = [c for c in fig.findobj(LineCollection) if c.get_gid() == "ci95"]
    assert len(bars) == 2  # per call and per example
    per_call = sorted(bars[0].get_segments(), key=lambda s: s[0][0])
    for r, seg in zip(rs, per_call):
        lo, hi = sorted(seg[:, 1])
        assert (lo, hi) == pytest.approx([v * 1e3 for v in r["time"]["ci95_s"]])
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "95% CI of the median" in texts
