"""The ResNet-50 family, for claims C1 (linear on a CPU from b=1) and C2 (flat to b=3 on a T4).

Weight bytes count every parameter and the batch-norm running statistics (float32 in
Flax whatever the dtype), since an inference call reads both. Per-layer costs follow the
conventions of batchlab.workloads.spatial.
"""

import dataclasses

import jax

from batchlab import analysis, hardware, roofline
from batchlab import verdicts as vd
from batchlab.models.resnet import EXPANSION, STAGES, ResNet50
from batchlab.numerics import Numerics
from batchlab.verdicts import Verdict
from batchlab.workloads import mlp, spatial
from batchlab.workloads.base import Cost, Family, Point, Workload

CLASSES = 1000
FEATURES = STAGES[-1][0] * EXPANSION  # 2048 channels into the classifier
NORM_WEIGHTS = 2  # per channel: scale and shift, in the model's dtype
NORM_STATS_BYTES = 2 * 4  # per channel: running mean and variance, float32 in Flax
NORM_FLOPS = 3  # per element: subtract the mean, multiply, add the shift
LINEAR_SLACK = 0.8  # C1 holds while time per example stays within 0.8x..1.25x of b=1's
FLAT_SLACK = 1.2  # C2's "same cost": t(3) within 20% of t(1)
C1_MIN_BATCH = 8  # C1 shown only up to a smaller batch holds with a caveat
LINEAR_SLOPE_SLACK = 0.3  # C2's "then linear": log-log slope from b=8 within 1 ± this


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


def c1(records: list[dict]) -> list[Verdict]:
    """C1 per series: time per example at the largest batch against b=1's (CPU only)."""
    out = []
    for key, points in analysis.series(records).items():
        point, label = dict(key[1]), analysis.series_label(key)
        first, last = points[0], points[-1]
        ratio = last["time_per_example_s"] / first["time_per_example_s"]
        slope = spatial.log_slope(
            [r["batch"] for r in points], [r["time"]["median_s"] for r in points]
        )
        holds = LINEAR_SLACK <= ratio <= 1 / LINEAR_SLACK
        line = (
            f"C1 {label}: time per example at b={last['batch']} over b={first['batch']}: "
            f"{ratio:.2f}; slope of log time vs log batch {slope:.2f} "
            f"(1 = linear). C1 {'holds' if holds else 'does not hold'} here: batching "
            f"{'saves' if ratio < 1 else 'costs'} {100 * abs(1 - ratio):.0f}% per example "
            f"(linear: the ratio within {LINEAR_SLACK:g}..{1 / LINEAR_SLACK:g})"
        )
        numbers = {
            "first_batch": first["batch"],
            "last_batch": last["batch"],
            "per_example_ratio": ratio,
            "log_slope": slope,
        }
        text = (
            f"time per example at b={last['batch']} is {ratio:.2f}x that at "
            f"b={first['batch']} (linear: within {LINEAR_SLACK:g}..{1 / LINEAR_SLACK:g}x), "
            f"log-log slope {slope:.2f}"
        )
        backend = _backend(first)
        if backend != "cpu":
            status = vd.UNTESTABLE
            text = f"C1 is about CPUs and this is a {backend}; here {text}"
        else:
            caveats = vd.unstable_caveat(points)
            if first["batch"] != 1:
                caveats.append(f"starts at b={first['batch']}, not 1")
            if last["batch"] < C1_MIN_BATCH:
                caveats.append(f"only up to b={last['batch']}")
            if point.get("image_size") != 224:
                caveats.append(f"{point.get('image_size')} px images, not the post's 224")
            out.append(vd.judged("C1", holds, text, caveats, label, numbers, (line,)))
            continue
        out.append(Verdict("C1", status, text, label, numbers, (line,)))
    return out


def c2(records: list[dict]) -> list[Verdict]:
    """C2 per series: measured on a GPU; elsewhere not testable, with a T4 prediction."""
    out = []
    for key, points in analysis.series(records).items():
        point, numerics = dict(key[1]), Numerics(key[2], key[3])
        label = analysis.series_label(key)
        backend = _backend(points[0])
        if backend == "gpu":
            out.append(_c2_measured(label, points))
        else:
            lines, numbers = _c2_predicted(label, point, numerics, backend)
            text = (
                f"needs a GPU, this is a {backend}; the roofline predicts t(3)/t(1) "
                f"{numbers['t4_t3_over_t1']:.2f} on a T4 in {numerics.dtype}"
            )
            out.append(Verdict("C2", vd.UNTESTABLE, text, label, numbers, tuple(lines)))
    return out


