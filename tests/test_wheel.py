"""
The built package, installed: sdist and wheel from ``python -m build``, the wheel installed into a
fresh virtual environment, and the ``dvr`` command, a render and the Implicitron registration run
from there, outside the source tree; and the wheel's declared dependencies against the modules
the package imports.

The fresh environment reuses the packages of the running one (torch, PyTorch3D, ...) through a
``.pth`` line naming its site-packages, so nothing is downloaded: the wheel goes in with
``--no-deps --no-index``. Directories listed in a ``.pth`` file are appended to ``sys.path`` without
running the ``.pth`` files inside them, so an editable install of the project in the running
environment stays invisible: ``dvr_plugin`` can only come from the wheel.

Frame and units of the render: PyTorch3D world and camera frames; a sphere of radius 0.3 (world
units) at the origin, seen from 1.5 units away along the camera's z axis.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytest.importorskip("build", reason="`build` (pinned in requirements.txt) is not installed")

REPO = Path(__file__).resolve().parents[1]
# What a source distribution of the package is made from (the rest of the repository is not).
SOURCE_FILES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE")
SOURCE_DIRS = ("dvr_plugin",)

pytestmark = pytest.mark.slow

RENDER_SCRIPT = textwrap.dedent(
    """
    import torch
    from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

    import dvr_plugin
    from dvr_plugin import DVRRenderer, SecantRaysampler


    def sphere(points, latent=None):
        # occupancy logits of the sphere of radius 0.3 at the origin (positive inside)
        return 20.0 * (0.3 - points.norm(dim=-1))


    R, T = look_at_view_transform(dist=1.5, elev=0.0, azim=0.0)
    cameras = FoVPerspectiveCameras(R=R, T=T, fov=45.0)
    renderer = DVRRenderer(
        field=sphere,
        raysampler=SecantRaysampler(image_width=16, image_height=16, n_steps=32),
    )
    with torch.no_grad():
        out = renderer(cameras)
    hit = out.masks[0] > 0.5
    print("file", dvr_plugin.__file__)
    print("shape", tuple(out.images.shape))
    print("hits", int(hit.sum()))
    print("centre", bool(hit[7:9, 7:9].all()))
    print("corners", bool(hit[[0, 0, -1, -1], [0, -1, 0, -1]].any()))
    print("min_depth", float(out.depths[0][hit].min()))
    """
)

IMPLICITRON_SCRIPT = textwrap.dedent(
    """
    import dvr_plugin.implicitron as dvr_implicitron
    from pytorch3d.implicitron.models.renderer.base import BaseRenderer
    from pytorch3d.implicitron.tools.config import registry

    registered = registry.get(BaseRenderer, "DVRSurfaceRenderer")
    cfg = dvr_implicitron.generic_model_args()
    print("file", dvr_implicitron.__file__)
    print("config", dvr_implicitron.DEFAULT_CONFIG_PATH)
    print("registered", registered is dvr_implicitron.DVRSurfaceRenderer)
    print("renderer", cfg.renderer_class_type)
    """
)


def _copy_sources(destination: Path) -> None:
    """The files a source distribution is built from, without caches or build outputs."""
    destination.mkdir()
    for name in SOURCE_FILES:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, destination / name)
    for name in SOURCE_DIRS:
        shutil.copytree(
            REPO / name,
            destination / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )


def _requirements(metadata: str) -> dict[str, set[str]]:
    """Normalised distribution names of a wheel's ``Requires-Dist``, by extra (``""``: none)."""
    by_extra: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            extra = ""
            if requirement.marker is not None:
                match = re.search(r'extra == "([^"]+)"', str(requirement.marker))
                extra = match.group(1) if match else ""
            by_extra.setdefault(extra, set()).add(canonicalize_name(requirement.name))
    return by_extra


def _inside_import_guard(parents: list[ast.AST], node: ast.AST) -> bool:
    """Whether ``node`` lies in the body of a ``try`` that catches ImportError (or wider)."""
    guards = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for parent, child in zip(parents, [*parents[1:], node], strict=True):
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
                if caught is None or any(ast.unparse(name) in guards for name in names):
                    return True
    return False


def _third_party_imports(package: Path) -> dict[str, set[str]]:
    """
    Top-level names of the third-party modules imported by ``package``'s files:
    ``{"required": ..., "guarded": ...}`` (guarded: inside a ``try`` that catches ImportError).
    """
    found: dict[str, set[str]] = {"required": set(), "guarded": set()}
    for path in sorted(package.rglob("*.py")):
        stack: list[tuple[ast.AST, list[ast.AST]]] = [(ast.parse(path.read_text()), [])]
        while stack:
            node, parents = stack.pop()
            for child in ast.iter_child_nodes(node):
                stack.append((child, [*parents, node]))
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            kind = "guarded" if _inside_import_guard(parents, node) else "required"
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != package.name:
                    found[kind].add(top)
    return found


