"""The sweep engine: the grid, resume, failure isolation, one record per point."""

import contextlib
import dataclasses
import errno
import os
import re
import time
import traceback

import jax

from batchlab import (
    autotune,
    calibration,
    distributed,
    dry_run,
    faults,
    files,
    hardware,
    kernel_model,
    kernels,
    profile,
    record,
    results,
    roofline,
    timing,
    workloads,
)
from batchlab.config import SweepConfig, grid_points
from batchlab.errors import ConfigError
from batchlab.provenance import provenance
from batchlab.record import point_id

RESTART_EXIT_CODE = 75  # a worker asks for a fresh process (after an OOM, say)
# Failures after which the process is not to be trusted with the next point: out of memory
# (REFERENCE 6) and a device fault (a broken CUDA or TPU context, faults.py).
FRESH_PROCESS = ("oom", "device")


def check_out_dir(config: SweepConfig, recalibrate: bool = False) -> None:
    """Writes nothing: OUT_DIR must be writable, any results in it from this config, and
    its state files what a sweep wrote (config.json, flags.txt, inflight.json, and
    calibration.json unless `recalibrate` measures it again); else one ConfigError line."""
    out = config.out_dir
    results.check_dir(out, config.fingerprint())
    results.check_flags(os.path.join(out, results.FLAGS))
    results.read_inflight(out)
    if not recalibrate:
        results.read_calibration(os.path.join(out, results.CALIBRATION))


@contextlib.contextmanager
def hold_out_dir(config: SweepConfig, log=print):
    """OUT_DIR locked for the block (files.DirLock: a second sweep is refused in one line
    naming this one) and cleared of what a killed sweep leaves: its temporaries, and its
    inflight.json (that point has no record, so it is measured again). Yields the lock,
    which a measuring child inherits (isolation.run_supervised). An OUT_DIR it made is
    removed again if nothing was written in it (a mesh that does not fit, say)."""
    made = not os.path.exists(config.out_dir)
    files.make_dir(config.out_dir, "--out_dir")
    try:
        with files.DirLock(config.out_dir, "--out_dir", "sweep") as lock:
            for name in files.remove_temporaries(config.out_dir):
                log(f"removed {os.path.join(config.out_dir, name)}, left by a killed sweep")
            inflight = os.path.join(config.out_dir, results.INFLIGHT)
            with contextlib.suppress(FileNotFoundError):
                os.remove(inflight)
            try:
                yield lock
            finally:  # nothing is in flight once the sweep lets go (a worker is gone)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(inflight)
    finally:
        if made:
            with contextlib.suppress(OSError):  # not empty: it holds what was written
                os.rmdir(config.out_dir)


def init_out_dir(config: SweepConfig, flagfile_text: str) -> None:
    """Checks OUT_DIR, then saves the config and the re-runnable flagfile in it."""
    results.init_dir(config.out_dir, config.fingerprint(), config.to_json(), flagfile_text)


def forget_calibration(config: SweepConfig) -> None:
    """Drops OUT_DIR's cached ceilings and profile, so the next point's worker measures
    them again (a profile file named by --model_profile is the user's to keep)."""
    names = [results.CALIBRATION] + ([results.PROFILE] if config.model_profile == "auto" else [])
    for name in names:
        path = os.path.join(config.out_dir, name)
        if os.path.exists(path):
            os.remove(path)


