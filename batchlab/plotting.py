"""Plots drawn from results files only: time against batch, or against another axis."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from batchlab import analysis, record, results, workloads  # noqa: E402
from batchlab.record import device_label, x_value  # noqa: E402


def series_by_device(records: list[dict], x: str = "batch") -> dict[str, tuple]:
    """label -> (series key, points). With records from several devices, each device's
    series are apart and their labels start with the device."""
    groups = analysis.series(records, x)
    devices = list(dict.fromkeys(key.device for key in groups))
    prefix = len(devices) > 1
    return {
        (f"{key.device}: " if prefix else "") + key.label: (key, points)
        for key, points in groups.items()
    }


def plot_records(
    records: list[dict], path: str, x: str = "batch", title: str = "", short_labels: bool = False
) -> str:
    """Measured (solid) against the roofline (dashed) on log2 x, one line per series (and
    per device, when the records come from several).

    Against batch, a second panel shows time per example, and vertical marks show the
    predicted critical batch (dashed) and the fitted knee (dotted). With `short_labels`,
    the words every label shares leave the legend for a line above the plot.
    """
    groups = series_by_device(records, x)
    if not groups:
        raise ValueError("no successful points to plot")
    shared = ""
    if short_labels and len(groups) > 1:
        words = [label.split() for label in groups]
        common = set.intersection(*map(set, words))
        shared = " ".join(w for w in words[0] if w in common)
        groups = {
            " ".join(w for w in label.split() if w not in common): v for label, v in groups.items()
        }
    by_batch = x == "batch"
    fig, axes = plt.subplots(
        1,
        2 if by_batch else 1,
        figsize=(13 if by_batch else 7, 5 + (0.15 * len(groups) if short_labels else 0)),
        constrained_layout=True,
        squeeze=False,
    )
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, (_, points)) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        xs = [x_value(r, x) for r in points]
        t = [r["time"]["median_s"] * 1e3 for r in points]
        pred = [r["prediction"]["lower_s"] * 1e3 for r in points]
        scales = ([1] * len(xs), xs) if by_batch else ([1] * len(xs),)
        for ax, scale in zip(axes, scales):
            ax.plot(
                xs,
                [v / s for v, s in zip(t, scale)],
                "o-",
                color=color,
                label=label,
            )
            ax.plot(xs, [v / s for v, s in zip(pred, scale)], "--", color=color, alpha=0.6)
        if by_batch:
            b_star = record.b_star(points[-1])
            knee = analysis.fit_knee(xs, t)
            for ax in axes:
                if b_star is not None:
                    ax.axvline(b_star, color=color, ls="--", lw=0.8, alpha=0.5)
                if knee.found:
                    ax.axvline(knee.batch, color=color, ls=":", lw=1.2)
    labels = ["time per call (ms)", "time per example (ms)"]
    for ax, ylabel in zip(axes, labels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size" if by_batch else x)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    devices = list(dict.fromkeys(device_label(points[0]) for _, points in groups.values()))
    first = next(iter(groups.values()))[1][0]
    device = ", ".join(devices) if len(devices) > 1 else first["provenance"].get("device_kind", "")
    axes[0].set_title(title or f"measured (solid) vs roofline (dashed) on {device}")
    if by_batch:
        axes[1].set_title("--: predicted critical batch   ··: measured knee")
    if short_labels:  # below the plots: a report's plots may carry many long labels
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7)
        if shared:
            fig.suptitle(f"every line: {shared}", fontsize=8)
    else:
        axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dir(out_dir: str, warn=print) -> list[str]:
    """Plots OUT_DIR/results.jsonl: plot.png against batch, plot_<axis>.png against each
    of the family's other plot axes that the sweep varied."""
    records = results.load(os.path.join(out_dir, results.RESULTS), warn=warn)
    paths = [plot_records(records, os.path.join(out_dir, results.PLOT))]
    ok = [r for r in records if record.is_point(r)]
    for model in dict.fromkeys(r["model"] for r in ok):
        if model not in workloads.REGISTRY:
            continue  # a family not imported here: its records still plot against batch
        for axis in workloads.get(model).plot_axes:
            mine = [r for r in ok if r["model"] == model]
            if len({r["params"][axis] for r in mine}) > 1:
                paths.append(plot_records(mine, os.path.join(out_dir, f"plot_{axis}.png"), axis))
    return paths
