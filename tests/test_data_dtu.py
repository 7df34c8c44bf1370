"""DTU loaders (IDR / NeuS layout and the MonoSDF crop) on the shared scan 24."""

from __future__ import annotations

import os
import tempfile
import unittest
import warnings
from pathlib import Path

import numpy as np
import torch

from dvr_plugin.cameras import opencv_from_dtu, project_opencv
from dvr_plugin.data import MultiViewData, load_dtu, load_dtu_monosdf
from dvr_plugin.data.paths import find_shared_data, missing_data_message

NEUS = ("dtu_scan24_neus_400", "scan24")
MONOSDF = ("dtu_scan24_384", "scan24")


def raw_projection(world_mats: np.ndarray, data: MultiViewData, points: torch.Tensor):
    """Project normalised points through ``to_world`` and the raw ``world_mat`` (float64)."""
    X = torch.cat([points.double(), torch.ones(len(points), 1, dtype=torch.float64)], -1)
    world = X @ data.to_world.T
    proj = torch.einsum("nij,pj->npi", torch.from_numpy(world_mats)[:, :3].double(), world)
    return proj[..., :2] / proj[..., 2:3]


def mask_consistency(data: MultiViewData, points: torch.Tensor) -> list[float]:
    """
    For each view: the share of the other views' visual hull that lands in its mask. A check
    against gross errors (masks paired with the wrong camera, flipped axes), not sub-pixel ones.
    """
    in_mask, in_image = data.lookup_masks(points)
    shares = []
    for i in range(len(data)):
        others = [j for j in range(len(data)) if j != i]
        seen = in_image[others]
        hull = (in_mask[others] | ~seen).all(0) & (seen.sum(0) == len(others))
        shares.append(float(in_mask[i][hull].float().mean()))
    return shares


def grid_points(half: float = 0.55, steps: int = 14) -> torch.Tensor:
    axis = torch.linspace(-half, half, steps)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


@unittest.skipIf(find_shared_data(*NEUS) is None, missing_data_message(*NEUS))
class TestLoadDTU(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = find_shared_data(*NEUS)
        cls.data = load_dtu(cls.root)
        with np.load(cls.root / "cameras_sphere.npz") as archive:
            cls.cams = {k: archive[k] for k in archive.files}

    def test_layout(self):
        data = self.data
        self.assertEqual(len(data), 12)
        self.assertEqual(data.image_size, (300, 400))
        self.assertEqual(data.info["views"], list(range(0, 48, 4)))
        self.assertEqual(data.names[1], "000004")
        self.assertIsNone(data.depths)
        self.assertTrue(bool(data.masks.any(dim=(1, 2)).all()))
        # to_world = scale_mat @ diag(2, 2, 2, 1): the scale_mat unit sphere has radius 0.5.
        expected = self.cams["scale_mat_0"] @ np.diag([2.0, 2.0, 2.0, 1.0])
        np.testing.assert_allclose(data.to_world.numpy(), expected)

    def test_camera_round_trip(self):
        """The raw world_mat and the converted cameras project world points alike."""
        data = self.data
        world = np.stack([self.cams[f"world_mat_{i}"] for i in data.info["views"]])
        points = torch.rand(200, 3, dtype=torch.float64) - 0.5
        expected = raw_projection(world, data, points)  # DTU pixels: centres at integers
        pixels, depth = data.project(points)  # float32 cameras
        self.assertLess(float((pixels.double() - 0.5 - expected).abs().max()), 2e-3)
        self.assertTrue(bool((depth > 0).all()))
        K, R, t = opencv_from_dtu(world, self.cams["scale_mat_0"])  # float64
        exact, _ = project_opencv(points, R, t, K)
        self.assertLess(float((exact - expected).abs().max()), 1e-3)  # only the ~1e-4 px skew

    def test_masks_line_up(self):
        data = self.data
        pixels, _ = data.project(torch.zeros(1, 3))  # the sphere centre is on the object
        in_mask, in_image = data.lookup_masks(torch.zeros(1, 3))
        self.assertTrue(bool(in_image.all()) and bool(in_mask.all()), pixels)
        # Swapping masks between views, or flipping them, drops these to ~0.4 / 0.88.
        shares = mask_consistency(data, grid_points())
        self.assertGreater(min(shares), 0.7)
        self.assertGreater(sum(shares) / len(shares), 0.93)
        hull = data.visual_hull(grid_points(), min_views=12)
        self.assertGreater(int(hull.sum()), 20)
        self.assertLess(float(grid_points()[hull].norm(dim=-1).max()), 0.6)

    def test_views_by_number_and_downscale(self):
        data = load_dtu(self.root, views=[44, 8])
        self.assertEqual(data.names, ["000044", "000008"])
        full = self.data.subset([11, 2])
        torch.testing.assert_close(data.cameras.R, full.cameras.R)
        torch.testing.assert_close(data.images, full.images)
        small = data.downscale(4)
        self.assertEqual(small.image_size, (75, 100))
        points = torch.rand(50, 3) - 0.5
        torch.testing.assert_close(
            small.project(points)[0], data.project(points)[0] / 4, atol=1e-3, rtol=0
        )
        in_mask, _ = small.lookup_masks(torch.zeros(1, 3))
        self.assertTrue(bool(in_mask.all()))

    def test_errors(self):
        with self.assertRaises(FileNotFoundError):
            load_dtu(self.root / "missing")
        with self.assertRaisesRegex(ValueError, "no image"):
            load_dtu(self.root, views=[1])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "image").mkdir()
            (tmp / "mask").mkdir()
            os.symlink(self.root / "cameras_sphere.npz", tmp / "cameras_sphere.npz")
            for name in ("000000", "000004"):
                os.symlink(self.root / "image" / f"{name}.png", tmp / "image" / f"{name}.png")
            os.symlink(self.root / "mask" / "000.png", tmp / "mask" / "000.png")
            with self.assertRaisesRegex(ValueError, "No mask"):
                load_dtu(tmp)
            np.save(tmp / "x.npy", np.zeros(1))
            empty = np.zeros((300, 400), dtype=np.uint8)
            from PIL import Image

            Image.fromarray(empty).save(tmp / "mask" / "004.png")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                data = load_dtu(tmp)
            self.assertEqual(len(data), 2)
            self.assertTrue(any("empty object mask" in str(w.message) for w in caught))
            with self.assertRaisesRegex(ValueError, "empty object mask"):
                load_dtu(tmp, empty_masks="error")
            # An image without a camera.
            os.symlink(self.root / "image" / "000008.png", tmp / "image" / "000099.png")
            os.symlink(self.root / "mask" / "008.png", tmp / "mask" / "099.png")
            with self.assertRaisesRegex(ValueError, "no world_mat for views \\[99\\]"):
                load_dtu(tmp, empty_masks="ignore")
            # An unreadable image.
            (tmp / "image" / "000099.png").unlink()
            (tmp / "image" / "000004.png").unlink()
            (tmp / "image" / "000004.png").write_bytes(b"not a png")
            with self.assertRaisesRegex(ValueError, "Cannot read image"):
                load_dtu(tmp, empty_masks="ignore")
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(FileNotFoundError, "camera file"):
                load_dtu(tmp)


