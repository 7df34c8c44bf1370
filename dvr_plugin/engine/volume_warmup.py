"""
A volume-rendering warm-up for surface fits (UNISURF / NeuS style), on the same field.

DVR's surface rendering sends the photometric gradient only to the first surface point of each
ray. A surface that starts in the wrong place (a sphere that fills a courtyard, a visual hull
that closes a concavity) gets no signal to open up from the points behind it, and the soft mask
cannot help where the mask says "object". Volume rendering spreads each ray's colour over all
its samples, so the points behind a wrong surface are seen too and the field can carve it away.
This module renders the field's own values as a volume along a few rays per image; the trainer
adds the result as the ``volume`` loss term, fading it out over ``loss.volume_until`` steps
while DVR's surface rendering takes over (:mod:`dvr_plugin.training.trainer`).

Per ray, at ``N + 1`` stratified depths ``t_0 < ... < t_N`` in the box, with field values
``f_i``:

- signed distances (NeuS's discrete opacity, Wang et al. 2021):
  ``alpha_i = clamp((Phi(f_i) - Phi(f_{i+1})) / Phi(f_i), 0, 1)``, ``Phi(x) = sigmoid(s x)``
  with the sharpness ``s`` (1 / scene units): a section of the ray that crosses from outside
  (``f > 0``) to inside is opaque, one that stays outside is clear;
- occupancy logits (UNISURF, Oechsle et al. 2021): ``alpha_i = sigmoid(f_i)``, the occupancy
  probability itself (no sharpness);

then ``w_i = alpha_i prod_{j < i} (1 - alpha_j)``, colour ``sum_i w_i c_i`` and opacity
``sum_i w_i``, ``c_i`` the field's colour at ``t_i`` (a view-dependent field shades it along
the ray). The loss per ray is ``|colour - gt|_1`` (summed over channels, rays inside the mask)
``+ |opacity - mask|`` (all rays), summed over the rays and divided by the batch size ``B``,
like :func:`dvr_plugin.engine.losses.rgb_loss`. The real background is never modelled: a ray
outside the mask only asks for no opacity.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..fields.appearance import view_dependent_field_of
from ..fields.field import check_field_type, evaluate_field, field_type_of
from .losses import stratified_ray_offsets


class VolumeRender(NamedTuple):
    """
    What :func:`volume_render_rays` returns.

    Members:
        rgb: `(B, R, 3)` composited colours (0 where a ray is not selected).
        opacity: `(B, R)` the summed weights ``sum_i w_i`` in [0, 1].
        weights: `(B, R, N + 1)` the weights ``w_i`` of the samples (the last is 0 for SDFs).
        depths: `(B, R, N + 1)` the depths ``t_i`` of the samples.
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    weights: torch.Tensor
    depths: torch.Tensor


def volume_alpha(values: torch.Tensor, *, field_type: str, sharpness: float) -> torch.Tensor:
    """
    The opacity of each sample (module docstring).

    Args:
        values: `(..., N + 1)` field values at the ordered samples of each ray.
        field_type: ``"sdf"`` (NeuS's section opacity) or ``"occupancy"`` (UNISURF's sample
            opacity, ``sharpness`` unused).
        sharpness: ``s`` of ``Phi(x) = sigmoid(s x)`` for SDFs, > 0.

    Returns:
        `(..., N + 1)` opacities in [0, 1]; for SDFs the last sample closes no section and
        gets 0.
    """
    check_field_type(field_type)
    if field_type == "occupancy":
        return torch.sigmoid(values)
    if not (math.isfinite(sharpness) and sharpness > 0):
        raise ValueError(f"sharpness must be a positive finite number, got {sharpness}.")
    cdf = torch.sigmoid(sharpness * values)
    sections = ((cdf[..., :-1] - cdf[..., 1:]) / cdf[..., :-1].clamp(min=1e-6)).clamp(0.0, 1.0)
    return torch.cat([sections, torch.zeros_like(values[..., :1])], dim=-1)


def composite_weights(alpha: torch.Tensor) -> torch.Tensor:
    """
    `(..., S)` weights ``w_i = alpha_i prod_{j < i} (1 - alpha_j)`` of `(..., S)` ordered
    opacities.
    """
    clear = torch.cumprod(1.0 - alpha, dim=-1)
    transmittance = torch.cat([torch.ones_like(alpha[..., :1]), clear[..., :-1]], dim=-1)
    return alpha * transmittance


