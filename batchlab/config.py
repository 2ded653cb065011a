"""The sweep config: a frozen dataclass built from flags, validated in one place."""

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping

from batchlab import distributed, hardware, workloads
from batchlab.errors import ConfigError
from batchlab.numerics import Numerics
from batchlab.timing import TimingSpec

CEILINGS = ("auto", "datasheet", "calibrated")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; the library never reads flags."""

    model: str
    grid: Mapping[str, tuple]  # family parameter -> the values to sweep
    batch_sizes: tuple[int, ...]
    out_dir: str
    numerics: Numerics = Numerics()
    timing: TimingSpec = TimingSpec()
    seed: int = 0
    weight_copies: int = 1  # >1 rotates weight copies so each call reads cold weights
    rounds: int = 1  # >1 measures the grid this many times, interleaved (record.ROUND)
    ceilings: str = "auto"  # where peak FLOP/s and bandwidth come from
    peak_flops: float | None = None  # overrides, FLOP/s and B/s
    bandwidth: float | None = None
    predict_for: tuple[str, ...] = ()  # datasheet targets to predict for: "t4", "t4:float16"
    config_name: str = ""  # the named (seed) config this sweep runs; claims read it
    # The per-kernel model's device profile: "auto" (OUT_DIR/profile.json, each table
    # measured the first time a point needs it), "off", or a profile file to share.
    model_profile: str = "auto"
    family_modules: tuple[str, ...] = ()  # user modules that register more families
    retry_failed: bool = False
    isolate: bool = True  # measure in a child process that a crash cannot take down
    point_timeout_s: float = 1800.0  # a point measured longer is killed (isolated); 0: none
    explain: bool = False
    profile_dir: str | None = None  # jax.profiler traces of selected points go here
    profile_batches: tuple[int, ...] = ()  # which batches to trace; empty: every point
    compilation_cache_dir: str | None = None  # JAX's persistent compilation cache
    mesh: tuple[tuple[str, int], ...] = ()  # e.g. (("data", 8),); () is one device
    distributed: bool = False  # join jax.distributed (several processes or hosts)
    coordinator_address: str | None = None  # host:port of process 0; None: detect
    num_processes: int | None = None
    process_id: int | None = None
    distributed_timeout_s: int = 60  # a dead process fails the others after this
    shard_index: int = 0  # this worker's share of the grid, of num_shards
    num_shards: int = 1

    def fingerprint(self) -> dict:
        """What makes two result sets comparable: a rerun into the same directory must
        match it. Grid values are left out, so a grid can be extended and resumed."""
        return (
            {
                "model": self.model,
                "dtype": self.numerics.dtype,
                "precision": self.numerics.precision,
                "seed": self.seed,
                "weight_copies": self.weight_copies,
                "family_modules": list(self.family_modules),
                "mesh": [list(axis) for axis in self.mesh],
            }
            | ({"config_name": self.config_name} if self.config_name else {})
            | ({"rounds": self.rounds} if self.rounds > 1 else {})
        )

    def prediction_targets(self) -> list[tuple[str, Numerics]]:
        """(datasheet key, numerics) of each --predict_for target."""
        return [hardware.prediction_target(t, self.numerics) for t in self.predict_for]

    def fingerprint_hash(self) -> str:
        blob = json.dumps(self.fingerprint(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["grid"] = {k: list(v) for k, v in self.grid.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> "SweepConfig":
        d = dict(d)
        d["numerics"] = Numerics(**d["numerics"])
        d["timing"] = TimingSpec(**d["timing"])
        d["grid"] = {k: tuple(v) for k, v in d["grid"].items()}
        d["mesh"] = tuple(tuple(axis) for axis in d["mesh"])
        for k in ("batch_sizes", "predict_for", "family_modules", "profile_batches"):
            d[k] = tuple(d[k])
        return cls(**d)


def _positive(flag: str, value, allow_zero=False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"--{flag}={value}: must be {'>= 0' if allow_zero else '> 0'}")


def _batch_list(flag: str, raw_values) -> list[int]:
    """Batch sizes from flag strings; each must be an integer >= 1."""
    batches = []
    for raw in raw_values:
        try:
            b = int(raw)
        except ValueError:
            raise ConfigError(f"--{flag}: {raw!r} is not an integer") from None
        if b < 1:
            raise ConfigError(f"--{flag}: {b} is not allowed; batch sizes must be >= 1")
        batches.append(b)
    return batches


def build(
    model: str, raw_grid: Mapping[str, list[str]], batch_sizes: list[str], **kwargs
) -> SweepConfig:
    """A validated SweepConfig from flag values; raises ConfigError naming the flag."""
    workloads.import_family_modules(kwargs.get("family_modules", ()))
    family = workloads.get(model)
    batches = _batch_list("batch_sizes", batch_sizes)
    if not batches:
        raise ConfigError("--batch_sizes: give at least one batch size")
    kwargs["profile_batches"] = tuple(
        _batch_list("profile_batches", kwargs.get("profile_batches", ()))
    )
    grid = {}
    for p in family.params:
        values = raw_grid.get(p.flag) or [str(v) for v in p.default]
        grid[p.name] = tuple(dict.fromkeys(p.parse(str(v).strip()) for v in values))
    config = SweepConfig(
        model=model, grid=grid, batch_sizes=tuple(dict.fromkeys(batches)), **kwargs
    )
    validate(config)
    return config


def validate(config: SweepConfig) -> None:
    """Checks that need the whole config; each failure names its flag."""
    family = workloads.get(config.model)
    t = config.timing
    _positive("target_spread", t.target_spread)
    _positive("time_budget_s", t.time_budget_s)
    _positive("min_reps", t.min_reps)
    _positive("warmup_reps", t.warmup_reps, allow_zero=True)
    _positive("weight_copies", config.weight_copies)
    _positive("rounds", config.rounds)
    if config.rounds > 1 and config.distributed:
        raise ConfigError("--rounds: one round only with --distributed (a single process decides)")
    _positive("peak_flops", config.peak_flops)
    _positive("point_timeout_s", config.point_timeout_s, allow_zero=True)
    _positive("num_shards", config.num_shards)
    _positive("bandwidth", config.bandwidth)
    if config.ceilings not in CEILINGS:
        raise ConfigError(f"--ceilings={config.ceilings}: allowed are {', '.join(CEILINGS)}")
    config.prediction_targets()
    if not config.model_profile:
        raise ConfigError("--model_profile: give auto, off, or a profile file's path")
    if config.config_name and not re.fullmatch(r"[A-Za-z0-9_.-]+", config.config_name):
        raise ConfigError(
            f"--config_name={config.config_name}: use letters, digits, '_', '.' and '-'"
        )
    distributed.check_axes(config.mesh, config.model, family.mesh_axes)
    n = distributed.size(config.mesh)
    for b in config.batch_sizes:
        if b % n:
            raise ConfigError(
                f"--batch_sizes: {b} does not split over the mesh's {n} devices; "
                f"use multiples of {n}"
            )
    if not 0 <= config.shard_index < config.num_shards:
        raise ConfigError(
            f"--shard_index={config.shard_index}: must be in "
            f"0..{config.num_shards - 1} for --num_shards={config.num_shards}"
        )
    if (
        config.num_processes is not None
        and config.process_id is not None
        and not (0 <= config.process_id < config.num_processes)
    ):
        raise ConfigError(
            f"--process_id={config.process_id}: must be in "
            f"0..{config.num_processes - 1} for --num_processes="
            f"{config.num_processes}"
        )
    for values in _product(config.grid):
        family.validate(values)
        for axis, n_axis in config.mesh:
            name = family.axis_params.get(axis)
            if name and values[name] % n_axis:
                raise ConfigError(
                    f"--{family.param(name).flag}: {values[name]} does not split over the "
                    f"mesh's {axis} axis of {n_axis} devices; use multiples of {n_axis}"
                )


def _product(grid: Mapping[str, tuple]) -> list[dict]:
    """Every combination of grid values, in flag order, the last axis fastest."""
    combos = [{}]
    for name, values in grid.items():
        combos = [c | {name: v} for c in combos for v in values]
    return combos


def grid_points(config: SweepConfig) -> list[tuple[dict, int]]:
    """(family point, batch) pairs in the order they are measured: batch fastest."""
    return [(p, b) for p in _product(config.grid) for b in sorted(config.batch_sizes)]
