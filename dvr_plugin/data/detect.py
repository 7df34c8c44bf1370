"""
Which ``data.format`` a data path holds, read from its files (``dvr fit --data PATH`` without
``--format``).

==================  ==============================================================================
format              what marks it
==================  ==============================================================================
``mesh``            a mesh file (``.obj``, ``.ply``, ``.off``)
``nerf-synthetic``  ``transforms_<split>.json``
``monosdf``         ``NNNNNN_rgb.png`` images next to ``cameras.npz`` (the MonoSDF DTU crop)
``dtu``             ``cameras_sphere.npz`` or ``cameras.npz`` whose ``world_mat_i`` are full
                    projections ``K [R | t]``, with an ``image/`` (or ``images/``) folder
``dvr``             the reference DVR layout: ``cameras.npz`` whose ``world_mat_i`` are rigid
                    ``[R | t]`` (intrinsics in ``camera_mat_i``), with ``image/``
==================  ==============================================================================

The reference's own DTU scans store full projections in ``world_mat_i`` like IDR / NeuS and are
read as ``dtu``, which puts ``scale_mat``'s unit sphere inside the unit cube. A folder that
matches no format, or more than one, raises ``ValueError`` listing the formats: nothing is
guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .io import IMAGE_EXTENSIONS, PathLike

MESH_EXTENSIONS = (".obj", ".ply", ".off")
DETECTABLE_FORMATS = ("mesh", "dtu", "monosdf", "nerf-synthetic", "dvr")
DTU_CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
IMAGE_FOLDERS = ("image", "images")

# What each format looks like, for error messages.
FORMAT_SIGNS = {
    "mesh": "a mesh file (.obj / .ply / .off)",
    "dtu": "cameras_sphere.npz or cameras.npz (world_mat_i = K [R | t]) + image/",
    "monosdf": "NNNNNN_rgb.png + cameras.npz",
    "nerf-synthetic": "transforms_<split>.json",
    "dvr": "cameras.npz (camera_mat_i, world_mat_i = [R | t]) + image/",
}


@dataclass(frozen=True)
class DetectedFormat:
    """
    Members:
        format: the ``data.format`` of ``dvr fit``.
        reason: the files that decided it, in words (for the log line).
    """

    format: str
    reason: str


def detect_data_format(path: PathLike) -> DetectedFormat:
    """
    The data format of a file or folder, from the files it holds (nothing is loaded but the
    camera archive's first ``world_mat``).

    Args:
        path: a mesh file or a data folder.

    Returns:
        :class:`DetectedFormat`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no format, or several, match; the message lists the formats and what marks
            each.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"The data path {str(path)!r} does not exist.")
    if path.is_file():
        if path.suffix.lower() in MESH_EXTENSIONS:
            return DetectedFormat("mesh", f"a {path.suffix.lower()} mesh file")
        raise ValueError(
            f"Cannot tell the data format of the file {path}: only mesh files "
            f"({' / '.join(MESH_EXTENSIONS)}) are read as a file; {_choices()}"
        )
    found = _folder_candidates(path)
    if len(found) == 1:
        return found[0]
    if not found:
        meshes = sorted(p.name for p in path.iterdir() if p.suffix.lower() in MESH_EXTENSIONS)
        hint = ""
        if meshes:
            hint = f" It holds mesh files ({', '.join(meshes[:3])}): pass one as the path."
        raise ValueError(f"Cannot tell the data format of the folder {path}; {_choices()}{hint}")
    names = ", ".join(f"{d.format} ({d.reason})" for d in found)
    raise ValueError(
        f"The folder {path} looks like several data formats: {names}; pass --format "
        f"(data.format) to choose one."
    )


def _choices() -> str:
    signs = "; ".join(f"{name}: {FORMAT_SIGNS[name]}" for name in DETECTABLE_FORMATS)
    return f"pass --format (data.format), one of {', '.join(DETECTABLE_FORMATS)} ({signs})."


def _folder_candidates(root: Path) -> list[DetectedFormat]:
    """Every format whose marks ``root`` carries."""
    found: list[DetectedFormat] = []
    transforms = sorted(p.name for p in root.glob("transforms_*.json") if p.is_file())
    if transforms:
        found.append(DetectedFormat("nerf-synthetic", ", ".join(transforms)))
    rgb = [
        p for p in root.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.stem.endswith("_rgb")
    ]
    if rgb and (root / "cameras.npz").is_file():
        found.append(DetectedFormat("monosdf", f"{len(rgb)} *_rgb images + cameras.npz"))
        return found  # its cameras.npz is not a DTU / DVR one
    image_dir = next((root / n for n in IMAGE_FOLDERS if (root / n).is_dir()), None)
    camera_file = next((root / n for n in DTU_CAMERA_FILES if (root / n).is_file()), None)
    if image_dir is not None and camera_file is not None:
        kind = _camera_archive_kind(camera_file)
        what = f"{camera_file.name} + {image_dir.name}/"
        if kind == "projection":
            found.append(DetectedFormat("dtu", f"{what}, world_mat_i = K [R | t]"))
        elif kind == "rigid" and camera_file.name == "cameras.npz":
            found.append(DetectedFormat("dvr", f"{what}, world_mat_i = [R | t] + camera_mat_i"))
    return found


def _camera_archive_kind(path: Path) -> Optional[str]:
    """
    ``"projection"`` when the first ``world_mat_i`` of the archive is a full projection
    ``K [R | t]`` (DTU: IDR / NeuS, and the reference's DTU scans), ``"rigid"`` when its
    `(3, 3)` block is a (scaled) rotation with intrinsics in ``camera_mat_i`` (the reference's
    rendered objects, and :func:`write_dvr_layout`), ``None`` when it cannot be read.
    """
    try:
        with np.load(path) as archive:
            keys = [k for k in archive.files if k.startswith("world_mat_") and "inv" not in k]
            if not keys:
                return None
            first = min(keys, key=lambda k: int(k.rsplit("_", 1)[1]) if k[-1].isdigit() else 0)
            world = np.asarray(archive[first], dtype=np.float64)
            has_camera_mat = any(k.startswith("camera_mat_") for k in archive.files)
    except Exception:  # an unreadable archive matches nothing
        return None
    if world.shape[0] < 3 or world.shape[1] < 3 or not np.isfinite(world).all():
        return None
    singular = np.linalg.svd(world[:3, :3], compute_uv=False)
    if singular[-1] <= 0:
        return None
    rigid = singular[0] / singular[-1] < 1.0 + 1e-3
    if rigid:
        return "rigid" if has_camera_mat else None
    return "projection"
