"""The serving view, from records alone: what each batch size buys a server.

Per series (record.SeriesKey: one curve against batch) and batch: throughput, latency
(the median call and its p99), and the batch that gives the most throughput under a
latency target, measured and predicted; a throughput-latency plot (the Pareto curve,
each point labelled with its batch).

What a call yields, read from the stored parameters:
- a decode step (a `context` parameter: decode, moe_decode) gives one token per
  sequence: tokens/s = batch / time, and its time is the time per output token (TPOT);
- a prefill (a `prompt_len` parameter) reads batch·prompt_len tokens and gives every
  sequence its first token: tokens/s = batch·prompt_len / time, and its time is the
  time to first token (TTFT);
- any other call gives `batch` examples (tokens for moe_layer and ffn): examples/s.
Decode series are one per context length, and `context_table` lists the best batch of
each context length side by side.

The latency a target is checked against is the p99 of the calls when the records hold
one (`time.p99_s`), else the median, and the view says which. Predicted: a record's
`prediction.model_s` when it has one (the per-kernel model), else the roofline lower
bound `prediction.lower_s`; a prediction has no p99, so its median meets the target.
Imports nothing heavier than batchlab.record: `experiments.serve` runs in about a second.
"""

import dataclasses
import os
from collections import defaultdict

from batchlab import record
from batchlab.record import SeriesKey

TOKENS_PER_CALL_BATCH = {"moe_layer": "tokens", "ffn": "tokens"}  # batch unit, if not examples
DECODE, PREFILL, CALL = "decode", "prefill", "call"
PLOT = "serving.png"


@dataclasses.dataclass(frozen=True)
class Point:
    """One batch of a series, as a server sees it; times in seconds, rates per second."""

    batch: int
    median_s: float
    p99_s: float | None  # None: the record holds no p99 (recorded since issue 14)
    throughput: float  # units per second at the median time (Series.unit)
    predicted_s: float | None
    predicted_throughput: float | None

    def latency_s(self, tail: bool = True) -> float:
        """What a latency target checks: p99 when recorded (and `tail`), else the median."""
        return self.p99_s if tail and self.p99_s is not None else self.median_s


@dataclasses.dataclass(frozen=True)
class Best:
    """The batch with the most throughput whose latency meets the target (all batches
    when there is no target); `point` None when no batch meets it."""

    point: Point | None
    latency_s: float | None  # what was checked: p99, median or predicted
    fastest: Point  # the lowest-latency batch, for "no batch meets it"


@dataclasses.dataclass(frozen=True)
class Series:
    key: SeriesKey
    kind: str  # DECODE, PREFILL or CALL
    unit: str  # what throughput counts: "tokens", "examples", ...
    points: list[Point]
    predicted_by: str = "roofline lower bound"  # or "per-kernel model" (prediction.model_s)

    @property
    def has_p99(self) -> bool:
        return all(p.p99_s is not None for p in self.points)

    @property
    def latency_name(self) -> str:
        return {DECODE: "TPOT", PREFILL: "TTFT"}.get(self.kind, "latency")

    def best(self, slo_s: float | None, predicted: bool = False) -> Best | None:
        """The best batch under `slo_s` (None: no target), measured or predicted; None
        when predicted and no point holds a prediction."""
        pts = [p for p in self.points if not predicted or p.predicted_s is not None]
        if not pts:
            return None
        latency = (lambda p: p.predicted_s) if predicted else (lambda p: p.latency_s())
        rate = (lambda p: p.predicted_throughput) if predicted else (lambda p: p.throughput)
        fastest = min(pts, key=latency)
        ok = [p for p in pts if slo_s is None or latency(p) <= slo_s]
        if not ok:
            return Best(None, None, fastest)
        top = max(ok, key=rate)
        return Best(top, latency(top), fastest)

    def pareto(self) -> list[Point]:
        """The measured points no other beats on both latency (p99, else median) and
        throughput: the batches worth serving at, in batch order."""
        return [
            p
            for p in self.points
            if not any(
                q.latency_s() <= p.latency_s()
                and q.throughput >= p.throughput
                and (q.latency_s(), q.throughput) != (p.latency_s(), p.throughput)
                for q in self.points
            )
        ]


