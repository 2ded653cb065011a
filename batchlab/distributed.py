"""Several devices and several hosts, on JAX's own runtime: meshes, shardings, barriers.

One mesh is built from the `--mesh` flag (e.g. "data:8" or "data:2,expert:4"). Every
family's inputs lead with the batch axis, which is sharded along "data"; weights are
replicated (a family may shard them along its own axes, e.g. MoE experts along
"expert"). Several hosts join through `jax.distributed.initialize`; every process runs
the same grid in the same order, and only process 0 writes.
"""

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from batchlab.cost import Cost
from batchlab.errors import ConfigError

MeshSpec = tuple[tuple[str, int], ...]  # (("data", 2), ("expert", 4))


def parse_mesh(text: str) -> MeshSpec:
    """'data:2,expert:4' -> (("data", 2), ("expert", 4)); '' -> ()."""
    spec = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([a-z_]+):(\d+)", part)
        if not m or int(m.group(2)) < 1:
            raise ConfigError(
                f"--mesh: {part!r} is not NAME:SIZE with SIZE >= 1 "
                "(e.g. --mesh=data:8 or --mesh=data:2,expert:4)"
            )
        if m.group(1) in dict(spec):
            raise ConfigError(f"--mesh: axis {m.group(1)!r} appears twice")
        spec.append((m.group(1), int(m.group(2))))
    return tuple(spec)


def check_axes(spec: MeshSpec, model: str, axes: tuple[str, ...]) -> None:
    """Every mesh axis must be one the family uses."""
    for name, _ in spec:
        if name not in axes:
            raise ConfigError(
                f"--mesh: axis {name!r} is not used by model {model} (it uses: {', '.join(axes)})"
            )


def size(spec: MeshSpec) -> int:
    """Devices in the mesh; the batch is split over all of them."""
    return int(np.prod([n for _, n in spec]))


def make_mesh(spec: MeshSpec) -> Mesh:
    """The mesh over every device of every process; its size must match them."""
    if size(spec) != jax.device_count():
        raise ConfigError(
            f"--mesh: {','.join(f'{a}:{n}' for a, n in spec)} needs {size(spec)} "
            f"devices; there are {jax.device_count()} ({jax.process_count()} "
            f"process(es) x {jax.local_device_count()} local)"
        )
    names = tuple(a for a, _ in spec)
    return jax.make_mesh(tuple(n for _, n in spec), names, axis_types=(AxisType.Auto,) * len(names))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis along "data", the rest replicated."""
    lead = "data" if "data" in mesh.axis_names else None
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


@dataclasses.dataclass
class Placed:
    """A workload laid out on a mesh: the function to compile, its arrays on the mesh,
    their shardings (for the record), and metrics that replace the workload's own where
    the layout changes them."""

    fn: Callable
    weights: Any
    inputs: tuple
    specs: dict
    metrics: dict = dataclasses.field(default_factory=dict)


def place_workload(work, batch: int, mesh: Mesh) -> Placed:
    """The workload's own layout (`Workload.place`) or the default one: weights
    replicated, batch-leading inputs split along "data"."""
    placed = work.place(mesh) if work.place is not None else None
    if placed is not None:
        return placed
    weights, inputs, specs = place(work.weights, work.inputs, batch, mesh)
    return Placed(work.fn, weights, inputs, specs)


def cost_on_mesh(family, point, batch: int, numerics, spec: MeshSpec) -> Cost:
    """One device's cost: the family's own (`Family.mesh_cost`) or the default layout's."""
    if not spec:
        return family.cost(point, batch, numerics)
    own = family.mesh_cost(point, batch, numerics, spec) if family.mesh_cost else None
    if own is not None:
        return own
    return per_device(family.cost(point, batch, numerics), dict(spec).get("data", 1))


def place(weights, inputs: tuple, batch: int, mesh: Mesh):
    """Weights replicated, batch-leading inputs sharded; returns (weights, inputs, specs)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def put_input(x):
        leads_with_batch = getattr(x, "ndim", 0) >= 1 and x.shape[0] == batch
        sharding = batch_sharding(mesh, x.ndim) if leads_with_batch else replicated
        return put(x, sharding)

    weights = put(weights, replicated)
    inputs = jax.tree.map(put_input, inputs)
    specs = {
        "weights": "replicated",
        "inputs": [str(x.sharding.spec) for x in jax.tree.leaves(inputs)],
    }
    return weights, inputs, specs


def put(tree, sharding: NamedSharding):
    """Global arrays from values every process holds whole (same seed everywhere)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def per_device(cost: Cost, n: int) -> Cost:
    """What one device does when the batch is split n ways and weights are replicated:
    a 1/n share of FLOPs, activations and per-sequence state, all weights, no collective
    (each device's outputs stay where they are)."""
    return Cost(cost.flops / n, cost.weight_bytes, cost.activation_bytes / n, cost.state_bytes / n)


def initialize(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeout_s: int,
) -> None:
    """Joins JAX's distributed runtime, from flags or from what JAX detects (TPU pods,
    SLURM). A process that dies makes the others fail after `timeout_s` (heartbeat)."""
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=timeout_s,
    )


def multihost_tpu(environ) -> str | None:
    """What says this host is one of several in a TPU slice (or one slice of several),
    read from the environment alone (no backend, no metadata server): the variable and
    its value, or None. The variables are those of Cloud TPU VMs and GKE (TPU_WORKER_*,
    TPU_PROCESS_ADDRESSES, TPU_HOST_BOUNDS, CLOUD_TPU_TASK_ID) and of multislice
    (MEGASCALE_NUM_SLICES), as jax's cluster detection reads them."""

    def number(name):
        try:
            return int(str(environ.get(name, "")).strip())
        except ValueError:
            return None

    for name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        hosts = [h for h in str(environ.get(name, "")).split(",") if h.strip()]
        if len(hosts) > 1:
            return f"${name} names {len(hosts)} hosts"
    for name in ("TPU_WORKER_ID", "CLOUD_TPU_TASK_ID"):
        if (number(name) or 0) > 0:
            return f"${name}={number(name)} (not the first host)"
    if (number("MEGASCALE_NUM_SLICES") or 0) > 1:
        return f"$MEGASCALE_NUM_SLICES={number('MEGASCALE_NUM_SLICES')}"
    bounds = str(environ.get("TPU_HOST_BOUNDS", "")).split(",")
    hosts = math.prod(int(b) for b in bounds) if all(b.strip().isdigit() for b in bounds) else 1
    if hosts > 1:
        return f"$TPU_HOST_BOUNDS={environ['TPU_HOST_BOUNDS']} ({hosts} hosts)"
    return None


def is_writer() -> bool:
    """Only process 0 writes results, plots and logs."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes reach this point before any goes on (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(value: bool) -> bool:
    """Process 0's decision, on every process: the timing loop stops everywhere at once."""
    if jax.process_count() == 1:
        return value
    with jax.transfer_guard("allow"):  # called inside the timing loop's guard, on purpose
        return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def broadcast_ints(values: list[int]) -> list[int]:
    """Process 0's list of ints on every process (e.g. which grid points are pending)."""
    if jax.process_count() == 1:
        return values
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(values), np.int32)))
    padded = np.zeros(max(n, 1), np.int32)
    if jax.process_index() == 0:
        padded[:n] = values
    return [int(v) for v in multihost_utils.broadcast_one_to_all(padded)[:n]]


def shard_of(point_id: str, num_shards: int) -> int:
    """A stable worker for a point: the same on every machine and every run."""
    return int(hashlib.sha256(point_id.encode()).hexdigest()[:8], 16) % num_shards
