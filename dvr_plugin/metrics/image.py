"""
Image metrics for batched, channels-last renders (the layout of PyTorch3D's renderers).

- :func:`psnr`: ``10 log10(max_val^2 / MSE)`` in dB, MSE over pixels and channels
  (optionally only the pixels of a mask).
- :func:`ssim`: structural similarity (Wang et al. 2004) with an ``11 x 11`` Gaussian window
  (sigma 1.5), ``C1 = (0.01 max_val)^2``, ``C2 = (0.03 max_val)^2``, computed per channel over
  the valid (unpadded) window positions and averaged over positions and channels.
- :func:`mask_iou`: intersection over union of binary masks.
- :func:`depth_error`: mean absolute depth difference over pixels valid in both depth maps.

Every function returns one value per batch item, `(B,)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4:
        raise ValueError(f"Images must have shape (B, H, W, C), got {tuple(pred.shape)}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}."
        )
    if pred.device != target.device:
        raise ValueError(
            f"pred is on {pred.device} but target is on {target.device}; they must share a device."
        )


def _as_mask(name: str, mask: torch.Tensor, shape: torch.Size, threshold: float) -> torch.Tensor:
    """A `(B, H, W)` bool mask from `(B, H, W)` or `(B, H, W, 1)`, bool or float (> threshold)."""
    if mask.dim() == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} or {tuple(shape) + (1,)}, "
            f"got {tuple(mask.shape)}."
        )
    return mask if mask.dtype == torch.bool else mask > threshold


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    max_val: float = 1.0,
) -> torch.Tensor:
    """
    Peak signal-to-noise ratio, ``10 log10(max_val^2 / MSE)`` dB.

    Args:
        pred: `(B, H, W, C)` images.
        target: `(B, H, W, C)` reference images.
        mask: `(B, H, W)` or `(B, H, W, 1)` pixels to score (bool, or float > 0.5); the MSE is
            then the mean over those pixels and all channels.
        max_val: the peak value of the pixel range (1 for images in [0, 1]).

    Returns:
        `(B,)` PSNR in dB: ``inf`` for identical images, NaN for an empty mask.
    """
    _check_images(pred, target)
    sq = (pred - target).to(torch.promote_types(pred.dtype, torch.float32)) ** 2
    if mask is None:
        mse = sq.flatten(1).mean(dim=1)
    else:
        m = _as_mask("mask", mask, pred.shape[:3], 0.5).to(device=sq.device)
        count = m.flatten(1).sum(dim=1).to(sq.dtype) * pred.shape[-1]
        mse = (sq * m[..., None]).flatten(1).sum(dim=1) / count
    return 10.0 * torch.log10(max_val**2 / mse)


def gaussian_window(
    window_size: int,
    sigma: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`(window_size,)` normalised 1D Gaussian weights centred on the middle tap."""
    coords = torch.arange(window_size, dtype=dtype, device=device) - (window_size - 1) / 2.0
    weights = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    max_val: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """
    Structural similarity index (Wang, Bovik, Sheikh, Simoncelli 2004).

    Local means, variances and the covariance come from a separable Gaussian window without
    padding (only positions where the window fits, as in the reference implementation); the
    SSIM map ``((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``
    with ``C1 = (k1 max_val)^2`` and ``C2 = (k2 max_val)^2`` is averaged over positions and
    channels.

    Args:
        pred: `(B, H, W, C)` images, `H, W >= window_size`.
        target: `(B, H, W, C)` reference images.
        max_val: the dynamic range of the pixel values.
        window_size: side of the Gaussian window (odd).
        sigma: standard deviation of the window in pixels.
        k1, k2: the stabilising constants.

    Returns:
        `(B,)` SSIM, 1 for identical images.
    """
    _check_images(pred, target)
    height, width = pred.shape[1:3]
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}.")
    if height < window_size or width < window_size:
        raise ValueError(
            f"Images of {height}x{width} pixels are smaller than the {window_size}x{window_size} "
            "SSIM window."
        )
    dtype = torch.promote_types(pred.dtype, torch.float32)
    channels = pred.shape[-1]
    x = pred.to(dtype).permute(0, 3, 1, 2)
    y = target.to(dtype).permute(0, 3, 1, 2)
    g = gaussian_window(window_size, sigma, dtype=dtype, device=pred.device)
    kernel_h = g.view(1, 1, window_size, 1).expand(channels, 1, window_size, 1)
    kernel_w = g.view(1, 1, 1, window_size).expand(channels, 1, 1, window_size)

    def blur(img: torch.Tensor) -> torch.Tensor:
        img = F.conv2d(img, kernel_h, groups=channels)
        return F.conv2d(img, kernel_w, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1)


