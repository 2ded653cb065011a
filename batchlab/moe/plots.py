"""Plots of the routing comparison and of router training, drawn from their JSON lines only."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from batchlab import (
    results,  # noqa: E402
    train,  # noqa: E402
)
from batchlab.moe import compare  # noqa: E402

METRICS = (
    ("max_vio", "MaxVio (before capacity)"),
    ("dropped_fraction", "fraction of top-k copies dropped"),
    ("cv", "CV of load (before capacity)"),
    ("entropy", "load entropy / log E"),
)


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def routing_plots(out_dir: str) -> list[str]:
    """routing_load.png, routing_metrics.png and routing_time.png in OUT_DIR."""
    recs = [r for r in results.load(os.path.join(out_dir, compare.RESULTS)) if r["status"] == "ok"]
    moe = [r for r in recs if r["router"] != "dense"]
    if not moe:
        raise ValueError("no routing results to plot")
    routers = list(dict.fromkeys(r["router"] for r in moe))
    skews = sorted({r["skew"] for r in moe})
    big = max(r["batch"] for r in moe)
    shown = [skews[0]] + ([skews[-1]] if len(skews) > 1 else [])
    paths = []

    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 3.2 * len(shown)), squeeze=False)
    width = 0.8 / len(routers)
    for ax, s in zip(axes[:, 0], shown):
        for i, router in enumerate(routers):
            r = next(
                (r for r in moe if (r["router"], r["skew"], r["batch"]) == (router, s, big)), None
            )
            if r is None:
                continue
            x = np.arange(len(r["metrics"]["load_before"])) + (i - len(routers) / 2 + 0.5) * width
            ax.bar(x, r["metrics"]["load_before"], width, label=router, alpha=0.75)
            ax.plot(x, r["metrics"]["load_after"], "k_", ms=8)
        ax.set_title(f"load per expert at {big} tokens, skew {s} (bars: asked for; -: run)")
        ax.set_xlabel("expert")
        ax.set_ylabel("token copies")
        ax.legend(fontsize=7, ncol=len(routers))
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "routing_load.png")))

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    for ax, (name, label) in zip(axes, METRICS):
        for i, router in enumerate(routers):
            for s, style in zip(shown, ("o-", "s--")):
                pts = sorted(
                    (r for r in moe if (r["router"], r["skew"]) == (router, s)),
                    key=lambda r: r["batch"],
                )
                ax.plot(
                    [r["batch"] for r in pts],
                    [r["metrics"][name] for r in pts],
                    style,
                    color=f"C{i}",
                    label=f"{router} skew {s}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (tokens)")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "routing_metrics.png")))

    fig, ax = plt.subplots(figsize=(8, 5))
    dense = sorted((r for r in recs if r["router"] == "dense"), key=lambda r: r["batch"])
    if dense:
        ax.plot(
            [r["batch"] for r in dense],
            [r["time"]["median_s"] * 1e3 for r in dense],
            "k^-",
            label="k dense FFNs",
        )
        ax.axhline(
            dense[0]["k_experts_read_s"] * 1e3, color="k", ls=":", label="k experts' weights / BW"
        )
    for i, router in enumerate(routers):
        for s, style in zip(shown, ("o-", "s--")):
            pts = sorted(
                (r for r in moe if (r["router"], r["skew"]) == (router, s)),
                key=lambda r: r["batch"],
            )
            ax.plot(
                [r["batch"] for r in pts],
                [r["time"]["median_s"] * 1e3 for r in pts],
                style,
                color=f"C{i}",
                label=f"{router} skew {s}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (tokens)")
    ax.set_ylabel("time per call (ms)")
    ax.set_title(f"MoE layer time by router on {recs[0]['device_kind']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "routing_time.png")))
    return paths


TRAIN_METRICS = (
    ("cv", "CV of load"),
    ("max_vio", "MaxVio"),
    ("dropped_fraction", "fraction dropped"),
    ("task_loss", "task loss (relative MSE)"),
    ("z_loss", "router z-loss"),
)


def train_plot(out_dir: str) -> str:
    """train_router.png: balance and loss against step, one line per method."""
    recs = train.load_metrics(out_dir)
    if not recs:
        raise ValueError("no training metrics to plot")
    fig, axes = plt.subplots(1, len(TRAIN_METRICS), figsize=(4 * len(TRAIN_METRICS), 3.8))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in recs)):
        pts = sorted((r for r in recs if r["method"] == method), key=lambda r: r["step"])
        for ax, (name, _) in zip(axes, TRAIN_METRICS):
            ax.plot(
                [r["step"] for r in pts], [r[name] for r in pts], color=f"C{i}", label=method, lw=1
            )
    for ax, (name, label) in zip(axes, TRAIN_METRICS):
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if name in ("task_loss", "z_loss"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "train_router.png"))
