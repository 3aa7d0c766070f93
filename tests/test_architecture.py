"""The house rules a newcomer relies on, checked on the source: imports point downward
(bakehouse -> flows -> repo_store -> targets), no function runs past 80 lines, and nothing outside
repo_store reaches into its private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["targets", "repo_store", "flows", "bakehouse"]  # each may import only those before it
MAX_FUNCTION_LINES = 80


def _modules(layer: str) -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted((ROOT / layer).rglob("*.py"))]


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_downward(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    found = {f"{path.relative_to(ROOT)} imports {name}" for path, tree in _modules(layer)
             for name in _imported(tree) if name.split(".")[0] in above}
    assert not found


def test_no_function_is_longer_than_80_lines():
    long = {f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for layer in LAYERS for path, tree in _modules(layer) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long


def test_nothing_outside_repo_store_imports_its_private_names():
    outside = [m for layer in ("flows", "bakehouse") for m in _modules(layer)]
    outside += [(path, ast.parse(path.read_text())) for folder in ("tests", "bench") for path in (ROOT / folder).rglob("*.py")]
    found = {f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}" for path, tree in outside
             for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("repo_store")
             for alias in node.names if alias.name.startswith("_")}
    found |= {f"{path.relative_to(ROOT)}: {node.value}" for path, tree in outside for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("repo_store.")
              and any(part.startswith("_") and not part.startswith("__") for part in node.value.split("."))}
    assert not found
