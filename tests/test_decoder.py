"""The KV-cache decoder: cached decoding equals the full pass, a plain-jnp reference
agrees, the cache is donated and updated in place, and the analytic cost adds up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_DECODER, run_cli

from batchlab import timing
from batchlab.models import decoder as dec
from batchlab.numerics import Numerics
from batchlab.workloads import decoder as wl

SMALL = dict(vocab=101, width=64, layers=2, heads=4, kv_heads=2, ffn=96, max_len=64)


def make(**overrides):
    cfg = dec.DecoderConfig(**(SMALL | overrides))
    model = dec.Decoder(cfg)
    one = jnp.zeros((1, 1), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), one, one, dec.init_cache(cfg, 1, 1))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, cfg.vocab)
    return cfg, model, params, tokens


def reference_logits(cfg, params, tokens_BxS):
    """The same network written plainly: repeat KV heads, causal softmax, no cache."""
    p = params["params"]
    b, s = tokens_BxS.shape
    h, g, k = cfg.heads, cfg.kv_heads, cfg.head_dim
    x = p["embed"]["embedding"][tokens_BxS]
    pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    if cfg.positions == "learned":
        x = x + p["pos_embed"][pos]

    def norm(x, scale):
        return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale

    for i in range(cfg.layers):
        blk = p[f"block_{i}"]
        a = blk["attn"]
        y = norm(x, blk["RMSNorm_0"]["scale"])
        q = jnp.einsum("bsd,dhk->bshk", y, a["q"]["kernel"])
        kk = jnp.einsum("bsd,dgk->bsgk", y, a["k"]["kernel"])
        v = jnp.einsum("bsd,dgk->bsgk", y, a["v"]["kernel"])
        if cfg.positions == "rope":
            q, kk = dec.rope(q, pos), dec.rope(kk, pos)
        kk, v = jnp.repeat(kk, h // g, axis=2), jnp.repeat(v, h // g, axis=2)
        scores = jnp.einsum("bqhk,bthk->bhqt", q, kk) / np.sqrt(k)
        scores = jnp.where(jnp.tril(jnp.ones((s, s), bool)), scores, -jnp.inf)
        att = jnp.einsum("bhqt,bthk->bqhk", jax.nn.softmax(scores, -1), v)
        x = x + jnp.einsum("bshk,hkd->bsd", att, a["o"]["kernel"])
        f = blk["ffn"]
        y = norm(x, blk["RMSNorm_1"]["scale"])
        if cfg.gated_ffn:
            hid = jax.nn.silu(y @ f["gate"]["kernel"]) * (y @ f["up"]["kernel"])
        else:
            hid = jax.nn.gelu(y @ f["up"]["kernel"])
        x = x + hid @ f["down"]["kernel"]
    x = norm(x, p["final_norm"]["scale"])
    out = p["embed"]["embedding"] if cfg.tied_embeddings else p["unembed"]["kernel"].T
    return x @ out.T


VARIANTS = [
    {},
    {"kv_heads": 4},  # multi-head
    {"kv_heads": 1},  # multi-query
    {"positions": "learned", "tied_embeddings": False, "gated_ffn": False},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=str)
def test_forward_matches_plain_reference(overrides):
    cfg, model, params, tokens = make(**overrides)
    with jax.default_matmul_precision("highest"):
        got = dec.forward(model, params, tokens)
        want = reference_logits(cfg, params, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("overrides", VARIANTS, ids=str)
def test_decode_after_prefill_equals_full_forward_at_every_position(overrides):
    cfg, model, params, tokens = make(**overrides)
    full = dec.forward(model, params, tokens)
    cache, logits = dec.prefill(model, params, tokens[:, :4], cache_len=12)
    np.testing.assert_allclose(logits, full[:, 3], rtol=1e-5, atol=1e-5)
    for p in range(4, 12):
        cache, logits = dec.decode_step(model, params, cache, tokens[:, p], jnp.full((3,), p))
        np.testing.assert_allclose(logits, full[:, p], rtol=1e-5, atol=1e-5)


def test_gqa_with_as_many_kv_heads_as_heads_is_multi_head():
    cfg, model, params, tokens = make(kv_heads=4)
    assert params["params"]["block_0"]["attn"]["k"]["kernel"].shape == (64, 4, 16)
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(
            dec.forward(model, params, tokens),
            reference_logits(cfg, params, tokens),
            rtol=2e-4,
            atol=2e-4,
        )


def test_cache_entries_past_the_position_are_never_read():
    cfg, model, params, tokens = make()
    cache, _ = dec.prefill(model, params, tokens[:, :5], cache_len=12)
    noisy = jax.tree.map(lambda a: a.at[:, 6:].set(1e3), cache)  # beyond position 5
    pos = jnp.full((3,), 5)
    _, clean = dec.decode_step(model, params, cache, tokens[:, 5], pos)
    _, dirty = dec.decode_step(model, params, noisy, tokens[:, 5], pos)
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(dirty))


def test_rows_at_different_positions():
    """Each sequence writes and attends at its own position."""
    cfg, model, params, tokens = make()
    full = dec.forward(model, params, tokens)
    cache, _ = dec.prefill(model, params, tokens[:, :8], cache_len=12)
    pos = jnp.array([5, 6, 7])
    _, logits = dec.decode_step(model, params, cache, tokens[jnp.arange(3), pos], pos)
    for row in range(3):
        np.testing.assert_allclose(logits[row], full[row, int(pos[row])], rtol=1e-5, atol=1e-5)


def test_greedy_generation_is_deterministic_and_matches_recomputation():
    cfg, model, params, tokens = make()
    prompt = tokens[:, :4]
    a = dec.generate(model, params, prompt, steps=5)
    b = dec.generate(model, params, prompt, steps=5)
    np.testing.assert_array_equal(a, b)
    seq = prompt
    for _ in range(5):  # greedy by re-running the full pass each time
        nxt = jnp.argmax(dec.forward(model, params, seq)[:, -1], axis=-1)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(a, seq[:, 4:])


POINT = SMALL_DECODER


def test_decode_cost_by_hand():
    c = wl.decode_cost(POINT | {"context": 9}, 2, Numerics())
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96  # q, k, v (2 KV heads of 16), o, FFN
    assert c.weight_bytes == 4 * (2 * (layer + 2 * 64) + 64 + 101 * 64)
    # matmuls of 2 tokens, logits, then attention over 10 entries: 4·b·T·H·K·N
    assert c.flops == 2 * 2 * 2 * layer + 2 * 2 * 101 * 64 + 4 * 2 * 10 * 4 * 16 * 2
    # K and V, 2 layers, 2 KV heads x 16, fp32: read 10 entries, write 1, per sequence
    assert c.state_bytes == 2 * 2 * 2 * 32 * 4 * (10 + 1)


def test_decode_workload_donates_its_cache_and_updates_it_in_place():
    work = wl.DECODE.build(POINT | {"context": 31}, 2, Numerics(), jax.random.PRNGKey(0))
    compiled = timing.compile_ahead(work.fn, (work.weights, *work.inputs), work.donate_argnums)
    cache_bytes = sum(a.nbytes for a in jax.tree.leaves(work.inputs[0]))
    assert compiled.memory_analysis["alias_size_in_bytes"] >= cache_bytes
    out = compiled.compiled(work.weights, *work.inputs)
    assert all(a.is_deleted() for a in jax.tree.leaves(work.inputs[0]))
    nxt = work.next_inputs(out, work.inputs)
    compiled.compiled(work.weights, *nxt)  # the returned cache feeds the next step


BAD = [
    (["--model=decode", "--contexts=64", "--max_lens=64"], "--contexts"),
    (["--model=decode", "--heads=6", "--kv_heads=4", "--widths=48"], "--kv_heads"),
    (["--model=decode", "--widths=100", "--heads=8"], "--widths"),
    (["--model=prefill", "--prompt_lens=100", "--max_lens=64"], "--prompt_lens"),
    (["--model=decode", "--ffn_kinds=moe"], "--ffn_kinds"),
]


@pytest.mark.parametrize("args,flag", BAD, ids=str)
def test_bad_decoder_input_gets_one_clear_line(args, flag, tmp_path):
    proc = run_cli(*args, f"--out_dir={tmp_path / 'o'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and flag in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
