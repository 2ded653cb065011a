"""A decoder-only transformer with an explicit KV cache (REFERENCE 2.4-2.5).

The cache is a plain dict, one entry per layer, each {"k": k_BxTxGxK, "v": v_BxTxGxK}
(G KV heads, T cache length). Every call writes its S new keys and values at
`positions` with dynamic_update_slice, so XLA updates a donated cache in place, and
attends over the whole cache with a causal mask on positions. Full forward, prefill
and decode step are the same function with different S and cache contents.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Cache = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shapes and options; K = width / heads, G = kv_heads divides heads."""

    vocab: int = 32000
    width: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 8
    ffn: int = 2048
    gated_ffn: bool = True  # SwiGLU (3 matrices) or GELU (2)
    positions: str = "rope"  # "rope" or "learned"
    tied_embeddings: bool = True
    max_len: int = 2048  # learned-position table size; a cache may not be longer
    dtype: Any = jnp.float32
    precision: Any = None

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def init_cache(cfg: DecoderConfig, batch: int, length: int) -> Cache:
    """An empty cache of `length` positions for `batch` sequences."""
    shape = (batch, length, cfg.kv_heads, cfg.head_dim)
    return {
        f"layer_{i}": {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
        for i in range(cfg.layers)
    }


def rope(x_BxSxHxK, positions_BxS):
    """Rotary position embedding on the two halves of the head dim."""
    half = x_BxSxHxK.shape[-1] // 2
    freq_F = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angle_BxSxF = positions_BxS[..., None].astype(jnp.float32) * freq_F
    sin, cos = jnp.sin(angle_BxSxF)[:, :, None, :], jnp.cos(angle_BxSxF)[:, :, None, :]
    x1, x2 = jnp.split(x_BxSxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxSxHxK.dtype)


def write(cache_BxTxGxK, new_BxSxGxK, start_B):
    """Writes each row's S new entries at its own start position, in place."""
    return jax.vmap(lambda c, u, p: jax.lax.dynamic_update_slice(c, u, (p, 0, 0)))(
        cache_BxTxGxK, new_BxSxGxK, start_B
    )


def dense(cfg: DecoderConfig, features, name: str, axis=-1) -> nn.DenseGeneral:
    """A bias-free projection in the model's dtype and precision."""
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.dtype,
        precision=cfg.precision,
        name=name,
    )


