"""Picks the fastest dispatch by measuring it, on the backend at hand (REFERENCE 5: XLA may
lower ragged_dot to dense work; measure before trusting it)."""

import jax

from batchlab import timing

# Brief: a choice between implementations that differ by tens of percent or more.
SPEC = timing.TimingSpec(
    target_spread=0.1, time_budget_s=0.3, min_reps=3, warmup_reps=1, warmup_s=0.0
)


def fastest(fns: dict, args: tuple, spec: timing.TimingSpec = SPEC) -> tuple[str, dict]:
    """(name of the fastest, {name: median seconds}) of `fns`, each called on `args`."""
    times = {}
    for name, fn in fns.items():
        compiled = timing.compile_ahead(fn, args).compiled
        stats = timing.time_calls(lambda i, c=compiled: jax.block_until_ready(c(*args)), spec)
        times[name] = stats.median_s
    return min(times, key=times.get), times
