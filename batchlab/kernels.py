"""The kernels a compiled executable runs, read from its optimized HLO text.

Every instruction of the entry computation that does work is one kernel (a fusion is
one kernel, whatever it fuses); while loops contribute their body times the trip count
XLA knows, conditionals their costliest branch (or a fraction of it, see `extract`).
Each kernel gets a class, its FLOPs, and the bytes it reads and writes, so that any
family, a user's own included, is described without code of its own:

  matmul          a dot (its M, N, K and batch dims), fused or not
  conv            a convolution
  reduce_window   pooling windows
  reduction       a reduce over some dimensions
  elementwise     a loop fusion of elementwise work
  gather, scatter, dynamic_update_slice, dynamic_slice
  copy            copies and transposes
  sort, collective, custom_call, other

FLOPs follow XLA's HloCostAnalysis where it is clear (2 per multiply-add of a dot or a
convolution; one per element of each elementwise arithmetic op; one per input element
of a reduction; one per window element per output of reduce-window), so their total is
comparable with `compiled.cost_analysis()["flops"]`. Bytes: a kernel reads its operands
and writes its result, except that a slice, dynamic slice or gather of an operand reads
only what it takes, and a dynamic-update-slice or scatter into an operand (in place)
reads and writes only the update.
"""

import dataclasses
import json
import math
import re
from collections.abc import Iterable

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
    "s4": 1, "u4": 1, "token": 0,
}  # fmt: skip
FREE = {
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
    "opt-barrier", "partition-id", "replica-id", "add-dependency", "domain",
}  # fmt: skip
ELEMENTWISE_FLOPS = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs",
    "exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic",
    "sqrt", "rsqrt", "cbrt", "power", "sine", "cosine", "tan", "atan2", "erf", "remainder",
    "floor", "ceil", "round-nearest-afz", "round-nearest-even", "sign", "select", "clamp",
    "compare", "and", "or", "xor", "not",
}  # fmt: skip
# Ops that update their first operand in place, and which operand holds the update.
_IN_PLACE = {"dynamic-update-slice": 1, "scatter": 2}
_DATA_MOVES = {"broadcast", "reshape", "iota", "slice", "concatenate", "pad"}
COLLECTIVES = {
    "all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute",
    "all-gather-start", "all-reduce-start", "collective-permute-start", "ragged-all-to-all",
}  # fmt: skip
CLASSES = (
    "matmul", "conv", "reduce_window", "reduction", "elementwise", "gather", "scatter",
    "dynamic_update_slice", "dynamic_slice", "copy", "sort", "collective", "custom_call",
    "other",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel of an executable (or `count` identical ones)."""

    cls: str  # one of CLASSES
    flops: float
    bytes_read: float
    bytes_written: float
    dims: tuple[tuple[str, int], ...] = ()  # matmul: m, n, k, batch; conv: its sizes
    count: int = 1
    name: str = ""  # the first HLO instruction of its kind, for a reader

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def dim(self, name: str, default: int = 1) -> int:
        return dict(self.dims).get(name, default)

    def as_dict(self) -> dict:
        return {
            "cls": self.cls,
            "flops": self.flops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "dims": dict(self.dims),
            "count": self.count,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Kernel":
        return cls(
            d["cls"],
            d["flops"],
            d["bytes_read"],
            d["bytes_written"],
            tuple(sorted(d.get("dims", {}).items())),
            d.get("count", 1),
            d.get("name", ""),
        )


# ---- parsing the HLO text ------------------------------------------------------------------


@dataclasses.dataclass
class Shape:
    """An array shape (dtype and dims) or a tuple of shapes."""

    dtype: str = ""
    dims: tuple[int, ...] = ()
    parts: tuple["Shape", ...] = ()
    layout: tuple[int, ...] = ()  # minor-to-major, as the HLO gives it ({} -> default)

    @property
    def minor(self) -> int | None:
        """The logical dimension stored contiguously (None for a scalar)."""
        if not self.dims:
            return None
        return self.layout[0] if self.layout else len(self.dims) - 1

    @property
    def elements(self) -> int:
        return math.prod(self.dims)

    @property
    def nbytes(self) -> int:
        if self.parts:
            return sum(p.nbytes for p in self.parts)
        return self.elements * DTYPE_BYTES.get(self.dtype, 4)


@dataclasses.dataclass
class Instruction:
    name: str
    shape: Shape
    opcode: str
    operands: list[str]
    attrs: str
    root: bool = False


_ARRAY = re.compile(r"(\w+)\[([\d,]*)\](?:\{([\d,]*)[:}])?")
_NAME = re.compile(r"%([\w.\-]+)")


def _matching(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    depth, close = 0, pairs[text[start]]
    for i in range(start, len(text)):
        if text[i] == text[start]:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {text[start]!r} in HLO: {text[:80]!r}")


def parse_shape(text: str) -> Shape:
    text = text.strip()
    if text.startswith("("):
        inner = text[1 : _matching(text, 0)]
        parts, depth, start = [], 0, 0
        for i, ch in enumerate(inner):
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(inner[start:i])
                start = i + 1
        parts.append(inner[start:])
        return Shape(parts=tuple(parse_shape(p) for p in parts if p.strip()))
    m = _ARRAY.match(text)
    if not m:
        return Shape("token" if text.startswith("token") else "", ())
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    layout = tuple(int(d) for d in (m.group(3) or "").split(",") if d)
    return Shape(m.group(1), dims, layout=layout)


def parse_instruction(line: str) -> Instruction | None:
    line = line.strip()
    root = line.startswith("ROOT ")
    if root:
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line[1:].split(" = ", 1)
    if rest.startswith("("):
        end = _matching(rest, 0)
        shape, rest = parse_shape(rest[: end + 1]), rest[end + 1 :].lstrip()
    else:
        shape_text, rest = rest.split(" ", 1)
        shape = parse_shape(shape_text)
    paren = rest.index("(")
    opcode = rest[:paren]
    close = _matching(rest, paren)
    operands = _NAME.findall(rest[paren + 1 : close])
    return Instruction(name, shape, opcode, operands, rest[close + 1 :], root)


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """{computation name: its instructions} and the entry computation's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        stripped = line.strip()
        header = re.match(r"(ENTRY )?%([\w.\-]+) \(.*\{$", stripped)
        if header and not line.startswith(" "):
            current = header.group(2)
            computations[current] = []
            if header.group(1):
                entry = current
        elif stripped == "}":
            current = None
        elif current is not None:
            instruction = parse_instruction(line)
            if instruction is not None:
                computations[current].append(instruction)
    if not entry:
        raise ValueError("no ENTRY computation in this HLO text")
    return computations, entry


# ---- costing instructions ------------------------------------------------------------------


def _attr_list(attrs: str, name: str) -> list[int]:
    m = re.search(name + r"=\{([\d,]*)\}", attrs)
    return [int(v) for v in m.group(1).split(",") if v] if m else []


def _dot_dims(inst: Instruction, shapes: dict[str, Shape]) -> dict[str, int]:
    """M, N, K and the batch size of a dot, from its operands and dimension numbers."""
    lhs, rhs = shapes[inst.operands[0]].dims, shapes[inst.operands[1]].dims
    lb, lc = (
        _attr_list(inst.attrs, "lhs_batch_dims"),
        _attr_list(inst.attrs, "lhs_contracting_dims"),
    )
    rb, rc = (
        _attr_list(inst.attrs, "rhs_batch_dims"),
        _attr_list(inst.attrs, "rhs_contracting_dims"),
    )
    batch = math.prod(lhs[i] for i in lb)
    k = math.prod(lhs[i] for i in lc)
    m = math.prod(d for i, d in enumerate(lhs) if i not in lb and i not in lc)
    n = math.prod(d for i, d in enumerate(rhs) if i not in rb and i not in rc)
    return {"m": m, "n": n, "k": k, "batch": batch}


def _conv_dims(inst: Instruction, shapes: dict[str, Shape]) -> dict[str, int]:
    """Sizes of a convolution: output elements, window taps, input features per group."""
    out = inst.shape.dims
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attrs)
    kernel = shapes[inst.operands[1]].dims
    groups = re.search(r"feature_group_count=(\d+)", inst.attrs)
    g = int(groups.group(1)) if groups else 1
    if labels:
        klab = labels.group(2)
        taps = math.prod(d for c, d in zip(klab, kernel) if c.isdigit())
        c_in = kernel[klab.index("i")]
        c_out = kernel[klab.index("o")]
    else:
        taps, c_in, c_out = math.prod(kernel[:-2]), kernel[-2], kernel[-1]
    return {"outputs": math.prod(out), "taps": taps, "c_in": c_in, "c_out": c_out, "groups": g}


