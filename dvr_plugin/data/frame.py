"""
The data's own frame, and a fingerprint of a data set.

Every loader returns its views in a *normalised* object frame (the object inside the unit cube
``[-0.5, 0.5]^3``) together with ``to_world``, the `(4, 4)` homogeneous map back to the data
set's own coordinates (``X_world = to_world @ X_normalised``). :class:`WorldFrame` carries that
map with the format and the units of the world frame, is stored in every checkpoint, and moves
points, meshes and cameras between the two frames. Outputs leave the program in the world frame.

:func:`data_fingerprint` summarises a view set (names, image size, camera centres, mean colours)
so that a resumed fit can tell whether it is given the data it was started on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

# The world frame of each ``data.format`` of ``dvr fit``, in words.
FORMAT_UNITS = {
    "mesh": "the mesh file's own units",
    "demo": "scene units (the built-in scene lies in the unit cube; world = normalised)",
    "dtu": "DTU world frame (millimetres)",
    "monosdf": "DTU world frame (millimetres)",
    "nerf-synthetic": "Blender scene units",
    "dvr": "the reference DVR layout's world frame",
    "dtu-like": "the generated scene's world frame (millimetres, DTU rig)",
}

FRAMES = ("world", "normalised")

# The normalised frame in words (the frame fields are fitted in).
NORMALISED_UNITS = "normalised object frame (the object inside the unit cube [-0.5, 0.5]^3)"

# Keys of the header lines that :meth:`WorldFrame.file_comments` writes.
_FRAME_KEY = "frame: "
_UNITS_KEY = "units: "
_FORMAT_KEY = "data format: "
_WORLD_UNITS_KEY = "world units: "
_MATRIX_KEY = "to_world (normalised -> world, row-major 4x4): "


@dataclass(frozen=True)
class WorldFrame:
    """
    The map from the normalised object frame to the data's own (world) frame.

    Members:
        to_world: `(4, 4)` float64, ``X_world = to_world @ X_normalised`` (homogeneous).
        format: the data format it came from (``data.format`` of ``dvr fit``), or ``"unknown"``.
        units: the world frame's units in words, or ``None`` when unknown.
    """

    to_world: torch.Tensor
    format: str = "unknown"
    units: Optional[str] = None

    def __post_init__(self) -> None:
        matrix = torch.as_tensor(self.to_world, dtype=torch.float64).cpu()
        if tuple(matrix.shape) != (4, 4) or not bool(torch.isfinite(matrix).all()):
            raise ValueError(f"to_world must be a finite (4, 4) matrix, got {tuple(matrix.shape)}.")
        if abs(float(torch.linalg.det(matrix[:3, :3]))) < 1e-12:
            raise ValueError("to_world is singular: it cannot map the normalised frame.")
        object.__setattr__(self, "to_world", matrix)

    @classmethod
    def identity(cls, format: str = "unknown") -> WorldFrame:
        return cls(torch.eye(4, dtype=torch.float64), format, FORMAT_UNITS.get(format))

    @classmethod
    def from_views(cls, views: Any, format: str) -> WorldFrame:
        """The frame of a :class:`MultiViewData` (its ``to_world``) loaded as ``format``."""
        return cls(views.to_world, format, FORMAT_UNITS.get(format))

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> Optional[WorldFrame]:
        """The inverse of :meth:`to_dict`; ``None`` for ``None`` (an older checkpoint)."""
        if data is None:
            return None
        return cls(torch.tensor(data["to_world"], dtype=torch.float64), data.get("format",
                   "unknown"), data.get("units"))

    def to_dict(self) -> dict[str, Any]:
        return {"to_world": self.to_world.tolist(), "format": self.format, "units": self.units}

    @property
    def scale(self) -> float:
        """World units per normalised unit (cube root of ``|det(to_world[:3, :3])|``)."""
        return float(torch.linalg.det(self.to_world[:3, :3]).abs() ** (1.0 / 3.0))

    @property
    def is_identity(self) -> bool:
        return bool(torch.allclose(self.to_world, torch.eye(4, dtype=torch.float64)))

    def describe(self) -> str:
        """One line for logs and file headers."""
        units = self.units or "units unknown"
        return (
            f"frame: world ({self.format} data, {units}); normalised -> world scale "
            f"{self.scale:.6g}"
        )

    def file_comments(self, frame: str = "world") -> list[str]:
        """
        Header lines for a file whose coordinates are in ``frame`` (``"world"`` or
        ``"normalised"``): the frame, its units, the data format and ``to_world`` (17
        significant digits), so that the file can be moved to the other frame without the
        checkpoint. Written as PLY ``comment`` / OBJ ``#`` lines by
        :func:`dvr_plugin.meshing.save_mesh`; read back by :func:`frame_from_comments`.
        """
        frame = check_frame_name(frame)
        world_units = self.units or "units unknown"
        units = world_units if frame == "world" else NORMALISED_UNITS
        matrix = " ".join(format(float(v), ".17g") for v in self.to_world.reshape(-1))
        return [
            f"{_FRAME_KEY}{frame}",
            f"{_UNITS_KEY}{units}",
            f"{_FORMAT_KEY}{self.format}",
            f"{_WORLD_UNITS_KEY}{world_units}",
            f"{_MATRIX_KEY}{matrix}",
        ]

    # -- points and meshes ------------------------------------------------------------------

    def points_to_world(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` normalised-frame points to the world frame (same dtype and device)."""
        return _apply(self.to_world, points)

    def points_to_normalised(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` world-frame points to the normalised frame."""
        return _apply(torch.linalg.inv(self.to_world), points)

    def mesh_to_world(self, meshes: Any) -> Any:
        """A ``Meshes`` in the normalised frame, moved to the world frame (faces re-oriented if
        ``to_world`` mirrors)."""
        return _move_meshes(meshes, self.to_world)

    def mesh_to_normalised(self, meshes: Any) -> Any:
        """A ``Meshes`` in the world frame, moved to the normalised frame."""
        return _move_meshes(meshes, torch.linalg.inv(self.to_world))


def check_frame_name(frame: str) -> str:
    """``frame`` when it is one of :data:`FRAMES`, else a ``ValueError`` naming the choices."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}.")
    return frame


def frame_from_comments(comments: Sequence[str]) -> tuple[Optional[str], Optional[WorldFrame]]:
    """
    The frame a mesh file states in its header (the lines of :meth:`WorldFrame.file_comments`).

    Args:
        comments: the file's comment lines, without the ``comment`` / ``#`` marker.

    Returns:
        ``(frame, data_frame)``: ``"world"`` / ``"normalised"`` or ``None`` when the file
        states no frame, and the :class:`WorldFrame` when it records ``to_world``, else
        ``None``.
    """
    frame = world_units = matrix = None
    format = "unknown"
    for line in (str(c).strip() for c in comments):
        if line.startswith(_FRAME_KEY):
            value = line[len(_FRAME_KEY):].strip()
            frame = value if value in FRAMES else None
        elif line.startswith(_WORLD_UNITS_KEY):
            world_units = line[len(_WORLD_UNITS_KEY):].strip()
        elif line.startswith(_FORMAT_KEY):
            format = line[len(_FORMAT_KEY):].strip()
        elif line.startswith(_MATRIX_KEY):
            try:
                values = [float(v) for v in line[len(_MATRIX_KEY):].split()]
            except ValueError:
                values = []
            if len(values) == 16:
                matrix = torch.tensor(values, dtype=torch.float64).reshape(4, 4)
    data_frame = None
    if matrix is not None:
        if world_units in (None, "units unknown"):
            world_units = FORMAT_UNITS.get(format)
        data_frame = WorldFrame(matrix, format, world_units)
    return frame, data_frame


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    M = matrix.to(device=points.device, dtype=torch.float64)
    moved = points.to(torch.float64) @ M[:3, :3].T + M[:3, 3]
    return moved.to(points.dtype)


def _move_meshes(meshes: Any, matrix: torch.Tensor) -> Any:
    from pytorch3d.structures import Meshes

    verts = [_apply(matrix, v) for v in meshes.verts_list()]
    faces = meshes.faces_list()
    if float(torch.linalg.det(matrix[:3, :3])) < 0:  # a mirror flips the winding
        faces = [f[:, [0, 2, 1]] for f in faces]
    return Meshes(verts=verts, faces=faces, textures=meshes.textures)


# -- fingerprint -----------------------------------------------------------------------------


def data_fingerprint(views: Any) -> dict[str, Any]:
    """
    A summary of a view set that changes when the data does: view names, image size, camera
    centres (normalised frame) and each image's mean colour.

    Args:
        views: a :class:`MultiViewData` (or anything with ``names``, ``images`` `(N, H, W, 3)`
            and ``cameras``).

    Returns:
        a JSON-friendly dict (stored in checkpoints; compare with :func:`fingerprint_mismatch`).
    """
    with torch.no_grad():
        centres = views.cameras.get_camera_center().detach().double().cpu()
        means = views.images.detach().double().mean(dim=(1, 2)).cpu()
    return {
        "n_views": int(views.images.shape[0]),
        "names": [str(n) for n in views.names],
        "image_size": [int(views.images.shape[1]), int(views.images.shape[2])],
        "camera_centres": centres.tolist(),
        "image_means": means.tolist(),
    }


def fingerprint_mismatch(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    camera_tolerance: float = 1e-3,
    colour_tolerance: float = 0.02,
) -> Optional[str]:
    """
    Why two fingerprints of :func:`data_fingerprint` describe different data, or ``None`` when
    they agree (camera centres within ``camera_tolerance`` normalised units, mean colours within
    ``colour_tolerance``: renders on another device may differ in the last bits).
    """
    if saved["n_views"] != current["n_views"]:
        return f"{saved['n_views']} views then, {current['n_views']} now"
    if list(saved["image_size"]) != list(current["image_size"]):
        return f"images of {saved['image_size']} then, {current['image_size']} now"
    if list(saved["names"]) != list(current["names"]):
        changed = [a for a, b in zip(saved["names"], current["names"], strict=True) if a != b]
        return f"different view names (e.g. {changed[0]!r})"
    centres = torch.tensor(saved["camera_centres"]) - torch.tensor(current["camera_centres"])
    if float(centres.abs().max()) > camera_tolerance:
        return f"cameras moved by up to {float(centres.abs().max()):.3g} normalised units"
    colours = torch.tensor(saved["image_means"]) - torch.tensor(current["image_means"])
    if float(colours.abs().max()) > colour_tolerance:
        return f"image colours differ by up to {float(colours.abs().max()):.3g}"
    return None
