"""Plots drawn from results files only: time against batch, or against another axis,
each measured median with its 95% interval as an error bar.

Each line is labelled by what tells it from the other lines drawn (the parameters that
differ; the config where two configs measured the same setup); what all lines share is
one wrapped line under the title; the legend sits below the panels, never on them. Each
model gets its own panels, and so do groups of its series when they are too many for
one; several devices get a marker each, or a panel each.
"""

import os
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, NullLocator

from batchlab import analysis, record, results, workloads
from batchlab.record import NO_CONFIG, SeriesKey, x_value

WRAP = 40  # characters a legend label wraps at, so one long label cannot widen the legend
MARKERS = "os^Dvp"  # one per device
MAX_LINES = 8  # a model's series in one panel; more are split across panels
MAX_PANELS = 6  # ... unless that takes more panels than this
FONT = 8  # points: legend and subtitle
CHAR_EM = 0.62  # a character's width in ems, a little over DejaVu Sans' average
PANEL_W, PANEL_H = 6.0, 3.4  # inches per panel
KNEE = dict(marker="o", ms=11, mfc="none", mew=1.4, ls="none")  # a ring round the curve
B_STAR = dict(marker="*", ms=10, ls="none", mec="black", mew=0.5)
ROOFLINE = dict(ls="--", lw=1.2, alpha=0.7)
MODEL = dict(ls=":", lw=1.8, alpha=0.9)  # the per-kernel model (prediction.model_s)
MODEL_KNEE = dict(marker="D", ms=6, mfc="none", mew=1.2, ls="none")
ERROR_BAR = dict(elinewidth=1.0, capsize=2.5, alpha=0.8)  # the median's 95% interval


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


# ---- what tells the lines apart ------------------------------------------------------------


def _fields(key: SeriesKey) -> dict[str, str]:
    """What a series is, one readable word per field (its model and device apart)."""
    out = {n: f"{n}={v if v != '' else repr('')}" for n, v in key.params}
    out["numerics"] = key.dtype + ("" if key.precision == "default" else f"/{key.precision}")
    if key.weight_copies > 1:
        out["copies"] = f"copies={key.weight_copies}"
    if key.config != NO_CONFIG:
        out["config"] = f"config={key.config}"
    return out


def _shared(keys: list[SeriesKey]) -> dict[str, str]:
    """The fields every key has, with the same value."""
    fields = [_fields(k) for k in keys]
    return {n: w for n, w in fields[0].items() if all(f.get(n) == w for f in fields[1:])}


def labels(keys: list[SeriesKey]) -> dict[SeriesKey, str]:
    """Each key's words that differ between `keys` (model and device left out: they get
    a panel and a marker); the config only where two configs measured the same setup."""
    shared = _shared(keys)
    setups = [(k.model, k.params, k.dtype, k.precision, k.device) for k in keys]
    config_needed = len(set(setups)) < len(setups)
    out = {}
    for key in keys:
        words = [
            w
            for n, w in _fields(key).items()
            if n not in shared and (n != "config" or config_needed)
        ]
        out[key] = textwrap.fill(" ".join(words), WRAP)
    return out


def _facets(keys: list[SeriesKey]) -> list[list[SeriesKey]]:
    """One model's series, split into panels when they are more than MAX_LINES: by
    device first, then by the fields with fewest values, as long as that takes at most
    MAX_PANELS panels and leaves a field that tells the lines of a panel apart."""
    fields = [_fields(k) | {"device": k.device} for k in keys]
    names = dict.fromkeys(n for f in fields for n in f)
    count = {n: len({f.get(n) for f in fields}) for n in names}
    differing = sorted((n for n in names if count[n] > 1), key=lambda n: (n != "device", count[n]))

    def split(by: list[str]) -> list[list[SeriesKey]]:
        panels: dict[tuple, list[SeriesKey]] = {}
        for key, f in zip(keys, fields):
            panels.setdefault(tuple(f.get(n) for n in by), []).append(key)
        return list(panels.values())

    by: list[str] = []
    for name in differing[:-1]:  # the last one stays a colour
        if max(map(len, split(by))) <= MAX_LINES or len(split([*by, name])) > MAX_PANELS:
            break
        by.append(name)
    return split(by)


