"""
Where the held-out error inside the mask comes from: render a fitted checkpoint's views and split
the squared error of the pixels inside the true mask into

- the pixels the render misses (no surface hit: they show the background),
- the hit pixels on the silhouette's border (within ``border`` pixels of the mask's edge),
- the hit pixels inside (the rest),

then ask what the inside would score with a per-view affine colour fix (an exposure or white
balance error), and with both images blurred by a Gaussian (an error of fine detail only: the
texture is right at a coarser scale), beside how much fine detail the photographs themselves
hold at that scale (the photograph against its own blurred copy).

Images are channels-last RGB in [0, 1]; PSNR in dB with peak 1; shares are fractions of the
summed squared error inside the mask. No file this writes holds geometry (no frame to state).

    python -m integration.benchmarks.psnr_breakdown outputs/dtu24/checkpoint.pt \
        --views held-out --out outputs/dtu24/psnr_breakdown

Writes ``psnr_breakdown.json`` (every number, per view too), ``psnr_breakdown.md`` (one table)
and ``error_maps.png`` (per view: photograph | render | error inside the mask | normals).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dvr_plugin.metrics.image import gaussian_window, psnr


def _psnr_of(mse: torch.Tensor) -> float:
    value = float(mse)
    if math.isnan(value):
        return math.nan
    return math.inf if value <= 0.0 else -10.0 * math.log10(value)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """
    Separable Gaussian blur with edge replication.

    Args:
        images: `(N, H, W, C)` images.
        sigma: the standard deviation in pixels (> 0); the kernel spans ``3 sigma`` each side.

    Returns:
        `(N, H, W, C)` blurred images.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    radius = max(1, math.ceil(3 * sigma))
    kernel = gaussian_window(2 * radius + 1, sigma, dtype=images.dtype, device=images.device)
    channels = images.shape[-1]
    x = images.permute(0, 3, 1, 2)
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x.permute(0, 2, 3, 1)


def eroded(mask: torch.Tensor, border: int) -> torch.Tensor:
    """`(N, H, W)` bool: the pixels of ``mask`` at least ``border`` pixels from its edge
    (square neighbourhood; pixels outside the image count as outside the mask)."""
    if border == 0:
        return mask.clone()
    size = 2 * border + 1
    outside = (~mask).float()[:, None]
    near = F.max_pool2d(F.pad(outside, (border,) * 4, value=1.0), size, stride=1)[:, 0] > 0.5
    return mask & ~near


def error_breakdown(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    hit: torch.Tensor,
    *,
    border: int = 2,
    blur_sigmas: Sequence[float] = (1.0, 2.0),
) -> dict[str, Any]:
    """
    Split the squared error inside the true mask (pooled over all views).

    Args:
        pred: `(N, H, W, 3)` renders in [0, 1].
        target: `(N, H, W, 3)` photographs in [0, 1].
        mask: `(N, H, W)` bool, the true object masks.
        hit: `(N, H, W)` bool, the pixels where the render found the surface.
        border: width in pixels of the silhouette's border band (>= 0).
        blur_sigmas: Gaussian sigmas (pixels) of the blurred comparisons.

    Returns:
        ``psnr_in_mask``; ``missed_fraction`` (of the mask's pixels) and ``missed_share`` (of its
        squared error); ``missed_on_border`` (the fraction of the missed pixels that lie within
        ``border`` pixels of the mask's edge: a silhouette off by a pixel or two, rather than a
        part of the object the surface does not reach); ``border_share``; ``psnr_inside`` (hit
        pixels away from the border);
        ``psnr_inside_affine`` (after a least-squares ``3 x 4`` colour map per view);
        ``psnr_inside_blurred`` and ``psnr_photo_detail`` (dicts keyed by sigma); ``per_view``
        PSNR in the mask.
    """
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[-1] != 3:
        raise ValueError(
            f"pred and target must both be (N, H, W, 3), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    if mask.shape != pred.shape[:3] or hit.shape != pred.shape[:3]:
        raise ValueError(
            f"mask and hit must be (N, H, W) = {tuple(pred.shape[:3])}, got "
            f"{tuple(mask.shape)} and {tuple(hit.shape)}."
        )
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}.")
    pred, target = pred.double(), target.double()
    mask, hit = mask.bool(), hit.bool()
    error = ((pred - target) ** 2).mean(-1)
    total = error[mask].sum()
    missed = mask & ~hit
    inner = eroded(mask, border)
    inside = inner & hit
    on_border = mask & hit & ~inside

    def share(region: torch.Tensor) -> float:
        return float(error[region].sum() / total) if total > 0 else 0.0

    affine = []
    for view in range(pred.shape[0]):
        selected = inside[view]
        count = int(selected.sum())
        if count == 0:
            continue
        inputs = torch.cat([pred[view][selected], pred.new_ones(count, 1)], dim=1)
        solution = torch.linalg.lstsq(inputs, target[view][selected]).solution
        affine.append(((inputs @ solution - target[view][selected]) ** 2).mean(-1))
    affine_error = torch.cat(affine) if affine else error.new_zeros(0)
    blurred, detail = {}, {}
    for sigma in blur_sigmas:
        soft_target = gaussian_blur(target, sigma)
        blurred_error = ((gaussian_blur(pred, sigma) - soft_target) ** 2).mean(-1)
        blurred[float(sigma)] = _psnr_of(blurred_error[inside].mean())
        detail[float(sigma)] = _psnr_of(((soft_target - target) ** 2).mean(-1)[inside].mean())
    return {
        "psnr_in_mask": _psnr_of(error[mask].mean()),
        "missed_fraction": float(missed.sum() / mask.sum().clamp(min=1)),
        "missed_share": share(missed),
        "missed_on_border": float((missed & ~inner).sum() / missed.sum().clamp(min=1)),
        "border_share": share(on_border),
        "inside_share": share(inside),
        "psnr_inside": _psnr_of(error[inside].mean()),
        "psnr_inside_affine": _psnr_of(affine_error.mean()),
        "psnr_inside_blurred": blurred,
        "psnr_photo_detail": detail,
        "per_view": [float(v) for v in psnr(pred, target, mask=mask)],
    }


