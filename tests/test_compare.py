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
import unittest
from unittest import mock

import pytest
import torch
from pytorch3d.renderer import NDCMultinomialRaysampler
from pytorch3d.utils import ico_sphere

from dvr_plugin.data import cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.field import OccupancyTextureField
from dvr_plugin.shapes import SphereField
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


class TestVolumeBaseline(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_grid_matches_pytorch3d_raysampler(self):
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

    def test_samples_lie_in_the_box_and_in_order(self):
        cameras = CompareFactory.cameras(2, 16)
        sampler = BoxStratifiedRaysampler(image_width=16, image_height=16, n_pts_per_ray=12)
        generator = torch.Generator().manual_seed(1)
        bundle = sampler(cameras, stratified=True, generator=generator)
        self.assertEqual(tuple(bundle.lengths.shape), (2, 16, 16, 12))
        points = bundle.origins[..., None, :] + bundle.lengths[..., None] * (
            bundle.directions[..., None, :]
        )
        centre_rays = points[:, 6:10, 6:10]  # these rays all cross the box
        self.assertLessEqual(float(centre_rays.abs().max()), 0.55 + 1e-4)
        self.assertTrue(bool((bundle.lengths.diff(dim=-1) >= 0).all()))

    def test_opaque_sphere_renders_like_the_rasteriser(self):
        cameras = CompareFactory.cameras(2, 24)
        model = VolumeBaseline(field=SphereField(radius=0.3, sharpness=2000.0), n_pts_per_ray=128)
        rendered = model.render_views(cameras, (24, 24), chunk_size=200)
        mesh = ico_sphere(4)
        mesh = mesh.offset_verts(mesh.verts_packed() * (0.3 - 1.0))
        raster = rasterize_views(mesh, cameras, (24, 24))
        inside = raster.masks > 0.5
        agree = ((rendered.masks > 0.5) == inside).float().mean()
        self.assertGreater(float(agree), 0.97)
        both = inside & (rendered.depths > 0)
        depth_gap = (rendered.depths[both] - raster.depths[both]).abs().median()
        self.assertLess(float(depth_gap), 0.02)
        # Normals of both point towards the camera and agree.
        cosine = (rendered.normals[both] * raster.normals[both]).sum(dim=-1)
        self.assertGreater(float(cosine.median()), 0.95)
        self.assertTrue(bool(((rendered.masks >= 0) & (rendered.masks <= 1)).all()))

    def test_training_rays_carry_gradients(self):
        cameras = CompareFactory.cameras(2, 16)
        field = OccupancyTextureField(hidden_size=16, n_blocks=1)
        model = VolumeBaseline(field=field, n_pts_per_ray=8)
        xys = torch.rand(2, 10, 2) * 1.2 - 0.6
        out = model(cameras, xys, stratified=True)
        self.assertEqual(tuple(out.images.shape), (2, 10, 3))
        (out.images.sum() + out.opacities.sum()).backward()
        self.assertTrue(all(p.grad is not None for p in field.parameters()))

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "n_pts_per_ray"):
            BoxStratifiedRaysampler(n_pts_per_ray=0)
        with self.assertRaisesRegex(ValueError, "image_width and image_height"):
            BoxStratifiedRaysampler(image_width=8)
        with self.assertRaisesRegex(ValueError, "occupancy"):
            VolumeBaseline(field=OccupancyTextureField(hidden_size=8, field_type="sdf"))


class TestReport(unittest.TestCase):
    def test_unavailable_rows_read_na(self):
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
        self.assertEqual(len(table), 4)
        self.assertEqual(table[2].count("n/a"), 13)
        self.assertIn("| 20.00 |", table[3])
        self.assertIn("n/a (CPU)", table[3])
        self.assertIn("3.0 s (100 ms/it)", table[3])


def _run_cli(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


@pytest.mark.slow
class TestComparisonSmoke(unittest.TestCase):
    """``python -m integration.compare`` end to end on a tiny scene (about 15-25 s on a CPU)."""

    @classmethod
    def setUpClass(cls):
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls.threads)

    def _check_outputs(self, out: str) -> dict:
        for name in ("results.json", "table.md", "figure.png"):
            self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
        with open(os.path.join(out, "figure.png"), "rb") as handle:
            self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(os.path.join(out, "figure.png")), 10_000)
        with open(os.path.join(out, "results.json")) as handle:
            results = json.load(handle)
        self.assertEqual(list(results["methods"]), list(METHODS))
        with open(os.path.join(out, "table.md")) as handle:
            table = handle.read()
        for name in METHODS:
            prefix = f"| {METHOD_LABELS[name]} |"
            rows = [line for line in table.splitlines() if line.startswith(prefix)]
            self.assertEqual(len(rows), 1, name)
        self.assertIn("Machine: CPU", table)
        return results

    def test_demo_scene(self):
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "cmp")
            self.assertEqual(_run_cli([*TINY, "--out", out]), 0)
            results = self._check_outputs(out)
            methods = results["methods"]
            for name in METHODS:
                entry = methods[name]
                self.assertTrue(entry["available"], name)
                for key in ("psnr", "psnr_masked", "ssim", "mask_iou", "render_seconds_per_view"):
                    self.assertTrue(math.isfinite(entry[key]), (name, key))
                self.assertIsNone(entry["render_peak_bytes"])  # not measured on a CPU
            for name in ("dvr", "volume", "dvr_mesh"):
                self.assertEqual(methods[name]["iterations"], 15)
                self.assertTrue(math.isfinite(methods[name]["chamfer_l1"]), name)
                self.assertTrue(0.0 <= methods[name]["f_score"] <= 1.0, name)
            for name in ("dvr", "dvr_mesh"):
                self.assertTrue(math.isfinite(methods[name]["depth_l1"]), name)
            self.assertGreater(methods["mesh_gt"]["mask_iou"], 0.8)
            self.assertEqual(methods["dvr"]["train_seconds"], methods["dvr_mesh"]["train_seconds"])
            self.assertEqual(methods["dvr"]["chamfer_l1"], methods["dvr_mesh"]["chamfer_l1"])
            self.assertEqual(
                results["settings"]["network"]["parameters"], methods["volume"]["parameters"]
            )
            for name in ("dvr_checkpoint.pt", "dvr_mesh.ply", "volume_model.pt"):
                self.assertTrue(os.path.isfile(os.path.join(out, name)), name)

    def test_without_ground_truth_mesh(self):
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
                self.assertEqual(_run_cli(argv), 0)
            results = self._check_outputs(out)
            methods = results["methods"]
            self.assertFalse(methods["mesh_gt"]["available"])
            for name in ("dvr", "volume", "dvr_mesh"):
                if methods[name]["available"]:
                    self.assertIsNone(methods[name]["depth_l1"])
                    self.assertIsNone(methods[name]["chamfer_l1"])
            with open(os.path.join(out, "table.md")) as handle:
                row = next(r for r in handle if r.startswith(f"| {METHOD_LABELS['mesh_gt']}"))
            self.assertEqual(row.count("n/a"), 13)
            self.assertFalse(os.path.exists(os.path.join(out, "dvr_checkpoint.pt")))


if __name__ == "__main__":
    unittest.main()
