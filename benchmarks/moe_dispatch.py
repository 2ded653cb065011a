"""MoE dispatch on this backend, printed as Markdown (issue 5's performance promises).

  python benchmarks/moe_dispatch.py [--tokens=1,16,256,1024] [--copies=4]

One MoE layer (width 512, 8 SwiGLU experts of F 2048, top-2) per token count, timed with
each dispatch (batchlab.moe.dispatch), against two yardsticks: k dense FFNs of one
expert's size on the same tokens, and reading k experts' weights at the calibrated
bandwidth. "slots, all experts" turns off the skipping of idle experts, to show what
reading only the touched experts saves at small batch (REFERENCE 2.7). Weight copies
rotate so each call reads cold weights (REFERENCE 2.9). Each dispatch gets its experts in
the layout it takes (stacked for ragged_dot and sorted_gather, built before timing:
batchlab.models.moe.for_dispatch), and the warm-up of the platform (timing.for_platform).
"""

import argparse

import jax
import jax.numpy as jnp

from batchlab import calibration, timing
from batchlab.models import decoder as dec
from batchlab.models import moe as mm
from batchlab.moe import dispatch
from batchlab.numerics import Numerics

D, F, E, K = 512, 2048, 8, 2
SPEC = timing.TimingSpec(target_spread=0.05, time_budget_s=1.0, min_reps=5)
CASES = [  # (label, router, dispatch, skip idle experts)
    ("capacity 1.0, slots", "token_choice", "slots", True),
    ("capacity 1.0, slots, all experts", "token_choice", "slots", False),
    ("capacity 1.0, sorted", "token_choice", "sorted", True),
    ("capacity 1.0, ragged_dot", "token_choice", "ragged", True),
    ("capacity 1.0, sorted_gather", "token_choice", "sorted_gather", True),
    ("dropless, slots (C = B)", "dropless", "slots", True),
    ("dropless, sorted", "dropless", "sorted", True),
    ("dropless, ragged_dot", "dropless", "ragged", True),
    ("dropless, sorted_gather", "dropless", "sorted_gather", True),
]


def _time(fn, weights, x, copies: int) -> float:
    ws = timing.weight_copies(weights, copies)
    compiled = timing.compile_ahead(fn, (weights, x)).compiled
    spec = timing.for_platform(SPEC, jax.default_backend())
    stats = timing.time_calls(lambda i: jax.block_until_ready(compiled(ws[i % len(ws)], x)), spec)
    return stats.median_s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="1,16,256,1024")
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    device = jax.devices()[0]
    bw = calibration.measure(Numerics(), device).bandwidth
    cfg = dec.DecoderConfig(width=D, ffn=F)
    v = mm.MoEFFN(cfg, mm.MoEConfig(E, K)).init(jax.random.PRNGKey(0), jnp.zeros((1, 1, D)))
    dense_ws = [v["params"]["experts"][f"expert_{i}"] for i in range(K)]
    read_s = K * 3 * D * F * 4 / bw
    print(f"### MoE dispatch on {device.device_kind} ({jax.default_backend()}), fp32\n")
    print(
        f"Layer: D={D}, {E} SwiGLU experts of F={F}, top-{K}; {args.copies} weight copies "
        f"rotated. Reading k experts' weights at the calibrated {bw / 1e9:.1f} GB/s: "
        f"{read_s * 1e3:.2f} ms.\n"
    )
    tokens = [int(t) for t in args.tokens.split(",")]
    print("| case | " + " | ".join(f"{n} tokens" for n in tokens) + " |")
    print("|---|" + "---|" * len(tokens))
    rows = {}
    for n in tokens:
        x = jax.random.normal(jax.random.PRNGKey(n), (n, D))
        rows.setdefault("k dense FFNs (yardstick)", []).append(
            _time(
                lambda w, x: sum(dispatch.expert_ffn(wi, x) for wi in w), dense_ws, x, args.copies
            )
        )
        for label, router, name, skip in CASES:
            moe = mm.MoEConfig(E, K, router, 1.0, dispatch=name, skip_idle=skip)

            def fn(w, x, moe=moe):
                return mm.moe_apply(w["params"], w["balance"]["bias"], x, moe)[0]

            rows.setdefault(label, []).append(_time(fn, mm.for_dispatch(v, name), x, args.copies))
    dense = rows["k dense FFNs (yardstick)"]
    for label, ts in rows.items():
        cells = [f"{t * 1e3:.2f} ms ({t / d:.2f}x)" for t, d in zip(ts, dense)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n(x: time over the k dense FFNs at the same tokens)")
    slots1 = rows["capacity 1.0, slots"][0]
    print(
        f"\nAt {tokens[0]} token(s): slots {slots1 * 1e3:.2f} ms = {slots1 / read_s:.2f}x the "
        f"time of reading k experts' weights ({read_s * 1e3:.2f} ms)."
    )


if __name__ == "__main__":
    main()
