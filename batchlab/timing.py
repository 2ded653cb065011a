"""The timing harness (REFERENCE 4): compile ahead of time, warm up, repeat until stable.

It times a compiled function and knows nothing of models.
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TimingSpec:
    """When to stop repeating: spread under target, or the time budget spent."""

    target_spread: float = 0.05  # IQR / median
    time_budget_s: float = 2.0  # per point, warm-up excluded
    min_reps: int = 10
    max_reps: int = 100_000
    warmup_reps: int = 2
    warmup_s: float = 0.05  # and at least this long
    # On an accelerator (for_platform): warm up until the last WARMUP_AGREE_CALLS calls
    # agree within this fraction (and warmup_s has passed), but never past warmup_max_s.
    # None: no agreement needed (a CPU: today's short warm-up).
    warmup_agree: float | None = None
    warmup_max_s: float = 2.0


# Warm-up on an accelerator (for_platform): a GPU idles while a point compiles and its
# clocks ramp up over the first calls, so it warms up for at least ACCELERATOR_WARMUP_S
# or until WARMUP_AGREE_CALLS consecutive calls agree within WARMUP_AGREE, whichever is
# longer (issue 15); WARMUP_MAX_S bounds calls whose times never agree.
ACCELERATOR_WARMUP_S = 0.2
WARMUP_AGREE = 0.05
WARMUP_AGREE_CALLS = 3
WARMUP_MAX_S = 2.0


def for_platform(spec: TimingSpec, platform: str) -> TimingSpec:
    """The spec with the warm-up sized for `platform` (a jax device's .platform): a CPU
    keeps the spec as it is; any other platform (gpu, tpu) warms up for at least
    ACCELERATOR_WARMUP_S and until consecutive calls agree (module constants above)."""
    if platform == "cpu":
        return spec
    return dataclasses.replace(
        spec,
        warmup_s=max(spec.warmup_s, ACCELERATOR_WARMUP_S),
        warmup_agree=spec.warmup_agree if spec.warmup_agree is not None else WARMUP_AGREE,
        warmup_max_s=max(spec.warmup_max_s, WARMUP_MAX_S),
    )


def calls_agree(times: Sequence[float], tolerance: float, calls: int = WARMUP_AGREE_CALLS) -> bool:
    """Whether the last `calls` times lie within `tolerance` of each other (max/min − 1)."""
    if len(times) < calls:
        return False
    last = times[-calls:]
    return min(last) > 0 and max(last) / min(last) - 1 <= tolerance


# The bootstrap interval of the median (median_interval).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Summary of repeated calls; times in seconds."""

    median_s: float
    iqr_s: float
    min_s: float
    mean_s: float
    count: int
    spread: float  # IQR / median
    unstable: bool  # spread above target when the budget ran out
    p10_s: float  # percentiles of the samples (linear interpolation, numpy's default):
    p90_s: float  # with fewer than 100 samples p99 lies between the two largest
    p99_s: float
    ci95_s: tuple[float, float]  # bootstrap 95% interval of the median (median_interval)
    warmup_calls: int = 0  # untimed calls before the samples, and how long they took
    warmup_s: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"ci95_s": list(self.ci95_s)}


@dataclasses.dataclass
class CompiledCall:
    """An AOT-compiled executable, with its compile times and XLA's own estimates."""

    compiled: Any
    lower_s: float
    compile_s: float
    cost_analysis: dict
    memory_analysis: dict


def fmt_time(t: float) -> str:
    """Seconds in the unit that reads best: 12.3 us, 4.56 ms, 1.23 s."""
    if t < 1e-3:
        return f"{t * 1e6:.3g} us"
    return f"{t * 1e3:.4g} ms" if t < 1 else f"{t:.3g} s"


def _spread(q1: float, median: float, q3: float) -> float:
    return float((q3 - q1) / median) if median > 0 else float("inf")


def spread_of(samples: Sequence[float]) -> float:
    """IQR / median: what the stopping rule checks."""
    return _spread(*np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75]))


