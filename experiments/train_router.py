"""Trains a router with each balancing method, shows balance over training, and evaluates
each trained router on fresh tokens (claim C9). Each method is a resumable results
directory OUT_DIR/<method>: config.json, results.jsonl (train_step records, then one
router_eval record) and checkpoints/.

python -m experiments.train_router --flagfile=configs/moe/train_router.flags
"""

import os

from absl import flags, logging

from batchlab import files, results, routing_report, train
from experiments import cli

_C = train.TrainConfig(out_dir="")

METHODS = flags.DEFINE_list("methods", list(_C.methods), f"Of {', '.join(train.METHODS)}.")
WIDTH = flags.DEFINE_integer("width", _C.width, "Model width D.")
FFN_WIDTH = flags.DEFINE_integer("ffn_width", _C.ffn, "Hidden width F of each expert.")
FFN_KIND = flags.DEFINE_enum("ffn_kind", _C.ffn_kind, ["gated", "plain"], "SwiGLU or GELU experts.")
EXPERTS = flags.DEFINE_integer("experts", _C.experts, "Experts E.")
TOP_K = flags.DEFINE_integer("top_k", _C.top_k, "Experts per token k.")
ROUTER = flags.DEFINE_string("router", _C.router, "token_choice or dropless.")
CAPACITY_FACTOR = flags.DEFINE_float(
    "capacity_factor", _C.capacity_factor, "C = ceil(cf·k·B/E) slots per expert (> 0)."
)
CLUSTERS = flags.DEFINE_integer("clusters", _C.clusters, "Clusters of the synthetic task.")
SHARED = flags.DEFINE_float("shared", _C.shared, "Scale of the direction all tokens share.")
TOKENS = flags.DEFINE_integer("tokens", _C.tokens, "Tokens per step.")
STEPS = flags.DEFINE_integer("steps", _C.steps, "Training steps per method.")
LEARNING_RATE = flags.DEFINE_float("learning_rate", _C.learning_rate, "Adam learning rate.")
LB_WEIGHT = flags.DEFINE_float("lb_weight", _C.lb_weight, "α of the load-balancing loss.")
Z_WEIGHT = flags.DEFINE_float("z_weight", _C.z_weight, "β of the router z-loss.")
BIAS_RATE = flags.DEFINE_float("bias_rate", _C.bias_rate, "γ of the loss-free bias update.")
JITTER = flags.DEFINE_float("jitter", _C.jitter, "Router input jitter ε (0: none).")
SEED = flags.DEFINE_integer("seed", _C.seed, "Seed of the task, weights and batches.")
CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", _C.checkpoint_every, "Steps.")
STOP_AFTER = flags.DEFINE_integer(
    "stop_after", 0, "Stop after this many steps, as if interrupted (0: run to the end)."
)
EVAL_TOKENS = flags.DEFINE_integer(
    "eval_tokens", _C.eval_tokens, "Fresh task tokens each trained router is evaluated on."
)
CONFIG_NAME = flags.DEFINE_string(
    "config_name",
    "",
    "The name of this config (configs/moe/train_router.flags sets train_router, which the "
    "report's claim C9 reads).",
)
OUT_DIR = flags.DEFINE_string(
    "out_dir", "runs/train_router", "Results go to OUT_DIR/<method>; a rerun resumes."
)
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate and print the plan; write nothing.")
PLOT = flags.DEFINE_bool("plot", True, "Write OUT_DIR/train_router.png at the end.")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    cfg = train.TrainConfig(
        out_dir=OUT_DIR.value,
        methods=tuple(METHODS.value),
        width=WIDTH.value,
        ffn=FFN_WIDTH.value,
        ffn_kind=FFN_KIND.value,
        experts=EXPERTS.value,
        top_k=TOP_K.value,
        router=ROUTER.value,
        capacity_factor=CAPACITY_FACTOR.value,
        clusters=CLUSTERS.value,
        shared=SHARED.value,
        tokens=TOKENS.value,
        steps=STEPS.value,
        learning_rate=LEARNING_RATE.value,
        lb_weight=LB_WEIGHT.value,
        z_weight=Z_WEIGHT.value,
        bias_rate=BIAS_RATE.value,
        jitter=JITTER.value,
        seed=SEED.value,
        checkpoint_every=CHECKPOINT_EVERY.value,
        stop_after=STOP_AFTER.value,
        eval_tokens=EVAL_TOKENS.value,
        config_name=CONFIG_NAME.value,
    )
    train.validate(cfg)
    train.check_dirs(cfg)
    if DRY_RUN.value:
        print(
            f"{len(cfg.methods) * cfg.steps} steps, {len(cfg.methods)} methods "
            f"({', '.join(cfg.methods)}) x {cfg.steps} steps of {cfg.tokens} tokens, then "
            f"each trained router on {cfg.eval_tokens} fresh tokens; E={cfg.experts}, "
            f"k={cfg.top_k}, {cfg.router}; out_dir {cfg.out_dir}/<method>"
        )
        return
    files.make_dir(cfg.out_dir, "--out_dir")
    with files.DirLock(cfg.out_dir, "--out_dir", "router training"):
        train.run(cfg)
        records = routing_report.load(cfg.out_dir, warn=print)
        print(routing_report.train_summary(records))
        if PLOT.value:
            print(f"plot: {routing_report.train_plot(cfg.out_dir, records)}")
    print(f"results: {os.path.join(cfg.out_dir, '<method>', results.RESULTS)}")


if __name__ == "__main__":
    cli.run(main)
