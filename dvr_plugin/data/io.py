"""File helpers shared by the dataset loaders: listing, index parsing and image / depth reading."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEPTH_EXTENSIONS = (".npy", ".npz", ".exr", ".pfm", ".tif", ".tiff", ".png")
EMPTY_MASK_POLICIES = ("error", "warn", "ignore")


def require_dir(path: PathLike, what: str) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` naming ``what`` when it is not a folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def first_existing_dir(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``root / name`` that is a folder; ``FileNotFoundError`` listing the tries."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(str(root / n) for n in names)
    raise FileNotFoundError(f"No {what} folder found; looked for {tried}.")


def list_files(
    folder: Path, extensions: Sequence[str], *, suffix: str = "", what: str = "image"
) -> list[Path]:
    """Sorted files of ``folder`` whose name ends with ``suffix`` + one of ``extensions``."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in extensions
        and p.stem.endswith(suffix)
        and not p.name.startswith(".")
    )
    if not files:
        raise FileNotFoundError(
            f"No {what} files ({'/'.join(extensions)}) with suffix {suffix!r} in {folder}."
        )
    return files


def index_from_name(path: Path) -> int:
    """The last run of digits in the file stem (``000012_rgb.png`` -> 12, ``r_96.png`` -> 96)."""
    digits = re.findall(r"\d+", path.stem)
    if not digits:
        raise ValueError(f"Cannot find a view number in the file name {path.name!r}.")
    return int(digits[-1])


def index_files(files: Sequence[Path], what: str) -> dict[int, Path]:
    """Map view number -> file; ``ValueError`` when two files share a number."""
    indexed: dict[int, Path] = {}
    for path in files:
        idx = index_from_name(path)
        if idx in indexed:
            raise ValueError(
                f"Two {what} files carry the view number {idx}: {indexed[idx].name}, {path.name}."
            )
        indexed[idx] = path
    return indexed


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"Cannot read image {path}: {error}") from error
    return image


def read_rgb(path: PathLike) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Read an image as float RGB in [0, 1] plus its alpha channel when it has one.

    Returns:
        rgb: `(H, W, 3)` float32; alpha: `(H, W)` float32 in [0, 1] or ``None``.
    """
    image = _open_image(Path(path))
    has_alpha = image.mode in ("RGBA", "LA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if image.mode in ("I;16", "I;16B", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I") else 1.0
        grey = (array / peak).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1), None
    image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    if has_alpha:
        return np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
    return array, None


def read_grey(path: PathLike) -> np.ndarray:
    """Read a mask image as `(H, W)` float32 in [0, 1] (max over colour channels)."""
    image = _open_image(Path(path))
    if image.mode in ("I;16", "I;16B", "I"):
        return (np.asarray(image, dtype=np.float64) / 65535.0).astype(np.float32)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return array.max(axis=-1)


def read_depth(path: PathLike) -> np.ndarray:
    """
    Read a depth map as `(H, W)` float32; non-finite values (the reference writes ``inf`` for
    background) stay as they are for the caller to clean.

    ``.npy`` / ``.npz`` (first array) are read with numpy; ``.exr`` / ``.pfm`` / ``.tif`` with
    ``imageio`` when it has a backend for them (EXR needs e.g. the ``freeimage`` plugin or OpenCV);
    ``.png`` is taken as 16-bit millimetres.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            depth = np.load(path)
        elif suffix == ".npz":
            with np.load(path) as archive:
                depth = archive[archive.files[0]]
        elif suffix == ".png":
            depth = np.asarray(_open_image(path), dtype=np.float64) / 1000.0
        else:
            import imageio.v2 as imageio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                depth = np.asarray(imageio.imread(path))
    except Exception as error:  # any backend failure becomes one clear error
        hint = (
            " EXR needs an imageio backend (pip install imageio[freeimage] or opencv-python); "
            "or convert the depth maps to .npy."
            if suffix == ".exr"
            else ""
        )
        raise ValueError(f"Cannot read depth map {path}: {error}.{hint}") from error
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"Depth map {path} must be 2D (H, W), got shape {depth.shape}.")
    return depth


def check_empty_masks(masks: torch.Tensor, names: Sequence[str], policy: str) -> None:
    """Apply the empty-mask policy (``"error"``, ``"warn"`` or ``"ignore"``)."""
    if policy not in EMPTY_MASK_POLICIES:
        raise ValueError(f"empty_masks must be one of {EMPTY_MASK_POLICIES}, got {policy!r}.")
    empty = [names[i] for i in range(masks.shape[0]) if not bool(masks[i].any())]
    if not empty or policy == "ignore":
        return
    message = f"{len(empty)} view(s) have an empty object mask: {', '.join(empty)}."
    if policy == "error":
        raise ValueError(message + " Pass empty_masks='warn' or 'ignore' to load them anyway.")
    warnings.warn(message, stacklevel=3)


def stack_views(arrays: Sequence[np.ndarray], names: Sequence[str], what: str) -> np.ndarray:
    """Stack per-view arrays, with a clear error when their sizes differ."""
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        listing = ", ".join(f"{n}: {a.shape}" for n, a in zip(names, arrays, strict=True))
        raise ValueError(f"All {what} must have the same size; got {listing}.")
    return np.stack(arrays)
