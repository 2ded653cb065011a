"""Kernels read from optimized HLO, and the per-kernel model on a hand-made profile, against
hand calculations."""

import re

import jax
import jax.numpy as jnp
import pytest

from batchlab import kernel_model, kernels, timing


def kernels_of(fn, *args, donate=()):
    compiled = timing.compile_ahead(fn, args, donate).compiled
    return kernels.of_compiled(compiled), compiled


def only(ks, cls):
    (k,) = [k for k in ks if k.cls == cls]
    return k


def test_a_dot_is_one_matmul_with_its_dims():
    x, w = jnp.ones((4, 64)), jnp.ones((64, 32))
    ks, compiled = kernels_of(lambda x, w: x @ w, x, w)
    k = only(ks, "matmul")
    assert dict(k.dims) == {"m": 4, "n": 32, "k": 64, "batch": 1}
    assert k.flops == 2 * 4 * 32 * 64
    assert k.bytes_read == 4 * (4 * 64 + 64 * 32) and k.bytes_written == 4 * 4 * 32
    assert kernels.totals(ks)["flops"] == timing._plain(compiled.cost_analysis())["flops"]


def test_a_batched_dot_keeps_its_batch():
    q, kv = jnp.ones((8, 1, 16)), jnp.ones((8, 128, 16))
    ks, _ = kernels_of(lambda q, kv: jnp.einsum("bqk,btk->bqt", q, kv), q, kv)
    assert dict(only(ks, "matmul").dims) == {"m": 1, "n": 128, "k": 16, "batch": 8}


def test_a_convolution():
    x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 32))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    ks, compiled = kernels_of(conv, x, w)
    k = only(ks, "conv")
    # VALID: 6x6 outputs per image and channel, 9 taps of 16 inputs each.
    assert k.dim("outputs") == 2 * 6 * 6 * 32 and k.dim("taps") == 9 and k.dim("c_in") == 16
    assert k.flops == 2 * (2 * 6 * 6 * 32) * 9 * 16
    assert k.flops == timing._plain(compiled.cost_analysis())["flops"]


def test_a_reduce_window():
    x = jnp.ones((1, 16, 16, 8))
    ks, _ = kernels_of(
        lambda x: jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID"
        ),
        x,
    )
    k = only(ks, "reduce_window")
    assert k.flops == 7 * 7 * 8 * 9  # 7x7 outputs per channel, a 3x3 window each
    assert k.bytes_read == 4 * 16 * 16 * 8 + 4  # the input and its init value
    assert k.bytes_written == 4 * 7 * 7 * 8


def test_elementwise_work_fuses_into_one_kernel():
    x = jnp.ones((1000,))
    ks, _ = kernels_of(lambda x: jnp.tanh(x * 2.0 + 1.0), x)
    (k,) = ks
    assert k.cls == "elementwise" and k.count == 1
    assert k.flops == 3 * 1000  # multiply, add, tanh: one each per element
    assert k.bytes_read == k.bytes_written == 4000


def test_an_in_place_update_moves_only_the_update():
    cache, new = jnp.ones((4, 256, 8)), jnp.ones((4, 1, 8))
    ks, _ = kernels_of(
        lambda c, u: jax.lax.dynamic_update_slice(c, u, (0, 7, 0)), cache, new, donate=(0,)
    )
    moved = kernels.totals(ks)["bytes"]
    assert moved <= 4 * (2 * 4 * 8) + 64  # the update read and written, and the indices
    assert moved < cache.nbytes / 10


def test_a_masked_update_that_reads_its_own_slice_stays_in_place():
    # A decoder's KV-cache write: keep the old value of the slice where a flag says so.
    cache, new = jnp.ones((1, 4096, 8, 64)), jnp.ones((1, 1, 8, 64))

    def masked(c, u, p, f):
        old = jax.lax.dynamic_slice(c, (0, p, 0, 0), (1, 1, 8, 64))
        return jax.lax.dynamic_update_slice(c, jnp.where(f, u, old), (0, p, 0, 0))

    ks, compiled = kernels_of(masked, cache, new, jnp.int32(100), jnp.bool_(True), donate=(0,))
    (k,) = ks
    # The update read and written, the old slice read, the indices: 3 x 2 KiB and a few.
    assert k.cls == "dynamic_update_slice"
    assert 3 * new.nbytes <= kernels.totals(ks)["bytes"] <= 3 * new.nbytes + 64
    # The same fusion reading another region (the slice at 0) than the one it writes: not
    # in place, the whole buffer is read.
    hlo = compiled.as_text()
    (line,) = [x for x in hlo.splitlines() if "dynamic-slice(" in x]
    ops = re.search(r"dynamic-slice\(([^)]*)\)", line).group(1).split(", ")
    moved = line.replace(", ".join(ops), ", ".join([ops[0], *[ops[1]] * (len(ops) - 1)]))
    other = kernels.extract(hlo.replace(line, moved))
    assert kernels.totals(other)["bytes"] >= cache.nbytes


