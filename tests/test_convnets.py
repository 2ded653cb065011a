"""The conv families: shapes, parameter counts, analytic cost, numerics, configs."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NO_MODEL, run_cli

from batchlab import claims, config, results, summary, sweep, timing
from batchlab.models.convnet import ConvStack, Pool
from batchlab.models.resnet import ResNet50
from batchlab.numerics import Numerics
from batchlab.workloads import conv_layer, pooling, resnet

F32 = Numerics()
KEY = jax.random.PRNGKey(0)
CPU_CEILINGS = {
    "peak_flops": 100e9,
    "bandwidth": 25e9,
    "source": "flags",
    "flops_kernel": "",
    "bandwidth_kernel": "",
}


def conv_point(**kw):
    return {
        "image_size": 8,
        "channels": 4,
        "kernel_size": 3,
        "layers": 1,
        "stride": 1,
        "padding": "SAME",
        "layout": "NHWC",
    } | kw


def pool_point(**kw):
    return {
        "image_size": 8,
        "channels": 4,
        "pool": "max",
        "kernel_size": 3,
        "stride": 2,
        "padding": "SAME",
        "layout": "NHWC",
    } | kw


def xla_flops(fn, *args, compiled=True):
    """XLA's FLOP count, after (compiled) or before (lowered) optimisation."""
    lowered = jax.jit(fn).lower(*args)
    analysis = (lowered.compile() if compiled else lowered).cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def inside_taps(size, k, stride):
    """Kernel taps per output row that land inside the image under XLA's SAME padding."""
    out = -(-size // stride)
    low = max((out - 1) * stride + k - size, 0) // 2
    return sum(0 <= i * stride - low + j < size for i in range(out) for j in range(k))


# Shapes and parameter counts.


def test_resnet50_parameter_count_and_output_shape():
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(ResNet50().init, KEY, x)
    count = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
    assert count(variables["params"]) == 25_557_032
    # Running mean and variance: two per batch-norm channel, 26,560 channels in all.
    assert count(variables["batch_stats"]) == 2 * 26_560
    assert jax.eval_shape(ResNet50().apply, variables, x).shape == (2, 1000)
    # The cost model's own layer list gives the same count: kernels, BN scale and
    # shift, and the classifier.
    analytic = sum(c.kernel**2 * c.c_in * c.c_out + 2 * c.c_out for _, c in resnet.conv_layers(224))
    assert analytic + 2048 * 1000 + 1000 == 25_557_032


def test_conv_stack_and_pool_shapes():
    # 17 -> (17-3)//2+1 = 8 -> 3 -> 1 with VALID padding and stride 2.
    model = ConvStack(3, 5, 3, stride=2, padding="VALID")
    x = jax.ShapeDtypeStruct((2, 17, 17, 5), jnp.float32)
    variables = jax.eval_shape(model.init, KEY, x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 1, 1, 5)
    assert sum(v.size for v in jax.tree.leaves(variables)) == 3 * (9 * 5 * 5 + 5)
    assert [
        c.out_size
        for c in conv_layer.layers(conv_point(image_size=17, layers=3, stride=2, padding="VALID"))
    ] == [8, 3, 1]
    pool = Pool("avg", 3, 2, "SAME")
    assert jax.eval_shape(
        pool.apply, {}, jax.ShapeDtypeStruct((1, 224, 224, 64), jnp.float32)
    ).shape == (1, 112, 112, 64)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_and_outputs(dtype):
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    model = ResNet50(dtype=jnp.dtype(dtype))
    variables = jax.eval_shape(model.init, KEY, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(dtype)}
    # Flax keeps batch-norm running statistics in float32; the cost counts them so.
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["batch_stats"])} == {
        jnp.dtype("float32")
    }
    weight_bytes = resnet.cost({"image_size": 32}, 1, Numerics(dtype)).weight_bytes
    assert weight_bytes == 2 * 25_557_032 + 4 * 2 * 26_560
    assert jax.eval_shape(model.apply, variables, x).dtype == jnp.dtype(dtype)
    work = conv_layer.build(conv_point(), 2, Numerics(dtype), KEY)
    y = jax.jit(work.fn)(work.weights, *work.inputs)
    assert y.dtype == jnp.dtype(dtype) and bool(jnp.isfinite(y).all())


# Analytic cost against hand calculations (REFERENCE 2.6).


