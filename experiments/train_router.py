"""Trains a router with each balancing method and shows balance over training.

python -m experiments.train_router --flagfile=configs/moe/train_router.flags
"""

import os

from absl import flags, logging

from batchlab import train
from batchlab.moe import plots
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
OUT_DIR = flags.DEFINE_string("out_dir", "runs/train_router", "Output; a rerun resumes.")
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
    )
    train.validate(cfg)
    if DRY_RUN.value:
        print(
            f"{len(cfg.methods) * cfg.steps} points, {len(cfg.methods)} methods "
            f"({', '.join(cfg.methods)}) x {cfg.steps} steps of {cfg.tokens} tokens; "
            f"E={cfg.experts}, k={cfg.top_k}, {cfg.router}; out_dir {cfg.out_dir}"
        )
        return
    train.run(cfg)
    print(train.summary(train.load_metrics(cfg.out_dir)))
    if PLOT.value:
        print(f"plot: {plots.train_plot(cfg.out_dir)}")
    print(f"metrics: {os.path.join(cfg.out_dir, '<method>', train.METRICS)}")


if __name__ == "__main__":
    cli.run(main)
