"""Analytic cost of an MoE FFN layer (REFERENCE 2.7), pure functions of its shape.

A point holds: width D, ffn F (per expert), ffn_kind, experts E, top_k k, router,
capacity_factor and shared_experts S. Over B tokens:
  FLOPs    router 2·B·D·E, plus 2·rows·(D·F per matrix, 3 matrices SwiGLU, 2 GELU), plus
           S·B rows of the shared experts. The rows follow the dispatch (`rows`): "slots"
           runs each expert some copy reached on its C slots (C = B when dropless: an
           expert may take every token); "sorted" and "ragged" run the copies kept, B·k
           when dropless; "sorted_gather" every row of its static blocks (dispatch.
           gather_blocks: the kept copies padded to whole blocks, and blocks for any
           loads), which all run; "auto" (not yet resolved to one) counts REFERENCE 2.7's ideal:
           the padded capacity E·C, or B·k for the dropless routers (dropless,
           deepseek_v3);
  weights  the router, plus the experts read: the expected number some token picked,
           E·(1 − (1 − k/E)^B) under uniform routing, for token choice (deepseek_v3's
           group limit ignored); all E for expert choice (every expert takes C >= 1
           tokens); and every shared expert;
  activations  x in and y out, fp32 logits, and per routed row: the gathered input, each
           matmul's input and output, the expert output combined back; per shared row
           the same less the gather; for "sorted_gather", each block's gathered copy of
           its expert's weights, written and read back.
"""

import math

from batchlab.cost import Cost
from batchlab.moe import dispatch as moedispatch
from batchlab.moe import expert_parallel, routing
from batchlab.numerics import Numerics


def expected_touched(experts: int, k: int, tokens: int) -> float:
    """Distinct experts picked by B tokens choosing k of E uniformly: E·(1 − (1 − k/E)^B)."""
    return experts * (1 - (1 - k / experts) ** tokens)


def matrices(point) -> list[tuple[int, int]]:
    """(in, out) of one expert's matrices."""
    d, f = point["width"], point["ffn"]
    return [(d, f), (d, f), (f, d)] if point["ffn_kind"] == "gated" else [(d, f), (f, d)]


def rows(point, tokens: int) -> float:
    """Rows the experts compute under the point's dispatch (module docstring); expected
    values under uniform routing, so not always whole."""
    e, k = point["experts"], point["top_k"]
    dropless = point["router"] in routing.DROPLESS
    slots = tokens if dropless else routing.capacity(tokens, k, e, point["capacity_factor"])
    dispatch = point.get("dispatch", "auto")
    if dispatch == "slots":
        return experts_read(point, tokens) * slots
    if dispatch in ("sorted", "ragged"):
        return float(tokens * k if dropless else min(tokens * k, e * slots))
    if dispatch == "sorted_gather":
        big, blocks = gather_blocks(point, tokens)
        return float(big * blocks)
    return float(tokens * k if dropless else e * slots)


def copies(point, tokens: int) -> int:
    """Token copies a router makes of `tokens` tokens: k each (token choice, dropless,
    deepseek_v3), or C per expert (expert choice)."""
    e, k = point["experts"], point["top_k"]
    if point["router"] == "expert_choice":
        return e * routing.capacity(tokens, k, e, point["capacity_factor"])
    return tokens * k


def gather_blocks(point, tokens: int) -> tuple[int, int]:
    """(rows per block, blocks) of the sorted_gather dispatch at this point."""
    e, k = point["experts"], point["top_k"]
    dropless = point["router"] in routing.DROPLESS
    cap = tokens if dropless else routing.capacity(tokens, k, e, point["capacity_factor"])
    return moedispatch.gather_blocks(copies(point, tokens), tokens, e, cap)


def experts_read(point, tokens: int) -> float:
    e = point["experts"]
    if point["router"] == "expert_choice":
        return float(e)
    return expected_touched(e, point["top_k"], tokens)


