"""The reproduction: run the seed configs that fit this machine, then write the report.

Each seed flagfile (configs/seed/*.flags) runs as `python -m experiments.sweep
--flagfile=SEED [budget flags] [--sweep_flag ...] --out_dir=OUT_DIR/<name>`: later flags
win (REFERENCE 6), so the quick budget shrinks grids and timing budgets without editing
the seeds, and every sweep resumes on a rerun. The device is probed once in a child
process (this process never starts a backend, which on a GPU would hold its memory):
its memory decides which batch sizes fit, and its calibration is shared by every sweep.

`python -m batchlab.reproduce OUT_DIR DTYPE|PRECISION ...` is that probe.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import batchlab
from batchlab import config as config_lib
from batchlab import hardware, report, results, sources, workloads
from batchlab.errors import ConfigError
from batchlab.numerics import Numerics

BUDGETS = ("quick", "full")
MACHINE = "machine.json"  # what the probe found: device, memory, ceilings
MEMORY_FACTOR = 3.0  # a point needs this many times its analytic bytes (inputs, outputs,
# XLA temporaries, the host copy a build makes), plus BASE_BYTES for the process
BASE_BYTES = 1e9


@dataclasses.dataclass(frozen=True)
class Seed:
    """How the quick budget shrinks one seed config (flags added after its flagfile)."""

    name: str
    quick: tuple[str, ...]


_FAST = ("--time_budget_s=0.3", "--min_reps=5")
SEEDS: dict[str, Seed] = {
    s.name: s
    for s in (
        Seed("mlp", ("--time_budget_s=0.5",)),
        # Width 1024 comes from the mlp seed: C4 reads every MLP width of a device.
        Seed("mlp_widths", ("--widths=64,256,4096", *_FAST)),
        Seed("resnet50", ("--batch_sizes=1,2,3,4,8,16", "--time_budget_s=0.5", "--min_reps=5")),
        Seed("conv_layer", ("--batch_sizes=1,2,4,8,16", *_FAST)),
        Seed("pooling", ("--batch_sizes=1,4,16", *_FAST)),
        Seed("decode", ("--batch_sizes=1,4,16", *_FAST)),
        Seed("kv_crossover", ("--contexts=256,1024,4096", "--batch_sizes=1,4", *_FAST)),
        Seed("prefill", ("--prompt_lens=64", "--batch_sizes=1,2,4", *_FAST)),
        Seed("moe_layer", ("--batch_sizes=1,16,256", *_FAST)),
        Seed("moe_decode", ("--batch_sizes=1,8,64", *_FAST)),
        Seed("moe_prefill", ("--batch_sizes=1,4", *_FAST)),
    )
}
GENERIC_QUICK = _FAST  # for a seed flagfile SEEDS does not know (a new family's, say)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """What experiments.reproduce was asked to do."""

    out_dir: str
    budget: str = "quick"
    configs: tuple[str, ...] = ()  # seed names; empty: every configs/seed/*.flags
    sweep_flags: tuple[str, ...] = ()  # added to every sweep, after the budget's flags
    compilation_cache_dir: str | None = None  # None: OUT_DIR/compilation_cache; "": off
    predict_for: tuple[str, ...] = report.PREDICT_FOR
    memory_bytes: float | None = None  # None: what the probe finds
    dry_run: bool = False
    command: str = ""


@dataclasses.dataclass
class Planned:
    """One seed config: the sweep command, and whether and how it fits."""

    name: str
    flagfile: str
    flags: list[str]  # after --flagfile: budget, --sweep_flag, out_dir, cache
    status: str = "planned"  # then "skipped", "ran" or "failed"
    reason: str = ""
    dropped: list[str] = dataclasses.field(default_factory=list)
    need_bytes: float = 0.0
    numerics: Numerics = Numerics()
    wall_s: float | None = None

    def as_dict(self) -> dict:
        return {
            "flagfile": self.flagfile,
            "extra_flags": self.flags,
            "status": self.status,
            "reason": self.reason,
            "dropped": self.dropped,
            "memory_need_bytes": self.need_bytes,
            "wall_s": self.wall_s,
        }


def repo_root() -> str:
    """The directory holding configs/: the checkout batchlab runs from, else the cwd."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(batchlab.__file__)))
    return here if os.path.isdir(os.path.join(here, "configs", "seed")) else os.getcwd()


