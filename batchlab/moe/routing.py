"""Routers as small pure functions (REFERENCE 5); each returns a `Routing`.

A routing is a list of token copies in priority order: copy m sends token `token_M[m]`
to expert `expert_M[m]` (E when the copy was dropped) with combine weight `gate_M[m]`,
into slot `slot_M[m]` of that expert's buffer. Dispatch (batchlab.moe.dispatch) reads
only these arrays, so every router works with every dispatch.

Capacity convention: C = ceil(capacity_factor · k · B / E), at least 1 and at most B
(MaxText's ceil(n·k/E)·cf, with the factor inside the ceiling). k is included, so a
factor of 1 gives exactly the B·k slots top-k needs: the work of k dense FFNs. Expert
choice uses the same C (Zhou et al.'s c is factor·k), so at equal factors both routers
do the same work. flaxformer's round(cf·B/E), minimum 4, leaves k out.

DeepSeek-V3-style routing ("deepseek_v3") scores experts with a sigmoid, not a softmax;
it selects by score plus the selection bias, optionally only inside the `top_groups`
best of `groups` equal groups of experts (a group's score: the sum of its two best
biased scores), and weights each selected expert by its score normalised over the
selected, times `scale`. It drops nothing (DeepSeek-V3 drops no token). Its
`probs_BxE` are the scores normalised over all experts (DeepSeek-V3's s'), so the
balance metrics and losses read them like softmax probabilities.
"""

import math

import jax
import jax.numpy as jnp
from flax import struct

ROUTERS = ("token_choice", "dropless", "expert_choice", "deepseek_v3")
DROPLESS = ("dropless", "deepseek_v3")  # routers with no capacity: nothing is dropped
PRIORITIES = ("choice", "confidence")  # confidence: batch-prioritized routing


@struct.dataclass
class Routing:
    """What a router decided for one group of B tokens."""

    logits_BxE: jax.Array  # fp32, any offset included
    probs_BxE: jax.Array  # softmax over experts (sigmoid scores normalised: deepseek_v3)
    chosen_Bxk: jax.Array  # each token's own top-k, before capacity (for expert choice too)
    token_M: jax.Array
    expert_M: jax.Array  # E marks a dropped copy
    gate_M: jax.Array  # 0 for a dropped copy
    slot_M: jax.Array  # position in the expert's buffer; `capacity` for a dropped copy
    capacity: int = struct.field(pytree_node=False)  # C; B when dropless


def capacity(tokens: int, k: int, experts: int, factor: float) -> int:
    """Slots per expert, C = ceil(factor·k·B/E) clipped to [1, B] (module docstring)."""
    if factor <= 0:
        raise ValueError(f"capacity factor must be > 0, got {factor}")
    # The small tolerance keeps 1.1·2·40/8 = 11.000000000000002 at 11.
    return min(tokens, max(1, math.ceil(factor * k * tokens / experts - 1e-9)))


def check_top_k(k: int, experts: int) -> None:
    if not 1 <= k <= experts:
        raise ValueError(f"top-k {k} must be between 1 and the number of experts {experts}")