class RMSNorm(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
        return (normed * scale).astype(self.dtype)


class Attention(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxSxD, positions_BxS, kv: dict[str, jax.Array]):
        cfg = self.cfg
        h, g, k = cfg.heads, cfg.kv_heads, cfg.head_dim
        q_BxSxHxK = dense(cfg, (h, k), "q")(x_BxSxD)
        k_BxSxGxK = dense(cfg, (g, k), "k")(x_BxSxD)
        v_BxSxGxK = dense(cfg, (g, k), "v")(x_BxSxD)
        if cfg.positions == "rope":
            q_BxSxHxK, k_BxSxGxK = rope(q_BxSxHxK, positions_BxS), rope(k_BxSxGxK, positions_BxS)
        start_B = positions_BxS[:, 0]
        kv = {"k": write(kv["k"], k_BxSxGxK, start_B), "v": write(kv["v"], v_BxSxGxK, start_B)}
        b, s, t = x_BxSxD.shape[0], x_BxSxD.shape[1], kv["k"].shape[1]
        q_BxSxGxRxK = q_BxSxHxK.reshape(b, s, g, h // g, k)
        scores = jnp.einsum(
            "BSGRK,BTGK->BGRST",
            q_BxSxGxRxK,
            kv["k"],
            precision=cfg.precision,
            preferred_element_type=jnp.float32,
        )
        scores = scores / jnp.sqrt(jnp.float32(k))
        # Causal over positions: a query at position p sees cache entries 0..p only.
        visible_BxSxT = jnp.arange(t)[None, None, :] <= positions_BxS[:, :, None]
        scores = jnp.where(visible_BxSxT[:, None, None], scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
        out_BxSxGxRxK = jnp.einsum("BGRST,BTGK->BSGRK", probs, kv["v"], precision=cfg.precision)
        out_BxSxD = dense(cfg, cfg.width, "o", axis=(-2, -1))(out_BxSxGxRxK.reshape(b, s, h, k))
        return out_BxSxD, kv


class FFN(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxSxD):
        cfg = self.cfg
        if cfg.gated_ffn:
            gate_BxSxF = nn.silu(dense(cfg, cfg.ffn, "gate")(x_BxSxD))
            h_BxSxF = gate_BxSxF * dense(cfg, cfg.ffn, "up")(x_BxSxD)
        else:
            h_BxSxF = nn.gelu(dense(cfg, cfg.ffn, "up")(x_BxSxD))
        return dense(cfg, cfg.width, "down")(h_BxSxF)


class Block(nn.Module):
    cfg: DecoderConfig
    ffn: Any = None  # a module class taking cfg; the MoE decoder passes its own

    @nn.compact
    def __call__(self, x_BxSxD, positions_BxS, kv):
        cfg = self.cfg
        attn_out, kv = Attention(cfg, name="attn")(RMSNorm(cfg.dtype)(x_BxSxD), positions_BxS, kv)
        x_BxSxD = x_BxSxD + attn_out
        ffn = (self.ffn or FFN)(cfg, name="ffn")
        return x_BxSxD + ffn(RMSNorm(cfg.dtype)(x_BxSxD)), kv


class Decoder(nn.Module):
    """tokens_BxS at positions_BxS, with a cache of T >= max position + 1 entries ->
    (logits_BxSxV, updated cache)."""

    cfg: DecoderConfig
    ffn_for_layer: Any = None  # layer index -> FFN module class, or None for the dense FFN

    @nn.compact
    def __call__(self, tokens_BxS, positions_BxS, cache: Cache, last_logits_only=False):
        cfg = self.cfg
        embed = nn.Embed(
            cfg.vocab,
            cfg.width,
            dtype=cfg.dtype,
            param_dtype=cfg.dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed",
        )
        x_BxSxD = embed(tokens_BxS)
        if cfg.positions == "learned":
            table = self.param(
                "pos_embed", nn.initializers.normal(0.02), (cfg.max_len, cfg.width), cfg.dtype
            )
            x_BxSxD = x_BxSxD + table[positions_BxS]
        new_cache = {}
        for i in range(cfg.layers):
            ffn = self.ffn_for_layer(i) if self.ffn_for_layer else None
            x_BxSxD, new_cache[f"layer_{i}"] = Block(cfg, ffn, name=f"block_{i}")(
                x_BxSxD, positions_BxS, cache[f"layer_{i}"]
            )
        if last_logits_only:  # serving needs only the next token's logits after a prompt
            x_BxSxD = x_BxSxD[:, -1:]
        x_BxSxD = RMSNorm(cfg.dtype, name="final_norm")(x_BxSxD)
        if cfg.tied_embeddings:
            logits = embed.attend(x_BxSxD)
        else:
            logits = nn.Dense(
                cfg.vocab,
                use_bias=False,
                dtype=cfg.dtype,
                param_dtype=cfg.dtype,
                precision=cfg.precision,
                name="unembed",
            )(x_BxSxD)
        return logits.astype(jnp.float32), new_cache


def prefill(model: Decoder, params, tokens_BxS, cache_len: int | None = None):
    """Runs the prompt through the model: (cache with S entries filled, logits_BxV of the
    last prompt token, which predict the first generated one)."""
    b, s = tokens_BxS.shape
    cache = init_cache(model.cfg, b, cache_len or s)
    positions_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
    logits, cache = model.apply(params, tokens_BxS, positions_BxS, cache, last_logits_only=True)
    return cache, logits[:, 0]


def decode_step(model: Decoder, params, cache: Cache, tokens_B, positions_B):
    """One token per sequence at its position: (updated cache, logits_BxV)."""
    logits, cache = model.apply(params, tokens_B[:, None], positions_B[:, None], cache)
    return cache, logits[:, 0]


def forward(model: Decoder, params, tokens_BxS):
    """A full causal forward pass with no cache kept: logits_BxSxV."""
    b, s = tokens_BxS.shape
    positions_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
    return model.apply(params, tokens_BxS, positions_BxS, init_cache(model.cfg, b, s))[0]


def generate(model: Decoder, params, prompt_BxS, steps: int):
    """Greedy decoding of `steps` tokens after the prompt: tokens_Bx(steps)."""
    b, s = prompt_BxS.shape
    cache, logits_BxV = prefill(model, params, prompt_BxS, cache_len=s + steps)
    step = jax.jit(lambda p, c, t, pos: decode_step(model, p, c, t, pos), donate_argnums=1)
    out = []
    for i in range(steps):
        token_B = jnp.argmax(logits_BxV, axis=-1)
        out.append(token_B)
        if i + 1 < steps:
            cache, logits_BxV = step(params, cache, token_B, jnp.full((b,), s + i))
    return jnp.stack(out, axis=1)
