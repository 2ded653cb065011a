"""The reproduction's plan: which configs run, what fits the device's memory, and what
OUT_DIR/reproduce.json records of it. experiments.reproduce runs the plan.

Each step is a flagfile: a seed config's sweep (configs/seed/NAME.flags, or its quick
variant configs/quick/NAME.flags for the quick budget) or the router training
(configs/moe/train_router.flags), with the output directory OUT_DIR/NAME. The device is
probed once in a child process (`python -m batchlab.reproduce OUT_DIR DTYPE|PRECISION
...`), so the process that runs the plan never starts a backend, which on a GPU would
hold its memory: its memory decides which batch sizes fit, and its calibration is shared
by every sweep.
"""

import dataclasses
import json
import os
import subprocess
import sys

import batchlab
from batchlab import config as config_lib
from batchlab import hardware, results, workloads
from batchlab.errors import ConfigError
from batchlab.numerics import Numerics
from batchlab.report.sources import REPRODUCE

BUDGETS = ("quick", "full")
MACHINE = "machine.json"
TRAIN = "train_router"  # the step that trains routers for claim C9
MEMORY_FACTOR = 3.0  # a point needs this many times its analytic bytes (inputs, outputs,
# XLA temporaries, the host copy a build makes), plus BASE_BYTES for the process
BASE_BYTES = 1e9


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """What experiments.reproduce was asked to do."""

    out_dir: str
    budget: str = "quick"
    configs: tuple[str, ...] = ()  # seed names (or TRAIN); empty: all, and the training
    sweep_flags: tuple[str, ...] = ()  # added to every sweep, after its flagfile
    compilation_cache_dir: str | None = None  # None: OUT_DIR/compilation_cache; "": off
    predict_for: tuple[str, ...] = ()
    memory_bytes: float | None = None  # None: what the probe finds
    dry_run: bool = False
    command: str = ""


@dataclasses.dataclass
class Planned:
    """One step: the script, its flagfile and flags, and whether and how it fits."""

    name: str
    module: str  # experiments.sweep or experiments.train_router
    flagfile: str
    flags: list[str]  # after --flagfile: --sweep_flag ones, out_dir, cache
    sweep: config_lib.SweepConfig | None = None  # what the sweep's flags build
    status: str = "planned"  # then "skipped", "ran" or "failed"
    reason: str = ""
    dropped: list[str] = dataclasses.field(default_factory=list)
    need_bytes: float = 0.0
    wall_s: float | None = None

    def as_dict(self) -> dict:
        return {
            "module": self.module,
            "flagfile": self.flagfile,
            "extra_flags": self.flags,
            "status": self.status,
            "reason": self.reason,
            "dropped": self.dropped,
            "memory_need_bytes": self.need_bytes,
            "wall_s": self.wall_s,
        }

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, f"--flagfile={self.flagfile}", *self.flags]


def repo_root() -> str:
    """The directory holding configs/: the checkout batchlab runs from, else the cwd."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(batchlab.__file__)))
    return here if os.path.isdir(os.path.join(here, "configs", "seed")) else os.getcwd()


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
    """Seed configs: every *.flags in `seed_dir`, by name."""
    return sorted(f[: -len(".flags")] for f in os.listdir(seed_dir) if f.endswith(".flags"))


def flagfile_of(name: str, budget: str, root: str) -> str:
    """A seed's flagfile for a budget, relative to `root`: its quick variant when the
    budget is quick and there is one."""
    quick = os.path.join("configs", "quick", f"{name}.flags")
    if budget == "quick" and os.path.exists(os.path.join(root, quick)):
        return quick
    return os.path.join("configs", "seed", f"{name}.flags")


def plan(config: ReproduceConfig, root: str, parse) -> list[Planned]:
    """Every step to run, with its flags; `parse(args)` turns a sweep's arguments into
    its SweepConfig (absl's parsing, done by the caller). ConfigError for a bad request."""
    if config.budget not in BUDGETS:
        raise ConfigError(f"--budget={config.budget}: allowed are {', '.join(BUDGETS)}")
    for key in config.predict_for:
        hardware.by_key(key)
    names = seed_names(os.path.join(root, "configs", "seed"))
    for name in config.configs:
        if name not in [*names, TRAIN]:
            raise ConfigError(
                f"--configs: no seed config {name!r}; there are {', '.join(names)} and {TRAIN}"
            )
    out_dir = _from_root(config.out_dir, root)
    cache = config.compilation_cache_dir
    cache = os.path.join(out_dir, "compilation_cache") if cache is None else cache
    cache = cache and _from_root(cache, root)
    planned = []
    if not config.configs or TRAIN in config.configs:
        train = os.path.join("configs", "moe", f"{TRAIN}.flags")
        out = f"--out_dir={os.path.join(out_dir, TRAIN)}"
        planned.append(Planned(TRAIN, "experiments.train_router", train, [out]))
    for name in [n for n in config.configs or names if n != TRAIN]:
        flags = [
            # One device profile for every sweep, measured as they need its tables.
            f"--model_profile={os.path.join(out_dir, results.PROFILE)}",
            *config.sweep_flags,
            f"--out_dir={os.path.join(out_dir, name)}",
            *([f"--compilation_cache_dir={cache}"] if cache else []),
        ]
        if config.predict_for:
            flags.append(f"--predict_for={','.join(_targets(config.predict_for))}")
        flagfile = flagfile_of(name, config.budget, root)
        cfg = parse([f"--flagfile={os.path.join(root, flagfile)}", *flags])
        p = Planned(name, "experiments.sweep", flagfile, flags, cfg)
        p.need_bytes = max(memory_need(cfg).values())
        planned.append(p)
    return planned


def _targets(keys) -> list[str]:
    """Each device in the sweep's dtype, and a T4 in the post's fp16 too."""
    return [t for k in keys for t in ([k, "t4:float16"] if k == "t4" else [k])]


def _from_root(path: str, root: str) -> str:
    """`path` as the sweeps see it from `root`: relative when it lies below it (so the
    flags recorded in the results read the same on every machine), else absolute."""
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, root]) == root
    return os.path.relpath(path, root) if inside else path


