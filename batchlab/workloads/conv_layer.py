"""The conv family: a stack of k x k convolutions, for claim C6 (weights reused per pixel)."""

import dataclasses

import jax

from batchlab import analysis, roofline
from batchlab import verdicts as vd
from batchlab.errors import ConfigError
from batchlab.models.convnet import ConvStack
from batchlab.numerics import Numerics
from batchlab.verdicts import Verdict
from batchlab.workloads import mlp, spatial
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


def c6(records: list[dict]) -> list[Verdict]:
    """C6 per series: the conv's measured knee against the b* of an MLP of its width."""
    return [_c6(key, points) for key, points in analysis.series(records).items()]


def verdicts(records: list[dict]) -> list[str]:
    """C6: the conv layer's intensity at b=1 against the ridge, its knee against an MLP's."""
    return vd.lines(c6(records))


def _c6(key: tuple, points: list[dict]) -> Verdict:
    """The C6 verdict of one series (one conv setup, all its batches)."""
    point, numerics = dict(key[1]), Numerics(key[2], key[3])
    label = analysis.series_label(key)
    ceilings = roofline.Ceilings(**points[-1]["ceilings"])
    at_one = cost(point, 1, numerics)
    conv_b = roofline.critical_batch(lambda b: cost(point, b, numerics), ceilings)
    # The comparison the post makes: an MLP of the same width, one Dense per conv.
    mlp_point = {"depth": point["layers"], "width": point["channels"], "input_width": 0}
    mlp_b = roofline.critical_batch(lambda b: mlp.cost(mlp_point, b, numerics), ceilings)
    lines = [
        f"C6 {label}: intensity at b=1 {at_one.intensity:.1f} FLOP/B "
        f"vs ridge {ceilings.ridge:.1f} FLOP/B "
        f"({'compute' if at_one.intensity >= ceilings.ridge else 'bandwidth'}-bound at b=1); "
        f"predicted b* {roofline.fmt_batch(conv_b)}, MLP {point['layers']}x{point['channels']} "
        f"on the same ceilings b* {roofline.fmt_batch(mlp_b)}"
    ]
    numbers = {
        "intensity_b1": at_one.intensity,
        "ridge": ceilings.ridge,
        "predicted_b_star": conv_b,
        "mlp_b_star": mlp_b,
    }
    knee = analysis.fit_knee([r["batch"] for r in points], [r["time"]["median_s"] for r in points])
    if knee is None:
        lines.append("  measured knee: needs 3 batch sizes or more; C6 not tested")
        return Verdict(
            "C6", vd.NOT_MEASURED, "needs 3 batch sizes or more", label, numbers, tuple(lines)
        )
    first, last = points[0], points[-1]
    gain = last["time_per_example_s"] / first["time_per_example_s"]
    earlier = mlp_b is None or knee.batch < mlp_b
    note = f" ({knee.note})" if knee.note else ""
    lines.append(
        f"  measured knee {knee.batch:.1f}{note}; time per example at b={last['batch']} "
        f"over b={first['batch']}: {gain:.2f}. The conv's knee is "
        f"{'earlier' if earlier else 'not earlier'} than the MLP's b*: "
        f"C6 {'holds' if earlier else 'does not hold'} here."
    )
    numbers |= {"knee": knee.batch, "per_example_ratio": gain}
    caveats = vd.unstable_caveat(points)
    text = (
        f"measured knee {knee.batch:.1f}{note} vs b* {roofline.fmt_batch(mlp_b)} of an MLP "
        f"{point['layers']}x{point['channels']} on the same ceilings; time per example at "
        f"b={last['batch']} is {gain:.2f}x b={first['batch']}'s"
    )
    return vd.judged("C6", earlier, text, caveats, label, numbers, lines)


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
    verdicts=verdicts,
    plot_axes=("image_size",),
)