def test_identical_kernels_merge_with_their_count():
    x, w = jnp.ones((2, 32)), jnp.ones((32, 32))

    def chain(x, w):
        for _ in range(5):
            x = jnp.tanh(x @ w)
        return x

    ks, _ = kernels_of(chain, x, w)
    assert only(ks, "matmul").count == 5


def test_conditionals_take_their_costlier_branch_or_a_fraction():
    x, w = jnp.ones((8, 64)), jnp.ones((64, 64))

    def f(p, x, w):
        return jax.lax.cond(p, lambda: x @ w, lambda: x)

    compiled = timing.compile_ahead(f, (True, x, w)).compiled
    heavy = kernels.totals(kernels.of_compiled(compiled))["flops"]
    assert heavy == 2 * 8 * 64 * 64
    assert kernels.totals(kernels.of_compiled(compiled, 0.25))["flops"] == heavy / 4


PROFILE = {
    "floor_s": 5e-6,
    "tables": {
        # 1 ns per FLOP at every shape measured, warm; cold matmuls 3x slower at M <= 4.
        "matmul": [[m, d, 0, 1e-9 * 2 * m * d * d] for m in (1, 4, 64) for d in (64, 1024)]
        + [[m, d, 1, 3e-9 * 2 * m * d * d] for m in (1, 4) for d in (64, 1024)],
        "batched": [[8, 256, 64, 1e-5], [8, 2048, 64, 8e-5]],
        "conv": [
            [c, k, p, b, 2e-9 * 2 * p * b * k * k * c * c]
            for c in (64, 256)
            for k in (1, 3)
            for p in (196, 3136)
            for b in (1, 8)
        ],
        # 1 GB/s, and 10 GB/s below 1 MB (a cache).
        "stream": [[1e3, 1e-7], [1e6, 1e-4], [1e7, 1e-2], [1e8, 1e-1]],
        "reduction": [[1e3, 1e-6], [1e8, 1e-1]],
        "copy": [[1e3, 1e-6], [1e8, 1e-1]],
        "transpose": [[1e3, 2e-6], [1e8, 2e-1]],  # element by element: half the copy's rate
        "reduce_window": [[1e3, 1e-6], [1e8, 1e-1]],
        "gather": [[1e3, 1e-6], [1e8, 1e-1]],
        "scatter": [[1e3, 1e-6], [1e8, 1e-1]],
        # New pages cost 0.1 ns a byte, on results of 1 kB and more.
        "fresh": [[1e3, 1e-7], [1e8, 1e-2]],
    },
    "launch_s": 5e-7,
}


def test_the_model_on_a_hand_made_profile():
    mm = kernels.Kernel(
        "matmul",
        2 * 4 * 1024 * 1024,
        4.2e6,
        1.6e4,
        (("batch", 1), ("k", 1024), ("m", 4), ("n", 1024)),
        8,
    )
    ew = kernels.Kernel("elementwise", 4096, 1e7, 0, (), 2)
    warm = kernel_model.predict([mm, ew], PROFILE, working_set_bytes=1e6, cache_bytes=32e6)
    # 8 matmuls at 1 ns per FLOP, 2 streams of 10 MB at 1 GB/s, and the floor.
    want = 5e-6 + 8 * 2 * 4 * 1024 * 1024 * 1e-9 + 2 * 1e-2
    assert warm.model_s == pytest.approx(want, rel=1e-9)
    cold = kernel_model.predict([mm], PROFILE, working_set_bytes=1e9, cache_bytes=32e6)
    assert cold.model_s == pytest.approx(5e-6 + 3 * 8 * 2 * 4 * 1024 * 1024 * 1e-9, rel=1e-9)
    # Past the batches measured cold, weights no longer dominate: the warm rate.
    big = kernels.Kernel(
        "matmul", 2 * 64 * 1024 * 1024, 0, 0, (("batch", 1), ("k", 1024), ("m", 64), ("n", 1024))
    )
    assert kernel_model.predict([big], PROFILE, 1e9, 32e6).model_s == pytest.approx(
        5e-6 + 2 * 64 * 1024 * 1024 * 1e-9
    )
    top = warm.top(2)
    assert top[0]["kernels"] == "matmul M=4" and top[0]["share"] == pytest.approx(
        8 * 2 * 4 * 1024 * 1024 * 1e-9 / want
    )
    assert "in 8 matmul M=4" in warm.text()


