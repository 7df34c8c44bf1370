"""
Point-cloud metrics of the Occupancy Networks evaluation protocol, as used by DVR.

Every nearest-neighbour query goes through :func:`pytorch3d.ops.knn_points` with ``K=1``, which
runs on CPU and GPU and keeps ``O(P)`` memory (never a `(P1, P2)` distance matrix). Distances
are plain Euclidean (not squared) unless a name says ``_sq``.

With `pred` the predicted points and `gt` the ground-truth points:

- ``accuracy`` = mean over pred points of the distance to the nearest gt point;
- ``completeness`` = mean over gt points of the distance to the nearest pred point;
- ``chamfer_l1`` = (accuracy + completeness) / 2; papers print ``10 * chamfer_l1``;
- ``chamfer_l2`` = (accuracy_sq + completeness_sq) / 2, the same with squared distances
  (``pytorch3d.loss.chamfer_distance`` reports the sum, i.e. twice this);
- ``normal_consistency`` = (normal_accuracy + normal_completeness) / 2 with
  ``normal_accuracy`` the mean of ``|n_pred . n_gt(nearest)|`` over pred points and
  ``normal_completeness`` the same over gt points;
- at a threshold ``t``: ``precision`` = share of pred points within ``t`` of gt (distance
  ``<= t``), ``recall`` = share of gt points within ``t`` of pred,
  ``f_score`` = 2 P R / (P + R) (0 when P + R = 0).

An empty prediction gets the worst-case values of :data:`EMPTY_VALUES` and ``empty = True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from pytorch3d.ops import knn_points
from pytorch3d.structures import Pointclouds

PointsLike = Union[torch.Tensor, Pointclouds]
ThresholdsLike = Union[float, Sequence[float], torch.Tensor]

#: Default F-score threshold: 1% of the side of the unit bounding box.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.01,)

#: Values reported for an empty prediction. Distances are the diagonal of the unit cube (the
#: largest distance between two points of a shape normalised to it), squared distances its
#: square, and every score is at its minimum. The Occupancy Networks / DVR reference code uses
#: the same distances but writes -1 for normal consistency and 6 for its L2 Chamfer.
EMPTY_VALUES: dict[str, float] = {
    "accuracy": math.sqrt(3.0),
    "completeness": math.sqrt(3.0),
    "chamfer_l1": math.sqrt(3.0),
    "chamfer_l1_x10": 10.0 * math.sqrt(3.0),
    "accuracy_sq": 3.0,
    "completeness_sq": 3.0,
    "chamfer_l2": 3.0,
    "normal_accuracy": 0.0,
    "normal_completeness": 0.0,
    "normal_consistency": 0.0,
    "precision": 0.0,
    "recall": 0.0,
    "f_score": 0.0,
    "iou": 0.0,
}

NORMALIZE_MODES = ("gt", "each", "none")


def dvr_thresholds(
    *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """
    The 1000 F-score thresholds of the DVR / Occupancy Networks evaluation code,
    ``linspace(1/1000, 1, 1000)`` in units of the normalised shape.

    Returns:
        `(1000,)` increasing thresholds; index 9 is 0.01 (F@1%).
    """
    return torch.linspace(1.0 / 1000.0, 1.0, 1000, device=device, dtype=dtype)


def as_thresholds(
    thresholds: ThresholdsLike, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A 1D tensor of non-negative thresholds, `(T,)`, from a float, a sequence or a tensor."""
    t = torch.as_tensor(thresholds, dtype=dtype, device=device).reshape(-1)
    if t.numel() == 0:
        raise ValueError("thresholds must hold at least one value.")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"thresholds must be finite and non-negative, got {thresholds!r}.")
    return t


def _check_cloud(name: str, points: torch.Tensor) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, P, 3), got {tuple(points.shape)}.")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {points.dtype}.")


def _lengths_or_full(name: str, points: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    batch, num = points.shape[:2]
    if lengths is None:
        return torch.full((batch,), num, dtype=torch.int64, device=points.device)
    lengths = torch.as_tensor(lengths, device=points.device).to(torch.int64)
    if lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}.")
    if (lengths < 0).any() or (lengths > num).any():
        raise ValueError(f"{name} must lie in [0, {num}], got {lengths.tolist()}.")
    return lengths


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the devices when the given tensors do not share one."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"All inputs must be on the same device, got {listing}.")