def _window_size(attrs: str) -> int:
    m = re.search(r"window=\{size=([\dx]+)", attrs)
    return math.prod(int(v) for v in m.group(1).split("x")) if m else 1


def _flops(inst: Instruction, shapes: dict[str, Shape]) -> float:
    op = inst.opcode
    if op == "dot":
        d = _dot_dims(inst, shapes)
        return 2.0 * d["m"] * d["n"] * d["k"] * d["batch"]
    if op == "convolution":
        d = _conv_dims(inst, shapes)
        return 2.0 * d["outputs"] * d["taps"] * d["c_in"]
    if op == "reduce-window":
        return float(inst.shape.elements * _window_size(inst.attrs))
    if op in ("reduce", "reduce-precision"):
        return float(
            sum(shapes[o].elements for o in inst.operands[: max(1, len(inst.operands) // 2)])
        )
    if op in ELEMENTWISE_FLOPS:
        return float(inst.shape.elements)
    return 0.0


_CLASS_OF_OP = {
    "dot": "matmul",
    "convolution": "conv",
    "reduce-window": "reduce_window",
    "select-and-scatter": "reduce_window",
    "reduce": "reduction",
    "gather": "gather",
    "scatter": "scatter",
    "dynamic-update-slice": "dynamic_update_slice",
    "dynamic-slice": "dynamic_slice",
    "copy": "copy",
    "transpose": "copy",
    "sort": "sort",
    "custom-call": "custom_call",
}
# When a fusion holds several of these, the first in this order names its class.
_PRECEDENCE = (
    "dot", "convolution", "reduce-window", "select-and-scatter", "scatter", "gather",
    "dynamic-update-slice", "sort", "reduce", "dynamic-slice",
)  # fmt: skip


def _class(ops: Iterable[str]) -> str:
    ops = set(ops)
    for op in _PRECEDENCE:
        if op in ops:
            return _CLASS_OF_OP[op]
    work = ops - FREE - _DATA_MOVES
    if work and work <= {"copy", "transpose"}:
        return "copy"
    return "elementwise"


def _updated_in_place(p: str, uses: list[Instruction], local: dict[str, Shape]) -> bool:
    """Whether fusion parameter `p` is the target of in-place updates, read otherwise only
    by dynamic slices of the very region a dynamic-update-slice writes (as XLA requires
    to keep the buffer)."""
    updates = [u for u in uses if u.opcode in _IN_PLACE and u.operands[0] == p]
    if not updates:
        return False
    regions = {
        (tuple(u.operands[2:]), local[u.operands[1]].dims)
        for u in updates
        if u.opcode == "dynamic-update-slice"
    }
    return all(
        u in updates
        or (u.opcode == "dynamic-slice" and (tuple(u.operands[1:]), u.shape.dims) in regions)
        for u in uses
    )


def _fusion_bytes(inst: Instruction, body: list[Instruction]) -> tuple[float, float]:
    """(read, written) of a fusion: each parameter whole, unless it is only sliced (then
    what the slices take) or only the target of an in-place dynamic-update-slice, read
    at most by dynamic slices (then what those take: the update is read, and written,
    instead of the buffer)."""
    local = {i.name: i.shape for i in body}
    params = {i.name: i for i in body if i.opcode == "parameter"}
    users: dict[str, list[Instruction]] = {}
    for i in body:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    written = float(inst.shape.nbytes)
    read = 0.0
    in_place = 0.0
    for p, pi in params.items():
        uses = users.get(p, [])
        full = float(pi.shape.nbytes)
        if uses and all(
            u.opcode in ("slice", "dynamic-slice", "gather") and u.operands[0] == p for u in uses
        ):
            read += sum(float(u.shape.nbytes) for u in uses)
        elif _updated_in_place(p, uses, local):
            # The output is the buffer: only the update is written. Reading the old value
            # of the same slice first (a decoder's masked KV-cache write) keeps it so.
            updates = [u for u in uses if u.opcode in _IN_PLACE]
            update = sum(float(local[u.operands[_IN_PLACE[u.opcode]]].nbytes) for u in updates)
            in_place += full - update
            read += sum(float(u.shape.nbytes) for u in uses if u.opcode == "dynamic-slice")
        else:
            read += full
    return read, max(0.0, written - in_place)


@dataclasses.dataclass
class _Context:
    computations: dict[str, list[Instruction]]
    branch_fraction: float | None


def _computation_kernels(name: str, ctx: _Context, multiplier: int = 1) -> list[Kernel]:
    body = ctx.computations[name]
    shapes = {i.name: i.shape for i in body}
    out: list[Kernel] = []
    for inst in body:
        op = inst.opcode
        if op in FREE:
            continue
        if op == "fusion":
            called = re.search(r"calls=%([\w.\-]+)", inst.attrs).group(1)
            inner = ctx.computations[called]
            inner_shapes = {i.name: i.shape for i in inner}
            cls = _class(i.opcode for i in inner)
            flops = sum(_flops(i, inner_shapes) for i in inner)
            read, written = _fusion_bytes(inst, inner)
            dims = _copy_dims(inner) if cls == "copy" else ()
            # A fusion of a dot and a convolution is the kind of its larger one.
            heavy = [i for i in inner if i.opcode in ("dot", "convolution")]
            if heavy:
                anchor = max(heavy, key=lambda i: _flops(i, inner_shapes))
                cls, dims = _CLASS_OF_OP[anchor.opcode], _dims(anchor, inner_shapes)
            out.append(Kernel(cls, flops, read, written, dims, multiplier, inst.name))
        elif op == "while":
            body_name = re.search(r"body=%([\w.\-]+)", inst.attrs).group(1)
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attrs)
            n = int(trips.group(1)) if trips else 1
            out += _computation_kernels(body_name, ctx, multiplier * n)
        elif op == "conditional":
            branches = re.search(r"branch_computations=\{([^}]*)\}", inst.attrs)
            names = _NAME.findall(branches.group(1)) if branches else []
            if not names:
                names = re.findall(r"(?:true|false)_computation=%([\w.\-]+)", inst.attrs)
            options = [_computation_kernels(b, ctx, multiplier) for b in names]
            heavy = max(options, key=lambda ks: sum(k.flops + k.bytes for k in ks), default=[])
            light = min(options, key=lambda ks: sum(k.flops + k.bytes for k in ks), default=[])
            if ctx.branch_fraction is None or heavy is light:
                out += heavy
            else:  # the heavy branch runs this often, the light one the rest
                f = ctx.branch_fraction
                out += [dataclasses.replace(k, count=k.count * f) for k in heavy]
                out += [dataclasses.replace(k, count=k.count * (1 - f)) for k in light]
        elif op in ("call", "async-start"):
            called = re.search(r"(?:to_apply|calls)=%([\w.\-]+)", inst.attrs)
            if called:
                out += _computation_kernels(called.group(1), ctx, multiplier)
        else:
            cls = _CLASS_OF_OP.get(op) or (
                "collective"
                if op in COLLECTIVES
                else "elementwise"
                if op in ELEMENTWISE_FLOPS or op in _DATA_MOVES
                else "other"
            )
            read = float(sum(shapes[o].nbytes for o in inst.operands if o in shapes))
            written = float(inst.shape.nbytes)
            if op in _IN_PLACE and len(inst.operands) > _IN_PLACE[op]:  # in place
                read -= float(shapes[inst.operands[0]].nbytes)
                written = float(shapes[inst.operands[_IN_PLACE[op]]].nbytes)
            elif op in ("dynamic-slice", "slice", "gather") and inst.operands:
                read = read - float(shapes[inst.operands[0]].nbytes) + written
            dims = _dims(inst, shapes) if op in ("dot", "convolution") else ()
            if cls == "copy":
                dims = _copy_dims([i for i in body if i.name in inst.operands] + [inst], inst)
            out.append(
                Kernel(cls, _flops(inst, shapes), read, written, dims, multiplier, inst.name)
            )
    return out


def _copy_dims(body: list[Instruction], root: Instruction | None = None):
    """(("run", n),) for a copy or transpose that keeps its source's contiguous dimension
    contiguous (it moves rows of n elements: a block copy), () for one that does not (a
    true transpose, element by element) or that cannot be traced (through a bitcast)."""
    by_name = {i.name: i for i in body}
    inst = root or next((i for i in body if i.root), None)
    if inst is None or inst.shape.parts:
        return ()
    dim = inst.shape.minor  # follow the output's contiguous dimension back to its source
    while inst.opcode in ("copy", "transpose") and dim is not None:
        if inst.opcode == "transpose":
            perm = _attr_list(inst.attrs, "dimensions")
            dim = perm[dim] if dim < len(perm) else None
        src = by_name.get(inst.operands[0]) if inst.operands else None
        if src is None:
            return ()
        inst = src
    if dim is None or dim != inst.shape.minor:  # the source as stored (a bitcast's too)
        return ()
    return (("run", inst.shape.dims[dim]),)


def _dims(inst: Instruction, shapes: dict[str, Shape]) -> tuple[tuple[str, int], ...]:
    d = _dot_dims(inst, shapes) if inst.opcode == "dot" else _conv_dims(inst, shapes)
    return tuple(sorted(d.items()))


def extract(hlo_text: str, branch_fraction: float | None = None) -> list[Kernel]:
    """The kernels of an optimized HLO module, identical ones merged (with their count).

    `branch_fraction`: how often a conditional runs its costlier branch (an MoE layer
    that skips the experts no token picked runs the expert branch for the touched share
    of experts); None: always.
    """
    computations, entry = parse_module(hlo_text)
    kernels = _computation_kernels(entry, _Context(computations, branch_fraction))
    merged: dict[tuple, Kernel] = {}
    for k in kernels:
        key = (k.cls, k.flops, k.bytes_read, k.bytes_written, k.dims)
        if key in merged:
            merged[key] = dataclasses.replace(merged[key], count=merged[key].count + k.count)
        else:
            merged[key] = k
    return list(merged.values())


def totals(kernels: Iterable[Kernel]) -> dict[str, float]:
    """FLOPs, bytes and the number of kernels launched, over a kernel list."""
    kernels = list(kernels)
    return {
        "flops": sum(k.flops * k.count for k in kernels),
        "bytes": sum(k.bytes * k.count for k in kernels),
        "kernels": sum(k.count for k in kernels),
    }


def of_compiled(compiled, branch_fraction: float | None = None) -> list[Kernel]:
    """The kernels of an AOT-compiled executable (jax.stages.Compiled)."""
    return extract(compiled.as_text(), branch_fraction)


def dumps(kernels: list[Kernel]) -> str:
    return json.dumps([k.as_dict() for k in kernels])
