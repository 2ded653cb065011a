"""The routing comparison (claim C9): every router on the same tokens and the same router
weights, across batch sizes: load per expert, drops, balance metrics and time.

Routers: token_choice (capacity, first choices first), token_choice_bpr (capacity,
batch-prioritized), dropless, expert_choice, and uniform (each token picks k experts at
random: the balanced baseline). Each runs at every --skews value s, which adds the logit
offset s·(2e/(E−1) − 1) to expert e: a router biased on purpose, its last expert
favoured. The tokens may share a direction (--token_mean), as a transformer's hidden
states do; that alone biases a random router.

Results go to OUT_DIR/routing.jsonl, one line per (router, skew, batch) and one per
batch for the yardstick, k dense FFNs of one expert's size on the same tokens; the
printed summary answers: how much slower is a layer whose busiest expert gets X% more
than its share, per router, and how does that change with batch size?
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp

from batchlab import autotune, calibration, results, timing, train
from batchlab.errors import ConfigError
from batchlab.models import decoder as dec
from batchlab.models import moe as mm
from batchlab.moe import balance, dispatch
from batchlab.moe import cost as moecost
from batchlab.numerics import Numerics

RESULTS, CONFIG = "routing.jsonl", "config.json"
ROUTERS = {  # name -> (router, priority)
    "token_choice": ("token_choice", "choice"),
    "token_choice_bpr": ("token_choice", "confidence"),
    "dropless": ("dropless", "choice"),
    "expert_choice": ("expert_choice", "choice"),
    "uniform": ("token_choice", "choice"),
}


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    out_dir: str
    routers: tuple[str, ...] = tuple(ROUTERS)
    skews: tuple[float, ...] = (0.0, 1.0, 2.0)
    batch_sizes: tuple[int, ...] = (1, 16, 256)
    width: int = 512
    ffn: int = 2048
    ffn_kind: str = "gated"
    experts: int = 8
    top_k: int = 2
    capacity_factor: float = 1.0
    token_mean: float = 0.0
    dispatch: str = "auto"
    router_checkpoint: str = ""
    numerics: Numerics = Numerics()
    timing_spec: timing.TimingSpec = timing.TimingSpec(time_budget_s=0.5)
    weight_copies: int = 1
    bandwidth: float | None = None  # B/s; None: calibrate this device (cached in OUT_DIR)
    seed: int = 0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("out_dir", "routers", "skews", "batch_sizes", "timing_spec"):
            d.pop(k)
        return d

    def point(self, router: str) -> dict:
        """This router as a batchlab.moe.cost point."""
        return {
            "width": self.width,
            "ffn": self.ffn,
            "ffn_kind": self.ffn_kind,
            "experts": self.experts,
            "top_k": self.top_k,
            "router": ROUTERS[router][0],
            "capacity_factor": self.capacity_factor,
        }


def validate(cfg: CompareConfig) -> None:
    """Each failure names its flag."""
    for r in cfg.routers:
        if r not in ROUTERS:
            raise ConfigError(f"--routers: {r!r} is not one of {', '.join(ROUTERS)}")
    if not cfg.routers or not cfg.skews or not cfg.batch_sizes:
        raise ConfigError("--routers, --skews and --batch_sizes: give at least one value each")
    if min(cfg.batch_sizes) < 1:
        raise ConfigError(f"--batch_sizes: {min(cfg.batch_sizes)} is not allowed; must be >= 1")
    if not 1 <= cfg.top_k <= cfg.experts:
        raise ConfigError(
            f"--top_k={cfg.top_k}: must be between 1 and the number of experts {cfg.experts}"
        )
    if cfg.capacity_factor <= 0:
        raise ConfigError(f"--capacity_factor={cfg.capacity_factor}: must be > 0")
    if cfg.dispatch not in dispatch.DISPATCHES:
        raise ConfigError(
            f"--dispatch={cfg.dispatch}: allowed are {', '.join(dispatch.DISPATCHES)}"
        )
    for name in ("width", "ffn", "experts", "weight_copies"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.router_checkpoint:
        train.check_router_fits(
            cfg.router_checkpoint, cfg.width, cfg.experts, "--router_checkpoint"
        )


def grid(cfg: CompareConfig) -> list[tuple[str, float, int]]:
    """(router, skew, batch) in the order they are measured; router "dense" is the yardstick."""
    out = []
    for b in sorted(cfg.batch_sizes):
        out.append(("dense", 0.0, b))
        out += [(r, s, b) for r in cfg.routers for s in cfg.skews]
    return out


def point_id(router: str, skew: float, batch: int) -> str:
    return f"{router}/skew={skew}/b={batch}"


def grid_text(cfg: CompareConfig) -> str:
    """What a run would measure, with each point's analytic cost; nothing compiled."""
    lines = [f"{'point':<40} {'GFLOP':>9} {'weight MB':>10} {'rows':>7}"]
    for router, skew, b in grid(cfg):
        if router == "dense":
            c, rows = moecost.dense_ffn_cost(cfg.point("dropless"), b, cfg.numerics), b
            c = dataclasses.replace(
                c, flops=c.flops * cfg.top_k, weight_bytes=c.weight_bytes * cfg.top_k
            )
        else:
            p = cfg.point(router)
            c, rows = moecost.layer_cost(p, b, cfg.numerics), moecost.rows(p, b)
        lines.append(
            f"{point_id(router, skew, b):<40} {c.flops / 1e9:>9.4g} "
            f"{c.weight_bytes / 1e6:>10.4g} {rows:>7}"
        )
    lines.append(f"{len(lines) - 1} points, {cfg.numerics.dtype}; out_dir {cfg.out_dir}")
    return "\n".join(lines)


