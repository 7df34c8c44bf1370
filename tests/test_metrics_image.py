"""Tests of dvr_plugin.metrics.image against hand-computed values and a NumPy SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
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


def init_images(batch=2, height=16, width=18, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, height, width, channels, generator=gen, dtype=torch.float64)


def test_psnr_hand_values():
    target = torch.full((2, 4, 5, 3), 0.1)
    pred = torch.zeros(2, 4, 5, 3)
    pred[1] = 0.1 + 0.01  # MSE 1e-4 -> 40 dB
    np.testing.assert_allclose(psnr(pred, target).numpy(), [20.0, 40.0], rtol=1e-5)
    # Same in 8-bit units.
    np.testing.assert_allclose(
        psnr(pred * 255, target * 255, max_val=255.0).numpy(), [20.0, 40.0], rtol=1e-5
    )
    assert float(psnr(target, target.clone())[0]) == math.inf


def test_psnr_with_mask():
    target = torch.zeros(1, 2, 2, 3)
    pred = torch.zeros(1, 2, 2, 3)
    pred[0, 0, 0] = 0.5  # one bad pixel, error 0.5 in all three channels
    # Unmasked: MSE = 0.25 * 3 / 12 = 0.0625 -> 10 log10(16) dB.
    assert float(psnr(pred, target)) == pytest.approx(10 * math.log10(16), abs=5e-6)
    # Mask of the bad pixel and one good one: MSE = 0.25 * 3 / 6 = 0.125.
    mask = torch.tensor([[[True, True], [False, False]]])
    assert float(psnr(pred, target, mask=mask)) == pytest.approx(10 * math.log10(8), abs=5e-6)
    # (B, H, W, 1) float masks work too.
    fmask = mask[..., None].float()
    assert float(psnr(pred, target, mask=fmask)) == pytest.approx(10 * math.log10(8), abs=5e-6)
    # Only good pixels: infinite PSNR; no pixel: NaN.
    good = torch.tensor([[[False, True], [True, True]]])
    assert float(psnr(pred, target, mask=good)) == math.inf
    assert math.isnan(float(psnr(pred, target, mask=torch.zeros(1, 2, 2))))


def test_ssim_identical_is_one():
    images = init_images()
    np.testing.assert_allclose(ssim(images, images.clone()).numpy(), 1.0, rtol=1e-12)


def test_ssim_matches_numpy():
    x = init_images(batch=2, height=13, width=15, channels=2)
    y = (x + 0.2 * init_images(batch=2, height=13, width=15, channels=2, seed=1)).clamp(
        0, 1
    )
    out = ssim(x, y)
    for b in range(2):
        assert float(out[b]) == pytest.approx(numpy_ssim(x[b], y[b]), abs=5e-11)
    # A small window and a different range.
    out = ssim(x * 255, y * 255, max_val=255.0, window_size=3, sigma=0.8)
    ref = numpy_ssim(x[0] * 255, y[0] * 255, max_val=255.0, window_size=3, sigma=0.8)
    assert float(out[0]) == pytest.approx(ref, abs=5e-9)


def test_ssim_of_constant_images():
    """Constant images a, b: zero variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b = 0.3, 0.6
    c1 = 0.01**2
    x = torch.full((1, 12, 12, 1), a, dtype=torch.float64)
    y = torch.full((1, 12, 12, 1), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert float(ssim(x, y)) == pytest.approx(expected, abs=5e-11)


def test_ssim_decreases_with_noise():
    clean = init_images(batch=1, height=32, width=32)
    noise = torch.randn(
        clean.shape, generator=torch.Generator().manual_seed(1), dtype=clean.dtype
    )
    scores = [
        float(ssim(clean, (clean + s * noise).clamp(0, 1))) for s in (0.0, 0.05, 0.1, 0.3)
    ]
    assert scores[0] == pytest.approx(1.0, abs=5e-8)
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores


def test_ssim_float32():
    x = init_images().float()
    y = (x + 0.1).clamp(0, 1)
    np.testing.assert_allclose(
        ssim(x, y).numpy(), ssim(x.double(), y.double()).numpy(), rtol=1e-4
    )


def test_mask_iou():
    pred = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]], dtype=torch.bool)
    gt = torch.tensor([[[1, 0, 0], [0, 0, 1]], [[1, 1, 1], [1, 1, 1]]], dtype=torch.bool)
    np.testing.assert_allclose(mask_iou(pred, gt).numpy(), [1 / 3, 1.0])
    # A rendered alpha channel, thresholded at 0.5.
    alpha = torch.tensor([[[0.9, 0.6, 0.4], [0.1, 0.0, 0.2]]])[..., None]
    np.testing.assert_allclose(mask_iou(alpha, gt[:1]).numpy(), [1 / 3])
    np.testing.assert_allclose(mask_iou(alpha, gt[:1], threshold=0.3).numpy(), [1 / 4])
    empty = torch.zeros(1, 2, 3, dtype=torch.bool)
    assert math.isnan(float(mask_iou(empty, empty)))


def test_depth_error():
    gt = torch.tensor([[[1.0, 2.0, -1.0], [3.0, math.inf, 4.0]]])
    pred = torch.tensor([[[1.5, 1.0, 2.0], [-1.0, 2.0, 4.25]]])
    # Valid in both: (0,0) |0.5|, (0,1) |1.0|, (1,2) |0.25| -> mean 0.5833...
    assert float(depth_error(pred, gt)) == pytest.approx((0.5 + 1.0 + 0.25) / 3, abs=5e-7)
    mask = torch.tensor([[[True, False, True], [True, True, True]]])
    assert float(depth_error(pred, gt, gt_mask=mask)) == pytest.approx(0.375, abs=5e-7)
    masked = depth_error(pred[..., None], gt[..., None], pred_mask=mask[..., None])
    assert float(masked) == pytest.approx(0.375, abs=5e-7)
    none = torch.zeros(1, 2, 3, dtype=torch.bool)
    assert math.isnan(float(depth_error(pred, gt, pred_mask=none)))


def test_invalid_inputs():
    images = init_images()
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(images, images[:1])
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        ssim(images[0], images[0])
    with pytest.raises(ValueError, match="smaller than"):
        ssim(images[:, :8], images[:, :8])
    with pytest.raises(ValueError, match="odd"):
        ssim(images, images, window_size=4)
    with pytest.raises(ValueError, match="mask"):
        psnr(images, images, mask=torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="Depth maps"):
        depth_error(images[..., 0], images[:1, ..., 0])
