"""The library's import graph, from an AST walk of every file under batchlab/: no import
circles, no import from a higher layer, a layer for every module, and never absl.flags
or experiments (the library neither reads flags nor starts scripts).

Every import counts, at module level or inside a function: `import x`, `from x import y`
(y a module: an edge to it and to the package x; else to x), relative imports, and
importlib.import_module / __import__ of a constant name.
"""

import ast
import dataclasses
import pathlib
import textwrap

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "batchlab"

# Bottom first; a module's layer is its first name under batchlab (batchlab.moe.routing:
# "moe"). A module may import from its own layer (without a circle) and from those below.
LAYERS = [
    ("errors", "numerics", "cost", "files", "faults"),
    ("roofline", "hardware", "provenance", "kernels", "kernel_model"),
    ("timing", "calibration", "distributed", "profile"),
    ("moe",),  # pure MoE kernels: routing, dispatch, balance, cost, expert_parallel
    ("models",),  # Flax modules; know nothing of timing or results
    ("autotune", "router_checkpoint", "workloads"),
    ("record", "results", "config"),
    ("sweep", "isolation", "worker", "combine", "train", "dry_run"),
    ("analysis",),
    ("summary", "plotting", "claims", "routing_report", "serving", "export"),
    ("report", "reproduce"),
]
FORBIDDEN = ("absl.flags", "experiments")


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. "batchlab.moe.cost"
    name: str  # absolute dotted name imported
    where: str  # file:line