def _offset(cfg: CompareConfig, skew: float):
    ramp = 2 * jnp.arange(cfg.experts) / max(1, cfg.experts - 1) - 1
    return (skew * ramp).astype(jnp.float32)


def _tokens(cfg: CompareConfig, batch: int, task):
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), batch)
    if task is not None:
        return train.sample(task, key, batch)[0].astype(cfg.numerics.jnp_dtype)
    shared = jax.random.normal(jax.random.PRNGKey(cfg.seed + 2), (cfg.width,))
    x = jax.random.normal(key, (batch, cfg.width)) + cfg.token_mean * shared
    return x.astype(cfg.numerics.jnp_dtype)


def _weights(cfg: CompareConfig):
    """The layer's variables (a trained router if asked), and the task of its training."""
    dcfg = dec.DecoderConfig(
        width=cfg.width,
        ffn=cfg.ffn,
        gated_ffn=cfg.ffn_kind == "gated",
        dtype=cfg.numerics.jnp_dtype,
    )
    v = jax.tree.map(
        lambda a: a,
        mm.MoEFFN(dcfg, mm.MoEConfig(cfg.experts, cfg.top_k)).init(
            jax.random.PRNGKey(cfg.seed), jnp.zeros((1, 1, cfg.width), dcfg.dtype)
        ),
    )
    if not cfg.router_checkpoint:
        return v, None
    tcfg, router, bias = train.load_router(cfg.router_checkpoint, "--router_checkpoint")
    v["params"]["router"], v["balance"]["bias"] = router.astype(dcfg.dtype), bias
    return v, train.task(tcfg)


def _layer_fn(cfg: CompareConfig, router: str, impl: str):
    kind, priority = ROUTERS[router]
    moe = mm.MoEConfig(cfg.experts, cfg.top_k, kind, cfg.capacity_factor, priority, dispatch=impl)
    prec = cfg.numerics.lax_precision

    def fn(v, x, offset):
        return mm.moe_apply(v["params"], v["balance"]["bias"], x, moe, prec, offset)

    return fn


def _time(compiled, weights, args, cfg: CompareConfig) -> dict:
    copies = [weights] + [
        jax.tree.map(lambda a: a.copy(), weights) for _ in range(cfg.weight_copies - 1)
    ]
    n = len(copies)
    stats = timing.time_calls(
        lambda i: jax.block_until_ready(compiled(copies[i % n], *args)), cfg.timing_spec
    )
    return stats.as_dict()


def _compiled(cfg, router, batch, v, x, offset, cache: dict):
    """(dispatch, candidate times, compiled metrics, compiled layer) for a router and batch.
    The skew is an input (the logit offset), so every skew reuses one compile."""
    if (router, batch) not in cache:
        info = {}
        if cfg.dispatch == "auto":
            fns = {n: lambda *a, n=n: _layer_fn(cfg, router, n)(*a)[0] for n in dispatch.IMPLS}
            impl, info = autotune.fastest(fns, (v, x, offset))
        else:
            impl = cfg.dispatch
        fn = _layer_fn(cfg, router, impl)
        metrics = jax.jit(lambda v, x, o: balance.metrics(fn(v, x, o)[1]))
        layer = timing.compile_ahead(lambda *a: fn(*a)[0], (v, x, offset)).compiled
        cache[(router, batch)] = (impl, info, metrics, layer)
    return cache[(router, batch)]


