"""The workload interface: what a model family gives the engine.

A family turns (its parameters, a batch size, numerics) into a jittable function with
its inputs already on the device, and into an analytic cost. The engine knows nothing
else about models; a new family is one new module that exports a `Family`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from batchlab.cost import Cost
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


@dataclasses.dataclass
class Workload:
    """A function ready to compile and time: `fn(weights, *inputs)`.

    `weights` is kept apart so the harness can rotate copies of it (REFERENCE 2.9).
    When `next_inputs` is set, each call's inputs come from the previous call's
    outputs (a decode step that donates and returns its KV cache, say). `metrics` is
    extra per-point data (JSON values, e.g. an MoE layer's balance metrics) that the
    sweep records under "metrics". `place(mesh)` lays the workload out on a mesh its
    own way (a `distributed.Placed`), or returns None for the default: weights
    replicated, the batch split along "data".
    """

    fn: Callable
    weights: Any
    inputs: tuple
    cost: Cost
    donate_argnums: tuple[int, ...] = ()
    next_inputs: Callable[[Any, tuple], tuple] | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    place: Callable[[Any], Any] | None = None
    # Parameter values the build chose for itself (dispatch=auto: the fastest measured);
    # its cost, and the sweep's costs at other batches, are the point's at these values.
    resolved: dict = dataclasses.field(default_factory=dict)
    # The share of its conditionals' costlier branches a call runs (an MoE dispatch skips
    # experts and pieces no copy reached), for the per-kernel model; None: all of them.
    branch_fraction: float | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: its parameters, its analytic cost and its workload builder."""

    name: str
    description: str
    params: tuple[Param, ...]
    cost: Callable[[Point, int, Numerics], Cost]
    build: Callable[[Point, int, Numerics, Any], Workload]  # (point, batch, numerics, key)
    validate: Callable[[Point], None] = lambda point: None  # cross-parameter checks
    batch_unit: str = "examples"
    plot_axes: tuple[str, ...] = ()  # parameters to plot time against, besides batch
    mesh_axes: tuple[str, ...] = ("data",)  # mesh axes the family can shard along
    # Axes that split a parameter, which must then divide by the axis size:
    # {"expert": "experts"} puts E/n experts on each device.
    axis_params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # One device's cost on a mesh (point, batch, numerics, mesh spec) when the family lays
    # itself out its own way (Workload.place); None: the default layout's share.
    mesh_cost: Callable[[Point, int, Numerics, tuple], Cost | None] | None = None
    # Two small points (parameter overrides of the defaults) at which the tests check the
    # family's analytic cost against XLA (tests/test_families.py).
    examples: tuple[Mapping, ...] = ()

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)
