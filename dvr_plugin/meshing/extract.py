"""
``extract_mesh``: a coloured PyTorch3D mesh from a field (MISE + marching cubes + refinement).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from pytorch3d.renderer import TexturesVertex
from pytorch3d.structures import Meshes

from ..fields.field import field_type_of
from ._evaluation import ChunkedFieldEvaluator
from .marching import marching_cubes_grid
from .mise import MiseLevelStats, run_mise

Bounds = Union[float, Tuple[Sequence[float], Sequence[float]]]


@dataclass
class MeshExtractionStats:
    """
    What :func:`extract_mesh` did.

    Members:
        status: ``"surface"``; or ``"empty"`` / ``"full"`` when every point of the start grid is
            outside / inside (the mesh is then empty).
        field_type: ``"occupancy"`` or ``"sdf"``.
        level: the iso-level used, in the field's units.
        resolution: final cells per axis. start_resolution: cells per axis of the start grid.
        bounds: ``((x0, y0, z0), (x1, y1, z1))`` the box that was meshed.
        voxel_size: `(3,)` cell size of the final grid, as a tuple.
        levels: per-level MISE statistics, coarse to fine.
        points_evaluated: grid points evaluated by MISE (all levels).
        dense_points: ``(resolution + 1) ** 3``, the points of a dense evaluation.
        refine_points_evaluated: field evaluations spent on vertex refinement.
        colour_points_evaluated: field evaluations spent on vertex colours and residuals.
        field_calls: number of calls to the field. max_points_per_call: the largest call.
        chunk_size: the bound on points per call that was used.
        n_verts, n_faces: the mesh size.
        touches_bounds: the inside region reaches the box boundary, so the mesh is open there.
        closure_capped: MISE stopped following the surface at its pass limit at some level.
        vertex_residual_mc: mean ``|value - level|`` at the marching cubes vertices (field
            units; measured during the first refinement step, ``None`` without refinement).
        vertex_residual: mean ``|value - level|`` at the final vertices (field units).
        timings: seconds spent in ``"mise"``, ``"marching_cubes"``, ``"refine"``, ``"colour"``
            and ``"total"``.
    """

    status: str
    field_type: str
    level: float
    resolution: int
    start_resolution: int
    bounds: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    voxel_size: Tuple[float, float, float]
    levels: List[MiseLevelStats] = dataclass_field(default_factory=list)
    points_evaluated: int = 0
    dense_points: int = 0
    refine_points_evaluated: int = 0
    colour_points_evaluated: int = 0
    field_calls: int = 0
    max_points_per_call: int = 0
    chunk_size: int = 0
    n_verts: int = 0
    n_faces: int = 0
    touches_bounds: bool = False
    closure_capped: bool = False
    vertex_residual_mc: Optional[float] = None
    vertex_residual: Optional[float] = None
    timings: Dict[str, float] = dataclass_field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """Whether no surface was found (the mesh has no faces)."""
        return self.n_faces == 0

    @property
    def evaluated_fraction(self) -> float:
        """``points_evaluated / dense_points``."""
        return self.points_evaluated / max(self.dense_points, 1)


@dataclass
class MeshExtraction:
    """
    The result of :func:`extract_mesh`.

    Members:
        mesh: a :class:`~pytorch3d.structures.Meshes` of one mesh, with
            :class:`~pytorch3d.renderer.TexturesVertex` colours when the field has an rgb head
            (empty, with `(0, 3)` verts and faces, when no surface was found).
        stats: :class:`MeshExtractionStats`.
    """

    mesh: Meshes
    stats: MeshExtractionStats

    @property
    def is_empty(self) -> bool:
        return self.stats.is_empty


def _parse_bounds(bounds: Bounds) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    if isinstance(bounds, (int, float)):
        half = float(bounds)
        if half <= 0:
            raise ValueError(f"A scalar bounds is a cube's half size and must be > 0, got {half}.")
        return (-half,) * 3, (half,) * 3
    try:
        lower, upper = (tuple(float(x) for x in corner) for corner in bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"bounds must be a half size or ((x0, y0, z0), (x1, y1, z1)), got {bounds!r}."
        ) from error
    if len(lower) != 3 or len(upper) != 3:
        raise ValueError(f"bounds corners must have 3 coordinates each, got {bounds!r}.")
    if any(lo >= hi for lo, hi in zip(lower, upper, strict=True)):
        raise ValueError(
            f"bounds must be ((x0, y0, z0), (x1, y1, z1)) with x0 < x1 etc., got {bounds!r}."
        )
    return lower, upper


def _default_device(field) -> torch.device:
    if isinstance(field, torch.nn.Module):
        for tensor in list(field.parameters()) + list(field.buffers()):
            return tensor.device
    return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _refine_vertices(
    verts: torch.Tensor,
    evaluator: ChunkedFieldEvaluator,
    *,
    steps: int,
    max_step: float,
) -> Tuple[torch.Tensor, float]:
    """
    Newton steps on the inside value along its gradient:
    ``p <- p - v(p) grad v(p) / |grad v(p)|^2``, each step clamped to ``max_step`` in length.

    Args:
        verts: `(V, 3)` vertices.
        evaluator: gives inside values and gradients (chunked).
        steps: number of Newton steps.
        max_step: the longest move per step (world units).

    Returns:
        `(V, 3)` refined vertices and the mean ``|v|`` at the input vertices.
    """
    refined, residual_sum = [], 0.0
    for chunk in verts.split(evaluator.chunk_size):
        points = chunk.clone()
        for step in range(steps):
            value, gradient = evaluator.inside_values_and_gradient(points)
            if step == 0:
                residual_sum += float(value.abs().sum())
            squared_norm = gradient.square().sum(-1, keepdim=True)
            move = -value[:, None] * gradient / squared_norm.clamp_min(1e-20)
            length = move.norm(dim=-1, keepdim=True)
            move = move * (max_step / length.clamp_min(max_step))
            ok = torch.isfinite(move).all(-1, keepdim=True) & (squared_norm > 0)
            points = points + torch.where(ok, move, torch.zeros_like(move))
        refined.append(points)
    return torch.cat(refined), residual_sum / max(verts.shape[0], 1)


def extract_mesh(
    field,
    *,
    latent: Optional[torch.Tensor] = None,
    resolution: int = 256,
    start_resolution: int = 32,
    level: Optional[float] = None,
    bounds: Bounds = 0.55,
    refine_steps: int = 0,
    chunk_size: int = 65536,
    vertex_colors: bool = True,
    block_size: int = 128,
    max_closure_passes: int = 64,
    device: Optional[Union[str, torch.device]] = None,
) -> MeshExtraction:
    """
    Extract the iso-surface of a field as a coloured triangle mesh.

    MISE (:mod:`dvr_plugin.meshing.mise`) evaluates the field on a grid of ``resolution``
    cells per axis over ``bounds``, starting from ``start_resolution`` and refining only near
    the surface; marching cubes (:mod:`dvr_plugin.meshing.marching`) turns the grid into
    triangles with outward normals; optionally ``refine_steps`` Newton steps move every vertex
    onto the level set; vertex colours come from the field's rgb head at the final vertices.
    ``start_resolution == resolution`` gives the dense grid (same mesh, more evaluations).

    Args:
        field: a callable following the field protocol of :mod:`dvr_plugin.fields.field`
            (``field.field_type`` ``"occupancy"``: logits, inside above the level; ``"sdf"``:
            inside below the level). Evaluated without gradients, except for the spatial
            gradient during refinement; put networks in ``eval()`` mode first.
        latent: `(1, C)` (or `(C,)`) latent code for a conditioned field, else ``None``.
        resolution: final cells per axis, ``start_resolution * 2^k`` (e.g. 256 or 512).
        start_resolution: cells per axis of the first, fully evaluated grid (e.g. 32).
        level: iso-level in the field's units; ``None`` means 0 (occupancy probability 0.5 for
            logits, the zero level set for SDFs). A probability threshold ``tau`` is the logit
            ``log(tau / (1 - tau))``.
        bounds: the box to mesh: a half size ``b`` for ``[-b, b]^3`` (default 0.55, the padded
            unit cube) or ``((x0, y0, z0), (x1, y1, z1))``.
        refine_steps: Newton steps per vertex onto the level set (0 = plain marching cubes).
        chunk_size: the most points passed to one field call.
        vertex_colors: attach ``TexturesVertex`` from the rgb head (when the field has one).
        block_size: the most cells per axis in one marching cubes call.
        max_closure_passes: MISE's bound on surface-following passes per level.
        device: where grid and points live; default: the device of the field's first parameter
            or buffer, else CPU. The field must already be on that device.

    Returns:
        MeshExtraction with ``mesh`` (one mesh, world coordinates) and ``stats``.

    Raises:
        ValueError: for invalid arguments or a field that returns non-finite values.
    """
    start_time = time.perf_counter()
    if int(resolution) != resolution or int(start_resolution) != start_resolution:
        raise ValueError("resolution and start_resolution must be integers.")
    if refine_steps < 0:
        raise ValueError(f"refine_steps must be >= 0, got {refine_steps}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    field_type = field_type_of(field)
    level = 0.0 if level is None else float(level)
    lower, upper = _parse_bounds(bounds)
    device = torch.device(device) if device is not None else _default_device(field)
    if latent is not None:
        if latent.dim() == 1:
            latent = latent[None]
        if latent.dim() != 2 or latent.shape[0] != 1:
            raise ValueError(
                f"latent must have shape (1, C) or (C,) (one mesh at a time), got "
                f"{tuple(latent.shape)}."
            )
        latent = latent.to(device)
    spacing = tuple((hi - lo) / resolution for lo, hi in zip(lower, upper, strict=True))

    evaluator = ChunkedFieldEvaluator(
        field=field, latent=latent, level=level, chunk_size=chunk_size
    )
    stats = MeshExtractionStats(
        status="surface",
        field_type=field_type,
        level=level,
        resolution=int(resolution),
        start_resolution=int(start_resolution),
        bounds=(tuple(lower), tuple(upper)),
        voxel_size=spacing,
        dense_points=(int(resolution) + 1) ** 3,
        chunk_size=int(chunk_size),
    )

    grid = run_mise(
        evaluator,
        origin=lower,
        spacing=spacing,
        resolution=int(resolution),
        start_resolution=int(start_resolution),
        device=device,
        max_closure_passes=max_closure_passes,
    )
    _synchronize(device)
    stats.timings["mise"] = time.perf_counter() - start_time
    stats.levels = grid.levels
    stats.status = grid.status
    stats.closure_capped = grid.closure_capped
    stats.points_evaluated = evaluator.points

    verts = torch.zeros((0, 3), dtype=torch.float32, device=device)
    faces = torch.zeros((0, 3), dtype=torch.int64, device=device)
    textures = None
    if grid.values is not None:
        values = grid.values
        stats.touches_bounds = bool(
            (values[[0, -1]] > 0).any()
            or (values[:, [0, -1]] > 0).any()
            or (values[:, :, [0, -1]] > 0).any()
        )
        tick = time.perf_counter()
        verts, faces = marching_cubes_grid(
            values, origin=lower, spacing=spacing, block_size=block_size
        )
        del values
        grid.values = None
        _synchronize(device)
        stats.timings["marching_cubes"] = time.perf_counter() - tick

        if refine_steps > 0 and verts.shape[0] > 0:
            tick = time.perf_counter()
            before = evaluator.points
            verts, stats.vertex_residual_mc = _refine_vertices(
                verts, evaluator, steps=refine_steps, max_step=max(spacing)
            )
            stats.refine_points_evaluated = evaluator.points - before
            _synchronize(device)
            stats.timings["refine"] = time.perf_counter() - tick

        if verts.shape[0] > 0:
            tick = time.perf_counter()
            before = evaluator.points
            residual, rgb = evaluator.inside_values_and_rgb(verts)
            stats.vertex_residual = float(residual.abs().mean())
            stats.colour_points_evaluated = evaluator.points - before
            if vertex_colors and rgb is not None:
                textures = TexturesVertex(verts_features=[rgb.clamp(0.0, 1.0).to(verts.dtype)])
            _synchronize(device)
            stats.timings["colour"] = time.perf_counter() - tick

    mesh = Meshes(verts=[verts], faces=[faces], textures=textures)
    stats.n_verts, stats.n_faces = int(verts.shape[0]), int(faces.shape[0])
    stats.field_calls = evaluator.calls
    stats.max_points_per_call = evaluator.max_points_per_call
    stats.timings["total"] = time.perf_counter() - start_time
    return MeshExtraction(mesh=mesh, stats=stats)
