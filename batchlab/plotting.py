"""Plots drawn from results files only: time and time per example against batch."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from batchlab import analysis, results, roofline  # noqa: E402


def plot_records(records: list[dict], path: str, title: str = "") -> str:
    """Measured (solid) against predicted roofline (dashed), log2 batch, one line per series.

    Vertical marks: predicted critical batch (dashed) and fitted knee (dotted).
    """
    groups = analysis.series(records)
    if not groups:
        raise ValueError("no successful points to plot")
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (key, points) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        b = [r["batch"] for r in points]
        t = [r["time"]["median_s"] * 1e3 for r in points]
        pred = [r["prediction"]["lower_s"] * 1e3 for r in points]
        label = analysis.series_label(key)
        for ax, scale in ((ax_t, [1] * len(b)), (ax_e, b)):
            ax.plot(b, [v / s for v, s in zip(t, scale)], "o-", color=color, label=label)
            ax.plot(b, [v / s for v, s in zip(pred, scale)], "--", color=color, alpha=0.6)
        b_star = analysis.predicted_critical_batch(
            key, roofline.Ceilings(**points[-1]["ceilings"]), with_activations=True
        )
        knee = analysis.fit_knee(b, t)
        for ax in (ax_t, ax_e):
            if b_star is not None:
                ax.axvline(b_star, color=color, ls="--", lw=0.8, alpha=0.5)
            if knee is not None:
                ax.axvline(knee.batch, color=color, ls=":", lw=1.2)
    for ax, ylabel in ((ax_t, "time per call (ms)"), (ax_e, "time per example (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    device = groups and next(iter(groups.values()))[0]["provenance"].get("device_kind", "")
    ax_t.set_title(title or f"measured (solid) vs roofline (dashed) on {device}")
    ax_e.set_title("--: predicted critical batch   ··: measured knee")
    ax_t.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dir(out_dir: str, warn=print) -> str:
    """Plots OUT_DIR/results.jsonl into OUT_DIR/plot.png."""
    records = results.load(os.path.join(out_dir, results.RESULTS), warn=warn)
    return plot_records(records, os.path.join(out_dir, results.PLOT))
