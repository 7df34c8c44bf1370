"""
DVR's root finder: march along each ray, bracket the first free -> occupied crossing, refine it.

Everything here runs under ``torch.no_grad()``: nothing from the march or the secant steps is
kept for backward (the depth gradient is attached afterwards by
:mod:`dvr_plugin.implicit_gradient` from one evaluation at the surface).

Given an inside function ``s`` along a ray (positive inside, see :mod:`dvr_plugin.surface_query`)
sampled at ``n_steps`` equally spaced depths between the ray's entry into and exit from the
bounding box:

1. the first sample already inside (``s > 0``) means the ray *started inside*: it is flagged
   and gets no surface;
2. otherwise the first interval ``[d_i, d_{i+1}]`` with ``s_i <= 0 < s_{i+1}`` is the bracket;
   a ray with no such interval has no surface (a crossing narrower than the step spacing, e.g. a
   grazing ray, can be missed: more steps find more of them);
3. the bracket is refined by ``n_secant_steps`` steps of the secant method in its bracketing form
   (regula falsi with the Illinois modification, which halves the value kept at an end retained
   twice in a row so the bracket shrinks from both sides); the result is the secant estimate of
   the final bracket.

The march visits rays in chunks of at most ``chunk_size`` points (``chunk_size // n_steps`` rays)
and keeps only each ray's bracket; all bracketed rays are then refined together, ``chunk_size``
rays at a time. Peak memory is set by ``chunk_size``, not by the number of rays or steps.
``chunk_size=None`` evaluates all points at once (the reference implementation's "dense"
behaviour, kept for benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch

InsideQuery = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


MARCH_PRECISIONS = ("float32", "tf32", "bfloat16")


@contextmanager
def _reduced_precision(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 matmuls or bfloat16 autocast on CUDA for the march; a no-op elsewhere."""
    if precision == "float32" or device.type != "cuda":
        yield
        return
    if precision == "bfloat16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class SurfaceSearch(NamedTuple):
    """
    Per-ray result of the root finder.

    Members:
        depth: `(M,)` depth of the surface along the ray (undefined where not ``hit``).
        hit: `(M,)` bool, a free -> occupied crossing was found.
        started_inside: `(M,)` bool, the first sample in the box was already inside.
    """

    depth: torch.Tensor
    hit: torch.Tensor
    started_inside: torch.Tensor


