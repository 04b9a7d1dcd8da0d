"""The layering contract, read from the source: every ``import`` and ``from ... import`` statement
of every file under ``src/edvae``, at any depth (module level, inside functions, under
``TYPE_CHECKING``), is an edge of a graph over files.

* The mathematics (``edvae.priors``, ``edvae.estimators``, ``edvae.objectives``, each a module or
  a package) imports nothing from edvae but ``edvae.errors``, ``edvae.registry``,
  ``edvae.numeric_files`` (the torch-free file reader prior samples share with the data layer)
  and each other.
* The graph has no cycles.

``import edvae.a.b`` and ``from edvae.a import b`` name the file ``edvae/a/b.py`` when it exists
(or the package ``edvae/a/b/__init__.py``), else the longest existing prefix (``edvae/a.py`` or
``edvae/a/__init__.py``). Importing a submodule runs its parent packages' ``__init__`` too, but that
is not counted as an edge: a package's ``__init__`` re-exporting its children would otherwise make
every child that imports a sibling part of a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "edvae"

#: The mathematics and what it may import from edvae (besides itself).
MATHEMATICS = (
    "edvae.priors",
    "edvae.estimators",
    "edvae.estimator_names",
    "edvae.objectives",
    "edvae.objective_kinds",
    "edvae.critics",
    "edvae.disentanglement",
)
MATHEMATICS_MAY_IMPORT = ("edvae.errors", "edvae.registry", "edvae.numeric_files")

#: Edges ``(importer, imported)`` allowed to close a cycle, each with a comment saying why and
#: who removes it. Empty: there are none today.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The file (module name) that importing ``name`` loads last: its longest known prefix."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Fully qualified names of everything the file imports, at any depth: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a.b`` (a submodule or a name defined in ``a``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: from the file's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                source = f"{base}.{source}" if source else base
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """``graph[a]`` = the edvae files that file ``a`` imports (itself excluded)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        names = _imported_names(tree, module, path.name == "__init__.py")
        targets = {_resolve(name, modules) for name in names if name.split(".")[0] == "edvae"}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_graph_sees_every_kind_of_import():
    """The graph is read correctly: function-level, TYPE_CHECKING and relative imports count,
    and ``from pkg import submodule`` points at the submodule."""
    modules = {
        "edvae": Path("x"),
        "edvae.errors": Path("x"),
        "edvae.data": Path("x"),
        "edvae.data.splits": Path("x"),
        "edvae.data.ground_truth": Path("x"),
    }
    source = """
from typing import TYPE_CHECKING
from . import splits
from .splits import DataSplits
if TYPE_CHECKING:
    from edvae.data import GroundTruth
def f():
    import edvae.errors
    from edvae import __version__
"""
    names = _imported_names(ast.parse(source), "edvae.data.ground_truth", False)
    resolved = {_resolve(n, modules) for n in names if n.startswith("edvae")}
    assert resolved == {"edvae.data.splits", "edvae.data", "edvae.errors", "edvae"}
    assert (
        _resolve("edvae.priors.base.Prior", {"edvae.priors": Path("x"), "edvae.priors.base": Path("x")})
        == "edvae.priors.base"
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_graph_covers_the_package():
    graph = import_graph()
    assert {"edvae", "edvae.errors", "edvae.estimators", "edvae.evaluate", "edvae.data.splits"} <= set(graph)
    objectives = [m for m in graph if _within(m, ("edvae.objectives",))]
    assert any(_within(t, ("edvae.estimators",)) for m in objectives for t in graph[m])


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _within(m, MATHEMATICS)))
def test_mathematics_imports_nothing_above_it(module):
    """priors, estimators and objectives import from edvae only :data:`MATHEMATICS_MAY_IMPORT` and each other."""
    above = sorted(t for t in import_graph()[module] if not _within(t, MATHEMATICS + MATHEMATICS_MAY_IMPORT))
    assert above == [], f"{module} imports {above}: the mathematics must not depend on the layers above it"


def test_no_import_cycles():
    """No cycle among edvae's files, counting imports inside functions and under TYPE_CHECKING."""
    graph = {m: {t for t in targets if (m, t) not in KNOWN_CYCLE_EDGES} for m, targets in import_graph().items()}
    cycles = _cycles(graph)
    assert cycles == [], "import cycles among edvae files: " + "; ".join(" <-> ".join(c) for c in cycles)
