"""The MoE routing experiments read back, from the results.jsonl of the directories under
OUT_DIR alone.

The routing comparison (experiments.routing; one directory per sweep): a printed summary
that answers "how much slower is a layer whose busiest expert gets X% more than its
share?", and three plots. It reads stored fields only: each moe_layer record's
parameters (router, priority, skew), its balance metrics and chosen dispatch, its time;
each ffn record's time, stored cost and ceilings (k experts' weights / bandwidth is its
weight bytes over its bandwidth).
Token choice with priority "confidence" (batch-prioritized routing) is labelled
token_choice_bpr; a router with shared experts or a group limit says so
(deepseek_v3_g4/2+1shared: 4 groups, picks in the best 2, one shared expert). Points
that share every other parameter form one comparison. A time ratio is starred when the
two medians' 95% intervals separate (analysis.compare): a real difference, not noise.

Router training (experiments.train_router; one directory per method): each method's
balance and loss at the end of training and on fresh tokens after it (its TRAIN_STEP and
ROUTER_EVAL records), and the training curves.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from batchlab import analysis, record, results  # noqa: E402

# What a comparison varies (besides the batch): the router and how it is set up.
VARIED = (
    "router",
    "priority",
    "skew",
    "shared_experts",
    "expert_groups",
    "top_groups",
    "route_scale",
)
FILES = ("routing_load.png", "routing_metrics.png", "routing_time.png")
METRICS = (
    ("max_vio", "MaxVio (before capacity)"),
    ("dropped_fraction", "fraction of top-k copies dropped"),
    ("cv", "CV of load (before capacity)"),
    ("entropy", "load entropy / log E"),
)
SKEW_STYLES = ("o-", "s--", "^:", "d-.")


def load(out_dir: str, warn=None) -> list[dict]:
    """The usable records (record.problem finds nothing) of every results directory
    directly under OUT_DIR: the sweeps of a comparison, or the methods of a training."""
    out = []
    for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
        path = os.path.join(out_dir, name, results.RESULTS)
        if os.path.isfile(path):
            recs = results.latest_by_id(results.load(path, warn)).values()
            out += [r for r in recs if record.problem(r) is None]
    return out


def router_label(r: dict) -> str:
    """'token_choice', 'token_choice_bpr', 'deepseek_v3_g4/2+1shared', ..."""
    p = r["params"]
    label = p["router"] + ("_bpr" if p.get("priority") == "confidence" else "")
    if p.get("expert_groups", 1) > 1:
        label += f"_g{p['expert_groups']}/{p['top_groups']}"
    if p.get("shared_experts"):
        label += f"+{p['shared_experts']}shared"
    return label


def _layer(r: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in r["params"].items() if k not in VARIED))


def comparisons(records: list[dict]) -> dict[tuple, dict]:
    """One comparison per layer (the parameters held fixed): {"moe": {(router label,
    skew, batch): record}, "dense": {batch: ffn record of k copies}}."""
    ok = [r for r in records if record.is_point(r)]
    out: dict[tuple, dict] = {}
    for r in ok:
        if r["model"] == "moe_layer" and r.get("metrics", {}).get("balance"):
            c = out.setdefault(_layer(r), {"moe": {}, "dense": {}})
            c["moe"][(router_label(r), r["params"]["skew"], r["batch"])] = r
    for key, c in out.items():
        p = dict(key)
        for r in ok:
            q = r["params"]
            same = [q.get(n) == p[n] for n in ("width", "ffn", "ffn_kind")]
            if r["model"] == "ffn" and all(same) and q["copies"] == p["top_k"]:
                c["dense"][r["batch"]] = r
    return out


def _title(key: tuple, keys: list[tuple]) -> str:
    """The parameters that tell this comparison from the others (all, when alone)."""
    p = dict(key)
    differ = [n for n in p if len({dict(k).get(n) for k in keys}) > 1]
    if len(keys) > 1:
        return "layer " + " ".join(f"{n}={p[n]}" for n in differ)
    return (
        f"width {p['width']}, {p['experts']} {p['ffn_kind']} experts of F {p['ffn']}, "
        f"top-{p['top_k']}, capacity factor {p['capacity_factor']}, token mean "
        f"{p['token_mean']}"
    )


def _balance(r: dict) -> dict:
    return r["metrics"]["balance"][0]


def busiest_share(r: dict) -> float:
    """The busiest expert's rows run over its share B·k/E."""
    p = r["params"]
    return max(_balance(r)["load_after"]) / (r["batch"] * p["top_k"] / p["experts"])