@dataclasses.dataclass
class Model:
    """What the per-kernel model needs during a sweep: the device's profile (its tables
    measured as points need them) and each --predict_for target's datasheet profile."""

    store: profile.Store
    cache_bytes: float  # the device's last cache level: a working set past it is cold
    sheets: dict  # target key -> (kernel_model.Lookup, cache bytes, bytes ratio)

    @classmethod
    def make(cls, config: SweepConfig, device, caches: dict, log) -> "Model | None":
        if config.model_profile == "off" or (config.distributed and config.model_profile == "auto"):
            return None  # several processes would each measure: name a shared profile file
        path = config.model_profile
        if path == "auto":
            path = os.path.join(config.out_dir, results.PROFILE)
        sheets = {}
        for key, numerics in config.prediction_targets():
            spec = hardware.DATASHEET[key]
            lookup = kernel_model.Lookup(profile.from_datasheet(spec, numerics))
            ratio = numerics.itemsize / config.numerics.itemsize
            sheets[record.target_key(key, numerics)] = (lookup, spec.cache_bytes or 0, ratio)
        store = profile.Store(path, device, config.numerics, log)
        return cls(store, max(caches.values(), default=0), sheets)

    def fields(self, ks: list, working_set: float, fresh: float, seconds: float) -> dict:
        """The model's prediction for a measured point: prediction fields and kernels."""
        lookup = kernel_model.Lookup(self.store.profile(kernel_model.tables_for(ks)))
        m = kernel_model.predict(ks, lookup, working_set, self.cache_bytes, fresh)
        return {
            "model_s": m.model_s,
            "model_error": seconds / m.model_s - 1,
            "model_kernels": m.top(3),
            "model_text": m.text(),
            "model_source": f"profile measured here ({self.store.path})",
        }

    def target(self, key: str, ks: list, working_set: float) -> dict:
        """The model's prediction on a datasheet target, from this point's kernels (their
        bytes scaled to the target's dtype)."""
        lookup, cache, ratio = self.sheets[key]
        if ratio != 1:
            ks = [
                dataclasses.replace(
                    k, bytes_read=k.bytes_read * ratio, bytes_written=k.bytes_written * ratio
                )
                for k in ks
            ]
        m = kernel_model.predict(ks, lookup, working_set * ratio, cache)
        return {
            "model_s": m.model_s,
            "model_kernels": m.top(3),
            "model_text": m.text(),
            "model_source": "datasheet model, not validated",
        }


def pending(config: SweepConfig, log=print) -> list[tuple[dict, int, str]]:
    """Grid points still to measure: not yet done, or failed when --retry_failed."""
    # Any record counts, usable by readers or not: a point is measured once.
    done = results.latest_by_id(
        results.load(os.path.join(config.out_dir, results.RESULTS), warn=log, complete=False)
    )
    todo = []
    for point, batch in grid_points(config):
        pid = point_id(config.model, point, batch)
        if distributed.shard_of(pid, config.num_shards) != config.shard_index:
            continue  # another worker's point (--shard_index / --num_shards)
        earlier = done.get(pid)
        if earlier is None or (earlier["status"] != "ok" and config.retry_failed):
            todo.append((point, batch, pid))
    return todo


def resolve_ceilings(config: SweepConfig, device) -> roofline.Ceilings:
    """Peak FLOP/s and bandwidth: flags override; else datasheet row; else calibration."""
    if config.peak_flops and config.bandwidth:
        return roofline.Ceilings(
            config.peak_flops, config.bandwidth, "flags", "--peak_flops", "--bandwidth"
        )
    spec = hardware.lookup(device.device_kind)
    if config.ceilings == "datasheet" and spec is None:
        raise ConfigError(f"--ceilings=datasheet: no datasheet row for {device.device_kind!r}")
    if spec is not None and config.ceilings != "calibrated":
        base = hardware.datasheet_ceilings(spec, config.numerics)
    else:
        path = os.path.join(config.out_dir, results.CALIBRATION)
        results.read_calibration(path)  # a corrupt cache is one line, not a traceback
        base = calibration.cached(path, device.device_kind, config.numerics, device)
    if config.peak_flops is None and config.bandwidth is None:
        return base
    return roofline.Ceilings(
        config.peak_flops or base.peak_flops,
        config.bandwidth or base.bandwidth,
        f"flags over {base.source}",
        "--peak_flops" if config.peak_flops else base.flops_kernel,
        "--bandwidth" if config.bandwidth else base.bandwidth_kernel,
    )


def calibrated_beside(config: SweepConfig, device, used: roofline.Ceilings):
    """What the device attains (calibration), measured beside the datasheet ceilings a
    sweep on an accelerator with a datasheet row uses, so records and the report show
    both: cached in OUT_DIR/calibration.json like any calibration, so it costs its few
    seconds once per device and numerics (reproduce and device_run.sh share the file).
    None on a CPU (no row: its ceilings are calibrated already), with --ceilings=datasheet
    (the datasheet only), ceilings from flags, or several processes (each would time and
    write it alone)."""
    if (
        used.source != "datasheet"
        or config.ceilings == "datasheet"
        or device.platform == "cpu"
        or jax.process_count() > 1
    ):
        return None
    path = os.path.join(config.out_dir, results.CALIBRATION)
    results.read_calibration(path)  # a corrupt cache is one line, not a traceback
    return calibration.cached(path, device.device_kind, config.numerics, device)