def _wrap(text: str, width_in: float, size: float = FONT + 1) -> str:
    """`text` on as few lines as fit `width_in` inches at font size `size`."""
    return textwrap.fill(text, int(width_in * 72 / (size * CHAR_EM)))


def _shared_text(keys: list[SeriesKey], outer: list[SeriesKey] = ()) -> str:
    """What `keys` share (their device and model, when one), less what `outer` shares."""
    common = _shared(list(outer)) if outer else {}
    head = []
    for of in (lambda k: k.device, lambda k: k.model):
        mine = {of(k) for k in keys}
        if len(mine) == 1 and len({of(k) for k in outer}) != 1:
            head.append(mine.pop())
    words = [w for n, w in _shared(keys).items() if common.get(n) != w]
    return " · ".join(head + ([" ".join(words)] if words else []))


# ---- drawing -----------------------------------------------------------------------------


def _palette(names: list[str]) -> dict[str, tuple]:
    """A colour per label. Labels that are values of one number ("width=64", ...) run
    dark to light; where one field takes two values, the two share a hue, dark and
    light (tab20's pairs); else tab10, or tab20 when there are more."""
    words = [dict(w.partition("=")[::2] for w in n.split()) for n in names]
    fields = list(words[0]) if words and all(w.keys() == words[0].keys() for w in words) else []
    values = {f: list(dict.fromkeys(w[f] for w in words)) for f in fields}
    if len(fields) == 1 and len(names) >= 4 and all(_is_number(v) for v in values[fields[0]]):
        ranked = sorted(values[fields[0]], key=float)
        cmap = colormaps["viridis"]
        return {
            n: cmap(0.9 * ranked.index(w[fields[0]]) / (len(ranked) - 1))
            for n, w in zip(names, words)
        }
    pairs = [f for f in fields if len(values[f]) == 2]
    if len(fields) > 1 and pairs:
        shade = pairs[-1]
        hues = list(dict.fromkeys(tuple(w[f] for f in fields if f != shade) for w in words))
        if len(hues) <= 10:
            cmap = colormaps["tab20"]
            return {
                n: cmap(
                    2 * hues.index(tuple(w[f] for f in fields if f != shade))
                    + values[shade].index(w[shade])
                )
                for n, w in zip(names, words)
            }
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _on_curve(xs, ys, at: float) -> float:
    """The curve's value at `at`, interpolated on log-log axes."""
    return float(np.exp(np.interp(np.log(at), np.log(xs), np.log(ys))))


