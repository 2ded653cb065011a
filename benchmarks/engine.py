"""Benchmarks of the sweep engine's promises (issue 2), printed as a Markdown block.

  python benchmarks/engine.py [--skip_runs]

1. Harness overhead: the harness's median for the MLP at b=1 against a bare
   `f(x).block_until_ready()` loop in the same process, interleaved in rounds.
2. Wall time of `configs/seed/mlp.flags`, process start to plot, twice into fresh
   directories (the first includes calibration of this CPU).
3. Stability: how many points of the two runs agree within 10%.
4. Fidelity: fraction of the calibrated peak at the largest batches, and the measured
   knee against the predicted critical batch.

The in-process timing (1.) runs in a child process of its own (`--harness_child`), so that
this process holds no device while the sweeps it starts measure (on a GPU the first
process to start a backend takes 75% of its memory; a TPU admits one process).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from batchlab import analysis, record, results, timing
from batchlab.numerics import Numerics
from batchlab.workloads import mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def harness_overhead(rounds=7, reps=400):
    """Median of per-round ratios harness/bare for the post's MLP at b=1."""
    work = mlp.build(
        {"depth": 8, "width": 1024, "input_width": 0}, 1, Numerics(), jax.random.PRNGKey(0)
    )
    f = jax.jit(work.fn)
    w, (x,) = work.weights, work.inputs
    f(w, x).block_until_ready()
    compiled = timing.compile_ahead(work.fn, (w, x)).compiled
    spec = timing.TimingSpec(target_spread=0.0, time_budget_s=1e9, min_reps=reps, max_reps=reps)
    ratios, bare_all, harness_all = [], [], []
    for _ in range(rounds):
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f(w, x).block_until_ready()
            samples.append(time.perf_counter() - t0)
        bare = float(np.median(samples))
        harness = timing.time_calls(lambda i: jax.block_until_ready(compiled(w, x)), spec).median_s
        ratios.append(harness / bare)
        bare_all.append(bare)
        harness_all.append(harness)
    return float(np.median(ratios)), float(np.median(bare_all)), float(np.median(harness_all))


def harness_overhead_in_child():
    """harness_overhead() measured in a child process: (ratio, bare, harness)."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--harness_child"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr)
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


def sweep_run(out_dir):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--flagfile=configs/seed/mlp.flags",
            f"--out_dir={out_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr)
    return time.perf_counter() - t0, results.load(os.path.join(out_dir, results.RESULTS))


def main():
    if "--harness_child" in sys.argv:
        print(json.dumps(harness_overhead()))
        return
    ratio, bare, harness = harness_overhead_in_child()
    print("| benchmark | result |\n|---|---|")
    print(
        f"| harness vs bare loop, MLP 8x1024 b=1 | harness {harness * 1e3:.3f} ms, bare "
        f"{bare * 1e3:.3f} ms, median ratio {ratio:.3f} ({100 * (ratio - 1):+.1f}%) |"
    )
    if "--skip_runs" in sys.argv:
        return
    tmp = tempfile.mkdtemp(prefix="bench-")
    wall1, run1 = sweep_run(os.path.join(tmp, "a"))
    wall2, run2 = sweep_run(os.path.join(tmp, "b"))
    print(
        f"| configs/seed/mlp.flags wall time, start to plot | {wall1:.1f} s (fresh, with "
        f"calibration), {wall2:.1f} s (second run) |"
    )
    t1 = {r["id"]: r["time"]["median_s"] for r in run1}
    t2 = {r["id"]: r["time"]["median_s"] for r in run2}
    diffs = {k: abs(t1[k] / t2[k] - 1) for k in t1}
    agree = sum(d <= 0.10 for d in diffs.values())
    print(
        f"| two runs agree within 10% | {agree}/{len(diffs)} points (worst "
        f"{100 * max(diffs.values()):.1f}%) |"
    )
    for name, run in (("run 1", run1), ("run 2", run2)):
        big = sorted(run, key=lambda r: r["batch"])[-3:]
        fracs = ", ".join(
            f"b={r['batch']}: {100 * r['attained']['fraction_of_peak']:.0f}%" for r in big
        )
        ((key, pts),) = analysis.series(run).items()
        ceil = pts[0]["ceilings"]
        b_star = record.b_star(pts[-1])
        knee = analysis.fit_knee(*analysis.times(pts))
        print(
            f"| {name}: fraction of calibrated peak ({ceil['peak_flops'] / 1e9:.0f} GFLOP/s, "
            f"{ceil['bandwidth'] / 1e9:.1f} GB/s) | {fracs} |"
        )
        print(
            f"| {name}: measured knee vs predicted b* | {knee.text()} vs {b_star:.1f} "
            + (f"(ratio {knee.batch / b_star:.2f}) |" if knee.found else "|")
        )


if __name__ == "__main__":
    main()