def test_the_model_interpolates_and_extrapolates_in_log_space():
    # Half-way (in log) between 1 MB and 10 MB: between 1e-4 and 1e-2 s, i.e. 1e-3 s.
    lookup = kernel_model.Lookup(PROFILE)
    stream = kernels.Kernel("elementwise", 0, 10**6.5, 0)
    assert lookup.seconds(stream, cold=False) == pytest.approx(1e-3)
    # Past the largest size, linear in bytes.
    big = kernels.Kernel("copy", 0, 1e9, 0, (("run", 64),))
    assert lookup.seconds(big, cold=False) == pytest.approx(1.0)  # 1e8 B in 0.1 s


def test_a_call_past_the_caches_prices_bytes_from_the_cold_rows():
    # Streams measured cold from 1 MB to 10 MB at a tenth of the warm rate.
    prof = dict(PROFILE, tables=dict(PROFILE["tables"]))
    prof["tables"]["stream"] = PROFILE["tables"]["stream"] + [[1e6, 1e-3, 1], [1e7, 1e-1, 1]]
    lookup = kernel_model.Lookup(prof)
    mid = kernels.Kernel("elementwise", 0, 10**6.5, 0)
    assert lookup.seconds(mid, cold=False) == pytest.approx(1e-3)  # warm, as before
    assert lookup.seconds(mid, cold=True) == pytest.approx(1e-2)
    # Below and past the cold rows, the warm ones.
    for nbytes in (1e3, 1e8):
        k = kernels.Kernel("elementwise", 0, nbytes, 0)
        assert lookup.seconds(k, cold=True) == lookup.seconds(k, cold=False)
    # A program whose working set fits the caches is priced warm.
    warm = kernel_model.predict([mid], prof, working_set_bytes=1e6, cache_bytes=32e6)
    cold = kernel_model.predict([mid], prof, working_set_bytes=1e9, cache_bytes=32e6)
    assert (warm.model_s, cold.model_s) == pytest.approx((5e-6 + 1e-3, 5e-6 + 1e-2))


def test_a_transpose_that_keeps_rows_contiguous_is_a_block_copy():
    x = jnp.ones((4, 128, 8, 64))
    blocks = timing.compile_ahead(lambda x: jnp.transpose(x, (0, 2, 1, 3)), (x,)).compiled
    full = timing.compile_ahead(lambda x: jnp.transpose(x, (0, 2, 3, 1)), (x,)).compiled
    (b,) = kernels.of_compiled(blocks)
    (f,) = kernels.of_compiled(full)
    assert (b.cls, b.dim("run", 0)) == ("copy", 64)  # rows of 64 elements move whole
    assert (f.cls, f.dim("run", 0)) == ("copy", 0)  # element by element
    assert b.bytes == f.bytes == 2 * x.nbytes
    # The block copy is priced from the copy table, the true transpose from the transpose
    # table (at 2e-9 s per byte, twice the copy's), neither as a stream.
    lookup = kernel_model.Lookup(PROFILE)
    assert lookup.seconds(b, cold=False) == pytest.approx(1e-9 * b.bytes)
    assert lookup.seconds(f, cold=False) == pytest.approx(2e-9 * f.bytes)
    stream = kernels.Kernel("elementwise", 0, b.bytes, 0)
    assert lookup.seconds(b, cold=False) != lookup.seconds(stream, cold=False)
    assert kernel_model.tables_for([b]) == {"copy", "stream", "fresh"}
    assert kernel_model.tables_for([f]) == {"transpose", "stream", "fresh"}


