"""Tests of dvr_plugin.metrics.image against hand-computed values and a NumPy SSIM."""

from __future__ import annotations

import math
import unittest

import numpy as np
import torch

from dvr_plugin.metrics import depth_error, mask_iou, psnr, ssim


def numpy_ssim(x, y, *, max_val=1.0, window_size=11, sigma=1.5):
    """SSIM of `(H, W, C)` images by explicit loops over every valid window position."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    coords = np.arange(window_size) - (window_size - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    values = []
    for c in range(x.shape[2]):
        for i in range(x.shape[0] - window_size + 1):
            for j in range(x.shape[1] - window_size + 1):
                a = x[i : i + window_size, j : j + window_size, c]
                b = y[i : i + window_size, j : j + window_size, c]
                mu_a, mu_b = (window * a).sum(), (window * b).sum()
                var_a = (window * (a - mu_a) ** 2).sum()
                var_b = (window * (b - mu_b) ** 2).sum()
                cov = (window * (a - mu_a) * (b - mu_b)).sum()
                values.append(
                    ((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                    / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
                )
    return float(np.mean(values))


class TestImageMetrics(unittest.TestCase):
    @staticmethod
    def init_images(batch=2, height=16, width=18, channels=3, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch, height, width, channels, generator=gen, dtype=torch.float64)

    def test_psnr_hand_values(self):
        target = torch.full((2, 4, 5, 3), 0.1)
        pred = torch.zeros(2, 4, 5, 3)
        pred[1] = 0.1 + 0.01  # MSE 1e-4 -> 40 dB
        np.testing.assert_allclose(psnr(pred, target).numpy(), [20.0, 40.0], rtol=1e-5)
        # Same in 8-bit units.
        np.testing.assert_allclose(
            psnr(pred * 255, target * 255, max_val=255.0).numpy(), [20.0, 40.0], rtol=1e-5
        )
        self.assertEqual(float(psnr(target, target.clone())[0]), math.inf)

    def test_psnr_with_mask(self):
        target = torch.zeros(1, 2, 2, 3)
        pred = torch.zeros(1, 2, 2, 3)
        pred[0, 0, 0] = 0.5  # one bad pixel, error 0.5 in all three channels
        # Unmasked: MSE = 0.25 * 3 / 12 = 0.0625 -> 10 log10(16) dB.
        self.assertAlmostEqual(float(psnr(pred, target)), 10 * math.log10(16), places=5)
        # Mask of the bad pixel and one good one: MSE = 0.25 * 3 / 6 = 0.125.
        mask = torch.tensor([[[True, True], [False, False]]])
        self.assertAlmostEqual(float(psnr(pred, target, mask=mask)), 10 * math.log10(8), places=5)
        # (B, H, W, 1) float masks work too.
        fmask = mask[..., None].float()
        self.assertAlmostEqual(float(psnr(pred, target, mask=fmask)), 10 * math.log10(8), places=5)
        # Only good pixels: infinite PSNR; no pixel: NaN.
        good = torch.tensor([[[False, True], [True, True]]])
        self.assertEqual(float(psnr(pred, target, mask=good)), math.inf)
        self.assertTrue(math.isnan(float(psnr(pred, target, mask=torch.zeros(1, 2, 2)))))

    def test_ssim_identical_is_one(self):
        images = self.init_images()
        np.testing.assert_allclose(ssim(images, images.clone()).numpy(), 1.0, rtol=1e-12)

    def test_ssim_matches_numpy(self):
        x = self.init_images(batch=2, height=13, width=15, channels=2)
        y = (x + 0.2 * self.init_images(batch=2, height=13, width=15, channels=2, seed=1)).clamp(
            0, 1
        )
        out = ssim(x, y)
        for b in range(2):
            self.assertAlmostEqual(float(out[b]), numpy_ssim(x[b], y[b]), places=10)
        # A small window and a different range.
        out = ssim(x * 255, y * 255, max_val=255.0, window_size=3, sigma=0.8)
        ref = numpy_ssim(x[0] * 255, y[0] * 255, max_val=255.0, window_size=3, sigma=0.8)
        self.assertAlmostEqual(float(out[0]), ref, places=8)

    def test_ssim_of_constant_images(self):
        """Constant images a, b: zero variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
        a, b = 0.3, 0.6
        c1 = 0.01**2
        x = torch.full((1, 12, 12, 1), a, dtype=torch.float64)
        y = torch.full((1, 12, 12, 1), b, dtype=torch.float64)
        expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
        self.assertAlmostEqual(float(ssim(x, y)), expected, places=10)

    def test_ssim_decreases_with_noise(self):
        clean = self.init_images(batch=1, height=32, width=32)
        noise = torch.randn(
            clean.shape, generator=torch.Generator().manual_seed(1), dtype=clean.dtype
        )
        scores = [
            float(ssim(clean, (clean + s * noise).clamp(0, 1))) for s in (0.0, 0.05, 0.1, 0.3)
        ]
        self.assertAlmostEqual(scores[0], 1.0)
        self.assertTrue(all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores)

    def test_ssim_float32(self):
        x = self.init_images().float()
        y = (x + 0.1).clamp(0, 1)
        np.testing.assert_allclose(
            ssim(x, y).numpy(), ssim(x.double(), y.double()).numpy(), rtol=1e-4
        )

    def test_mask_iou(self):
        pred = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]], dtype=torch.bool)
        gt = torch.tensor([[[1, 0, 0], [0, 0, 1]], [[1, 1, 1], [1, 1, 1]]], dtype=torch.bool)
        np.testing.assert_allclose(mask_iou(pred, gt).numpy(), [1 / 3, 1.0])
        # A rendered alpha channel, thresholded at 0.5.
        alpha = torch.tensor([[[0.9, 0.6, 0.4], [0.1, 0.0, 0.2]]])[..., None]
        np.testing.assert_allclose(mask_iou(alpha, gt[:1]).numpy(), [1 / 3])
        np.testing.assert_allclose(mask_iou(alpha, gt[:1], threshold=0.3).numpy(), [1 / 4])
        empty = torch.zeros(1, 2, 3, dtype=torch.bool)
        self.assertTrue(math.isnan(float(mask_iou(empty, empty))))

    def test_depth_error(self):
        gt = torch.tensor([[[1.0, 2.0, -1.0], [3.0, math.inf, 4.0]]])
        pred = torch.tensor([[[1.5, 1.0, 2.0], [-1.0, 2.0, 4.25]]])
        # Valid in both: (0,0) |0.5|, (0,1) |1.0|, (1,2) |0.25| -> mean 0.5833...
        self.assertAlmostEqual(float(depth_error(pred, gt)), (0.5 + 1.0 + 0.25) / 3, places=6)
        mask = torch.tensor([[[True, False, True], [True, True, True]]])
        self.assertAlmostEqual(float(depth_error(pred, gt, gt_mask=mask)), 0.375, places=6)
        self.assertAlmostEqual(
            float(depth_error(pred[..., None], gt[..., None], pred_mask=mask[..., None])),
            0.375,
            places=6,
        )
        none = torch.zeros(1, 2, 3, dtype=torch.bool)
        self.assertTrue(math.isnan(float(depth_error(pred, gt, pred_mask=none))))

    def test_invalid_inputs(self):
        images = self.init_images()
        with self.assertRaisesRegex(ValueError, "shapes differ"):
            psnr(images, images[:1])
        with self.assertRaisesRegex(ValueError, r"\(B, H, W, C\)"):
            ssim(images[0], images[0])
        with self.assertRaisesRegex(ValueError, "smaller than"):
            ssim(images[:, :8], images[:, :8])
        with self.assertRaisesRegex(ValueError, "odd"):
            ssim(images, images, window_size=4)
        with self.assertRaisesRegex(ValueError, "mask"):
            psnr(images, images, mask=torch.ones(2, 3, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "Depth maps"):
            depth_error(images[..., 0], images[:1, ..., 0])


if __name__ == "__main__":
    unittest.main()
