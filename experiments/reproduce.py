"""Every claim of the post checked in one command: runs the seed configs that fit this
machine (and the router training of claim C9), then writes OUT_DIR/REPORT.md.

python -m experiments.reproduce --out_dir=runs/repro              # quick budget
python -m experiments.reproduce --out_dir=runs/repro_full --budget=full
"""

import os
import sys
import time

from absl import flags

from batchlab import files, report, reproduce, results
from batchlab.errors import ConfigError
from batchlab.report.sources import REPRODUCE
from experiments import cli, sweep_flags

OUT_DIR = flags.DEFINE_string(
    "out_dir", "runs/repro", "Results go to OUT_DIR/<config>, the report to OUT_DIR; reruns resume."
)
BUDGET = flags.DEFINE_enum(
    "budget",
    "quick",
    list(reproduce.BUDGETS),
    "quick: each seed's configs/quick/ variant (smaller grids and timing budgets); full: "
    "the seeds as they are.",
)
CONFIGS = flags.DEFINE_list(
    "configs", [], "Seed configs to run (names in configs/seed, or train_router); empty: all."
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
    "predict_for",
    list(report.PREDICT_FOR),
    "Datasheet devices each sweep predicts for (a T4 also in fp16) and the report shows.",
)
MEMORY_GB = flags.DEFINE_float(
    "memory_gb", None, "Memory to plan for, in GB; default what the device has available."
)
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the plan (what runs, what is skipped); run nothing."
)


def run(config: reproduce.ReproduceConfig) -> str | None:
    """Runs every step that fits, then writes OUT_DIR/REPORT.md; returns its path (None
    for a dry run, which prints the plan and writes nothing). OUT_DIR is locked for the
    whole run; each sweep locks its own directory below it."""
    started, root = time.perf_counter(), reproduce.repo_root()
    planned = reproduce.plan(config, root, sweep_flags.parse)
    out_dir = os.path.abspath(config.out_dir)
    numerics = list(dict.fromkeys(p.sweep.numerics for p in planned if p.sweep))
    check_state(out_dir)
    if config.dry_run:
        machine = {
            "kind": "not probed (dry run)",
            "memory_bytes": reproduce.host_memory_bytes(),
            "memory_source": reproduce.DRY_RUN_MEMORY,
        }
        _plan(config, planned, machine)
        return None
    files.make_dir(out_dir, "--out_dir")
    with files.DirLock(out_dir, "--out_dir", "reproduction") as lock:
        reproduce.ignore_binaries(out_dir, planned)
        machine = reproduce.probe(out_dir, numerics)
        _plan(config, planned, machine)
        return _steps(config, planned, machine, out_dir, started, lock)


def check_state(out_dir: str) -> None:
    """Writes nothing: what an earlier run left in OUT_DIR must be what one wrote."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out_dir={out_dir}: exists and is not a directory")
    way_out = "remove it or choose another --out_dir"
    files.read_state(os.path.join(out_dir, REPRODUCE), way_out)
    files.read_state(os.path.join(out_dir, reproduce.MACHINE), way_out)
    cal = os.path.join(out_dir, results.CALIBRATION)
    results.read_calibration(cal, f"{way_out} (it is measured again)")


def _plan(config, planned, machine) -> None:
    """Fits the plan to the memory there is, and prints it."""
    available = config.memory_bytes or machine.get("memory_bytes")
    source = "--memory_gb" if config.memory_bytes else machine.get("memory_source")
    reproduce.fit_memory(planned, available)
    print(reproduce.plan_text(planned, machine, available, config.budget, source))


def _steps(config, planned, machine, out_dir, started, lock) -> str:
    """Runs each planned step as a child process, then the report."""
    root = reproduce.repo_root()
    state = reproduce.state(config, machine, planned, out_dir)
    shared = os.path.join(out_dir, results.CALIBRATION)
    for n, p in enumerate(planned, 1):
        if p.status == "skipped":
            continue
        mine = os.path.join(out_dir, p.name)
        files.make_dir(mine, "--out_dir")
        own = os.path.join(mine, results.CALIBRATION)
        if p.sweep and os.path.exists(shared) and not os.path.exists(own):
            files.copy_atomic(shared, own)
        print(f"\n[{n}/{len(planned)}] {p.name}: {' '.join(p.command[2:])}", flush=True)
        t0 = time.perf_counter()
        rc = cli.run_child(p.command, cwd=root)
        p.wall_s = time.perf_counter() - t0
        p.status, p.reason = ("ran", "") if rc == 0 else ("failed", f"exit code {rc}")
        print(f"[{n}/{len(planned)}] {p.name}: {p.status} in {p.wall_s:.0f} s")
        state["configs"][p.name] = p.as_dict()
        state["wall_s"] = time.perf_counter() - started
        results.write_json_atomic(os.path.join(out_dir, REPRODUCE), state)
    state["wall_s"] = time.perf_counter() - started
    results.write_json_atomic(os.path.join(out_dir, REPRODUCE), state)
    path = report.build(
        report.ReportConfig((out_dir,), out_dir, config.predict_for, config.command),
        warn=lambda m: print(f"warning: {m}", file=sys.stderr),
        lock=lock,
    )
    print(f"{config.budget} budget: {time.perf_counter() - started:.0f} s in all, report included")
    return path


def main(argv):
    path = run(
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
