"""The package's layers, read from its imports (every import, also inside functions; imports
under ``if TYPE_CHECKING:`` are annotations only and do not count):

    ops, comm, checks, kernels  <  data  <  models  <  method  <  eval  <  train  <  experiments
                        <  the command-line entry modules (evaluate, predict, info, compare)

A module may import its own layer and the layers below it, never a higher one, and no modules
import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hermes"
# Kept one row per group of levels (the layer diagram, bottom to top); the formatter would put
# every entry on its own line.
LAYERS = {
    "ops": 0, "comm": 0, "checks": 0, "kernels": 0, "_C": 0, "__init__": 0,
    "data": 1, "models": 2, "method": 3, "eval": 4, "train": 5, "experiments": 6,
    "evaluate": 7, "predict": 7, "info": 7, "compare": 7,
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[str]:
    """Every ``hermes...`` module a file imports (``from hermes.x import y`` gives ``hermes.x``
    and ``hermes.x.y``; the caller keeps the ones that are modules)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.split(".")[0] == "hermes")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "hermes":
                found.append(node.module)
                found.extend(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    packages = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for imported in _imports(ast.parse(path.read_text(), str(path))):
            if imported in files or _component(imported) in ("kernels", "_C"):
                targets.add(imported)
            elif imported.rsplit(".", 1)[0] == "hermes" and imported not in files:
                targets.add("hermes")  # an attribute of the root package (__version__)
        graph[name] = targets - {name}
    graph["__packages__"] = packages  # type: ignore[assignment]
    return graph


def test_no_import_from_a_higher_layer() -> None:
    graph = _graph()
    graph.pop("__packages__")
    wrong = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if LAYERS[_component(target)] > LAYERS[_component(source)]:
                wrong.append(f"{source} imports {target}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)
    assert len(graph) > 50  # the whole package was read


def test_no_import_circle() -> None:
    """Package ``__init__`` modules are left out: importing a package's own submodules from its
    ``__init__`` is how packages are made, and Python resolves those."""
    graph = _graph()
    packages = graph.pop("__packages__")
    edges = {
        s: {t for t in ts if t not in packages and t in graph}
        for s, ts in graph.items()
        if s not in packages
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)