def _measure(cfg, router, skew, batch, v, task, cache: dict) -> dict:
    x = _tokens(cfg, batch, task)
    if router == "dense":
        ws = [v["params"]["experts"][f"expert_{i}"] for i in range(cfg.top_k)]
        prec = cfg.numerics.lax_precision

        def dense(ws, x):
            return sum(dispatch.expert_ffn(w, x, prec) for w in ws)

        return {"time": _time(timing.compile_ahead(dense, (ws, x)).compiled, ws, (x,), cfg)}
    offset = _offset(cfg, skew)
    if router == "uniform":  # random logits, whatever the token: a uniform pick
        v = jax.tree.map(lambda a: a, v)
        v["params"]["router"] = jnp.zeros_like(v["params"]["router"])
        noise = jax.random.normal(jax.random.PRNGKey(cfg.seed + 3), (batch, cfg.experts))
        offset = offset + noise
    else:
        offset = jnp.broadcast_to(offset, (batch, cfg.experts))  # one shape for every router
    impl, info, metrics, layer = _compiled(cfg, router, batch, v, x, offset, cache)
    m = balance.to_host(metrics(v, x, offset))
    return {
        "dispatch": impl,
        "dispatch_candidates_s": info if skew == min(cfg.skews) else {},
        "metrics": m,
        "busiest_share": max(m["load_after"]) / (batch * cfg.top_k / cfg.experts),
        "time": _time(layer, v, (x, offset), cfg),
    }


def _check_out_dir(cfg: CompareConfig) -> None:
    path = os.path.join(cfg.out_dir, CONFIG)
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        if earlier != json.loads(json.dumps(cfg.to_json())):
            raise ConfigError(
                f"--out_dir={cfg.out_dir}: holds a comparison of a different config; "
                "choose another --out_dir"
            )