def _draw_series(axes, points: list[dict], x: str, style: dict) -> dict:
    """One series on each panel (time per call, and per example against batch): measured
    solid with markers and the 95% interval of each median (analysis.interval) as an error
    bar, its roofline dashed in the same colour, and against batch its b*
    (a star on the roofline) and its knee (a ring on the measured curve). Says which
    marks it drew."""
    xs = [x_value(r, x) for r in points]
    t = [r["time"]["median_s"] * 1e3 for r in points]
    band = [[v * 1e3 for v in analysis.interval(r)] for r in points]  # the median's 95%
    pred = [r["prediction"]["lower_s"] * 1e3 for r in points]
    model = [r["prediction"].get("model_s") for r in points]
    model = [v * 1e3 for v in model] if all(model) else None
    b_star = knee = model_knee = None
    drew_bars = False
    if x == "batch":
        fit = analysis.fit_knee(xs, t)
        knee = fit.batch if fit.found else None
        b_star = record.b_star(points[-1])
        b_star = b_star if b_star is not None and min(xs) <= b_star <= max(xs) else None
        if model is not None:
            fit = analysis.model_knee(points)
            model_knee = fit.batch if fit.found else None
    for ax, gid, per in zip(axes, ("measured", "measured_per_example"), ([1] * len(xs), xs)):
        measured = [v / s for v, s in zip(t, per)]
        roof = [v / s for v, s in zip(pred, per)]
        ax.plot(xs, measured, "-", marker=style["marker"], ms=5, color=style["color"], gid=gid)
        if any(hi > lo for lo, hi in band):
            ax.errorbar(
                xs,
                measured,
                yerr=[
                    [m - lo / s for m, (lo, _), s in zip(measured, band, per)],
                    [hi / s - m for m, (_, hi), s in zip(measured, band, per)],
                ],
                fmt="none",
                ecolor=style["color"],
                gid="ci95",
                **ERROR_BAR,
            )
            drew_bars = True
        ax.plot(xs, roof, color=style["color"], gid="roofline", **ROOFLINE)
        if model is not None:
            curve = [v / s for v, s in zip(model, per)]
            ax.plot(xs, curve, color=style["color"], gid="model", **MODEL)
            if model_knee is not None:
                at = _on_curve(xs, curve, model_knee)
                ax.plot([model_knee], [at], color=style["color"], **MODEL_KNEE)
        if b_star is not None:
            ax.plot([b_star], [_on_curve(xs, roof, b_star)], color=style["color"], **B_STAR)
        if knee is not None:
            ax.plot([knee], [_on_curve(xs, measured, knee)], color=style["color"], **KNEE)
    return {
        "b*": b_star is not None,
        "knee": knee is not None,
        "ci95": drew_bars,
        "model": model is not None,
        "model knee": model_knee is not None,
    }


