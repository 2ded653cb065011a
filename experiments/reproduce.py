"""Every claim of the post checked in one command: runs the seed configs that fit this
machine, then writes OUT_DIR/REPORT.md with its plots.

python -m experiments.reproduce --out_dir=runs/repro              # quick budget
python -m experiments.reproduce --out_dir=runs/repro_full --budget=full
"""

import sys

from absl import flags

from batchlab import report, reproduce
from experiments import cli

OUT_DIR = flags.DEFINE_string(
    "out_dir", "runs/repro", "Results go to OUT_DIR/<config>, the report to OUT_DIR; reruns resume."
)
BUDGET = flags.DEFINE_enum(
    "budget",
    "quick",
    list(reproduce.BUDGETS),
    "quick: smaller grids and timing budgets; full: the seeds as they are.",
)
CONFIGS = flags.DEFINE_list(
    "configs", [], "Seed configs to run (names in configs/seed); empty: all of them."
)
SWEEP_FLAG = flags.DEFINE_multi_string(
    "sweep_flag",
    [],
    "A flag added to every sweep, e.g. --sweep_flag=--weight_copies=8 (repeatable).",
)
COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "JAX's persistent compilation cache; default OUT_DIR/compilation_cache, empty for none.",
)
PREDICT_FOR = flags.DEFINE_list(
    "predict_for", list(report.PREDICT_FOR), "Datasheet devices the report predicts for."
)
MEMORY_GB = flags.DEFINE_float(
    "memory_gb", None, "Memory to plan for, in GB; default what the device has available."
)
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the plan (what runs, what is skipped); run nothing."
)


def main(argv):
    path = reproduce.run(
        reproduce.ReproduceConfig(
            out_dir=OUT_DIR.value,
            budget=BUDGET.value,
            configs=tuple(CONFIGS.value),
            sweep_flags=tuple(SWEEP_FLAG.value),
            compilation_cache_dir=COMPILATION_CACHE_DIR.value,
            predict_for=tuple(PREDICT_FOR.value),
            memory_bytes=MEMORY_GB.value and MEMORY_GB.value * 1e9,
            dry_run=DRY_RUN.value,
            command="python -m experiments.reproduce " + " ".join(sys.argv[1:]),
        )
    )
    if path:
        print(f"report: {path}")


if __name__ == "__main__":
    cli.run(main)
