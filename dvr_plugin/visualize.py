"""Turning renders into pictures: depth and normal colouring, image grids, PNG/GIF writing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """`(H, W, C)` or `(H, W)` floats in [0, 1] -> uint8 array."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_depth(
    depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    near: float | None = None,
    far: float | None = None,
    cmap: str = "viridis",
) -> torch.Tensor:
    """
    Colour a depth map (near = bright), white where ``mask`` is 0.

    Args:
        depth: `(H, W)` z-depths. mask: `(H, W)` valid pixels (default: depth > 0).
        near, far: the range mapped to the colour map (default: the masked min / max).

    Returns:
        `(H, W, 3)` float image in [0, 1].
    """
    import matplotlib

    depth = depth.detach().cpu().float()
    valid = (depth > 0) if mask is None else mask.detach().cpu() > 0.5
    out = torch.ones(*depth.shape, 3)
    if bool(valid.any()):
        lo = float(depth[valid].min()) if near is None else near
        hi = float(depth[valid].max()) if far is None else far
        scaled = ((hi - depth) / max(hi - lo, 1e-8)).clamp(0, 1)
        colours = torch.from_numpy(matplotlib.colormaps[cmap](scaled.numpy())[..., :3]).float()
        out[valid] = colours[valid]
    return out


def colorize_normals(normals: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`(H, W, 3)` unit normals -> `(H, W, 3)` colours ``(n + 1) / 2``, white where not ``mask``."""
    normals = normals.detach().cpu().float()
    colours = 0.5 * (normals + 1.0)
    if mask is not None:
        colours = torch.where(mask.detach().cpu()[..., None] > 0.5, colours, 1.0)
    return colours


def image_grid(rows: Sequence[Sequence[torch.Tensor]], *, pad: int = 2) -> torch.Tensor:
    """
    Tile images (each `(H, W, 3)` or `(H, W)`, same H and W) into one `(H', W', 3)` image with
    white padding; ``rows[i][j]`` goes to row ``i``, column ``j``.
    """
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one image.")
    height, width = rows[0][0].shape[:2]
    n_cols = max(len(row) for row in rows)
    canvas = torch.ones(
        len(rows) * (height + pad) + pad, n_cols * (width + pad) + pad, 3, dtype=torch.float32
    )
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            image = image.detach().cpu().float()
            if image.shape[:2] != (height, width):
                raise ValueError("All images in a grid must have the same height and width.")
            if image.dim() == 2:
                image = image[..., None].expand(-1, -1, 3)
            top, left = pad + i * (height + pad), pad + j * (width + pad)
            canvas[top : top + height, left : left + width] = image[..., :3]
    return canvas


def save_png(image: torch.Tensor | np.ndarray, path: str) -> None:
    """Write an `(H, W, 3)` float image in [0, 1] to a PNG file (iopath paths accepted)."""
    from PIL import Image

    from .io import open_path

    with open_path(path, "wb") as handle:
        Image.fromarray(to_uint8(image)).save(handle, format="PNG")


def save_gif(frames: Sequence[torch.Tensor], path: str, *, fps: int = 12) -> None:
    """Write `(H, W, 3)` float frames to an animated GIF (iopath paths accepted)."""
    from PIL import Image

    from .io import open_path

    if not frames:
        raise ValueError("save_gif needs at least one frame.")
    images = [Image.fromarray(to_uint8(frame)) for frame in frames]
    with open_path(path, "wb") as handle:
        images[0].save(
            handle,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=int(1000 / fps),
            loop=0,
        )