def read_flags(args, cwd: str) -> dict[str, str]:
    """--name=value pairs of `args` and of the flagfiles they name, nested ones included
    (paths from `cwd`, as absl reads them); the last of each wins, as for absl's scalar
    and list flags. Boolean --name / --noname forms are ignored."""
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            continue
        name, value = arg[2:].split("=", 1)
        if name == "flagfile":
            with open(os.path.join(cwd, value)) as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            out |= read_flags(lines, cwd)
        else:
            out[name] = value
    return out


def sweep_config(args, cwd: str, out_dir: str) -> config_lib.SweepConfig:
    """The SweepConfig that experiments.sweep would build from `args` (family and grid
    flags only: what the memory estimate needs); raises ConfigError."""
    flags = read_flags(args, cwd)
    modules = tuple(m for m in flags.get("family_modules", "").split(",") if m)
    workloads.import_family_modules(modules)
    family = workloads.get(flags.get("model", "mlp"))
    grid = {p.flag: flags[p.flag].split(",") for p in family.params if p.flag in flags}
    return config_lib.build(
        family.name,
        grid,
        flags.get("batch_sizes", "1,2,4,8").split(","),
        out_dir=out_dir,
        numerics=Numerics(flags.get("dtype", "float32"), flags.get("precision", "default")),
        weight_copies=int(flags.get("weight_copies", 1)),
        family_modules=modules,
    )


def memory_need(cfg: config_lib.SweepConfig) -> dict[int, float]:
    """batch -> bytes its largest point needs: MEMORY_FACTOR x its analytic bytes (every
    weight copy counted), plus BASE_BYTES. Conservative: a mesh would split it."""
    family, need = workloads.get(cfg.model), {}
    for point, batch in config_lib.grid_points(cfg):
        c = family.cost(point, batch, cfg.numerics)
        moved = c.total_bytes + c.weight_bytes * (cfg.weight_copies - 1)
        need[batch] = max(need.get(batch, 0.0), MEMORY_FACTOR * moved + BASE_BYTES)
    return need


def seed_names(seed_dir: str) -> list[str]:
    """Seed configs: the known ones in SEEDS order, then any other *.flags there."""
    found = sorted(f[: -len(".flags")] for f in os.listdir(seed_dir) if f.endswith(".flags"))
    return [n for n in SEEDS if n in found] + [n for n in found if n not in SEEDS]


def plan(config: ReproduceConfig, root: str) -> list[Planned]:
    """Every seed config to run, with its flags; raises ConfigError for a bad request."""
    if config.budget not in BUDGETS:
        raise ConfigError(f"--budget={config.budget}: allowed are {', '.join(BUDGETS)}")
    for key in config.predict_for:
        hardware.by_key(key)
    seed_dir = os.path.join(root, "configs", "seed")
    names = seed_names(seed_dir)
    for name in config.configs:
        if name not in names:
            raise ConfigError(f"--configs: no seed config {name!r}; there are {', '.join(names)}")
    out_dir = _from_root(config.out_dir, root)
    cache = config.compilation_cache_dir
    cache = os.path.join(out_dir, "compilation_cache") if cache is None else cache
    cache = cache and _from_root(cache, root)
    planned = []
    for name in config.configs or names:
        flagfile = os.path.relpath(os.path.join(seed_dir, f"{name}.flags"), root)
        budget = SEEDS[name].quick if name in SEEDS else GENERIC_QUICK
        flags = [
            *(budget if config.budget == "quick" else ()),
            *config.sweep_flags,
            f"--out_dir={os.path.join(out_dir, name)}",
            *([f"--compilation_cache_dir={cache}"] if cache else []),
        ]
        cfg = sweep_config([f"--flagfile={flagfile}", *flags], root, os.path.join(out_dir, name))
        p = Planned(name, flagfile, flags, numerics=cfg.numerics)
        p.need_bytes = max(memory_need(cfg).values())
        planned.append(p)
    return planned