def mask_iou(
    pred_mask: torch.Tensor, gt_mask: torch.Tensor, *, threshold: float = 0.5
) -> torch.Tensor:
    """
    Intersection over union of binary masks.

    Args:
        pred_mask: `(B, H, W)` or `(B, H, W, 1)`, bool or float (foreground where > threshold,
            e.g. a rendered alpha channel).
        gt_mask: the same layout.
        threshold: binarisation threshold for float masks.

    Returns:
        `(B,)` IoU; NaN where both masks are empty.
    """
    if pred_mask.dim() not in (3, 4):
        raise ValueError(
            f"Masks must have shape (B, H, W) or (B, H, W, 1), got {tuple(pred_mask.shape)}."
        )
    if pred_mask.device != gt_mask.device:
        raise ValueError(f"pred_mask is on {pred_mask.device} but gt_mask is on {gt_mask.device}.")
    shape = pred_mask.shape[:3]
    p = _as_mask("pred_mask", pred_mask, shape, threshold)
    g = _as_mask("gt_mask", gt_mask, shape, threshold)
    inter = (p & g).flatten(1).sum(dim=1).float()
    union = (p | g).flatten(1).sum(dim=1).float()
    return inter / union


def depth_error(
    pred_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    *,
    pred_mask: torch.Tensor | None = None,
    gt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Mean absolute depth error over the pixels valid in both maps.

    A pixel is valid in a depth map when its depth is finite and positive (PyTorch3D's
    ``zbuf`` marks background with -1) and, when a mask is given, the mask is set there.

    Args:
        pred_depth: `(B, H, W)` or `(B, H, W, 1)` depths (e.g. z-depth).
        gt_depth: the same layout.
        pred_mask, gt_mask: optional `(B, H, W)` or `(B, H, W, 1)` masks (bool or float > 0.5).

    Returns:
        `(B,)` mean ``|pred - gt|`` in the depth's units; NaN where no pixel is valid in both.
    """
    if pred_depth.dim() == 4 and pred_depth.shape[-1] == 1:
        pred_depth = pred_depth[..., 0]
    if gt_depth.dim() == 4 and gt_depth.shape[-1] == 1:
        gt_depth = gt_depth[..., 0]
    if pred_depth.dim() != 3 or pred_depth.shape != gt_depth.shape:
        raise ValueError(
            "Depth maps must both have shape (B, H, W) or (B, H, W, 1), got "
            f"{tuple(pred_depth.shape)} and {tuple(gt_depth.shape)}."
        )
    if pred_depth.device != gt_depth.device:
        raise ValueError(
            f"pred_depth is on {pred_depth.device} but gt_depth is on {gt_depth.device}."
        )
    shape = pred_depth.shape
    valid = (
        torch.isfinite(pred_depth) & (pred_depth > 0) & torch.isfinite(gt_depth) & (gt_depth > 0)
    )
    if pred_mask is not None:
        valid = valid & _as_mask("pred_mask", pred_mask, shape, 0.5)
    if gt_mask is not None:
        valid = valid & _as_mask("gt_mask", gt_mask, shape, 0.5)
    diff = torch.where(valid, (pred_depth - gt_depth).abs(), torch.zeros_like(pred_depth))
    count = valid.flatten(1).sum(dim=1).to(diff.dtype)
    return diff.flatten(1).sum(dim=1) / count
