"""Every router on the same tokens and router weights, across batch sizes (claim C9).

python -m experiments.routing --flagfile=configs/moe/routing_balance.flags
"""

import os

from absl import flags

from batchlab import timing
from batchlab.errors import ConfigError
from batchlab.moe import compare, plots
from batchlab.numerics import DTYPES, PRECISIONS, Numerics
from experiments import cli

_C = compare.CompareConfig(out_dir="")
_T = _C.timing_spec

ROUTERS = flags.DEFINE_list("routers", list(_C.routers), f"Routers: {', '.join(compare.ROUTERS)}.")
SKEWS = flags.DEFINE_list("skews", [str(s) for s in _C.skews], "Logit skews s (0: unbiased).")
BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", [str(b) for b in _C.batch_sizes], "Tokens per group."
)
WIDTH = flags.DEFINE_integer("width", _C.width, "Model width D.")
FFN_WIDTH = flags.DEFINE_integer("ffn_width", _C.ffn, "Hidden width F of each expert.")
FFN_KIND = flags.DEFINE_enum("ffn_kind", _C.ffn_kind, ["gated", "plain"], "SwiGLU or GELU experts.")
EXPERTS = flags.DEFINE_integer("experts", _C.experts, "Experts E.")
TOP_K = flags.DEFINE_integer("top_k", _C.top_k, "Experts per token k.")
CAPACITY_FACTOR = flags.DEFINE_float(
    "capacity_factor", _C.capacity_factor, "C = ceil(cf·k·B/E) slots per expert (> 0)."
)
TOKEN_MEAN = flags.DEFINE_float(
    "token_mean", _C.token_mean, "Scale of a direction every token shares (0: isotropic)."
)
DISPATCH = flags.DEFINE_string("dispatch", _C.dispatch, "slots, sorted, ragged or auto (timed).")
ROUTER_CHECKPOINT = flags.DEFINE_string(
    "router_checkpoint", "", "A router trained by experiments.train_router (OUT_DIR/<method>)."
)
DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Weights and activations dtype.")
PRECISION = flags.DEFINE_enum("precision", "default", list(PRECISIONS), "Matmul precision.")
TIME_BUDGET_S = flags.DEFINE_float("time_budget_s", _T.time_budget_s, "Seconds per point.")
TARGET_SPREAD = flags.DEFINE_float("target_spread", _T.target_spread, "IQR/median to stop at.")
MIN_REPS = flags.DEFINE_integer("min_reps", _T.min_reps, "Timed calls per point, at least.")
WEIGHT_COPIES = flags.DEFINE_integer("weight_copies", 1, "Rotate weight copies (cold reads).")
BANDWIDTH = flags.DEFINE_float("bandwidth", None, "Memory bandwidth in B/s; unset: calibrate.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and tokens.")
OUT_DIR = flags.DEFINE_string("out_dir", "runs/routing", "Results directory; a rerun resumes.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate and print the grid; write nothing.")
PLOT = flags.DEFINE_bool("plot", True, "Write the plots at the end.")


def _numbers(flag, cast):
    try:
        return tuple(cast(v) for v in flag.value)
    except ValueError:
        raise ConfigError(f"--{flag.name}: {flag.value} are not all numbers") from None


def main(argv):
    cfg = compare.CompareConfig(
        out_dir=OUT_DIR.value,
        routers=tuple(ROUTERS.value),
        skews=_numbers(SKEWS, float),
        batch_sizes=_numbers(BATCH_SIZES, int),
        width=WIDTH.value,
        ffn=FFN_WIDTH.value,
        ffn_kind=FFN_KIND.value,
        experts=EXPERTS.value,
        top_k=TOP_K.value,
        capacity_factor=CAPACITY_FACTOR.value,
        token_mean=TOKEN_MEAN.value,
        dispatch=DISPATCH.value,
        router_checkpoint=ROUTER_CHECKPOINT.value,
        numerics=Numerics(DTYPE.value, PRECISION.value),
        timing_spec=timing.TimingSpec(
            target_spread=TARGET_SPREAD.value,
            time_budget_s=TIME_BUDGET_S.value,
            min_reps=MIN_REPS.value,
        ),
        weight_copies=WEIGHT_COPIES.value,
        bandwidth=BANDWIDTH.value,
        seed=SEED.value,
    )
    compare.validate(cfg)
    if DRY_RUN.value:
        print(compare.grid_text(cfg))
        return
    records = compare.run(cfg)
    print(compare.summary(records))
    if PLOT.value:
        print(f"plots: {', '.join(plots.routing_plots(cfg.out_dir))}")
    print(f"results: {os.path.join(cfg.out_dir, compare.RESULTS)}")


if __name__ == "__main__":
    cli.run(main)
