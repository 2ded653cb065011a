"""Dispatch tokens to experts and combine their outputs, by gather/scatter (REFERENCE 5).

No one-hot einsum anywhere: those cost B·E·C·D extra FLOPs. Three implementations, all
taking the experts as a list of E weight dicts and a `Routing`, all returning y_BxD:

- "slots": gather the copies into an E×C buffer (C = the routing's capacity; B when
  dropless, since an expert takes each token at most once), run each expert on its C
  rows, scatter-add back. Experts that no copy reached are skipped (lax.cond), so at
  small batch only the experts some token picked are read (REFERENCE 2.7).
- "sorted": sort the copies by expert and run each expert on exactly its rows, in
  chunks near the balanced load and pieces of halving sizes (the last padded to
  `MIN_CHUNK`): a grouped matmul that does almost no padded work, for dropless.
- "ragged": sort the copies by expert and call jax.lax.ragged_dot (stacked weights).

Experts are separate arrays, not one E×D×F stack: on XLA:CPU a slice W[e] of a stack is
a copy (54 ms for 8 experts of 512×2048 SwiGLU at B=1, against 0.75 ms with separate
arrays), which would read every expert at every call.

Measured on the 2-core CPU (benchmarks/moe_dispatch.py: 8 experts of 512×2048, top-2):
ragged_dot is 9-10x slower than "slots" at 256-1024 tokens and 28x at one (XLA:CPU
lowers it to dense work: cost_analysis counts E times the FLOPs); "sorted" is the
fastest dropless dispatch from ~16 tokens on, "slots" (C = B) below. `auto` picks by
timing each at the point (batchlab.moe.autotune), so other backends choose for themselves.
"""

import jax
import jax.numpy as jnp

from batchlab.moe.routing import Routing

MIN_CHUNK = 8  # rows of the smallest piece the "sorted" dispatch runs


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
    has no rows for). The per-kernel model scales the costlier branches by it."""
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


def ragged(experts: list, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """jax.lax.ragged_dot over the sorted copies; rows past the groups (dropped) give 0.
    It needs the weights stacked E×D×F: the stacking is a copy of every weight."""
    del skip_idle
    e = len(experts)
    b = x_BxD.shape[0]
    order_M, sizes_E, _ = _sort(r, e)
    sizes_E = sizes_E.astype(jnp.int32)
    stacked = {name: jnp.stack([w[name] for w in experts]) for name in experts[0]}
    token_sorted = r.token_M[order_M]
    xs_MxD = x_BxD[jnp.minimum(token_sorted, b - 1)]

    def dot(a, w):
        return jax.lax.ragged_dot(a, w, sizes_E, precision=precision)

    up = dot(xs_MxD, stacked["up"])
    h = jax.nn.silu(dot(xs_MxD, stacked["gate"])) * up if "gate" in stacked else jax.nn.gelu(up)
    return combine(dot(h, stacked["down"]), token_sorted, r.gate_M[order_M], b, x_BxD.dtype)


IMPLS = {"slots": slots, "sorted": sorted_chunks, "ragged": ragged}
DISPATCHES = ("auto", *IMPLS)


def run(name: str, experts: list, x_BxD, r: Routing, precision=None, skip_idle: bool = True):
    """The dispatch called `name` (one of IMPLS; "auto" must be resolved first)."""
    if name not in IMPLS:
        raise ValueError(f"dispatch {name!r}: allowed are {', '.join(IMPLS)}")
    return IMPLS[name](experts, x_BxD, r, precision, skip_idle)
