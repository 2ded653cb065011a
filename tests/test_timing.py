"""The timing harness: statistics, stopping rules, relative cost, transfer guard."""

import dataclasses
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


@pytest.mark.alone
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


@pytest.mark.alone
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


@pytest.mark.alone
def test_empty_call_floor_is_small_and_positive():
    floor = timing.empty_call_floor(timing.TimingSpec(min_reps=20, time_budget_s=0.2))
    assert 0 < floor.median_s < 5e-3


# ---- warm-up sized by platform ---------------------------------------------------------


def test_a_cpu_keeps_its_short_warm_up_and_accelerators_warm_up_longer():
    spec = timing.TimingSpec()
    assert timing.for_platform(spec, "cpu") == spec  # 2 calls or 50 ms, as always
    assert spec.warmup_agree is None and spec.warmup_s == 0.05
    for platform in ("gpu", "tpu"):
        acc = timing.for_platform(spec, platform)
        assert acc.warmup_s == timing.ACCELERATOR_WARMUP_S >= 0.2
        assert acc.warmup_agree == timing.WARMUP_AGREE and acc.warmup_reps == spec.warmup_reps
        assert acc.warmup_max_s >= acc.warmup_s
        assert (acc.time_budget_s, acc.min_reps) == (spec.time_budget_s, spec.min_reps)
    longer = timing.TimingSpec(warmup_s=1.5)
    assert timing.for_platform(longer, "gpu").warmup_s == 1.5  # a longer one is kept


class FakeClock:
    """A clock that only calls move: call(i) takes durations(i) seconds."""

    def __init__(self, durations):
        self.t, self.durations, self.calls = 0.0, durations, 0

    def __call__(self) -> float:
        return self.t

    def call(self, i):
        self.t += self.durations(i)
        self.calls += 1


GPU = timing.for_platform(timing.TimingSpec(warmup_reps=2), "gpu")


def test_warm_up_lasts_until_consecutive_calls_agree_when_that_is_longer():
    # A clock ramp: calls get faster for 40 calls (0.5 s in all), then steady at 5 ms.
    ramp = FakeClock(lambda i: 0.02 - 0.0004 * i if i < 40 else 0.005)
    calls, spent = timing.warm_up(ramp.call, GPU, clock=ramp)
    assert spent > 0.5 and 40 <= calls <= 43  # past the ramp: the first steady calls
    # No: a CPU's warm-up stops at 2 calls / 50 ms, in the middle of the ramp.
    ramp = FakeClock(lambda i: 0.02 - 0.0004 * i if i < 40 else 0.005)
    calls, spent = timing.warm_up(ramp.call, timing.TimingSpec(warmup_reps=2), clock=ramp)
    assert calls == 3 and spent < 0.1


def test_warm_up_lasts_its_time_when_calls_agree_sooner():
    steady = FakeClock(lambda i: 0.001)
    calls, spent = timing.warm_up(steady.call, GPU, clock=steady)
    assert spent == pytest.approx(0.2, abs=0.0015) and calls == pytest.approx(200, abs=1)


def test_warm_up_stops_at_its_limit_when_calls_never_agree():
    jumpy = FakeClock(lambda i: 0.01 if i % 2 else 0.02)
    calls, spent = timing.warm_up(jumpy.call, GPU, clock=jumpy)
    assert spent == pytest.approx(GPU.warmup_max_s, abs=0.021)


def test_warm_up_in_lockstep_takes_process_0s_decision_at_shared_counts():
    asked = []

    def agree(done):
        asked.append(done)
        return len(asked) == 3  # process 0 says stop at its third check

    steady = FakeClock(lambda i: 1.0)
    calls, _ = timing.warm_up(steady.call, GPU, agree=agree, clock=steady)
    assert calls == 8  # checks at 2, 4 and 8 calls
    # Without an agreement rule (a CPU spec), lockstep warm-up goes by count alone.
    steady = FakeClock(lambda i: 1.0)
    calls, _ = timing.warm_up(steady.call, timing.TimingSpec(), agree=agree, clock=steady)
    assert calls == 2 and len(asked) == 3


def test_time_calls_records_its_warm_up():
    steady = FakeClock(lambda i: 0.001)
    spec = dataclasses.replace(GPU, time_budget_s=0.05, min_reps=5, target_spread=0.5)
    stats = timing.time_calls(steady.call, spec, clock=steady)
    assert stats.warmup_calls == pytest.approx(200, abs=1)
    assert stats.warmup_s == pytest.approx(0.2, abs=0.0015)
    assert steady.calls == stats.warmup_calls + stats.count
    assert {"warmup_calls", "warmup_s"} <= set(stats.as_dict())