def _t(r: dict) -> float:
    return r["time"]["median_s"]


def read_time(dense: dict) -> tuple[float, float]:
    """(seconds to read k experts' weights at the bandwidth, that bandwidth) of an ffn
    record of k copies."""
    bw = dense["ceilings"]["bandwidth"]
    return dense["cost"]["weight_bytes"] / bw, bw


def _routers(moe: dict) -> list[str]:
    return list(dict.fromkeys(router for router, _, _ in sorted(moe, key=lambda k: k[0])))


def _skews(moe: dict) -> list[float]:
    return sorted({s for _, s, _ in moe})


def summary(records: list[dict]) -> str:
    """Per comparison and batch: each router's balance and time; then the plain answer."""
    comps = comparisons(records)
    if not comps:
        return "no routing comparison in these results (moe_layer points with balance metrics)"
    lines = []
    for key, c in comps.items():
        moe, dense = c["moe"], c["dense"]
        routers, skews = _routers(moe), _skews(moe)
        lines.append(f"\n== {_title(key, list(comps))}")
        for b in sorted({b for _, _, b in moe}):
            d = dense.get(b)
            t_dense = _t(d) if d else float("nan")
            if d:
                read, bw = read_time(d)
                lines.append(
                    f"\nbatch {b} tokens: k dense FFNs {t_dense * 1e3:.3f} ms; reading k "
                    f"experts' weights at {bw / 1e9:.1f} GB/s: {read * 1e3:.3f} ms"
                )
            else:
                lines.append(f"\nbatch {b} tokens: no dense yardstick measured")
            width = max(17, *(len(router) for router in routers))
            lines.append(
                f"{'router':<{width}} {'skew':>5} {'MaxVio':>7} {'busiest':>8} {'dropped':>8} "
                f"{'CV':>5} {'entropy':>7} {'conf':>5} {'dispatch':>13} {'ms':>9} "
                f"{'vs skew0':>9} {'vs dense':>9}"
            )
            for router in routers:
                base = moe.get((router, skews[0], b))
                for s in skews:
                    r = moe.get((router, s, b))
                    if r is None:
                        continue
                    m, t = _balance(r), _t(r)
                    lines.append(
                        f"{router:<{width}} {s:>5.2g} {100 * m['max_vio']:>+6.0f}% "
                        f"{100 * (busiest_share(r) - 1):>+7.0f}% "
                        f"{100 * m['dropped_fraction']:>7.1f}% "
                        f"{m['cv']:>5.2f} {m['entropy']:>7.3f} {m['confidence']:>5.2f} "
                        f"{r['metrics']['dispatch']['chosen']:>13} {t * 1e3:>9.3f} "
                        f"{_vs(base, r)} {_vs(d, r)}"
                    )
        lines += [
            "",
            "* the two medians' 95% intervals separate: a real difference, not timing noise",
            "",
            *answer_for(moe),
        ]
    return "\n".join(lines)


def _vs(base: dict | None, r: dict) -> str:
    """'  1.05x* ': r's time over base's, starred when the difference is real."""
    if base is None:
        return f"{'-':>9}"
    diff = analysis.compare(base, r)
    return f"{diff.ratio:>7.2f}x" + ("*" if diff.real else " ")


def _join(points, value, fmt: str) -> str:
    return "/".join(format(value(p), fmt) for p in points)


def answer(records: list[dict]) -> list[str]:
    """The question of the issue, answered with the measured numbers, per comparison."""
    out = []
    for c in comparisons(records).values():
        out += answer_for(c["moe"])
    return out


