"""The post's claims (REFERENCE 1), each with the families whose records test it and the
function that judges it; and records as the roofline predicts them, so that the same
functions give the verdict the roofline predicts on this device or a datasheet one."""

import dataclasses
from collections.abc import Callable

from batchlab import hardware, roofline, workloads
from batchlab import verdicts as vd
from batchlab.numerics import Numerics
from batchlab.verdicts import Verdict
from batchlab.workloads import conv_layer, decoder, mlp, moe, pooling, resnet


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of the post and how batchlab tests it."""

    id: str
    text: str  # the claim in one line
    where: str  # where it can be tested (REFERENCE 1)
    models: tuple[str, ...]  # families whose successful records it reads
    judge: Callable[[list[dict]], list[Verdict]] | None  # None: not judged yet
    seeds: tuple[str, ...] = ()  # the seed flagfiles that test it
    plot_x: str = "batch"  # the axis its plot puts time against
    plot_filter: Callable[[dict], bool] = lambda record: True  # which records to plot


def _post_mlp(record: dict) -> bool:
    return record["params"].get("depth") == 8 and record["params"].get("width") == 1024


MOE_MODELS = ("moe_layer", "moe_decode", "moe_prefill")

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim(
            "C1",
            "ResNet-50 inference time on a CPU grows linearly with batch size from b=1",
            "CPU",
            ("resnet50",),
            resnet.c1,
            ("resnet50",),
        ),
        Claim(
            "C2",
            "On a GPU (T4), b=1,2,3 cost the same, then time grows linearly",
            "GPU",
            ("resnet50",),
            resnet.c2,
            ("resnet50",),
        ),
        Claim(
            "C3",
            "MLP depth 8 width 1024, batch 1..512: time flat, then rises sharply near "
            "b≈128-256 on a T4 (a smaller knee on a CPU)",
            "any device",
            ("mlp",),
            mlp.c3,
            ("mlp",),
            plot_filter=_post_mlp,
        ),
        Claim(
            "C4",
            "Every MLP width shows a knee; small widths stay flat over 1..512",
            "any device",
            ("mlp",),
            mlp.c4,
            ("mlp_widths",),
        ),
        Claim(
            "C5",
            "Critical batch = FLOPs/bandwidth ratio: '216' for a T4 (65 TFLOP/s, 300 GB/s); "
            "why not 108?",
            "arithmetic, checked against the measured knee",
            ("mlp",),
            mlp.c5,
            ("mlp",),
            plot_filter=_post_mlp,
        ),
        Claim(
            "C6",
            "Conv layers gain less from batching: their weights are reused across pixels",
            "any device",
            ("conv",),
            conv_layer.c6,
            ("conv_layer",),
        ),
        Claim(
            "C7",
            "Pooling cost is linear in the number of pixels",
            "any device",
            ("pooling",),
            pooling.c7,
            ("pooling",),
            plot_x="image_size",
        ),
        Claim(
            "C8",
            "Transformers behave like MLPs; with a KV cache 'the time taken by attention "
            "is minimal' (true only at short context: KV bytes grow with b·T)",
            "any device",
            ("decode",),
            decoder.c8,
            ("decode", "kv_crossover"),
            plot_x="context",
        ),
        Claim(
            "C9",
            "MoE: the gate splits the batch across experts; token-choice gates tend to be "
            "biased; expert choice avoids it but decoders are 'forced' into token choice",
            "routing-balance experiments",
            MOE_MODELS,
            moe.c9,
            ("moe_layer", "moe_decode", "moe_prefill"),
        ),
    )
}


def register(claim: Claim) -> None:
    """Adds or replaces a claim, e.g. C9 once its families return Verdicts."""
    CLAIMS[claim.id] = claim


def judge(claim: Claim, records: list[dict]) -> tuple[Verdict, list[Verdict]]:
    """The claim judged on one device's records: (the device's verdict, one per series)."""
    mine = [r for r in records if r.get("status") == "ok" and r.get("model") in claim.models]
    if not mine:
        why = f"no successful {' / '.join(claim.models)} points"
        return Verdict(claim.id, vd.NOT_MEASURED, why), []
    if claim.judge is None:
        lines = []
        for model in dict.fromkeys(r["model"] for r in mine):
            lines += workloads.get(model).verdicts([r for r in mine if r["model"] == model])
        v = Verdict(
            claim.id,
            vd.NOT_JUDGED,
            f"{len(mine)} points measured, but no verdict function is registered for "
            f"{claim.id} yet; the families' own lines are shown",
            lines=tuple(lines),
        )
        return v, [v]
    parts = claim.judge(mine)
    return vd.combine(claim.id, parts), parts


def _time(seconds: float) -> dict:
    return {
        "median_s": seconds,
        "min_s": seconds,
        "mean_s": seconds,
        "iqr_s": 0.0,
        "count": 1,
        "spread": 0.0,
        "unstable": False,
    }


def synthetic_record(
    model: str,
    params: dict,
    batch: int,
    numerics: Numerics,
    ceilings: roofline.Ceilings,
    seconds: float | None = None,
    provenance: dict | None = None,
    overhead_s: float = 0.0,
    caches: dict | None = None,
) -> dict:
    """A record with the fields the verdicts and the report read, from the family's
    analytic cost: measured as `seconds`, or, when None, the roofline's lower bound."""
    cost = workloads.get(model).cost(params, batch, numerics)
    pred = roofline.predict(cost, ceilings, overhead_s)
    t = pred.lower_s if seconds is None else seconds
    params_id = ",".join(f"{k}={params[k]}" for k in sorted(params))
    return {
        "schema": 1,
        "status": "ok",
        "id": f"{model}/{params_id}/b={batch}",
        "model": model,
        "params": dict(params),
        "batch": batch,
        "dtype": numerics.dtype,
        "precision": numerics.precision,
        "weight_copies": 1,
        "provenance": dict(provenance or {}),
        "time": _time(t),
        "time_per_example_s": t / batch,
        "compile": {"lower_s": 0.0, "compile_s": 0.0},
        "cost": cost.as_dict(),
        "ceilings": ceilings.as_dict(),
        "empty_call_s": overhead_s,
        "prediction": pred.as_dict() | {"rel_error": t / pred.lower_s - 1},
        "attained": {
            "flops_per_s": cost.flops / t,
            "fraction_of_peak": cost.flops / t / ceilings.peak_flops,
            "bytes_per_s": cost.total_bytes / t,
            "fraction_of_bandwidth": cost.total_bytes / t / ceilings.bandwidth,
        },
        "working_set": {
            "bytes": cost.total_bytes,
            "fits_in": hardware.fits_in(cost.total_bytes, caches or {}),
        },
    }


