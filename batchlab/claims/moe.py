"""C9: token-choice gates tend to be biased; expert choice avoids it (REFERENCE 5).

Each routing decision is counted once: token choice and dropless (and either priority)
make the same top-k picks, so they are one gate; expert choice is another. A gate is
biased when the CV of its load before capacity, at the largest token count measured,
lies above the 99th percentile of the null model: the CV of the same number of tokens
picking k of E experts uniformly at random, by simulation (balance.uniform_cv_null).
Trained routers (experiments.train_router, evaluated on fresh tokens after training)
are gates as the claim means them; a router trained with a balancing method is the
remedy, shown beside them and not counted as evidence either way. Expert choice must
leave every expert exactly C tokens (MaxVio after routing 0).

Balance depends on the router and its tokens, not on the device: C9 has no roofline
prediction.
"""

import functools

import numpy as np

import batchlab.claims.verdict as vd
from batchlab import analysis, record, roofline
from batchlab.claims.verdict import Verdict
from batchlab.moe import balance
from batchlab.moe import cost as moecost

BALANCING = ("load_balance", "loss_free")  # training methods meant to remove the bias
ALPHA = 0.01


@functools.lru_cache(maxsize=64)
def _null(tokens: int, k: int, experts: int, layers: int) -> np.ndarray:
    return balance.uniform_cv_null(tokens, k, experts, layers)


def bias_test(cv: float, tokens: int, k: int, experts: int, layers: int = 1) -> dict:
    """The measured CV against the null model: its median, 99th percentile and p-value."""
    null = _null(tokens, k, experts, layers)
    p = (np.searchsorted(null, cv, side="left") - len(null)) / -len(null)
    return {
        "cv": cv,
        "null_median": float(np.median(null)),
        "null_q99": float(np.quantile(null, 1 - ALPHA)),
        "p_value": max(float(p), 1 / len(null)),
        "tokens": tokens,
    }


def _gates(records: list[dict]) -> dict[tuple, list[dict]]:
    """Sweep points with balance metrics, one list per gate (router collapsed to what it
    picks, dispatch and capacity dropped), and router-evaluation records per method."""
    gates: dict[tuple, list[dict]] = {}
    for r in records:
        if record.is_point(r) and r.get("metrics", {}).get("balance"):
            p = r["params"]
            picks = "expert_choice" if p["router"] == "expert_choice" else "top-k"
            if p["router"] == "uniform":
                picks = "uniform"
            same = ("dispatch", "router", "priority", "capacity_factor", "routing_group")
            rest = tuple(sorted((k, v) for k, v in p.items() if k not in same))
            key = (r.get("config_name", ""), record.device_label(r), r["model"], picks, rest)
            gates.setdefault(key, []).append(r)
        elif r.get("kind") == record.ROUTER_EVAL and r.get("status") == "ok":
            key = (r.get("config_name", ""), "trained", "router", r["method"], ())
            gates.setdefault(key, []).append(r)
    return gates


def _balance(r: dict) -> tuple[list[dict], int]:
    """(per-layer balance metrics, tokens per routing group) of a record."""
    if r.get("kind") == record.ROUTER_EVAL:
        return [r["metrics"]], r["tokens"]
    return r["metrics"]["balance"], r["metrics"]["tokens"]


def _mean(layers: list[dict], name: str) -> float:
    return float(np.mean([m[name] for m in layers]))


def c9(records: list[dict]) -> list[Verdict]:
    """One verdict per gate: does it support the claim? (module docstring)."""
    out = []
    for (config, device, model, picks, rest), rs in sorted(_gates(records).items()):
        big = max(rs, key=lambda r: _balance(r)[1])
        layers, tokens = _balance(big)
        p = dict(rest) | big.get("params", {})
        e = len(layers[0]["load_before"])
        k = p.get("top_k") or int(round(sum(layers[0]["load_before"]) / tokens))
        trained = device == "trained"
        subject = (
            f"trained router, {picks}," if trained else f"{config or model} {picks} gate"
        ) + f" tokens={tokens} E={e} k={k}"
        if picks == "expert_choice":
            vio = _mean(layers, "max_vio_after")
            text = f"expert choice: MaxVio after routing {100 * vio:+.0f}% (balanced: 0)"
            out.append(
                vd.judged("C9", vio <= 1e-6, text, subject=subject, numbers={"max_vio_after": vio})
            )
            continue
        test = bias_test(_mean(layers, "cv"), tokens, k, e, len(layers))
        biased = test["p_value"] < ALPHA
        text = (
            f"load CV {test['cv']:.3f} against {test['null_median']:.3f} for uniform random "
            f"picks (99th percentile {test['null_q99']:.3f}, p = {test['p_value']:.2g}): "
            + ("biased" if biased else "not biased")
        )
        numbers = test | {
            "max_vio": _mean(layers, "max_vio"),
            "dropped_fraction": _mean(layers, "dropped_fraction"),
            "method": picks if trained else None,
            "gate": "trained" if trained else ("baseline" if picks == "uniform" else "random"),
        }
        out.append(vd.judged("C9", biased, text, subject=subject, numbers=numbers))
    if not out:
        why = "needs MoE points with balance metrics or router-training results"
        out = [Verdict("C9", vd.NOT_MEASURED, why)]
    return out


