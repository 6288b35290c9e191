"""The package's import picture: no circles, and every arrow points down the layers.

Read from the source (imports inside functions count; ``if TYPE_CHECKING:`` blocks do not). An
import of the root package ``pplx_embed`` is no arrow by itself (Python loads it before any module
inside it), but a name taken from it (``from pplx_embed import Embedder``, ``pplx_embed.Embedder``) is
an arrow to the module that defines the name: the root ``__init__``'s lazy export is the one arrow up,
and nothing may use it to hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pplx_embed

ROOT = Path(pplx_embed.__file__).parent
# Bottom to top; modules of one layer may import each other (without circles) and anything below.
LAYERS = [
    {"errors", "checks", "atomic", "jsonl", "options", "wire"},
    {"model"},
    {"engine"},
    {"embedder"},
    {"client", "index", "eval"},
    {"serve", "train"},
    {"demo"},
    {"cli"},
    {"integrations"},
]


def _module_name(path: Path) -> str:
    parts = ["pplx_embed", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _root_exports() -> dict[str, str]:
    """Names the root package exports → the module defining each (``Embedder`` → ``pplx_embed.embedder``)."""
    return {name: getattr(pplx_embed, name).__module__ for name in pplx_embed.__all__
            if hasattr(getattr(pplx_embed, name), "__module__")}


def _runtime_imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    exports = _root_exports()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.extend([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
            if node.module == "pplx_embed":
                names.extend(exports[alias.name] for alias in node.names if alias.name in exports)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pplx_embed"
              and node.attr in exports):
            names.append(exports[node.attr])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported.startswith("pplx_embed.") and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough for a package)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if m != "pplx_embed" and _layer(m) is None] == []


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_arrows_point_down():
    graph = import_graph()
    up = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
          if a != "pplx_embed" and _layer(b) > _layer(a)]
    assert up == []


def test_the_package_never_reaches_outside_it():
    """Nothing in the package loads ``bench/`` or another script by path."""
    for path in ROOT.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "spec_from_file_location" not in text and "bench_" not in text, path
