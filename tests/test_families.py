"""Every registered family's analytic cost against XLA and against its own weights.

The families are batchlab.workloads.REGISTRY: the built-in ones, plus the user modules
imported the way --family_modules imports them: tests/fault_family.py and any named in
$BATCHLAB_FAMILY_MODULES (comma-separated), so a user can check a family of their own:
    BATCHLAB_FAMILY_MODULES=my_family pytest tests/test_families.py
At each of a family's examples (Family.examples), at batch BATCH, two checks:
- XLA's FLOPs (compile_ahead(...).cost_analysis["flops"]) over the analytic FLOPs lie in
  the family's range in KNOWN, whose entry says why they differ (DEFAULT without one);
- the bytes of the weights' shapes, less what KNOWN says a call does not read, equal the
  analytic weight_bytes;
- the FLOPs of the kernels read from the optimized HLO (batchlab.kernels) over XLA's lie
  in KNOWN's kernel range, so the per-kernel model prices all the work XLA counts.
Float32 only: XLA:CPU upcasts bf16, which adds converts (tests/test_mlp.py checks that).
"""

import dataclasses
import math
import os
from collections.abc import Callable

import jax
import pytest

from batchlab import kernels, timing, workloads
from batchlab.numerics import Numerics

USER_MODULES = ["fault_family"]
USER_MODULES += [m for m in os.environ.get("BATCHLAB_FAMILY_MODULES", "").split(",") if m]
workloads.import_family_modules(USER_MODULES)

BATCH = 2  # more than one, so a cost that ignores the batch shows; not a fault batch
NUMERICS = Numerics()
# Defaults this small may stand in for a family's missing examples.
SMALL_FLOPS, SMALL_WEIGHT_BYTES = 1e8, 2**20


def nbytes(tree) -> int:
    """Bytes of a pytree's arrays, from their shapes (jax.eval_shape) alone."""
    shapes = jax.tree.leaves(jax.eval_shape(lambda: tree))
    return sum(math.prod(s.shape) * s.dtype.itemsize for s in shapes)


def subtrees(tree, key: str) -> list:
    """Every value stored under `key` in a tree of nested dicts."""
    if not isinstance(tree, dict):
        return []
    found = [tree[key]] if key in tree else []
    return found + [t for k, v in tree.items() if k != key for t in subtrees(v, key)]


# ---- what each family is known to count differently -------------------------------------


def _none(weights, point, batch) -> float:
    return 0


def _lookup_tables(weights, point, batch) -> float:
    """An untied input embedding and learned positions: a lookup reads only b·S rows of
    them, which the decoder cost counts as activations (the tied table is read whole)."""
    params = weights["params"]
    untied = point["embeddings"] == "untied"
    return nbytes(params["embed"]) * untied + nbytes(params.get("pos_embed", {}))


def _unread_experts(weights, point, batch) -> float:
    """The experts no token picked: of E, E·(1 − (1 − k/E)^n) are read for n tokens under
    uniform token choice (REFERENCE 2.7), all of them under expert choice; and the
    selection bias (E fp32 per MoE layer), which is read but too small to count."""
    e, k = point["experts"], point["top_k"]
    tokens = batch * point.get("prompt_len", 1)
    read = e if point["router"] == "expert_choice" else e * (1 - (1 - k / e) ** tokens)
    experts = sum(nbytes(t) for t in subtrees(weights["params"], "experts"))
    return experts * (1 - read / e) + nbytes(weights["balance"])


@dataclasses.dataclass(frozen=True)
class Known:
    """How a family's analytic cost differs from XLA's count and from its weights."""

    flops: tuple[float, float]  # the allowed range of XLA's FLOPs / the analytic FLOPs
    why: str
    # Bytes of the weights a call does not read (weights, point, batch): held, not counted.
    unread: Callable[[dict, dict, int], float] = _none
    # The allowed range of the kernels' FLOPs (every branch run) / XLA's, and why.
    kernel_flops: tuple[float, float] = (1.0, 1.01)
    kernel_why: str = "the kernels' dots and fusions count what XLA's cost analysis counts"


