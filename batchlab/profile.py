"""A device profile: what each kernel class costs on the device at hand, over the shapes
that matter, measured by small programs of one kernel each (REFERENCE 4's protocol).

Each entry is (shape features, seconds): the median time of one call of a program that
runs one kernel of that class and shape (the median of PASSES short windows, with the
rows that share buffers interleaved), less the empty-call floor measured the same way,
so that a program's time is modelled as floor + the sum over its kernels
(batchlab.kernel_model). The profile is measured on microbenchmarks only, never fitted
to sweep points. Shapes are chosen from the platform and its memory by `plan` (a pure
function), so tests on a CPU check what a GPU or TPU would measure.

Tables:
  matmul         (m, d, cold) -> s: one y_MxD = x_MxD · w_DxD, in a chain of CHAIN; cold
                 rotates weight copies over more than the last cache level, so they
                 stream from memory
  batched        (b, m, k, n) -> s: attention-shaped batched products over a KV cache
  conv           (c, kernel, pixels, batch) -> s: one SAME k x k convolution, C -> C
  stream, reduction, copy, transpose, reduce_window, gather, scatter: (bytes moved,
                 s[, cold]) over sizes from a few KiB past the last cache level (so the
                 levels show); copy and transpose on attention-shaped layout changes;
                 cold rows (but reduction's) rotate inputs past the last cache
                 level, as in a call whose working set outgrows it; each written into a
                 buffer already written (a program's temporaries are reused)
  fresh          result bytes -> s: what a result in new pages costs on top, per call
  collective     bytes per device -> s: a tiled all_to_all over the local devices
                 (with one device, none)
  launch         s per extra kernel, from chains of 1 and 64 dependent tiny matmuls
"""

import dataclasses
import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from batchlab import files, hardware, kernels, timing
from batchlab.numerics import Numerics

