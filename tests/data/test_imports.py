"""The data package's modules import one another in one direction only: no circle, counting the
imports made inside functions (a circle hidden there still couples the two modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import posttrain.data

PACKAGE = "posttrain.data"


def _data_imports(files: list[Path]) -> set[str]:
    """The posttrain.data modules (first level: ``tasks`` for anything under it) these files import."""
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[2] for a in node.names if a.name.startswith(PACKAGE + "."))
    return found


def _graph() -> dict[str, set[str]]:
    folder = Path(posttrain.data.__file__).parent
    modules = {path.stem: [path] for path in folder.glob("*.py") if path.stem != "__init__"}
    modules["tasks"] = sorted((folder / "tasks").rglob("*.py"))
    return {name: _data_imports(files) - {name} for name, files in modules.items()}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for neighbour in sorted(graph.get(node, ())):
            circle = visit(neighbour, [*path, node])
            if circle:
                return circle
        done.add(node)
        return None

    for start in sorted(graph):
        circle = visit(start, [])
        if circle:
            return circle
    return None


def test_data_modules_import_each_other_without_a_circle() -> None:
    graph = _graph()
    assert {"sources", "preferences", "feedback", "formats", "chat", "preflight"} <= set(graph)
    assert "preferences" not in graph["sources"]  # sources: rows in, rows out, nothing tokenized
    assert _circle(graph) is None, " -> ".join(_circle(graph) or [])


def test_the_circle_finder_finds_circles() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
