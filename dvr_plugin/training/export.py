"""
A fitted multi-view checkpoint (``dvr fit``) rebuilt: its field, its data's world frame, and
its surface as a mesh in that frame (what ``dvr mesh`` writes).

Frames. A field is fitted in the normalised object frame of its data (the object inside the
unit cube); every checkpoint records the data's frame (:class:`dvr_plugin.data.frame.WorldFrame`,
``X_world = to_world @ X_normalised``; rebuilt from the data for checkpoints written before
frames were stored, :func:`rebuild_data_frame`). The surface is extracted in the normalised
frame and, by default, moved to the world frame, in the data's own units (DTU millimetres,
Blender units, the mesh file's units, ...); :meth:`CheckpointMesh.comments` gives the header
lines that state the mesh's frame (:meth:`WorldFrame.file_comments`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..data.frame import FORMAT_UNITS, WorldFrame, check_frame_name
from ..data.synthetic import load_mesh, normalize_mesh
from ..engine.checkpoint import load_checkpoint
from ..meshing import extract_mesh
from .config import FitConfig
from .data import load_views
from .trainer import build_field

# The first MISE level of ``dvr mesh`` / ``dvr eval`` (smaller resolutions are dense grids).
START_RESOLUTION = 32


@dataclass
class FittedCheckpoint:
    """
    A ``dvr fit`` checkpoint, rebuilt.

    Members:
        field: the fitted field, in ``eval()`` mode.
        config: the checkpoint's config dict.
        data_frame: the training data's frame (stored in the checkpoint; rebuilt from the data
            for checkpoints written before frames were stored, see :func:`rebuild_data_frame`).
        path: where it was read from.
    """

    field: torch.nn.Module
    config: Dict[str, Any]
    data_frame: WorldFrame
    path: str


def load_fitted_checkpoint(path: str, *, device: str = "cpu") -> FittedCheckpoint:
    """Rebuild the field and the data frame of a ``dvr fit`` checkpoint (field on ``device``)."""
    state = load_checkpoint(path, map_location="cpu")
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a dvr fit checkpoint (no 'model' / 'config' entries).")
    config = FitConfig.from_dict(state["config"])
    field_module = build_field(config)
    field_module.load_state_dict(state["model"])
    data_frame = WorldFrame.from_dict(state.get("data_frame"))
    if data_frame is None:
        data_frame = rebuild_data_frame(state["config"], checkpoint=str(path))
    return FittedCheckpoint(
        field=field_module.to(device).eval(),
        config=state["config"],
        data_frame=data_frame,
        path=str(path),
    )


def field_from_checkpoint(path: str, *, device: str = "cpu") -> Tuple[torch.nn.Module, Dict]:
    """
    Rebuild the fitted field of a ``dvr fit`` checkpoint.

    Returns:
        the field (in ``eval()`` mode, on ``device``) and the checkpoint's config dict.
    """
    fitted = load_fitted_checkpoint(path, device=device)
    return fitted.field, fitted.config


def rebuild_data_frame(config: Dict[str, Any], *, checkpoint: str = "the checkpoint") -> WorldFrame:
    """
    The data frame of a checkpoint written before checkpoints stored it, rebuilt from the data
    its config names: ``"demo"`` is the identity, ``"mesh"`` the normalisation of the mesh
    file (read, not rendered), the other formats load their views with the fit's loader.
    Always warns; when the data cannot be read, warns that the normalised frame stands in for
    the world frame (scores and world-frame outputs may then be wrongly placed and scaled;
    ``dvr eval`` catches the gross cases with its bounding-box check).
    """
    fit_config = FitConfig.from_dict(config)
    data = fit_config.data
    if data.format == "demo":  # the built-in scene is fitted in its own frame
        return WorldFrame.identity("demo")
    try:
        if data.format == "mesh":
            frame = _mesh_data_frame(data)
        else:
            views, _ = load_views(data, background=list(fit_config.background))
            frame = WorldFrame.from_views(views, data.format)
    except (OSError, ValueError) as error:
        warnings.warn(
            f"{checkpoint} records no data frame and its data ({data.format} at {data.path}) "
            f"cannot be read ({error}); the normalised frame stands in for the world frame, so "
            "world-frame meshes and scores against world-frame ground truth may be wrongly "
            "placed and scaled.",
            stacklevel=2,
        )
        return WorldFrame(
            torch.eye(4, dtype=torch.float64),
            data.format,
            "unknown (no data frame recorded: the normalised frame)",
        )
    warnings.warn(
        f"{checkpoint} records no data frame (written by an older version); rebuilt it from "
        f"its data ({data.format} at {data.path}): {frame.describe()}.",
        stacklevel=2,
    )
    return frame


def _mesh_data_frame(data) -> WorldFrame:
    if data.path is None or not os.path.exists(data.path):
        raise FileNotFoundError(f"no mesh file {data.path!r}")
    args = dict(data.loader_args)
    if not args.get("normalize", True):
        return WorldFrame.identity("mesh")
    _, normalization = normalize_mesh(
        load_mesh(data.path), longest_side=float(args.get("longest_side", data.longest_side))
    )
    return WorldFrame(normalization.to_world(), "mesh", FORMAT_UNITS["mesh"])


def check_mesh_resolution(resolution: int, *, start_resolution: int = START_RESOLUTION) -> None:
    """
    ``ValueError`` unless MISE can reach ``resolution`` from ``min(start_resolution,
    resolution)`` by doublings: ``2..start_resolution`` (a dense grid) or
    ``start_resolution * 2^k``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}.")
    start = min(start_resolution, resolution)
    level = start
    while level < resolution:
        level *= 2
    if level != resolution:
        raise ValueError(
            f"resolution must be at most {start_resolution} or {start_resolution} * 2^k "
            f"({start_resolution * 2}, {start_resolution * 4}, {start_resolution * 8}, ...), "
            f"got {resolution}."
        )


