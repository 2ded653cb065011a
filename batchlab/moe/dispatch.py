"""Dispatch tokens to experts and combine their outputs, by gather/scatter (REFERENCE 5).

No one-hot einsum anywhere: those cost B·E·C·D extra FLOPs. Four implementations, all
taking the experts (a list of E weight dicts, or stacked: see below) and a `Routing`, all
returning y_BxD:

- "slots": gather the copies into an E×C buffer (C = the routing's capacity; B when
  dropless, since an expert takes each token at most once), run each expert on its C
  rows, scatter-add back. Experts that no copy reached are skipped (lax.cond), so at
  small batch only the experts some token picked are read (REFERENCE 2.7).
- "sorted": sort the copies by expert and run each expert on exactly its rows, in
  chunks near the balanced load and pieces of halving sizes (the last padded to
  `MIN_CHUNK`): a grouped matmul that does almost no padded work, for dropless.
- "ragged": sort the copies by expert and call jax.lax.ragged_dot (stacked weights).
- "sorted_gather": the sorted dispatch without a conditional: each expert's sorted rows
  padded to whole blocks of `big` rows, a static number of blocks (enough for any
  loads), each block's expert weights gathered from the stack, one batched matmul per
  matrix. A fixed handful of kernels, whatever E: for accelerators, where each lax.cond of
  "sorted" and "slots" may cost a host round trip (XLA:GPU reads the predicate back).

Layouts: "slots" and "sorted" take a list of separate arrays per expert, not one E×D×F
stack: on XLA:CPU a slice W[e] of a stack is a copy (54 ms for 8 experts of 512×2048
SwiGLU at B=1, against 0.75 ms with separate arrays), which would read every expert at
every call. The dispatches in STACKED take the experts stacked ({"up": E×D×F, ...}:
stack()); a workload builds that stack once, outside the timed call, as its weights
(batchlab.models.moe.for_dispatch). Each dispatch also accepts the other layout, and
converts it inside the call (a copy of every weight: for tests, not for timing).

Measured on the 2-core CPU (benchmarks/moe_dispatch.py: 8 experts of 512×2048, top-2):
ragged_dot is 9-10x slower than "slots" at 256-1024 tokens and 28x at one (XLA:CPU
lowers it to dense work: cost_analysis counts E times the FLOPs); "sorted" is the
fastest dropless dispatch from ~16 tokens on, "slots" (C = B) below. `auto` picks by
timing each candidate (candidates(): "sorted_gather" only on accelerators) at the point
(batchlab.autotune), so other backends choose for themselves.
"""

import jax
import jax.numpy as jnp

from batchlab.moe.routing import Routing

MIN_CHUNK = 8  # rows of the smallest piece the "sorted" dispatch runs
STACKED = ("ragged", "sorted_gather")  # dispatches that take the experts stacked


def stack(experts: list) -> dict:
    """[{"up": D×F, ...}] * E -> {"up": E×D×F, ...}: one array per matrix."""
    return {name: jnp.stack([w[name] for w in experts]) for name in experts[0]}


def unstack(stacked: dict) -> list:
    """stack's inverse: E dicts of one expert's matrices (slices: copies on XLA:CPU)."""
    n = next(iter(stacked.values())).shape[0]
    return [{name: a[i] for name, a in stacked.items()} for i in range(n)]


def is_stacked(experts) -> bool:
    return isinstance(experts, dict)


def as_list(experts) -> list:
    return unstack(experts) if is_stacked(experts) else list(experts)


def as_stack(experts) -> dict:
    return experts if is_stacked(experts) else stack(experts)


def count(experts) -> int:
    """E, in either layout."""
    return next(iter(experts.values())).shape[0] if is_stacked(experts) else len(experts)