def _check_finite(values: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(
            f"The field returned non-finite values (NaN or inf) at {bad} of {values.numel()} "
            f"{what}."
        )


class _Brackets(NamedTuple):
    """Per-ray march result: flags and the bracketing interval (undefined where not ``hit``)."""

    hit: torch.Tensor
    started_inside: torch.Tensor
    d_out: torch.Tensor
    s_out: torch.Tensor
    d_in: torch.Tensor
    s_in: torch.Tensor


def _march_chunk(
    query: InsideQuery,
    ray_ids: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    n_steps: int,
    check_finite: bool,
) -> _Brackets:
    steps = torch.linspace(0.0, 1.0, n_steps, device=near.device, dtype=near.dtype)
    depths = near[:, None] + (far - near)[:, None] * steps  # (r, n)
    inside = query(ray_ids, origins, directions, depths)
    if inside.shape != depths.shape:
        raise ValueError(
            f"The surface query returned shape {tuple(inside.shape)}, "
            f"expected {tuple(depths.shape)}."
        )
    if check_finite:
        _check_finite(inside, "marching points")
    occupied = inside > 0
    started_inside = occupied[:, 0]
    crossing = ~occupied[:, :-1] & occupied[:, 1:]  # (r, n - 1)
    hit = crossing.any(dim=1) & ~started_inside
    first = torch.argmax(crossing.to(torch.uint8), dim=1, keepdim=True)  # first True
    following = first + 1
    return _Brackets(
        hit=hit,
        started_inside=started_inside,
        d_out=depths.gather(1, first)[:, 0],
        s_out=inside.gather(1, first)[:, 0],
        d_in=depths.gather(1, following)[:, 0],
        s_in=inside.gather(1, following)[:, 0],
    )


def _refine(
    query: InsideQuery,
    ray_ids: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    d_out: torch.Tensor,
    s_out: torch.Tensor,
    d_in: torch.Tensor,
    s_in: torch.Tensor,
    n_secant_steps: int,
    check_finite: bool,
) -> torch.Tensor:
    """Illinois regula falsi on brackets with ``s_out <= 0 < s_in``; returns `(h,)` depths."""
    w_out, w_in = s_out.clone(), s_in.clone()  # the (possibly halved) weights
    last_side = torch.zeros_like(d_out, dtype=torch.int8)
    for _ in range(n_secant_steps):
        spread = w_in - w_out
        valid = spread > 0  # False only for a bracket broken by a reduced-precision march
        d_mid = torch.where(
            valid,
            d_out - w_out * (d_in - d_out) / torch.where(valid, spread, 1.0),
            0.5 * (d_out + d_in),
        )
        s_mid = query(ray_ids, origins, directions, d_mid[:, None])[:, 0]
        if check_finite:
            _check_finite(s_mid, "secant points")
        into = s_mid > 0
        side = torch.where(into, 1, -1).to(torch.int8)
        repeated = side == last_side
        d_in = torch.where(into, d_mid, d_in)
        s_in = torch.where(into, s_mid, s_in)
        w_in = torch.where(into, s_mid, torch.where(repeated, 0.5 * w_in, w_in))
        d_out = torch.where(into, d_out, d_mid)
        s_out = torch.where(into, s_out, s_mid)
        w_out = torch.where(into, torch.where(repeated, 0.5 * w_out, w_out), s_mid)
        last_side = side
    denominator = s_in - s_out
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    estimate = d_out - s_out * (d_in - d_out) / safe
    # inside the bracket (always true for a valid one; a broken one gets its nearest end)
    estimate = torch.minimum(torch.maximum(estimate, d_out), d_in)
    return torch.where(denominator > 0, estimate, 0.5 * (d_in + d_out))


@torch.no_grad()
def find_surface(
    query: InsideQuery,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    *,
    n_steps: int,
    n_secant_steps: int = 8,
    chunk_size: int | None = 2**16,
    check_finite: bool = True,
    ray_ids: torch.Tensor | None = None,
    march_precision: str = "float32",
) -> SurfaceSearch:
    """
    Find the first free -> occupied crossing along each of ``M`` rays (see the module docstring).

    Args:
        query: the inside function ``query(ray_ids, origins, directions, lengths) -> (r, n)``.
        origins, directions: `(M, 3)` rays.
        near, far: `(M,)` the part of each ray to search (``near < far``).
        n_steps: marching samples per ray (>= 2).
        n_secant_steps: refinement steps (0 = the secant estimate of the marching bracket).
        chunk_size: the most points evaluated in one call of ``query`` during the march, or
            ``None`` for all at once.
        check_finite: raise ``ValueError`` when the field returns NaN or inf.
        ray_ids: `(M,)` the ids the query knows these rays by (default ``arange(M)``).
        march_precision: ``"float32"``, ``"tf32"`` or ``"bfloat16"`` (CUDA) for the march
            only; the bracket ends are then re-evaluated and refined in full precision.

    Returns:
        SurfaceSearch with `(M,)` tensors.
    """
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}.")
    if n_secant_steps < 0:
        raise ValueError(f"n_secant_steps must be >= 0, got {n_secant_steps}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}.")
    if march_precision not in MARCH_PRECISIONS:
        raise ValueError(
            f"march_precision must be one of {MARCH_PRECISIONS}, got {march_precision!r}."
        )
    n_rays = origins.shape[0]
    if ray_ids is None:
        ray_ids = torch.arange(n_rays, device=origins.device)
    rays_per_chunk = n_rays if chunk_size is None else max(1, chunk_size // n_steps)
    with _reduced_precision(march_precision, origins.device):
        parts = [
            _march_chunk(
                query, ray_ids[sl], origins[sl], directions[sl], near[sl], far[sl],
                n_steps, check_finite,
            )
            for sl in (slice(i, i + rays_per_chunk) for i in range(0, n_rays, rays_per_chunk))
        ]
    if not parts:
        empty = origins.new_zeros(0)
        return SurfaceSearch(empty, empty.bool(), empty.bool())
    brackets = _Brackets(*(torch.cat(items) for items in zip(*parts, strict=True)))

    # refine all bracketed rays together (one point per ray per secant step)
    depth = far.clone()
    rows = torch.nonzero(brackets.hit, as_tuple=True)[0]
    refine_chunk = max(1, rows.numel() if chunk_size is None else chunk_size)
    for start in range(0, rows.numel(), refine_chunk):
        r = rows[start : start + refine_chunk]
        s_out, s_in = brackets.s_out[r].float(), brackets.s_in[r].float()
        if march_precision != "float32":  # the ends again, in full precision
            ends = torch.stack([brackets.d_out[r], brackets.d_in[r]], dim=1)
            values = query(ray_ids[r], origins[r], directions[r], ends)
            s_out, s_in = values[:, 0], values[:, 1]
        depth[r] = _refine(
            query, ray_ids[r], origins[r], directions[r],
            brackets.d_out[r], s_out.to(origins.dtype), brackets.d_in[r], s_in.to(origins.dtype),
            n_secant_steps, check_finite,
        )
    return SurfaceSearch(depth=depth, hit=brackets.hit, started_inside=brackets.started_inside)
