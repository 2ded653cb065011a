"""What a sweep would do, before it does it: the grid with each point's analytic cost and
roofline times, and the critical-batch derivation (REFERENCE 2.3). Nothing compiles."""

from batchlab import distributed, hardware, roofline, timing, workloads
from batchlab.config import SweepConfig, grid_points
from batchlab.record import point_id


def explain(config: SweepConfig, device_name: str, ceilings: roofline.Ceilings | None) -> str:
    """The critical-batch derivation for the device at hand and each --predict_for target."""
    s = config.numerics.itemsize
    width = config.grid.get("width", (None,))[0]
    blocks = []
    if ceilings is not None:
        blocks.append(roofline.explain_critical_batch(device_name, ceilings, s, s, width))
    for key, numerics in config.prediction_targets() or [("t4", config.numerics)]:
        spec = hardware.DATASHEET[key]
        n = numerics.itemsize
        blocks.append(
            roofline.explain_critical_batch(
                f"{spec.name} ({numerics.dtype})",
                hardware.datasheet_ceilings(spec, numerics),
                n,
                n,
                width,
            )
        )
    return "\n".join(blocks)


def grid_text(config: SweepConfig) -> str:
    """The grid a sweep would measure: each point's analytic cost and its roofline time on
    each --predict_for target."""
    family = workloads.get(config.model)
    targets = config.prediction_targets()
    ceilings = [hardware.datasheet_ceilings(hardware.DATASHEET[k], n) for k, n in targets]
    names = [k if n == config.numerics else f"{k}:{n.dtype}" for k, n in targets]
    lines = [
        f"{'point':<50} {'GFLOP':>10} {'weight MB':>10} {'activ. MB':>10} {'state MB':>9}"
        + "".join(f" {name:>10}" for name in names)
    ]
    for point, batch in grid_points(config):

        def cost(numerics, point=point, batch=batch):
            return distributed.cost_on_mesh(family, point, batch, numerics, config.mesh)

        c = cost(config.numerics)
        lines.append(
            f"{point_id(config.model, point, batch):<50} {c.flops / 1e9:>10.4g} "
            f"{c.weight_bytes / 1e6:>10.4g} {c.activation_bytes / 1e6:>10.4g} "
            f"{c.state_bytes / 1e6:>9.4g}"
            + "".join(
                f" {timing.fmt_time(roofline.predict(cost(n), ceil).lower_s):>10}"
                for (_, n), ceil in zip(targets, ceilings)
            )
        )
    lines.append(
        f"{len(lines) - 1} points, {config.numerics.dtype}, "
        f"precision {config.numerics.precision}; out_dir {config.out_dir}"
        + (f"; costs per device of mesh {dict(config.mesh)}" if config.mesh else "")
        + ("; device columns: roofline time from the datasheet" if targets else "")
    )
    return "\n".join(lines)