@unittest.skipIf(find_shared_data(*MONOSDF) is None, missing_data_message(*MONOSDF))
class TestLoadDTUMonoSDF(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = find_shared_data(*MONOSDF)
        cls.views = list(range(0, 49, 6))
        cls.data = load_dtu_monosdf(cls.root, views=cls.views)
        with np.load(cls.root / "cameras.npz") as archive:
            cls.cams = {k: archive[k] for k in archive.files}

    def test_layout(self):
        self.assertEqual(len(self.data), len(self.views))
        self.assertEqual(self.data.image_size, (384, 384))
        self.assertEqual(self.data.names[1], "000006_rgb")

    def test_camera_round_trip(self):
        data = self.data
        world = np.stack([self.cams[f"world_mat_{i}"] for i in self.views])
        points = torch.rand(200, 3, dtype=torch.float64) - 0.5
        full = raw_projection(world, data, points)  # 1600x1200 pixels, centres at integers
        s = 1200 / 384
        expected = torch.stack([(full[..., 0] + 0.5 - 200) / s, (full[..., 1] + 0.5) / s], -1)
        pixels, _ = data.project(points)
        self.assertLess(float((pixels.double() - expected).abs().max()), 2e-3)
        # The data README's K384 = C @ K1600 differs from ours by 0.5 / s px in u and v.
        K, R, t = opencv_from_dtu(world, self.cams[f"scale_mat_{self.views[0]}"])
        C = torch.tensor([[1 / s, 0, -200 / s], [0, 1 / s, 0], [0, 0, 1]], dtype=torch.float64)
        readme, _ = project_opencv(points, R, t, C @ K)
        offset = pixels.double() - readme
        torch.testing.assert_close(offset, torch.full_like(offset, 0.5 / s), atol=2e-3, rtol=0)

    def test_masks_line_up(self):
        data = self.data
        in_mask, in_image = data.lookup_masks(torch.zeros(1, 3))
        self.assertTrue(bool(in_image.all()) and bool(in_mask.all()))
        shares = mask_consistency(data, grid_points())
        self.assertGreater(min(shares), 0.7)
        self.assertGreater(sum(shares) / len(shares), 0.93)

    def test_without_masks_and_errors(self):
        data = load_dtu_monosdf(self.root, views=[3], mask_dir=None)
        self.assertTrue(bool(data.masks.all()))
        with self.assertRaisesRegex(FileNotFoundError, "mask"):
            load_dtu_monosdf(self.root, views=[3], mask_dir="nope")
        with self.assertRaisesRegex(ValueError, "no image"):
            load_dtu_monosdf(self.root, views=[77])