def test_conv_cost_hand_values():
    c = conv_layer.cost(conv_point(), 2, F32)
    # 2·b·H·W·k²·C_in·C_out = 2·2·64·9·4·4, plus one bias add per output element.
    assert c.flops == 36_864 + 2 * 64 * 4
    assert c.weight_bytes == 4 * (9 * 16 + 4)
    assert c.activation_bytes == 4 * 2 * (64 * 4 + 64 * 4)
    half = conv_layer.cost(conv_point(), 2, Numerics("bfloat16"))
    assert half.flops == c.flops and half.total_bytes == c.total_bytes / 2
    # Stride 2, VALID: a 3x3 output; two layers add a ReLU on the first.
    strided = conv_layer.cost(conv_point(stride=2, padding="VALID"), 1, F32)
    assert strided.flops == 2 * 9 * 9 * 16 + 9 * 4
    two = conv_layer.cost(conv_point(layers=2), 1, F32)
    assert two.flops == 2 * (2 * 64 * 9 * 16) + 64 * 4 * 3


def test_pool_cost_hand_values():
    # 3x3/2 SAME on 8x8x4, batch 2: a 4x4 output, 128 output elements.
    c = pooling.cost(pool_point(), 2, F32)
    assert c.flops == 128 * 8  # k² − 1 comparisons each
    assert pooling.cost(pool_point(pool="avg"), 2, F32).flops == 128 * 9  # adds and a divide
    assert c.weight_bytes == 0
    # s_a·b·H·W·C·(1 + 1/stride²) = 4·2·64·4·1.25
    assert c.activation_bytes == 2560


def test_resnet50_cost_at_224():
    macs = resnet.multiply_adds(224)
    assert abs(macs / 4.1e9 - 1) < 0.02
    # One of the 3x3 convs of stage 1, by hand: 56·56 pixels · 64 outputs · 9·64 taps.
    convs = dict(resnet.conv_layers(224))
    assert convs["stage1_block2_conv2"].multiply_adds == 56 * 56 * 64 * 9 * 64
    assert convs["stage4_block3_conv3"].out_size == 7
    c = resnet.cost({"image_size": 224, "layout": "NHWC"}, 1, F32)
    assert abs(c.flops / 8.2e9 - 1) < 0.02  # 2 FLOPs per multiply-add, plus elementwise
    # Weights: every parameter plus the running statistics, 4 bytes each.
    assert c.weight_bytes == 4 * (25_557_032 + 2 * 26_560)
    assert resnet.cost({"image_size": 224}, 8, F32).weight_bytes == c.weight_bytes


# Numerics.


@pytest.mark.parametrize("padding,stride", [("SAME", 1), ("VALID", 2)])
def test_conv_layer_matches_lax(padding, stride):
    point = conv_point(image_size=12, channels=6, stride=stride, padding=padding)
    work = conv_layer.build(point, 3, Numerics("float32", "highest"), KEY)
    (x,) = work.inputs
    params = work.weights["params"]["conv_0"]
    expected = (
        jax.lax.conv_general_dilated(
            x,
            params["kernel"],
            (stride, stride),
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        + params["bias"]
    )
    got = jax.jit(work.fn)(work.weights, x)
    assert got.shape == expected.shape
    assert float(jnp.abs(expected).max()) > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_resnet():
    """ResNet-50 on two 32x32 images, as the sweep builds it."""
    return resnet.build({"image_size": 32, "layout": "NHWC"}, 2, F32, KEY)


def test_resnet50_forward_small_images_finite_and_deterministic(small_resnet):
    work = small_resnet
    again = resnet.build({"image_size": 32, "layout": "NHWC"}, 2, F32, KEY)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), work.weights, again.weights)
    assert all(jax.tree.leaves(same))
    assert all(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(work.weights))
    fn = jax.jit(work.fn)
    y = fn(work.weights, *work.inputs)
    assert y.shape == (2, 1000)
    assert bool(jnp.isfinite(y).all())
    np.testing.assert_array_equal(y, fn(work.weights, *work.inputs))
    assert float(jnp.abs(y[0] - y[1]).max()) > 0  # two images, two answers


# Analytic FLOPs against XLA's cost_analysis (an aid: it counts only in-image taps), exactly:
# the skipped padding taps counted by hand. tests/test_families.py checks pooling's FLOPs
# and every family's within a tolerance.