def bootstrap_medians(
    samples: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """The medians of `resamples` bootstrap resamples (n samples drawn with replacement).

    Each resample's median is drawn directly, in O(1), with the same distribution as
    resampling n values and taking their median: of n uniform draws U (a resample picks
    sorted sample floor(n·U)), the j-th smallest is Beta(j, n + 1 − j), and the next one
    above it is U_(j) + (1 − U_(j))·Beta(1, n − j). So a point of 100,000 samples costs a
    sort, not 2000 × 100,000 draws. Seeded: the same samples give the same medians.
    """
    a = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(a)
    rng = np.random.default_rng(seed)
    j = (n + 1) // 2  # the median is the j-th smallest (odd n), or the mean of j and j + 1
    u = rng.beta(j, n + 1 - j, resamples)
    medians = a[np.minimum((u * n).astype(np.int64), n - 1)]
    if n % 2 == 0:
        above = u + (1 - u) * rng.beta(1, n - j, resamples)
        medians = (medians + a[np.minimum((above * n).astype(np.int64), n - 1)]) / 2
    return medians


def median_interval(
    samples: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the median: the (1 − confidence)/2 and
    (1 + confidence)/2 quantiles of the bootstrap medians (bootstrap_medians)."""
    tail = 100 * (1 - confidence) / 2
    medians = bootstrap_medians(samples, resamples, seed)
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(samples: Sequence[float], target_spread: float) -> TimingStats:
    """Median, IQR, min, mean, spread, percentiles and the median's bootstrap interval."""
    a = np.asarray(samples, dtype=np.float64)
    p10, q1, median, q3, p90, p99 = np.percentile(a, [10, 25, 50, 75, 90, 99])
    spread = _spread(q1, median, q3)
    return TimingStats(
        float(median),
        float(q3 - q1),
        float(a.min()),
        float(a.mean()),
        len(a),
        spread,
        spread > target_spread,
        float(p10),
        float(p90),
        float(p99),
        median_interval(a),
    )


def warm_up(
    call: Callable[[int], Any], spec: TimingSpec, agree=None, clock=time.perf_counter
) -> tuple[int, float]:
    """Untimed calls `call(0), call(1), ...` until the spec's warm-up is done; returns
    (calls made, seconds spent). At least `warmup_reps` calls and `warmup_s` seconds;
    with `warmup_agree`, also until the last calls agree (calls_agree), but stopping at
    `warmup_max_s` whatever they do. With `agree` (several processes), every process must
    make the same calls: without `warmup_agree` warm-up goes by count alone; with it, the
    decision is process 0's (`agree(done) -> done`), taken at counts all processes share
    (warmup_reps, then doubling)."""
    lockstep = agree is not None
    start, i, times = clock(), 0, []

    def done() -> bool:
        elapsed = clock() - start
        if i < spec.warmup_reps:
            return False
        if spec.warmup_agree is None:
            return lockstep or elapsed >= spec.warmup_s
        if elapsed >= spec.warmup_max_s:
            return True
        return elapsed >= spec.warmup_s and calls_agree(times, spec.warmup_agree)

    next_check = max(1, spec.warmup_reps)
    while True:
        if not lockstep:
            if done():
                break
        elif spec.warmup_agree is None:
            if i >= spec.warmup_reps:
                break
        elif i >= next_check:
            next_check *= 2
            if agree(done()):
                break
        t0 = clock()
        call(i)
        times.append(clock() - t0)
        i += 1
    return i, clock() - start


def time_calls(
    call: Callable[[int], Any], spec: TimingSpec, agree=None, clock=time.perf_counter
) -> TimingStats:
    """Times `call(i)` (which must block on its result) until the spread is small, after
    the spec's warm-up (warm_up; for_platform sizes it for a device).

    One sample is one call: the latency a caller of one batch sees. Host-device copies
    inside the timed loop are errors (jax_transfer_guard), so a stray transfer cannot
    hide in a time. With several processes, every one must make the same calls:
    `agree(stop) -> stop` then makes each stop decision process 0's, taken only at
    sample counts that all processes share. `clock` is for tests.
    """
    lockstep = agree is not None
    with jax.transfer_guard("disallow"):
        i, warmup_s = warm_up(call, spec, agree, clock)
        warmup_calls = i
        samples: list[float] = []
        deadline = clock() + spec.time_budget_s
        next_check = spec.min_reps
        while len(samples) < spec.max_reps:
            t0 = clock()
            call(i)
            samples.append(clock() - t0)
            i += 1
            late = clock() >= deadline and len(samples) >= min(3, spec.min_reps)
            if len(samples) >= next_check:
                # Checking every sample would cost O(n^2); check at geometric steps.
                next_check = max(next_check + 1, int(next_check * 1.25))
                stable = spread_of(samples) <= spec.target_spread
                if (agree or bool)(stable or late):
                    break
            elif late and not lockstep:
                break
    stats = summarize(samples, spec.target_spread)
    return dataclasses.replace(stats, warmup_calls=warmup_calls, warmup_s=warmup_s)


def _plain(obj) -> dict:
    """cost_analysis()/memory_analysis() as a JSON-able dict: they may be None, a list,
    a dict or an object with attributes, depending on backend and version (REFERENCE 4)."""
    if obj is None:
        return {}
    if isinstance(obj, (list, tuple)):  # one entry per device or program: add them up
        merged: dict = {}
        for item in obj:
            for k, v in _plain(item).items():
                merged[k] = merged.get(k, 0.0) + v
        return merged
    if isinstance(obj, dict):
        items = obj.items()
    else:
        items = ((k, getattr(obj, k)) for k in dir(obj) if not k.startswith("_"))
    return {str(k): float(v) for k, v in items if isinstance(v, (int, float))}


def _analysis(compiled, name: str) -> dict:
    try:
        return _plain(getattr(compiled, name)())
    except Exception as e:  # an aid, not an API: never let it fail a point
        return {"error": f"{type(e).__name__}: {e}"}


def compile_ahead(fn: Callable, args: Sequence, donate_argnums=()) -> CompiledCall:
    """jit(fn).lower(*args).compile(), timed in two parts."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return CompiledCall(
        compiled,
        t1 - t0,
        t2 - t1,
        _analysis(compiled, "cost_analysis"),
        _analysis(compiled, "memory_analysis"),
    )


def weight_copies(weights, n: int) -> list:
    """`n` distinct device buffers of the same weights, to rotate over so that each call
    reads cold weights (REFERENCE 2.9); the first is `weights` itself."""
    return [weights] + [jax.tree.map(lambda a: a.copy(), weights) for _ in range(n - 1)]


def empty_call_floor(spec: TimingSpec, device=None) -> TimingStats:
    """Latency of a jitted near-empty call on a tiny array: the overhead roof (REFERENCE 2.8)."""
    x = jax.device_put(jnp.ones((1,), jnp.float32), device)
    compiled = compile_ahead(lambda x: x + 1, (x,)).compiled
    return time_calls(lambda i: compiled(x).block_until_ready(), spec)