@dataclass
class CheckpointMesh:
    """
    The surface of a checkpoint's field.

    Members:
        mesh: ``Meshes`` of one, in ``frame`` (empty when the field has no surface).
        frame: ``"world"`` (the data's frame) or ``"normalised"`` (the fitting frame).
        data_frame: the training data's frame.
        extraction: the extraction (its mesh and statistics in the normalised frame).
        config: the checkpoint's config dict.
    """

    mesh: Any
    frame: str
    data_frame: WorldFrame
    extraction: Any
    config: Dict[str, Any]

    @property
    def is_empty(self) -> bool:
        return self.extraction.is_empty

    def comments(self) -> List[str]:
        """The header lines stating the mesh's frame (see :meth:`WorldFrame.file_comments`)."""
        return self.data_frame.file_comments(self.frame)

    def describe(self) -> str:
        """One line naming the mesh's frame."""
        if self.frame == "world":
            return self.data_frame.describe()
        return (
            "frame: normalised (the fitting frame: the object inside the unit cube); "
            f"to_world for the {self.data_frame.format} data in the file header"
        )


def mesh_from_checkpoint(
    checkpoint: str,
    *,
    resolution: int = 256,
    start_resolution: int = START_RESOLUTION,
    refine_steps: int = 0,
    frame: str = "world",
    device: str = "cpu",
    fitted: Optional[FittedCheckpoint] = None,
) -> CheckpointMesh:
    """
    Extract the surface of a checkpoint's field (MISE + marching cubes in the normalised frame)
    and move it to ``frame``: ``"world"`` (default, the data's own frame: DTU millimetres,
    Blender units, the mesh file's units, ...) or ``"normalised"``.

    Args:
        checkpoint: a ``dvr fit`` checkpoint.
        resolution, start_resolution, refine_steps: as in
            :func:`dvr_plugin.meshing.extract_mesh`.
        frame: the frame of the returned mesh.
        device: where the field is evaluated.
        fitted: the checkpoint already loaded (else it is read from ``checkpoint``).
    """
    check_frame_name(frame)
    if fitted is None:
        fitted = load_fitted_checkpoint(checkpoint, device=device)
    extraction = extract_mesh(
        fitted.field,
        resolution=resolution,
        start_resolution=min(start_resolution, resolution),
        refine_steps=refine_steps,
        device=device,
    )
    mesh = extraction.mesh
    if frame == "world":
        mesh = fitted.data_frame.mesh_to_world(mesh)
    return CheckpointMesh(
        mesh=mesh,
        frame=frame,
        data_frame=fitted.data_frame,
        extraction=extraction,
        config=fitted.config,
    )
