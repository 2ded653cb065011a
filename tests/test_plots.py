"""Every plot is readable: on each shipped seed config's whole grid (synthetic records,
one device and two), the sweep's plots and each claim's report plot keep the legend off
the panels and every title inside the figure, label each line in a few words and draw
one line per series; and the check says no to a legend laid on the data."""

import glob
import os

import numpy as np
import pytest
from conftest import ROOT, synthetic
from matplotlib.axes import Axes
from matplotlib.legend import Legend
from matplotlib.text import Text

from batchlab import analysis, claims, config, plotting, record, roofline, workloads
from experiments import sweep_flags

SEEDS = sorted(glob.glob(os.path.join(ROOT, "configs", "seed", "*.flags")))
CPU = (
    {"backend": "cpu", "device_kind": "cpu", "host": "test"},
    roofline.Ceilings(100e9, 20e9, "flags"),
)
T4 = (
    {"backend": "gpu", "device_kind": "Tesla T4", "host": "g"},
    roofline.Ceilings(8e12, 300e9, "flags"),
)
MAX_LABEL = 60  # characters in one legend entry


def seed_records(path: str, device=CPU, seed=0) -> tuple[config.SweepConfig, list[dict]]:
    """Records for the whole grid of one seed flagfile: 1.5x the roofline plus a 2 ms
    floor per call (so the knee test finds knees), with 5% noise."""
    cfg = sweep_flags.parse([f"--flagfile={path}"])
    prov, ceilings = device
    rng = np.random.default_rng(seed)
    out = []
    for params, batch in config.grid_points(cfg):
        lower = synthetic(cfg.model, params, batch, cfg.numerics, ceilings, None, prov)
        t = 1.5 * lower["prediction"]["lower_s"] * (1 + 0.05 * rng.standard_normal()) + 2e-3
        out.append(
            synthetic(cfg.model, params, batch, cfg.numerics, ceilings, t, prov, cfg.config_name)
        )
    return cfg, out


@pytest.fixture(scope="module")
def by_seed():
    """config name -> (config, records on one CPU)."""
    made = (seed_records(path) for path in SEEDS)
    return {cfg.config_name: (cfg, records) for cfg, records in made}


def layout_problems(fig) -> list[str]:
    """What makes a drawn figure unreadable: a legend over any panel, or a legend or a
    title cut off by the figure's edge."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    axes = [a for a in fig.findobj(Axes) if a.get_visible()]
    legends = fig.findobj(Legend)
    problems = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            over = ax.get_window_extent(renderer)
            if min(box.x1, over.x1) > max(box.x0, over.x0) and (
                min(box.y1, over.y1) > max(box.y0, over.y0)
            ):
                problems.append(f"the legend covers the panel {ax.get_ylabel()!r}")
    ticks = {
        id(t)
        for ax in axes
        for axis in (ax.xaxis, ax.yaxis)
        for minor in (False, True)
        for t in axis.get_ticklabels(minor=minor, which="both")
    }  # some lie off the panel, and are not drawn
    titles = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for artist in legends + [t for t in titles if t.axes is None and id(t) not in ticks]:
        box = artist.get_window_extent(renderer)
        if box.x0 < page.x0 - 1 or box.x1 > page.x1 + 1 or box.y0 < page.y0 - 1:
            problems.append(f"{type(artist).__name__} is cut off by the figure's edge")
    return problems


def check(fig, records: list[dict], x: str) -> None:
    """The figure is readable and draws each series once."""
    assert layout_problems(fig) == []
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert texts and max(map(len, texts)) <= MAX_LABEL, texts
    lines = [ln for ax in fig.findobj(Axes) for ln in ax.get_lines()]
    n = len(analysis.series(records, x))
    assert sum(ln.get_gid() == "measured" for ln in lines) == n
    assert sum(ln.get_gid() == "roofline" for ln in lines) == n * (2 if x == "batch" else 1)


def sweep_axes(cfg: config.SweepConfig) -> list[str]:
    """What plot_dir draws this sweep against: batch, and each plot axis that varies."""
    varied = [a for a in workloads.get(cfg.model).plot_axes if len(cfg.grid.get(a, ())) > 1]
    return ["batch", *varied]


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: os.path.basename(p)[: -len(".flags")])
def test_every_sweep_plot_of_a_seed_config_is_readable(path, by_seed):
    name = os.path.basename(path)[: -len(".flags")]
    cfg, records = by_seed[name]
    for x in sweep_axes(cfg):
        check(plotting.figure(records, x), records, x)


def claim_records(claim: claims.Claim, by_seed: dict, two_devices: bool) -> list[dict]:
    """What the report plots for `claim`: its configs' records, on one device or two."""
    names = [n for n in (*claim.seeds, *claim.reads) if n in by_seed]
    mine = [r for n in names for r in by_seed[n][1]]
    if two_devices:
        paths = [os.path.join(ROOT, "configs", "seed", f"{n}.flags") for n in names]
        mine += [r for p in paths for r in seed_records(p, T4, seed=1)[1]]
    chosen = claims.records_of(claim, mine)
    return [r for r in chosen if record.is_point(r) and claim.plot_filter(r)]


@pytest.mark.parametrize(
    "cid,two_devices", [(c, False) for c in claims.CLAIMS] + [("C6", True), ("C8", True)]
)
def test_every_report_plot_is_readable(cid, two_devices, by_seed):
    claim = claims.CLAIMS[cid]
    records = claim_records(claim, by_seed, two_devices)
    title = f"{cid}: measured (solid) vs roofline (dashed)"
    check(plotting.figure(records, claim.plot_x, title), records, claim.plot_x)


def test_the_check_says_no_to_a_legend_on_the_data(by_seed):
    _, records = by_seed["decode"]
    fig = plotting.figure(records)
    assert layout_problems(fig) == []
    handles = fig.legends[0].legend_handles
    fig.axes[0].legend(handles=handles, loc="center")
    assert layout_problems(fig) == ["the legend covers the panel 'time per call (ms)'"]
    fig = plotting.figure(records)
    fig.legends[0].set_loc("center")  # the figure's own legend, moved onto the panels
    assert len(layout_problems(fig)) == 2


def test_labels_say_what_differs_and_the_title_what_is_shared(by_seed):
    _, records = by_seed["decode"]
    fig = plotting.figure(records)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[:2] == ["context=256", "context=2048"]
    assert "depth=8" in fig.get_suptitle() and "cpu (test)" in fig.get_suptitle()
    # Two configs that measured the same setup are told apart by their config.
    both = by_seed["decode"][1] + by_seed["kv_crossover"][1]
    keys = [k for k in analysis.series(both, "context") if k.get("batch") == 4]
    assert sorted(plotting.labels(keys).values()) == ["config=decode", "config=kv_crossover"]


def test_a_combined_plot_has_a_row_per_model(by_seed):
    records = [r for n in ("moe_layer", "moe_decode", "moe_prefill") for r in by_seed[n][1]]
    fig = plotting.figure(records)
    assert [sf.get_suptitle().split(" ·")[0] for sf in fig.subfigs] == [
        "moe_decode",
        "moe_layer",
        "moe_prefill",
    ]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    routers = ["router=dropless", "router=expert_choice", "router=token_choice"]
    assert sorted(texts[:3]) == routers  # one entry per router, shared by the rows


def test_plot_records_writes_the_png_whole(by_seed, tmp_path):
    _, records = by_seed["mlp"]
    path = plotting.plot_records(records, str(tmp_path / "p.png"), title="C3")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["p.png"]  # no temporary file left beside it
