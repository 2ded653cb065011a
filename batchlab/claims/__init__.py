"""The post's claims (REFERENCE 1): each with the seed configs whose records test it, the
function that judges them, and how its per-series verdicts combine.

A claim reads only records of its own seed configs (a record's `config_name`, set by
the `--config_name` of each configs/seed/*.flags) and of the configs it compares them
with (`reads`); an id measured by two seed configs stays two points.
"""

import dataclasses
from collections.abc import Callable

from batchlab import record
from batchlab.claims import conv, kv_cache, mlp, moe, pooling, resnet
from batchlab.claims import verdict as vd
from batchlab.claims.verdict import Verdict


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of the post and how batchlab tests it."""

    id: str
    text: str  # the claim in one line
    where: str  # where it can be tested (REFERENCE 1)
    seeds: tuple[str, ...]  # the seed configs (configs/seed/NAME.flags) that test it
    judge: Callable[[list[dict]], list[Verdict]]
    reads: tuple[str, ...] = ()  # other configs it compares with
    combine: Callable[[str, list[Verdict]], Verdict] = vd.combine
    predictable: bool = True  # whether the roofline predicts it on other devices
    plot_x: str = "batch"  # the axis its plot puts time against
    plot_filter: Callable[[dict], bool] = lambda r: True  # which of its records to plot
    lines: Callable[[list[dict]], list[str]] = lambda records: []  # more for the sweep
    headline: tuple[str, str] = ("", "")  # (a number its verdicts carry, how to name it)


def _post_mlp(r: dict) -> bool:
    return mlp.is_post_mlp(record.series_key(r))


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim(
            "C1",
            "ResNet-50 inference time on a CPU grows linearly with batch size from b=1",
            "CPU",
            ("resnet50",),
            resnet.c1,
            headline=("per_example_ratio", "time per example, largest batch / b=1"),
        ),
        Claim(
            "C2",
            "On a GPU (T4), b=1,2,3 cost the same, then time grows linearly",
            "GPU",
            ("resnet50",),
            resnet.c2,
            headline=("t3_over_t1", "t(3)/t(1)"),
        ),
        Claim(
            "C3",
            "MLP depth 8 width 1024, batch 1..512: time flat, then rises sharply near "
            "b≈128-256 on a T4 (a smaller knee on a CPU)",
            "any device",
            ("mlp",),
            mlp.c3,
            plot_filter=_post_mlp,
            headline=("knee", "knee (batch)"),
        ),
        Claim(
            "C4",
            "Every MLP width shows a knee; small widths stay flat over 1..512",
            "any device",
            ("mlp_widths",),
            mlp.c4,
            headline=("knee_w", "knee of the widest MLP"),
        ),
        Claim(
            "C5",
            "Critical batch = FLOPs/bandwidth ratio: '216' for a T4 (65 TFLOP/s, 300 GB/s); "
            "why not 108?",
            "arithmetic, checked against the measured knee",
            ("mlp",),
            mlp.c5,
            plot_filter=_post_mlp,
            headline=("knee_over_b_star", "knee / b*"),
        ),
        Claim(
            "C6",
            "Conv layers gain less from batching: their weights are reused across pixels",
            "any device",
            ("conv_layer",),
            conv.c6,
            reads=("mlp_widths", "mlp"),
            plot_filter=lambda r: r["model"] == "conv",
            headline=("gain", "per-example gain from batching"),
        ),
        Claim(
            "C7",
            "Pooling cost is linear in the number of pixels",
            "any device",
            ("pooling",),
            pooling.c7,
            plot_x="image_size",
            headline=("slope_b", "slope vs pixels, largest batch"),
        ),
        Claim(
            "C8",
            "Transformers behave like MLPs; with a KV cache 'the time taken by attention "
            "is minimal' (true only at short context: KV bytes grow with b·T)",
            "any device",
            ("decode", "kv_crossover"),
            kv_cache.c8,
            plot_x="context",
            lines=lambda records: [kv_cache.HEADER],
            headline=("kv_share_shortest", "KV share at the shortest context"),
        ),
        Claim(
            "C9",
            "MoE: the gate splits the batch across experts; token-choice gates tend to be "
            "biased; expert choice avoids it but decoders are 'forced' into token choice",
            "routing-balance experiments",
            ("moe_layer", "moe_decode", "moe_prefill", "train_router"),
            moe.c9,
            combine=moe.combine,
            predictable=False,
            plot_filter=record.is_point,
            lines=moe.shape_lines,
            headline=("biased", "biased gates"),
        ),
    )
}


FLAGFILES = {"train_router": "configs/moe/train_router.flags"}  # configs not in configs/seed


def flagfile(config_name: str) -> str:
    """The flagfile that runs a named config."""
    return FLAGFILES.get(config_name, f"configs/seed/{config_name}.flags")


def records_of(claim: Claim, records: list[dict]) -> list[dict]:
    """The successful records of the claim's seed configs and of those it reads."""
    names = set(claim.seeds) | set(claim.reads)
    return [r for r in records if r.get("status") == "ok" and r.get("config_name") in names]


def judge(claim: Claim, records: list[dict]) -> tuple[Verdict, list[Verdict]]:
    """The claim judged on one device's records: (the device's verdict, one per series)."""
    mine = records_of(claim, records)
    if not any(r.get("config_name") in claim.seeds for r in mine):
        seeds = ", ".join(flagfile(s) for s in claim.seeds)
        return Verdict(claim.id, vd.NOT_MEASURED, f"no results of {seeds}"), []
    parts = claim.judge(mine)
    return claim.combine(claim.id, parts), parts


def sweep_lines(records: list[dict]) -> list[str]:
    """What a sweep prints about the claims its records test: for each claim one of whose
    seed configs made them, each series' verdict and the claim's verdict."""
    names = {r.get("config_name") for r in records}
    out = []
    for claim in CLAIMS.values():
        if not names & set(claim.seeds):
            continue
        verdict, parts = judge(claim, records)
        out += claim.lines(records_of(claim, records))
        for p in parts:
            out += [p.line, *p.lines]
        if len(parts) != 1:
            out.append(verdict.line)
    return out
