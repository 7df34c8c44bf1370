"""NeRF-synthetic loader on the shared lego scene (9 training views)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from dvr_plugin.data import load_nerf_synthetic
from dvr_plugin.data.paths import find_shared_data, missing_data_message

LEGO = ("nerf_synthetic_lego", "lego")


def nerf_pinhole(meta: dict, frame: dict, points: torch.Tensor, size: int = 800) -> torch.Tensor:
    """NeRF's own camera model in Blender axes: `(P, 3)` points -> `(P, 2)` pixels (corners)."""
    f = 0.5 * size / math.tan(0.5 * meta["camera_angle_x"])
    c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
    cam = (points.double() - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera (x right, y up, -z)
    u = 0.5 * size + f * cam[:, 0] / -cam[:, 2]
    v = 0.5 * size - f * cam[:, 1] / -cam[:, 2]
    return torch.stack([u, v], -1)


@unittest.skipIf(find_shared_data(*LEGO) is None, missing_data_message(*LEGO))
class TestLoadNerfSynthetic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = find_shared_data(*LEGO)
        cls.data = load_nerf_synthetic(cls.root)
        cls.meta = json.loads((cls.root / "transforms_train.json").read_text())

    def test_layout(self):
        data = self.data
        self.assertEqual(len(data), 9)
        self.assertEqual(data.image_size, (800, 800))
        self.assertEqual(data.names[:2], ["r_0", "r_12"])
        self.assertAlmostEqual(data.world_scale, 3.0)
        # White background where alpha is 0; masks are alpha > 0.5.
        self.assertTrue(bool((data.images[~data.masks] > 0.45).all()))
        share = data.masks.float().mean()
        self.assertTrue(0.05 < float(share) < 0.6)

    def test_camera_round_trip(self):
        points = (torch.rand(100, 3, dtype=torch.float64) - 0.5) * 3.0  # Blender frame
        pixels, depth = self.data.project(self.data.world_to_normalised(points))
        for i, frame in enumerate(self.meta["frames"]):
            expected = nerf_pinhole(self.meta, frame, points)
            self.assertLess(float((pixels[i].double() - expected).abs().max()), 2e-3)
        self.assertTrue(bool((depth > 0).all()))

    def test_object_in_masks(self):
        data = self.data
        in_mask, in_image = data.lookup_masks(torch.zeros(1, 3))
        self.assertTrue(bool(in_image.all()) and bool(in_mask.all()))
        axis = torch.linspace(-0.55, 0.55, 14)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        hull = data.visual_hull(grid, min_views=len(data))
        self.assertGreater(int(hull.sum()), 50)
        # scale = 1/3 puts the object inside the unit cube.
        self.assertLess(float(grid[hull].abs().max()), 0.5)
        # Leave-one-out: the other views' visual hull lands in each view's mask.
        in_mask, in_image = data.lookup_masks(grid)
        shares = []
        for i in range(len(data)):
            others = [j for j in range(len(data)) if j != i]
            seen = in_image[others]
            other_hull = (in_mask[others] | ~seen).all(0) & (seen.sum(0) == len(others))
            shares.append(float(in_mask[i][other_hull].float().mean()))
        self.assertGreater(min(shares), 0.75)
        self.assertGreater(sum(shares) / len(shares), 0.9)

    def test_scale_background_views_downscale(self):
        raw = load_nerf_synthetic(self.root, scale=1.0, background=None, views=["r_24", 0])
        self.assertEqual(raw.names, ["r_24", "r_0"])
        points = torch.rand(20, 3) - 0.5
        torch.testing.assert_close(
            raw.project(points * 3)[0], self.data.subset([2, 0]).project(points)[0],
            atol=2e-3, rtol=0,
        )
        self.assertFalse(torch.equal(raw.images, self.data.images[[2, 0]]))
        black = load_nerf_synthetic(self.root, background=(0, 0, 0), views=[0])
        self.assertLess(float(black.images[0][~black.masks[0]].max()), 0.55)
        small = black.downscale(8)
        self.assertEqual(small.image_size, (100, 100))
        torch.testing.assert_close(
            small.project(points)[0], black.project(points)[0] / 8, atol=1e-3, rtol=0
        )

    def test_errors(self):
        with self.assertRaisesRegex(FileNotFoundError, "transforms_test.json"):
            load_nerf_synthetic(self.root, split="test")
        with self.assertRaisesRegex(ValueError, "r_5"):
            load_nerf_synthetic(self.root, views=["r_5"])
        with self.assertRaisesRegex(ValueError, "out of range"):
            load_nerf_synthetic(self.root, views=[9])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.symlink(self.root / "train", tmp / "train")
            meta = dict(self.meta)
            meta["frames"] = self.meta["frames"][:1] + [{"file_path": "./train/r_1",
                                                         "transform_matrix": np.eye(4).tolist()}]
            (tmp / "transforms_train.json").write_text(json.dumps(meta))
            with self.assertRaisesRegex(FileNotFoundError, "r_1"):
                load_nerf_synthetic(tmp)
            (tmp / "transforms_val.json").write_text("{not json")
            with self.assertRaisesRegex(ValueError, "Cannot read"):
                load_nerf_synthetic(tmp, split="val")