@dataclasses.dataclass
class Findings:
    circles: list[list[str]]  # each: one cycle of modules, the first repeated at the end
    upward: list[str]
    unplaced: list[str]
    forbidden: list[str]
    shadowed: list[str]


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _constant_import(node: ast.Call) -> str | None:
    """The name in importlib.import_module("x") or __import__("x"), if constant."""
    f = node.func
    named = (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id in ("import_module", "__import__")
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        return node.args[0].value if isinstance(node.args[0].value, str) else None
    return None


def imports_of(path: pathlib.Path, root: pathlib.Path, modules: set[str]) -> list[Import]:
    """Every import in one file, as absolute names (a `from` import of a module: that module)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, where) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                is_module = full in modules or full in FORBIDDEN
                found.append(Import(module, full if is_module else base, where))
                if is_module and base in modules:
                    # `from pkg import sub` runs pkg/__init__.py and takes a name from it:
                    # an edge to the package too (the stop hook counts it the same way).
                    found.append(Import(module, base, where))
        elif isinstance(node, ast.Call) and (name := _constant_import(node)):
            found.append(Import(module, name, where))
    return found


def resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module that `name` starts with (batchlab.workloads.base.Cost:
    batchlab.workloads.base), or None for a name outside the package."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def layer_of(module: str) -> str:
    return module.split(".")[1]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module (breadth first: a shortest one)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {component}")


def check(root: pathlib.Path, layers=LAYERS) -> Findings:
    """Everything wrong with the imports of the package at `root`."""
    files = sorted(root.rglob("*.py"))
    names = [module_name(p, root) for p in files]
    modules = set(names)
    shadowed = [
        f"{p.relative_to(root.parent)} is shadowed by the package "
        f"{p.with_suffix('').relative_to(root.parent)}/: it can never be imported; delete it"
        for p, name in zip(files, names)
        if p.name != "__init__.py" and names.count(name) > 1
    ]
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    unplaced = sorted(
        {
            f"{root.name}.{layer_of(m)}: no layer; add it to LAYERS in tests/test_layers.py"
            for m in modules
            if m != root.name and layer_of(m) not in rank
        }
    )
    graph: dict[str, set[str]] = {m: set() for m in modules}
    upward, forbidden = [], []
    for path in files:
        for imp in imports_of(path, root, modules):
            if any(imp.name == f or imp.name.startswith(f + ".") for f in FORBIDDEN):
                forbidden.append(f"{imp.where}: {imp.importer} imports {imp.name}")
            target = resolve(imp.name, modules)
            if target is None or target == imp.importer:
                continue
            graph[imp.importer].add(target)
            if target == root.name:  # the root package is checked to import nothing
                continue
            if imp.importer == root.name:
                upward.append(f"{imp.where}: the root package imports {target}")
                continue
            a, b = layer_of(imp.importer), layer_of(target)
            if a in rank and b in rank and rank[b] > rank[a]:
                upward.append(
                    f"{imp.where}: {imp.importer} (layer {a!r}) imports {target} "
                    f"(layer {b!r}, higher)"
                )
    circles = [cycle_in(c, graph) for c in strongly_connected(graph) if len(c) > 1]
    return Findings(circles, sorted(set(upward)), unplaced, sorted(set(forbidden)), shadowed)


def _lines(items) -> str:
    return "\n".join(" -> ".join(i) if isinstance(i, list) else i for i in items)


# ---- the library ---------------------------------------------------------------------------


def test_no_import_circles():
    circles = check(PACKAGE).circles
    assert not circles, f"import circles:\n{_lines(circles)}"


def test_no_import_from_a_higher_layer():
    upward = check(PACKAGE).upward
    assert not upward, f"imports from a higher layer:\n{_lines(upward)}"


def test_every_module_has_a_layer():
    findings = check(PACKAGE)
    assert not findings.unplaced, _lines(findings.unplaced)
    assert not findings.shadowed, _lines(findings.shadowed)


def test_library_never_imports_flags_or_experiments():
    forbidden = check(PACKAGE).forbidden
    assert not forbidden, f"the library reads no flags and starts no scripts:\n{_lines(forbidden)}"


# ---- the checker can say no ----------------------------------------------------------------


def write_package(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A package `batchlab` under `root` with the given {relative path: source}."""
    for rel, source in files.items():
        path = root / "batchlab" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "batchlab"


def test_checker_finds_circles_and_upward_imports(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "",
            # A circle inside one layer, one side imported inside a function, relatively.
            "sweep.py": "from batchlab import isolation\n",
            "isolation.py": "def run():\n    from . import sweep\n",
            # A circle across packages, relative on one side.
            "moe/__init__.py": "",
            "moe/cost.py": "from ..models.mlp import MLP\n",
            "models/__init__.py": "",
            "models/mlp.py": "import batchlab.moe.cost\n",
            # Upward: errors (the bottom) reads the report.
            "errors.py": "from batchlab.report.markdown import table\n",
            "report/__init__.py": "",
            "report/markdown.py": "import json\n",
            # A circle through importlib, upward on that side.
            "cost.py": "import importlib\nimportlib.import_module('batchlab.summary')\n",
            "summary.py": "from batchlab import cost\n",
            # Within a layer, no circle: allowed.
            "numerics.py": "from batchlab.errors import ConfigError\n",
            # A package whose __init__ imports its child, and the child takes a sibling
            # through the package (running its __init__): a circle.
            "claims/__init__.py": "from batchlab.claims import mlp\n",
            "claims/mlp.py": "from batchlab.claims import verdict\n",
            "claims/verdict.py": "",
        },
    )
    found = check(root)
    assert sorted(found.circles) == [
        ["batchlab.claims", "batchlab.claims.mlp", "batchlab.claims"],
        ["batchlab.cost", "batchlab.summary", "batchlab.cost"],
        ["batchlab.isolation", "batchlab.sweep", "batchlab.isolation"],
        ["batchlab.models.mlp", "batchlab.moe.cost", "batchlab.models.mlp"],
    ]
    assert found.upward == [
        "batchlab/cost.py:2: batchlab.cost (layer 'cost') imports batchlab.summary "
        "(layer 'summary', higher)",
        "batchlab/errors.py:1: batchlab.errors (layer 'errors') imports "
        "batchlab.report.markdown (layer 'report', higher)",
        "batchlab/moe/cost.py:1: batchlab.moe.cost (layer 'moe') imports batchlab.models.mlp "
        "(layer 'models', higher)",
    ]
    assert found.unplaced == found.forbidden == found.shadowed == []


def test_checker_finds_unplaced_forbidden_and_shadowed_modules(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "from batchlab import timing\n",
            "timing.py": "from absl import flags\n",
            "sweep.py": "def main():\n    import experiments.sweep\n",
            "newthing.py": "",
            "claims.py": "",
            "claims/__init__.py": "",
        },
    )
    found = check(root)
    assert found.unplaced == [
        "batchlab.newthing: no layer; add it to LAYERS in tests/test_layers.py"
    ]
    assert found.forbidden == [
        "batchlab/sweep.py:2: batchlab.sweep imports experiments.sweep",
        "batchlab/timing.py:1: batchlab.timing imports absl.flags",
    ]
    assert found.shadowed == [
        "batchlab/claims.py is shadowed by the package batchlab/claims/: it can never be "
        "imported; delete it"
    ]
    assert found.upward == ["batchlab/__init__.py:1: the root package imports batchlab.timing"]