def answer_for(moe: dict) -> list[str]:
    batches = sorted({b for _, _, b in moe})
    skews = _skews(moe)
    lines = [
        "How much slower is a layer whose busiest expert gets X% more than its share? "
        f"X = MaxVio of the load the router asked for, at skews {'/'.join(map(str, skews))}; "
        "time relative to the same router at the first skew; busiest = the busiest expert's "
        "rows run over B·k/E. Batches with B·k/E < 2 are left out (MaxVio is sampling there)."
    ]
    for router in _routers(moe):
        parts, ratios, used = [], [], set()
        for b in batches:
            pts = [moe[(router, s, b)] for s in skews if (router, s, b) in moe]
            if len(pts) < 2 or pts[0]["params"]["skew"] != skews[0]:
                continue
            load = _balance(pts[0])["load_before"]
            if sum(load) / len(load) < 2:
                continue
            t0 = _t(pts[0])
            ratios += [_t(p) / t0 for p in pts[1:]]
            used |= {p["metrics"]["dispatch"]["chosen"] for p in pts}
            parts.append(
                f"b={b}: X {_join(pts, lambda p: 100 * _balance(p)['max_vio'], '+.0f')}% -> "
                f"time {_join(pts, lambda p, t0=t0: _t(p) / t0, '.2f')}x, dropped "
                f"{_join(pts, lambda p: 100 * _balance(p)['dropped_fraction'], '.0f')}%, "
                f"busiest {_join(pts, lambda p: 100 * (busiest_share(p) - 1), '+.0f')}%"
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
        "factor, a capacity layer by at most C/(B·k/E), the capacity factor. deepseek_v3 "
        "drops nothing, like dropless; a shared expert adds one dense FFN's work per "
        "token, so its layer does k + 1 FFNs' work against the yardstick's k."
    )
    return lines


# ---- plots -----------------------------------------------------------------------------


def _legend(fig, handles, **kw) -> None:
    """Below the axes, never over them (constrained layout makes room)."""
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False, **kw)


def _router_handles(routers, colors) -> list:
    return [Line2D([], [], color=colors[r], lw=2, label=r) for r in routers]


def _skew_handles(shown) -> list:
    return [
        Line2D([], [], color="0.3", ls=style[1:], marker=style[0], label=f"skew {s:g}")
        for s, style in zip(shown, SKEW_STYLES)
    ]


def figures(records: list[dict]) -> dict[str, plt.Figure]:
    """file name -> figure: per comparison, the load per expert, the balance metrics and
    the time against batch (one set per comparison; numbered when there are several)."""
    comps = comparisons(records)
    if not comps:
        raise ValueError("no routing results to plot")
    out = {}
    for n, (key, c) in enumerate(comps.items(), 1):
        suffix = "" if len(comps) == 1 else f"_{n}"
        title = _title(key, list(comps))
        moe, dense = c["moe"], c["dense"]
        routers, skews = _routers(moe), _skews(moe)
        colors = {r: f"C{i}" for i, r in enumerate(routers)}
        shown = [skews[0]] + ([skews[-1]] if len(skews) > 1 else [])
        figs = (
            _load_figure(moe, routers, shown, colors, title),
            _metrics_figure(moe, routers, shown, colors, title),
            _time_figure(moe, dense, routers, shown, colors, title),
        )
        for name, fig in zip(FILES, figs):
            out[name.replace(".png", f"{suffix}.png")] = fig
    return out


def _series(moe: dict, router: str, skew: float) -> list[dict]:
    return sorted(
        (r for (ro, s, _), r in moe.items() if (ro, s) == (router, skew)), key=lambda r: r["batch"]
    )


