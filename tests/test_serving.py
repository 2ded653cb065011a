"""The serving view on synthetic records whose answer is known: throughput per batch,
the best batch under a latency target (p99 where recorded), none when no batch meets it,
predicted beside measured, decode per context length, and the plot."""

import pytest
from conftest import run_cli, synthetic
from test_plots import CPU, layout_problems

from batchlab import results, serving, summary
from batchlab.numerics import Numerics
from batchlab.workloads import decoder as dec_wl

MLP = {"depth": 2, "width": 32, "input_width": 0}
BATCHES = (1, 2, 4, 8, 16)
MEDIAN_MS = (1.0, 1.2, 1.6, 2.4, 6.0)  # throughput 1000, 1667, 2500, 3333, 2667 per s
P99_MS = (1.5, 1.8, 2.5, 4.0, 7.0)
PRED_MS = (0.5, 0.5, 0.5, 0.8, 1.5)  # predicted 2000, 4000, 8000, 10000, 10667 per s


def timed(model, params, batch, median_ms, p99_ms=None, pred_ms=None, config="") -> dict:
    prov, ceilings = CPU
    r = synthetic(model, params, batch, Numerics(), ceilings, median_ms / 1e3, prov, config)
    if p99_ms is not None:
        r["time"]["p99_s"] = p99_ms / 1e3
    if pred_ms is not None:
        r["prediction"]["lower_s"] = pred_ms / 1e3
    return r


def mlp(p99=True) -> list[dict]:
    return [
        timed("mlp", MLP, b, m, p if p99 else None, q)
        for b, m, p, q in zip(BATCHES, MEDIAN_MS, P99_MS, PRED_MS)
    ]


def test_throughput_is_examples_per_second_at_the_median():
    (s,) = serving.series(mlp())
    assert s.kind == serving.CALL and s.unit == "examples"
    assert [p.throughput for p in s.points] == pytest.approx(
        [1000, 5000 / 3, 2500, 10000 / 3, 8000 / 3]
    )
    assert [p.batch for p in s.pareto()] == [1, 2, 4, 8]  # 16 is slower and serves less


def test_the_best_batch_under_a_p99_target():
    (s,) = serving.series(mlp())
    assert s.best(3e-3).point.batch == 4  # p99 of batch 8 is 4 ms: over the target
    assert s.best(None).point.batch == 8  # no target: the most throughput
    assert s.best(3e-3, predicted=True).point.batch == 16  # 1.5 ms predicted
    text = serving.best_text(s, 3e-3)
    assert text == "batch 4: 2500 examples/s, latency 1.600 ms (p99 2.500 ms)"
    assert serving.target_text(s, 3e-3) == "latency p99 <= 3 ms"


def test_without_p99_the_target_checks_the_median_and_says_so():
    (s,) = serving.series(mlp(p99=False))
    assert s.best(3e-3).point.batch == 8
    assert serving.target_text(s, 3e-3) == "latency median (no p99 recorded) <= 3 ms"


def test_no_batch_under_the_target():
    (s,) = serving.series(mlp())
    best = s.best(1e-3)
    assert best.point is None and best.fastest.batch == 1
    assert serving.best_text(s, 1e-3) == (
        "no batch meets it (the fastest, batch 1, takes 1.500 ms)"
    )


def test_a_per_kernel_prediction_is_preferred_to_the_roofline():
    rs = mlp()
    rs[0]["prediction"]["model_s"] = 0.1e-3  # 10000 per s at batch 1
    (s,) = serving.series(rs)
    assert s.points[0].predicted_s == 0.1e-3 and s.predicted_by == "per-kernel model"
    assert s.best(0.2e-3, predicted=True).point.batch == 1


def decode_records() -> list[dict]:
    point = {p.name: p.default[0] for p in dec_wl.DECODE.params}
    out = []
    for context, ms in ((256, (10.0, 12.0, 40.0)), (2048, (20.0, 50.0, 160.0))):
        for b, m in zip((1, 4, 16), ms):
            out.append(timed("decode", point | {"context": context}, b, m, 1.1 * m))
    return out


def test_decode_is_tokens_per_second_with_the_time_per_output_token_per_context():
    by_context = {s.key.get("context"): s for s in serving.series(decode_records())}
    short, long = by_context[256], by_context[2048]
    assert short.kind == serving.DECODE and short.unit == "tokens"
    assert [p.throughput for p in short.points] == pytest.approx([100, 4 / 0.012, 400])
    assert short.best(15e-3).point.batch == 4  # p99 13.2 ms; batch 16's is 44 ms
    assert long.best(15e-3).point is None  # batch 1's p99 is 22 ms
    lines = serving.context_table(serving.series(decode_records()), 15e-3)
    assert "best batch per context length, TPOT p99 <= 15 ms" in lines[0]
    row = {int(line.split()[0]): line for line in lines[2:]}
    assert "batch 4: 333.3 tokens/s, TPOT 12.000 ms (p99 13.200 ms)" in row[256]
    assert "no batch meets it (the fastest, batch 1, takes 22.000 ms)" in row[2048]


def test_prefill_counts_prompt_tokens_and_reports_the_time_to_first_token():
    point = {p.name: p.default[0] for p in dec_wl.PREFILL.params} | {"prompt_len": 64}
    (s,) = serving.series([timed("prefill", point, 2, 10.0)])
    assert s.kind == serving.PREFILL and s.latency_name == "TTFT"
    assert s.points[0].throughput == pytest.approx(2 * 64 / 0.010)


def test_the_sweep_summary_has_a_serving_section():
    text = summary.table(mlp())
    assert "serving (python -m experiments.serve" in text
    assert "mlp: examples/s b1: 1000 b2: 1667 b4: 2500 b8: 3333 b16: 2667; most at batch 8" in text


def test_the_plot_labels_batches_and_keeps_legends_off_the_panels():
    fig = serving.figure(mlp() + decode_records(), 3e-3)
    assert layout_problems(fig) == []
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"1", "2", "4", "8", "16"} <= texts
    legends = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "context=256" in legends and "Pareto front" in legends


def test_the_script_on_a_results_directory(tmp_path):
    for r in mlp():
        results.append(str(tmp_path / results.RESULTS), r)
    plot = tmp_path / "serving.png"
    proc = run_cli(str(tmp_path), "--slo_ms=3", f"--plot={plot}", module="experiments.serve")
    assert proc.returncode == 0, proc.stderr
    assert "best under latency p99 <= 3 ms: batch 4: 2500 examples/s" in proc.stdout
    assert "predicted (roofline lower bound): batch 16: 1.067e+04 examples/s" in proc.stdout
    assert plot.stat().st_size > 10_000
    bad = run_cli(str(tmp_path), "--slo_ms=0", module="experiments.serve")
    assert bad.returncode == 2 and bad.stderr == "error: --slo_ms=0.0: must be > 0\n"