def kind_of(params: dict) -> str:
    if "context" in params:
        return DECODE
    return PREFILL if "prompt_len" in params else CALL


def _predicted_s(r: dict) -> float | None:
    p = r.get("prediction") or {}
    return p.get("model_s", p.get("lower_s"))


def _predicted_by(rs: list[dict]) -> str:
    with_model = any("model_s" in (r.get("prediction") or {}) for r in rs)
    return "per-kernel model" if with_model else "roofline lower bound"


def series(records: list[dict]) -> list[Series]:
    """Every series of successful sweep points, its points in batch order."""
    groups: dict[SeriesKey, list[dict]] = defaultdict(list)
    for r in records:
        if record.is_point(r):
            groups[record.series_key(r)].append(r)
    out = []
    for key, rs in sorted(groups.items()):
        params = rs[0]["params"]
        kind = kind_of(params)
        per_call = params["prompt_len"] if kind == PREFILL else 1
        unit = "tokens" if kind != CALL else TOKENS_PER_CALL_BATCH.get(key.model, "examples")
        points = []
        for r in sorted(rs, key=lambda r: r["batch"]):
            t, pred = r["time"], _predicted_s(r)
            work = r["batch"] * per_call
            points.append(
                Point(
                    r["batch"],
                    t["median_s"],
                    t.get("p99_s"),
                    work / t["median_s"],
                    pred,
                    work / pred if pred else None,
                )
            )
        out.append(Series(key, kind, unit, points, _predicted_by(rs)))
    return out


# ---- text ----------------------------------------------------------------------------------


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e3:.3f}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def target_text(s: Series, slo_s: float | None) -> str:
    if slo_s is None:
        return "no latency target"
    what = "p99" if s.has_p99 else "median (no p99 recorded)"
    return f"{s.latency_name} {what} <= {slo_s * 1e3:g} ms"


def best_text(s: Series, slo_s: float | None, predicted: bool = False) -> str:
    """'batch 16: 385.2 tokens/s, TPOT 41.5 ms (p99 44.0 ms)', or why there is none."""
    best = s.best(slo_s, predicted)
    if best is None:
        return "no prediction stored"
    if best.point is None:
        f = best.fastest
        took = f.predicted_s if predicted else f.latency_s()
        return f"no batch meets it (the fastest, batch {f.batch}, takes {_ms(took)} ms)"
    p = best.point
    if predicted:
        return (
            f"batch {p.batch}: {_rate(p.predicted_throughput)} {s.unit}/s, {_ms(p.predicted_s)} ms"
        )
    tail = f" (p99 {_ms(p.p99_s)} ms)" if p.p99_s is not None else ""
    return (
        f"batch {p.batch}: {_rate(p.throughput)} {s.unit}/s, {s.latency_name} "
        f"{_ms(p.median_s)} ms{tail}"
    )


def series_table(s: Series, slo_s: float | None) -> list[str]:
    """The series' rows (Pareto points starred), then its best batch, measured and
    predicted."""
    lat = s.latency_name
    lines = [
        f"\n{s.key.label}{f' config={s.key.config}' if s.key.config else ''}  [{s.key.device}]",
        f"{'batch':>7} {s.unit + '/s':>13} {lat + ' ms':>11} {'p99 ms':>9} "
        f"{'pred ' + s.unit + '/s':>16} {'pred ms':>9}",
    ]
    front = {p.batch for p in s.pareto()}
    for p in s.points:
        lines.append(
            f"{p.batch:>7} {_rate(p.throughput):>13} {_ms(p.median_s):>11} {_ms(p.p99_s):>9} "
            f"{_rate(p.predicted_throughput):>16} {_ms(p.predicted_s):>9}"
            + ("  *" if p.batch in front else "")
        )
    lines += [
        f"best under {target_text(s, slo_s)}: {best_text(s, slo_s)}",
        f"  predicted ({s.predicted_by}): {best_text(s, slo_s, predicted=True)}",
    ]
    return lines