class _Plain(LogFormatter):
    """The log ticks LogFormatter labels, written 0.2 rather than 2e-01."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _format_axes(ax, x: str, xs: list, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted(set(xs))
    if len(ticks) <= 12:  # the measured values themselves, not powers of two
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], fontsize=FONT)
        ax.xaxis.set_minor_locator(NullLocator())
    # Plain numbers; on a short range some minor ticks too, so no panel shows one number.
    ax.yaxis.set_major_formatter(_Plain())
    ax.yaxis.set_minor_formatter(_Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.tick_params(which="both", labelsize=FONT)
    ax.set_xlabel("batch size" if x == "batch" else x, fontsize=FONT + 1)
    ax.set_ylabel(ylabel, fontsize=FONT + 1)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def _legend_columns(texts: list[str], width_in: float) -> int:
    """As many legend columns as the widest label lets fit across the figure."""
    widest = max(max(len(line) for line in t.split("\n")) for t in texts)
    per_column_in = (widest * CHAR_EM * FONT + 40) / 72  # text, plus the handle and padding
    return max(1, min(len(texts), int(width_in / per_column_in), 6))


def _legend(fig: Figure, colour: dict, devices: dict, drew: dict, width: float) -> None:
    """Below the panels: a line per label, a marker per device, then the styles once."""
    grey = dict(color="gray")
    handles = [Line2D([], [], color=c, marker="o", ms=4, label=n) for n, c in colour.items() if n]
    handles += [Line2D([], [], marker=m, ls="none", label=d, **grey) for d, m in devices.items()]
    handles += [
        Line2D([], [], marker="o", ms=4, label="measured", **grey),
        Line2D([], [], label="roofline lower bound", **grey, **ROOFLINE),
    ]
    if drew["ci95"]:
        handles.append(
            Line2D(
                [], [], marker="|", ms=8, mew=1.0, ls="none", label="95% CI of the median", **grey
            )
        )
    if drew["model"]:
        handles.append(Line2D([], [], label="per-kernel model", **grey, **MODEL))
    if drew["model knee"]:
        handles.append(Line2D([], [], label="model's knee", **grey, **MODEL_KNEE))
    if drew["b*"]:
        handles.append(Line2D([], [], label="predicted b*", **grey, **B_STAR))
    if drew["knee"]:
        handles.append(Line2D([], [], label="measured knee", **grey, **KNEE))
    texts = [h.get_label() for h in handles]
    ncols = _legend_columns(texts, width)
    fig.legend(
        handles=handles, loc="outside lower center", ncols=ncols, fontsize=FONT, frameon=False
    )


def figure(records: list[dict], x: str = "batch", title: str = "") -> Figure:
    """Measured (solid) against the roofline (dashed) on log axes, one line per series.

    Each model gets its own panels, and so does each group of a model's series when they
    are more than MAX_LINES. Against batch, each group has a second panel of time per
    example, a star marks each series' predicted critical batch on its roofline and a
    ring its fitted knee on the measured curve. The legend is below the panels.
    """
    groups = analysis.series(records, x)
    if not groups:
        raise ValueError("no successful points to plot")
    keys = list(groups)
    cells = [
        cell
        for model in dict.fromkeys(k.model for k in keys)
        for cell in _facets([k for k in keys if k.model == model])
    ]
    label = {k: text for cell in cells for k, text in labels(cell).items()}
    devices = list(dict.fromkeys(k.device for k in keys))
    by_device = len(devices) > 1 and set(label.values()) == {""}
    if by_device:  # nothing but the device tells the lines apart: it is their colour
        label = {k: k.device for k in keys}
    colour = _palette(list(dict.fromkeys(label[k] for k in keys)))
    apart = by_device or all(len({k.device for k in cell}) == 1 for cell in cells)
    marker = {d: MARKERS[0 if apart else i % len(MARKERS)] for i, d in enumerate(devices)}

    n_panels = 2 if x == "batch" else 1
    cols = 1 if n_panels == 2 or len(cells) == 1 else 2
    rows = -(-len(cells) // cols)
    width = PANEL_W * n_panels * cols + 0.6
    subtitle = _shared_text(keys)
    head = title or "measured (solid) vs roofline lower bound (dashed)"
    head += f"\n{_wrap('every line: ' + subtitle, width)}" if subtitle else ""
    entries = len(colour) + (0 if apart else len(devices)) + 4
    legend_rows = -(-entries // 3)  # a guess, for the figure's height only
    height = rows * PANEL_H + 0.2 * head.count("\n") + 0.5 + 0.17 * legend_rows
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    places = fig.subfigures(rows, cols, squeeze=False).ravel() if len(cells) > 1 else [fig]
    drew = {"b*": False, "knee": False, "ci95": False, "model": False, "model knee": False}
    panels = []
    for place, cell in zip(places, cells):
        axes = place.subplots(1, n_panels, squeeze=False)[0]
        panels.append(axes)
        for key in cell:
            style = {"color": colour[label[key]], "marker": marker[key.device]}
            for mark, done in _draw_series(axes, groups[key], x, style).items():
                drew[mark] |= done
        xs = [x_value(r, x) for k in cell for r in groups[k]]
        for ax, ylabel in zip(axes, ("time per call (ms)", "time per example (ms)")):
            _format_axes(ax, x, xs, ylabel)
        if len(cells) > 1:
            place.suptitle(_wrap(_shared_text(cell, keys), width / cols), fontsize=FONT + 1)
    for column in zip(*panels):  # one scale per quantity, so panels compare at a glance
        low = min(ax.get_ylim()[0] for ax in column)
        high = max(ax.get_ylim()[1] for ax in column)
        for ax in column:
            ax.set_ylim(low / 1.1, high * 1.1)
    shown = {} if apart else marker  # a marker per device, unless colours or panels tell
    _legend(fig, colour, shown, drew, width)
    fig.suptitle(head, fontsize=FONT + 1)
    return fig


def plot_records(records: list[dict], path: str, x: str = "batch", title: str = "") -> str:
    """figure(records, x, title) saved at `path` (written whole, then renamed into place,
    so a reader never sees half a PNG); returns `path`."""
    fig = figure(records, x, title)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
