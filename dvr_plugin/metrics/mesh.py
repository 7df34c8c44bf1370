"""
Mesh metrics of the Occupancy Networks evaluation protocol, as used by DVR, for
``pytorch3d.structures.Meshes``.

The protocol (see :func:`evaluate_meshes`):

1. Normalise: by default both meshes are moved and scaled with the transform that maps the
   ground truth's bounding box to a box centred at the origin whose longest side is 1.
2. Sample ``n_points`` surface points with face normals from each mesh
   (``pytorch3d.ops.sample_points_from_meshes``) and score them with
   :func:`dvr_plugin.metrics.pointcloud.evaluate_pointclouds` in the frame of step 1 (accuracy,
   completeness, Chamfer-L1 and -L2, normal consistency, precision / recall / F-score).
3. Volumetric IoU: ``n_iou_points`` uniform points in the padded cube ``[-0.55, 0.55]^3``; a
   point is inside a mesh when the absolute generalised winding number is ``>= 0.5``. The
   ground truth must be watertight (every edge shared by exactly two faces), which is checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from pytorch3d.ops import sample_points_from_meshes
from pytorch3d.structures import Meshes

from ._geometry import DEFAULT_MAX_PAIRS, winding_numbers_single
from .pointcloud import (
    DEFAULT_THRESHOLDS,
    EMPTY_VALUES,
    NORMALIZE_MODES,
    ThresholdsLike,
    check_same_device,
    evaluate_pointclouds,
    unit_cube_transform,
)

#: Half side of the padded cube the IoU points are drawn from (the unit cube plus 10%).
IOU_HALF_SIZE = 0.55


def _check_meshes(name: str, meshes: Meshes) -> None:
    if not isinstance(meshes, Meshes):
        raise ValueError(f"{name} must be a pytorch3d.structures.Meshes, got {type(meshes)}.")


def _counts(meshes: Meshes, what: str) -> torch.Tensor:
    """`(B,)` int64 number of faces or vertices per mesh (also right for all-empty batches)."""
    items = meshes.faces_list() if what == "faces" else meshes.verts_list()
    return torch.tensor([x.shape[0] for x in items], dtype=torch.int64, device=meshes.device)


def meshes_unit_cube_transform(meshes: Meshes) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The transform ``v -> (v - centre) * scale`` that maps each mesh's vertex bounding box to a
    box centred at the origin with longest side 1.

    Args:
        meshes: a batch of `B` meshes.

    Returns:
        centre: `(B, 3)` bounding-box centres (0 for meshes without vertices).
        scale: `(B,)` ``1 / longest side`` (1 for meshes without extent).
    """
    _check_meshes("meshes", meshes)
    verts = meshes.verts_padded()
    if verts.shape[1] == 0:
        verts = verts.new_zeros(len(meshes), 1, 3)
    return unit_cube_transform(verts, _counts(meshes, "verts"))


def transform_meshes(meshes: Meshes, centre: torch.Tensor, scale: torch.Tensor) -> Meshes:
    """
    A new ``Meshes`` with vertices ``(v - centre[b]) * scale[b]`` for mesh `b`.

    Args:
        meshes: a batch of `B` meshes.
        centre: `(B, 3)` per-mesh offsets subtracted from the vertices.
        scale: `(B,)` per-mesh scale factors.
    """
    _check_meshes("meshes", meshes)
    if meshes.verts_packed().shape[0] == 0:
        return meshes.clone()
    offsets = -centre[meshes.verts_packed_to_mesh_idx()]
    return meshes.offset_verts(offsets.to(meshes.verts_packed().dtype)).scale_verts(
        scale.to(meshes.verts_packed().dtype)
    )


