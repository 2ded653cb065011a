"""Does the sharding machinery cost anything? (issue 7) A Markdown table on stdout.

  python benchmarks/sharding_overhead.py [--rounds=7]

Each point is compiled twice on the first device: as the sweep compiles it without a
mesh, and laid out on a one-device mesh `data:1` (NamedSharding inputs, replicated
weights: distributed.place_workload). Both are timed in alternating rounds with the
sweep's harness; the table gives the median of the per-round ratios sharded/unsharded.
Within noise means a ratio near 1 with both spreads covering the gap. Meant for a GPU
or TPU; on CPU it checks the same thing against a noisier clock.
"""

import argparse

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from batchlab import distributed, timing
from batchlab.numerics import Numerics
from batchlab.workloads import REGISTRY

MLP = {"depth": 8, "width": 1024, "input_width": 0}
DECODER = {
    "depth": 4,
    "width": 512,
    "heads": 8,
    "kv_heads": 8,
    "ffn": 2048,
    "ffn_kind": "gated",
    "position_kind": "rope",
    "embeddings": "tied",
    "vocab": 4096,
    "max_len": 512,
    "context": 256,
}
POINTS = [("mlp", MLP, b) for b in (1, 64, 512)] + [("decode", DECODER, b) for b in (1, 16)]


def compiled_pair(family, point, batch, mesh):
    """(unsharded call, sharded call), each a fresh compiled executable on its arrays."""

    def build():
        return REGISTRY[family].build(point, batch, Numerics(), jax.random.PRNGKey(0))

    # Two builds: device_put onto the same device may alias, and a donated cache is gone.
    work, placed = build(), distributed.place_workload(build(), batch, mesh)
    calls = []
    for fn, weights, inputs in (
        (work.fn, work.weights, work.inputs),
        (placed.fn, placed.weights, placed.inputs),
    ):
        run = timing.compile_ahead(fn, (weights, *inputs), work.donate_argnums).compiled
        state = {"inputs": inputs}

        def call(i, run=run, weights=weights, state=state):
            out = jax.block_until_ready(run(weights, *state["inputs"]))
            if work.next_inputs is not None:
                state["inputs"] = work.next_inputs(out, state["inputs"])

        calls.append(call)
    return calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget_s", type=float, default=0.5, help="per round and variant")
    args = parser.parse_args()
    # One device, even where there are more: the sharding machinery, not the split.
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(AxisType.Auto,))
    spec = timing.TimingSpec(target_spread=0.0, time_budget_s=args.budget_s, min_reps=20)
    print(f"device: {jax.devices()[0].device_kind}, {args.rounds} alternating rounds\n")
    print("| point | batch | unsharded | data:1 | ratio (median of rounds) | spreads |")
    print("|---|---|---|---|---|---|")
    for family, point, batch in POINTS:
        plain, sharded = compiled_pair(family, point, batch, mesh)
        ratios, a_all, b_all, spreads = [], [], [], []
        for _ in range(args.rounds):
            a = timing.time_calls(plain, spec)
            b = timing.time_calls(sharded, spec)
            ratios.append(b.median_s / a.median_s)
            a_all.append(a.median_s)
            b_all.append(b.median_s)
            spreads += [a.spread, b.spread]
        print(
            f"| {family} | {batch} | {np.median(a_all) * 1e3:.3f} ms | "
            f"{np.median(b_all) * 1e3:.3f} ms | {np.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) | {100 * np.median(spreads):.1f}% |"
        )


if __name__ == "__main__":
    main()