def share_of_host(ceilings: roofline.Ceilings, device, mesh) -> roofline.Ceilings:
    """One device's ceilings when a mesh runs several CPU devices of one process at once:
    they share the host's cores and memory, so each gets 1/n of the calibrated ones."""
    n = sum(d.process_index == jax.process_index() for d in mesh.devices.flat) if mesh else 1
    if device.platform != "cpu" or n == 1 or ceilings.source != "calibrated":
        return ceilings
    return dataclasses.replace(
        ceilings,
        peak_flops=ceilings.peak_flops / n,
        bandwidth=ceilings.bandwidth / n,
        source=f"calibrated / {n} CPU devices sharing the host",
    )


def measure_point(
    config: SweepConfig,
    base: dict,
    point: dict,
    batch: int,
    device,
    ceilings: roofline.Ceilings,
    floor_s: float,
    caches: dict,
    mesh=None,
    agree=None,
    model: Model | None = None,
) -> dict:
    """Builds, compiles and times one point; returns its record.

    With a mesh, the workload is laid out as it says (distributed.place_workload); the
    prediction is then for one device's share (REFERENCE 2 applied per device), with the
    collective it sends, if any.
    """
    family = workloads.get(config.model)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), batch)
    spec = timing.for_platform(config.timing, device.platform)
    decide = _decide if jax.process_count() > 1 else None
    # A build that times candidates (an MoE dispatch: autotune) times them as this does.
    with jax.default_device(device), autotune.timed_like(config.weight_copies, spec, decide):
        work = family.build(point, batch, config.numerics, key)
    fn, weights, inputs, cost, layout = work.fn, work.weights, work.inputs, work.cost, {}
    metrics = work.metrics
    if mesh is not None:
        placed = distributed.place_workload(work, batch, mesh)
        fn, weights, inputs = placed.fn, placed.weights, placed.inputs
        cost = distributed.cost_on_mesh(family, point, batch, config.numerics, config.mesh)
        metrics = metrics | placed.metrics
        layout = {
            "mesh": dict(config.mesh),
            "per_device_batch": batch // distributed.size(config.mesh),
            "shardings": placed.specs,
            "cost_per_device": cost.as_dict(),
        }
    copies = timing.weight_copies(weights, config.weight_copies)
    compiled = timing.compile_ahead(fn, (weights, *inputs), work.donate_argnums)
    t0 = time.perf_counter()
    ks = kernels.of_compiled(compiled.compiled, work.branch_fraction)
    kernels_s = time.perf_counter() - t0
    run, n = compiled.compiled, len(copies)

    def call(i):
        nonlocal inputs
        out = run(copies[i % n], *inputs)
        # One array blocks by its own method: jax.block_until_ready's tree walk costs
        # ~0.5 us a call (benchmarks/engine.py).
        out.block_until_ready() if isinstance(out, jax.Array) else jax.block_until_ready(out)
        if work.next_inputs is not None:
            inputs = work.next_inputs(out, inputs)

    distributed.barrier(f"time {point_id(config.model, point, batch)}")
    stats = timing.time_calls(call, spec, agree)
    if config.profile_dir and (not config.profile_batches or batch in config.profile_batches):
        # A few calls after timing, so the trace shows the steady state, not compilation;
        # each is annotated with the point's id, so XProf and Perfetto name the point.
        pid = point_id(config.model, point, batch)
        with jax.profiler.trace(os.path.join(config.profile_dir, _slug(pid))):
            for i in range(3):
                with jax.profiler.TraceAnnotation(pid, call=i):
                    call(i)
    # What repeated calls cycle through: every weight copy, plus this call's other bytes.
    working_set = cost.total_bytes + cost.weight_bytes * (config.weight_copies - 1)
    point_for_cost = point | work.resolved
    fields = roofline_fields(config, point_for_cost, batch, ceilings)
    modelled = {}
    if model is not None:
        fresh = kernel_model.fresh_bytes(compiled.memory_analysis)
        modelled = model.fields(ks, working_set, fresh, stats.median_s)
        for key in fields["predicted"]:
            fields["predicted"][key]["prediction"] |= model.target(key, ks, working_set)
    return record.measured(
        base,
        time=stats.as_dict(),
        compile_info={
            "lower_s": compiled.lower_s,
            "compile_s": compiled.compile_s,
            "kernels_s": kernels_s,
            "cache_dir": config.compilation_cache_dir,
        },
        cost=work.cost,
        device_cost=cost,
        xla={"cost_analysis": compiled.cost_analysis, "memory_analysis": compiled.memory_analysis},
        ceilings=ceilings,
        empty_call_s=floor_s,
        prediction=roofline.predict(cost, ceilings, floor_s),
        model=modelled,
        **fields,
        working_set={"bytes": working_set, "fits_in": hardware.fits_in(working_set, caches)},
        extra=layout
        | {"kernels": [k.as_dict() for k in ks]}
        | ({"metrics": metrics} if metrics else {}),
    )