def expert_ffn(w: dict, x_NxD, precision=None):
    """One expert: the decoder's FFN on plain arrays, SwiGLU when w has a gate, else GELU."""
    up_NxF = jnp.dot(x_NxD, w["up"], precision=precision)
    if "gate" in w:
        h_NxF = jax.nn.silu(jnp.dot(x_NxD, w["gate"], precision=precision)) * up_NxF
    else:
        h_NxF = jax.nn.gelu(up_NxF)
    return jnp.dot(h_NxF, w["down"], precision=precision)


def _ffn_if(active, w, x_NxD, precision, skip_idle: bool):
    """expert_ffn, or zeros without reading w when `active` is false."""
    if not skip_idle:
        return expert_ffn(w, x_NxD, precision)
    return jax.lax.cond(
        active,
        lambda w, x: expert_ffn(w, x, precision),
        lambda w, x: jnp.zeros_like(x),
        w,
        x_NxD,
    )


def combine(y_MxD, token_M, gate_M, tokens: int, dtype):
    """out[token] += gate · y over the copies; a token index of `tokens` is dropped."""
    d = y_MxD.shape[-1]
    weighted = y_MxD.astype(jnp.float32) * gate_M[:, None]
    out = jnp.zeros((tokens, d), jnp.float32).at[token_M].add(weighted, mode="drop")
    return out.astype(dtype)


