"""The timing statistics: percentiles, and the seeded bootstrap interval of the median
against cases whose interval is known."""

import time

import numpy as np
import pytest
from scipy import stats

from batchlab import timing


def test_summarize_records_percentiles_and_the_interval():
    rng = np.random.default_rng(1)
    samples = rng.lognormal(0.0, 0.2, 500)
    s = timing.summarize(samples, target_spread=0.1)
    p10, p90, p99 = np.percentile(samples, [10, 90, 99])
    assert (s.p10_s, s.p90_s, s.p99_s) == (p10, p90, p99)
    assert s.p10_s < s.median_s < s.p90_s < s.p99_s
    lo, hi = s.ci95_s
    assert lo < s.median_s < hi
    assert s.as_dict()["ci95_s"] == [lo, hi]  # a JSON list in the record
    assert s.spread == timing.spread_of(samples)


def test_constant_samples_have_a_zero_width_interval():
    assert timing.median_interval([2.5] * 7) == (2.5, 2.5)
    assert timing.median_interval([3.0]) == (3.0, 3.0)


def test_the_interval_is_seeded():
    samples = np.random.default_rng(2).normal(1.0, 0.1, 200)
    assert timing.median_interval(samples) == timing.median_interval(samples.copy())
    assert timing.median_interval(samples, seed=1) != timing.median_interval(samples)


def _exact_bootstrap_quantile(n: int, q: float) -> int:
    """Of samples 0..n-1 (n odd), the q-quantile of the bootstrap median's distribution:
    the resample's median is <= j when at least (n+1)/2 of its n draws are <= j, so
    P(median <= j) = P(Binomial(n, (j+1)/n) >= (n+1)/2)."""
    j = np.arange(n)
    cdf = stats.binom.sf((n + 1) // 2 - 1, n, (j + 1) / n)
    return int(j[np.argmax(cdf >= q)])


def test_the_interval_is_the_exact_bootstrap_interval_of_a_known_case():
    n = 101
    lo, hi = timing.median_interval(np.arange(n, dtype=float), resamples=20_000)
    assert abs(lo - _exact_bootstrap_quantile(n, 0.025)) <= 1
    assert abs(hi - _exact_bootstrap_quantile(n, 0.975)) <= 1
    assert (_exact_bootstrap_quantile(n, 0.025), _exact_bootstrap_quantile(n, 0.975)) == (40, 60)


@pytest.mark.parametrize("n", [15, 16])
def test_drawing_the_median_directly_equals_resampling(n):
    """The same distribution as numpy resampling n values and taking their median."""
    samples = np.random.default_rng(n).exponential(1.0, n)
    rng = np.random.default_rng(0)
    brute = np.median(samples[rng.integers(0, n, (20_000, n))], axis=1)
    drawn = timing.bootstrap_medians(samples, 20_000)
    qs = [2.5, 10, 25, 50, 75, 90, 97.5]
    step = np.diff(np.sort(samples)).max()  # neighbouring order statistics
    assert np.all(np.abs(np.percentile(drawn, qs) - np.percentile(brute, qs)) <= step)
    # Every value a resample's median can take, and only those.
    s = np.sort(samples)
    possible = set(s) if n % 2 else {(a + b) / 2 for a in s for b in s}
    assert set(np.unique(drawn)) <= {float(v) for v in possible}


def test_the_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    for seed in range(300):
        samples = rng.normal(1.0, 0.2, 301)
        lo, hi = timing.median_interval(samples, seed=seed)
        covered += lo <= 1.0 <= hi
    assert 0.90 <= covered / 300 <= 0.99


def test_for_many_samples_the_interval_is_the_normal_approximation():
    # Half-width 1.96 · sqrt(pi/2) · sigma / sqrt(n) for a normal sample's median.
    samples = np.random.default_rng(4).normal(1.0, 0.1, 20_000)
    lo, hi = timing.median_interval(samples)
    want = 1.96 * np.sqrt(np.pi / 2) * 0.1 / np.sqrt(len(samples))
    assert (hi - lo) / 2 == pytest.approx(want, rel=0.15)


@pytest.mark.alone
def test_the_bootstrap_costs_well_under_20_ms_per_point():
    samples = np.random.default_rng(5).lognormal(0.0, 0.1, 100_000)  # max_reps
    start = time.perf_counter()
    timing.median_interval(samples)
    assert time.perf_counter() - start < 0.1  # ~5 ms measured; a loaded machine's margin