def _from_root(path: str, root: str) -> str:
    """`path` as the sweeps see it from `root`: relative when it lies below it (so the
    flags recorded in the results read the same on every machine), else absolute."""
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, root]) == root
    return os.path.relpath(path, root) if inside else path


def fit_memory(planned: list[Planned], available: float | None, root: str) -> None:
    """Drops the batch sizes whose points may not fit in `available` bytes (a config
    with none left is skipped); says which and why."""
    if not available:
        return
    gb = available / 1e9
    for p in planned:
        cfg = sweep_config([f"--flagfile={p.flagfile}", *p.flags], root, "")
        need = memory_need(cfg)
        fits = sorted(b for b, n in need.items() if n <= available)
        if not fits:
            p.status = "skipped"
            p.reason = (
                f"its smallest point needs ~{min(need.values()) / 1e9:.1f} GB "
                f"(estimated), {gb:.1f} GB available"
            )
        elif len(fits) < len(need):
            big = sorted(set(need) - set(fits))
            p.dropped.append(
                f"batch sizes {','.join(map(str, big))} left out: they need up to "
                f"~{max(need[b] for b in big) / 1e9:.1f} GB (estimated), {gb:.1f} GB available"
            )
            p.flags.append(f"--batch_sizes={','.join(map(str, fits))}")
            p.need_bytes = max(need[b] for b in fits)