def error_maps(rendered: Any, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """`(N H, 4 W, 3)`: per view photograph | render | RMS error inside the mask (white = 0.3 or
    more) | normals (``n / 2 + 1 / 2``)."""
    error = ((rendered.images.clamp(0, 1) - images) ** 2).mean(-1).sqrt() * masks
    error = (error / 0.3).clamp(0, 1)[..., None].expand(-1, -1, -1, 3)
    normals = (rendered.normals * 0.5 + 0.5).clamp(0, 1)
    rows = torch.cat([images, rendered.images.clamp(0, 1), error, normals], dim=2)
    return rows.reshape(-1, rows.shape[2], 3)


def _table(result: dict[str, Any], label: str) -> str:
    lines = [
        f"# Where the error inside the mask comes from: {label}",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| PSNR inside the mask | {result['psnr_in_mask']:.2f} dB |",
        f"| mask pixels the render misses | {100 * result['missed_fraction']:.2f}% of the "
        f"pixels, {100 * result['missed_share']:.1f}% of the error |",
        f"| missed pixels within the border band | {100 * result['missed_on_border']:.1f}% |",
        f"| hit pixels on the silhouette's border | {100 * result['border_share']:.1f}% of the "
        "error |",
        f"| hit pixels inside | {100 * result['inside_share']:.1f}% of the error, "
        f"{result['psnr_inside']:.2f} dB |",
        f"| inside, after a per-view affine colour fix | {result['psnr_inside_affine']:.2f} dB |",
    ]
    for sigma, value in result["psnr_inside_blurred"].items():
        lines.append(
            f"| inside, both images blurred (sigma {sigma:g} px) | {value:.2f} dB (the photograph "
            f"against its own blur: {result['psnr_photo_detail'][sigma]:.2f} dB) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from dvr_plugin.engine.checkpoint import load_checkpoint
    from dvr_plugin.engine.config import resolve_device
    from dvr_plugin.engine.evaluation import render_views
    from dvr_plugin.training.config import load_config
    from dvr_plugin.training.data import load_fit_data
    from dvr_plugin.training.trainer import build_field
    from dvr_plugin.visualize import save_png

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by `dvr fit`")
    parser.add_argument("--views", choices=("held-out", "train"), default="held-out")
    parser.add_argument("--every", type=int, default=1, help="every n-th view (default all)")
    parser.add_argument("--border", type=int, default=2, help="border band, pixels (default 2)")
    parser.add_argument("--steps", type=int, default=128, help="marching steps per ray")
    parser.add_argument(
        "--data", default=None, help="the fit's data folder, where it moved since the fit"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="the output folder")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        parser.error(f"no checkpoint at {args.checkpoint}")
    if args.every < 1 or args.border < 0 or args.steps < 2:
        parser.error("--every must be >= 1, --border >= 0 and --steps >= 2")
    if args.data is not None and not os.path.isdir(args.data):
        parser.error(f"--data: no folder at {args.data}")
    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint, map_location=device)
    config = load_config(base=state["config"])
    field = build_field(config).to(device)
    field.load_state_dict(state["model"])
    field.eval()
    data_config = config.data
    if args.data is not None:
        data_config = dataclasses.replace(data_config, path=args.data)
    data = load_fit_data(data_config, background=config.background, device=device)
    views = data.val if args.views == "held-out" else data.train
    index = list(range(0, len(views), args.every))
    rendered = render_views(
        field,
        views.cameras[index],
        views.image_size,
        n_steps=args.steps,
        background=config.background,
        batch_size=4 if device.type == "cuda" else 1,
        progress=True,
        description=f"{args.views} views",
    )
    images = views.images[index].detach().cpu().float()
    masks = views.masks[index].detach().cpu().bool()
    result = error_breakdown(
        rendered.images.float(), images, masks, rendered.masks > 0.5, border=args.border
    )
    result["settings"] = {"checkpoint": args.checkpoint, "views": args.views, "index": index}
    os.makedirs(args.out, exist_ok=True)
    ready = {
        key: {str(k): v for k, v in value.items()} if isinstance(value, dict) else value
        for key, value in result.items()
    }
    with open(os.path.join(args.out, "psnr_breakdown.json"), "w") as handle:
        json.dump(ready, handle, indent=1)
    table = _table(result, f"{args.views} views of {args.checkpoint}")
    with open(os.path.join(args.out, "psnr_breakdown.md"), "w") as handle:
        handle.write(table)
    save_png(error_maps(rendered, images, masks), os.path.join(args.out, "error_maps.png"))
    print(table)
    return result


if __name__ == "__main__":
    main()