def fit_memory(planned: list[Planned], available: float | None) -> None:
    """Drops the batch sizes whose points may not fit in `available` bytes (a sweep with
    none left is skipped); says which and why."""
    if not available:
        return
    gb = available / 1e9
    for p in planned:
        if p.sweep is None:
            continue
        need = memory_need(p.sweep)
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
    memory, source = stats.get("bytes_limit"), "the device's memory_stats bytes_limit"
    if memory is None and device.platform == "cpu":
        memory, source = host_memory_bytes(), "host RAM"
    elif memory is None:
        memory = spec and spec.memory_bytes
        source = "its datasheet row" if spec else "not reported by the device; no datasheet row"
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
        "memory_source": source,
        "ceilings": ceilings,
    }
    results.write_json_atomic(os.path.join(out_dir, MACHINE), info)


def ignore_binaries(out_dir: str, planned: list[Planned]) -> None:
    """A compilation cache inside OUT_DIR and the router checkpoints are listed in
    OUT_DIR/.gitignore, so results committed as a reference leave their binaries out."""
    caches = {
        f.split("=", 1)[1] for p in planned for f in p.flags if f.startswith("--compilation_cache")
    }
    root = repo_root()
    inside = [
        os.path.relpath(os.path.join(root, c), out_dir)
        for c in caches
        if os.path.commonpath([os.path.abspath(os.path.join(root, c)), out_dir]) == out_dir
    ]
    if any(p.name == TRAIN for p in planned):
        inside.append(f"{TRAIN}/*/checkpoints")
    if inside:
        with open(os.path.join(out_dir, ".gitignore"), "w") as f:
            f.write("".join(f"{c}/\n" for c in sorted(inside)))


def state(config: ReproduceConfig, machine: dict, planned: list[Planned], out_dir: str) -> dict:
    """What OUT_DIR/reproduce.json says; configs an earlier run did and this one does
    not (--configs picked fewer) keep their entries."""
    earlier = {}
    path = os.path.join(out_dir, REPRODUCE)
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


# What a dry run sizes the plan against, said beside the figure.
DRY_RUN_MEMORY = (
    "host RAM; device memory not probed: a dry run starts no backend, so on a GPU or TPU "
    "give --memory_gb"
)


def plan_text(
    planned: list[Planned], machine: dict, available, budget: str, source: str | None = None
) -> str:
    """The plan, headed by the device and the memory it was fitted to (and where that
    figure came from: the device, its datasheet row, host RAM, --memory_gb)."""
    mem = f"{available / 1e9:.1f} GB" if available else "unknown"
    mem += f" ({source})" if source else ""
    probed = machine.get("kind")
    lines = [f"device {probed}, memory {mem}; {budget} budget:"]
    for p in planned:
        lines.append(
            f"  {p.name:<14} {p.status if p.status == 'skipped' else 'runs':<8} "
            f"needs ~{p.need_bytes / 1e9:.1f} GB  {p.module} --flagfile={p.flagfile} "
            f"{' '.join(p.flags)}" + (f"  ({p.reason})" if p.reason else "")
        )
        lines += [f"      {d}" for d in p.dropped]
    return "\n".join(lines)


if __name__ == "__main__":
    _probe_main(sys.argv[1], [Numerics(*a.split("|")) for a in sys.argv[2:]] or [Numerics()])