def _decide(index: int) -> int:
    """Process 0's choice among a build's candidates (autotune), on every process."""
    return distributed.broadcast_ints([index])[0]


def roofline_fields(config: SweepConfig, point: dict, batch: int, ceilings) -> dict:
    """The series' critical batches on these ceilings, and the point's roofline
    prediction on each --predict_for target: computed here, once, from the family's cost
    model, so that readers of the record never need it."""
    family = workloads.get(config.model)

    def cost_at(numerics):
        return lambda b: distributed.cost_on_mesh(family, point, b, numerics, config.mesh)

    predicted = {}
    for key, numerics in config.prediction_targets():
        spec = hardware.DATASHEET[key]
        sheet = hardware.datasheet_ceilings(spec, numerics)
        cost = cost_at(numerics)(batch)
        cycled = cost.total_bytes + cost.weight_bytes * (config.weight_copies - 1)
        predicted[record.target_key(key, numerics)] = record.prediction_entry(
            spec.name,
            spec.kind,
            numerics,
            cost,
            sheet,
            record.critical_batches(cost_at(numerics), sheet),
            hardware.fits_in(cycled, hardware.cache_levels(spec.kind, spec)),
        )
    return {
        "critical_batch": record.critical_batches(cost_at(config.numerics), ceilings),
        "predicted": predicted,
    }


def _slug(pid: str) -> str:
    """A point id as one directory name."""
    return pid.replace("/", "__").replace(",", "_").replace("=", "")


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent cache for every compile, however quick (REFERENCE 6: CPU compiles
    under a second are skipped by default)."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


TRACEBACK_FRAMES = 8  # innermost frames kept in a failed record: where it broke


OOM = "out of memory"  # how a failed record's error starts when memory ran out


def _failure_reason(e: BaseException, platform: str | None = None) -> tuple[str, str]:
    """(kind, one-line message) for a point that raised: "oom", "device" (its text shows
    a broken device context, faults.device_fault) or "error"."""
    msg = (str(e).strip().splitlines() or [""])[0][:500]
    text = str(e).lower()
    if (
        isinstance(e, MemoryError)
        or "resource_exhausted" in text
        or OOM in text
        or faults.out_of_memory(str(e))
    ):
        return "oom", f"{type(e).__name__}: {msg}"
    fault = faults.device_fault(str(e), platform)
    if fault:
        shown = "" if fault in msg else f" [{fault}]"
        return "device", f"device fault: {type(e).__name__}: {msg}{shown}"
    return "error", f"{type(e).__name__}: {msg}"


def working_set_bytes(config: SweepConfig, point: dict, batch: int) -> int | None:
    """The bytes one device cycles through at this point, by the family's cost model (as
    measure_point computes them); None when the cost model cannot say."""
    try:
        family = workloads.get(config.model)
        cost = distributed.cost_on_mesh(family, point, batch, config.numerics, config.mesh)
        return int(cost.total_bytes + cost.weight_bytes * (config.weight_copies - 1))
    except Exception:  # a cost model that fails here fails the point, and says so there
        return None


def _memory_analysis(e: BaseException) -> dict | None:
    """XLA's memory plan of the point that ran out of memory, when its compile had
    finished: the compiled call is then a local of measure_point's frame."""
    for frame, _ in traceback.walk_tb(e.__traceback__):
        if frame.f_code is measure_point.__code__:
            compiled = frame.f_locals.get("compiled")
            if isinstance(compiled, timing.CompiledCall):
                return compiled.memory_analysis or None
    return None


def out_of_memory(tried: int | None, cause: str, memory_analysis=None) -> tuple[dict, str]:
    """The `memory` field and the error line of a point that ran out of memory."""
    allocation = re.search(r"allocat\w* (\d+) bytes", cause)
    memory = {
        "cost_model_bytes": tried,
        "failed_allocation_bytes": int(allocation.group(1)) if allocation else None,
        "memory_analysis": memory_analysis,
    }
    sizes = [f"the cost model's working set {_bytes(tried)}"] if tried is not None else []
    if memory["failed_allocation_bytes"] is not None:
        sizes.append(f"an allocation of {_bytes(memory['failed_allocation_bytes'])} refused")
    plan = (memory_analysis or {}).get("temp_size_in_bytes")
    if plan is not None:
        sizes.append(f"XLA's temporaries {_bytes(plan)}")
    return memory, f"{OOM} ({'; '.join(sizes) or 'size unknown'}): {cause}"