def context_table(all_series: list[Series], slo_s: float | None) -> list[str]:
    """For decode: the best batch of each context length, one line each, per model."""
    groups: dict[tuple, list[Series]] = defaultdict(list)
    for s in all_series:
        if s.kind == DECODE:
            rest = tuple((k, v) for k, v in s.key.params if k != "context")
            groups[(s.key.model, rest, s.key.dtype, s.key.device, s.key.config)].append(s)
    lines = []
    for (model, rest, dtype, device, config), ss in groups.items():
        if len(ss) < 2:
            continue
        ss = sorted(ss, key=lambda s: s.key.get("context"))
        named = f" config={config}" if config else ""
        lines += [
            f"\n{model} {' '.join(f'{k}={v}' for k, v in rest)} {dtype}{named}  [{device}]: "
            f"best batch per context length, {target_text(ss[0], slo_s)}",
            f"{'context':>8}  {'measured':<60} predicted",
        ]
        for s in ss:
            measured = best_text(s, slo_s)
            lines.append(f"{s.key.get('context'):>8}  {measured:<60} {best_text(s, slo_s, True)}")
    return lines


def text(records: list[dict], slo_s: float | None = None) -> str:
    """The serving view of `records`: a table per series, then decode's per context."""
    all_series = series(records)
    if not all_series:
        return "no successful sweep points to serve"
    head = (
        "serving view: throughput and latency per batch (* the Pareto front: no other "
        "batch has both lower latency and more throughput); "
        + ("no latency target (--slo_ms)" if slo_s is None else f"target {slo_s * 1e3:g} ms")
    )
    lines = [head]
    for s in all_series:
        lines += series_table(s, slo_s)
    lines += context_table(all_series, slo_s)
    return "\n".join(lines)


def section(records: list[dict]) -> list[str]:
    """The sweep summary's serving lines: per series, the throughput at each batch and
    where it peaks."""
    out = []
    all_series = series(records)
    words = _words_by_model([s.key for s in all_series])
    for s in all_series:
        best = s.best(None).point
        rates = " ".join(f"b{p.batch}: {_rate(p.throughput)}" for p in s.points)
        tail = f", p99 {_ms(best.p99_s)} ms" if best.p99_s is not None else ""
        out.append(
            f"{s.key.model} {words[s.key]}".rstrip()
            + f": {s.unit}/s {rates}; most at batch {best.batch} "
            f"({s.latency_name} {_ms(best.median_s)} ms{tail})"
        )
    if out:
        out.insert(0, "\nserving (python -m experiments.serve OUT_DIR --slo_ms=... for a target):")
    return out


# ---- the plot -------------------------------------------------------------------------------


def _label_words(keys: list[SeriesKey]) -> dict[SeriesKey, str]:
    """Each key's fields that differ between `keys` of one model ('' when alone)."""
    fields = [
        dict(k.params) | {"dtype": k.dtype} | ({"config": k.config} if k.config else {})
        for k in keys
    ]
    names = list(dict.fromkeys(n for f in fields for n in f))
    differ = [n for n in names if len({repr(f.get(n)) for f in fields}) > 1]
    return {k: " ".join(f"{n}={f[n]}" for n in differ if n in f) for k, f in zip(keys, fields)}


def _words_by_model(keys: list[SeriesKey]) -> dict[SeriesKey, str]:
    out = {}
    for model in dict.fromkeys(k.model for k in keys):
        out |= _label_words([k for k in keys if k.model == model])
    return out


PANEL_W, AXES_H, TOP = 7.0, 3.4, 0.45  # inches: a panel's width, its axes' height, its title
LEFT, RIGHT, BELOW = 0.85, 0.25, 0.7  # inches round the axes; BELOW: tick labels and x label
LEGEND_COLUMNS, LEGEND_ROW = 3, 0.17  # a legend below each panel: its columns, a row's inches