def _run(command: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    """Runs ``command`` and returns its stdout; fails the test with its output when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def _values(stdout: str) -> dict[str, str]:
    """The ``key value`` lines a script printed."""
    return dict(line.split(" ", 1) for line in stdout.strip().splitlines() if " " in line)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """
    Builds the sdist and the wheel, installs the wheel into a fresh virtual environment and
    returns its paths: ``python``, ``bin``, ``site`` (its site-packages), ``cwd`` (a working
    directory outside the source tree) and ``dist`` (the built files).
    """
    root = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    source, dist, environment, cwd = (root / name for name in ("src", "dist", "venv", "cwd"))
    _copy_sources(source)
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        cwd=source,
        env=env,
    )
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    assert len(sorted(dist.glob("*.tar.gz"))) == 1, f"expected one sdist in {dist}"

    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=root,
            env=env,
        ).strip()
    )
    base_sites = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_base_environment.pth").write_text("".join(f"{path}\n" for path in base_sites))
    # --ignore-installed: the running environment's own (editable) dvr-plugin is visible through
    # the .pth line; pip must not try to uninstall it.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    _run([*pip, "--no-index", "--ignore-installed", str(wheels[0])], cwd=root, env=env)
    cwd.mkdir()
    return {
        "python": python,
        "bin": environment / "bin",
        "site": site,
        "cwd": cwd,
        "dist": dist,
        "env": env,
    }


def _run_installed(installed: dict, *command: str) -> str:
    """Runs a command of the fresh environment from a directory outside the source tree."""
    return _run(list(command), cwd=installed["cwd"], env=installed["env"])


def _assert_from_environment(path: str, installed: dict) -> None:
    """``path`` lies in the fresh environment's site-packages, not in the source tree."""
    resolved = Path(path).resolve()
    assert resolved.is_relative_to(installed["site"].resolve()), resolved
    assert not resolved.is_relative_to(REPO), resolved


def test_wheel_holds_the_package_only(installed):
    (wheel,) = installed["dist"].glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    name, version = wheel.name.split("-")[:2]
    tops = {path.split("/", 1)[0] for path in names}
    assert tops == {"dvr_plugin", f"{name}-{version}.dist-info"}, tops
    assert "dvr_plugin/implicitron/generic_model.yaml" in names
    assert "dvr_plugin/configs/demo.yaml" in names
    source_version = re.search(
        r'^__version__ = "([^"]+)"$',
        (REPO / "dvr_plugin" / "__init__.py").read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    ).group(1)
    assert (name, version) == ("dvr_plugin", source_version), wheel.name


def test_declared_dependencies_cover_the_imports(installed):
    """Every module the package imports unconditionally comes from a declared dependency."""
    (wheel,) = installed["dist"].glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        requirements = _requirements(archive.read(metadata).decode())
    distributions = importlib.metadata.packages_distributions()
    imports = _third_party_imports(REPO / "dvr_plugin")
    assert {"torch", "pytorch3d"} <= imports["required"], imports
    for module in sorted(imports["required"]):
        assert module in distributions, f"{module} is imported but not installed here"
        names = {canonicalize_name(name) for name in distributions[module]}
        assert names & requirements[""], f"{module} ({names}) is not in Requires-Dist"
    # the Implicitron adapter's imports are guarded (a clear ImportError) and form the extra
    adapter = _third_party_imports(REPO / "dvr_plugin" / "implicitron")["guarded"]
    declared = requirements[""] | requirements["implicitron"]
    for module in sorted(adapter):
        names = {canonicalize_name(name) for name in distributions[module]}
        assert names & declared, f"{module} ({names}) is in neither Requires-Dist nor the extra"


def test_dvr_command(installed):
    stdout = _run_installed(installed, str(installed["bin"] / "dvr"), "--help")
    assert stdout.startswith("usage: dvr"), stdout[:200]
    for command in ("fit", "render", "mesh", "eval"):
        assert command in stdout


def test_render_from_the_installed_package(installed):
    values = _values(_run_installed(installed, str(installed["python"]), "-c", RENDER_SCRIPT))
    _assert_from_environment(values["file"], installed)
    assert values["shape"] == "(1, 16, 16, 3)"
    assert values["centre"] == "True"  # the sphere covers the image centre ...
    assert values["corners"] == "False"  # ... and not the corners
    assert 4 < int(values["hits"]) < 16 * 16
    # the nearest point of the sphere is 1.5 - 0.3 = 1.2 in front of the camera (z-depth)
    assert abs(float(values["min_depth"]) - 1.2) < 5e-3, values["min_depth"]


def test_implicitron_registration_from_the_installed_package(installed):
    values = _values(_run_installed(installed, str(installed["python"]), "-c", IMPLICITRON_SCRIPT))
    _assert_from_environment(values["file"], installed)
    _assert_from_environment(values["config"], installed)
    assert values["registered"] == "True"
    assert values["renderer"] == "DVRSurfaceRenderer"