def _bytes(n: float) -> str:
    """1536 -> '1.54 kB', 4.4e12 -> '4.4 TB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def base_record(config: SweepConfig, point: dict, batch: int, device, argv=None) -> dict:
    """The fields of a point's record that do not depend on its measurement."""
    return record.base(
        pid=point_id(config.model, point, batch),
        model=config.model,
        params=point,
        batch=batch,
        numerics=config.numerics,
        weight_copies=config.weight_copies,
        fingerprint=config.fingerprint_hash(),
        config_name=config.config_name,
        provenance=provenance(device, argv),
    )


def run_job(config: SweepConfig, flagfile_text: str, log=print, argv=None) -> int:
    """Checks what needs the devices, then OUT_DIR, then measures: nothing is written
    when the mesh does not fit the devices. `argv` is the command the user typed. The
    caller holds OUT_DIR's lock (hold_out_dir), or a supervisor that does."""
    if config.compilation_cache_dir:
        enable_compilation_cache(config.compilation_cache_dir)
    mesh = distributed.make_mesh(config.mesh) if config.mesh else None
    if distributed.is_writer():
        init_out_dir(config, flagfile_text)
    return run(config, log, mesh, argv)


def run(config: SweepConfig, log=print, mesh=None, argv=None) -> int:
    """Measures every pending point, appending a record for each; returns an exit code.

    Returns RESTART_EXIT_CODE after an out-of-memory failure when isolated, since a
    process that hit OOM is not to be trusted for the next point (REFERENCE 6).
    """
    device = jax.local_devices()[0]  # devices()[0] may belong to another process
    writer = distributed.is_writer()
    log = log if writer else (lambda line: None)
    grid = [(p, b, point_id(config.model, p, b)) for p, b in grid_points(config)]
    todo_ids = {pid for _, _, pid in pending(config, log)} if writer else set()
    # Process 0 decides what is left; every process then runs the same points in order.
    todo = [
        grid[i]
        for i in distributed.broadcast_ints(
            [i for i, (_, _, pid) in enumerate(grid) if pid in todo_ids]
        )
    ]
    if not todo:
        log("nothing to measure: every point already has a result")
        return 0
    work, rounds_of = rounds_order(config, todo, log) if writer else ([], {})
    if config.rounds == 1:
        work = [(point, batch, pid, None) for point, batch, pid in todo]
    for pid, recs in rounds_of.items():  # every round in, the combined record not (a crash)
        if len(recs) >= config.rounds and pid in todo_ids:
            results.append(
                os.path.join(config.out_dir, results.RESULTS), record.combine_rounds(recs)
            )
    ceilings = share_of_host(resolve_ceilings(config, device), device, mesh)
    attainable = calibrated_beside(config, device, ceilings)
    if attainable is not None:
        log(
            f"calibrated beside the datasheet: {attainable.peak_flops / 1e9:.1f} GFLOP/s "
            f"[{attainable.flops_kernel}], {attainable.bandwidth / 1e9:.1f} GB/s "
            f"[{attainable.bandwidth_kernel}]"
        )
    floor = timing.empty_call_floor(timing.for_platform(config.timing, device.platform), device)
    caches = hardware.cache_levels(device.platform, hardware.lookup(device.device_kind))
    model = Model.make(config, device, caches, log) if writer else None
    log(
        f"device {device.device_kind} ({device.platform}); ceilings ({ceilings.source}): "
        f"{ceilings.peak_flops / 1e9:.1f} GFLOP/s [{ceilings.flops_kernel}], "
        f"{ceilings.bandwidth / 1e9:.1f} GB/s [{ceilings.bandwidth_kernel}]; "
        f"empty call {timing.fmt_time(floor.median_s)}"
    )
    if config.explain:
        log(dry_run.explain(config, device.device_kind, ceilings))
    agree = distributed.agree if jax.process_count() > 1 else None
    out = config.out_dir
    results_path = os.path.join(out, results.RESULTS)
    inflight = os.path.join(out, results.INFLIGHT)
    if writer:
        results.repair(results_path, log)  # so inflight's results_size starts a line
    started = time.perf_counter()
    failed_now: set[str] = set()
    for n, (point, batch, pid, r) in enumerate(work, 1):
        if pid in failed_now:  # failed in an earlier round: the point is recorded failed
            continue
        tried = working_set_bytes(config, point, batch)
        if writer:
            # results_size: where this point's record will start, so that the supervisor
            # can tell a worker killed after writing it from one killed before.
            size = os.path.getsize(results_path) if os.path.exists(results_path) else 0
            state = {"id": pid, "params": point, "batch": batch, "results_size": size}
            state["platform"] = device.platform  # tells the supervisor's fault patterns
            results.write_json_atomic(inflight, state | {"cost_model_bytes": tried}, False)
        base = base_record(config, point, batch, device, argv)
        if attainable is not None:  # what the device attains, beside the datasheet's
            base = base | {"ceilings_calibrated": attainable.as_dict()}
        try:
            rec = measure_point(
                config,
                base,
                point,
                batch,
                device,
                ceilings,
                floor.median_s,
                caches,
                mesh,
                agree,
                model,
            )
        except Exception as e:  # any point may fail; the sweep goes on
            if _disk_full(e):  # not the point's fault: the sweep stops, saying where
                raise files.WriteError(files.describe(e, e.filename or out)) from None
            kind, reason = _failure_reason(e, device.platform)
            if kind == "oom":
                memory, reason = out_of_memory(tried, reason, _memory_analysis(e))
                base = base | {"memory": memory}
            rec = record.failed(base, kind, reason, traceback.format_exc(limit=-TRACEBACK_FRAMES))
        if writer:
            for line in _records_to_write(config, rec, r, rounds_of, failed_now):
                results.append(results_path, line, warn=log)
            os.remove(inflight)
        left = (time.perf_counter() - started) / n * (len(work) - n)
        log(_progress_line(n, len(work), rec, left, r, config.rounds))
        if rec["status"] != "ok" and rec["failure"] in FRESH_PROCESS and config.isolate:
            if n < len(todo):
                log("the next point gets a fresh measuring process")
            return RESTART_EXIT_CODE
    if model is not None and model.store.checked:  # the profile priced this sweep's points
        model.store.recheck()
    return 0