def host_memory_bytes() -> float | None:
    """MemAvailable from /proc/meminfo, else physical memory; None if neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def probe(out_dir: str, numerics: list[Numerics]) -> dict:
    """In a child process: the device, its memory, and its ceilings calibrated for each
    numerics into OUT_DIR/calibration.json (shared with the sweeps)."""
    cmd = [sys.executable, "-m", "batchlab.reproduce", out_dir]
    cmd += [f"{n.dtype}|{n.precision}" for n in numerics]
    proc = subprocess.run(cmd, cwd=repo_root())
    if proc.returncode:
        raise ConfigError(f"probing the device failed (exit code {proc.returncode})")
    with open(os.path.join(out_dir, MACHINE)) as f:
        return json.load(f)


def _probe_main(out_dir: str, numerics: list[Numerics]) -> None:
    import jax

    from batchlab import calibration

    device = jax.local_devices()[0]
    spec = hardware.lookup(device.device_kind)
    stats = device.memory_stats() or {}
    memory = stats.get("bytes_limit")
    if memory is None:
        memory = host_memory_bytes() if device.platform == "cpu" else spec and spec.memory_bytes
    ceilings = {}
    for n in numerics:
        print(f"calibrating {device.device_kind} for {n.dtype}, precision {n.precision}")
        c = calibration.cached(
            os.path.join(out_dir, results.CALIBRATION), device.device_kind, n, device
        )
        ceilings[f"{n.dtype}|{n.precision}"] = c.as_dict()
    info = {
        "kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "memory_bytes": memory,
        "ceilings": ceilings,
    }
    results.write_json_atomic(os.path.join(out_dir, MACHINE), info)


def run(config: ReproduceConfig, log=print) -> str | None:
    """Runs every seed config that fits, then writes OUT_DIR/REPORT.md; returns its path
    (None for a dry run, which prints the plan and writes nothing)."""
    started, root = time.perf_counter(), repo_root()
    planned = plan(config, root)
    out_dir = os.path.abspath(config.out_dir)
    numerics = list(dict.fromkeys(p.numerics for p in planned))
    if config.dry_run:
        machine = {"kind": "not probed (dry run)", "memory_bytes": host_memory_bytes()}
    else:
        os.makedirs(out_dir, exist_ok=True)
        _ignore_cache(out_dir, planned)
        machine = probe(out_dir, numerics)
    available = config.memory_bytes or machine.get("memory_bytes")
    fit_memory(planned, available, root)
    log(_plan_text(planned, machine, available, config.budget))
    if config.dry_run:
        return None
    state = _state(config, machine, planned, out_dir)
    for n, p in enumerate(planned, 1):
        if p.status == "skipped":
            continue
        mine = os.path.join(out_dir, p.name)  # absolute: this process's cwd may differ
        os.makedirs(mine, exist_ok=True)
        shared = os.path.join(out_dir, results.CALIBRATION)
        if os.path.exists(shared) and not os.path.exists(os.path.join(mine, results.CALIBRATION)):
            shutil.copy(shared, os.path.join(mine, results.CALIBRATION))
        cmd = [sys.executable, "-m", "experiments.sweep", f"--flagfile={p.flagfile}", *p.flags]
        log(f"\n[{n}/{len(planned)}] {p.name}: {' '.join(cmd[2:])}")
        sys.stdout.flush()  # before the sweep's own output
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=root).returncode
        p.wall_s = time.perf_counter() - t0
        p.status, p.reason = ("ran", "") if rc == 0 else ("failed", f"sweep exit code {rc}")
        log(f"[{n}/{len(planned)}] {p.name}: {p.status} in {p.wall_s:.0f} s")
        state["configs"][p.name] = p.as_dict()
        state["wall_s"] = time.perf_counter() - started
        results.write_json_atomic(os.path.join(out_dir, sources.REPRODUCE), state)
    state["wall_s"] = time.perf_counter() - started
    results.write_json_atomic(os.path.join(out_dir, sources.REPRODUCE), state)
    path = report.build(
        report.ReportConfig((out_dir,), out_dir, config.predict_for, config.command), warn=log
    )
    log(f"{config.budget} budget: {time.perf_counter() - started:.0f} s in all, report included")
    return path


def _ignore_cache(out_dir: str, planned: list[Planned]) -> None:
    """A compilation cache inside OUT_DIR is listed in OUT_DIR/.gitignore, so results
    committed as a reference leave its binaries out."""
    caches = {
        f.split("=", 1)[1] for p in planned for f in p.flags if f.startswith("--compilation_cache")
    }
    root = repo_root()
    inside = [
        os.path.relpath(os.path.join(root, c), out_dir)
        for c in caches
        if os.path.commonpath([os.path.abspath(os.path.join(root, c)), out_dir]) == out_dir
    ]
    if inside:
        with open(os.path.join(out_dir, ".gitignore"), "w") as f:
            f.write("".join(f"{c}/\n" for c in sorted(inside)))


def _state(config: ReproduceConfig, machine: dict, planned: list[Planned], out_dir: str) -> dict:
    """What OUT_DIR/reproduce.json says; configs an earlier run did and this one does
    not (--configs picked fewer) keep their entries."""
    earlier = {}
    path = os.path.join(out_dir, sources.REPRODUCE)
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f).get("configs", {})
    return {
        "command": config.command,
        "budget": config.budget,
        "device": machine,
        "wall_s": 0.0,
        "configs": earlier | {p.name: p.as_dict() for p in planned},
    }


def _plan_text(planned: list[Planned], machine: dict, available, budget: str) -> str:
    mem = f"{available / 1e9:.1f} GB" if available else "unknown"
    lines = [f"device {machine.get('kind')}, memory {mem}; {budget} budget:"]
    for p in planned:
        lines.append(
            f"  {p.name:<14} {p.status if p.status == 'skipped' else 'runs':<8} "
            f"needs ~{p.need_bytes / 1e9:.1f} GB  {p.flagfile} {' '.join(p.flags)}"
            + (f"  ({p.reason})" if p.reason else "")
        )
        lines += [f"      {d}" for d in p.dropped]
    return "\n".join(lines)


if __name__ == "__main__":
    _probe_main(sys.argv[1], [Numerics(*a.split("|")) for a in sys.argv[2:]] or [Numerics()])