def normalize_meshes(pred: Meshes, gt: Meshes, *, mode: str = "gt") -> tuple[Meshes, Meshes]:
    """
    Put predicted and true meshes in the evaluation frame.

    Args:
        pred, gt: batches of `B` meshes each.
        mode: ``"gt"`` (the Occupancy Networks protocol: both use the transform that maps the
            ground truth's bounding box to a centred box of longest side 1), ``"each"`` (each
            mesh uses its own bounding box) or ``"none"`` (unchanged).

    Returns:
        The normalised `(pred, gt)`.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}.")
    if mode == "none":
        return pred, gt
    gt_centre, gt_scale = meshes_unit_cube_transform(gt)
    if mode == "gt":
        pred_centre, pred_scale = gt_centre, gt_scale
    else:
        pred_centre, pred_scale = meshes_unit_cube_transform(pred)
    return transform_meshes(pred, pred_centre, pred_scale), transform_meshes(
        gt, gt_centre, gt_scale
    )


def edge_face_counts(meshes: Meshes) -> list[torch.Tensor]:
    """
    For each mesh, how many faces share each of its undirected edges.

    Args:
        meshes: a batch of `B` meshes.

    Returns:
        A list of `B` int64 tensors `(E_b,)`, one count per distinct edge of mesh `b`.
    """
    _check_meshes("meshes", meshes)
    counts = []
    for faces in meshes.faces_list():
        if faces.shape[0] == 0:
            counts.append(torch.zeros(0, dtype=torch.int64, device=faces.device))
            continue
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
        edges, _ = edges.sort(dim=1)
        key = edges[:, 0] * (int(faces.max().item()) + 1) + edges[:, 1]
        _, count = torch.unique(key, return_counts=True)
        counts.append(count)
    return counts


def is_watertight(meshes: Meshes) -> torch.Tensor:
    """
    Whether each mesh is closed: it has faces and every undirected edge is shared by exactly
    two faces. Connectivity is read from vertex indices, so a triangle soup with duplicated
    vertices must be welded first.

    Args:
        meshes: a batch of `B` meshes.

    Returns:
        `(B,)` bool.
    """
    flags = [bool(c.numel() > 0 and (c == 2).all()) for c in edge_face_counts(meshes)]
    return torch.tensor(flags, dtype=torch.bool, device=meshes.device)


def _check_watertight(name: str, meshes: Meshes) -> None:
    flags = is_watertight(meshes)
    if not flags.all():
        bad = torch.nonzero(~flags).flatten().tolist()
        raise ValueError(
            f"{name} meshes {bad} are not watertight (some edge is not shared by exactly two "
            "faces), so their inside is undefined. Repair them, or pass "
            "check_watertight=False to use the generalised winding number as it is."
        )


def _check_query_points(meshes: Meshes, points: torch.Tensor) -> None:
    if points.dim() != 3 or points.shape[0] != len(meshes) or points.shape[-1] != 3:
        raise ValueError(
            f"points must have shape ({len(meshes)}, P, 3), got {tuple(points.shape)}."
        )
    check_same_device(meshes=meshes.verts_packed(), points=points)


def winding_numbers(
    meshes: Meshes, points: torch.Tensor, *, max_pairs: int = DEFAULT_MAX_PAIRS
) -> torch.Tensor:
    """
    Generalised winding numbers of each mesh at its query points, in chunks of at most
    `max_pairs` (point, face) pairs so memory stays bounded.

    Args:
        meshes: a batch of `B` meshes.
        points: `(B, P, 3)` query points, row `b` for mesh `b`.
        max_pairs: the chunk budget.

    Returns:
        `(B, P)` winding numbers (about +-1 inside a closed surface, 0 outside; 0 for
        meshes without faces).
    """
    _check_meshes("meshes", meshes)
    _check_query_points(meshes, points)
    out = []
    for b, (verts, faces) in enumerate(zip(meshes.verts_list(), meshes.faces_list(), strict=True)):
        triangles = verts[faces].to(points.dtype)
        out.append(winding_numbers_single(triangles, points[b], max_pairs=max_pairs))
    return torch.stack(out, dim=0)


def points_inside_meshes(
    meshes: Meshes,
    points: torch.Tensor,
    *,
    check_watertight: bool = True,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> torch.Tensor:
    """
    Inside test: ``|winding number| >= 0.5`` (orientation-agnostic).

    Args:
        meshes: a batch of `B` meshes.
        points: `(B, P, 3)` query points, row `b` for mesh `b`.
        check_watertight: raise ``ValueError`` for a mesh that is not watertight. With False
            the winding number is used as it is, which degrades gracefully for small holes.
        max_pairs: the chunk budget of :func:`winding_numbers`.

    Returns:
        `(B, P)` bool, True inside.
    """
    if check_watertight:
        _check_watertight("The", meshes)
    return winding_numbers(meshes, points, max_pairs=max_pairs).abs() >= 0.5


def occupancy_iou(pred_occ: torch.Tensor, gt_occ: torch.Tensor) -> torch.Tensor:
    """
    IoU of two occupancy labellings of the same points.

    Args:
        pred_occ, gt_occ: `(B, P)` bool occupancies.

    Returns:
        `(B,)` ``|pred & gt| / |pred | gt|`` (NaN where both are empty).
    """
    inter = (pred_occ & gt_occ).sum(dim=1).float()
    union = (pred_occ | gt_occ).sum(dim=1).float()
    return inter / union


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run a block with the RNG of `device` seeded, restoring the outer state after."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def uniform_box_points(
    batch_size: int,
    num_points: int,
    *,
    half_size: float = IOU_HALF_SIZE,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`(batch_size, num_points, 3)` points uniform in ``[-half_size, half_size]^3``."""
    return (torch.rand(batch_size, num_points, 3, device=device, dtype=dtype) * 2.0 - 1.0) * (
        half_size
    )


