"""
The documentation site: ``mkdocs build --strict`` (the command of ``make docs``) succeeds over
``docs/``, so no page has a broken link or anchor, no page is left out of the navigation and no
docstring of the API reference fails to parse. The built site holds the API reference, the
rendered tutorials and the front page's result image.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable, "-m", "mkdocs", "build", "--strict",
            "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return out


def test_the_build_is_strict_about_links():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True
    assert config["validation"]["links"]["not_found"] == "warn"  # a warning fails --strict
    assert config["validation"]["links"]["anchors"] == "warn"
    assert config["validation"]["nav"]["omitted_files"] == "warn"


def test_api_reference_lists_the_public_api(site):
    top = (site / "api" / "index.html").read_text()
    for name in ("DVRRenderer", "SecantRaysampler", "SurfaceRaymarcher", "OccupancyTextureField"):
        assert f'id="dvr_plugin.{name}"' in top, name
    pages = {
        "renderer": "dvr_plugin.renderer.DVRRenderer",
        "raysampler": "dvr_plugin.renderer.raysampler.SecantRaysampler",
        "raymarcher": "dvr_plugin.renderer.raymarcher.SurfaceRaymarcher",
        "field": "dvr_plugin.fields.field.OccupancyTextureField",
        "appearance": "dvr_plugin.fields.appearance.ViewDependentField",
        "data": "dvr_plugin.data.load_dtu",
        "meshing": "dvr_plugin.meshing.extract_mesh",
        "metrics": "dvr_plugin.metrics.evaluate_observed",
        "training": "dvr_plugin.training.Trainer",
    }
    for page, anchor in pages.items():
        html = (site / "api" / page / "index.html").read_text()
        assert f'id="{anchor}"' in html, (page, anchor)
    renderer = (site / "api" / "renderer" / "index.html").read_text()
    assert "Renders a field through PyTorch3D cameras" in renderer  # the docstring itself


def test_tutorials_and_front_page_are_rendered(site):
    for name in ("render_and_backprop", "fit_your_capture", "compare_renderers", "implicitron"):
        html = (site / "tutorials" / name / "index.html").read_text()
        assert "TUTORIAL CHECKS PASSED" in html, name  # the notebook's cells are on the page
    index = (site / "index.html").read_text()
    assert 'src="images/cow_fit_gpu.png"' in index
    assert (site / "images" / "cow_fit_gpu.png").is_file()
    assert 'href="tutorials/render_and_backprop/"' in index