def verdicts(records: list[dict]) -> list[str]:
    """C1 from the time per example; C2 on a GPU, or its roofline prediction for a T4."""
    return vd.lines(*zip(c1(records), c2(records)))


def _backend(record: dict) -> str:
    prov = record.get("provenance", {})
    return prov.get("backend") or ("cpu" if prov.get("device_kind") == "cpu" else "unknown")


def _c2_measured(label: str, points: list[dict]) -> Verdict:
    t = {r["batch"]: r["time"]["median_s"] for r in points}
    if not {1, 2, 3} <= t.keys():
        line = f"C2 {label}: needs batch sizes 1,2,3 in --batch_sizes; not tested"
        return Verdict("C2", vd.NOT_MEASURED, line[len(f"C2 {label}: ") :], label, {}, (line,))
    flat = t[3] / t[1] <= FLAT_SLACK
    line = (
        f"C2 {label}: t(2)/t(1) {t[2] / t[1]:.2f}, t(3)/t(1) {t[3] / t[1]:.2f}: "
        f"C2 {'holds' if flat else 'does not hold'} here (flat: t(3) within "
        f"{100 * (FLAT_SLACK - 1):.0f}% of t(1))"
    )
    numbers = {"t2_over_t1": t[2] / t[1], "t3_over_t1": t[3] / t[1]}
    caveats = vd.unstable_caveat(points)
    kind = points[0]["provenance"].get("device_kind", "")
    if hardware.lookup(kind) is not hardware.DATASHEET["t4"]:
        caveats.append(f"measured on {kind or 'a GPU'}, not the post's T4")
    # "... then time grows linearly": the slope over the batches from 8 up.
    big = [r for r in points if r["batch"] >= 8]
    if len(big) >= 2:
        slope = spatial.log_slope([r["batch"] for r in big], [r["time"]["median_s"] for r in big])
        numbers["log_slope_from_b8"] = slope
        if not 1 - LINEAR_SLOPE_SLACK <= slope <= 1 + LINEAR_SLOPE_SLACK:
            caveats.append(f"above b=8 time grows with log-log slope {slope:.2f}, not linearly")
    else:
        caveats.append("no batches from 8 up to show the linear part")
    text = (
        f"t(3)/t(1) = {t[3] / t[1]:.2f} (flat: at most {FLAT_SLACK:g}), "
        f"t(2)/t(1) = {t[2] / t[1]:.2f}"
    )
    return vd.judged("C2", flat, text, caveats, label, numbers, (line,))


def _c2_predicted(label: str, point: Point, numerics: Numerics, backend) -> tuple[list[str], dict]:
    """Roofline times on a T4 (no overhead roof), in the sweep's dtype and in fp16."""
    lines = [f"C2 {label}: needs a GPU, this is {backend}: not tested. T4 roofline prediction:"]
    numbers = {}
    t4 = hardware.DATASHEET["t4"]
    for n in dict.fromkeys((numerics, Numerics("float16", numerics.precision))):
        ceilings = hardware.datasheet_ceilings(t4, n)
        t = {b: roofline.predict(cost(point, b, n), ceilings).lower_s for b in (1, 2, 3, 4)}
        b_star = roofline.critical_batch(lambda b, n=n: cost(point, b, n), ceilings)
        numbers.setdefault("t4_t3_over_t1", t[3] / t[1])
        numbers[f"t4_{n.dtype}_t3_over_t1"] = t[3] / t[1]
        lines.append(
            f"  {n.dtype} ({ceilings.flops_kernel}, {ceilings.peak_flops / 1e12:.3g} TFLOP/s, "
            f"{ceilings.bandwidth / 1e9:.0f} GB/s): "
            + ", ".join(f"t({b}) {1e3 * v:.3f} ms" for b, v in t.items())
            + f"; t(3)/t(1) {t[3] / t[1]:.2f}; b* "
            + ("never" if b_star is None else f"{b_star:.1f}")
        )
    lines.append(
        "  These have no overhead roof: a flatter start than they show on a real T4 is"
        " launch overhead and idle SMs."
    )
    return lines, numbers


FAMILY = Family(
    name="resnet50",
    description="ResNet-50 (v1.5, bottleneck blocks, batch norm in inference mode), NHWC",
    params=(
        dataclasses.replace(spatial.IMAGE_SIZE, default=(224,), minimum=32),
        spatial.LAYOUT,
    ),
    cost=cost,
    build=build,
    verdicts=verdicts,
)
