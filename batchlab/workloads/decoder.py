"""Decoder families: one decode step ("decode") and a prompt ("prefill").

Cost model (REFERENCE 2.4-2.5), per call, S new tokens per sequence attending over a
cache of T entries, N layers: matmul FLOPs 2·b·S·(N·P_layer + V·D_unembedded);
attention FLOPs 4·b·S·T·H·K·N; weight bytes s·(all weights read); KV bytes read
2·b·T·G·K·s·N and written 2·b·S·G·K·s·N (state_bytes); activation bytes: the inputs and
outputs of every matmul plus fp32 logits.
"""

import jax
import jax.numpy as jnp

from batchlab.errors import ConfigError
from batchlab.models import decoder as dec
from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Family, Param, Point, Workload

MODEL_PARAMS = (
    Param("depth", "depths", int, (8,), "Layers.", minimum=1),
    Param("width", "widths", int, (512,), "Model width D.", minimum=1),
    Param("heads", "heads", int, (8,), "Attention heads H.", minimum=1),
    Param(
        "kv_heads",
        "kv_heads",
        int,
        (8,),
        "KV heads G: H (multi-head), 1 (multi-query) or a divisor of H (grouped-query).",
        minimum=1,
    ),
    Param("ffn", "ffn_widths", int, (2048,), "FFN hidden width F.", minimum=1),
    Param(
        "ffn_kind",
        "ffn_kinds",
        str,
        ("gated",),
        "gated (SwiGLU) or plain (GELU).",
        choices=("gated", "plain"),
    ),
    Param(
        "position_kind",
        "position_kinds",
        str,
        ("rope",),
        "rope or learned.",
        choices=("rope", "learned"),
    ),
    Param(
        "embeddings",
        "embeddings",
        str,
        ("tied",),
        "tied or untied input/output embeddings.",
        choices=("tied", "untied"),
    ),
    Param("vocab", "vocab_sizes", int, (32000,), "Vocabulary size V.", minimum=1),
    Param("max_len", "max_lens", int, (8192,), "Longest sequence the model allows.", minimum=1),
)
# The examples' model: one layer, compiled in about a second (GQA, SwiGLU, RoPE, tied).
SMALL_MODEL = {
    "depth": 1,
    "width": 32,
    "heads": 4,
    "kv_heads": 2,
    "ffn": 48,
    "vocab": 101,
    "max_len": 32,
}
# The second example's other variants: two layers, a plain FFN, learned positions, untied.
_OTHER_VARIANT = {
    "depth": 2,
    "ffn_kind": "plain",
    "position_kind": "learned",
    "embeddings": "untied",
}


def model_config(point: Point, numerics: Numerics) -> dec.DecoderConfig:
    return dec.DecoderConfig(
        vocab=point["vocab"],
        width=point["width"],
        layers=point["depth"],
        heads=point["heads"],
        kv_heads=point["kv_heads"],
        ffn=point["ffn"],
        gated_ffn=point["ffn_kind"] == "gated",
        positions=point["position_kind"],
        tied_embeddings=point["embeddings"] == "tied",
        max_len=point["max_len"],
        dtype=numerics.jnp_dtype,
        precision=numerics.lax_precision,
    )