def as_predicted(records: list[dict]) -> list[dict]:
    """The records with each time replaced by its roofline prediction on the device that
    measured it (its ceilings and empty-call floor): what the roofline expected there."""
    out = []
    for r in records:
        if r.get("status") != "ok":
            continue
        t = r["prediction"]["lower_s"]
        out.append(r | {"time": _time(t), "time_per_example_s": t / r["batch"]})
    return out


def on_datasheet(
    records: list[dict], spec: hardware.DeviceSpec, dtype: str | None = None
) -> list[dict]:
    """The records' grid as the roofline predicts it on a datasheet device, in the records'
    numerics or in `dtype` (no overhead roof: a datasheet gives none)."""
    out, seen = [], set()
    for r in records:
        numerics = Numerics(dtype or r["dtype"], r["precision"])
        key = (r["id"], numerics, r.get("weight_copies", 1))
        if r.get("status") != "ok" or key in seen:
            continue
        seen.add(key)
        ceilings = hardware.datasheet_ceilings(spec, numerics)
        prov = {"backend": spec.kind, "device_kind": spec.name, "host": "datasheet"}
        rec = synthetic_record(
            r["model"],
            r["params"],
            r["batch"],
            numerics,
            ceilings,
            provenance=prov,
            caches=hardware.cache_levels(spec.kind, spec),
        )
        out.append(rec | ({"metrics": r["metrics"]} if "metrics" in r else {}))
    return out
