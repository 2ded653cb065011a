"""Picks the fastest implementation by measuring it, on the backend at hand (REFERENCE 5: XLA
may lower ragged_dot to dense work; measure before trusting it).

Each candidate is timed the way the sweep will time the point (issue 15): its own
weights (in the layout it takes, built before timing, never inside the call), rotated
over the sweep's weight copies (REFERENCE 2.9), after the sweep's warm-up for the
platform (timing.for_platform), with a shorter stopping rule (SPEC): the choice is between
implementations that differ by tens of percent or more. The sweep says how it will time
(`timed_like`, around a family's build); outside a sweep, one copy and the default
warm-up. With several processes, `decide` makes the choice process 0's, so every
process compiles the same program.
"""

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable

import jax

from batchlab import timing

# The stopping rule of a candidate's timing; its warm-up comes from the sweep's spec.
SPEC = timing.TimingSpec(
    target_spread=0.1, time_budget_s=0.3, min_reps=3, warmup_reps=1, warmup_s=0.0
)


@dataclasses.dataclass(frozen=True)
class Like:
    """How the sweep will time the point: its weight copies, its timing spec (whose
    warm-up the candidates get, sized for the platform), and with several processes a
    `decide(index) -> index` that returns process 0's choice."""

    weight_copies: int = 1
    spec: timing.TimingSpec = timing.TimingSpec()
    decide: Callable[[int], int] | None = None


_LIKE: contextvars.ContextVar[Like | None] = contextvars.ContextVar("autotune_like", default=None)


@contextlib.contextmanager
def timed_like(weight_copies: int, spec: timing.TimingSpec, decide=None):
    """Inside the block, fastest() times candidates as a sweep with these settings would."""
    token = _LIKE.set(Like(weight_copies, spec, decide))
    try:
        yield
    finally:
        _LIKE.reset(token)


def spec_for(like: Like, platform: str) -> timing.TimingSpec:
    """SPEC's stopping rule with the warm-up the sweep gives a point on `platform`."""
    sweep = timing.for_platform(like.spec, platform)
    return dataclasses.replace(
        SPEC,
        warmup_reps=sweep.warmup_reps,
        warmup_s=sweep.warmup_s,
        warmup_agree=sweep.warmup_agree,
        warmup_max_s=sweep.warmup_max_s,
    )


def _platform(inputs) -> str:
    leaves = [a for a in jax.tree.leaves(inputs) if isinstance(a, jax.Array)]
    return next(iter(leaves[0].devices())).platform if leaves else jax.default_backend()


def fastest(candidates: dict, inputs: tuple, like: Like | None = None) -> tuple[str, dict]:
    """(name of the fastest, what to record) of `candidates`, {name: (fn, weights)}, each
    called as fn(a copy of its weights, *inputs), timed as `like` says (default: as the
    enclosing timed_like block says). The record: chosen, candidates_s {name: median},
    candidates_ci95_s {name: [lo, hi]} and timed_as (weight copies, warm-up, platform)."""
    like = like or _LIKE.get() or Like()
    platform = _platform(inputs)
    spec = spec_for(like, platform)
    stats = {}
    for name, (fn, weights) in candidates.items():
        copies = timing.weight_copies(weights, like.weight_copies)
        compiled = timing.compile_ahead(fn, (weights, *inputs)).compiled

        def call(i, compiled=compiled, copies=copies):
            return jax.block_until_ready(compiled(copies[i % len(copies)], *inputs))

        stats[name] = timing.time_calls(call, spec)
        del copies, compiled, call  # one candidate's weight copies at a time
    names = list(stats)
    chosen = min(names, key=lambda n: stats[n].median_s)
    if like.decide is not None:
        chosen = names[like.decide(names.index(chosen))]
    return chosen, {
        "chosen": chosen,
        "candidates_s": {n: st.median_s for n, st in stats.items()},
        "candidates_ci95_s": {n: list(st.ci95_s) for n, st in stats.items()},
        "timed_as": {
            "weight_copies": like.weight_copies,
            "platform": platform,
            "warmup_reps": spec.warmup_reps,
            "warmup_s": spec.warmup_s,
            "warmup_agree": spec.warmup_agree,
        },
    }
