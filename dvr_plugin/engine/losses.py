"""
Training losses of Differentiable Volumetric Rendering, as pure tensor functions.

Every loss takes per-ray tensors of a batch of ``B`` images with ``R`` sampled rays each and a
boolean selection of the rays it applies to. The per-ray values of the selected rays are summed
and, with the default ``reduction="batch"``, divided by the batch size ``B`` (the reference DVR
reduction: the loss of one image is a sum over its rays, averaged over the images). Two other
reductions exist for logging and comparisons: ``"sum"`` (no division) and ``"mean"`` (the mean
over the selected rays, 0 when none is selected).

Unselected rays never influence the value or the gradient, even when they hold NaN or inf (e.g.
the depth of a ray that found no surface): their entries are replaced by zeros before any
arithmetic. A loss with no selected ray is an exact zero that still belongs to the graph.

Which function to use for which DVR term (names as in :class:`LossWeights`):

- ``rgb``: :func:`rgb_loss`, L1 colour where the prediction hit and the mask says object.
- ``depth``: :func:`depth_loss`, L1 on z-depth; or ``world_point``: :func:`world_point_loss`,
  Euclidean distance of surface points.
- ``freespace`` / ``occupancy``: :func:`freespace_loss` / :func:`occupancy_loss` on field values
  at points chosen by :func:`freespace_and_occupancy_points`.
- ``normal``: :func:`normal_smoothness_loss` on normals at surface points and at points moved by
  :func:`jitter_points`.
- ``image_gradient``: :func:`image_gradient_loss` on 2x2 patches from
  :func:`dvr_plugin.engine.sampling.sample_uniform` (``patches=True``).
- ``eikonal``: :func:`eikonal_loss` (or :func:`eikonal_penalty` on gradients at hand),
  ``(|grad f| - 1)^2`` for signed-distance fields.
- ``mask``: :func:`soft_mask_loss` on the smallest outside value along each ray from
  :func:`min_outside_along_rays`, sharpened by :func:`soft_mask_alpha` (IDR's mask loss).
- ``volume``: the volume-rendering warm-up of :mod:`dvr_plugin.engine.volume_warmup`.

:func:`total_loss` weighs and adds the terms. ``docs/losses.md`` gives the formulas.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..fields.field import check_field_type, evaluate_field, field_type_of
from .sampling import (
    PATCH_BOTTOM_LEFT,
    PATCH_TOP_LEFT,
    PATCH_TOP_RIGHT,
    RAYS_PER_PATCH,
)

REDUCTIONS = ("batch", "sum", "mean")

# ---------------------------------------------------------------------------------------------
# Helpers


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def _check_tensor(name: str, value: torch.Tensor, shape: tuple, *, floating: bool = True) -> None:
    """Check a tensor's shape (``None`` entries of ``shape`` match any size) and dtype."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}.")
    ok = value.dim() == len(shape) and all(
        want is None or got == want for got, want in zip(value.shape, shape, strict=True)
    )
    if not ok:
        wanted = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(value.shape)}.")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {value.dtype}.")


def _check_mask(name: str, value: torch.Tensor, batch_rays: torch.Size) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a bool tensor, got {type(value).__name__}.")
    if value.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {value.dtype}.")
    if value.shape != batch_rays:
        raise ValueError(
            f"{name} must have shape {tuple(batch_rays)} (B, R), got {tuple(value.shape)}."
        )


def _check_batch_rays(name: str, value: torch.Tensor, n_dims: int) -> None:
    """`(B, R)` when ``n_dims == 2``, `(B, R, *)` when 3."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}.")
    if value.dim() != n_dims:
        wanted = "(B, R)" if n_dims == 2 else "(B, R, C)"
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(value.shape)}.")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {value.dtype}.")


def _same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )


def _check_prediction(
    reduction: str,
    name: str,
    pred: torch.Tensor,
    target_name: str,
    target: torch.Tensor,
    n_dims: int,
) -> torch.Size:
    """Check the reduction and a `(B, R)` / `(B, R, C)` prediction and its target; `(B, R)`."""
    _check_reduction(reduction)
    _check_batch_rays(name, pred, n_dims)
    _same_shape(name, pred, target_name, target)
    return pred.shape[:2]


def _keep(select: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` where selected, 0 elsewhere (no NaN / inf of unselected entries leaks through)."""
    while select.dim() < value.dim():
        select = select[..., None]
    return torch.where(select, value, torch.zeros((), dtype=value.dtype, device=value.device))


