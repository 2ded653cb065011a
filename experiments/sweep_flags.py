"""Flags of the sweep, shared by every experiment that runs one, and their config."""

import os

from absl import flags

from batchlab import config, distributed, timing, workloads
from batchlab.numerics import DTYPES, PRECISIONS

_T = timing.TimingSpec()

MODEL = flags.DEFINE_string(
    "model", "mlp", f"Model family: one of {', '.join(workloads.REGISTRY)}."
)
BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8"], "Batch sizes to sweep.")
DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Weights and activations dtype.")
PRECISION = flags.DEFINE_enum(
    "precision",
    "default",
    list(PRECISIONS),
    "Matmul precision (default runs fp32 as tf32/bf16 on GPU/TPU).",
)
OUT_DIR = flags.DEFINE_string("out_dir", "runs/sweep", "Results directory; a rerun resumes it.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and inputs.")
TARGET_SPREAD = flags.DEFINE_float(
    "target_spread", _T.target_spread, "Stop repeating once IQR/median is below this."
)
TIME_BUDGET_S = flags.DEFINE_float(
    "time_budget_s", _T.time_budget_s, "Stop repeating a point after this many seconds."
)
MIN_REPS = flags.DEFINE_integer("min_reps", _T.min_reps, "Timed calls per point, at least.")
WARMUP_REPS = flags.DEFINE_integer("warmup_reps", _T.warmup_reps, "Untimed calls first.")
WEIGHT_COPIES = flags.DEFINE_integer(
    "weight_copies", 1, "Rotate this many copies of the weights so calls read cold weights."
)
CEILINGS = flags.DEFINE_enum(
    "ceilings",
    "auto",
    list(config.CEILINGS),
    "Peaks from the datasheet row (auto: when the device has one) or measured by calibration.",
)
RECALIBRATE = flags.DEFINE_bool(
    "recalibrate",
    False,
    "Measure this machine's ceilings again instead of reusing OUT_DIR/calibration.json "
    "(e.g. the first run shared the machine with other work).",
)
PEAK_FLOPS = flags.DEFINE_float("peak_flops", None, "Override the peak, in FLOP/s.")
BANDWIDTH = flags.DEFINE_float("bandwidth", None, "Override the memory bandwidth, in B/s.")
PREDICT_FOR = flags.DEFINE_list(
    "predict_for", [], "Datasheet devices to predict for, e.g. t4,a100_80gb,h100_sxm."
)
FAMILY_MODULES = flags.DEFINE_list(
    "family_modules", [], "Python modules to import that register more families."
)
RETRY_FAILED = flags.DEFINE_bool("retry_failed", False, "Measure failed points again.")
ISOLATE = flags.DEFINE_bool(
    "isolate",
    True,
    "Measure in a child process, so a crashing point is recorded as failed and the sweep goes on.",
)
EXPLAIN = flags.DEFINE_bool("explain", False, "Print the critical-batch derivation.")
PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Write jax.profiler traces of the points at --profile_batches here."
)
PROFILE_BATCHES = flags.DEFINE_list(
    "profile_batches", [], "Batch sizes to trace with --profile_dir; empty: every point."
)
COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "Enable JAX's persistent compilation cache in this directory."
)

MESH = flags.DEFINE_string(
    "mesh", "", "Device mesh, e.g. data:8 or data:2,expert:4; empty: one device."
)
DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join JAX's distributed runtime with what JAX detects (TPU pod, "
    "SLURM); implied by --coordinator_address or --num_processes.",
)
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for several processes."
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process, 0..num_processes-1.")
DISTRIBUTED_TIMEOUT_S = flags.DEFINE_integer(
    "distributed_timeout_s", 60, "A dead process fails the others after this many seconds."
)
SHARD_INDEX = flags.DEFINE_integer(
    "shard_index",
    int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)),
    "This worker's share of the grid (default: $SLURM_ARRAY_TASK_ID).",
)
NUM_SHARDS = flags.DEFINE_integer(
    "num_shards",
    int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)),
    "Independent workers the grid is split over (default: $SLURM_ARRAY_TASK_COUNT); "
    "each writes OUT_DIR/shard-I-of-N; experiments.merge combines them.",
)


def _define_family_flags():
    """One list flag per family parameter, so any parameter can be a sweep axis."""
    defined = {}
    for family in workloads.REGISTRY.values():
        for p in family.params:
            if p.flag not in defined:
                defined[p.flag] = flags.DEFINE_list(
                    p.flag,
                    None,
                    f"[{family.name}] {p.help} Default {','.join(map(str, p.default))}.",
                )
    return defined


FAMILY_FLAGS = _define_family_flags()


def sweep_config() -> config.SweepConfig:
    """The validated config the flags describe; raises ConfigError."""
    out_dir = OUT_DIR.value
    if NUM_SHARDS.value > 1:
        out_dir = os.path.join(out_dir, f"shard-{SHARD_INDEX.value}-of-{NUM_SHARDS.value}")
    return config.build(
        MODEL.value,
        {name: flag.value for name, flag in FAMILY_FLAGS.items() if flag.value},
        BATCH_SIZES.value,
        out_dir=out_dir,
        numerics=config.Numerics(DTYPE.value, PRECISION.value),
        timing=timing.TimingSpec(
            target_spread=TARGET_SPREAD.value,
            time_budget_s=TIME_BUDGET_S.value,
            min_reps=MIN_REPS.value,
            warmup_reps=WARMUP_REPS.value,
        ),
        seed=SEED.value,
        weight_copies=WEIGHT_COPIES.value,
        ceilings=CEILINGS.value,
        peak_flops=PEAK_FLOPS.value,
        bandwidth=BANDWIDTH.value,
        predict_for=tuple(PREDICT_FOR.value),
        family_modules=tuple(FAMILY_MODULES.value),
        retry_failed=RETRY_FAILED.value,
        isolate=ISOLATE.value,
        explain=EXPLAIN.value,
        profile_dir=PROFILE_DIR.value,
        profile_batches=tuple(PROFILE_BATCHES.value),
        compilation_cache_dir=COMPILATION_CACHE_DIR.value,
        mesh=distributed.parse_mesh(MESH.value),
        distributed=DISTRIBUTED.value
        or COORDINATOR_ADDRESS.value is not None
        or NUM_PROCESSES.value is not None,
        coordinator_address=COORDINATOR_ADDRESS.value,
        num_processes=NUM_PROCESSES.value,
        process_id=PROCESS_ID.value,
        distributed_timeout_s=DISTRIBUTED_TIMEOUT_S.value,
        shard_index=SHARD_INDEX.value,
        num_shards=NUM_SHARDS.value,
    )


def resolved_flagfile() -> str:
    """The flags of this module as a flagfile that re-runs the same sweep."""
    lines = [
        f.serialize()
        for f in flags.FLAGS.get_flags_for_module(__name__)
        if f.value is not None and f.serialize()
    ]
    return "# resolved flags; re-run with --flagfile=THIS_FILE\n" + "\n".join(sorted(lines)) + "\n"
