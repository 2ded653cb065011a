"""Every router on the same tokens and router weights, across batch sizes and logit skews,
beside a dense yardstick: what imbalance costs (claim C9).

python -m experiments.routing --flagfile=configs/moe/routing_balance.flags

The sweep's own flags describe one moe_layer sweep (--routers, --skews, --token_means,
...); this script runs it and its variants as ordinary sweeps, each a resumable results
directory: OUT_DIR/routers (the flags as given, less DeepSeek-V3's layout), OUT_DIR/bpr
(token choice with batch-prioritized routing, priority confidence), OUT_DIR/deepseek
(--routers=deepseek_v3 with the flags' --shared_experts, --expert_groups, --top_groups
and --route_scales: DeepSeek-V3's layout, which the other variants leave at their
defaults) and OUT_DIR/dense (the ffn family: k dense FFNs of one expert's size, k =
--top_ks). All see the same tokens and router weights at a batch. Then it prints the
routing summary and writes the plots into OUT_DIR from those directories alone.
"""

import contextlib
import os
import sys

from absl import flags

from batchlab import dry_run, files, isolation, results, routing_report, sweep, workloads
from batchlab.errors import ConfigError
from experiments import cli, sweep_flags

F = sweep_flags.define()
flags.FLAGS.set_default("model", "moe_layer")
flags.FLAGS.set_default("out_dir", "runs/routing")
VARIANTS = ("routers", "bpr", "deepseek", "dense")
# DeepSeek-V3's layout: the deepseek variant's; the others run without it.
DEEPSEEK_FLAGS = ("shared_experts", "expert_groups", "top_groups", "route_scales")
VARIANT = flags.DEFINE_list(
    "variants",
    list(VARIANTS),
    "Sweeps to run, each into OUT_DIR/<name>: routers (the flags as given, less "
    "DeepSeek-V3's layout), bpr (token choice, priority confidence), deepseek "
    "(deepseek_v3 with --shared_experts, --expert_groups, --top_groups, --route_scales), "
    "dense (k dense FFNs, the yardstick).",
)
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Validate and print each sweep's grid; write nothing."
)
PLOT = flags.DEFINE_bool("plot", True, "Write the plots into OUT_DIR at the end.")


def _name(line: str) -> str:
    return line[2:].split("=", 1)[0]


def _args(lines: list[str], drop, **values) -> list[str]:
    """The resolved flags, less those in `drop`, with `values` set. --recalibrate is this
    script's to act on once, not a sweep's to repeat on every rerun of its flags.txt."""
    drop = {*drop, *values, "recalibrate", "norecalibrate"}
    return [ln for ln in lines if _name(ln) not in drop] + [f"--{k}={v}" for k, v in values.items()]


def variants(out_dir: str) -> dict[str, list[str]]:
    """name -> the sweep's arguments (a re-runnable flagfile's lines)."""
    lines = [ln for ln in sweep_flags.resolved_flagfile(F).splitlines() if ln.startswith("--")]
    mine = {p.flag for p in workloads.get("ffn").params}
    not_ffn = [name for name in F.family if name not in mine]
    base = sweep_flags.parse(_args(lines, DEEPSEEK_FLAGS))  # the flags, valid for any router
    copies = ",".join(str(k) for k in base.grid["top_k"])
    args = {
        "routers": _args(lines, DEEPSEEK_FLAGS, out_dir=os.path.join(out_dir, "routers")),
        "bpr": _args(
            lines,
            DEEPSEEK_FLAGS,
            routers="token_choice",
            priorities="confidence",
            out_dir=os.path.join(out_dir, "bpr"),
        ),
        "deepseek": _args(
            lines, (), routers="deepseek_v3", out_dir=os.path.join(out_dir, "deepseek")
        ),
        "dense": _args(
            lines, not_ffn, model="ffn", copies=copies, out_dir=os.path.join(out_dir, "dense")
        ),
    }
    return {name: args[name] for name in VARIANT.value}


def check() -> None:
    """Everything but the variants and the model comes from the sweep's flags."""
    for name in VARIANT.value:
        if name not in VARIANTS:
            raise ConfigError(f"--variants: {name!r} is not one of {', '.join(VARIANTS)}")
    if not VARIANT.value:
        raise ConfigError(f"--variants: give at least one of {', '.join(VARIANTS)}")
    if F.model.value != "moe_layer":
        raise ConfigError(
            f"--model={F.model.value}: experiments.routing sweeps moe_layer (and ffn for the "
            "yardstick); leave --model out"
        )
    if sweep_flags.shards(F)["num_shards"] > 1 or F.distributed.value or F.num_processes.value:
        raise ConfigError(
            "--num_shards, --distributed, --num_processes: run each sweep of the comparison "
            "with experiments.sweep for that (its flags.txt)"
        )


def main(argv):
    check()
    out_dir = F.out_dir.value
    args = variants(out_dir)
    configs = {name: sweep_flags.parse(a) for name, a in args.items()}
    for cfg in configs.values():
        sweep.check_out_dir(cfg, recalibrate=F.recalibrate.value)
    if DRY_RUN.value:
        for name, cfg in configs.items():
            print(f"{name}:\n{dry_run.grid_text(cfg)}")
        return
    files.make_dir(out_dir, "--out_dir")
    with contextlib.ExitStack() as held:  # OUT_DIR (its plots) and each sweep's directory
        held.enter_context(files.DirLock(out_dir, "--out_dir", "routing comparison"))
        locks = {name: held.enter_context(sweep.hold_out_dir(c)) for name, c in configs.items()}
        if F.recalibrate.value:
            for cfg in configs.values():
                sweep.forget_calibration(cfg)
        run_all(configs, args, locks)
        records = routing_report.load(out_dir, warn=print)
        print(routing_report.summary(records))
        if PLOT.value:
            print(f"plots: {', '.join(routing_report.plots(out_dir, records))}")
    for cfg in configs.values():
        print(f"results: {os.path.join(cfg.out_dir, results.RESULTS)}")


def run_all(configs: dict, args: dict, locks: dict) -> None:
    """Each variant's sweep in turn; the first calibration is the later ones' too."""
    names = list(configs)
    for i, name in enumerate(names):
        cfg = configs[name]
        text = "# resolved flags; re-run with python -m experiments.sweep --flagfile=THIS_FILE\n"
        text += "\n".join(sorted(args[name])) + "\n"
        print(f"\n{name}: {cfg.out_dir}", flush=True)
        if cfg.isolate:
            rc = isolation.run_supervised(cfg, text, lock=locks[name])
        else:
            rc = sweep.run_job(cfg, text)
        if rc:
            sys.exit(rc)
        # One calibration for the comparison: the later sweeps reuse this one's.
        measured = os.path.join(cfg.out_dir, results.CALIBRATION)
        for later in names[i + 1 :]:
            own = os.path.join(configs[later].out_dir, results.CALIBRATION)
            if os.path.exists(measured) and not os.path.exists(own):
                files.copy_atomic(measured, own)


if __name__ == "__main__":
    cli.run(main)