def run(cfg: CompareConfig, log=print) -> list[dict]:
    """Measures every pending point (a rerun resumes), appending to OUT_DIR/routing.jsonl."""
    validate(cfg)
    _check_out_dir(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results.write_json_atomic(os.path.join(cfg.out_dir, CONFIG), cfg.to_json())
    path = os.path.join(cfg.out_dir, RESULTS)
    done = results.latest_by_id(results.load(path, warn=log))
    device = jax.devices()[0]
    if cfg.bandwidth:
        bandwidth, source = cfg.bandwidth, "--bandwidth"
    else:
        ceil = calibration.cached(
            os.path.join(cfg.out_dir, "calibration.json"), device.device_kind, cfg.numerics, device
        )
        bandwidth, source = ceil.bandwidth, ceil.bandwidth_kernel
    v, task = _weights(cfg)
    expert_bytes = moecost.dense_ffn_cost(cfg.point("dropless"), 1, cfg.numerics).weight_bytes
    cache: dict = {}  # (router, batch) -> dispatch and compiled functions
    todo = [g for g in grid(cfg) if point_id(*g) not in done]
    for n, (router, skew, batch) in enumerate(todo, 1):
        record = {
            "id": point_id(router, skew, batch),
            "status": "ok",
            "router": router,
            "skew": skew,
            "batch": batch,
            "device_kind": device.device_kind,
            "bandwidth": bandwidth,
            "bandwidth_source": source,
            "k_experts_read_s": cfg.top_k * expert_bytes / bandwidth,
        }
        record |= _measure(cfg, router, skew, batch, v, task, cache)
        results.append(path, record)
        log(f"[{n}/{len(todo)}] {record['id']}  {record['time']['median_s'] * 1e3:.3f} ms")
    return results.load(path)


# ---- the printed answer --------------------------------------------------------------------


def _by(records):
    return {(r["router"], r["skew"], r["batch"]): r for r in records if r.get("status") == "ok"}


def summary(records: list[dict]) -> str:
    """Per batch: each router's balance and time; then the plain answer."""
    by = _by(records)
    batches = sorted({b for _, _, b in by})
    routers = list(dict.fromkeys(r for r, _, _ in by if r != "dense"))
    skews = sorted({s for r, s, _ in by if r != "dense"})
    lines = []
    for b in batches:
        dense = by.get(("dense", 0.0, b))
        t_dense = dense["time"]["median_s"] if dense else float("nan")
        any_r = next(r for (_, _, bb), r in by.items() if bb == b)
        read, bw = any_r["k_experts_read_s"], any_r["bandwidth"]
        lines += [
            f"\nbatch {b} tokens: k dense FFNs {t_dense * 1e3:.3f} ms; reading k experts' "
            f"weights at {bw / 1e9:.1f} GB/s: {read * 1e3:.3f} ms",
            f"{'router':<17} {'skew':>5} {'MaxVio':>7} {'busiest':>8} {'dropped':>8} {'CV':>5} "
            f"{'entropy':>7} {'conf':>5} {'dispatch':>8} {'ms':>9} {'vs skew0':>8} {'vs dense':>8}",
        ]
        for router in routers:
            base = by.get((router, skews[0], b))
            for s in skews:
                r = by.get((router, s, b))
                if r is None:
                    continue
                m, t = r["metrics"], r["time"]["median_s"]
                lines.append(
                    f"{router:<17} {s:>5.2g} {100 * m['max_vio']:>+6.0f}% "
                    f"{100 * (r['busiest_share'] - 1):>+7.0f}% "
                    f"{100 * m['dropped_fraction']:>7.1f}% "
                    f"{m['cv']:>5.2f} {m['entropy']:>7.3f} {m['confidence']:>5.2f} "
                    f"{r['dispatch']:>8} {t * 1e3:>9.3f} "
                    f"{t / base['time']['median_s']:>7.2f}x {t / t_dense:>7.2f}x"
                )
    lines += ["", *answer(records)]
    return "\n".join(lines)


def _join(points, value, fmt: str) -> str:
    return "/".join(format(value(p), fmt) for p in points)


def answer(records: list[dict]) -> list[str]:
    """The question of the issue, answered with the measured numbers."""
    by = _by(records)
    batches = sorted({b for _, _, b in by})
    skews = sorted({s for r, s, _ in by if r != "dense"})
    experts = next((len(r["metrics"]["load_before"]) for r in records if "metrics" in r), 1)
    lines = [
        "How much slower is a layer whose busiest expert gets X% more than its share? "
        f"X = MaxVio of the load the router asked for, at skews {'/'.join(map(str, skews))}; "
        "time relative to the same router at the first skew; busiest = the busiest expert's "
        "rows run over B·k/E. Batches with B·k/E < 2 are left out (MaxVio is sampling there)."
    ]
    for router in dict.fromkeys(r for r, _, _ in by if r != "dense"):
        parts, ratios, used = [], [], set()
        for b in batches:
            pts = [by[(router, s, b)] for s in skews if (router, s, b) in by]
            if len(pts) < 2 or sum(pts[0]["metrics"]["load_before"]) / experts < 2:
                continue
            t0 = pts[0]["time"]["median_s"]
            ratios += [p["time"]["median_s"] / t0 for p in pts[1:]]
            used |= {p["dispatch"] for p in pts}
            parts.append(
                f"b={b}: X {_join(pts, lambda p: 100 * p['metrics']['max_vio'], '+.0f')}% -> "
                f"time {_join(pts, lambda p, t0=t0: p['time']['median_s'] / t0, '.2f')}x, dropped "
                f"{_join(pts, lambda p: 100 * p['metrics']['dropped_fraction'], '.0f')}%, "
                f"busiest {_join(pts, lambda p: 100 * (p['busiest_share'] - 1), '+.0f')}%"
            )
        if parts:
            lo, hi = min(ratios), max(ratios)
            lines.append(
                f"  {router} ({'/'.join(sorted(used))}): time {lo:.2f}x..{hi:.2f}x of its "
                f"unskewed time. " + "; ".join(parts)
            )
    lines.append(
        "  On one device the experts run one after another, so time follows the rows "
        "computed, not the busiest expert. A capacity layer with the slots dispatch computes "
        "the E·C padded slots whatever the load (imbalance costs dropped tokens, not time); "
        "with the sorted dispatch it computes only the copies kept, so a skew that drops "
        "more makes it faster. Dropless computes all B·k copies however they are spread. "
        "Expert choice keeps every expert at C. With one expert per device (expert "
        "parallelism) the busiest expert would set the time: dropless by the 'busiest' "
        "factor, a capacity layer by at most C/(B·k/E), the capacity factor."
    )
    return lines
