"""
The comparison harness (``integration.compare``): the volume baseline's pieces, the report, and
a smoke run of ``python -m integration.compare`` on a tiny demo scene.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from unittest import mock

import pytest
import torch
from pytorch3d.renderer import NDCMultinomialRaysampler
from pytorch3d.utils import ico_sphere

from dvr_plugin.data import cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.fields.shapes import SphereField
from integration.compare import (
    METHOD_LABELS,
    METHODS,
    BoxStratifiedRaysampler,
    VolumeBaseline,
    markdown_table,
    rasterize_views,
)
from integration.compare.__main__ import main

# A few seconds of CPU: 32x32 demo views, a tiny network, a few steps of each method.
TINY = [
    "--scene", "demo", "--device", "cpu", "--iterations", "15", "--samples", "16",
    "--figure-views", "2", "--quiet",
    "data.image_size=32", "data.n_views=16", "model.hidden_size=32", "model.n_blocks=2",
    "model.n_frequencies=4", "train.rays_per_image=128", "eval.n_steps=32",
    "eval.mesh_resolution=32", "eval.mesh_points=2000",
]


class CompareFactory:
    """Seeded cameras shared by the tests."""

    @staticmethod
    def cameras(n: int = 2, image_size: int = 24):
        eyes = 1.6 * fibonacci_sphere(n).float()
        return cameras_looking_at_origin(eyes, image_size=image_size, fov=40.0)


@pytest.fixture
def seeded():
    """The volume baseline's tests start from the same global random state."""
    torch.manual_seed(0)


