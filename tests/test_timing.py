"""The timing harness: statistics, stopping rules, relative cost, transfer guard."""

import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchlab import timing


def test_summarize_matches_numpy():
    samples = [3.0, 1.0, 2.0, 10.0, 2.5]
    s = timing.summarize(samples, target_spread=0.1)
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    assert (s.median_s, s.iqr_s, s.min_s, s.count) == (med, q3 - q1, 1.0, 5)
    assert s.mean_s == pytest.approx(np.mean(samples))
    assert s.spread == pytest.approx((q3 - q1) / med) and s.unstable


def test_stops_at_target_spread_with_constant_samples():
    spec = timing.TimingSpec(
        target_spread=0.5, time_budget_s=10, min_reps=7, warmup_reps=0, warmup_s=0
    )
    calls = []

    def call(i):
        calls.append(i)
        time.sleep(0.003)  # long and steady next to the machine's jitter

    stats = timing.time_calls(call, spec)
    assert stats.count == 7 and not stats.unstable  # stable at the first check
    assert calls == list(range(7))


def test_stops_when_the_time_budget_runs_out():
    rng = np.random.default_rng(0)
    spec = timing.TimingSpec(
        target_spread=1e-9, time_budget_s=0.05, min_reps=3, warmup_reps=1, warmup_s=0
    )
    stats = timing.time_calls(lambda i: time.sleep(rng.uniform(0, 2e-3)), spec)
    assert stats.unstable and stats.spread > 1e-9
    assert 3 <= stats.count < 200


def test_known_relative_cost():
    """One call of f2 does exactly twice the dependent matmuls of f1: about twice the time.

    Rounds alternate between the two and keep each one's fastest call, so another
    process on the machine slows both alike instead of skewing the ratio.
    """
    x = jax.random.normal(jax.random.PRNGKey(0), (384, 384)) / 20

    def chain(n):
        def f(x):
            for _ in range(n):
                x = jnp.tanh(x @ x)
            return x

        return timing.compile_ahead(f, (x,)).compiled

    spec = timing.TimingSpec(target_spread=0.05, time_budget_s=0.3, min_reps=5)
    fastest = {8: float("inf"), 16: float("inf")}
    for _ in range(4):
        for n, f in ((8, chain(8)), (16, chain(16))):
            stats = timing.time_calls(lambda i, f=f: f(x).block_until_ready(), spec)
            fastest[n] = min(fastest[n], stats.min_s)
    assert 1.3 < fastest[16] / fastest[8] < 3.0  # 1.97 measured on a quiet machine


def test_transfer_inside_timed_region_is_an_error():
    host = np.ones(4, np.float32)
    f = timing.compile_ahead(lambda x: x + 1, (jnp.ones(4),)).compiled
    with pytest.raises(Exception, match="[Tt]ransfer"):
        timing.time_calls(lambda i: f(host).block_until_ready(), timing.TimingSpec(min_reps=1))


def test_compile_ahead_records_times_and_analyses():
    c = timing.compile_ahead(lambda a, b: a @ b, (jnp.ones((8, 16)), jnp.ones((16, 4))))
    assert c.compile_s > 0 and c.lower_s > 0
    assert c.cost_analysis["flops"] == 2 * 8 * 16 * 4
    assert c.memory_analysis["argument_size_in_bytes"] == 4 * (8 * 16 + 16 * 4)


def test_plain_tolerates_none_lists_dicts_and_objects():
    assert timing._plain(None) == {}
    assert timing._plain([{"flops": 2.0}, {"flops": 3.0, "x": "s"}]) == {"flops": 5.0}
    assert timing._plain({"flops": 1, "name": "a"}) == {"flops": 1.0}
    obj = types.SimpleNamespace(temp_size_in_bytes=7, label="x")
    assert timing._plain(obj) == {"temp_size_in_bytes": 7.0}


def test_empty_call_floor_is_small_and_positive():
    floor = timing.empty_call_floor(timing.TimingSpec(min_reps=20, time_budget_s=0.2))
    assert 0 < floor.median_s < 5e-3
