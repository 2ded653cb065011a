"""The workload interface: what a model family gives the engine.

A family turns (its parameters, a batch size, numerics) into a jittable function with
its inputs already on the device, and into an analytic cost. The engine knows nothing
else about models; a new family is one new module that exports a `Family`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from batchlab.errors import ConfigError
from batchlab.numerics import Numerics

Point = Mapping[str, Any]  # one value per family parameter, e.g. {"depth": 8, "width": 1024}


@dataclasses.dataclass(frozen=True)
class Param:
    """One family parameter; every parameter is a list flag, so any can be a sweep axis."""

    name: str  # key in a point
    flag: str  # the absl list flag that sets it, e.g. "widths"
    type: type  # int, float or str
    default: tuple
    help: str
    minimum: float | None = None
    choices: tuple | None = None

    def parse(self, raw: str):
        """Turns one flag value into this parameter's type, or raises ConfigError."""
        try:
            value = self.type(raw)
        except ValueError:
            raise ConfigError(f"--{self.flag}: {raw!r} is not a {self.type.__name__}") from None
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"--{self.flag}: {value} is below the minimum {self.minimum}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"--{self.flag}: {value!r} is not one of {', '.join(map(str, self.choices))}"
            )
        return value


@dataclasses.dataclass(frozen=True)
class Cost:
    """Analytic cost of one call: FLOPs and bytes moved, by kind (REFERENCE 2)."""

    flops: float
    weight_bytes: float
    activation_bytes: float
    state_bytes: float = 0.0  # e.g. a KV cache read and written

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.activation_bytes + self.state_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.total_bytes if self.total_bytes else float("inf")

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "total_bytes": self.total_bytes,
            "intensity": self.intensity,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cost":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass
class Workload:
    """A function ready to compile and time: `fn(weights, *inputs)`.

    `weights` is kept apart so the harness can rotate copies of it (REFERENCE 2.9).
    When `next_inputs` is set, each call's inputs come from the previous call's
    outputs (a decode step that donates and returns its KV cache, say).
    """

    fn: Callable
    weights: Any
    inputs: tuple
    cost: Cost
    donate_argnums: tuple[int, ...] = ()
    next_inputs: Callable[[Any, tuple], tuple] | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: its parameters, its analytic cost and its workload builder."""

    name: str
    description: str
    params: tuple[Param, ...]
    cost: Callable[[Point, int, Numerics], Cost]
    build: Callable[[Point, int, Numerics, Any], Workload]  # (point, batch, numerics, key)
    validate: Callable[[Point], None] = lambda point: None  # cross-parameter checks
    # What the sweep says about the post's claims: lines computed from the successful
    # records (dicts as in results.jsonl), e.g. "C1: time per example at b=32 ...".
    verdicts: Callable[[list[dict]], list[str]] = lambda records: []
    batch_unit: str = "examples"
    plot_axes: tuple[str, ...] = ()  # parameters to plot time against, besides batch

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)
