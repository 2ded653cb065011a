"""Flags of the sweep and the config they describe.

`define(flag_values)` defines them into any absl FlagValues: experiments.sweep into the
global FLAGS, experiments.reproduce into one of its own per seed flagfile, so that every
flagfile is parsed by absl and nothing else.
"""

import os
import types

from absl import flags

from batchlab import config, distributed, timing, workloads
from batchlab.errors import ConfigError
from batchlab.numerics import DTYPES, PRECISIONS
from experiments import cli

_T = timing.TimingSpec()

# Flags that are not a family's, in the order --help lists them; (name, kind, default, help).
GENERAL = (
    ("model", "string", "mlp", f"Model family: one of {', '.join(workloads.REGISTRY)}."),
    ("batch_sizes", "list", ["1", "2", "4", "8"], "Batch sizes to sweep."),
    (
        "config_name",
        "string",
        "",
        "The name of this config, set by each seed flagfile "
        "(configs/seed/NAME.flags sets NAME): the report judges each claim of the post on "
        "the results of its own seed configs.",
    ),
    ("dtype", "enum", "float32", "Weights and activations dtype."),
    (
        "precision",
        "enum",
        "default",
        "Matmul precision (default runs fp32 as tf32/bf16 on GPU/TPU).",
    ),
    ("out_dir", "string", "runs/sweep", "Results directory; a rerun resumes it."),
    ("seed", "integer", 0, "Seed of the random weights and inputs."),
    ("target_spread", "float", _T.target_spread, "Stop repeating once IQR/median is below this."),
    ("time_budget_s", "float", _T.time_budget_s, "Stop repeating a point after this many seconds."),
    ("min_reps", "integer", _T.min_reps, "Timed calls per point, at least."),
    ("warmup_reps", "integer", _T.warmup_reps, "Untimed calls first."),
    (
        "weight_copies",
        "integer",
        1,
        "Rotate this many copies of the weights so calls read cold weights.",
    ),
    (
        "rounds",
        "integer",
        1,
        "Measure the grid this many times, interleaved (every point once per round, rounds "
        "in alternating order); each point's time is the median of its rounds' medians.",
    ),
    (
        "ceilings",
        "enum",
        "auto",
        "Peaks from the datasheet row (auto: when the device has one) or measured by calibration.",
    ),
    (
        "recalibrate",
        "bool",
        False,
        "Measure this machine's ceilings again instead of reusing "
        "OUT_DIR/calibration.json (e.g. the first run shared the machine with other work).",
    ),
    ("peak_flops", "float", None, "Override the peak, in FLOP/s."),
    ("bandwidth", "float", None, "Override the memory bandwidth, in B/s."),
    (
        "predict_for",
        "list",
        [],
        "Datasheet devices to predict each point for, in the sweep's "
        "dtype or another: t4,t4:float16,h100_sxm. Stored in each record; the report predicts "
        "from them.",
    ),
    (
        "model_profile",
        "string",
        "auto",
        "The per-kernel model's device profile: auto "
        "(OUT_DIR/profile.json, each table measured the first time a point needs it; "
        "--recalibrate measures it again), off, or a profile file several sweeps share.",
    ),
    ("family_modules", "list", [], "Python modules to import that register more families."),
    ("retry_failed", "bool", False, "Measure failed points again."),
    (
        "isolate",
        "bool",
        True,
        "Measure in a child process, so a crashing point is recorded "
        "as failed and the sweep goes on.",
    ),
    ("explain", "bool", False, "Print the critical-batch derivation."),
    (
        "profile_dir",
        "string",
        None,
        "Write jax.profiler traces of the points at --profile_batches here.",
    ),
    ("profile_batches", "list", [], "Batch sizes to trace with --profile_dir; empty: every point."),
    (
        "compilation_cache_dir",
        "string",
        None,
        "Enable JAX's persistent compilation cache in this directory.",
    ),
    ("mesh", "string", "", "Device mesh, e.g. data:8 or data:2,expert:4; empty: one device."),
    (
        "distributed",
        "bool",
        False,
        "Join JAX's distributed runtime with what JAX detects (TPU "
        "pod, SLURM); implied by --coordinator_address or --num_processes.",
    ),
    ("coordinator_address", "string", None, "host:port of process 0, for several processes."),
    ("num_processes", "integer", None, "Processes in the job."),
    ("process_id", "integer", None, "This process, 0..num_processes-1."),
    (
        "distributed_timeout_s",
        "integer",
        60,
        "A dead process fails the others after this many seconds.",
    ),
    (
        "shard_index",
        "integer",
        None,
        "This worker's share of the grid, 0..num_shards-1 (unset: $SLURM_ARRAY_TASK_ID, else 0).",
    ),
    (
        "num_shards",
        "integer",
        None,
        "Independent workers the grid is split over (unset: $SLURM_ARRAY_TASK_COUNT, else "
        "1); each writes OUT_DIR/shard-I-of-N; experiments.merge combines them.",
    ),
    (
        "point_timeout_s",
        "float",
        1800.0,
        "A point still measuring after this many seconds is killed and recorded as failed "
        "(timeout), and the sweep goes on; 0: no limit. Needs --isolate: a point measured "
        "in the sweep's own process is not limited.",
    ),
)
# Where --shard_index and --num_shards come from when not given: (variable, default).
SHARD_VARIABLES = {
    "shard_index": ("SLURM_ARRAY_TASK_ID", 0),
    "num_shards": ("SLURM_ARRAY_TASK_COUNT", 1),
}
ENUMS = {"dtype": list(DTYPES), "precision": list(PRECISIONS), "ceilings": list(config.CEILINGS)}


