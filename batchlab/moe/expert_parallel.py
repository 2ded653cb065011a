"""Expert parallelism for one MoE FFN: experts split along the "expert" mesh axis, tokens
exchanged with all_to_all inside shard_map (REFERENCE 5; ragged_all_to_all does not
exist on CPU, REFERENCE 6, so buffers are padded to a static capacity).

Layout: the B tokens are split by rows over every device (the "data" and "expert" axes
together), the router is replicated, and the experts are stacked E×... and split along
"expert" (E/n_e per device, replicated along "data").

The routing group is a choice (`GROUPS`):
- "batch": the whole batch is one group, exactly as on one device. Each device computes
  its tokens' logits and all_gathers them (B×E fp32, small next to the B×D tokens), and
  every device routes the whole group: the same drops and gates as the single-device
  layer, so the result equals it. One device sends one expert at most min(C, B/n) copies,
  so that is its buffer's capacity: the price of exact routing with static shapes.
- "device": each device's B/n tokens are their own group (GShard, Switch): capacity
  C = ceil(cf·k·(B/n)/E) per device, no all_gather, no padding beyond the capacity
  factor. It equals the single-device layer run on each device's tokens separately.

Each device packs the copies of its own tokens into a send buffer E×C_s×D, all_to_all
along "expert" gives each device the rows of its experts from every device of its
"expert" row, each local expert runs on its n_e·C_s rows (one batched matmul; padded
rows are computed, not skipped), a second all_to_all returns the outputs, and each device
combines its own tokens.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from batchlab.moe import dispatch, routing

GROUPS = ("batch", "device")
EXPERT = "expert"


def token_axes(mesh) -> tuple[str, ...]:
    """Mesh axes the tokens are split along: all of them, data first."""
    return tuple(a for a in ("data", EXPERT) if a in mesh.axis_names)


def buffer_capacity(capacity: int, local_tokens: int, group: str) -> int:
    """Rows one device sends one expert: min(C, B/n) for a batch group (module docstring);
    the group's own capacity for a device group (C <= its B/n tokens already)."""
    return min(capacity, local_tokens) if group == "batch" else capacity


def stack_experts(experts: dict) -> dict:
    """{"expert_i": {"up": D×F, ...}} -> {"up": E×D×F, ...}: one array per matrix, to split
    (experts already stacked, for a stacked dispatch, are returned as they are)."""
    if "expert_0" not in experts:
        return experts
    return dispatch.stack([experts[f"expert_{i}"] for i in range(len(experts))])


def layer(mesh, moe, group: str, precision=None, with_offset: bool = False):
    """fn(params, bias_E, x_BxD) -> y_BxD on `mesh`; params = {"router", "experts"} with
    the experts stacked (stack_experts). Arrays laid out as `shardings` says. With
    `with_offset`, fn takes a B×E logit offset after the tokens, split by rows as they are."""
    if group not in GROUPS:
        raise ValueError(f"routing group {group!r}: allowed are {', '.join(GROUPS)}")
    tokens = token_axes(mesh)
    n_e = mesh.shape.get(EXPERT, 1)

    def local(params, bias_E, x_bxD, offset_bxE=None):
        b, d = x_bxD.shape
        e = params["router"].shape[1]
        logits = routing.router_logits(x_bxD, params["router"], offset_bxE, precision)
        if group == "batch":
            logits = jax.lax.all_gather(logits, tokens, axis=0, tiled=True)
            first = jax.lax.axis_index(tokens) * b  # this device's first row in the batch
        else:
            first = 0
        r = routing.route(logits, moe.router, moe.top_k, moe.capacity_factor, moe.priority, bias_E)
        cap = buffer_capacity(r.capacity, b, group)
        # This device's copies, ranked within their expert in copy order; others drop.
        mine = (r.token_M >= first) & (r.token_M < first + b) & (r.expert_M < e)
        expert_M = jnp.where(mine, r.expert_M, e)
        slot_M = routing.rank_in_expert(expert_M, e)
        table_ExC = (
            jnp.full((e, cap), b, jnp.int32)
            .at[expert_M, slot_M]
            .set(r.token_M - first, mode="drop")
        )
        gate_ExC = jnp.zeros((e, cap), jnp.float32).at[expert_M, slot_M].set(r.gate_M, mode="drop")
        send_ExCxD = jnp.concatenate([x_bxD, jnp.zeros((1, d), x_bxD.dtype)])[table_ExC]
        y_ExCxD = _exchange_and_run(params["experts"], send_ExCxD, n_e, precision)
        return dispatch.combine(
            y_ExCxD.reshape(e * cap, d), table_ExC.reshape(-1), gate_ExC.reshape(-1), b, x_bxD.dtype
        )

    specs = shardings(mesh)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(
            {"router": specs["router"].spec, "experts": specs["experts"].spec},
            specs["bias"].spec,
            specs["tokens"].spec,
        )
        + ((specs["tokens"].spec,) if with_offset else ()),
        out_specs=specs["tokens"].spec,
    )


def _exchange_and_run(experts_local: dict, send_ExCxD, n_e: int, precision):
    """all_to_all the rows to their experts' devices, run the local experts, send back."""
    e, cap, d = send_ExCxD.shape
    e_loc = e // n_e
    # tiled all_to_all: block i of the expert axis goes to device i of the "expert" row;
    # what arrives is stacked by source device: (n_e sources · e_loc experts, C, D).
    recv = _all_to_all(send_ExCxD, n_e)
    rows_LxRxD = recv.reshape(n_e, e_loc, cap, d).transpose(1, 0, 2, 3).reshape(e_loc, -1, d)
    y_LxRxD = jax.vmap(lambda w, x: dispatch.expert_ffn(w, x, precision))(experts_local, rows_LxRxD)
    back = y_LxRxD.reshape(e_loc, n_e, cap, d).transpose(1, 0, 2, 3).reshape(e, cap, d)
    return _all_to_all(back, n_e)


def _all_to_all(x, n_e: int):
    """Along "expert"; a mesh without that axis (n_e = 1) keeps every expert at home."""
    return x if n_e == 1 else jax.lax.all_to_all(x, EXPERT, 0, 0, tiled=True)


def shardings(mesh) -> dict[str, NamedSharding]:
    """Tokens by rows over every device, experts along "expert", the rest replicated."""
    return {
        "tokens": NamedSharding(mesh, PartitionSpec(token_axes(mesh), None)),
        "experts": NamedSharding(
            mesh, PartitionSpec(EXPERT if EXPERT in mesh.axis_names else None)
        ),
        "router": NamedSharding(mesh, PartitionSpec()),
        "bias": NamedSharding(mesh, PartitionSpec()),
    }