def combine(claim: str, parts: list[Verdict]) -> Verdict:
    """C9 from its gates: holds when some token-choice gate not trained to balance is
    biased and every expert-choice gate is balanced (module docstring)."""
    expert = [v for v in parts if v.subject.find("expert_choice") >= 0]
    gates = [
        v
        for v in parts
        if v.numbers.get("gate") in ("random", "trained")
        and v.numbers.get("method") not in BALANCING
    ]
    if not gates and not expert:
        return vd.combine(claim, parts)
    biased = [v for v in gates if v.status == vd.HOLDS]
    trained = [v for v in gates if v.numbers.get("gate") == "trained"]
    caveats = []
    if not trained:
        caveats.append("no trained router in these results (python -m experiments.train_router)")
    unbiased = [v for v in gates if v.status == vd.FAILS]
    if biased and unbiased:
        caveats.append(f"not biased: {', '.join(v.subject for v in unbiased)}")
    remedy = [v for v in parts if v.numbers.get("method") in BALANCING]
    if remedy:
        caveats.append(
            "trained to balance: "
            + ", ".join(f"{v.subject} CV {v.numbers['cv']:.3f}" for v in remedy)
        )
    bad_expert = [v for v in expert if v.status == vd.FAILS]
    pick = (trained and [v for v in trained if v in biased]) or biased
    summary = f"{pick[0].subject}: {pick[0].summary}" if pick else "no token-choice gate is biased"
    if bad_expert:
        summary += f"; {bad_expert[0].subject}: {bad_expert[0].summary}"
    elif expert:
        summary += "; expert choice balanced by construction"
    numbers = {"gates": len(gates), "biased": len(biased)}
    return vd.judged(claim, bool(biased) and not bad_expert, summary, caveats, "", numbers)


def shape_lines(records: list[dict]) -> list[str]:
    """REFERENCE 2.7's shape per MoE series: experts touched against uniform routing, the
    time relative to the smallest batch, and the critical batch."""
    lines = ["REFERENCE 2.7 (experts touched, then all E read, then compute near b*·E/k):"]
    for key, rs in analysis.series(records).items():
        rs = [r for r in rs if r.get("metrics", {}).get("balance")]
        if not rs:
            continue
        p, e, k = key.point, key.get("experts"), key.get("top_k")
        t1 = rs[0]["time"]["median_s"]
        steps = ", ".join(
            f"b={r['batch']}: {_mean(r['metrics']['balance'], 'experts_touched'):.1f} touched "
            f"(uniform {moecost.expected_touched(e, k, r['metrics']['tokens']):.1f}), "
            f"time {r['time']['median_s'] / t1:.2f}x"
            for r in rs
        )
        ceilings = roofline.Ceilings(**rs[-1]["ceilings"])
        closed = moecost.critical_batch_estimate(
            ceilings.peak_flops, ceilings.bandwidth, p, key.numerics
        )
        knee = analysis.fit_knee(*analysis.times(rs))
        chosen = "/".join(sorted({r["metrics"]["dispatch"]["chosen"] for r in rs}))
        lines.append(
            f"  {key.label}: {steps}; all {e} experts read from about "
            f"{moecost.tokens_to_touch_all(e, k)} tokens; compute-bound near {closed:.0f} "
            f"tokens (b*·E/(k·cf)), critical batch {roofline.fmt_batch(record.b_star(rs[-1]))}; "
            f"knee {knee.text()}; dispatch {chosen}"
        )
    return lines if len(lines) > 1 else []
