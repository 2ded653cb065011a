"""The pooling family: max or average pooling, for claim C7 (cost linear in pixels)."""

import dataclasses
from collections import defaultdict

import jax

from batchlab import verdicts as vd
from batchlab.errors import ConfigError
from batchlab.models.convnet import Pool
from batchlab.numerics import Numerics
from batchlab.verdicts import Verdict
from batchlab.workloads import spatial
from batchlab.workloads.base import Cost, Family, Param, Point, Workload

SLOPE_TOLERANCE = 0.2  # |slope − 1| within this counts as linear in pixels


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


def c7(records: list[dict]) -> list[Verdict]:
    """C7 per pooling setup: the slope of log time against log pixels at its largest batch."""
    groups = defaultdict(list)  # (params without image size, dtype, batch) -> records
    for r in records:
        rest = tuple(sorted((k, v) for k, v in r["params"].items() if k != "image_size"))
        groups[(rest, r["dtype"], r["precision"], r["batch"])].append(r)
    by_setup = defaultdict(dict)  # (params, dtype) -> batch -> (slope, records by size)
    for (rest, dtype, precision, batch), points in groups.items():
        if len(points) < 2:
            continue
        points = sorted(points, key=lambda r: r["params"]["image_size"])
        slope = spatial.log_slope(
            [r["params"]["image_size"] ** 2 for r in points],
            [r["time"]["median_s"] for r in points],
        )
        by_setup[(rest, dtype, precision)][batch] = (slope, points)
    if not by_setup and records:
        line = "C7: needs two image sizes or more (--image_sizes); not tested"
        return [Verdict("C7", vd.NOT_MEASURED, line[4:], "", {}, (line,))]
    out = []
    for (rest, dtype, _), per_batch in by_setup.items():
        label = " ".join(f"{k}={v}" for k, v in rest)
        slopes = ", ".join(f"b={b} {s:.2f}" for b, (s, _) in sorted(per_batch.items()))
        batch = max(per_batch)
        slope, points = per_batch[batch]
        sizes = [r["params"]["image_size"] for r in points]
        holds = abs(slope - 1) <= SLOPE_TOLERANCE
        # Where the roofline's highest roof is the empty-call time, pixels do not set it.
        overhead = sum(r["prediction"]["regime"] == "overhead" for r in points)
        lines = (
            f"C7 pooling {label} {dtype}: slope of log time vs log pixels "
            f"(images {sizes[0]}..{sizes[-1]} px): {slopes}",
            f"  at b={batch}: {slope:.2f} "
            f"({'within' if holds else 'outside'} {SLOPE_TOLERANCE} of 1): "
            f"C7 {'holds' if holds else 'does not hold'} here; at {sizes[-1]} px it moves "
            f"{100 * points[-1]['attained']['fraction_of_bandwidth']:.0f}% of the bandwidth "
            f"ceiling; {overhead} of {len(points)} image sizes are overhead-bound",
        )
        caveats = vd.unstable_caveat(points)
        if overhead:
            caveats.append(
                f"{overhead} of {len(points)} image sizes are overhead-bound, so pixels do "
                "not set their time"
            )
        text = (
            f"slope of log time vs log pixels at b={batch}: {slope:.2f} over "
            f"{sizes[0]}..{sizes[-1]} px (linear: within {SLOPE_TOLERANCE} of 1)"
        )
        numbers = {"batch": batch, "slope": slope, "overhead_bound_sizes": overhead}
        subject = f"pooling {label} {dtype}"
        out.append(vd.judged("C7", holds, text, caveats, subject, numbers, lines))
    return out


def verdicts(records: list[dict]) -> list[str]:
    """C7: the slope of log time against log pixels, per pooling setup and batch."""
    return vd.lines(c7(records))


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
    verdicts=verdicts,
    plot_axes=("image_size",),
)