_ALL_TAPS = (
    "a convolution kernel counts every tap of its window; XLA's cost analysis skips the "
    "taps that land on SAME padding (1.19 on 8x8 with 3x3 kernels)"
)
_DECODER_FLOPS = "XLA also counts softmax, norms, rotary and the mask (a few percent)"
KNOWN = {
    "mlp": Known((1.0, 1.0), "matmuls, bias adds and ReLUs, counted alike"),
    "conv": Known(
        (0.8, 1.0),
        "SAME padding: XLA skips the taps that land on padding, so its count is lower on "
        "small images (0.84 on 8x8 with 3x3 kernels); equal for VALID. "
        "tests/test_convnets.py counts the skipped taps exactly",
        kernel_flops=(1.0, 1.25),
        kernel_why=_ALL_TAPS,
    ),
    "pooling": Known(
        (1.0, 1.0),
        "k²−1 comparisons, or k²−1 adds and a divide, per output",
        kernel_flops=(1.0, 1.15),
        kernel_why="a reduce-window kernel counts k² operations per output, XLA k²−1",
    ),
    "resnet50": Known(
        (0.75, 1.0),
        "SAME padding as for conv, in the 7x7 stem and the 3x3 convs (0.81 at 32x32); batch "
        "norm folds its statistics once per channel and XLA:CPU rewrites a few ops (<2%)",
        kernel_flops=(1.0, 1.2),
        kernel_why=f"{_ALL_TAPS}, in the stem and the 3x3 convs",
    ),
    "decode": Known((1.0, 1.2), _DECODER_FLOPS, _lookup_tables),
    "prefill": Known((1.0, 1.2), _DECODER_FLOPS, _lookup_tables),
    "moe_layer": Known(
        (1.0, 1.45),
        "the slots dispatch runs each expert some copy reached on its C slots: the analytic "
        "count expects E·(1 − (1 − k/E)^B) of them to run (3 of 4 at 2 tokens), XLA counts "
        "every expert's branch (4/3 here), plus the router's softmax, top-k and the combine. "
        "The cost follows the dispatch (tests/test_moe.py): sorted counts its chunk padding "
        "in XLA (16x) and ragged lowers to dense work on CPU (4x), so examples use slots",
        _unread_experts,
    ),
    "moe_decode": Known(
        (1.0, 1.45),
        f"{_DECODER_FLOPS}; the MoE layers as for moe_layer",
        lambda w, p, b: _lookup_tables(w, p, b) + _unread_experts(w, p, b),
    ),
    "moe_prefill": Known(
        (1.0, 1.45),
        f"{_DECODER_FLOPS}; the MoE layers as for moe_layer",
        lambda w, p, b: _lookup_tables(w, p, b) + _unread_experts(w, p, b),
    ),
}
DEFAULT = Known(
    (0.9, 1.1),
    "no entry in KNOWN for this family: within 10%; add one with the reason if it differs",
)


# ---- the cases ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    family: workloads.Family
    point: dict
    batch: int
    problem: str = ""  # why the family has no case to check: the test fails with it

    @property
    def id(self) -> str:
        return f"{self.family.name}-b{self.batch}" if not self.problem else self.family.name


def cases(family: workloads.Family) -> list[Case]:
    """Its examples at BATCH; without any, its defaults at batches 1 and 2 if they are small."""
    defaults = {p.name: p.default[0] for p in family.params}
    examples = family.examples
    for i, example in enumerate(examples):
        if unknown := set(example) - set(defaults):
            problem = f"{family.name}: example {i} sets unknown parameters {sorted(unknown)}"
            return [Case(family, {}, 0, problem)]
    if examples:
        return [Case(family, defaults | dict(e), BATCH) for e in examples]
    cost = family.cost(defaults, 2, NUMERICS)
    if cost.flops > SMALL_FLOPS or cost.weight_bytes > SMALL_WEIGHT_BYTES:
        problem = (
            f"{family.name}: no examples, and its defaults are not small ({cost.flops:.3g} "
            f"FLOPs, {cost.weight_bytes:.3g} weight bytes at batch 2): give its Family "
            "examples=(two small points, as overrides of the defaults)"
        )
        return [Case(family, {}, 0, problem)]
    return [Case(family, defaults, 1), Case(family, defaults, 2)]