def mesh_iou(
    pred: Meshes,
    gt: Meshes,
    *,
    n_points: int = 100_000,
    half_size: float = IOU_HALF_SIZE,
    check_watertight: bool = True,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int | None = None,
) -> torch.Tensor:
    """
    Volumetric IoU from `n_points` uniform points in ``[-half_size, half_size]^3`` (meshes used
    as given: normalise them first, e.g. with :func:`normalize_meshes`).

    The ground truth must be watertight (checked unless `check_watertight=False`); the
    prediction is not checked, its generalised winding number tolerates holes. A prediction
    without faces has IoU 0.

    Args:
        pred, gt: batches of `B` meshes each, on one device.
        n_points: uniform points per mesh pair (the same points for both meshes).
        half_size: half side of the sampling cube (0.55: the unit cube padded by 10%).
        check_watertight: see above.
        max_pairs: chunk budget of the inside test.
        seed: seed for the uniform points (the global RNG state is restored afterwards).

    Returns:
        `(B,)` IoU.
    """
    _check_pair(pred, gt)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}.")
    if check_watertight:
        _check_watertight("Ground-truth", gt)
    device = gt.device
    with _seeded(seed, device):
        points = uniform_box_points(len(gt), n_points, half_size=half_size, device=device)
    return _iou_at(pred, gt, points, max_pairs=max_pairs)


def _iou_at(pred: Meshes, gt: Meshes, points: torch.Tensor, *, max_pairs: int) -> torch.Tensor:
    """
    `(B,)` IoU of the insides of `pred` and `gt` at `(B, P, 3)` points in their frame (the
    winding-number test, ground truth not checked for watertightness here); a prediction without
    faces gets ``EMPTY_VALUES["iou"]``.
    """
    gt_occ = points_inside_meshes(gt, points, check_watertight=False, max_pairs=max_pairs)
    pred_occ = points_inside_meshes(pred, points, check_watertight=False, max_pairs=max_pairs)
    iou = occupancy_iou(pred_occ, gt_occ)
    has_faces = _counts(pred, "faces") > 0
    return torch.where(has_faces, iou, torch.full_like(iou, EMPTY_VALUES["iou"]))


def _check_pair(pred: Meshes, gt: Meshes) -> None:
    _check_meshes("pred", pred)
    _check_meshes("gt", gt)
    if pred.device != gt.device:
        raise ValueError(
            f"pred and gt must be on the same device, got pred on {pred.device} and gt on "
            f"{gt.device}."
        )
    if len(pred) != len(gt):
        raise ValueError(f"Batch sizes differ: pred has {len(pred)} meshes, gt has {len(gt)}.")
    if len(gt) == 0:
        raise ValueError("The batches are empty.")


