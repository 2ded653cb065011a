"""The conv family: a stack of k x k convolutions (REFERENCE 2.6)."""

import dataclasses

import jax

import batchlab.workloads.spatial as spatial
from batchlab.errors import ConfigError
from batchlab.models.convnet import ConvStack
from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Family, Param, Point, Workload


def layers(point: Point) -> list[spatial.Conv2D]:
    """Each conv's shape; C_in = C_out = channels, the image shrinking with the stride."""
    convs, size = [], point["image_size"]
    for _ in range(point["layers"]):
        conv = spatial.Conv2D(
            size,
            point["channels"],
            point["channels"],
            point["kernel_size"],
            point["stride"],
            point["padding"],
        )
        convs.append(conv)
        size = conv.out_size
    return convs


def layer_costs(point: Point, batch: int, numerics: Numerics) -> list[tuple[str, Cost]]:
    """Per conv: its kernel and bias, the bias add, and a ReLU on all but the last."""
    convs = layers(point)
    return [
        (
            f"conv_{i}",
            conv.cost(batch, numerics, per_channel_weights=1, elementwise=1 + (i < len(convs) - 1)),
        )
        for i, conv in enumerate(convs)
    ]


def cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    return spatial.total(c for _, c in layer_costs(point, batch, numerics))


def validate(point: Point) -> None:
    """Every kernel must fit in the image it slides over."""
    for i, conv in enumerate(layers(point)):
        if conv.kernel > conv.size:
            where = (
                f" (the input of conv layer {i + 1}, after {i} with stride {conv.stride})"
                if i
                else ""
            )
            raise ConfigError(
                f"--kernel_sizes: kernel {conv.kernel} is larger than the image {conv.size}{where}"
            )


def build(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """Random weights and a random non-zero input batch, on the default device."""
    model = ConvStack(
        point["layers"],
        point["channels"],
        point["kernel_size"],
        point["stride"],
        point["padding"],
        numerics.jnp_dtype,
        numerics.lax_precision,
    )
    init_key, x_key = jax.random.split(key)
    size, channels = point["image_size"], point["channels"]
    x_BxHxWxC = jax.random.normal(x_key, (batch, size, size, channels), numerics.jnp_dtype)
    abstract = jax.eval_shape(model.init, init_key, x_BxHxWxC[:1])
    return Workload(
        fn=model.apply,
        weights=spatial.random_variables(abstract, init_key),
        inputs=(x_BxHxWxC,),
        cost=cost(point, batch, numerics),
    )


FAMILY = Family(
    name="conv",
    description="conv_layers x Conv(channels, k x k, stride) with bias, ReLU between, NHWC",
    params=(
        dataclasses.replace(spatial.IMAGE_SIZE, default=(56,)),
        spatial.CHANNELS,
        spatial.KERNEL_SIZE,
        Param("layers", "conv_layers", int, (1,), "Convolutions in the conv stack.", minimum=1),
        spatial.STRIDE,
        spatial.PADDING,
        spatial.LAYOUT,
    ),
    cost=cost,
    build=build,
    validate=validate,
    plot_axes=("image_size",),
    examples=(
        {"image_size": 8, "channels": 4, "layers": 2},
        {"image_size": 9, "channels": 8, "stride": 2, "padding": "VALID"},
    ),
)
