"""The layout guard (DESIGN.md rule 10): size budgets, import boundaries, no copied recipes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "posttrain"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
RECIPES = sorted(p for p in (PACKAGE / "recipes").glob("*.py") if p.name != "__init__.py")
PURE_MATH = [PACKAGE / "losses.py", PACKAGE / "advantages.py", PACKAGE / "eval" / "metrics.py"]
PURE_ALLOWED = {"torch", "math", "numpy", "__future__", "typing", "dataclasses", "collections"}
DOORS = {"ray": ("distributed",), "torch.distributed": ("distributed",), "vllm": ("rollout", "distributed")}
"""Who may import each distribution library: only distributed/ (posttrain/distributed) for ray and
torch.distributed, the rollout engines too for vllm."""


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_there_is_something_to_check() -> None:
    assert len(MODULES) > 10 and RECIPES


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_size(path: Path) -> None:
    limit = 300 if path in RECIPES else 600
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{_rel(path)} has {lines} lines (budget {limit}): split it"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_function_size(path: Path) -> None:
    too_long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit = 150 if (path in RECIPES and node.name == "train") else 80
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                too_long.append(f"{node.name} ({length} lines, budget {limit})")
    assert not too_long, f"{_rel(path)}: {', '.join(too_long)}"


@pytest.mark.parametrize("path", PURE_MATH, ids=_rel)
def test_math_modules_import_only_math(path: Path) -> None:
    assert path.exists(), f"{_rel(path)} is missing"
    foreign = [name for name in _imports(path) if name.split(".")[0] not in PURE_ALLOWED]
    assert not foreign, f"{_rel(path)} must stay pure (torch, math, numpy); it imports {foreign}"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_distribution_enters_through_two_doors(path: Path) -> None:
    """Only distributed/ may import ray or torch.distributed; the rollout engines may import vllm."""
    used = [n for n in _imports(path) for lib, doors in DOORS.items()
            if (n == lib or n.startswith(lib + ".")) and path.parent.name not in doors]
    assert not used, f"{_rel(path)} imports {used}: ray and torch.distributed go through distributed/"


def _substantial_lines(path: Path) -> set[str]:
    """Code lines of 12+ characters, without imports, docstrings, comments, signatures and the
    shared config sections (``model: ModelConfig = ...``), which the design asks every recipe for."""
    source = path.read_text()
    skip: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(
            node.value.value, str)
        is_section = (isinstance(node, ast.AnnAssign) and isinstance(node.annotation, ast.Name)
                      and node.annotation.id.endswith("Config"))
        if isinstance(node, ast.Import | ast.ImportFrom) or is_doc or is_section:
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            skip.update(range(node.lineno, node.body[0].lineno))
    lines = set()
    for number, line in enumerate(source.splitlines(), start=1):
        text = line.strip()
        if number in skip or len(text) < 12 or text.startswith("#"):
            continue
        lines.add(text)
    return lines


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipes_do_not_copy_each_other(path: Path) -> None:
    mine = _substantial_lines(path)
    for other in RECIPES:
        if other == path or not mine:
            continue
        shared = mine & _substantial_lines(other)
        share = len(shared) / len(mine)
        assert share <= 0.15, (f"{_rel(path)} shares {share:.0%} of its lines with {_rel(other)}: "
                               f"move the shared part to a shared module. e.g. {sorted(shared)[:5]}")