def validate_model(point: Point) -> None:
    """Shape rules; each error names its flag."""
    if point["width"] % point["heads"]:
        raise ConfigError(
            f"--widths: width {point['width']} is not divisible by --heads {point['heads']}"
        )
    if point["heads"] % point["kv_heads"]:
        raise ConfigError(
            f"--kv_heads: heads {point['heads']} are not divisible by kv_heads {point['kv_heads']}"
        )
    if point["position_kind"] == "rope" and (point["width"] // point["heads"]) % 2:
        raise ConfigError(
            f"--position_kinds: rope needs an even head dim, got {point['width'] // point['heads']}"
        )


def layer_matmuls(point: Point) -> list[tuple[int, int]]:
    """(in, out) of each matmul in one layer."""
    d, h, g, f = point["width"], point["heads"], point["kv_heads"], point["ffn"]
    k = d // h
    attn = [(d, h * k), (d, g * k), (d, g * k), (h * k, d)]
    ffn = [(d, f), (d, f), (f, d)] if point["ffn_kind"] == "gated" else [(d, f), (f, d)]
    return attn + ffn


def cost(
    point: Point, batch: int, new_tokens: int, cache_len: int, logit_tokens: int, numerics: Numerics
) -> Cost:
    """One call: `new_tokens` per sequence over a cache of `cache_len` entries."""
    s = numerics.itemsize
    d, n, v = point["width"], point["depth"], point["vocab"]
    h, g, k = point["heads"], point["kv_heads"], d // point["heads"]
    b_s = batch * new_tokens
    mats = layer_matmuls(point)
    layer_weights = sum(m * o for m, o in mats) + 2 * d  # two RMSNorm scales
    # Final norm and the V x D output matrix (the tied table, or the untied unembedding),
    # read whole once; an input-embedding lookup reads only b·S rows (activations below).
    weight_elems = n * layer_weights + d + v * d
    flops = (
        2 * b_s * n * sum(m * o for m, o in mats)
        + 2 * batch * logit_tokens * v * d
        + 4 * b_s * cache_len * h * k * n
    )
    activations = s * b_s * n * sum(m + o for m, o in mats)
    activations += s * b_s * d * (2 if point["position_kind"] == "learned" else 1)  # lookups
    activations += s * batch * logit_tokens * d + 4 * batch * logit_tokens * v  # fp32 logits
    kv = 2 * batch * g * k * s * n * (cache_len + new_tokens)
    return Cost(
        flops=flops, weight_bytes=s * weight_elems, activation_bytes=activations, state_bytes=kv
    )


def _init(model: dec.Decoder, key):
    """Random weights, from a one-token call (shapes do not depend on batch or length)."""
    one = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(model.init)(key, one, one, dec.init_cache(model.cfg, 1, 1))


# ---- decode step -------------------------------------------------------------------------


def decode_cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    """A decode step reads a cache of context + 1 entries (the new token's included)."""
    return cost(point, batch, 1, point["context"] + 1, 1, numerics)


def validate_decode(point: Point) -> None:
    validate_model(point)
    if point["context"] + 1 > point["max_len"]:
        raise ConfigError(
            f"--contexts: context {point['context']} plus the new token is "
            f"beyond the cache's maximum length {point['max_len']} (--max_lens)"
        )


def decode_inputs(cfg: dec.DecoderConfig, context: int, batch: int, key):
    """(cache of context + 1 random entries, one token per sequence, its position)."""
    k_cache, k_tok = jax.random.split(key)
    # One random sequence per layer, repeated over the batch: drawing gigabytes of normals
    # on a CPU takes longer than the sweep; the bytes read are the same.
    cache = jax.tree.map(
        lambda a: jnp.tile(jax.random.normal(k_cache, a.shape, a.dtype), (batch, 1, 1, 1)),
        dec.init_cache(cfg, 1, context + 1),
    )
    tokens_B = jax.random.randint(k_tok, (batch,), 0, cfg.vocab)
    return cache, tokens_B, jnp.full((batch,), context, jnp.int32)


def build_decode(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """A cache of random keys and values at positions 0..context-1; the step writes at
    position `context` and returns the donated cache, which the next call takes."""
    cfg = model_config(point, numerics)
    model = dec.Decoder(cfg)
    k_init, k_inputs = jax.random.split(key)
    params = _init(model, k_init)
    cache, tokens_B, positions_B = decode_inputs(cfg, point["context"], batch, k_inputs)
    return Workload(
        fn=lambda p, c, tok, pos: dec.decode_step(model, p, c, tok, pos),
        weights=params,
        inputs=(cache, tokens_B, positions_B),
        cost=decode_cost(point, batch, numerics),
        donate_argnums=(1,),
        next_inputs=lambda out, inputs: (out[0], *inputs[1:]),
    )


DECODE = Family(
    name="decode",
    description="one autoregressive decode step of a decoder-only transformer with a KV cache",
    params=MODEL_PARAMS
    + (Param("context", "contexts", int, (512,), "Tokens already in the KV cache.", minimum=0),),
    cost=decode_cost,
    build=build_decode,
    validate=validate_decode,
    batch_unit="sequences",
    plot_axes=("context",),
    examples=(
        SMALL_MODEL | {"context": 15},
        SMALL_MODEL | _OTHER_VARIANT | {"kv_heads": 1, "context": 7},
    ),
)


# ---- prefill -----------------------------------------------------------------------------


def prefill_cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    """The prompt's S tokens attend over S entries; logits only for the last token."""
    s = point["prompt_len"]
    return cost(point, batch, s, s, 1, numerics)  # S entries written, then read


def validate_prefill(point: Point) -> None:
    validate_model(point)
    if point["prompt_len"] > point["max_len"]:
        raise ConfigError(
            f"--prompt_lens: prompt {point['prompt_len']} is longer than the "
            f"maximum length {point['max_len']} (--max_lens)"
        )


def build_prefill(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    cfg = model_config(point, numerics)
    model = dec.Decoder(cfg)
    k_init, k_tok = jax.random.split(key)
    params = _init(model, k_init)
    tokens_BxS = jax.random.randint(k_tok, (batch, point["prompt_len"]), 0, cfg.vocab)
    return Workload(
        fn=lambda p, tok: dec.prefill(model, p, tok),
        weights=params,
        inputs=(tokens_BxS,),
        cost=prefill_cost(point, batch, numerics),
    )


PREFILL = Family(
    name="prefill",
    description="a prompt through a decoder-only transformer, filling its KV cache",
    params=MODEL_PARAMS
    + (Param("prompt_len", "prompt_lens", int, (128,), "Prompt length S.", minimum=1),),
    cost=prefill_cost,
    build=build_prefill,
    validate=validate_prefill,
    batch_unit="sequences",
    plot_axes=("prompt_len",),
    examples=(
        SMALL_MODEL | {"prompt_len": 8},
        SMALL_MODEL | _OTHER_VARIANT | {"kv_heads": 4, "prompt_len": 6},
    ),
)