def _reduce(per_item: torch.Tensor, select: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum of the selected `(B, N)` items, then the reduction (see the module docstring)."""
    total = _keep(select, per_item).sum()
    if reduction == "batch":
        return total / per_item.shape[0]
    if reduction == "mean":
        return total / select.sum().clamp(min=1).to(total.dtype)
    return total


# ---------------------------------------------------------------------------------------------
# Photometric and geometric supervision


def rgb_loss(
    pred_rgb: torch.Tensor,
    gt_rgb: torch.Tensor,
    pred_hit: torch.Tensor,
    gt_mask: torch.Tensor,
    *,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    L1 colour loss where both the prediction and the mask say "object".

    ``sum_{b, r : hit & mask} sum_c |pred_rgb - gt_rgb|`` divided by ``B`` (``"batch"``).

    Args:
        pred_rgb: `(B, R, C)` rendered colours (C = 3 for RGB).
        gt_rgb: `(B, R, C)` true colours.
        pred_hit: `(B, R)` bool, the ray found a surface.
        gt_mask: `(B, R)` bool, the pixel lies inside the object mask.
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).

    Returns:
        A scalar tensor.
    """
    batch_rays = _check_prediction(reduction, "pred_rgb", pred_rgb, "gt_rgb", gt_rgb, 3)
    _check_mask("pred_hit", pred_hit, batch_rays)
    _check_mask("gt_mask", gt_mask, batch_rays)
    select = pred_hit & gt_mask
    per_ray = _keep(select, pred_rgb - gt_rgb).abs().sum(dim=-1)
    return _reduce(per_ray, select, reduction)


def depth_loss(
    pred_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    valid: torch.Tensor,
    pred_hit: torch.Tensor,
    *,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    L1 loss on camera z-depth (the ray length of PyTorch3D rays with ``unit_directions=False``).

    ``sum_{b, r : valid & hit & finite(gt)} |pred_depth - gt_depth|`` divided by ``B``.

    Args:
        pred_depth: `(B, R)` predicted z-depth (anything where not hit, e.g. inf).
        gt_depth: `(B, R)` true z-depth; non-finite entries are ignored.
        valid: `(B, R)` bool, the true depth may be used (usually the object mask, as in the
            reference, which applies the depth loss where the prediction and the mask agree).
        pred_hit: `(B, R)` bool, the ray found a surface.
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).

    Returns:
        A scalar tensor.
    """
    batch_rays = _check_prediction(reduction, "pred_depth", pred_depth, "gt_depth", gt_depth, 2)
    _check_mask("valid", valid, batch_rays)
    _check_mask("pred_hit", pred_hit, batch_rays)
    select = valid & pred_hit & torch.isfinite(gt_depth)
    per_ray = _keep(select, pred_depth - gt_depth).abs()
    return _reduce(per_ray, select, reduction)


def world_point_loss(
    pred_points: torch.Tensor,
    gt_points: torch.Tensor,
    valid: torch.Tensor,
    *,
    pred_hit: torch.Tensor | None = None,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    Euclidean distance (not squared) between predicted and true surface points.

    ``sum_{b, r : valid (& hit)} ||pred_points - gt_points||_2`` divided by ``B``. The reference
    uses it instead of :func:`depth_loss` on DTU (``depth_loss_on_world_points``); on a ray it
    equals the z-depth error times the length of the ray direction.

    Args:
        pred_points: `(B, R, 3)` predicted surface points.
        gt_points: `(B, R, 3)` true surface points (e.g. unprojected true depth).
        valid: `(B, R)` bool, the rays to use (combine the mask, the prediction's hits and the
            validity of the true depth here, or pass ``pred_hit`` separately).
        pred_hit: optional `(B, R)` bool, ANDed with ``valid``.
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).

    Returns:
        A scalar tensor.
    """
    batch_rays = _check_prediction(reduction, "pred_points", pred_points, "gt_points", gt_points, 3)
    _check_mask("valid", valid, batch_rays)
    select = valid
    if pred_hit is not None:
        _check_mask("pred_hit", pred_hit, batch_rays)
        select = select & pred_hit
    per_ray = torch.linalg.vector_norm(_keep(select, pred_points - gt_points), dim=-1)
    return _reduce(per_ray, select, reduction)


# ---------------------------------------------------------------------------------------------
# Free-space and occupancy supervision


def _check_field_type(field_type: str, sdf_beta: float) -> None:
    check_field_type(field_type)
    if not (sdf_beta > 0 and math.isfinite(sdf_beta)):
        raise ValueError(f"sdf_beta must be a positive finite number, got {sdf_beta}.")


def _inside_outside_loss(
    values: torch.Tensor,
    select: torch.Tensor,
    *,
    inside: bool,
    reduction: str,
    field_type: str,
    sdf_beta: float,
    name: str,
) -> torch.Tensor:
    _check_reduction(reduction)
    _check_field_type(field_type, sdf_beta)
    _check_batch_rays(name, values, 2)
    _check_mask("select", select, values.shape)
    values = _keep(select, values)
    if field_type == "occupancy":
        target = torch.full_like(values, 1.0 if inside else 0.0)
        per_ray = F.binary_cross_entropy_with_logits(values, target, reduction="none")
    else:
        # SDF: negative inside. A softplus-smoothed hinge, softplus_beta(+-s) ~ max(0, +-s).
        per_ray = F.softplus(values if inside else -values, beta=sdf_beta)
    return _reduce(per_ray, select, reduction)


def freespace_loss(
    logits: torch.Tensor,
    select: torch.Tensor,
    *,
    reduction: str = "batch",
    field_type: str = "occupancy",
    sdf_beta: float = 100.0,
) -> torch.Tensor:
    """
    Push the field to "empty" at points seen outside the object mask.

    Occupancy fields (default): binary cross-entropy of the logits against 0, per ray
    ``softplus(logit) = -log(1 - sigmoid(logit))``. SDF fields (``field_type="sdf"``, negative
    inside): the smoothed hinge ``softplus(-s * beta) / beta``, which tends to ``max(0, -s)``
    (no loss once the point is outside by more than a few ``1 / beta``).
    Summed over selected rays and divided by ``B`` (``"batch"``).

    The caller evaluates the field at the right points (see :func:`freespace_and_occupancy_points`:
    the predicted surface point for rays that hit, else a random depth inside the box).

    Args:
        logits: `(B, R)` occupancy logits (signed distances for ``field_type="sdf"``).
        select: `(B, R)` bool, the rays this loss applies to (outside the mask).
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).
        field_type: ``"occupancy"`` or ``"sdf"``.
        sdf_beta: sharpness of the SDF hinge, in 1 / scene units (100: a 0.01 soft margin).

    Returns:
        A scalar tensor.
    """
    return _inside_outside_loss(
        logits,
        select,
        inside=False,
        reduction=reduction,
        field_type=field_type,
        sdf_beta=sdf_beta,
        name="logits",
    )


def occupancy_loss(
    logits: torch.Tensor,
    select: torch.Tensor,
    *,
    reduction: str = "batch",
    field_type: str = "occupancy",
    sdf_beta: float = 100.0,
) -> torch.Tensor:
    """
    Push the field to "occupied" at points of rays inside the mask that found no surface.

    Occupancy fields (default): binary cross-entropy of the logits against 1, per ray
    ``softplus(-logit) = -log(sigmoid(logit))``. SDF fields: ``softplus(s * beta) / beta``, a
    smoothed ``max(0, s)``. Summed over selected rays and divided by ``B`` (``"batch"``).

    Args:
        logits: `(B, R)` occupancy logits (signed distances for ``field_type="sdf"``).
        select: `(B, R)` bool, the rays this loss applies to (inside the mask, no hit).
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).
        field_type: ``"occupancy"`` or ``"sdf"``.
        sdf_beta: sharpness of the SDF hinge, in 1 / scene units.

    Returns:
        A scalar tensor.
    """
    return _inside_outside_loss(
        logits,
        select,
        inside=True,
        reduction=reduction,
        field_type=field_type,
        sdf_beta=sdf_beta,
        name="logits",
    )


class LossPoints(NamedTuple):
    """
    Where to evaluate the field for the free-space and occupancy losses.

    Members:
        freespace_points: `(B, R, 3)` points for :func:`freespace_loss`.
        freespace_depths: `(B, R)` their ray lengths (z-depths).
        freespace_select: `(B, R)` bool, the rays :func:`freespace_loss` applies to.
        occupancy_points: `(B, R, 3)` points for :func:`occupancy_loss`.
        occupancy_depths: `(B, R)` their ray lengths.
        occupancy_select: `(B, R)` bool, the rays :func:`occupancy_loss` applies to.

    Unselected entries hold depth 0 (the ray origin), finite placeholders that are safe to feed
    to a field. Everything is detached: these are sampling locations, not predictions.
    """

    freespace_points: torch.Tensor
    freespace_depths: torch.Tensor
    freespace_select: torch.Tensor
    occupancy_points: torch.Tensor
    occupancy_depths: torch.Tensor
    occupancy_select: torch.Tensor


def _as_ray_tensor(name: str, value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        try:
            return torch.broadcast_to(value.to(like), like.shape)
        except RuntimeError as error:
            raise ValueError(
                f"{name} must broadcast to {tuple(like.shape)} (B, R), got {tuple(value.shape)}."
            ) from error
    return torch.full_like(like, float(value))


def freespace_and_occupancy_points(
    origins: torch.Tensor,
    directions: torch.Tensor,
    depths_hit: torch.Tensor,
    hit: torch.Tensor,
    mask: torch.Tensor,
    near: torch.Tensor | float,
    far: torch.Tensor | float,
    generator: torch.Generator | None = None,
    visual_hull_depth: torch.Tensor | None = None,
) -> LossPoints:
    """
    Pick the evaluation points of the free-space and occupancy losses (DVR's rules).

    - Free space, rays outside the mask: the predicted surface point when the ray hit,
      otherwise a depth drawn uniformly in ``[near, far]``.
    - Occupancy, rays inside the mask without a hit: the visual-hull depth where one is given
      (finite and > 0), otherwise a depth drawn uniformly in ``[near, far]``.

    A ray needs a depth range (``far > near``, both finite) for a random depth; rays without
    one (they miss the box) and without a hit / visual-hull depth are left out of the selection.
    Every ray belongs to at most one of the two selections, so one uniform draw per ray serves
    both.

    The reference samples free-space depths in the box padded to +-0.55 (the marching box) and
    occupancy depths in the unpadded unit cube; pass the matching ``near`` / ``far`` (e.g. from
    :func:`dvr_plugin.renderer.rays.intersect_box`). Ground-truth depth maps, when present, can be
    passed as ``visual_hull_depth``: the reference then uses them for the occupancy points too.

    Args:
        origins: `(B, R, 3)` ray origins.
        directions: `(B, R, 3)` ray directions (point = origin + depth * direction).
        depths_hit: `(B, R)` depth of the predicted surface; only read where ``hit``.
        hit: `(B, R)` bool, the ray found a surface.
        mask: `(B, R)` bool, the pixel lies inside the object mask.
        near, far: `(B, R)` tensors (or anything broadcastable, or floats): the depth range of
            each ray inside the box.
        generator: optional ``torch.Generator`` on the rays' device.
        visual_hull_depth: optional `(B, R)` depth for the occupancy points; entries that are
            not finite or not > 0 mean "none".

    Returns:
        :class:`LossPoints`.
    """
    _check_tensor("origins", origins, (None, None, 3))
    _same_shape("origins", origins, "directions", directions)
    batch_rays = origins.shape[:2]
    _check_tensor("depths_hit", depths_hit, tuple(batch_rays))
    _check_mask("hit", hit, batch_rays)
    _check_mask("mask", mask, batch_rays)
    if generator is not None and generator.device.type != origins.device.type:
        raise ValueError(
            f"The generator lives on {generator.device} but the rays on {origins.device}."
        )
    with torch.no_grad():
        origins = origins.detach()
        directions = directions.detach()
        like = depths_hit.detach()
        near_t = _as_ray_tensor("near", near, like)
        far_t = _as_ray_tensor("far", far, like)
        has_range = torch.isfinite(near_t) & torch.isfinite(far_t) & (far_t > near_t)
        zero = torch.zeros_like(like)
        near_t = torch.where(has_range, near_t, zero)
        far_t = torch.where(has_range, far_t, zero)
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        random_depth = near_t + u * (far_t - near_t)

        freespace_select = ~mask & (hit | has_range)
        freespace_depths = torch.where(hit, like, random_depth)
        freespace_depths = torch.where(freespace_select, freespace_depths, zero)

        occupancy_depths = random_depth
        has_hull = torch.zeros_like(mask)
        if visual_hull_depth is not None:
            _check_tensor("visual_hull_depth", visual_hull_depth, tuple(batch_rays))
            hull = visual_hull_depth.detach().to(like)
            has_hull = torch.isfinite(hull) & (hull > 0)
            occupancy_depths = torch.where(has_hull, hull, random_depth)
        occupancy_select = mask & ~hit & (has_hull | has_range)
        occupancy_depths = torch.where(occupancy_select, occupancy_depths, zero)

        return LossPoints(
            freespace_points=origins + freespace_depths[..., None] * directions,
            freespace_depths=freespace_depths,
            freespace_select=freespace_select,
            occupancy_points=origins + occupancy_depths[..., None] * directions,
            occupancy_depths=occupancy_depths,
            occupancy_select=occupancy_select,
        )


# ---------------------------------------------------------------------------------------------
# Regularisers


def jitter_points(
    points: torch.Tensor,
    scale: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """
    Move points by a uniform random offset in the cube ``[-scale / 2, scale / 2]^3`` (the
    reference's neighbour sampling for the normal loss).

    The offsets carry no gradient; ``points`` keeps its own (detach it first if the normal loss
    should not reach the depth, as in the reference).

    Args:
        points: `(..., 3)` points.
        scale: the side of the cube of offsets (scene units).
        generator: optional ``torch.Generator`` on ``points.device``.

    Returns:
        `(..., 3)` jittered points.
    """
    if not isinstance(points, torch.Tensor) or points.dim() < 1 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must have shape (..., 3), got {shape}.")
    if not points.is_floating_point():
        raise ValueError(f"points must be a floating point tensor, got {points.dtype}.")
    if not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number >= 0, got {scale}.")
    noise = torch.rand(points.shape, generator=generator, device=points.device, dtype=points.dtype)
    return points + (noise - 0.5) * scale


def normal_smoothness_loss(
    normals: torch.Tensor,
    normals_jittered: torch.Tensor,
    select: torch.Tensor,
    *,
    normalize: bool = True,
    eps: float = 1e-5,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    Normals at a surface point and at a jittered neighbour should agree.

    ``sum_{b, r : select} || n / |n| - n' / |n'| ||_2`` (Euclidean norm, not squared, as in the
    reference), divided by ``B``. The reference applies it at every ray that hit.

    Args:
        normals: `(B, R, 3)` normals (or field gradients) at the surface points.
        normals_jittered: `(B, R, 3)` the same at the jittered points.
        select: `(B, R)` bool, the rays to use (usually the rays that hit).
        normalize: divide both by their length first (lengths clamped to ``eps``); pass
            ``False`` when the inputs are unit normals already.
        eps: the smallest length used when normalising.
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).

    Returns:
        A scalar tensor.
    """
    _check_reduction(reduction)
    _check_tensor("normals", normals, (None, None, 3))
    _same_shape("normals", normals, "normals_jittered", normals_jittered)
    _check_mask("select", select, normals.shape[:2])
    a = _keep(select, normals)
    b = _keep(select, normals_jittered)
    if normalize:
        a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=eps)
        b = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=eps)
    per_ray = torch.linalg.vector_norm(a - b, dim=-1)
    return _reduce(per_ray, select, reduction)


def image_gradient_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    *,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    Match finite-difference image gradients on 2x2 patches (DVR's multi-view loss).

    Rays ``4k .. 4k + 3`` form patch ``k`` in the order of
    :data:`dvr_plugin.engine.sampling.PATCH_OFFSETS`: top-left, top-right, bottom-left,
    bottom-right. Per patch and channel ``c``, with forward differences from the top-left pixel
    ``dx = I_TR - I_TL`` and ``dy = I_BL - I_TL``, the loss is
    ``sqrt((dx_pred - dx_gt)^2 + (dy_pred - dy_gt)^2)``, summed over channels and over the
    patches whose four rays are all valid, and divided by ``B``. (The reference uses the same two
    differences from the same corner; the bottom-right pixel only enters through the validity
    test.) ``"mean"`` averages over valid patches.

    Args:
        pred: `(B, R, C)` rendered colours, ``R`` a multiple of 4.
        gt: `(B, R, C)` true colours.
        valid: `(B, R)` bool, rays whose colour may be compared (usually hit & mask).
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over valid patches).

    Returns:
        A scalar tensor.
    """
    _check_mask("valid", valid, _check_prediction(reduction, "pred", pred, "gt", gt, 3))
    batch, n_rays, channels = pred.shape
    if n_rays % RAYS_PER_PATCH != 0:
        raise ValueError(
            f"image_gradient_loss needs rays in 2x2 patches (R divisible by 4), got R = {n_rays}."
        )
    patch_shape = (batch, n_rays // RAYS_PER_PATCH, RAYS_PER_PATCH)
    patch_valid = valid.reshape(patch_shape).all(dim=-1)  # (B, P)
    pred_p = _keep(patch_valid, pred.reshape(*patch_shape, channels))
    gt_p = _keep(patch_valid, gt.reshape(*patch_shape, channels))

    def differences(image: torch.Tensor) -> torch.Tensor:  # (B, P, 4, C) -> (B, P, C, 2)
        top_left = image[:, :, PATCH_TOP_LEFT]
        dx = image[:, :, PATCH_TOP_RIGHT] - top_left
        dy = image[:, :, PATCH_BOTTOM_LEFT] - top_left
        return torch.stack([dx, dy], dim=-1)

    error = torch.linalg.vector_norm(differences(pred_p) - differences(gt_p), dim=-1)
    return _reduce(error.sum(dim=-1), patch_valid, reduction)


# ---------------------------------------------------------------------------------------------
# Eikonal term and soft mask (IDR)


def eikonal_penalty(
    gradients: torch.Tensor,
    select: torch.Tensor | None = None,
    *,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    ``(|g| - 1)^2`` per point from given field gradients ``g``: the eikonal term of IDR, which
    keeps a signed-distance field a distance (unit gradient length). Summed over the selected
    points and divided by ``B`` (``"batch"``).

    Args:
        gradients: `(B, P, 3)` spatial gradients of the field (scene units).
        select: optional `(B, P)` bool, the points to use (default: all).
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected points).

    Returns:
        A scalar tensor.
    """
    _check_reduction(reduction)
    _check_tensor("gradients", gradients, (None, None, 3))
    if select is None:
        select = torch.ones(gradients.shape[:2], dtype=torch.bool, device=gradients.device)
    _check_mask("select", select, gradients.shape[:2])
    length = torch.linalg.vector_norm(_keep(select, gradients), dim=-1)
    return _reduce((length - 1.0) ** 2, select, reduction)


def eikonal_loss(
    field,
    points: torch.Tensor,
    latent: torch.Tensor | None = None,
    *,
    select: torch.Tensor | None = None,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    The eikonal term ``(|grad_p f(p)| - 1)^2`` at given points (IDR: uniform points in the box
    and the surface points), for signed-distance fields. The gradient is taken with
    ``create_graph=True``, so the term trains the field's parameters (and the latent).

    Args:
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol (signed distances).
        points: `(B, P, 3)` points (scene units); detached: only the field is trained.
        latent: `(B, C)` codes or ``None``.
        select: optional `(B, P)` bool, the points to use (default: all).
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected points).

    Returns:
        A scalar tensor.
    """
    _check_tensor("points", points, (None, None, 3))
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        values = evaluate_field(field, points, latent).values
        (gradients,) = torch.autograd.grad(values.sum(), points, create_graph=True)
    return eikonal_penalty(gradients, select, reduction=reduction)


class RayMinimum(NamedTuple):
    """
    The smallest outside value along each ray (:func:`min_outside_along_rays`).

    Members:
        values: `(B, R)` the outside value at the minimising depth, differentiable in the
            field's parameters (0 for unselected rays).
        depths: `(B, R)` the minimising depths (detached; 0 for unselected rays).
    """

    values: torch.Tensor
    depths: torch.Tensor


def outside_sign(field_type: str) -> float:
    """+1 for signed distances (positive outside), -1 for occupancy logits (positive inside)."""
    return 1.0 if check_field_type(field_type) == "sdf" else -1.0


def stratified_ray_offsets(
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    select: torch.Tensor,
    offsets: torch.Tensor | float,
    *,
    n_samples: int,
    caller: str,
) -> torch.Tensor:
    """
    Check the inputs of a stratified search between ``near`` and ``far`` along rays (the soft
    mask's :func:`min_outside_along_rays`, the warm-up's
    :func:`dvr_plugin.engine.volume_warmup.volume_render_rays`) and return the offsets.

    Args:
        origins, directions: `(B, R, 3)` rays.
        near, far: `(B, R)` depth ranges; every selected one must be finite with
            ``far > near``.
        select: `(B, R)` bool, the rays searched.
        offsets: `(B, R)` positions in [0, 1) within the strata, or one number for all.
        n_samples: the samples per ray (an integer >= 1).
        caller: the function named in the error for a selected ray without a range.

    Returns:
        `(B, R)` offsets (detached, like ``near``).
    """
    _check_tensor("origins", origins, (None, None, 3))
    _same_shape("origins", origins, "directions", directions)
    batch_rays = origins.shape[:2]
    _check_tensor("near", near, tuple(batch_rays))
    _check_tensor("far", far, tuple(batch_rays))
    _check_mask("select", select, batch_rays)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}.")
    with torch.no_grad():
        length = far.detach() - near.detach()
        bad = select & ~(torch.isfinite(near) & torch.isfinite(length) & (length > 0))
        if bool(bad.any()):
            raise ValueError(
                f"{caller}: {int(bad.sum())} selected ray(s) have no depth range "
                "(far <= near or non-finite); leave them out of select."
            )
        return _as_ray_tensor("offsets", offsets, near.detach())


def min_outside_along_rays(
    field,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    select: torch.Tensor,
    *,
    n_samples: int = 64,
    offsets: torch.Tensor | float = 0.5,
    field_type: str | None = None,
    level: float = 0.0,
    latent: torch.Tensor | None = None,
    chunk_size: int = 2**17,
) -> RayMinimum:
    """
    The smallest *outside value* ``o`` along each selected ray, for the soft mask loss.

    The outside value is the negated inside value of :mod:`dvr_plugin.surface.query`:
    ``o = s - level`` for signed distances, ``o = level - logit`` for occupancy logits; it is
    positive outside the object, negative inside, zero on the surface. A ray whose minimum is
    negative enters the object. The search is a dense one without gradient: ``n_samples``
    depths ``near + (i + u) (far - near) / n_samples``, ``i < n_samples``, ``u`` = ``offsets``
    (one stratified draw per ray, or 0.5 for the centres of the strata); the field is then
    evaluated once more, with gradient, at the minimising depth's point, whose position itself
    is treated as a constant.

    Args:
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol.
        origins, directions: `(B, R, 3)` rays (point = origin + depth * direction).
        near, far: `(B, R)` the depth range searched (e.g. from
            :func:`dvr_plugin.renderer.rays.intersect_box`); read only where selected.
        select: `(B, R)` bool, the rays to search (each must have ``far > near``, finite).
        n_samples: the number of depths per ray (>= 1).
        offsets: `(B, R)` positions in [0, 1) within the strata, or one number for all.
        field_type: ``"occupancy"`` or ``"sdf"`` (default: the field's).
        level: the level set that is the surface.
        latent: `(B, C)` codes or ``None``. Without codes only the selected rays are
            evaluated; with codes every ray is (one code per batch element).
        chunk_size: the most points per evaluation of the search.

    Returns:
        :class:`RayMinimum` with `(B, R)` values (with gradient) and depths.
    """
    u = stratified_ray_offsets(
        origins,
        directions,
        near,
        far,
        select,
        offsets,
        n_samples=n_samples,
        caller="min_outside_along_rays",
    )
    batch_rays = origins.shape[:2]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if field_type is None:
        field_type = field_type_of(field)
    sign = outside_sign(field_type)
    like = near.detach()
    zero = torch.zeros_like(like)
    if not bool(select.any()):
        return RayMinimum(values=zero, depths=zero)
    with torch.no_grad():
        origins, directions = origins.detach(), directions.detach()
        lower = torch.where(select, like, zero)
        length = torch.where(select, far.detach() - like, zero)
        steps = torch.arange(n_samples, dtype=like.dtype, device=like.device)
        depths = lower[..., None] + (steps + u[..., None]) * (length / n_samples)[..., None]
        # the rays searched: the selected ones, or all of them when a latent code is given
        rays = (select if latent is None else torch.ones_like(select)).nonzero(as_tuple=True)
        samples = origins[rays][:, None] + depths[rays][..., None] * directions[rays][:, None]
        flat = samples.reshape(1 if latent is None else batch_rays[0], -1, 3)  # (., N n, 3)
        per_call = max(1, chunk_size // flat.shape[0])
        values = torch.cat(
            [evaluate_field(field, part, latent).values for part in flat.split(per_call, dim=1)],
            dim=1,
        )
        outside = sign * (values.to(like.dtype).reshape(depths[rays].shape) - level)
        best = outside.argmin(dim=-1, keepdim=True)
        best_depth = zero.index_put(rays, depths[rays].gather(-1, best)[..., 0])
        best_depth = torch.where(select, best_depth, zero)
    points = origins + best_depth[..., None] * directions
    at_best = evaluate_field(field, points[rays].reshape(flat.shape[0], -1, 3), latent).values
    at_best = at_best.to(like.dtype).reshape(-1)
    values = _keep(select, zero.index_put(rays, sign * (at_best - level)))
    return RayMinimum(values=values, depths=best_depth)


def soft_mask_loss(
    min_values: torch.Tensor,
    masks: torch.Tensor,
    alpha: float,
    *,
    select: torch.Tensor | None = None,
    reduction: str = "batch",
) -> torch.Tensor:
    """
    IDR's soft mask loss: the mask compared with a soft silhouette of the field.

    Per ray, with ``m`` the smallest outside value along it (:func:`min_outside_along_rays`:
    the signed distance for SDFs, minus the logit for occupancy) the predicted probability that
    the ray meets the object is ``sigmoid(-alpha * m)``, and the loss is
    ``BCE(sigmoid(-alpha * m), mask) / alpha``; the ``1 / alpha`` (as in IDR) keeps the
    gradient in ``m`` at most 1 while ``alpha`` grows during training (with a large ``alpha``
    the loss tends to ``max(0, m)`` inside the mask and ``max(0, -m)`` outside). IDR applies it
    to the rays outside the mask or without a hit (the rest are the colour loss's). Summed over
    the selected rays and divided by ``B`` (``"batch"``).

    Args:
        min_values: `(B, R)` the smallest outside value per ray.
        masks: `(B, R)` bool, the pixel lies inside the object mask.
        alpha: the sharpness (> 0), in 1 / the field's units (IDR: 50 doubling to 1600 on SDFs
            in a unit-sphere scene).
        select: optional `(B, R)` bool, the rays to use (default: all).
        reduction: ``"batch"`` (default), ``"sum"`` or ``"mean"`` (over selected rays).

    Returns:
        A scalar tensor.
    """
    _check_reduction(reduction)
    _check_batch_rays("min_values", min_values, 2)
    _check_mask("masks", masks, min_values.shape)
    if select is None:
        select = torch.ones_like(masks)
    _check_mask("select", select, min_values.shape)
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}.")
    logits = -alpha * _keep(select, min_values)
    per_ray = F.binary_cross_entropy_with_logits(logits, masks.to(logits.dtype), reduction="none")
    return _reduce(per_ray / alpha, select, reduction)


def soft_mask_alpha(
    step: int, *, start: float, factor: float = 2.0, every: int = 0, increases: int = 5
) -> float:
    """
    The sharpness of :func:`soft_mask_loss` at a training step: IDR's step schedule,
    ``start * factor ** min(step // every, increases)`` (``every = 0``: always ``start``).
    IDR: start 50, factor 2, five increases.
    """
    if step < 0 or every < 0 or increases < 0:
        raise ValueError(
            f"step, every and increases must be >= 0, got {step}, {every}, {increases}."
        )
    if not (math.isfinite(start) and start > 0 and math.isfinite(factor) and factor > 0):
        raise ValueError(f"start and factor must be positive, got {start} and {factor}.")
    raised = 0 if every == 0 else min(step // every, increases)
    return float(start * factor**raised)


# ---------------------------------------------------------------------------------------------
# Weights and the total


@dataclass
class LossWeights:
    """
    Weights of the DVR loss terms; the field names are the term names of :func:`total_loss`.

    Defaults follow the reference's default configuration (single-view ShapeNet) with depth
    switched on: terms the caller does not compute (e.g. ``depth`` without depth maps) simply do
    not enter :func:`total_loss`, so their weights do not matter then. See :meth:`reference` for
    the per-experiment settings of the reference configurations.

    Members:
        rgb: :func:`rgb_loss`.
        depth: :func:`depth_loss` (z-depth L1).
        world_point: :func:`world_point_loss` (the reference's alternative to ``depth``; it uses
            the same weight there).
        freespace: :func:`freespace_loss`.
        occupancy: :func:`occupancy_loss`.
        normal: :func:`normal_smoothness_loss`.
        image_gradient: :func:`image_gradient_loss` (0: off).
        eikonal: :func:`eikonal_penalty` / :func:`eikonal_loss`, for signed-distance fields
            (0: off; IDR uses 0.1).
        mask: :func:`soft_mask_loss` (0: off; IDR uses 100).
        volume: :func:`dvr_plugin.engine.volume_warmup.volume_loss`, the volume-rendering
            warm-up (0: off).
    """

    rgb: float = 1.0
    depth: float = 1.0
    world_point: float = 1.0
    freespace: float = 1.0
    occupancy: float = 1.0
    normal: float = 0.05
    image_gradient: float = 0.0
    eikonal: float = 0.0
    mask: float = 0.0
    volume: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Loss weight {field.name} must be a number, got {value!r}.")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Loss weight {field.name} must be finite and >= 0, got {value}.")
            setattr(self, field.name, float(value))

    @classmethod
    def names(cls) -> tuple:
        """The term names, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> LossWeights:
        unknown = set(data) - set(cls.names())
        if unknown:
            raise ValueError(
                f"Unknown loss weight(s) {sorted(unknown)}; known are {list(cls.names())}."
            )
        return cls(**data)

    @classmethod
    def reference(cls, setting: str) -> LossWeights:
        """
        The weights of a reference DVR configuration.

        ``setting`` is one of :data:`REFERENCE_SETTINGS`:

        - ``"shapenet_rgb"``: single-view reconstruction supervised by RGB (+ masks).
        - ``"shapenet_depth"``: supervised by depth (+ masks), no colour term.
        - ``"shapenet_combined"``: RGB and depth, depth weighted 10.
        - ``"dtu_rgb"``: multi-view DTU from RGB and masks; image-gradient loss on 2x2 patches.
        - ``"dtu_depth"``: DTU with dense (MVS) depth, applied as a world-point loss.

        Terms a setting does not use get weight 0. The normal weight is 0.05 everywhere: that is
        the value the reference runs with (its DTU files write ``lambda_normals: 0.1`` under a
        key the reference code never reads). Pass ``normal=0.1`` explicitly for the stated value.
        """
        if setting not in REFERENCE_SETTINGS:
            raise ValueError(
                f"setting must be one of {sorted(REFERENCE_SETTINGS)}, got {setting!r}."
            )
        return cls(**REFERENCE_SETTINGS[setting])


_OFF = dict(rgb=0.0, depth=0.0, world_point=0.0, image_gradient=0.0)
REFERENCE_SETTINGS: dict[str, dict[str, float]] = {
    "shapenet_rgb": {**_OFF, "rgb": 1.0, "freespace": 1.0, "occupancy": 1.0, "normal": 0.05},
    "shapenet_depth": {**_OFF, "depth": 1.0, "freespace": 1.0, "occupancy": 1.0, "normal": 0.05},
    "shapenet_combined": {
        **_OFF,
        "rgb": 1.0,
        "depth": 10.0,
        "freespace": 1.0,
        "occupancy": 1.0,
        "normal": 0.05,
    },
    "dtu_rgb": {
        **_OFF,
        "rgb": 1.0,
        "image_gradient": 1.0,
        "freespace": 1.0,
        "occupancy": 1.0,
        "normal": 0.05,
    },
    "dtu_depth": {
        **_OFF,
        "rgb": 1.0,
        "world_point": 1.0,
        "image_gradient": 1.0,
        "freespace": 1.0,
        "occupancy": 1.0,
        "normal": 0.05,
    },
}


def total_loss(
    terms: Mapping[str, torch.Tensor | None],
    weights: LossWeights | Mapping[str, float] | None = None,
) -> torch.Tensor:
    """
    ``sum_k weights[k] * terms[k]``.

    Terms whose value is ``None`` or whose weight is 0 are skipped (so a disabled term cannot
    inject NaN). An empty sum is a zero scalar (on the device of the first term, if any).

    Args:
        terms: ``{name: scalar tensor}`` with names from :meth:`LossWeights.names`.
        weights: a :class:`LossWeights`, a dict of weights (missing names take the
            :class:`LossWeights` defaults), or ``None`` for the defaults.

    Returns:
        A scalar tensor.
    """
    if weights is None:
        weights = LossWeights()
    elif not isinstance(weights, LossWeights):
        weights = LossWeights.from_dict(weights)
    known = LossWeights.names()
    unknown = [name for name in terms if name not in known]
    if unknown:
        raise ValueError(f"Unknown loss term(s) {unknown}; known are {list(known)}.")
    total: torch.Tensor | None = None
    like: torch.Tensor | None = None
    for name, value in terms.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"Loss term {name!r} must be a scalar tensor, got {shape}.")
        like = value if like is None else like
        weight = getattr(weights, name)
        if weight == 0.0:
            continue
        contribution = weight * value.reshape(())
        total = contribution if total is None else total + contribution
    if total is None:
        if like is None:
            return torch.zeros(())
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return total