def family_flag_uses() -> dict[str, list[tuple[str, workloads.Param]]]:
    """flag name -> (family, parameter) for every family that takes it."""
    uses: dict[str, list] = {}
    for family in workloads.REGISTRY.values():
        for p in family.params:
            uses.setdefault(p.flag, []).append((family.name, p))
    return uses


def define(fv: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
    """Defines the sweep's flags in `fv`; returns their holders by name, the family flags
    under `.family`. A family flag several families share says what it means and its
    default for each of them."""
    holders = {}
    for name, kind, default, help_ in GENERAL:
        define_flag = getattr(flags, f"DEFINE_{kind}")
        extra = {"enum_values": ENUMS[name]} if kind == "enum" else {}
        holders[name] = define_flag(name=name, default=default, help=help_, flag_values=fv, **extra)
    family = {}
    for flag, fams in family_flag_uses().items():
        by_meaning: dict[tuple, list[str]] = {}
        for name, p in fams:
            by_meaning.setdefault((p.help, p.default), []).append(name)
        text = " ".join(
            f"[{', '.join(names)}] {help_} Default {','.join(map(str, default))}."
            for (help_, default), names in by_meaning.items()
        )
        family[flag] = flags.DEFINE_list(flag, None, text, flag_values=fv)
    return types.SimpleNamespace(**holders, family=family, flag_values=fv)


def help_groups(fv: flags.FlagValues) -> list[tuple[str, list[str]]]:
    """What --help shows of these flags (experiments.cli asks): the general ones, then one
    group per family with that family's own defaults, choices and minimum."""
    title = "sweep flags (then each family's; a flag --model does not take is an error):"
    groups = [(title, [cli.flag_entry(fv[name]) for name, *_ in GENERAL if name in fv])]
    for family in workloads.REGISTRY.values():
        entries = [
            cli.entry(p.flag, p.help, p.default, choices=p.choices, minimum=p.minimum)
            for p in family.params
            if p.flag in fv
        ]
        if entries:
            groups.append((f"family {family.name}: {family.description}", entries))
    return groups


def _family_grid(f: types.SimpleNamespace) -> dict[str, list[str]]:
    """The family flags given, refusing any that the chosen model does not take."""
    model = f.model.value
    mine = {p.flag for p in workloads.get(model).params}
    for name, holder in f.family.items():
        if holder.value and name not in mine:
            owners = [n for n, _ in family_flag_uses().get(name, ())]
            raise ConfigError(
                f"--{name}: not a parameter of --model={model} (it belongs to "
                f"{', '.join(owners) or 'a family not imported'}); {model} takes "
                + ", ".join(f"--{flag}" for flag in sorted(mine))
            )
    return {name: h.value for name, h in f.family.items() if h.value}


def shards(f: types.SimpleNamespace) -> dict[str, int]:
    """--shard_index and --num_shards, each from SLURM's job-array variable when not given
    (read here, not at import: a bad value is one line naming the variable)."""
    out = {}
    for name, (variable, default) in SHARD_VARIABLES.items():
        value = getattr(f, name).value
        if value is None:
            raw = os.environ.get(variable, "").strip()
            try:
                value = int(raw) if raw else default
            except ValueError:
                raise ConfigError(
                    f"${variable}={raw!r}: not an integer (SLURM sets it for job arrays); "
                    f"unset it or give --{name}"
                ) from None
            if value < (0 if name == "shard_index" else 1):
                raise ConfigError(
                    f"${variable}={raw}: must be >= {0 if name == 'shard_index' else 1}; "
                    f"unset it or give --{name}"
                )
        out[name] = value
    if not 0 <= out["shard_index"] < out["num_shards"] and f.shard_index.value is None:
        raise ConfigError(
            f"$SLURM_ARRAY_TASK_ID={out['shard_index']}: must be in 0..{out['num_shards'] - 1} "
            f"for {out['num_shards']} shards (an array numbered from 0); give --shard_index"
        )
    return out


def check_tpu_slice(f: types.SimpleNamespace) -> None:
    """A host of a multi-host TPU slice must join the others (--distributed): alone it
    would hang or fail opening chips it shares with them. Read from the environment
    when the config is built, before any backend starts."""
    joins = f.distributed.value or f.coordinator_address.value or f.num_processes.value
    found = None if joins else distributed.multihost_tpu(os.environ)
    if found:
        raise ConfigError(
            f"{found}: this host is one of a multi-host TPU slice; add --distributed "
            "(and run the same command on every host)"
        )


def sweep_config(f: types.SimpleNamespace) -> config.SweepConfig:
    """The validated config the flags describe; raises ConfigError."""
    check_tpu_slice(f)
    out_dir, split = f.out_dir.value, shards(f)
    if split["num_shards"] > 1:
        out_dir = os.path.join(out_dir, f"shard-{split['shard_index']}-of-{split['num_shards']}")
    workloads.import_family_modules(f.family_modules.value)
    return config.build(
        f.model.value,
        _family_grid(f),
        f.batch_sizes.value,
        out_dir=out_dir,
        numerics=config.Numerics(f.dtype.value, f.precision.value),
        timing=timing.TimingSpec(
            target_spread=f.target_spread.value,
            time_budget_s=f.time_budget_s.value,
            min_reps=f.min_reps.value,
            warmup_reps=f.warmup_reps.value,
        ),
        seed=f.seed.value,
        weight_copies=f.weight_copies.value,
        rounds=f.rounds.value,
        ceilings=f.ceilings.value,
        peak_flops=f.peak_flops.value,
        bandwidth=f.bandwidth.value,
        predict_for=tuple(f.predict_for.value),
        model_profile=f.model_profile.value,
        config_name=f.config_name.value,
        family_modules=tuple(f.family_modules.value),
        retry_failed=f.retry_failed.value,
        isolate=f.isolate.value,
        explain=f.explain.value,
        profile_dir=f.profile_dir.value,
        profile_batches=tuple(f.profile_batches.value),
        compilation_cache_dir=f.compilation_cache_dir.value,
        mesh=distributed.parse_mesh(f.mesh.value),
        distributed=f.distributed.value
        or f.coordinator_address.value is not None
        or f.num_processes.value is not None,
        coordinator_address=f.coordinator_address.value,
        num_processes=f.num_processes.value,
        process_id=f.process_id.value,
        distributed_timeout_s=f.distributed_timeout_s.value,
        point_timeout_s=f.point_timeout_s.value,
        **split,
    )


def parse(args: list[str]) -> config.SweepConfig:
    """The config `python -m experiments.sweep ARGS` would build, parsed by absl into
    flag values of their own; ConfigError for a bad flag."""
    f = define(flags.FlagValues())
    try:
        f.flag_values(["sweep", *args])
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    return sweep_config(f)


def resolved_flagfile(f: types.SimpleNamespace) -> str:
    """The sweep's flags as a flagfile that re-runs the same sweep."""
    holders = [h for name, h in vars(f).items() if name not in ("family", "flag_values")]
    holders += list(f.family.values())
    lines = [f.flag_values[h.name].serialize() for h in holders if h.value is not None]
    # The shard it is, wherever that came from (the flags or SLURM's variables).
    lines += [f"--{name}={v}" for name, v in shards(f).items() if getattr(f, name).value is None]
    return (
        "# resolved flags; re-run with --flagfile=THIS_FILE\n"
        + "\n".join(sorted(line for line in lines if line))
        + "\n"
    )
