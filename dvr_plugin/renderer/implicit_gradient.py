"""
The implicit depth gradient of DVR, attached with a single field evaluation at the surface.

At a surface point ``p = o + d w`` the inside function (positive inside, see
:mod:`dvr_plugin.surface.query`) satisfies ``s(p; theta) = 0``. Differentiating,

    dd/dtheta = -(ds/dtheta) / (grad_p s . w),
    dd/do     = -(grad_p s) / (grad_p s . w),
    dd/dw     = -d (grad_p s) / (grad_p s . w),

and the same for a latent code (it is one more input of ``s``). All of these come out of one
expression with an autograd graph:

    d = d0 - (s(o + d0 w) - stopgrad(s(o + d0 w))) / stopgrad(grad_p s . w)

whose value is the root finder's ``d0`` and whose first derivatives are exactly the ones above.
Only this one evaluation (at `(M,)` surface points) is kept for backward: nothing from the march,
so memory does not depend on the number of marching steps.

With ``return_features=True`` (what :class:`dvr_plugin.renderer.DVRRenderer` asks for while
training) the same single evaluation also gives the colour at the surface with its full gradient.
The field is evaluated at ``x0 = o + d0 w`` with a forward-mode derivative along ``w`` (the
field's ``forward_with_tangent`` where it has one, else PyTorch's forward-mode AD), which yields
the directional derivatives ``grad_p s . w`` (the denominator above) and ``J_rgb w`` alongside the
values, and

    rgb = rgb(x0) + stopgrad(J_rgb w) (d - d0)

has the value ``rgb(x0)`` and the first derivatives of ``rgb(o + d w)``: ``J_rgb (do + d0 dw) +
J_rgb w dd`` plus the direct dependence on the parameters. So one forward pass (and one backward)
replaces the evaluation for the implicit gradient, its spatial-gradient backward pass and a second
evaluation for the colour.

A view-dependent colour head (:mod:`dvr_plugin.fields.appearance`) needs the normal at the surface,
and the normal moves with the surface point: there the colour is evaluated in a second pass at
``p = o + d w`` with this ``d``, the normal taken with ``create_graph=True`` at ``p`` itself, so
its derivatives include the second derivatives of the field along ``dp`` (exact, at the price of
a double backward at the hit points; the single-evaluation path above serves the texture head).

The denominator ``grad_p s . w`` is positive at a free -> occupied crossing; when its magnitude
falls below ``eps`` (rays grazing the surface) it is replaced by ``eps`` with its own sign (``+eps``
when it is exactly zero), which bounds the gradient without flipping its direction.
"""

from __future__ import annotations

import warnings
import weakref
from typing import NamedTuple

import torch

from ..surface.query import FieldQuery, InsideQuery, inside_sign


class SurfaceGeometry(NamedTuple):
    """
    Members:
        depth: `(M,)` surface depth carrying the implicit gradient (where grad is enabled).
        normals: `(M, 3)` unit outward normals, or ``None`` when not requested.
        features: `(M, 3)` colours at the surface carrying their gradient through the depth
            (white where not hit), or ``None`` when not requested or not available.
    """

    depth: torch.Tensor
    normals: torch.Tensor | None
    features: torch.Tensor | None = None