def volume_render_rays(
    field,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    select: torch.Tensor,
    *,
    n_samples: int,
    sharpness: float,
    offsets: torch.Tensor | float = 0.5,
) -> VolumeRender:
    """
    Render the selected rays through ``field`` as a volume (module docstring), with gradients
    to the field's parameters (the ray geometry is taken as constant).

    Args:
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol, or a
            :class:`~dvr_plugin.fields.appearance.ViewDependentField` (shaded along the rays).
        origins, directions: `(B, R, 3)` rays (point = origin + depth * direction).
        near, far: `(B, R)` the depth range (e.g. from
            :func:`dvr_plugin.renderer.rays.intersect_box`); read only where selected.
        select: `(B, R)` bool, the rays to render (each with finite ``far > near``).
        n_samples: N, the sections per ray (N + 1 samples), >= 1.
        sharpness: the SDF sharpness ``s`` (unused for occupancy fields).
        offsets: `(B, R)` the stratified offset in [0, 1) of each ray's samples, or one
            number for all (0.5: the middle of each stratum).

    Returns:
        :class:`VolumeRender`.
    """
    offsets = stratified_ray_offsets(
        origins,
        directions,
        near,
        far,
        select,
        offsets,
        n_samples=n_samples,
        caller="volume_render_rays",
    )
    batch_rays = origins.shape[:2]
    field_type = field_type_of(field)
    dtype, device = origins.dtype, origins.device
    count = n_samples + 1
    rgb = torch.zeros(*batch_rays, 3, dtype=dtype, device=device)
    opacity = torch.zeros(batch_rays, dtype=dtype, device=device)
    weights = torch.zeros(*batch_rays, count, dtype=dtype, device=device)
    rows, cols = select.nonzero(as_tuple=True)
    with torch.no_grad():
        lower, length = near.detach()[rows, cols], (far - near).detach()[rows, cols]
        u = offsets[rows, cols][:, None]
        steps = torch.arange(count, dtype=dtype, device=device)
        depths_sel = lower[:, None] + (steps + u) * (length / n_samples)[:, None]  # (M, N + 1)
    depths = torch.zeros(*batch_rays, count, dtype=dtype, device=device)
    depths = depths.index_put((rows, cols), depths_sel)
    if rows.numel() == 0:
        return VolumeRender(rgb, opacity, weights, depths)
    o, d = origins.detach()[rows, cols], directions.detach()[rows, cols]
    points = (o[:, None] + depths_sel[..., None] * d[:, None]).reshape(1, -1, 3)
    shaded = view_dependent_field_of(field)
    if shaded is not None:
        view = d[:, None].expand(-1, count, -1).reshape(1, -1, 3)
        out = shaded.shade(points, view)
        values, colours = out.values, out.rgb
    else:
        out = evaluate_field(field, points)
        values, colours = out.values, out.rgb
        if colours is None:
            raise ValueError("volume_render_rays needs a field with colours (rgb).")
    values = values.reshape(-1, count).to(dtype)
    colours = colours.reshape(-1, count, 3).to(dtype)
    alpha = volume_alpha(values, field_type=field_type, sharpness=sharpness)
    w = composite_weights(alpha)
    rgb = rgb.index_put((rows, cols), (w[..., None] * colours).sum(dim=1))
    opacity = opacity.index_put((rows, cols), w.sum(dim=-1))
    weights = weights.index_put((rows, cols), w)
    return VolumeRender(rgb, opacity, weights, depths)


def volume_loss(
    render: VolumeRender,
    gt_rgb: torch.Tensor,
    gt_mask: torch.Tensor,
    select: torch.Tensor,
) -> torch.Tensor:
    """
    ``sum_{selected rays} (mask * |rgb - gt|_1 + |opacity - mask|) / B`` (module docstring).

    Args:
        render: the :class:`VolumeRender` of `(B, R)` rays.
        gt_rgb: `(B, R, 3)` true colours.
        gt_mask: `(B, R)` bool, the pixel lies inside the object mask.
        select: `(B, R)` bool, the rays that were rendered.

    Returns:
        A scalar tensor.
    """
    if gt_rgb.shape != render.rgb.shape or gt_mask.shape != render.opacity.shape:
        raise ValueError(
            f"gt_rgb {tuple(gt_rgb.shape)} and gt_mask {tuple(gt_mask.shape)} must match the "
            f"render's {tuple(render.rgb.shape)} and {tuple(render.opacity.shape)}."
        )
    mask = gt_mask.to(render.rgb.dtype)
    colour = (render.rgb - gt_rgb.to(render.rgb.dtype)).abs().sum(dim=-1) * mask
    per_ray = colour + (render.opacity - mask).abs()
    zero = torch.zeros((), dtype=per_ray.dtype, device=per_ray.device)
    return torch.where(select, per_ray, zero).sum() / per_ray.shape[0]


def volume_schedule(
    step: int,
    *,
    until: int,
    sharpness_start: float,
    sharpness_end: float,
    floor: float = 0.0,
) -> tuple[float, float]:
    """
    The warm-up's ``(weight factor, sharpness)`` at a training step: with ``p = min(step /
    until, 1)``, the weight factor ``1 - (1 - floor) * p`` (the term fades out linearly to
    ``floor`` at ``until`` and stays there; ``floor = 0`` turns it off from ``until`` on) and
    the sharpness ``start * (end / start) ** p`` (geometric, then kept at ``end``). ``until =
    0``: no fading, the start sharpness throughout.
    """
    if step < 0 or until < 0:
        raise ValueError(f"step and until must be >= 0, got {step} and {until}.")
    if not (math.isfinite(floor) and 0.0 <= floor <= 1.0):
        raise ValueError(f"floor must lie in [0, 1], got {floor}.")
    for name, value in (("sharpness_start", sharpness_start), ("sharpness_end", sharpness_end)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}.")
    if until == 0:
        return 1.0, float(sharpness_start)
    progress = min(step / until, 1.0)
    fade = 1.0 - (1.0 - floor) * progress
    return fade, float(sharpness_start * (sharpness_end / sharpness_start) ** progress)
