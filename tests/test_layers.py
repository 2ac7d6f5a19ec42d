"""The layout's promise: nas/ is layered, nothing imports upward, and no two modules import each other.

Every import in nas/ counts, wherever it sits (module top, inside a function, under ``TYPE_CHECKING``): an import
deferred to keep start-up fast still ties the two modules together. Registries that name code by string
(``nas.arch.builtin_ops``' builders, ``nas.search.strategy``'s registrations) are the one allowed way for a lower
layer to reach a higher one: they are plug-in points, read at run time."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

NAS = Path(__file__).resolve().parent.parent / "nas"

# Lowest first. A module may import its own layer and the layers below it. Inside nas.search the order of its
# sub-layers is the same rule: the shared search plumbing, then the black-box engine, then the strategies.
LAYERS = [
    ("foundation", ("nas", "nas.errors", "nas.files", "nas.run", "nas.progress")),
    ("arch", ("nas.arch",)),
    ("models", ("nas.models",)),
    ("data", ("nas.data",)),
    ("latency", ("nas.latency",)),
    ("train", ("nas.train",)),
    ("search", ("nas.search.strategy", "nas.search.report", "nas.search.finalize", "nas.search.gumbel",
                "nas.search.latency_loss", "nas.search")),
    ("search.blackbox", ("nas.search.blackbox",)),
    ("search.predict", ("nas.search.predict",)),
    ("search.methods", ("nas.search.dnas", "nas.search.quant", "nas.search.capacity")),
]
TORCH_FREE = ("nas.arch",)  # loading a YAML space or an arch needs no torch


def module_name(path: Path) -> str:
    parts = path.relative_to(NAS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in NAS.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The nas modules a file imports (``from pkg import submodule`` counts as the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return {m for m in found if m in known}


def runtime_imports(path: Path) -> set[str]:
    """Top-level packages a file imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # a package's own __init__ is not an edge: importing nas.x.y runs nas.x first anyway
        graph[name] = {m for m in imports_of(path, known) if m != name and not name.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_nothing_imports_upward():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert upward == []


def test_top_level_holds_only_the_foundation():
    top = sorted(p.name for p in NAS.glob("*.py"))
    assert len(top) <= 8, top


@pytest.mark.parametrize("package", TORCH_FREE)
def test_arch_layer_imports_no_torch(package):
    modules = {n: p for n, p in all_modules().items() if n == package or n.startswith(package + ".")}
    assert {n: "torch" for n, p in modules.items() if "torch" in runtime_imports(p)} == {}


TORCH_FREE_RUN = """
import sys
import numpy as np
from nas.arch import load_space
for name in ("fbnet", "fbnet_v2"):
    space = load_space(name, resolution=32, width_multiplier=0.5, classes=10, in_channels=1)
    arch = space.sample(np.random.default_rng(0))
    assert space.resolve(arch), name
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
print("no torch")
"""


def test_loading_spaces_and_resolving_archs_loads_no_torch():
    """The op registry declares its built-in ops without torch (builders by reference): parsing the ops of a space
    imports none of the torch modules that build them."""
    done = subprocess.run([sys.executable, "-c", TORCH_FREE_RUN], cwd=NAS.parent, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(NAS.parent)})
    assert done.returncode == 0 and done.stdout.strip() == "no torch", done.stderr[-2000:]


def test_cycle_finder_finds_a_cycle():  # the checks above pass only if this one can fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_stay_small():
    long = {module_name(p): n for p in NAS.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
