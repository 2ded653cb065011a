"""The MoE FFN and the MoE decoder (REFERENCE 5): the KV-cache decoder with an MoE FFN in
place of the dense one every N layers.

Parameters of one MoE FFN: `router` (D×E), `experts` ({"expert_i": {"gate", "up",
"down"}}: separate arrays per expert, see batchlab.moe.dispatch; {"gate": E×D×F, "up",
"down"} stacked for the dispatches that take a stack, dispatch.STACKED, built once at
init or by for_dispatch, never inside a call) and, with shared
experts (DeepSeek-V3), `shared` (the same, one per shared expert; every token runs
through all of them, their outputs added to the routed ones). The auxiliary-loss-free
selection bias lives in its own collection, `balance` ({"bias": E}), which training
updates by rule, outside the optimizer. Each call sows its `Routing` into
`intermediates` (apply with mutable=["intermediates"] to get it, for losses and metrics).
All B·S tokens of a call form one routing group.
"""

import dataclasses
import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from batchlab.models import decoder as dec
from batchlab.moe import dispatch, routing

NOT_CAUSAL = (
    "expert-choice routing is not causal: each expert takes its top tokens from the "
    "whole group, so a token's experts depend on tokens after it, which decoding has not "
    "seen yet"
)
BPR_NOT_CAUSAL = (
    "batch-prioritized routing is not causal: the group's most confident tokens take the "
    "capacity first, so a later, more confident token can take an earlier token's slot "
    "and change its routing after decoding has used it"
)


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Routing and dispatch of one MoE FFN (capacity convention: batchlab.moe.routing)."""

    experts: int = 8
    top_k: int = 2
    router: str = "token_choice"  # one of routing.ROUTERS
    capacity_factor: float = 1.0
    priority: str = "choice"  # or "confidence": batch-prioritized routing
    dispatch: str = "slots"  # one of dispatch.IMPLS
    jitter: float = 0.0  # training: router inputs times U(1-eps, 1+eps), with rng "jitter"
    skip_idle: bool = True  # do not read experts no token picked
    groups: int = 1  # deepseek_v3: experts in equal groups, picks inside the best top_groups
    top_groups: int = 1
    route_scale: float = 1.0  # deepseek_v3: the combine weights' scaling factor
    shared_experts: int = 0  # experts every token uses besides its routed ones


def init_experts(key, width: int, ffn: int, experts: int, gated: bool, dtype) -> dict:
    """E independent experts, normal with variance 1/fan_in like the decoder's FFN (lecun).
    One random draw split into every matrix: XLA:CPU takes ~0.4 s to compile each draw,
    and an MoE has 3·E matrices."""
    names = [("gate", width, ffn)] if gated else []
    names += [("up", width, ffn), ("down", ffn, width)]
    sizes = [m * o for _, m, o in names]
    flat = jax.random.normal(key, (experts, sum(sizes)), jnp.float32)
    out = {}
    for i in range(experts):
        parts = jnp.split(flat[i], list(itertools.accumulate(sizes))[:-1])
        out[f"expert_{i}"] = {
            n: (p.reshape(m, o) / math.sqrt(m)).astype(dtype) for (n, m, o), p in zip(names, parts)
        }
    return out


def expert_list(experts: dict) -> list:
    return [experts[f"expert_{i}"] for i in range(len(experts))]


def experts_for(experts: dict, name: str) -> dict:
    """One MoE layer's `experts` parameter in the layout dispatch `name` takes: stacked
    for dispatch.STACKED, else one dict per expert; the same values either way."""
    if name in dispatch.STACKED:
        return experts if _stacked(experts) else dispatch.stack(expert_list(experts))
    if not _stacked(experts):
        return experts
    return {f"expert_{i}": w for i, w in enumerate(dispatch.unstack(experts))}


def _stacked(experts: dict) -> bool:
    return "expert_0" not in experts


def for_dispatch(variables, name: str):
    """A copy of a variables tree (or a params tree) with every MoE FFN's experts laid out
    for dispatch `name` (experts_for); other leaves are shared, not copied."""
    if not isinstance(variables, dict):
        return variables
    if "router" in variables and "experts" in variables:
        return variables | {"experts": experts_for(variables["experts"], name)}
    return {k: for_dispatch(v, name) for k, v in variables.items()}


def moe_apply(
    params: dict, bias_E, x_BxD, moe: MoEConfig, precision=None, offset=None, jitter_key=None
):
    """(y_BxD, Routing) of one MoE FFN on plain arrays; params = {"router", "experts"}.
    `offset` (E or BxE) shifts the logits: the routing comparison biases routers with it."""
    x_router = x_BxD if jitter_key is None else routing.jitter(x_BxD, jitter_key, moe.jitter)
    logits = routing.router_logits(x_router, params["router"], offset, precision)
    r = routing.route(
        logits,
        moe.router,
        moe.top_k,
        moe.capacity_factor,
        moe.priority,
        bias_E,
        groups=moe.groups,
        top_groups=moe.top_groups,
        scale=moe.route_scale,
    )
    experts = params["experts"]
    experts = experts if _stacked(experts) else expert_list(experts)
    y_BxD = dispatch.run(moe.dispatch, experts, x_BxD, r, precision, moe.skip_idle)
    for w in expert_list(params.get("shared", {})):
        y_BxD = y_BxD + dispatch.expert_ffn(w, x_BxD, precision).astype(y_BxD.dtype)
    return y_BxD, r


class MoEFFN(nn.Module):
    """Drop-in for the decoder's FFN: x_BxSxD -> y_BxSxD, built as MoEFFN(cfg, name=...)
    once `moe` is bound (functools.partial, see moe_decoder)."""

    cfg: dec.DecoderConfig
    moe: MoEConfig = MoEConfig()

    @nn.compact
    def __call__(self, x_BxSxD):
        cfg, moe = self.cfg, self.moe
        router = self.param(
            "router", nn.initializers.lecun_normal(), (cfg.width, moe.experts), cfg.dtype
        )
        experts = self.param(
            "experts",
            lambda key: experts_for(
                init_experts(key, cfg.width, cfg.ffn, moe.experts, cfg.gated_ffn, cfg.dtype),
                moe.dispatch,
            ),
        )
        params = {"router": router, "experts": experts}
        if moe.shared_experts:
            params["shared"] = self.param(
                "shared",
                lambda key: init_experts(
                    key, cfg.width, cfg.ffn, moe.shared_experts, cfg.gated_ffn, cfg.dtype
                ),
            )
        bias = self.variable("balance", "bias", jnp.zeros, (moe.experts,), jnp.float32)
        key = self.make_rng("jitter") if moe.jitter > 0 and self.has_rng("jitter") else None
        b, s, d = x_BxSxD.shape
        y_BxD, r = moe_apply(
            params,
            bias.value,
            x_BxSxD.reshape(b * s, d),
            moe,
            cfg.precision,
            jitter_key=key,
        )
        self.sow("intermediates", "routing", r)
        return y_BxD.reshape(b, s, d)


def moe_layers(layers: int, every: int) -> list[int]:
    """Layers whose FFN is an MoE: every N-th, counting from 1 (N-1, 2N-1, ...)."""
    return [i for i in range(layers) if (i + 1) % every == 0]


def moe_decoder(cfg: dec.DecoderConfig, moe: MoEConfig, every: int) -> dec.Decoder:
    """The KV-cache decoder with an MoE FFN in every `every`-th layer."""
    ffn = functools.partial(MoEFFN, moe=moe)
    chosen = set(moe_layers(cfg.layers, every))
    return dec.Decoder(cfg, ffn_for_layer=lambda i: ffn if i in chosen else None)


def not_causal(router: str, priority: str) -> str | None:
    """Why a router cannot decode (a later token would change an earlier token's routing),
    or None: expert choice, and batch-prioritized routing with a capacity."""
    if router == "expert_choice":
        return NOT_CAUSAL
    if router == "token_choice" and priority == "confidence":
        return BPR_NOT_CAUSAL
    return None


def check_causal(moe: MoEConfig) -> None:
    """Decoding needs a causal router; raises ValueError with the reason (not_causal)."""
    why = not_causal(moe.router, moe.priority)
    if why:
        raise ValueError(why)


def decode_step(model: dec.Decoder, moe: MoEConfig, params, cache, tokens_B, positions_B):
    """dec.decode_step, refused for a router that is not causal."""
    check_causal(moe)
    return dec.decode_step(model, params, cache, tokens_B, positions_B)


def init(model: dec.Decoder, key) -> dict:
    """{"params", "balance"} from a one-token call (shapes depend on neither batch nor length)."""
    one = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(model.init)(key, one, one, dec.init_cache(model.cfg, 1, 1))


def routings(model: dec.Decoder, variables, tokens_BxS, positions_BxS, cache) -> list:
    """The Routing of every MoE layer for one call, in layer order."""
    _, state = model.apply(variables, tokens_BxS, positions_BxS, cache, mutable=["intermediates"])
    inter = state["intermediates"]
    return [
        inter[f"block_{i}"]["ffn"]["routing"][0]
        for i in range(model.cfg.layers)
        if f"block_{i}" in inter
    ]