def check_groups(k: int, experts: int, groups: int, top_groups: int) -> None:
    """Group-limited selection needs E in equal groups and k experts inside the kept ones."""
    if groups < 1 or experts % groups:
        raise ValueError(f"{experts} experts do not split into {groups} equal groups")
    if not 1 <= top_groups <= groups:
        raise ValueError(f"top groups {top_groups} must be between 1 and the groups {groups}")
    if k > top_groups * (experts // groups):
        raise ValueError(
            f"top-k {k} is more than the {top_groups * (experts // groups)} experts of "
            f"{top_groups} of {groups} groups"
        )


def router_logits(x_BxD, w_DxE, offset=None, precision=None):
    """fp32 logits x·W (+ an offset of shape E or BxE, used to bias a router on purpose)."""
    logits = jnp.dot(x_BxD, w_DxE, precision=precision, preferred_element_type=jnp.float32)
    return logits if offset is None else logits + offset


def jitter(x, key, eps: float):
    """Multiplies x by U(1 − eps, 1 + eps) noise, as in training (REFERENCE 5)."""
    return x * jax.random.uniform(key, x.shape, x.dtype, 1 - eps, 1 + eps)


def top_k(probs_BxE, k: int, bias_E=None):
    """(expert_Bxk, prob_Bxk): each token's k experts by probs + bias. The bias takes part
    in the selection only, never in the weights (auxiliary-loss-free, DeepSeek-V3)."""
    scores = probs_BxE if bias_E is None else probs_BxE + bias_E
    _, expert_Bxk = jax.lax.top_k(scores, k)
    return expert_Bxk, jnp.take_along_axis(probs_BxE, expert_Bxk, axis=-1)


def rank_in_expert(expert_M, experts: int):
    """Each copy's position among the earlier copies of the same expert (copy order)."""
    m = expert_M.shape[0]
    order = jnp.argsort(expert_M, stable=True)
    sizes = jnp.bincount(expert_M, length=experts + 1)
    starts = jnp.cumsum(sizes) - sizes
    return jnp.zeros_like(expert_M).at[order].set(jnp.arange(m) - starts[expert_M[order]])


def token_choice(logits_BxE, k: int, capacity: int | None = None, bias_E=None, priority="choice"):
    """Top-k per token; with a capacity C, copies past C are dropped in priority order.

    Priority: every first choice before any second choice (GShard); within a choice, token
    order, or with priority "confidence" the tokens whose largest selected probability is
    highest first (batch-prioritized routing, V-MoE: without a bias, the top-1
    probability; with one, the gate the token is actually routed with). k > 1
    renormalizes the k gates to sum to 1 (GShard, Mixtral); k = 1 keeps the probability,
    so the router still gets a gradient. capacity None is dropless.
    """
    b, e = logits_BxE.shape
    check_top_k(k, e)
    probs = jax.nn.softmax(logits_BxE, axis=-1)
    chosen, gate = top_k(probs, k, bias_E)
    rank_B = gate.max(-1)  # before renormalisation: the router's confidence in the token
    if k > 1:
        gate = gate / gate.sum(-1, keepdims=True)
    return _copies(logits_BxE, probs, chosen, gate, rank_B, capacity, priority)


def _copies(logits_BxE, probs_BxE, chosen_Bxk, gate_Bxk, rank_B, capacity, priority):
    """The Routing of top-k picks: copies choice-major, tokens in priority order (by
    `rank_B`, highest first, for "confidence"), copies past the capacity dropped."""
    b, e = probs_BxE.shape
    k = chosen_Bxk.shape[1]
    if priority == "confidence":
        order_B = jnp.argsort(-rank_B, stable=True)
    elif priority == "choice":
        order_B = jnp.arange(b)
    else:
        raise ValueError(f"priority {priority!r}: allowed are {', '.join(PRIORITIES)}")
    token_M = jnp.tile(order_B, k)  # choice-major
    expert_M = chosen_Bxk[order_B].T.reshape(-1)
    gate_M = gate_Bxk[order_B].T.reshape(-1).astype(jnp.float32)
    slot_M = rank_in_expert(expert_M, e)
    cap = b if capacity is None else capacity
    kept = slot_M < cap
    return Routing(
        logits_BxE,
        probs_BxE,
        chosen_Bxk,
        token_M,
        jnp.where(kept, expert_M, e),
        jnp.where(kept, gate_M, 0.0),
        jnp.where(kept, slot_M, cap),
        cap,
    )


def expert_choice(logits_BxE, k: int, capacity: int):
    """Each expert takes its top-C tokens by probability (Zhou et al. 2022): every expert
    gets exactly C; a token may get none or several. It sees the whole group, so it is not
    causal. `chosen_Bxk` holds what token choice would have picked, for the metrics."""
    b, e = logits_BxE.shape
    check_top_k(k, e)
    probs = jax.nn.softmax(logits_BxE, axis=-1)
    gate_ExC, token_ExC = jax.lax.top_k(probs.T, capacity)
    chosen, _ = top_k(probs, k)
    return Routing(
        logits_BxE,
        probs,
        chosen,
        token_ExC.reshape(-1),
        jnp.repeat(jnp.arange(e), capacity),
        gate_ExC.reshape(-1).astype(jnp.float32),
        jnp.tile(jnp.arange(capacity), e),
        capacity,
    )


def group_limited_top_k(scores_BxE, k: int, groups: int, top_groups: int):
    """Each token's k experts by score, chosen only inside its `top_groups` best groups
    of E/groups consecutive experts; a group's score is the sum of its two best scores
    (one when a group holds one expert). DeepSeek-V3 (n_group, topk_group)."""
    b, e = scores_BxE.shape
    check_groups(k, e, groups, top_groups)
    if groups == 1:
        return jax.lax.top_k(scores_BxE, k)[1]
    per = e // groups
    scores_BxGxP = scores_BxE.reshape(b, groups, per)
    group_BxG = jax.lax.top_k(scores_BxGxP, min(2, per))[0].sum(-1)
    _, kept_Bxg = jax.lax.top_k(group_BxG, top_groups)
    keep_BxG = jnp.zeros((b, groups), bool).at[jnp.arange(b)[:, None], kept_Bxg].set(True)
    masked = jnp.where(jnp.repeat(keep_BxG, per, axis=1), scores_BxE, -jnp.inf)
    return jax.lax.top_k(masked, k)[1]


def deepseek_v3(
    logits_BxE,
    k: int,
    bias_E=None,
    groups: int = 1,
    top_groups: int = 1,
    scale: float = 1.0,
    priority="choice",
):
    """DeepSeek-V3-style routing (module docstring): sigmoid scores s; selection by
    s + bias inside the best groups; gates s_i / Σ_selected s · scale; nothing dropped.
    The priority only orders the copies, since no capacity drops any."""
    check_top_k(k, logits_BxE.shape[1])
    scores = jax.nn.sigmoid(logits_BxE.astype(jnp.float32))
    chosen = group_limited_top_k(
        scores if bias_E is None else scores + bias_E, k, groups, top_groups
    )
    picked = jnp.take_along_axis(scores, chosen, axis=-1)
    gate = scale * picked / picked.sum(-1, keepdims=True)
    probs = scores / scores.sum(-1, keepdims=True)
    return _copies(logits_BxE, probs, chosen, gate, picked.max(-1), None, priority)


def route(
    logits_BxE,
    router: str,
    k: int,
    capacity_factor: float,
    priority="choice",
    bias_E=None,
    *,
    groups: int = 1,
    top_groups: int = 1,
    scale: float = 1.0,
) -> Routing:
    """The router called `router` (one of ROUTERS) on one group of tokens; `groups`,
    `top_groups` and `scale` are deepseek_v3's."""
    b, e = logits_BxE.shape
    if router != "deepseek_v3" and (groups, top_groups, scale) != (1, 1, 1.0):
        raise ValueError(
            f"router {router!r}: expert groups, top groups and a route scale are "
            "deepseek_v3's; leave them at 1"
        )
    if router == "deepseek_v3":
        return deepseek_v3(logits_BxE, k, bias_E, groups, top_groups, scale, priority)
    if router == "dropless":
        return token_choice(logits_BxE, k, None, bias_E, priority)
    c = capacity(b, k, e, capacity_factor)
    if router == "token_choice":
        return token_choice(logits_BxE, k, c, bias_E, priority)
    if router == "expert_choice":
        return expert_choice(logits_BxE, k, c)
    raise ValueError(f"router {router!r}: allowed are {', '.join(ROUTERS)}")


def update_bias(bias_E, load_E, rate: float):
    """Auxiliary-loss-free balancing (DeepSeek-V3, REFERENCE 5): b_e ← b_e − γ·sign(load_e −
    mean load), outside the optimizer; an overloaded expert gets picked less next step."""
    load = load_E.astype(jnp.float32)
    return bias_E - rate * jnp.sign(load - load.mean())