def nearest_neighbor_distances(
    src: torch.Tensor,
    tgt: torch.Tensor,
    *,
    src_lengths: torch.Tensor | None = None,
    tgt_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Euclidean distance from every source point to its nearest target point.

    Args:
        src: `(B, P1, 3)` source points (padded).
        tgt: `(B, P2, 3)` target points (padded).
        src_lengths: `(B,)` number of valid source points per cloud (default: all `P1`).
        tgt_lengths: `(B,)` number of valid target points per cloud (default: all `P2`);
            every cloud must have at least one.

    The search runs in float32 (PyTorch3D's CPU kernel supports nothing else); the distance to
    the neighbour found is then computed in the input's precision, with autograd.

    Returns:
        dists: `(B, P1)` distances (not squared); entries beyond `src_lengths` are 0.
        idx: `(B, P1)` int64 index into `tgt` of the nearest point.
    """
    _check_cloud("src", src)
    _check_cloud("tgt", tgt)
    check_same_device(src=src, tgt=tgt)
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"Batch sizes differ: src has {src.shape[0]}, tgt has {tgt.shape[0]}.")
    src_lengths = _lengths_or_full("src_lengths", src, src_lengths)
    tgt_lengths = _lengths_or_full("tgt_lengths", tgt, tgt_lengths)
    if (tgt_lengths == 0).any():
        raise ValueError("Every target cloud needs at least one point.")
    # PyTorch3D's CPU kernel takes float32 only: search in float32, then measure the distance
    # to the chosen neighbour in the input precision (differentiable through the gather).
    knn = knn_points(
        src.detach().float(),
        tgt.detach().float(),
        lengths1=src_lengths,
        lengths2=tgt_lengths,
        K=1,
    )
    idx = knn.idx[..., 0]
    nearest = tgt.to(src.dtype).gather(1, idx[..., None].expand(-1, -1, 3))
    dists = safe_sqrt(((src - nearest) ** 2).sum(-1))
    valid = _valid_mask(src_lengths, src.shape[1])
    return torch.where(valid, dists, torch.zeros_like(dists)), idx


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a zero (not infinite) gradient where ``x <= 0``; any shape."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def _valid_mask(lengths: torch.Tensor, num: int) -> torch.Tensor:
    """`(B, num)` bool, True for the first `lengths[b]` entries of row `b`."""
    return torch.arange(num, device=lengths.device)[None, :] < lengths[:, None]


def _masked_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of the first `lengths[b]` entries of each row of `values` `(B, P)`: `(B,)`."""
    valid = _valid_mask(lengths, values.shape[1])
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=1)
    return total / lengths.clamp_min(1).to(values.dtype)


def share_within(
    dists: torch.Tensor, lengths: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """
    Share of valid distances that are ``<= t`` for each threshold ``t``.

    Sorts once and counts with ``searchsorted``, so a sweep over many thresholds costs
    ``O(P log P + T log P)`` per cloud.

    Args:
        dists: `(B, P)` distances; entries beyond `lengths` are ignored.
        lengths: `(B,)` number of valid entries per row.
        thresholds: `(T,)` thresholds.

    Returns:
        `(B, T)` shares in [0, 1] (0 for rows with no valid entry).
    """
    valid = _valid_mask(lengths, dists.shape[1])
    padded = torch.where(valid, dists, torch.full_like(dists, math.inf))
    ordered, _ = padded.sort(dim=1)
    queries = thresholds.to(dists.dtype)[None, :].expand(dists.shape[0], -1).contiguous()
    counts = torch.searchsorted(ordered, queries, right=True)
    return counts.to(dists.dtype) / lengths.clamp_min(1).to(dists.dtype)[:, None]


def harmonic_f_score(precision: torch.Tensor, recall: torch.Tensor) -> torch.Tensor:
    """``2 P R / (P + R)``, 0 where ``P + R = 0``; any shape."""
    denom = precision + recall
    f = 2.0 * precision * recall / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, f, torch.zeros_like(f))


def _normal_dots(
    src_normals: torch.Tensor, tgt_normals: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """`|n_src . n_tgt[idx]|` with both normals made unit length: `(B, P1)`."""
    nearest = tgt_normals.gather(1, idx[..., None].expand(-1, -1, 3))
    dots = (F.normalize(src_normals, dim=-1) * F.normalize(nearest, dim=-1)).sum(-1)
    return dots.abs()


def unit_cube_transform(
    points: torch.Tensor, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The transform ``p -> (p - centre) * scale`` that maps each cloud's axis-aligned bounding
    box to a box centred at the origin whose longest side is 1.

    Args:
        points: `(B, P, 3)` padded points.
        lengths: `(B,)` valid points per cloud (default: all).

    Returns:
        centre: `(B, 3)` bounding-box centres (0 for empty clouds).
        scale: `(B,)` ``1 / longest side`` (1 for empty or single-point clouds).
    """
    _check_cloud("points", points)
    lengths = _lengths_or_full("lengths", points, lengths)
    valid = _valid_mask(lengths, points.shape[1])[..., None]
    low = torch.where(valid, points, torch.full_like(points, math.inf)).amin(dim=1)
    high = torch.where(valid, points, torch.full_like(points, -math.inf)).amax(dim=1)
    empty = (lengths == 0)[:, None]
    centre = torch.where(empty, torch.zeros_like(low), 0.5 * (low + high))
    side = torch.where(empty, torch.zeros_like(low), high - low).amax(dim=1)
    scale = torch.where(side > 0, 1.0 / torch.where(side > 0, side, torch.ones_like(side)), 1.0)
    return centre, scale


def apply_transform(
    points: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``(points - centre) * scale`` for `(B, P, 3)` points, `(B, 3)` centres, `(B,)` scales."""
    return (points - centre[:, None, :]) * scale[:, None, None]


def _unpack(
    name: str,
    cloud: PointsLike,
    normals: torch.Tensor | None,
    lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    if isinstance(cloud, Pointclouds):
        if normals is not None or lengths is not None:
            raise ValueError(
                f"Pass {name} normals and lengths inside the Pointclouds object, not separately."
            )
        points = cloud.points_padded()
        normals = cloud.normals_padded()
        lengths = cloud.num_points_per_cloud()
    else:
        points = cloud
    _check_cloud(name, points)
    if points.shape[1] == 0:  # All clouds empty: keep one padded point so shapes work.
        lengths = torch.zeros(points.shape[0], dtype=torch.int64, device=points.device)
        points = points.new_zeros(points.shape[0], 1, 3)
        normals = None if normals is None else normals.new_zeros(points.shape)
    if normals is not None and normals.shape != points.shape:
        raise ValueError(
            f"{name} normals must have the shape of the points {tuple(points.shape)}, "
            f"got {tuple(normals.shape)}."
        )
    return points, normals, _lengths_or_full(f"{name} lengths", points, lengths)


def pointcloud_scores(
    pred: torch.Tensor,
    gt: torch.Tensor,
    *,
    pred_lengths: torch.Tensor,
    gt_lengths: torch.Tensor,
    pred_normals: torch.Tensor | None = None,
    gt_normals: torch.Tensor | None = None,
    thresholds: ThresholdsLike,
    threshold_sweep: bool = False,
) -> dict[str, torch.Tensor]:
    """
    The protocol's scores for clouds already in the evaluation frame, empty predictions
    replaced by :data:`EMPTY_VALUES`. Building block of :func:`evaluate_pointclouds` and
    :func:`dvr_plugin.metrics.mesh.evaluate_meshes`; see :func:`evaluate_pointclouds` for the
    arguments and the returned keys. The thresholds take the device and dtype of ``pred``.
    """
    thresholds = as_thresholds(thresholds, device=pred.device, dtype=pred.dtype)
    sweep_thresholds = None
    if threshold_sweep:
        sweep_thresholds = dvr_thresholds(device=pred.device, dtype=pred.dtype)
    empty = pred_lengths == 0
    # Empty predictions are scored against a dummy point and overwritten below.
    safe_lengths = torch.where(empty, torch.ones_like(pred_lengths), pred_lengths)
    d_pred, idx_pred = nearest_neighbor_distances(
        pred, gt, src_lengths=safe_lengths, tgt_lengths=gt_lengths
    )
    d_gt, idx_gt = nearest_neighbor_distances(
        gt, pred, src_lengths=gt_lengths, tgt_lengths=safe_lengths
    )
    out: dict[str, torch.Tensor] = {}
    out["accuracy"] = _masked_mean(d_pred, safe_lengths)
    out["completeness"] = _masked_mean(d_gt, gt_lengths)
    out["chamfer_l1"] = 0.5 * (out["accuracy"] + out["completeness"])
    out["chamfer_l1_x10"] = 10.0 * out["chamfer_l1"]
    out["accuracy_sq"] = _masked_mean(d_pred**2, safe_lengths)
    out["completeness_sq"] = _masked_mean(d_gt**2, gt_lengths)
    out["chamfer_l2"] = 0.5 * (out["accuracy_sq"] + out["completeness_sq"])
    if pred_normals is not None and gt_normals is not None:
        out["normal_accuracy"] = _masked_mean(
            _normal_dots(pred_normals, gt_normals, idx_pred), safe_lengths
        )
        out["normal_completeness"] = _masked_mean(
            _normal_dots(gt_normals, pred_normals, idx_gt), gt_lengths
        )
        out["normal_consistency"] = 0.5 * (out["normal_accuracy"] + out["normal_completeness"])
    out["thresholds"] = thresholds
    out["precision"] = share_within(d_pred, safe_lengths, thresholds)
    out["recall"] = share_within(d_gt, gt_lengths, thresholds)
    out["f_score"] = harmonic_f_score(out["precision"], out["recall"])
    if sweep_thresholds is not None:
        out["sweep_thresholds"] = sweep_thresholds
        out["sweep_precision"] = share_within(d_pred, safe_lengths, sweep_thresholds)
        out["sweep_recall"] = share_within(d_gt, gt_lengths, sweep_thresholds)
        out["sweep_f_score"] = harmonic_f_score(out["sweep_precision"], out["sweep_recall"])
    out["empty"] = empty
    return apply_empty_values(out, empty)


def apply_empty_values(
    out: dict[str, torch.Tensor], empty: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Overwrite the rows of `empty` `(B,)` in every per-item score with :data:`EMPTY_VALUES`."""
    for key, value in out.items():
        base = key[len("sweep_") :] if key.startswith("sweep_") else key
        if base not in EMPTY_VALUES or value.shape[:1] != empty.shape:
            continue
        mask = empty.reshape(-1, *([1] * (value.dim() - 1)))
        out[key] = torch.where(mask, torch.full_like(value, EMPTY_VALUES[base]), value)
    return out


def evaluate_pointclouds(
    pred: PointsLike,
    gt: PointsLike,
    *,
    pred_normals: torch.Tensor | None = None,
    gt_normals: torch.Tensor | None = None,
    pred_lengths: torch.Tensor | None = None,
    gt_lengths: torch.Tensor | None = None,
    thresholds: ThresholdsLike = DEFAULT_THRESHOLDS,
    threshold_sweep: bool = False,
    normalize: str = "gt",
) -> dict[str, torch.Tensor]:
    """
    Occupancy Networks / DVR point-cloud metrics for a batch of predicted and true clouds.

    Args:
        pred: `(B, P1, 3)` padded predicted points, or a ``Pointclouds`` (its normals and
            lengths are then used, and `pred_normals` / `pred_lengths` must be None).
        gt: `(B, P2, 3)` padded ground-truth points, or a ``Pointclouds``.
        pred_normals: `(B, P1, 3)` predicted normals (any length, any sign), optional.
        gt_normals: `(B, P2, 3)` ground-truth normals, optional. Normal scores are reported only
            when both clouds have normals.
        pred_lengths: `(B,)` valid predicted points per cloud; a 0 marks an empty prediction.
        gt_lengths: `(B,)` valid ground-truth points per cloud; each must be >= 1.
        thresholds: F-score thresholds `(T,)` in normalised units (default 0.01, i.e. 1% of
            the unit bounding box).
        threshold_sweep: also report precision / recall / F-score over the 1000 thresholds of
            :func:`dvr_thresholds` under ``sweep_*`` keys.
        normalize: the frame the metrics are computed in:
            ``"gt"`` (default, the Occupancy Networks protocol): both clouds are moved and scaled
            with the transform that maps the ground truth's bounding box to a centred box with
            longest side 1, so a prediction's scale error counts;
            ``"each"``: each cloud with its own bounding box (scale errors are forgiven);
            ``"none"``: the clouds are used as given.

    Returns:
        A dict of tensors on the input device; `(B,)` unless stated:
        ``accuracy``, ``completeness``, ``chamfer_l1``, ``chamfer_l1_x10``, ``accuracy_sq``,
        ``completeness_sq``, ``chamfer_l2``; with normals ``normal_accuracy``,
        ``normal_completeness``, ``normal_consistency``; ``thresholds`` `(T,)`, ``precision``,
        ``recall``, ``f_score`` `(B, T)`; with the sweep ``sweep_thresholds`` `(1000,)` and
        ``sweep_precision``, ``sweep_recall``, ``sweep_f_score`` `(B, 1000)`; ``empty`` `(B,)`
        bool, True where the prediction had no points (its scores are :data:`EMPTY_VALUES`).
    """
    pred_points, pred_normals, pred_lengths = _unpack("pred", pred, pred_normals, pred_lengths)
    gt_points, gt_normals, gt_lengths = _unpack("gt", gt, gt_normals, gt_lengths)
    check_same_device(
        pred=pred_points, gt=gt_points, pred_normals=pred_normals, gt_normals=gt_normals
    )
    if pred_points.shape[0] != gt_points.shape[0]:
        raise ValueError(
            f"Batch sizes differ: pred has {pred_points.shape[0]}, gt has {gt_points.shape[0]}."
        )
    if (gt_lengths == 0).any():
        raise ValueError("Every ground-truth cloud needs at least one point.")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}.")
    dtype = torch.promote_types(pred_points.dtype, gt_points.dtype)
    pred_points, gt_points = pred_points.to(dtype), gt_points.to(dtype)
    if normalize != "none":
        gt_centre, gt_scale = unit_cube_transform(gt_points, gt_lengths)
        if normalize == "gt":
            pred_centre, pred_scale = gt_centre, gt_scale
        else:
            pred_centre, pred_scale = unit_cube_transform(pred_points, pred_lengths)
        gt_points = apply_transform(gt_points, gt_centre, gt_scale)
        pred_points = apply_transform(pred_points, pred_centre, pred_scale)
    return pointcloud_scores(
        pred_points,
        gt_points,
        pred_lengths=pred_lengths,
        gt_lengths=gt_lengths,
        pred_normals=pred_normals,
        gt_normals=gt_normals,
        thresholds=thresholds,
        threshold_sweep=threshold_sweep,
    )


def chamfer_l1(
    pred: torch.Tensor,
    gt: torch.Tensor,
    *,
    pred_lengths: torch.Tensor | None = None,
    gt_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    The paper's Chamfer-L1, ``(accuracy + completeness) / 2`` with Euclidean distances, for
    clouds used as given (no normalisation). Differentiable with respect to both clouds.

    Args:
        pred: `(B, P1, 3)` predicted points; gt: `(B, P2, 3)` true points.
        pred_lengths, gt_lengths: `(B,)` valid points per cloud (default: all, each >= 1).

    Returns:
        `(B,)` Chamfer-L1 (multiply by 10 for the papers' tables).
    """
    d_pred, _ = nearest_neighbor_distances(
        pred, gt, src_lengths=pred_lengths, tgt_lengths=gt_lengths
    )
    d_gt, _ = nearest_neighbor_distances(gt, pred, src_lengths=gt_lengths, tgt_lengths=pred_lengths)
    pred_lengths = _lengths_or_full("pred_lengths", pred, pred_lengths)
    gt_lengths = _lengths_or_full("gt_lengths", gt, gt_lengths)
    return 0.5 * (_masked_mean(d_pred, pred_lengths) + _masked_mean(d_gt, gt_lengths))


def f_score(
    pred: torch.Tensor,
    gt: torch.Tensor,
    *,
    threshold: float = 0.01,
    pred_lengths: torch.Tensor | None = None,
    gt_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The standard F-score at one threshold, for clouds used as given (no normalisation).

    Precision is the share of predicted points within `threshold` of the truth, recall the
    share of true points within `threshold` of the prediction (see
    :func:`dvr_plugin.metrics.kaolin_compat.kaolin_f_score` for Kaolin's different recall).

    Args:
        pred: `(B, P1, 3)` predicted points; gt: `(B, P2, 3)` true points.
        threshold: the distance (``<=``) that counts as a hit.
        pred_lengths, gt_lengths: `(B,)` valid points per cloud (default: all, each >= 1).

    Returns:
        f_score, precision, recall: each `(B,)`.
    """
    d_pred, _ = nearest_neighbor_distances(
        pred, gt, src_lengths=pred_lengths, tgt_lengths=gt_lengths
    )
    d_gt, _ = nearest_neighbor_distances(gt, pred, src_lengths=gt_lengths, tgt_lengths=pred_lengths)
    t = as_thresholds(threshold, device=d_pred.device, dtype=d_pred.dtype)
    precision = share_within(d_pred, _lengths_or_full("pred_lengths", pred, pred_lengths), t)
    recall = share_within(d_gt, _lengths_or_full("gt_lengths", gt, gt_lengths), t)
    precision, recall = precision[:, 0], recall[:, 0]
    return harmonic_f_score(precision, recall), precision, recall