def test_conv_flops_match_cost_analysis():
    for padding, stride in (("VALID", 1), ("VALID", 2), ("SAME", 1), ("SAME", 2)):
        point = conv_point(image_size=9, channels=8, stride=stride, padding=padding, layers=2)
        work = conv_layer.build(point, 2, F32, KEY)
        expected = work.cost.flops
        if padding == "SAME":  # XLA skips the taps that fall on padding
            for conv in conv_layer.layers(point):
                inside = inside_taps(conv.size, conv.kernel, conv.stride)
                expected -= (
                    2 * 2 * conv.multiply_adds * (1 - (inside / (conv.out_size * conv.kernel)) ** 2)
                )
        assert xla_flops(work.fn, work.weights, *work.inputs) == pytest.approx(expected, rel=1e-9)


def test_resnet50_flops_match_cost_analysis(small_resnet):
    work = small_resnet
    expected = work.cost.flops
    for _, conv in resnet.conv_layers(32):
        inside = inside_taps(conv.size, conv.kernel, conv.stride)
        expected -= 2 * 2 * conv.multiply_adds * (1 - (inside / (conv.out_size * conv.kernel)) ** 2)
        expected += 2 * conv.c_out  # batch norm folds its statistics once per channel
    args = (work.weights, *work.inputs)
    assert xla_flops(work.fn, *args, compiled=False) == pytest.approx(expected, rel=1e-6)
    # XLA:CPU rewrites a few ops of the whole graph (0.8% at this size).
    assert xla_flops(work.fn, *args) == pytest.approx(expected, rel=0.02)


# Flagfiles and bad input, through the command line.


@pytest.mark.parametrize(
    "flagfile,points",
    [
        ("configs/seed/resnet50.flags", 7),  # 7 batches
        ("configs/seed/conv_layer.flags", 2 * 2 * 2 * 6),  # images x channels x kernels x batches
        ("configs/seed/pooling.flags", 2 * 4 * 3),  # pools x images x batches
        ("configs/smoke/resnet50.flags", 3),
        ("configs/smoke/conv_layer.flags", 2 * 3),
        ("configs/smoke/pooling.flags", 2 * 2 * 2),
    ],
)
def test_flagfile_dry_runs(flagfile, points, tmp_path):
    out = run_cli(f"--flagfile={flagfile}", f"--out_dir={tmp_path}/run", "--dry_run")
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{points} points, float32", out.stdout, re.M), out.stdout
    assert len(re.findall(r"/b=\d+ ", out.stdout)) == points


@pytest.mark.parametrize(
    "flagfile,args,flag",
    [
        ("conv_layer", ["--image_sizes=8", "--kernel_sizes=9"], "--kernel_sizes"),
        ("conv_layer", ["--conv_layers=3", "--strides=2", "--image_sizes=8"], "--kernel_sizes"),
        ("conv_layer", ["--channels=0"], "--channels"),
        ("conv_layer", ["--strides=0"], "--strides"),
        ("conv_layer", ["--layouts=NCHW"], "--layouts"),
        ("pooling", ["--image_sizes=8", "--kernel_sizes=9"], "--kernel_sizes"),
        ("resnet50", ["--image_sizes=16"], "--image_sizes"),
    ],
)
def test_bad_input_is_one_clear_line(flagfile, args, flag, tmp_path):
    out = run_cli(
        f"--flagfile=configs/smoke/{flagfile}.flags", *args, f"--out_dir={tmp_path}", "--dry_run"
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), out.stderr


def test_pooling_smoke_sweep_end_to_end(tmp_path):
    """The smoke grid measured in process, then the summary and its C7 lines."""
    cfg = config.build(
        "pooling",
        {"pools": ["max", "avg"], "image_sizes": ["16", "32"], "channels": ["8"]},
        ["1", "4"],
        out_dir=str(tmp_path),
        timing=timing.TimingSpec(time_budget_s=0.02, min_reps=3, warmup_reps=1, warmup_s=0),
        peak_flops=100e9,
        bandwidth=25e9,
        isolate=False,
        config_name="pooling",
        **NO_MODEL,
    )
    sweep.init_out_dir(cfg, "# test\n")
    assert sweep.run(cfg, log=lambda line: None) == 0
    records = results.load(os.path.join(tmp_path, results.RESULTS))
    assert [r["status"] for r in records] == ["ok"] * 8
    assert summary.table(records).count("critical batch: n/a") == 4  # no weights to share
    lines = claims.sweep_lines(records)
    assert sum(line.startswith("C7 pooling") for line in lines) == 2  # max and avg