@pytest.mark.usefixtures("seeded")
def test_grid_matches_pytorch3d_raysampler():
    cameras = CompareFactory.cameras(2, 24)
    ours = BoxStratifiedRaysampler(image_width=20, image_height=24, n_pts_per_ray=8)(
        cameras
    )
    theirs = NDCMultinomialRaysampler(
        image_width=20, image_height=24, n_pts_per_ray=8, min_depth=0.5, max_depth=3.0
    )(cameras)
    torch.testing.assert_close(ours.xys, theirs.xys)
    torch.testing.assert_close(ours.directions, theirs.directions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.origins, theirs.origins, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("seeded")
def test_samples_lie_in_the_box_and_in_order():
    cameras = CompareFactory.cameras(2, 16)
    sampler = BoxStratifiedRaysampler(image_width=16, image_height=16, n_pts_per_ray=12)
    generator = torch.Generator().manual_seed(1)
    bundle = sampler(cameras, stratified=True, generator=generator)
    assert tuple(bundle.lengths.shape) == (2, 16, 16, 12)
    points = bundle.origins[..., None, :] + bundle.lengths[..., None] * (
        bundle.directions[..., None, :]
    )
    centre_rays = points[:, 6:10, 6:10]  # these rays all cross the box
    assert float(centre_rays.abs().max()) <= 0.55 + 1e-4
    assert bool((bundle.lengths.diff(dim=-1) >= 0).all())


@pytest.mark.usefixtures("seeded")
def test_opaque_sphere_renders_like_the_rasteriser():
    cameras = CompareFactory.cameras(2, 24)
    model = VolumeBaseline(field=SphereField(radius=0.3, sharpness=2000.0), n_pts_per_ray=128)
    rendered = model.render_views(cameras, (24, 24), chunk_size=200)
    mesh = ico_sphere(4)
    mesh = mesh.offset_verts(mesh.verts_packed() * (0.3 - 1.0))
    raster = rasterize_views(mesh, cameras, (24, 24))
    inside = raster.masks > 0.5
    agree = ((rendered.masks > 0.5) == inside).float().mean()
    assert float(agree) > 0.97
    both = inside & (rendered.depths > 0)
    depth_gap = (rendered.depths[both] - raster.depths[both]).abs().median()
    assert float(depth_gap) < 0.02
    # Normals of both point towards the camera and agree.
    cosine = (rendered.normals[both] * raster.normals[both]).sum(dim=-1)
    assert float(cosine.median()) > 0.95
    assert bool(((rendered.masks >= 0) & (rendered.masks <= 1)).all())


@pytest.mark.usefixtures("seeded")
def test_training_rays_carry_gradients():
    cameras = CompareFactory.cameras(2, 16)
    field = OccupancyTextureField(hidden_size=16, n_blocks=1)
    model = VolumeBaseline(field=field, n_pts_per_ray=8)
    xys = torch.rand(2, 10, 2) * 1.2 - 0.6
    out = model(cameras, xys, stratified=True)
    assert tuple(out.images.shape) == (2, 10, 3)
    (out.images.sum() + out.opacities.sum()).backward()
    assert all(p.grad is not None for p in field.parameters())


@pytest.mark.usefixtures("seeded")
def test_bad_arguments():
    with pytest.raises(ValueError, match="n_pts_per_ray"):
        BoxStratifiedRaysampler(n_pts_per_ray=0)
    with pytest.raises(ValueError, match="image_width and image_height"):
        BoxStratifiedRaysampler(image_width=8)
    with pytest.raises(ValueError, match="occupancy"):
        VolumeBaseline(field=OccupancyTextureField(hidden_size=8, field_type="sdf"))


def test_unavailable_rows_read_na():
    results = {
        "machine": {"device_type": "cpu"},
        "methods": {
            "mesh_gt": {"available": False, "label": METHOD_LABELS["mesh_gt"]},
            "dvr": {
                "available": True,
                "label": METHOD_LABELS["dvr"],
                "psnr": 20.0,
                "depth_l1": None,
                "train_seconds": 3.0,
                "seconds_per_iteration": 0.1,
                "iterations": 30,
            },
        },
    }
    table = markdown_table(results).splitlines()
    assert len(table) == 4
    assert table[2].count("n/a") == 13
    assert "| 20.00 |" in table[3]
    assert "n/a (CPU)" in table[3]
    assert "3.0 s (100 ms/it)" in table[3]


def _run_cli(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


# ``python -m integration.compare`` end to end on a tiny scene (about 15-25 s on a CPU).

def _check_outputs(out: str) -> dict:
    for name in ("results.json", "table.md", "figure.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "figure.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(os.path.join(out, "figure.png")) > 10_000
    with open(os.path.join(out, "results.json")) as handle:
        results = json.load(handle)
    assert list(results["methods"]) == list(METHODS)
    with open(os.path.join(out, "table.md")) as handle:
        table = handle.read()
    for name in METHODS:
        prefix = f"| {METHOD_LABELS[name]} |"
        rows = [line for line in table.splitlines() if line.startswith(prefix)]
        assert len(rows) == 1, name
    assert "Machine: CPU" in table
    # the network as it was configured (a hash grid is named as one)
    network = results["settings"]["network"]
    assert f"Network of (b) and (c): {network['label']} (" in table
    assert network["label"].startswith(
        "hash grid" if network["encoding"] == "hash_grid" else "hidden"
    )
    return results


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_demo_scene():
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "cmp")
        assert _run_cli([*TINY, "--out", out]) == 0
        results = _check_outputs(out)
        methods = results["methods"]
        for name in METHODS:
            entry = methods[name]
            assert entry["available"], name
            for key in ("psnr", "psnr_masked", "ssim", "mask_iou", "render_seconds_per_view"):
                assert math.isfinite(entry[key]), (name, key)
            assert entry["render_peak_bytes"] is None  # not measured on a CPU
        for name in ("dvr", "volume", "dvr_mesh"):
            assert methods[name]["iterations"] == 15
            assert math.isfinite(methods[name]["chamfer_l1"]), name
            assert 0.0 <= methods[name]["f_score"] <= 1.0, name
        for name in ("dvr", "dvr_mesh"):
            assert math.isfinite(methods[name]["depth_l1"]), name
        assert methods["mesh_gt"]["mask_iou"] > 0.8
        assert methods["dvr"]["train_seconds"] == methods["dvr_mesh"]["train_seconds"]
        assert methods["dvr"]["chamfer_l1"] == methods["dvr_mesh"]["chamfer_l1"]
        assert results["settings"]["network"]["parameters"] == methods["volume"]["parameters"]
        for name in ("dvr_checkpoint.pt", "dvr_mesh.ply", "volume_model.pt"):
            assert os.path.isfile(os.path.join(out, name)), name


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_without_ground_truth_mesh():
    """A data set without a mesh (like DTU): row (a), depth and 3D metrics are n/a."""
    from dvr_plugin.training import load_fit_data

    def without_mesh(*args, **kwargs):
        data = load_fit_data(*args, **kwargs)
        data.mesh = None
        return data

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "cmp")
        argv = [*TINY, "--out", out, "--iterations", "4", "--no-save-models"]
        with mock.patch("integration.compare.harness.load_fit_data", without_mesh):
            assert _run_cli(argv) == 0
        results = _check_outputs(out)
        methods = results["methods"]
        assert not methods["mesh_gt"]["available"]
        for name in ("dvr", "volume", "dvr_mesh"):
            if methods[name]["available"]:
                assert methods[name]["depth_l1"] is None
                assert methods[name]["chamfer_l1"] is None
        with open(os.path.join(out, "table.md")) as handle:
            row = next(r for r in handle if r.startswith(f"| {METHOD_LABELS['mesh_gt']}"))
        assert row.count("n/a") == 13
        assert not os.path.exists(os.path.join(out, "dvr_checkpoint.pt"))