def _legend_rows(ss: list[Series], slo_s) -> int:
    return -(-(len(ss) + 3 + (slo_s is not None)) // LEGEND_COLUMNS)


def figure(records: list[dict], slo_s: float | None = None):
    """Throughput against latency (p99 where recorded, else median), a panel per model
    and device, a line per series through its batches in order, each point labelled with
    its batch, the Pareto front filled and dominated points hollow; the prediction
    dashed; the latency target a vertical line. Each panel's legend sits below it.

    The layout is computed here rather than by matplotlib's constrained layout, which
    took 2 of the 3.5 s a plot of the reference results cost."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # 0.2 rather than 2e-01; minor ticks on a short range
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    all_series = series(records)
    if not all_series:
        raise ValueError("no successful sweep points to plot")
    panels: dict[tuple, list[Series]] = defaultdict(list)
    for s in all_series:
        panels[(s.key.model, s.key.device)].append(s)
    items = list(panels.items())
    cols = 1 if len(items) == 1 else 2
    grid = [items[i : i + cols] for i in range(0, len(items), cols)]
    heights = [
        TOP + AXES_H + BELOW + LEGEND_ROW * max(_legend_rows(ss, slo_s) for _, ss in row) + 0.1
        for row in grid
    ]
    width, height = PANEL_W * cols, sum(heights) + 0.35
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    top = height - 0.35
    for row, row_h in zip(grid, heights):
        axes_bottom = top - TOP - AXES_H
        for col, ((model, device), ss) in enumerate(row):
            x0 = col * PANEL_W
            ax = fig.add_axes(
                (
                    (x0 + LEFT) / width,
                    axes_bottom / height,
                    (PANEL_W - LEFT - RIGHT) / width,
                    AXES_H / height,
                )
            )
            _draw_panel(ax, ss, slo_s)
            ax.set_title(f"{model} on {device}", fontsize=9)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(Plain())
                axis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
            handles, _ = ax.get_legend_handles_labels()
            grey = dict(color="gray")
            handles += [
                Line2D([], [], ls="--", label="predicted", **grey),
                Line2D([], [], marker="o", ls="none", label="Pareto front", **grey),
                Line2D([], [], marker="o", mfc="white", ls="none", label="dominated", **grey),
            ]
            if slo_s is not None:
                handles.append(Line2D([], [], ls=":", color="k", label="latency target"))
            fig.legend(
                handles=handles,
                loc="upper center",
                bbox_to_anchor=((x0 + PANEL_W / 2) / width, (axes_bottom - BELOW) / height),
                ncols=LEGEND_COLUMNS,
                fontsize=7,
                frameon=False,
            )
        top -= row_h
    fig.suptitle(
        "throughput against latency per batch (labels: batch size)", fontsize=10, y=1 - 0.1 / height
    )
    return fig


def _draw_panel(ax, ss: list[Series], slo_s) -> None:
    words = _label_words([s.key for s in ss])
    for i, s in enumerate(ss):
        color = f"C{i % 10}"
        xs = [p.latency_s() * 1e3 for p in s.points]
        ys = [p.throughput for p in s.points]
        ax.plot(xs, ys, "-", color=color, lw=1.2, label=words[s.key] or "measured", gid="measured")
        front = {p.batch for p in s.pareto()}
        for p, x, y in zip(s.points, xs, ys):
            filled = p.batch in front
            ax.plot([x], [y], "o", ms=5, color=color, mfc=color if filled else "white")
            ax.annotate(str(p.batch), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
        pred = [p for p in s.points if p.predicted_s]
        if pred:
            ax.plot(
                [p.predicted_s * 1e3 for p in pred],
                [p.predicted_throughput for p in pred],
                "--",
                color=color,
                lw=1.0,
                alpha=0.6,
                gid="predicted",
            )
    if slo_s is not None:
        ax.axvline(slo_s * 1e3, color="k", ls=":", lw=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lat = "p99" if all(s.has_p99 for s in ss) else "median"
    ax.set_xlabel(f"{ss[0].latency_name} per call, {lat} (ms)", fontsize=9)
    ax.set_ylabel(f"throughput ({ss[0].unit}/s)", fontsize=9)
    ax.grid(True, which="both", alpha=0.2)
    ax.tick_params(labelsize=8)


def plot(records: list[dict], path: str, slo_s: float | None = None) -> str:
    """figure(records, slo_s) saved at `path`; returns `path`."""
    fig = figure(records, slo_s)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