VERSION = 4  # 2: matmuls in chains; the smallest streams. 3: attention-shaped copies
# and fresh pages. 4: each row the median of interleaved windows (PASSES)
SPEC = timing.TimingSpec(target_spread=0.05, time_budget_s=0.24, min_reps=5, warmup_reps=2)
# Per matmul point on a CPU: large enough that every width reaches about its compute-bound
# rate (at width 4096 the rate still grows 1.6x from M=32 to M=512).
MAX_FLOPS = 1e10
CHAIN = 4  # dependent matmuls per measured program
COLD_FROM = 2**18  # bytes tables measure cold inputs from this size (below, launches rule)
# Each row is the median of PASSES windows of SPEC's budget split PASSES ways, the rows
# that share buffers interleaved; a window takes at least PASS_MIN_REPS calls.
PASSES, PASS_MIN_REPS = 5, 2


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shapes to measure, chosen from the platform and its memory."""

    matmul_m: tuple[int, ...]
    matmul_d: tuple[int, ...]
    cold_m: tuple[int, ...]  # batches at which weights stream from memory matter
    stream_bytes: tuple[int, ...]
    cold_bytes: int  # rotate copies over at least this much to defeat the caches
    conv: tuple[tuple[int, int, int, int], ...]  # (channels, kernel, side, batch)
    batched: tuple[tuple[int, int, int, int], ...]  # (b·h, t, k, 1): scores over a cache
    max_flops: float


def plan(
    platform: str, memory_bytes: float | None = None, cache_bytes: float | None = None
) -> Plan:
    """What to measure on `platform` ("cpu", "gpu", "tpu"); accelerators get larger
    matmuls and streams (at least 1 GiB, at most an eighth of device memory)."""
    if platform == "cpu":
        cold = max(256 * 2**20, int(4 * (cache_bytes or 32 * 2**20)))
        return Plan(
            matmul_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            matmul_d=(64, 256, 1024, 4096),
            cold_m=(1, 2, 4, 8, 16, 32, 64),
            # 64 B .. 256 MiB: the smallest show what a tiny kernel costs beside the floor
            stream_bytes=tuple(2**p for p in range(6, 29, 2)),
            cold_bytes=cold,
            conv=tuple(
                (c, k, s, b) for c in (64, 256) for k in (1, 3) for s in (14, 56) for b in (1, 8)
            ),
            batched=((8, 256, 64, 1), (8, 2048, 64, 1), (64, 256, 64, 1), (64, 2048, 64, 1)),
            max_flops=MAX_FLOPS,
        )
    memory = memory_bytes or 16 * 2**30
    stream_max = int(max(2**30, min(memory / 8, 2**32)))
    return Plan(
        matmul_m=(1, 4, 16, 64, 256, 1024, 4096, 8192),
        matmul_d=(256, 1024, 4096, 8192),
        cold_m=(1, 4, 16, 64, 256),
        stream_bytes=tuple(2**p for p in range(16, int(math.log2(stream_max)) + 1, 2)),
        cold_bytes=stream_max,
        conv=tuple(
            (c, k, s, b) for c in (64, 256, 512) for k in (1, 3) for s in (14, 56) for b in (1, 32)
        ),
        batched=((32, 2048, 128, 1), (32, 8192, 128, 1), (512, 2048, 128, 1), (512, 8192, 128, 1)),
        max_flops=5e12,
    )


def _spec_for(args) -> timing.TimingSpec:
    """SPEC with the warm-up for the platform the arguments live on (an accelerator warms
    up until its calls agree, timing.for_platform)."""
    leaf = jax.tree.leaves(args)[0]
    return timing.for_platform(SPEC, next(iter(leaf.devices())).platform)


@dataclasses.dataclass
class _Call:
    """One compiled program with its arguments, ready to be timed: `call(i)` blocks."""

    call: Callable[[int], Any]
    spec: timing.TimingSpec


def _prepared(fn, arg_sets) -> _Call:
    """fn compiled, each call cycling through `arg_sets`."""
    return _calling(timing.compile_ahead(fn, arg_sets[0]).compiled, arg_sets)


def _calling(compiled, arg_sets) -> _Call:
    """A compiled program, each call cycling through `arg_sets`."""

    def call(i):
        return jax.block_until_ready(compiled(*arg_sets[i % len(arg_sets)]))

    return _Call(call, _spec_for(arg_sets[0]))


def _prepared_into(fn, arg_sets) -> _Call:
    """fn writing its result into a donated buffer an earlier call already wrote, as a
    program's reused temporaries are (a fresh result past the allocator's reuse would
    come in new pages: the fresh table prices their first touch, once per call, apart)."""
    result = jax.eval_shape(fn, *arg_sets[0])  # a buffer to donate, without compiling fn
    device = next(iter(arg_sets[0][0].devices()))
    state = {"out": jax.device_put(jnp.zeros(result.shape, result.dtype), device)}
    jitted = jax.jit(lambda out, *a: fn(*a), donate_argnums=0, keep_unused=True)
    compiled = jitted.lower(state["out"], *arg_sets[0]).compile()

    def call(i):
        state["out"] = jax.block_until_ready(compiled(state["out"], *arg_sets[i % len(arg_sets)]))

    return _Call(call, _spec_for(arg_sets[0]))


def _prepared_donated(jitted, table, idx, upd) -> _Call:
    """An in-place update whose buffer each call donates and returns."""
    state = {"t": table}
    compiled = jitted.lower(table, idx, upd).compile()

    def call(i):
        state["t"] = jax.block_until_ready(compiled(state["t"], idx, upd))

    return _Call(call, _spec_for(table))


def _medians(calls: list[_Call]) -> list[float]:
    """Median seconds of one call of each, as the median of PASSES short windows with the
    calls interleaved (every other pass in reverse order): a shared machine's slow spells
    last about a window, so one window measures the spell as much as the kernel."""
    windows: list[list[float]] = [[] for _ in calls]
    for n in range(PASSES):
        order = range(len(calls)) if n % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            budget = calls[i].spec.time_budget_s / PASSES
            spec = dataclasses.replace(calls[i].spec, time_budget_s=budget, min_reps=PASS_MIN_REPS)
            if n:  # warm again after the others ran, without the first pass's warm-up time
                spec = dataclasses.replace(spec, warmup_reps=1, warmup_s=0.0, warmup_agree=None)
                if windows[i][0] > budget:  # a call longer than a window: one call a window
                    spec = dataclasses.replace(spec, warmup_reps=0, min_reps=1)
            windows[i].append(timing.time_calls(calls[i].call, spec).median_s)
    return [statistics.median(w) for w in windows]


def _timed(fn, arg_sets) -> float:
    """Median seconds of one call of fn, cycling through `arg_sets`."""
    return _medians([_prepared(fn, arg_sets)])[0]


def _timed_into(fn, arg_sets) -> float:
    """Median seconds of one call of fn writing into a donated buffer (_prepared_into)."""
    return _medians([_prepared_into(fn, arg_sets)])[0]


class _Rand:
    """Random non-zero arrays on one device, drawn once per shape: on a CPU by numpy (a
    jax.random draw compiles a program per shape: 0.2 s each, a fifth of the profile),
    elsewhere on the device (numpy would draw gigabytes on the host)."""

    def __init__(self, numerics: Numerics, device):
        self.dtype, self.device, self.n = numerics.jnp_dtype, device, 0
        self.host = np.random.default_rng(7) if device.platform == "cpu" else None

    def __call__(self, *shape):
        self.n += 1
        if self.host is not None:
            values = self.host.random(shape, dtype=np.float32) + 0.5  # in [0.5, 1.5)
            return jax.device_put(values.astype(self.dtype), self.device)
        key = jax.random.fold_in(jax.random.PRNGKey(7), self.n)
        return jax.device_put(jax.random.normal(key, shape, self.dtype), self.device)

    def scale(self, base, c: float):
        """A distinct buffer of base's shape (base times c)."""
        return _scale(base, jnp.asarray(c, base.dtype))

    def copies(self, base, total_bytes: int):
        """Distinct buffers of `base` summing past `total_bytes`."""
        n = max(1, -(-total_bytes // base.nbytes))
        return [base] + [self.scale(base, 1 + i / 64) for i in range(1, n)]


_scale = jax.jit(lambda x, c: x * c)


class _Measure:
    """The profile's tables, each measured by its own method on one device."""

    def __init__(self, numerics: Numerics, device, p: Plan, floor_s: float):
        self.numerics, self.p, self.floor, self.device = numerics, p, floor_s, device
        self.rand, self.prec = _Rand(numerics, device), numerics.lax_precision

    def net(self, seconds: float) -> float:
        return max(seconds - self.floor, 1e-9)

    def mm(self, x, w):
        return jnp.matmul(x, w, precision=self.prec)

    def matmul(self) -> list:
        """Chains of CHAIN dependent products x·w1·w2·... with distinct weights, per
        product: inside a program, matmuls run back to back (a lone one in a program of
        its own measures the thread pool waking as much as the product)."""
        rows, p, rand = [], self.p, self.rand

        def chain(x, *ws):
            for w in ws:
                x = self.mm(x, w)
            return x

        for d in p.matmul_d:
            ws = [rand(d, d) for _ in range(CHAIN)]
            weight_bytes = CHAIN * d * d * self.numerics.itemsize
            # Cold: sets of CHAIN weights rotated over more than the last cache level.
            colds = [ws]
            if weight_bytes * 2 < p.cold_bytes:
                colds += [
                    [rand.scale(w, 1 + i / 64) for w in ws]
                    for i in range(1, -(-p.cold_bytes // weight_bytes))
                ]
            keys, calls = [], []
            for m in p.matmul_m:
                if 2 * m * d * d > p.max_flops and m > 1:
                    continue
                x = rand(m, d)
                keys.append([m, d, 0])
                calls.append(_prepared(chain, [(x, *ws)]))
                if m in p.cold_m:
                    keys.append([m, d, 1])
                    calls.append(_prepared(chain, [(x, *c) for c in colds]))
            rows += [k + [self.net(t) / CHAIN] for k, t in zip(keys, _medians(calls))]
            del colds, calls
        return rows

    def batched(self) -> list:
        def scores(q, kv):
            return jnp.einsum("bqk,btk->bqt", q, kv, precision=self.prec)

        shapes = [(bh, t, k) for bh, t, k, _ in self.p.batched]
        calls = [
            _prepared(scores, [(self.rand(bh, 1, k), self.rand(bh, t, k))]) for bh, t, k in shapes
        ]
        return [[*shape, self.net(t)] for shape, t in zip(shapes, _medians(calls))]

    def conv(self) -> list:
        def conv(x, w):
            dims = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=dims, precision=self.prec
            )

        calls = [
            _prepared(conv, [(self.rand(b, side, side, c), self.rand(k, k, c, c))])
            for c, k, side, b in self.p.conv
        ]
        return [
            [c, k, side * side, b, self.net(t)]
            for (c, k, side, b), t in zip(self.p.conv, _medians(calls))
        ]

    def _bytes(self, shape_of, fn, traffic: float, sizes, cold: bool = True) -> list:
        """(bytes moved, s, cold) at each size (once per distinct shape): warm, the same
        input each call (past the last cache level it streams anyway); and cold from
        COLD_FROM bytes, inputs rotated over more than the last cache level, as a call
        whose working set outgrows the caches reads its caches and weights."""
        rows, s, shapes = [], self.numerics.itemsize, []
        for nbytes in sizes:
            shape = shape_of(max(16, nbytes // s))
            if shape in shapes:
                continue
            shapes.append(shape)
            base = self.rand(*shape)
            moved = base.nbytes * traffic
            keys, calls = [[moved, 0]], [_prepared_into(fn, [(base,)])]
            if cold and base.nbytes >= COLD_FROM and 2 * base.nbytes < self.p.cold_bytes:
                sets = [(base,)] + [
                    (self.rand.scale(base, 1 + i / 64),)
                    for i in range(1, -(-self.p.cold_bytes // base.nbytes))
                ]
                keys.append([moved, 1])
                calls.append(_prepared_into(fn, sets))
            rows += [[k[0], self.net(t), k[1]] for k, t in zip(keys, _medians(calls))]
            del calls
        return rows

    def stream(self) -> list:
        return self._bytes(lambda n: (n,), lambda x: x * 1.0001 + 0.5, 2, self.p.stream_bytes)

    def reduction(self) -> list:
        # Warm only: a reduction's input is mostly what the kernel before it wrote.
        return self._bytes(
            lambda n: (max(1, n // 256), 256), lambda x: x.sum(-1), 1, self.p.stream_bytes, False
        )

    def _layout_change(self, perm) -> list:
        """(bytes moved, s) of a layout change of an attention-shaped array (N, T, 8, 64),
        T up to 2048: the KV-cache and head transposes decoders run. (A chain of them in
        one program measures one: XLA turns all but the last into layout choices.)"""

        def shape(n):
            n_rows = max(1, n // 512)
            t = min(n_rows, 2048)
            return (max(1, n_rows // t), t, 8, 64)

        return self._bytes(shape, lambda x: jnp.transpose(x, perm), 2, self.p.stream_bytes)

    def copy(self) -> list:
        """Block copies: rows of the minor dimension move whole, (N,T,H,D) -> (N,H,T,D)."""
        return self._layout_change((0, 2, 1, 3))

    def transpose(self) -> list:
        """True transposes, element by element: (N,T,H,D) -> (N,H,D,T)."""
        return self._layout_change((0, 2, 3, 1))

    def fresh(self) -> list:
        """(bytes, s) of a result in fresh pages, per call: a stream into new memory less
        the same stream into a buffer already written, from COLD_FROM bytes (smaller
        results reuse the allocator's memory)."""
        rows, op = [], lambda x: x * 1.0001 + 0.5
        for nbytes in self.p.stream_bytes:
            if nbytes >= COLD_FROM:
                base = self.rand(nbytes // self.numerics.itemsize)
                standalone, into = _medians(
                    [_prepared(op, [(base,)]), _prepared_into(op, [(base,)])]
                )
                extra = standalone - into
                rows.append([base.nbytes, max(0.0, extra)])
        return rows

    def reduce_window(self) -> list:
        def pool(x):
            return jax.lax.reduce_window(
                x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"
            )

        def image(n):
            side = max(4, int((n // 64) ** 0.5))
            return (1, side, side, 64)

        return self._bytes(image, pool, 1.25, self.p.stream_bytes)

    def _rows_of(self, nbytes: int):
        width = 256
        return self.rand(max(8, nbytes // (self.numerics.itemsize * width)), width)

    def _indexed_sizes(self):
        """Every other stream size from 16 KiB: gathers of fewer rows cost the launch."""
        return [b for b in self.p.stream_bytes if b >= 2**14][::2]

    def gather(self) -> list:
        rows = []
        for nbytes in self._indexed_sizes():
            table = self._rows_of(nbytes)
            idx = jnp.arange(0, table.shape[0], 2, dtype=jnp.int32)
            moved = idx.size * table.shape[1] * self.numerics.itemsize * 2
            rows.append([moved, self.net(_timed_into(lambda t, i: t[i], [(table, idx)]))])
        return rows

    def scatter(self) -> list:
        rows = []
        for nbytes in self._indexed_sizes():
            table = self._rows_of(nbytes)
            idx = jnp.arange(0, table.shape[0], 2, dtype=jnp.int32)
            upd = self.rand(idx.size, table.shape[1])
            scatter = jax.jit(lambda t, i, u: t.at[i].set(u), donate_argnums=0)
            update = _prepared_donated(scatter, table, idx, upd)
            rows.append([upd.nbytes * 2, self.net(_medians([update])[0])])
        return rows

    def collective(self) -> list:
        """(bytes each device reads and writes, s) of a tiled all_to_all over every local
        device of this platform; none with one device (its calls have no collective)."""
        devices = [d for d in jax.local_devices() if d.platform == self.device.platform]
        if len(devices) < 2:
            return []
        n = len(devices)
        mesh = jax.sharding.Mesh(devices, ("x",))
        spec = jax.sharding.PartitionSpec("x")

        def exchange(x):
            return jax.shard_map(
                lambda b: jax.lax.all_to_all(b, "x", 0, 0, tiled=True),
                mesh=mesh,
                in_specs=spec,
                out_specs=spec,
            )(x)

        rows = []
        for nbytes in self._indexed_sizes():
            # Each device holds `nbytes` in rows of 64 values, a multiple of n of them.
            per_device = max(1, nbytes // (self.numerics.itemsize * 64 * n)) * n
            count = per_device * n
            x = jax.device_put(
                jnp.ones((count, 64), self.numerics.jnp_dtype),
                jax.sharding.NamedSharding(mesh, spec),
            )
            # In a kernel's units: each device reads its shard and writes what it receives.
            rows.append([2 * x.nbytes / n, self.net(_timed(exchange, [(x,)]))])
        return rows

    def launch(self) -> float:
        """Seconds per extra kernel, from chains of 1 and 64 dependent tiny matmuls."""
        x, w = self.rand(8, 8), self.rand(8, 8)

        def chain(n):
            def f(x, w):
                for _ in range(n):
                    x = jnp.tanh(self.mm(x, w))
                return x

            return f

        counts, calls = [], []
        for n in (1, 64):
            compiled = timing.compile_ahead(chain(n), (x, w)).compiled
            counts.append(kernels.totals(kernels.of_compiled(compiled))["kernels"])
            calls.append(_calling(compiled, [(x, w)]))  # timed as counted: compiled once
        times = _medians(calls)
        return max(0.0, (times[1] - times[0]) / max(1, counts[1] - counts[0]))


TABLES = (
    "matmul", "batched", "conv", "stream", "reduction", "copy", "transpose", "reduce_window",
    "gather", "scatter", "fresh", "collective",
)  # fmt: skip


def _device_plan(device) -> Plan:
    spec = hardware.lookup(device.device_kind)
    caches = hardware.cache_levels(device.platform, spec)
    return plan(device.platform, spec and spec.memory_bytes, max(caches.values(), default=None))


def measure(
    numerics: Numerics, device=None, p: Plan | None = None, names=TABLES, log=lambda s: None
) -> dict:
    """The profile's floor, launch cost and the tables `names`, measured on `device`."""
    device = device or jax.local_devices()[0]
    p = p or _device_plan(device)
    floor = _floor(device)
    m = _Measure(numerics, device, p, floor)
    out = {"floor_s": floor, "launch_s": m.launch(), "tables": {}}
    for name in names:
        log(f"profile: {name}")
        out["tables"][name] = getattr(m, name)()
    return out


def _floor(device) -> float:
    """Seconds of the empty call every row is measured less."""
    return _timed(lambda x: x + 1, [(jax.device_put(jnp.ones((1,), jnp.float32), device),)])


# A stored profile whose sentinel rows now take more than (1 + DRIFT) times their stored
# time, or less than 1 / (1 + DRIFT), is measured again: a shared machine's speed moves
# by 20-40% over minutes, and a profile measured in a slow spell prices a whole run slow.
DRIFT = 0.15
SENTINEL_TABLES = ("matmul", "stream", "conv")


def _sentinel_plan(p: Plan) -> Plan:
    """A few mid-sized rows of plan p: matmuls of M = 4 and 64 at two widths, two stream
    sizes, two small convolutions (rows that repeat within about 10% when the machine
    does not move)."""
    n = len(p.stream_bytes)
    return dataclasses.replace(
        p,
        matmul_m=(4, 64),
        matmul_d=p.matmul_d[1:3],
        cold_m=(),
        stream_bytes=(p.stream_bytes[n // 2], p.stream_bytes[2 * n // 3]),
        cold_bytes=0,  # warm rows only
        conv=p.conv[:2],
        batched=(),
    )


def _row_keys(name: str, rows: list) -> dict:
    """{shape: seconds} of a matmul, conv or bytes table's rows."""
    if name == "matmul":
        return {tuple(r[:3]): r[3] for r in rows}
    if name == "conv":
        return {tuple(r[:4]): r[4] for r in rows}
    return {(round(r[0]), r[2] if len(r) > 2 else 0): r[1] for r in rows}


def drift(entry: dict, numerics: Numerics, device) -> tuple[float | None, int]:
    """(how many times their stored time the sentinel rows of `entry` take now: the
    median ratio, number of rows compared); (None, 0) when it has none of their tables."""
    names = [n for n in SENTINEL_TABLES if entry["tables"].get(n)]
    if not names:
        return None, 0
    m = _Measure(numerics, device, _sentinel_plan(_device_plan(device)), _floor(device))
    ratios = []
    for name in names:
        stored = _row_keys(name, entry["tables"][name])
        for shape, seconds in _row_keys(name, getattr(m, name)()).items():
            if stored.get(shape, 0) > 0:
                ratios.append(seconds / stored[shape])
    return (statistics.median(ratios), len(ratios)) if ratios else (None, 0)


class Store:
    """A profile file: {key: profile} per device kind and numerics, each table measured
    the first time a sweep needs it and kept; a profile made by another version of
    batchlab's profile or of JAX is measured again, and so is one whose sentinel rows
    the machine no longer runs in their stored time (DRIFT; checked once per Store)."""

    def __init__(self, path: str, device, numerics: Numerics, log=lambda s: None):
        self.path, self.device, self.numerics, self.log = path, device, numerics, log
        self.key = key(device.device_kind, numerics)
        self.stamp = {"profile_version": VERSION, "jax": jax.__version__}
        self.checked = False  # a stored entry is checked for drift at its first use

    def _compared(self, entry: dict, when: str, if_moved: str) -> float | None:
        """The entry's sentinel ratio now (drift), logged, with `if_moved` added when the
        machine moved past DRIFT; None when the entry has none of their tables."""
        ratio, n = drift(entry, self.numerics, self.device)
        if ratio is not None:
            then = if_moved if _moved(ratio) else ""
            self.log(f"profile: {when}{n} sentinel rows take {ratio:.2f}x their stored time{then}")
        return ratio

    def _still_true(self, entry: dict) -> bool:
        """Whether the machine still runs the entry's sentinel rows in their time."""
        ratio = self._compared(entry, "", "; measuring its tables again as they are needed")
        return ratio is None or not _moved(ratio)

    def recheck(self) -> float | None:
        """At a sweep's end: the sentinel rows' ratio to the stored profile now, logged,
        with a warning when the machine moved past DRIFT (the model's errors in this
        sweep then include the move); None without a stored profile or its tables."""
        entry = self._read().get(self.key)
        if entry is None or entry.get("stamp") != self.stamp:
            return None
        warn = ": the machine moved during the sweep, and the model's errors include it"
        return self._compared(entry, "at the sweep's end ", warn)

    def _read(self) -> dict:
        return files.read_state(self.path, "use --recalibrate or another --model_profile", _problem)

    def profile(self, names=("stream",)) -> dict:
        """The profile with at least the tables `names`, measuring what is missing."""
        entries = self._read()
        entry = entries.get(self.key)
        stale = entry is None or entry.get("stamp") != self.stamp
        if not stale and not self.checked:
            stale = not self._still_true(entry)
        self.checked = True
        if stale:
            entry = measure(self.numerics, self.device, names=(), log=self.log)
            entry["stamp"] = self.stamp
        missing = [n for n in names if n not in entry["tables"]]
        if missing or entry is not entries.get(self.key):
            fresh = measure(self.numerics, self.device, names=missing, log=self.log)
            entry["tables"] |= fresh["tables"]
            entries[self.key] = entry
            files.write_atomic(self.path, json.dumps(entries))
        return entry


def _moved(ratio: float) -> bool:
    """Whether a sentinel ratio says the machine's speed moved past DRIFT, either way."""
    return abs(math.log(ratio)) > math.log(1 + DRIFT)


def _problem(entries: dict) -> str | None:
    """What makes a profile file's contents unusable, or None."""
    for k, v in entries.items():
        if not isinstance(v, dict) or not isinstance(v.get("tables"), dict) or "floor_s" not in v:
            return f"entry {k!r} is not a profile (it needs floor_s and tables)"
    return None


def key(device_kind: str, numerics: Numerics) -> str:
    return f"{device_kind}|{numerics.dtype}|{numerics.precision}"


# ---- profiles of datasheet devices ------------------------------------------------------

# Per-class efficiency on a datasheet device: assumptions, not measurements, until a
# profile measured on that kind of device exists (every prediction from them says so).
# Large matmuls reach ~80% of the dense tensor peak and a device copy ~90% of the memory
# bandwidth: REFERENCE 3 (H100 bf16 8192³ 798 of 989 TFLOP/s, copy 3.0 of 3.35 TB/s; H200
# 788 of 989 and 4.3 of 4.8). Convolutions: half the peak (cuDNN and XLA:TPU convs on
# ResNet-50 shapes run at about half of what a large GEMM reaches). Small matmuls fill
# the machine only partly: efficiency grows with M up to 128 rows (one tensor-core or MXU
# tile) and with the width up to 1024.
MATMUL_EFFICIENCY, STREAM_EFFICIENCY, CONV_EFFICIENCY = 0.8, 0.9, 0.5
# A convolution fills the device only with enough output pixels (N·H·W) and channels: an
# implicit GEMM tiles outputs by 128 rows over ~64 multiprocessors (8192 pixels) and
# channels by 256 columns. Below, its time stays about what a full tile costs: the reason
# small-batch convolutions on a GPU cost about the same at b = 1, 2, 3 (the post's C2).
# Kernels split the channels' sum over more blocks when outputs are few (split-K), so an
# under-filled one runs at no less than an eighth of its share of the peak.
CONV_FILL_OUTPUTS, CONV_FILL_CHANNELS, CONV_MIN_FILL = 8192, 256, 1 / 8
# Fixed costs: one more kernel in an XLA:GPU executable costs a few microseconds of launch
# and gap between kernels (host-device round trip of a launched kernel, NVIDIA Nsight
# Systems guide; compiled executables enqueue kernels back to back, so the per-kernel
# cost is a fraction of the ~20 us an eager PyTorch op pays); a jitted call's dispatch
# through PJRT costs ~10 us. A TPU runs one program per call: fusions follow each other
# on the device (~1 us), the host dispatch costs more (~30 us). Vendor figures vary by
# driver and host; these are the model's defaults, stated so they can be checked.
LAUNCH_S = {"gpu": 2.5e-6, "tpu": 1e-6}
FLOOR_S = {"gpu": 10e-6, "tpu": 30e-6}


def from_datasheet(spec, numerics: Numerics) -> dict:
    """A profile built from a datasheet row (hardware.DeviceSpec) and the efficiencies and
    fixed costs above, in the same tables as a measured one."""
    ceilings = hardware.datasheet_ceilings(spec, numerics)
    peak, bw, s = ceilings.peak_flops, ceilings.bandwidth, numerics.itemsize
    launch = LAUNCH_S.get(spec.kind, LAUNCH_S["gpu"])
    p = plan(spec.kind, spec.memory_bytes, spec.cache_bytes)

    def mm_seconds(m, d):
        fill = min(1.0, m / 128) * min(1.0, d / 1024)
        flops, moved = 2.0 * m * d * d, s * (d * d + 2 * m * d)
        return launch + max(
            flops / (peak * MATMUL_EFFICIENCY * max(fill, 1 / 128)),
            moved / (bw * STREAM_EFFICIENCY),
        )

    def bytes_seconds(moved):
        return launch + moved / (bw * STREAM_EFFICIENCY)

    matmul = [[m, d, 0, mm_seconds(m, d)] for d in p.matmul_d for m in p.matmul_m]
    streams = [[b, bytes_seconds(b)] for b in p.stream_bytes]
    conv = []
    for c, k, side, b in p.conv:
        flops = 2.0 * side * side * b * k * k * c * c
        moved = s * (k * k * c * c + 2 * side * side * b * c)
        fill = min(1.0, side * side * b / CONV_FILL_OUTPUTS) * min(1.0, c / CONV_FILL_CHANNELS)
        math_s = flops / (peak * CONV_EFFICIENCY * max(fill, CONV_MIN_FILL))
        conv.append([c, k, side * side, b, launch + max(math_s, moved / (bw * STREAM_EFFICIENCY))])
    batched = [[bh, t, k, bytes_seconds(s * bh * t * k)] for bh, t, k, _ in p.batched]
    tables = {"matmul": matmul, "batched": batched, "conv": conv}
    tables |= {
        name: streams
        for name in (
            "stream",
            "reduction",
            "copy",
            "transpose",
            "reduce_window",
            "gather",
            "scatter",
        )  # fmt: skip
    }
    return {
        "floor_s": FLOOR_S.get(spec.kind, FLOOR_S["gpu"]),
        "launch_s": launch,
        "tables": tables,
        "source": "datasheet model, not validated",
    }
