"""
The package's import contract (``[tool.importlinter]`` in pyproject.toml, docs/architecture.md),
checked with import-linter: the layers point down (the surface-finding algorithm imports no
accelerator, the engine no task, the library no command line) and no package has an import
cycle among its modules. Also checked: the contract does fail on an upward import and on a
cycle, in a copy of the package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"import-linter is missing from the environment ({LINT_IMPORTS}): make env")
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "dvr_plugin", tmp_path / "dvr_plugin", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_upward_import_breaks_the_contract(package_copy: Path):
    # the algorithm reaching up into the accelerators: the cycle the layers removed
    root_finding = package_copy / "dvr_plugin/surface/root_finding.py"
    _append(root_finding, "from ..accel import occupancy_grid")
    result = _lint(package_copy)
    assert result.returncode != 0
    assert "Layers" in result.stdout and "BROKEN" in result.stdout
    assert "dvr_plugin.surface.root_finding -> dvr_plugin.accel" in result.stdout


def test_cycle_inside_a_package_breaks_the_contract(package_copy: Path):
    # two modules of one layer importing each other
    _append(package_copy / "dvr_plugin/surface/precision.py", "from . import secant")
    result = _lint(package_copy)
    assert result.returncode != 0
    assert "No import cycle" in result.stdout and "BROKEN" in result.stdout
