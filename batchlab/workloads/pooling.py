"""The pooling family: max or average pooling over k x k windows (REFERENCE 2.6)."""

import dataclasses

import jax

import batchlab.workloads.spatial as spatial
from batchlab.errors import ConfigError
from batchlab.models.convnet import Pool
from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Family, Param, Point, Workload


def layer(point: Point) -> spatial.Pool2D:
    return spatial.Pool2D(
        point["pool"],
        point["image_size"],
        point["channels"],
        point["kernel_size"],
        point["stride"],
        point["padding"],
    )


def cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    return layer(point).cost(batch, numerics)


def validate(point: Point) -> None:
    """The window must fit in the image."""
    pool = layer(point)
    if pool.window > pool.size:
        raise ConfigError(
            f"--kernel_sizes: pooling window {pool.window} is larger than the image {pool.size}"
        )


def build(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """A random non-zero input batch; pooling has no weights, so they are an empty tree."""
    model = Pool(point["pool"], point["kernel_size"], point["stride"], point["padding"])
    size, channels = point["image_size"], point["channels"]
    x_BxHxWxC = jax.random.normal(key, (batch, size, size, channels), numerics.jnp_dtype)
    return Workload(
        fn=model.apply, weights={}, inputs=(x_BxHxWxC,), cost=cost(point, batch, numerics)
    )


FAMILY = Family(
    name="pooling",
    description="max or average pooling over k x k windows, NHWC",
    params=(
        dataclasses.replace(spatial.IMAGE_SIZE, default=(28, 56, 112, 224)),
        spatial.CHANNELS,
        Param("pool", "pools", str, ("max",), "Pooling: max or avg.", choices=("max", "avg")),
        dataclasses.replace(spatial.KERNEL_SIZE, default=(3,)),
        dataclasses.replace(spatial.STRIDE, default=(2,)),
        spatial.PADDING,
        spatial.LAYOUT,
    ),
    cost=cost,
    build=build,
    validate=validate,
    plot_axes=("image_size",),
    examples=(
        {"image_size": 10, "channels": 4},
        {"image_size": 9, "channels": 3, "pool": "avg", "padding": "VALID"},
    ),
)
