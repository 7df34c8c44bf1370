"""
DTU scans in the IDR / NeuS layout and in the MonoSDF 384x384 crop.

Cameras come as ``world_mat_i = K [R | t]`` (pixel units, pixel centres at integer coordinates)
and ``scale_mat_i`` (``X_world = scale_mat @ X_sphere``, the unit sphere around the object). The
normalised frame puts that sphere at radius ``object_radius`` (0.5 by default), so the object lies
inside the unit sphere of radius 0.5 and hence inside DVR's unit cube ``[-0.5, 0.5]^3``:
``X_world = scale_mat @ diag(2, 2, 2, 1) @ X_normalised``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .cameras import cameras_from_opencv, dtu_to_world, opencv_from_dtu
from .io import (
    IMAGE_EXTENSIONS,
    PathLike,
    check_empty_masks,
    first_existing_dir,
    index_files,
    list_files,
    read_grey,
    read_rgb,
    require_dir,
    stack_views,
)
from .multiview import MultiViewData

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz", "cameras_large.npz")
IMAGE_DIRS = ("image", "images", "rgb")
MASK_DIRS = ("mask", "masks")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            return {key: np.asarray(archive[key]) for key in archive.files}
    except Exception as error:  # unreadable archive
        raise ValueError(f"Cannot read camera file {path}: {error}") from error


def _find_camera_file(root: Path, cameras_file: Optional[str]) -> Path:
    if cameras_file is not None:
        path = root / cameras_file
        if not path.is_file():
            raise FileNotFoundError(f"Camera file not found: {path}")
        return path
    for name in CAMERA_FILES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"No camera file in {root}; looked for {', '.join(CAMERA_FILES)}.")


def _select(indexed: dict[int, Path], views: Optional[Sequence[int]], what: str) -> list[int]:
    ids = sorted(indexed)
    if views is None:
        return ids
    missing = [v for v in views if v not in indexed]
    if missing:
        raise ValueError(f"Requested views {missing} have no {what} file; available: {ids}.")
    return [int(v) for v in views]


def _camera_matrices(
    cams: dict[str, np.ndarray], ids: Sequence[int], path: Path
) -> tuple[np.ndarray, np.ndarray]:
    missing = [i for i in ids if f"world_mat_{i}" not in cams]
    if missing:
        raise ValueError(
            f"{path.name} has no world_mat for views {missing} (the view number is taken from "
            "the image file name)."
        )
    world = np.stack([cams[f"world_mat_{i}"] for i in ids]).astype(np.float64)
    if all(f"scale_mat_{i}" in cams for i in ids):
        scales = np.stack([cams[f"scale_mat_{i}"] for i in ids]).astype(np.float64)
        spread = np.abs(scales - scales[:1]).max()
        if spread > 1e-6 * max(1.0, np.abs(scales[0]).max()):
            raise ValueError(
                f"The scale_mat_i in {path.name} differ between views (by {spread:.3g}); one "
                "normalised frame needs one scale_mat."
            )
        scale = scales[0]
    else:
        warnings.warn(
            f"{path.name} lacks scale_mat_i; using the identity (world units unchanged up to "
            "object_radius).",
            stacklevel=4,
        )
        scale = np.eye(4)
    return world, scale


def _read_masks(
    mask_dir: Optional[Path], ids: Sequence[int], size: tuple[int, int], threshold: float
) -> torch.Tensor:
    if mask_dir is None:
        return torch.ones(len(ids), *size, dtype=torch.bool)
    indexed = index_files(list_files(mask_dir, IMAGE_EXTENSIONS, what="mask"), "mask")
    missing = [i for i in ids if i not in indexed]
    if missing:
        raise ValueError(f"No mask in {mask_dir} for views {missing}.")
    masks = [read_grey(indexed[i]) for i in ids]
    stacked = stack_views(masks, [indexed[i].name for i in ids], "masks")
    if stacked.shape[1:] != size:
        raise ValueError(f"Masks are {stacked.shape[1:]} but images are {size}.")
    return torch.from_numpy(stacked > threshold)


def _read_views(
    indexed: dict[int, Path], views: Optional[Sequence[int]], camera_path: Path
) -> tuple[list[int], np.ndarray, np.ndarray, list[str], np.ndarray]:
    """
    The views to load, with their cameras and images.

    Returns:
        ``(ids, world, scale, names, images)``: the view numbers, the ``world_mat`` of each view
        (`(N, 3, 4)` or `(N, 4, 4)`), the `(4, 4)` ``scale_mat``, the image names and the
        `(N, H, W, 3)` images.
    """
    ids = _select(indexed, views, "image")
    world, scale = _camera_matrices(_load_npz(camera_path), ids, camera_path)
    names = [indexed[i].stem for i in ids]
    images = stack_views([read_rgb(indexed[i])[0] for i in ids], names, "images")
    return ids, world, scale, names, images


def _load_scan(
    *,
    indexed: dict[int, Path],
    views: Optional[Sequence[int]],
    camera_path: Path,
    mask_folder: Optional[Path],
    mask_threshold: float,
    object_radius: float,
    max_skew: float,
    crop_from: Optional[tuple[int, int]],
    empty_masks: str,
    info: dict,
) -> MultiViewData:
    """
    The views of a scan (:func:`_read_views`, masks from ``mask_folder`` or all object when it is
    ``None``) in the normalised frame; ``info`` gains the view numbers, ``object_radius`` and
    the frame's name.

    ``crop_from``: ``None`` when the images are the full-resolution ones (pixel centres at
    integer coordinates); else the ``(H, W)`` of the originals that the images are centre crops
    of: the intrinsics then move to pixel corners (``+0.5``) and through
    :func:`monosdf_crop_matrix`.
    """
    ids, world, scale, names, images = _read_views(indexed, views, camera_path)
    size = images.shape[1:3]
    masks = _read_masks(mask_folder, ids, size, mask_threshold)
    K, R, t = opencv_from_dtu(world, scale, object_radius=object_radius, max_skew=max_skew)
    if crop_from is not None:
        K = K.clone()
        K[:, :2, 2] = K[:, :2, 2] + 0.5
        K = monosdf_crop_matrix(crop_from, size) @ K
    check_empty_masks(masks, names, empty_masks)
    cameras = cameras_from_opencv(R, t, K, size, integer_pixel_centers=crop_from is None)
    return MultiViewData(
        images=torch.from_numpy(images),
        masks=masks,
        cameras=cameras,
        names=names,
        to_world=dtu_to_world(scale, object_radius=object_radius),
        info={
            **info,
            "views": ids,
            "object_radius": object_radius,
            "normalised_frame": f"scale_mat unit sphere -> sphere of radius {object_radius}",
        },
    )


def load_dtu(
    root: PathLike,
    *,
    cameras_file: Optional[str] = None,
    image_dir: Optional[str] = None,
    mask_dir: Optional[str] = None,
    use_masks: bool = True,
    views: Optional[Sequence[int]] = None,
    object_radius: float = 0.5,
    mask_threshold: float = 0.5,
    empty_masks: str = "warn",
    max_skew: float = 1e-2,
) -> MultiViewData:
    """
    Load a DTU scan in the IDR / NeuS layout.

    Layout: ``root/cameras_sphere.npz`` (or ``cameras.npz``) with ``world_mat_i`` and
    ``scale_mat_i``; images in ``root/image/`` (or ``images/``); masks in ``root/mask/``. The view
    number ``i`` is the number in each file name (``000044.png`` and ``044.png`` are view 44), not
    the sorted position.

    Args:
        root: the scan folder.
        cameras_file, image_dir, mask_dir: override the detected names.
        use_masks: ``False`` loads no masks (all pixels count as object).
        views: view numbers to load (default: every image).
        object_radius: radius of the scale_mat unit sphere in the normalised frame.
        mask_threshold: masks are ``value > mask_threshold`` with values in [0, 1] (0.5 = 127
            for 8-bit masks).
        empty_masks: ``"error"``, ``"warn"`` (default) or ``"ignore"`` for views whose mask is
            empty.
        max_skew: the largest intrinsic skew (pixels) dropped without complaint.

    Returns:
        :class:`MultiViewData` with ``to_world = scale_mat @ diag(1/r, 1/r, 1/r, 1)``.
    """
    root = require_dir(root, "DTU scan")
    camera_path = _find_camera_file(root, cameras_file)
    image_folder = (
        require_dir(root / image_dir, "image")
        if image_dir
        else first_existing_dir(root, IMAGE_DIRS, "image")
    )
    mask_folder: Optional[Path] = None
    if use_masks:
        mask_folder = (
            require_dir(root / mask_dir, "mask")
            if mask_dir
            else first_existing_dir(root, MASK_DIRS, "mask")
        )
    return _load_scan(
        indexed=index_files(list_files(image_folder, IMAGE_EXTENSIONS), "image"),
        views=views,
        camera_path=camera_path,
        mask_folder=mask_folder,
        mask_threshold=mask_threshold,
        object_radius=object_radius,
        max_skew=max_skew,
        crop_from=None,
        empty_masks=empty_masks,
        info={"format": "dtu", "root": str(root), "cameras_file": camera_path.name},
    )


def monosdf_crop_matrix(source_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """
    The `(3, 3)` pixel map of a centred square crop of ``source_size`` resized to
    ``image_size`` (pixel-corner coordinates): ``u' = (u - x0) / s``, ``v' = (v - y0) / s``.

    For DTU (1200x1600) to 384x384: ``x0 = 200``, ``y0 = 0``, ``s = 3.125``.
    """
    src_h, src_w = source_size
    height, width = image_size
    side = min(src_h, src_w)
    if height != width:
        raise ValueError(f"A square crop needs square images, got {image_size}.")
    s = side / height
    x0, y0 = 0.5 * (src_w - side), 0.5 * (src_h - side)
    return torch.tensor(
        [[1.0 / s, 0.0, -x0 / s], [0.0, 1.0 / s, -y0 / s], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def load_dtu_monosdf(
    root: PathLike,
    *,
    mask_dir: Optional[str] = "derived_mask_384",
    cameras_file: str = "cameras.npz",
    source_size: tuple[int, int] = (1200, 1600),
    views: Optional[Sequence[int]] = None,
    object_radius: float = 0.5,
    mask_threshold: float = 0.5,
    empty_masks: str = "warn",
    max_skew: float = 1e-2,
) -> MultiViewData:
    """
    Load the MonoSDF crop of a DTU scan: ``NNNNNN_rgb.png`` images (384x384 centre crops of the
    1600x1200 originals), ``cameras.npz`` with the *full-resolution* ``world_mat_i`` and
    ``scale_mat_i``, and masks in ``mask_dir`` (``NNN.png``; ``None`` for no masks).

    The full-resolution intrinsics (integer pixel centres) are moved to the pixel-corner
    convention (``+0.5``) and then through :func:`monosdf_crop_matrix`. This differs by
    ``0.5 / s = 0.16`` px from applying the crop matrix to the integer-centred intrinsics.

    Other arguments as in :func:`load_dtu`.
    """
    root = require_dir(root, "MonoSDF DTU scan")
    camera_path = root / cameras_file
    if not camera_path.is_file():
        raise FileNotFoundError(f"Camera file not found: {camera_path}")
    indexed = index_files(list_files(root, IMAGE_EXTENSIONS, suffix="_rgb"), "image")
    return _load_scan(
        indexed=indexed,
        views=views,
        camera_path=camera_path,
        mask_folder=None if mask_dir is None else require_dir(root / mask_dir, "mask"),
        mask_threshold=mask_threshold,
        object_radius=object_radius,
        max_skew=max_skew,
        crop_from=source_size,
        empty_masks=empty_masks,
        info={"format": "dtu_monosdf", "root": str(root), "source_size": tuple(source_size)},
    )