def test_a_smaller_matmul_measured_slower_than_a_larger_one_is_capped():
    noisy = dict(PROFILE, tables=dict(PROFILE["tables"]))
    # M=1 and 4 at width 64 measured 100x slower than M=64 (a glitch): M=4 is priced as
    # M=64's time (run padded), not as four of the glitched M=1 (run in row blocks).
    noisy["tables"]["matmul"] = [
        r if (r[0], r[1], r[2]) not in ((1, 64, 0), (4, 64, 0)) else [*r[:3], 1e-3]
        for r in PROFILE["tables"]["matmul"]
    ]
    at_64 = next(r[3] for r in PROFILE["tables"]["matmul"] if r[:3] == [64, 64, 0])
    mm = kernels.Kernel("matmul", 2 * 4 * 64 * 64, 0, 0, (("k", 64), ("m", 4), ("n", 64)))
    assert kernel_model.Lookup(noisy).seconds(mm, cold=False) == pytest.approx(at_64)
    # An honest profile (time growing with M) is left as it is.
    assert kernel_model.Lookup(PROFILE).seconds(mm, cold=False) == pytest.approx(
        1e-9 * 2 * 4 * 64 * 64
    )


def test_a_larger_matmul_measured_slower_per_flop_than_a_smaller_one_is_capped():
    noisy = dict(PROFILE, tables=dict(PROFILE["tables"]))
    # M=64 at width 1024 measured 5x slower per FLOP than M=4 (a glitch): priced as 16
    # blocks of M=4, which is how a library could run it.
    noisy["tables"]["matmul"] = [
        r if (r[0], r[1], r[2]) != (64, 1024, 0) else [64, 1024, 0, 5e-9 * 2 * 64 * 1024**2]
        for r in PROFILE["tables"]["matmul"]
    ]
    mm = kernels.Kernel("matmul", 2 * 64 * 1024**2, 0, 0, (("k", 1024), ("m", 64), ("n", 1024)))
    at_4 = next(r[3] for r in PROFILE["tables"]["matmul"] if r[:3] == [4, 1024, 0])
    assert kernel_model.Lookup(noisy).seconds(mm, cold=False) == pytest.approx(16 * at_4)
    # Measured faster per FLOP than the smaller M (as real matmuls are): left as it is.
    fast = dict(PROFILE, tables=dict(PROFILE["tables"]))
    fast["tables"]["matmul"] = [
        r if (r[0], r[1], r[2]) != (64, 1024, 0) else [64, 1024, 0, 0.5e-9 * 2 * 64 * 1024**2]
        for r in PROFILE["tables"]["matmul"]
    ]
    assert kernel_model.Lookup(fast).seconds(mm, cold=False) == pytest.approx(
        0.5e-9 * 2 * 64 * 1024**2
    )


def test_the_tables_a_points_kernels_need():
    attention = kernels.Kernel("matmul", 1, 1, 1, (("batch", 8), ("k", 64), ("m", 1), ("n", 256)))
    dense = kernels.Kernel("matmul", 1, 1, 1, (("batch", 1), ("k", 64), ("m", 1), ("n", 64)))
    dus = kernels.Kernel("dynamic_update_slice", 0, 1, 1)
    assert kernel_model.tables_for([attention, dense, dus]) == {
        "batched", "matmul", "scatter", "stream", "fresh",
    }  # fmt: skip
    # The fallback of every table, and what every call's new pages cost.
    assert kernel_model.tables_for([]) == {"stream", "fresh"}


def test_results_and_temporaries_in_new_pages_cost_the_fresh_rate():
    # 40 MB of results of which 30 MB alias donated inputs, 5 MB of temporaries: 15 MB new.
    memory = {
        "output_size_in_bytes": 40e6,
        "alias_size_in_bytes": 30e6,
        "temp_size_in_bytes": 5e6,
        "argument_size_in_bytes": 1e9,
    }
    assert kernel_model.fresh_bytes(memory) == 15e6
    assert kernel_model.fresh_bytes(None) == 0
    mm = kernels.Kernel("matmul", 2 * 64**3, 0, 0, (("k", 64), ("m", 64), ("n", 64)))
    plain = kernel_model.predict([mm], PROFILE, 1e6, 32e6)
    fresh = kernel_model.predict([mm], PROFILE, 1e6, 32e6, fresh=15e6)
    assert fresh.model_s - plain.model_s == pytest.approx(15e6 * 1e-10)  # linear in bytes
    assert "fresh pages" in [r["kernels"] for r in fresh.top(3)]
    # Below the smallest size measured (the allocator's reused memory): nothing; and a
    # profile without the table (a datasheet device's) adds nothing either.
    assert kernel_model.predict([mm], PROFILE, 1e6, 32e6, fresh=500).model_s == plain.model_s
    bare = dict(PROFILE, tables={k: v for k, v in PROFILE["tables"].items() if k != "fresh"})
    assert kernel_model.predict([mm], bare, 1e6, 32e6, fresh=15e6).model_s == pytest.approx(
        plain.model_s
    )