def slots(experts: list, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """Gather into E×C slots, run each expert on its C rows, scatter-add back."""
    experts = as_list(experts)
    e, c = len(experts), r.capacity
    b, d = x_BxD.shape
    # Dropped copies carry expert E and slot C: out of range, so mode="drop" skips them.
    table_ExC = jnp.full((e, c), b, jnp.int32).at[r.expert_M, r.slot_M].set(r.token_M, mode="drop")
    gate_ExC = jnp.zeros((e, c), jnp.float32).at[r.expert_M, r.slot_M].set(r.gate_M, mode="drop")
    x_ExCxD = jnp.concatenate([x_BxD, jnp.zeros((1, d), x_BxD.dtype)])[table_ExC]
    count_E = jnp.bincount(r.expert_M, length=e)
    y_ExCxD = jnp.stack(
        [
            _ffn_if(count_E[i] > 0, w, x_ExCxD[i], precision, skip_idle)
            for i, w in enumerate(experts)
        ]
    )
    return combine(
        y_ExCxD.reshape(e * c, d), table_ExC.reshape(-1), gate_ExC.reshape(-1), b, x_BxD.dtype
    )


def _sort(r: Routing, experts: int):
    """Copies grouped by expert (dropped ones last): order, group sizes, group starts."""
    order_M = jnp.argsort(r.expert_M, stable=True)
    sizes_E = jnp.bincount(r.expert_M, length=experts)
    return order_M, sizes_E, jnp.cumsum(sizes_E) - sizes_E


def _pieces(copies: int, tokens: int, experts: int) -> tuple[int, list[int]]:
    """(big, the sizes of the pieces each expert may run) of the sorted dispatch."""
    most = min(copies, tokens)  # an expert takes each token at most once
    big = max(MIN_CHUNK, 1 << (max(1, min(most, copies // experts)).bit_length() - 1))
    pieces = [big] * -(-most // big)
    while pieces[-1] > MIN_CHUNK // 2:
        pieces.append(max(MIN_CHUNK // 2, min(pieces[-1], big) // 2))
    return big, pieces


def _sorted_rows_run(load: int, pieces: list[int]) -> int:
    """Rows an expert with `load` rows runs in the sorted dispatch's pieces."""
    run, rem = 0, load
    for size in pieces:
        rows = max(size, MIN_CHUNK)
        if (rem >= size) if size >= MIN_CHUNK else (rem > 0):
            run += rows
            if size >= MIN_CHUNK:
                rem -= size
    return run


def run_fraction(name: str, loads_E, tokens: int, copies: int) -> float:
    """The share of a dispatch's conditional work that runs for these per-expert loads:
    what its compiled program holds but skips (experts no copy reached, pieces an expert
    has no rows for). The per-kernel model scales the costlier branches by it. "ragged"
    and "sorted_gather" have no conditionals: 1."""
    loads = [int(v) for v in loads_E]
    e = len(loads)
    if name == "slots":
        return sum(v > 0 for v in loads) / e
    if name == "sorted":
        _, pieces = _pieces(copies, tokens, e)
        every = sum(max(size, MIN_CHUNK) for size in pieces) * e
        return sum(_sorted_rows_run(v, pieces) for v in loads) / every
    return 1.0


def sorted_chunks(experts: list, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """Each expert runs on exactly its sorted rows: whole chunks of `big` rows (a power of
    two near the balanced load B·k/E), then pieces of halving sizes for the rest (its
    binary digits), the last padded to MIN_CHUNK rows. Each chunk or piece is a lax.cond,
    run only when the expert still has that many rows.

    No loops: a while loop would carry every expert's weights, which XLA:CPU copies each
    call (3.3 ms instead of 1.3 ms at B=1 for 8 experts of 512×2048); and no buffer goes
    through a cond (XLA:CPU copies it: 158 ms instead of 89 ms at 1024 tokens). Experts go
    in ascending order and each writes its pieces in ascending position, so a piece that
    runs past the end of its group (the padded last one, or the zeros of a skipped piece)
    lands only on rows that a later expert or piece overwrites, or on dropped copies, whose
    gate is 0. An expert with no rows runs nothing: `skip_idle` is implied.
    """
    del skip_idle
    experts = as_list(experts)
    e = len(experts)
    b, d = x_BxD.shape
    m = r.expert_M.shape[0]
    order_M, sizes_E, starts_E = _sort(r, e)
    big, pieces = _pieces(m, b, e)
    token_sorted = r.token_M[order_M]
    xs = jnp.concatenate([x_BxD[token_sorted], jnp.zeros((big, d), x_BxD.dtype)])
    out = jnp.zeros((m + big, d), x_BxD.dtype)
    for i, w in enumerate(experts):
        pos, rem = starts_E[i], sizes_E[i]
        for size in pieces:
            rows = max(size, MIN_CHUNK)  # below MIN_CHUNK: the rest, padded
            run = rem >= size if size >= MIN_CHUNK else rem > 0
            piece = jax.lax.cond(
                run,
                lambda p, w=w, rows=rows: expert_ffn(
                    w, jax.lax.dynamic_slice_in_dim(xs, p, rows), precision
                ),
                lambda p, rows=rows: jnp.zeros((rows, d), x_BxD.dtype),
                pos,
            )
            out = jax.lax.dynamic_update_slice_in_dim(out, piece, pos, 0)
            if size >= MIN_CHUNK:
                pos, rem = pos + jnp.where(run, size, 0), jnp.where(run, rem - size, rem)
    return combine(out[:m], token_sorted, r.gate_M[order_M], b, x_BxD.dtype)


def ragged(experts, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """jax.lax.ragged_dot over the sorted copies; rows past the groups (dropped) give 0.
    It takes the experts stacked E×D×F (module docstring: given a list, it stacks them
    inside the call, a copy of every weight)."""
    del skip_idle
    stacked = as_stack(experts)
    e = count(stacked)
    b = x_BxD.shape[0]
    order_M, sizes_E, _ = _sort(r, e)
    sizes_E = sizes_E.astype(jnp.int32)
    token_sorted = r.token_M[order_M]
    xs_MxD = x_BxD[jnp.minimum(token_sorted, b - 1)]

    def dot(a, w):
        return jax.lax.ragged_dot(a, w, sizes_E, precision=precision)

    up = dot(xs_MxD, stacked["up"])
    h = jax.nn.silu(dot(xs_MxD, stacked["gate"])) * up if "gate" in stacked else jax.nn.gelu(up)
    return combine(dot(h, stacked["down"]), token_sorted, r.gate_M[order_M], b, x_BxD.dtype)


def gather_blocks(copies: int, tokens: int, experts: int, capacity: int) -> tuple[int, int]:
    """(rows per block, blocks) of the sorted_gather dispatch for `copies` token copies of
    `tokens` tokens to `experts` experts taking at most `capacity` each (B when dropless).
    Blocks of `big` rows (the sorted dispatch's chunk: a power of two near the balanced
    load, at least MIN_CHUNK); at most `kept` = min(copies, E·capacity) copies are kept,
    by at most n = min(E, kept) experts, and sum_e ceil(s_e / big) <= (kept + n·(big − 1))
    / big for loads s_e summing to `kept`: enough blocks for any loads."""
    big, _ = _pieces(copies, min(tokens, capacity), experts)
    kept = min(copies, experts * capacity)
    return big, max(1, (kept + min(experts, kept) * (big - 1)) // big)


def sorted_gather(experts, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """The sorted dispatch with no conditional (module docstring): each expert's sorted
    copies fill whole blocks of `big` rows, the last one padded; block j belongs to
    expert e_j (blocks past the last used one repeat its expert, so no other expert's
    weights are read) and runs on e_j's weights gathered from the stack. Padded rows and
    unused blocks point at token B (dropped) with gate 0. Every block runs: an expert no
    copy reached has no block, so it is not read."""
    del skip_idle
    stacked = as_stack(experts)
    e = count(stacked)
    b, d = x_BxD.shape
    m = r.expert_M.shape[0]
    big, n = gather_blocks(m, b, e, r.capacity)
    order_M, sizes_E, starts_E = _sort(r, e)
    blocks_E = (sizes_E + big - 1) // big
    ends_E = jnp.cumsum(blocks_E)  # one past each expert's last block
    used = ends_E[-1]
    j_N = jnp.minimum(jnp.arange(n), jnp.maximum(used - 1, 0))
    expert_N = jnp.minimum(jnp.searchsorted(ends_E, j_N, side="right"), e - 1)
    row_NxT = (j_N - (ends_E - blocks_E)[expert_N])[:, None] * big + jnp.arange(big)
    valid_NxT = (row_NxT < sizes_E[expert_N][:, None]) & (jnp.arange(n) < used)[:, None]
    copy_NxT = order_M[jnp.minimum(starts_E[expert_N][:, None] + row_NxT, m - 1)]
    token_NxT = jnp.where(valid_NxT, r.token_M[copy_NxT], b)
    gate_NxT = jnp.where(valid_NxT, r.gate_M[copy_NxT], 0.0)
    x_NxTxD = jnp.concatenate([x_BxD, jnp.zeros((1, d), x_BxD.dtype)])[token_NxT]
    w = {name: a[expert_N] for name, a in stacked.items()}  # the one gather of weights

    def mm(a, w):
        return jnp.einsum("ntd,ndf->ntf", a, w, precision=precision)

    up = mm(x_NxTxD, w["up"])
    h = jax.nn.silu(mm(x_NxTxD, w["gate"])) * up if "gate" in w else jax.nn.gelu(up)
    y = mm(h, w["down"]).reshape(n * big, d)
    return combine(y, token_NxT.reshape(-1), gate_NxT.reshape(-1), b, x_BxD.dtype)


IMPLS = {
    "slots": slots,
    "sorted": sorted_chunks,
    "ragged": ragged,
    "sorted_gather": sorted_gather,
}
DISPATCHES = ("auto", *IMPLS)


def candidates(platform: str) -> tuple[str, ...]:
    """What "auto" times on a jax platform: every dispatch, but sorted_gather only off the
    CPU (XLA:CPU runs conditionals in place, and its gathered weight copies cost there)."""
    return tuple(n for n in IMPLS if platform != "cpu" or n != "sorted_gather")


def run(name: str, experts, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """The dispatch called `name` (one of IMPLS; "auto" must be resolved first), on the
    experts in either layout (module docstring)."""
    if name not in IMPLS:
        raise ValueError(f"dispatch {name!r}: allowed are {', '.join(IMPLS)}")
    return IMPLS[name](experts, x_BxD, r, precision, skip_idle)
