"""The ResNet-50 family: v1.5 inference at any image size (REFERENCE 2.6).

Weight bytes count every parameter and the batch-norm running statistics (float32 in
Flax whatever the dtype), since an inference call reads both. Per-layer costs follow the
conventions of batchlab.workloads.spatial.
"""

import dataclasses

import jax

import batchlab.workloads.mlp as mlp
import batchlab.workloads.spatial as spatial
from batchlab.models.resnet import EXPANSION, STAGES, ResNet50
from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Family, Point, Workload

CLASSES = 1000
FEATURES = STAGES[-1][0] * EXPANSION  # 2048 channels into the classifier
NORM_WEIGHTS = 2  # per channel: scale and shift, in the model's dtype
NORM_STATS_BYTES = 2 * 4  # per channel: running mean and variance, float32 in Flax
NORM_FLOPS = 3  # per element: subtract the mean, multiply, add the shift


def conv_layers(image_size: int) -> list[tuple[str, spatial.Conv2D]]:
    """Every convolution in forward order, named as in the model."""
    stem = spatial.Conv2D(image_size, 3, 64, 7, 2)
    convs = [("stem_conv", stem)]
    size = spatial.output_size(stem.out_size, 3, 2, "SAME")  # after the 3x3/2 max pool
    c_in = 64
    for s, (width, blocks, stride) in enumerate(STAGES):
        for i in range(blocks):
            name = f"stage{s + 1}_block{i + 1}"
            step, out = stride if i == 0 else 1, width * EXPANSION
            middle = spatial.Conv2D(size, width, width, 3, step)
            convs += [
                (f"{name}_conv1", spatial.Conv2D(size, c_in, width, 1)),
                (f"{name}_conv2", middle),
                (f"{name}_conv3", spatial.Conv2D(middle.out_size, width, out, 1)),
            ]
            if c_in != out or step != 1:
                convs.append((f"{name}_shortcut", spatial.Conv2D(size, c_in, out, 1, step)))
            size, c_in = middle.out_size, out
    return convs


def multiply_adds(image_size: int) -> int:
    """Per image, convolutions and the classifier (the "4.1 G" of REFERENCE 2.6)."""
    return sum(c.multiply_adds for _, c in conv_layers(image_size)) + FEATURES * CLASSES


def layer_costs(point: Point, batch: int, numerics: Numerics) -> list[tuple[str, Cost]]:
    """Each conv with its batch norm, ReLU and residual add fused in; pools; classifier."""
    s = numerics.itemsize
    costs = []
    for name, conv in conv_layers(point["image_size"]):
        relu = not name.endswith("_shortcut")
        residual = name.endswith("_conv3")  # the add reads the shortcut once more
        out_elements = batch * conv.out_size**2 * conv.c_out
        costs.append(
            (
                name,
                conv.cost(batch, numerics, NORM_WEIGHTS, NORM_FLOPS + relu + residual)
                + Cost(0, NORM_STATS_BYTES * conv.c_out, s * out_elements * residual),
            )
        )
        if name == "stem_conv":
            pool = spatial.Pool2D("max", conv.out_size, conv.c_out, 3, 2)
            costs.append(("stem_pool", pool.cost(batch, numerics)))
    last = conv_layers(point["image_size"])[-1][1]
    pixels = last.out_size**2
    costs += [
        # Global average: one add per element, a divide per channel.
        ("mean_pool", Cost(batch * pixels * FEATURES, 0, s * batch * (pixels + 1) * FEATURES)),
        ("fc", mlp.dense_cost(FEATURES, CLASSES, batch, numerics, relu=False)),
    ]
    return costs


def cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    return spatial.total(c for _, c in layer_costs(point, batch, numerics))


def build(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """Random weights and statistics, a random non-zero image batch; inference mode."""
    model = ResNet50(CLASSES, numerics.jnp_dtype, numerics.lax_precision)
    init_key, x_key = jax.random.split(key)
    size = point["image_size"]
    x_BxHxWx3 = jax.random.normal(x_key, (batch, size, size, 3), numerics.jnp_dtype)
    abstract = jax.eval_shape(model.init, init_key, x_BxHxWx3[:1])
    return Workload(
        fn=model.apply,
        weights=spatial.random_variables(abstract, init_key),
        inputs=(x_BxHxWx3,),
        cost=cost(point, batch, numerics),
    )


FAMILY = Family(
    name="resnet50",
    description="ResNet-50 (v1.5, bottleneck blocks, batch norm in inference mode), NHWC",
    params=(
        dataclasses.replace(spatial.IMAGE_SIZE, default=(224,), minimum=32),
        spatial.LAYOUT,
    ),
    cost=cost,
    build=build,
    examples=({"image_size": 32}, {"image_size": 40}),
)
