"""Runs seed flagfiles and prints, per point, what issues ask to be recorded.

  python benchmarks/seed_sweeps.py configs/seed/decode.flags configs/seed/prefill.flags

For each flagfile: its wall time, and per point the median time, the roofline lower
bound, the measured/predicted ratio and the attained fraction of the calibrated peak
and bandwidth, as a Markdown table. Results go to a fresh temporary directory.
"""

import os
import subprocess
import sys
import tempfile
import time

from batchlab import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(flagfile: str, out_dir: str) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            f"--flagfile={flagfile}",
            f"--out_dir={out_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{flagfile}: {proc.stderr}")
    print(proc.stdout[proc.stdout.find("\n\n") :])  # the summary and verdicts
    return wall, results.load(os.path.join(out_dir, results.RESULTS))


def main(flagfiles: list[str]) -> None:
    tmp = tempfile.mkdtemp(prefix="seed-")
    for i, flagfile in enumerate(flagfiles):
        wall, records = run(flagfile, os.path.join(tmp, str(i)))
        ok = [r for r in records if r["status"] == "ok"]
        ceil = ok[0]["ceilings"]
        print(
            f"\n### {flagfile}: {wall:.0f} s wall, ceilings {ceil['peak_flops'] / 1e9:.0f} "
            f"GFLOP/s, {ceil['bandwidth'] / 1e9:.1f} GB/s ({ceil['source']})\n"
        )
        print("| point | median | roofline | measured/roofline | % peak | % bandwidth |")
        print("|---|---|---|---|---|---|")
        for r in ok:
            a = r["attained"]
            print(
                f"| {r['id']} | {r['time']['median_s'] * 1e3:.3f} ms | "
                f"{r['prediction']['lower_s'] * 1e3:.3f} ms | "
                f"{r['time']['median_s'] / r['prediction']['lower_s']:.2f} | "
                f"{100 * a['fraction_of_peak']:.0f}% | {100 * a['fraction_of_bandwidth']:.0f}% |"
            )
        for r in records:
            if r["status"] != "ok":
                print(f"| {r['id']} | FAILED: {r['error']} |||||")


if __name__ == "__main__":
    main(sys.argv[1:])