def layer_cost(point, tokens: int, numerics: Numerics, experts_read_override=None) -> Cost:
    """One MoE FFN over `tokens` tokens (module docstring)."""
    s = numerics.itemsize
    d, e = point["width"], point["experts"]
    mats = matrices(point)
    per_expert = sum(m * o for m, o in mats)
    n_rows = rows(point, tokens)
    read = experts_read(point, tokens) if experts_read_override is None else experts_read_override
    shared = point.get("shared_experts", 0)
    per_row = sum(m + o for m, o in mats)
    gathered = 0
    if point.get("dispatch") == "sorted_gather":
        gathered = 2 * gather_blocks(point, tokens)[1] * per_expert
    return Cost(
        flops=2 * tokens * d * e + 2 * (n_rows + shared * tokens) * per_expert,
        weight_bytes=s * (d * e + (read + shared) * per_expert),
        activation_bytes=s
        * (2 * tokens * d + n_rows * (2 * d + per_row) + shared * tokens * (d + per_row) + gathered)
        + 4 * tokens * e,
    )


def ep_buffer_capacity(point, tokens: int, devices: int) -> int:
    """Rows each device sends each expert under expert parallelism (C_s of
    batchlab.moe.expert_parallel): capacity of the routing group, capped at B/n."""
    e, k, b = point["experts"], point["top_k"], tokens // devices
    group = tokens if point["routing_group"] == "batch" else b
    cap = group
    if point["router"] not in routing.DROPLESS:
        cap = routing.capacity(group, k, e, point["capacity_factor"])
    return expert_parallel.buffer_capacity(cap, b, point["routing_group"])


def expert_parallel_cost(point, tokens: int, numerics: Numerics, devices: int, n_e: int) -> Cost:
    """One device's share of an expert-parallel layer (batchlab.moe.expert_parallel): its
    B/n tokens routed, its E/n_e experts all read and run on padded buffers of E·C_s rows
    in total, and the all_to_all there and back (plus the gathered logits when the whole
    batch is one routing group) as collective bytes."""
    s = numerics.itemsize
    d, e = point["width"], point["experts"]
    b = tokens // devices
    n_rows = e * ep_buffer_capacity(point, tokens, devices)
    mats = matrices(point)
    per_expert = sum(m * o for m, o in mats)
    gathered = 4 * (tokens - b) * e if point["routing_group"] == "batch" else 0
    return Cost(
        flops=2 * b * d * e + 2 * n_rows * per_expert,
        weight_bytes=s * (d * e + e // n_e * per_expert),
        activation_bytes=s * (2 * b * d + n_rows * (2 * d + sum(m + o for m, o in mats)))
        + 4 * b * e
        + gathered,
        collective_bytes=2 * s * n_rows * d * (n_e - 1) / n_e + gathered,
    )


def dense_ffn_cost(point, tokens: int, numerics: Numerics) -> Cost:
    """One dense FFN of one expert's size (what an MoE layer replaces, and its yardstick)."""
    s = numerics.itemsize
    mats = matrices(point)
    return Cost(
        flops=2 * tokens * sum(m * o for m, o in mats),
        weight_bytes=s * sum(m * o for m, o in mats),
        activation_bytes=s * tokens * sum(m + o for m, o in mats),
    )


def critical_batch_estimate(peak_flops: float, bandwidth: float, point, numerics) -> float:
    """REFERENCE 2.7: compute-bound only near b ≈ (P·s_w/(2·BW))·E/k, here divided by the
    capacity factor too, since padded slots are computed (1 when dropless)."""
    cf = 1.0 if point["router"] in routing.DROPLESS else point["capacity_factor"]
    b_dense = peak_flops * numerics.itemsize / (2 * bandwidth)
    return b_dense * point["experts"] / (point["top_k"] * cf)


def tokens_to_touch_all(experts: int, k: int, missing: float = 0.5) -> int:
    """Smallest B with fewer than `missing` experts expected untouched: where "all experts
    read" begins in REFERENCE 2.7's shape."""
    if k >= experts:
        return 1
    return max(1, math.ceil(math.log(missing / experts) / math.log(1 - k / experts)))