def rounds_order(config: SweepConfig, todo: list, log=print) -> tuple[list, dict]:
    """With --rounds=N: the (point, batch, id, round) still to measure, every point once
    per round, rounds in alternating order (so no point is always measured first), and
    the ROUND records already written, per point id."""
    rounds_of: dict[str, list[dict]] = {}
    if config.rounds == 1:
        return [], rounds_of
    path = os.path.join(config.out_dir, results.RESULTS)
    for rec in results.latest_by_id(results.load(path, warn=log, complete=False)).values():
        if rec.get("kind") == record.ROUND and rec["status"] == "ok":
            rounds_of.setdefault(rec["point_id"], []).append(rec)
    done = {(p, rec["round"]) for p, recs in rounds_of.items() for rec in recs}
    work = []
    for r in range(config.rounds):
        order = todo if r % 2 == 0 else todo[::-1]
        work += [(pt, b, pid, r) for pt, b, pid in order if (pid, r) not in done]
    return work, rounds_of


def _records_to_write(config, rec: dict, r, rounds_of: dict, failed_now: set) -> list[dict]:
    """What one measurement appends: its record; with --rounds, its ROUND record, then
    the point's combined record once every round is in (a failure: the point's)."""
    if r is None:
        return [rec]
    if rec["status"] != "ok":
        failed_now.add(rec["id"])
        return [rec]
    mine = rounds_of.setdefault(rec["id"], [])
    mine[:] = [x for x in mine if x["round"] != r] + [record.as_round(rec, r, config.rounds)]
    if len(mine) < config.rounds:
        return [mine[-1]]
    return [mine[-1], record.combine_rounds(mine)]


def _progress_line(
    n: int, total: int, rec: dict, left_s: float, r: int | None = None, rounds: int = 1
) -> str:
    head = f"[{n}/{total}] {rec['id']}" + (f" (round {r + 1}/{rounds})" if r is not None else "")
    if rec["status"] != "ok":
        return f"{head}  FAILED ({rec['failure']}): {rec['error']}  ~{left_s:.0f} s left"
    t, p = rec["time"], rec["prediction"]
    flag = "  UNSTABLE" if t["unstable"] else ""
    return (
        f"{head}  {timing.fmt_time(t['median_s'])} ±{100 * t['spread']:.1f}% (n={t['count']})  "
        f"pred {timing.fmt_time(p['lower_s'])} {p['regime']}  "
        f"compile {rec['compile']['compile_s']:.2f} s{flag}  ~{left_s:.0f} s left"
    )