def _load_figure(moe, routers, shown, colors, title):
    big = max(b for _, _, b in moe)
    fig, axes = plt.subplots(
        len(shown), 1, figsize=(9, 2.6 * len(shown) + 1.2), squeeze=False, layout="constrained"
    )
    width = 0.8 / len(routers)
    for ax, s in zip(axes[:, 0], shown):
        for i, router in enumerate(routers):
            r = moe.get((router, s, big))
            if r is None:
                continue
            m = _balance(r)
            x = np.arange(len(m["load_before"])) + (i - len(routers) / 2 + 0.5) * width
            ax.bar(x, m["load_before"], width, color=colors[router], alpha=0.75)
            ax.plot(x, m["load_after"], "k_", ms=8)
        ax.set_title(f"skew {s:g}", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_ylabel("token copies")
    fig.suptitle(f"load per expert at {big} tokens; {title}", fontsize=9)
    handles = [Patch(color=colors[r], alpha=0.75, label=r) for r in routers]
    handles.append(Line2D([], [], color="k", marker="_", ls="", ms=8, label="run (kept)"))
    _legend(fig, handles, ncol=len(handles), title="bars: load asked for", title_fontsize=8)
    return fig


def _metrics_figure(moe, routers, shown, colors, title):
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(3.6 * len(METRICS), 3.8), layout="constrained"
    )
    for ax, (name, label) in zip(axes, METRICS):
        for router in routers:
            for s, style in zip(shown, SKEW_STYLES):
                pts = _series(moe, router, s)
                ax.plot(
                    [r["batch"] for r in pts],
                    [_balance(r)[name] for r in pts],
                    style,
                    color=colors[router],
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (tokens)")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    handles = _router_handles(routers, colors) + _skew_handles(shown)
    _legend(fig, handles, ncol=len(handles))
    return fig


def _time_figure(moe, dense, routers, shown, colors, title):
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    handles = []
    pts = [dense[b] for b in sorted(dense)]
    if pts:
        ax.plot([r["batch"] for r in pts], [_t(r) * 1e3 for r in pts], "k^-")
        ax.axhline(read_time(pts[0])[0] * 1e3, color="k", ls=":")
        handles += [
            Line2D([], [], color="k", marker="^", label="k dense FFNs"),
            Line2D([], [], color="k", ls=":", label="k experts' weights / BW"),
        ]
    for router in routers:
        for s, style in zip(shown, SKEW_STYLES):
            series = _series(moe, router, s)
            ax.plot(
                [r["batch"] for r in series],
                [_t(r) * 1e3 for r in series],
                style,
                color=colors[router],
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (tokens)")
    ax.set_ylabel("time per call (ms)")
    any_r = next(iter(moe.values()))
    device = (any_r.get("provenance") or {}).get("device_kind", "")
    ax.set_title(f"MoE layer time by router on {device}\n{title}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    handles += _router_handles(routers, colors) + _skew_handles(shown)
    _legend(fig, handles, ncol=min(len(handles), 4))
    return fig


def plots(out_dir: str, records: list[dict] | None = None) -> list[str]:
    """Writes the figures into OUT_DIR; returns their paths."""
    records = load(out_dir) if records is None else records
    paths = []
    for name, fig in figures(records).items():
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ---- router training -------------------------------------------------------------------

TRAIN_FILE = "train_router.png"
CURVES = (
    ("cv", "CV of load"),
    ("max_vio", "MaxVio"),
    ("dropped_fraction", "fraction dropped"),
    ("task_loss", "task loss (relative MSE)"),
    ("z_loss", "router z-loss"),
)


def _steps(records: list[dict]) -> dict[str, list[dict]]:
    """method -> its TRAIN_STEP records in step order."""
    out: dict[str, list[dict]] = {}
    for r in records:
        if r.get("kind") == record.TRAIN_STEP:
            out.setdefault(r["method"], []).append(r)
    return {m: sorted(rs, key=lambda r: r["step"]) for m, rs in out.items()}


def train_summary(records: list[dict], last: int = 20) -> str:
    """Each method's balance and loss averaged over its last `last` steps, then the
    trained router's balance on fresh tokens."""
    names = ("cv", "max_vio", "dropped_fraction", "entropy", "confidence", "task_loss", "z_loss")
    lines = [f"{'method':<13} {'steps':>6} " + " ".join(f"{n:>16}" for n in names)]
    for method, rs in _steps(records).items():
        tail = rs[-last:]
        lines.append(
            f"{method:<13} {rs[-1]['step']:>6} "
            + " ".join(f"{sum(r['metrics'][n] for r in tail) / len(tail):>16.4g}" for n in names)
        )
    evals = [r for r in records if r.get("kind") == record.ROUTER_EVAL]
    if evals:
        lines.append(f"\nthe trained routers on {evals[0]['tokens']} fresh tokens:")
        for r in evals:
            m = r["metrics"]
            lines.append(
                f"{r['method']:<13} step {r['step']}: CV {m['cv']:.3f}, MaxVio "
                f"{100 * m['max_vio']:+.0f}%, dropped {100 * m['dropped_fraction']:.1f}%, "
                f"entropy {m['entropy']:.3f}"
            )
    return "\n".join(lines)


def train_figure(records: list[dict]) -> plt.Figure:
    """Balance and loss against step, one line per method; the legend below the axes."""
    steps = _steps(records)
    if not steps:
        raise ValueError("no training records to plot")
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.5 * len(CURVES), 3.6), layout="constrained")
    for i, (method, pts) in enumerate(steps.items()):
        for ax, (name, _) in zip(axes, CURVES):
            ax.plot(
                [r["step"] for r in pts],
                [r["metrics"][name] for r in pts],
                color=f"C{i}",
                label=method,
                lw=1,
            )
    for ax, (name, label) in zip(axes, CURVES):
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if name in ("task_loss", "z_loss"):
            ax.set_yscale("log")
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=len(steps),
        fontsize=8,
        frameon=False,
    )
    return fig


def train_plot(out_dir: str, records: list[dict] | None = None) -> str:
    """OUT_DIR/train_router.png from the records."""
    fig = train_figure(load(out_dir) if records is None else records)
    path = os.path.join(out_dir, TRAIN_FILE)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
