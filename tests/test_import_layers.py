"""
The import layering of the core renderer, read from the source with :mod:`ast` (nothing is
imported): the surface-finding modules import no accelerator and nothing above them, and the
top-level modules of ``dvr_plugin`` import each other without a cycle. Imports inside functions
and under ``TYPE_CHECKING`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dvr_plugin"

# the surface-finding algorithm: the accelerators are handed to it, never imported
CORE = ("precision", "graph_cache", "secant", "root_finding", "surface_query")
ABOVE_CORE = ("acceleration", "march_graphs", "refine_graphs", "raysampler", "renderer")


def _top_level_modules(package: Path = PACKAGE) -> list[str]:
    """The names of the top-level ``dvr_plugin/*.py`` modules (not the subpackages)."""
    return sorted(path.stem for path in package.glob("*.py") if path.stem != "__init__")


def _imported_modules(name: str, package: Path = PACKAGE) -> set[str]:
    """The top-level ``dvr_plugin`` modules that module ``name`` imports, anywhere in its source."""
    tree = ast.parse((package / f"{name}.py").read_text(), filename=f"{name}.py")
    known = set(_top_level_modules(package))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "dvr_plugin" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[0] == "dvr_plugin":
                    if len(parts) > 1:
                        found.add(parts[1])
                    else:
                        found.update(alias.name for alias in node.names)
    return (found & known) - {name}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


@pytest.mark.parametrize("module", CORE)
def test_surface_finding_imports_no_accelerator(module):
    imported = _imported_modules(module)
    upward = sorted(imported & set(ABOVE_CORE))
    assert not upward, f"dvr_plugin/{module}.py imports {upward}"


def test_top_level_modules_have_no_import_cycle():
    graph = {name: _imported_modules(name) for name in _top_level_modules()}
    assert set(CORE) <= set(graph)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_function_level_and_type_checking_imports(tmp_path):
    """Imports inside functions and ``TYPE_CHECKING`` blocks are edges; a cycle is reported."""
    (tmp_path / "root_finding.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .acceleration import OccupancyGrid\n"
        "def f():\n    from dvr_plugin.march_graphs import MarchGraphs\n"
        "    import dvr_plugin.renderer\n    from . import secant\n"
    )
    for name in ("acceleration", "march_graphs", "renderer", "secant"):
        (tmp_path / f"{name}.py").write_text("from .root_finding import f\n" * (name == "secant"))
    imported = _imported_modules("root_finding", tmp_path)
    assert imported == {"acceleration", "march_graphs", "renderer", "secant"}
    graph = {name: _imported_modules(name, tmp_path) for name in _top_level_modules(tmp_path)}
    assert _find_cycle(graph) == ["root_finding", "secant", "root_finding"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
