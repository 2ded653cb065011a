"""Benchmarks of the sweep engine's promises (issue 2), printed as a Markdown block.

  python benchmarks/engine.py [--skip_runs]

1. Harness overhead: the harness's median for the MLP at b=1 (timing.time_calls on the
   call the sweep makes) against the same AOT executable called in a bare
   `compiled(w, x).block_until_ready()` loop, and against a bare loop of the jitted
   function (jit's C++ dispatch path), interleaved in rounds in one process.
2. Wall time of `configs/seed/mlp.flags`, process start to plot, twice into fresh
   directories (each calibrates this CPU and measures its profile), and twice with
   --rounds=3.
3. Stability: how many points of two back-to-back runs agree within 10% and within 5%,
   with one round and with three.
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


def _bare(fn, reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn().block_until_ready()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def harness_overhead(rounds=9, reps=400) -> dict:
    """Medians over rounds of: the harness, the same executable bare, the jitted function
    bare, and the per-round ratios harness/bare, for the post's MLP at b=1."""
    work = mlp.build(
        {"depth": 8, "width": 1024, "input_width": 0}, 1, Numerics(), jax.random.PRNGKey(0)
    )
    f = jax.jit(work.fn)
    w, (x,) = work.weights, work.inputs
    f(w, x).block_until_ready()
    compiled = timing.compile_ahead(work.fn, (w, x)).compiled
    spec = timing.TimingSpec(target_spread=0.0, time_budget_s=1e9, min_reps=reps, max_reps=reps)
    copies = [w]

    def call(i):  # what batchlab.sweep.measure_point times
        return jax.block_until_ready(compiled(copies[i % len(copies)], x))

    loops = {
        "bare_aot": lambda: _bare(lambda: compiled(w, x), reps),
        "bare_jit": lambda: _bare(lambda: f(w, x), reps),
        "harness": lambda: timing.time_calls(call, spec).median_s,
    }
    names = list(loops)
    got = {"harness": [], "bare_aot": [], "bare_jit": [], "vs_aot": [], "vs_jit": []}
    for r in range(rounds):
        # Each round starts with another loop: whatever comes first (a cold cache, a
        # clock ramping up) falls on each alike.
        t = {n: loops[n]() for n in names[r % 3 :] + names[: r % 3]}
        for k in loops:
            got[k].append(t[k])
        got["vs_aot"].append(t["harness"] / t["bare_aot"])
        got["vs_jit"].append(t["harness"] / t["bare_jit"])
    return {k: float(np.median(v)) for k, v in got.items()}


def harness_overhead_in_child() -> dict:
    """harness_overhead() measured in a child process."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--harness_child"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sweep_run(out_dir, *flags):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--flagfile=configs/seed/mlp.flags",
            f"--out_dir={out_dir}",
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr)
    recs = results.load(os.path.join(out_dir, results.RESULTS))
    return time.perf_counter() - t0, [r for r in recs if record.is_point(r)]


def agreement(run1: list[dict], run2: list[dict]) -> str:
    """How many points two runs agree on within 10% and 5%, and the worst."""
    t1 = {r["id"]: r["time"]["median_s"] for r in run1}
    t2 = {r["id"]: r["time"]["median_s"] for r in run2}
    diffs = [abs(t1[k] / t2[k] - 1) for k in t1 if k in t2]
    return (
        f"{sum(d <= 0.10 for d in diffs)}/{len(diffs)} within 10%, "
        f"{sum(d <= 0.05 for d in diffs)}/{len(diffs)} within 5% (worst {100 * max(diffs):.1f}%)"
    )


def main():
    if "--harness_child" in sys.argv:
        print(json.dumps(harness_overhead()))
        return
    h = harness_overhead_in_child()
    print("| benchmark | result |\n|---|---|")
    print(
        f"| harness vs the same executable bare, MLP 8x1024 b=1 | harness "
        f"{h['harness'] * 1e3:.4f} ms, bare {h['bare_aot'] * 1e3:.4f} ms, median ratio "
        f"{h['vs_aot']:.4f} ({100 * (h['vs_aot'] - 1):+.2f}%) |"
    )
    print(
        f"| harness vs a bare loop of the jitted function | bare jit "
        f"{h['bare_jit'] * 1e3:.4f} ms, median ratio {h['vs_jit']:.4f} "
        f"({100 * (h['vs_jit'] - 1):+.2f}%) |"
    )
    if "--skip_runs" in sys.argv:
        return
    tmp = tempfile.mkdtemp(prefix="bench-")
    wall1, run1 = sweep_run(os.path.join(tmp, "a"))
    wall2, run2 = sweep_run(os.path.join(tmp, "b"))
    print(
        f"| configs/seed/mlp.flags wall time, start to plot | {wall1:.1f} s and {wall2:.1f} s "
        "(each into a fresh directory: calibration and profile included) |"
    )
    print(f"| two runs agree | {agreement(run1, run2)} |")
    wall3, run3 = sweep_run(os.path.join(tmp, "c"), "--rounds=3")
    wall4, run4 = sweep_run(os.path.join(tmp, "d"), "--rounds=3")
    print(
        f"| the same with --rounds=3 | {wall3:.1f} s and {wall4:.1f} s "
        f"({wall3 / wall1:.2f}x and {wall4 / wall2:.2f}x one round) |"
    )
    print(f"| two runs with --rounds=3 agree | {agreement(run3, run4)} |")
    apart = sum(r["time"]["rounds_disagree"] for r in run3 + run4)
    print(f"| points whose rounds disagree (between > within) | {apart}/{len(run3 + run4)} |")
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
