"""
The reference DVR multi-view layout: ``image/``, ``mask/``, optional ``depth/`` and
``cameras.npz`` with ``camera_mat_i``, ``world_mat_i`` and ``scale_mat_i``.

The reference pairs the ``i``-th file of each sorted folder with ``*_mat_i`` (the sorted
*position*, not a number in the name); that is the default here. The reference's object frame
(the unit cube for ShapeNet; ``scale_mat`` maps it to the world for DTU) is used as the
normalised frame as it is, so ``to_world = scale_mat``. Depth maps hold the reference's ``d``
(``camera_mat @ world_mat @ scale_mat @ X = (x d, y d, d, 1)``), background ``inf``; they are
converted to z-depth in the object frame (0 for background).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .cameras import cameras_from_opencv, dvr_from_opencv, opencv_from_cameras, opencv_from_dvr
from .io import (
    DEPTH_EXTENSIONS,
    IMAGE_EXTENSIONS,
    PathLike,
    check_empty_masks,
    index_from_name,
    list_files,
    read_depth,
    read_grey,
    read_rgb,
    require_dir,
    stack_views,
)
from .multiview import MultiViewData

CAMERA_INDEX_MODES = ("position", "name")


def _pair(files: list[Path], mode: str, what: str) -> list[int]:
    if mode == "position":
        return list(range(len(files)))
    numbers = [index_from_name(p) for p in files]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"Two {what} files share a view number.")
    return numbers


def load_dvr_layout(
    root: PathLike,
    *,
    image_dir: str = "image",
    mask_dir: Optional[str] = "mask",
    depth_dir: Optional[str] = "depth",
    cameras_file: str = "cameras.npz",
    camera_index: str = "position",
    views: Optional[Sequence[int]] = None,
    mask_threshold: float = 0.5,
    empty_masks: str = "warn",
    max_skew: float = 1e-2,
) -> MultiViewData:
    """
    Load one object in the reference DVR layout.

    Args:
        root: the object folder.
        image_dir, mask_dir, depth_dir: folder names; ``mask_dir=None`` loads no masks (all
            object); the depth folder is read when it exists (``depth_dir=None`` skips it).
        cameras_file: the camera archive.
        camera_index: ``"position"`` (the reference: ``*_mat_i`` belongs to the ``i``-th sorted
            file) or ``"name"`` (the number in the file name).
        views: camera indices to load.
        mask_threshold: masks are ``value > mask_threshold`` (values in [0, 1]); the reference
            takes any non-zero value, the same for binary masks.
        empty_masks: ``"error"``, ``"warn"`` or ``"ignore"``.
        max_skew: the largest intrinsic skew (pixels) dropped without complaint.

    Depth files: ``.npy`` / ``.npz`` always; ``.exr`` (the reference's format) when ``imageio`` has
    an EXR backend, otherwise a ``ValueError`` says how to convert them.
    """
    if camera_index not in CAMERA_INDEX_MODES:
        raise ValueError(f"camera_index must be one of {CAMERA_INDEX_MODES}, got {camera_index!r}.")
    root = require_dir(root, "DVR object")
    image_files = list_files(require_dir(root / image_dir, "image"), IMAGE_EXTENSIONS)
    camera_path = root / cameras_file
    if not camera_path.is_file():
        raise FileNotFoundError(f"Camera file not found: {camera_path}")
    try:
        with np.load(camera_path) as archive:
            cams = {key: np.asarray(archive[key], dtype=np.float64) for key in archive.files}
    except Exception as error:
        raise ValueError(f"Cannot read camera file {camera_path}: {error}") from error
    n_cameras = len([k for k in cams if k.startswith("world_mat_") and "inv" not in k])
    ids = _pair(image_files, camera_index, "image")
    if camera_index == "position" and n_cameras != len(image_files):
        raise ValueError(
            f"{image_dir}/ holds {len(image_files)} images but {cameras_file} has {n_cameras} "
            "world_mat_i; with camera_index='position' they must match."
        )
    by_id = dict(zip(ids, image_files, strict=True))
    if views is not None:
        missing = [v for v in views if v not in by_id]
        if missing:
            raise ValueError(f"Requested views {missing} are not available; have {sorted(by_id)}.")
        ids = [int(v) for v in views]
    for key in ("camera_mat", "world_mat"):
        missing = [i for i in ids if f"{key}_{i}" not in cams]
        if missing:
            raise ValueError(f"{cameras_file} lacks {key}_i for views {missing}.")
    names = [by_id[i].stem for i in ids]
    images = stack_views([read_rgb(by_id[i])[0] for i in ids], names, "images")
    size = images.shape[1:3]

    def aligned(folder: Path, extensions: Sequence[str], what: str) -> list[Path]:
        files = list_files(folder, extensions, what=what)
        if len(files) != len(image_files):
            raise ValueError(
                f"{folder.name}/ holds {len(files)} {what} files for {len(image_files)} images."
            )
        other = dict(zip(_pair(files, camera_index, what), files, strict=True))
        missing = [i for i in ids if i not in other]
        if missing:
            raise ValueError(f"No {what} file in {folder} for views {missing}.")
        return [other[i] for i in ids]

    if mask_dir is None:
        masks = torch.ones(len(ids), *size, dtype=torch.bool)
    else:
        mask_files = aligned(require_dir(root / mask_dir, "mask"), IMAGE_EXTENSIONS, "mask")
        stacked = stack_views([read_grey(p) for p in mask_files], names, "masks")
        if stacked.shape[1:] != size:
            raise ValueError(f"Masks are {stacked.shape[1:]} but images are {size}.")
        masks = torch.from_numpy(stacked > mask_threshold)
    check_empty_masks(masks, names, empty_masks)

    camera_mat = np.stack([cams[f"camera_mat_{i}"] for i in ids])
    world_mat = np.stack([cams[f"world_mat_{i}"] for i in ids])
    scale_mat = np.stack([cams.get(f"scale_mat_{i}", np.eye(4)) for i in ids])
    if np.abs(scale_mat - scale_mat[:1]).max() > 1e-6 * max(1.0, np.abs(scale_mat[0]).max()):
        warnings.warn(
            "scale_mat_i differ between views; each camera uses its own, to_world is the first.",
            stacklevel=2,
        )
    K, R, t, depth_scale = opencv_from_dvr(
        camera_mat, world_mat, size, scale_mat=scale_mat, max_skew=max_skew
    )

    depths = None
    if depth_dir is not None and (root / depth_dir).is_dir():
        depth_files = aligned(root / depth_dir, DEPTH_EXTENSIONS, "depth")
        raw = stack_views([read_depth(p) for p in depth_files], names, "depth maps")
        if raw.shape[1:] != size:
            raise ValueError(f"Depth maps are {raw.shape[1:]} but images are {size}.")
        raw = np.where(np.isfinite(raw) & (raw > 0), raw, 0.0)
        depths = torch.from_numpy(raw / depth_scale.numpy()[:, None, None]).float()

    cameras = cameras_from_opencv(R, t, K, size)
    return MultiViewData(
        images=torch.from_numpy(images),
        masks=masks,
        depths=depths,
        cameras=cameras,
        names=names,
        to_world=torch.from_numpy(scale_mat[0]),
        info={
            "format": "dvr",
            "root": str(root),
            "camera_index": camera_index,
            "views": ids,
            "normalised_frame": "the reference's object frame (X_world = scale_mat @ X)",
        },
    )


def write_dvr_layout(
    root: PathLike,
    data: MultiViewData,
    *,
    scale_mat: Optional[torch.Tensor] = None,
    depth_format: str = "npy",
) -> Path:
    """
    Write ``data`` in the reference DVR layout (``image/NNNN.png``, ``mask/NNNN.png``,
    ``depth/NNNN.npy`` with ``inf`` background when ``data`` has depth, ``cameras.npz``).

    Args:
        root: the object folder to create (it must not hold an ``image/`` folder already).
        data: the views; their normalised frame becomes the reference's object frame.
        scale_mat: `(4, 4)` object-frame-to-world map stored as ``scale_mat_i``; defaults to
            ``data.to_world``. ``world_mat_i = [R | t] @ scale_mat^-1``.
        depth_format: only ``"npy"`` (EXR writing needs backends that are not assumed).

    Returns:
        ``root`` as a ``Path``.
    """
    from PIL import Image

    if depth_format != "npy":
        raise ValueError(f"depth_format must be 'npy', got {depth_format!r}.")
    root = Path(root)
    if (root / "image").exists():
        raise ValueError(f"{root / 'image'} exists already; write into a fresh folder.")
    for sub in ("image", "mask") + (("depth",) if data.depths is not None else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    S = data.to_world if scale_mat is None else torch.as_tensor(scale_mat, dtype=torch.float64)
    R, t, K = opencv_from_cameras(data.cameras)
    camera_mat, world_mat = dvr_from_opencv(R, t, K, data.image_size, scale_mat=S)
    arrays: dict[str, np.ndarray] = {}
    images = (data.images.detach().cpu().numpy() * 255.0).round().astype(np.uint8)
    masks = data.masks.detach().cpu().numpy().astype(np.uint8) * 255
    for i in range(len(data)):
        name = f"{i:04d}"
        Image.fromarray(images[i]).save(root / "image" / f"{name}.png")
        Image.fromarray(masks[i]).save(root / "mask" / f"{name}.png")
        if data.depths is not None:
            depth = data.depths[i].detach().cpu().numpy().astype(np.float32)
            np.save(root / "depth" / f"{name}.npy", np.where(depth > 0, depth, np.inf))
        arrays[f"camera_mat_{i}"] = camera_mat[i].numpy()
        arrays[f"world_mat_{i}"] = world_mat[i].numpy()
        arrays[f"scale_mat_{i}"] = S.numpy()
    np.savez(root / "cameras.npz", **arrays)
    return root