def checked(family: workloads.Family) -> bool:
    """A built-in family or one of USER_MODULES'; the test-only families that other test
    modules register to fail on purpose (tests/device_fault_family.py) are not checked."""
    module = getattr(family.build, "__module__", "") or ""
    return module.startswith("batchlab.") or module.rsplit(".", 1)[-1] in USER_MODULES


CHECKED = [family for family in workloads.REGISTRY.values() if checked(family)]
CASES = [case for family in CHECKED for case in cases(family)]


def _ids(cases_: list[Case]) -> list[str]:
    """Case ids, numbered per family."""
    counts: dict[str, int] = {}
    ids = []
    for c in cases_:
        counts[c.family.name] = counts.get(c.family.name, -1) + 1
        ids.append(f"{c.id}-{counts[c.family.name]}")
    return ids


@pytest.fixture(scope="module", params=CASES, ids=_ids(CASES))
def built(request):
    """(case, workload), built once for both checks (the build is most of the time)."""
    case = request.param
    if case.problem:
        pytest.fail(case.problem)
    case.family.validate(case.point)
    return case, case.family.build(case.point, case.batch, NUMERICS, jax.random.PRNGKey(0))


def test_flops_match_cost_analysis(built):
    case, work = built
    known = KNOWN.get(case.family.name, DEFAULT)
    compiled = timing.compile_ahead(work.fn, (work.weights, *work.inputs), work.donate_argnums)
    xla, analytic = compiled.cost_analysis, work.cost.flops
    assert "flops" in xla, f"no FLOPs in cost_analysis: {xla}"
    lo, hi = known.flops
    assert lo * analytic <= xla["flops"] <= hi * analytic, (
        f"XLA/analytic FLOPs = {xla['flops'] / analytic:.4f}, outside [{lo}, {hi}]: {known.why}"
    )
    counted = kernels.totals(kernels.of_compiled(compiled.compiled))["flops"]
    lo, hi = known.kernel_flops
    assert lo * xla["flops"] <= counted <= hi * xla["flops"], (
        f"kernel/XLA FLOPs = {counted / xla['flops']:.4f}, outside [{lo}, {hi}]: {known.kernel_why}"
    )


def test_weight_bytes_match_the_weights_shapes(built):
    case, work = built
    known = KNOWN.get(case.family.name, DEFAULT)
    unread = known.unread(work.weights, case.point, case.batch)
    held = nbytes(work.weights)
    assert 0 <= unread <= held
    assert work.cost.weight_bytes == pytest.approx(held - unread, rel=1e-9), (
        f"weights hold {held} bytes, {unread:.0f} of them not read per call; "
        f"the analytic cost reads {work.cost.weight_bytes}"
    )


# ---- the cases themselves ----------------------------------------------------------------


def test_every_registered_family_has_cases():
    assert {c.family.name for c in CASES} == {f.name for f in CHECKED}
    assert "fault" in {f.name for f in CHECKED}  # registered through import_family_modules
    assert {"mlp", "decode", "moe_layer"} <= {f.name for f in CHECKED}


def test_a_family_without_examples_uses_small_defaults_or_asks_for_them():
    fault = dataclasses.replace(workloads.REGISTRY["fault"], examples=())
    small = cases(fault)
    assert [(c.point, c.batch, c.problem) for c in small] == [
        ({"size": 16}, 1, ""),
        ({"size": 16}, 2, ""),
    ]
    size = dataclasses.replace(fault.params[0], default=(4096,))
    (big,) = cases(dataclasses.replace(fault, params=(size,)))
    assert "no examples, and its defaults are not small" in big.problem
    assert "examples=" in big.problem
    (typo,) = cases(dataclasses.replace(fault, examples=({"sizes": 8},)))
    assert "unknown parameters ['sizes']" in typo.problem