def guard_denominator(denominator: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp ``|denominator|`` to at least ``eps`` keeping its sign (zero counts as positive)."""
    sign = torch.where(denominator < 0, -1.0, 1.0).to(denominator.dtype)
    return torch.where(denominator.abs() < eps, sign * eps, denominator)


def attach_implicit_gradient(
    query: InsideQuery,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depth: torch.Tensor,
    hit: torch.Tensor,
    *,
    compute_normals: bool = True,
    differentiable_normals: bool = False,
    eps: float = 1e-4,
    chunk_size: int | None = 2**16,
    return_features: bool = False,
    dense: bool = False,
) -> SurfaceGeometry:
    """
    Give the root finder's depths their implicit gradient (and compute normals).

    Args:
        query: the inside function used by the root finder.
        origins, directions: `(M, 3)` rays, possibly carrying gradients (e.g. from cameras).
        depth: `(M,)` depths found by the root finder (their own graph is ignored).
        hit: `(M,)` bool; only these rays receive a gradient (others keep ``depth`` unchanged).
        compute_normals: also return unit outward normals at ``origins + depth * directions``.
        differentiable_normals: keep the normals' graph (for a normal smoothness loss).
        eps: the smallest magnitude of the denominator ``grad_p s . w``.
        chunk_size: evaluation chunk when no gradient is needed (rendering); with gradients the
            points of all hit rays are evaluated in one call (their graph has to be kept
            anyway), and only those: the others get no gradient.
        return_features: with gradients, a :class:`~dvr_plugin.surface.query.FieldQuery`
            and no normals requested, also return the colours at the surface from the same
            evaluation (module docstring); otherwise ``features`` is ``None``.
        dense: with gradients, evaluate every ray, hit or not, and mask the results with
            ``hit``: the same values and gradients in shapes that do not depend on the hit
            count (no host synchronisation; what a recorded CUDA graph needs), at the cost of
            evaluating the rays that missed.

    Returns:
        SurfaceGeometry with `(M,)` depths, `(M, 3)` normals (zero where not ``hit``) and
        `(M, 3)` features or ``None``.
    """
    depth0 = depth.detach()
    needs_graph = torch.is_grad_enabled()
    if not needs_graph and not compute_normals:
        return SurfaceGeometry(depth0, None)
    n_rays = origins.shape[0]
    ray_ids = torch.arange(n_rays, device=origins.device)
    if not needs_graph:
        step = n_rays if chunk_size is None else max(1, chunk_size)
        normals = [
            _normals_only(query, ray_ids[s], origins[s], directions[s], depth0[s])
            for s in (slice(i, i + step) for i in range(0, n_rays, step))
        ]
        normals = torch.cat(normals) if normals else origins.new_zeros(0, 3)
        return SurfaceGeometry(depth0, torch.where(hit[:, None], normals, 0.0))

    # only the rays that hit get a gradient: evaluate (and keep a graph for) those alone, or
    # (dense) every ray, with the misses masked out below
    rows = ray_ids if dense else torch.nonzero(hit, as_tuple=True)[0]
    if return_features and not compute_normals and type(query) is FieldQuery:
        geometry = _with_features(query, rows, origins, directions, depth0, eps)
        if geometry is not None:
            return _masked(geometry, hit, depth0) if dense else geometry
    o, w, d0 = origins[rows], directions[rows], depth0[rows]
    offset = torch.zeros_like(o.detach()).requires_grad_(True)
    inside = query(ray_ids[rows], o + offset, w, d0[:, None])[:, 0]
    (grad_p,) = torch.autograd.grad(
        inside.sum(), offset, create_graph=differentiable_normals, retain_graph=True,
        allow_unused=True, materialize_grads=True,  # no hits: a query may skip the points
    )
    denominator = guard_denominator((grad_p.detach() * w.detach()).sum(-1), eps)
    implicit = d0 - (inside - inside.detach()) / denominator
    depth_out = depth0.index_put((rows,), implicit.to(depth0.dtype))
    normals = None
    if compute_normals:
        at_hits = _outward(grad_p if differentiable_normals else grad_p.detach())
        normals = origins.detach().new_zeros(n_rays, 3).index_put((rows,), at_hits)
    geometry = SurfaceGeometry(depth_out, normals)
    return _masked(geometry, hit, depth0) if dense else geometry


def _masked(geometry: SurfaceGeometry, hit: torch.Tensor, depth0: torch.Tensor) -> SurfaceGeometry:
    """A dense evaluation's results where ``hit`` `(M,)`, the sparse path's fill elsewhere."""
    depth = torch.where(hit, geometry.depth, depth0)
    normals = geometry.normals
    if normals is not None:
        normals = torch.where(hit[:, None], normals, 0.0)
    features = geometry.features
    if features is not None:
        features = torch.where(hit[:, None], features, 1.0)
    return SurfaceGeometry(depth, normals, features)


def _outward(grad_inside: torch.Tensor) -> torch.Tensor:
    return -grad_inside / grad_inside.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _normals_only(
    query: InsideQuery,
    ray_ids: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depth: torch.Tensor,
) -> torch.Tensor:
    with torch.enable_grad():
        points_origin = origins.detach().clone().requires_grad_(True)
        inside = query(ray_ids, points_origin, directions.detach(), depth[:, None])
        (grad_p,) = torch.autograd.grad(inside.sum(), points_origin)
    return _outward(grad_p)


# fields without a directional derivative (warned once; weak, so a new field is never
# mistaken for a collected one)
_NO_FORWARD_AD: weakref.WeakSet = weakref.WeakSet()


def _known_without_derivative(field) -> bool:
    try:
        return field in _NO_FORWARD_AD
    except TypeError:  # unhashable
        return False


def _with_features(
    query: FieldQuery,
    rows: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depth0: torch.Tensor,
    eps: float,
) -> SurfaceGeometry | None:
    """Depth and colour from one evaluation with forward-mode AD (module docstring)."""
    if _known_without_derivative(query.field):
        return None
    n_rays = origins.shape[0]
    o, w, d0 = origins[rows], directions[rows], depth0[rows]
    points = o + d0[:, None] * w
    try:
        values, rgb, values_tangent, rgb_tangent = query.evaluate_with_tangent(
            rows, points[:, None, :], w.detach()[:, None, :]
        )
    except (RuntimeError, NotImplementedError, ValueError) as error:
        try:
            _NO_FORWARD_AD.add(query.field)
        except TypeError:  # not weakly referenceable: it is tried again (warnings show once)
            pass
        warnings.warn(
            f"The field gives no directional derivative ({error}); evaluating it twice at "
            "the surface (implicit gradient, then colour) instead.",
            stacklevel=3,
        )
        return None
    sign = inside_sign(query.field_type)
    inside = sign * (values[:, 0] - query.level)
    denominator = guard_denominator(sign * values_tangent[:, 0].detach(), eps)
    implicit = d0 - (inside - inside.detach()) / denominator
    depth_out = depth0.index_put((rows,), implicit.to(depth0.dtype))
    features = None
    if rgb is not None:
        moved = (implicit - d0).to(rgb.dtype)[:, None]  # zero, with the depth's gradient
        colour = rgb[:, 0] + rgb_tangent[:, 0].detach() * moved
        white = torch.ones(n_rays, 3, dtype=colour.dtype, device=colour.device)
        features = white.index_put((rows,), colour)
    return SurfaceGeometry(depth_out, None, features)