def sample_surface(meshes: Meshes, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `n_points` area-uniform surface samples with their face normals per mesh.

    Args:
        meshes: a batch of `B` meshes.
        n_points: samples per mesh.

    Returns:
        points, normals: `(B, n_points, 3)` each; zeros for meshes without faces.
    """
    _check_meshes("meshes", meshes)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}.")
    if meshes.isempty():
        zeros = torch.zeros(len(meshes), n_points, 3, device=meshes.device)
        return zeros, zeros.clone()
    if meshes.verts_packed().dtype != torch.float32:  # PyTorch3D's sampler is float32-only
        meshes = Meshes(verts=[v.float() for v in meshes.verts_list()], faces=meshes.faces_list())
    points, normals = sample_points_from_meshes(meshes, n_points, return_normals=True)
    return points, normals


def evaluate_meshes(
    pred: Meshes,
    gt: Meshes,
    *,
    n_points: int = 100_000,
    thresholds: ThresholdsLike = DEFAULT_THRESHOLDS,
    threshold_sweep: bool = False,
    normalize: str = "gt",
    n_iou_points: int = 100_000,
    iou_half_size: float = IOU_HALF_SIZE,
    check_watertight: bool = True,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """
    Score predicted meshes against true meshes with the Occupancy Networks / DVR protocol.

    Args:
        pred: `B` predicted meshes; a mesh without faces counts as an empty prediction and
            gets the worst-case values of :data:`EMPTY_VALUES` with ``empty = True``.
        gt: `B` ground-truth meshes on the same device, each with faces, and watertight when
            the IoU is computed (checked unless `check_watertight=False`).
        n_points: surface samples per mesh for the distance, normal and F-score metrics.
        thresholds: F-score thresholds (default 0.01: 1% of the unit bounding box).
        threshold_sweep: also report the 1000-threshold DVR sweep under ``sweep_*`` keys.
        normalize: ``"gt"`` (default, the protocol: both meshes use the ground truth's
            bounding-box transform), ``"each"`` or ``"none"``; see :func:`normalize_meshes`.
        n_iou_points: uniform points for the IoU; 0 skips the IoU (and the watertight check).
        iou_half_size: half side of the IoU sampling cube, in the evaluation frame.
        check_watertight: see `gt`.
        max_pairs: chunk budget of the inside test (peak memory about 100 bytes per pair).
        seed: seeds the surface samples and the IoU points (the global RNG state is restored
            afterwards); None uses the global RNG.

    Returns:
        The dict of :func:`dvr_plugin.metrics.pointcloud.evaluate_pointclouds` (with normal
        scores), plus ``iou`` `(B,)` when `n_iou_points > 0`.
    """
    _check_pair(pred, gt)
    if (_counts(gt, "faces") == 0).any():
        raise ValueError("Every ground-truth mesh needs at least one face.")
    if n_iou_points < 0:
        raise ValueError(f"n_iou_points must be >= 0, got {n_iou_points}.")
    if n_iou_points > 0 and check_watertight:
        _check_watertight("Ground-truth", gt)
    pred, gt = normalize_meshes(pred, gt, mode=normalize)
    device = gt.device
    with _seeded(seed, device):
        pred_points, pred_normals = sample_surface(pred, n_points)
        gt_points, gt_normals = sample_surface(gt, n_points)
        iou_points = None
        if n_iou_points > 0:
            iou_points = uniform_box_points(
                len(gt), n_iou_points, half_size=iou_half_size, device=device
            )
    pred_lengths = torch.where(_counts(pred, "faces") > 0, n_points, 0).to(torch.int64)
    gt_lengths = torch.full((len(gt),), n_points, dtype=torch.int64, device=device)
    # the meshes are in the evaluation frame already
    out = evaluate_pointclouds(
        pred_points,
        gt_points,
        pred_normals=pred_normals,
        gt_normals=gt_normals,
        pred_lengths=pred_lengths,
        gt_lengths=gt_lengths,
        thresholds=thresholds,
        threshold_sweep=threshold_sweep,
        normalize="none",
    )
    if iou_points is not None:
        out["iou"] = _iou_at(pred, gt, iou_points, max_pairs=max_pairs)
    return out
