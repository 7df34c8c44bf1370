"""
NeRF-synthetic scenes (``transforms_<split>.json`` + RGBA images).

``transform_matrix`` is camera-to-world in Blender / OpenGL camera axes; the focal length comes
from ``camera_angle_x`` (``f = W / (2 tan(angle / 2))``) with the principal point at the image
centre. The scenes sit in roughly ``[-1.5, 1.5]^3``, so the default ``scale = 1/3`` maps them into
the unit cube ``[-0.5, 0.5]^3``: ``X_normalised = scale * X_blender``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .cameras import cameras_from_opencv, intrinsics_from_fov, opencv_from_blender
from .io import PathLike, check_empty_masks, read_rgb, require_dir, stack_views
from .multiview import MultiViewData


def _frame_image(root: Path, file_path: str) -> Path:
    path = (root / file_path).resolve()
    if path.suffix.lower() in (".png", ".jpg", ".jpeg") and path.is_file():
        return path
    for ext in (".png", ".jpg", ".jpeg"):
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Image for frame {file_path!r} not found under {root}.")


def _intrinsics(meta: dict, size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
        fy = float(meta.get("fl_y", fx))
        cx = float(meta.get("cx", 0.5 * width))
        cy = float(meta.get("cy", 0.5 * height))
        return torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64)
    if "camera_angle_x" not in meta:
        raise ValueError("The transforms file has neither camera_angle_x nor fl_x.")
    return intrinsics_from_fov(
        float(meta["camera_angle_x"]),
        size,
        fov_y=float(meta["camera_angle_y"]) if "camera_angle_y" in meta else None,
    )


def load_nerf_synthetic(
    root: PathLike,
    *,
    split: str = "train",
    scale: float = 1.0 / 3.0,
    background: Optional[Sequence[float]] = (1.0, 1.0, 1.0),
    views: Optional[Sequence[Union[int, str]]] = None,
    mask_threshold: float = 0.5,
    empty_masks: str = "warn",
) -> MultiViewData:
    """
    Load a NeRF-synthetic scene.

    Args:
        root: the scene folder (holding ``transforms_<split>.json``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        scale: world scale factor, ``X_normalised = scale * X_blender`` (1/3: the
            ``[-1.5, 1.5]^3`` scene box becomes the unit cube).
        background: RGB to composite transparent pixels onto (``rgb * a + bg * (1 - a)``), or
            ``None`` to keep the stored RGB.
        views: frame positions in the json, or image names (``"r_12"``), to load.
        mask_threshold: masks are ``alpha > mask_threshold`` (0.5 = 127 for 8-bit alpha).
        empty_masks: ``"error"``, ``"warn"`` or ``"ignore"``.

    Returns:
        :class:`MultiViewData` with ``to_world = diag(1/scale, 1/scale, 1/scale, 1)``.
    """
    root = require_dir(root, "NeRF-synthetic scene")
    meta_path = root / f"transforms_{split}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"Transforms file not found: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {meta_path}: {error}") from error
    frames = meta.get("frames")
    if not frames:
        raise ValueError(f"{meta_path.name} lists no frames.")
    paths = [_frame_image(root, frame["file_path"]) for frame in frames]
    if views is not None:
        positions = []
        for view in views:
            if isinstance(view, str):
                matches = [i for i, p in enumerate(paths) if p.stem == view]
                if not matches:
                    raise ValueError(f"No frame named {view!r} in {meta_path.name}.")
                positions.append(matches[0])
            else:
                if not 0 <= int(view) < len(frames):
                    raise ValueError(f"Frame position {view} out of range [0, {len(frames)}).")
                positions.append(int(view))
    else:
        positions = list(range(len(frames)))
    names = [paths[i].stem for i in positions]
    rgbs, alphas = [], []
    for i in positions:
        rgb, alpha = read_rgb(paths[i])
        if alpha is None:
            warnings.warn(f"{paths[i].name} has no alpha channel; its mask is all object.",
                          stacklevel=2)
            alpha = np.ones(rgb.shape[:2], dtype=np.float32)
        rgbs.append(rgb)
        alphas.append(alpha)
    rgb = stack_views(rgbs, names, "images")
    alpha = stack_views(alphas, names, "alpha channels")
    if background is not None:
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 1, 3)
        if bg.size != 3 or bg.min() < 0 or bg.max() > 1:
            raise ValueError(f"background must be an RGB triple in [0, 1], got {background}.")
        rgb = rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])
    masks = torch.from_numpy(alpha > mask_threshold)
    check_empty_masks(masks, names, empty_masks)
    try:
        c2w = np.stack([np.asarray(frames[i]["transform_matrix"], dtype=np.float64)
                        for i in positions])
    except (KeyError, ValueError) as error:
        raise ValueError(f"Bad transform_matrix in {meta_path.name}: {error}") from error
    size = rgb.shape[1:3]
    R, t = opencv_from_blender(c2w, scale=scale)
    K = _intrinsics(meta, size)
    cameras = cameras_from_opencv(R, t, K, size)
    inv = 1.0 / scale
    return MultiViewData(
        images=torch.from_numpy(np.ascontiguousarray(rgb)).clamp(0.0, 1.0),
        masks=masks,
        cameras=cameras,
        names=names,
        to_world=torch.diag(torch.tensor([inv, inv, inv, 1.0], dtype=torch.float64)),
        info={
            "format": "nerf_synthetic",
            "root": str(root),
            "split": split,
            "scale": scale,
            "background": None if background is None else list(background),
            "normalised_frame": f"X_normalised = {scale:.6g} * X_blender",
        },
    )
