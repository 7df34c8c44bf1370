"""
DVR's root finder: march along each ray, bracket the first free -> occupied crossing, refine it.

Everything here runs under ``torch.no_grad()``: nothing from the march or the secant steps is
kept for backward (the depth gradient is attached afterwards by
:mod:`dvr_plugin.renderer.implicit_gradient` from one evaluation at the surface).

Given an inside function ``s`` along a ray (positive inside, see :mod:`dvr_plugin.surface.query`)
sampled at ``n_steps`` equally spaced depths ``d_i`` between the ray's entry into and exit from
the bounding box:

1. the first sample already inside (``s_0 > 0``) means the ray *started inside*: it is flagged
   and gets no surface;
2. otherwise the first sample inside, ``s_i > 0``, closes the bracket ``[d_{i-1}, d_i]`` (its
   predecessor is outside, or it would have been first); a ray with no sample inside has no
   surface (a crossing narrower than the step spacing, e.g. a grazing ray, can be missed: more
   steps find more of them);
3. the bracket is refined by ``n_secant_steps`` steps of the secant method in its bracketing form
   (regula falsi with the Illinois modification, which halves the value kept at an end retained
   twice in a row so the bracket shrinks from both sides); the result is the secant estimate of
   the final bracket.

How the march is carried out (none of this changes which bracket is found, except where noted):

- **Bounded memory.** Rays are visited in chunks of at most ``MARCH_SAMPLE_BUDGET`` samples
  (``MARCH_SAMPLE_BUDGET // n_steps`` rays) and every call of the query holds at most
  ``chunk_size`` points; only a few numbers per ray are kept. Peak memory is set by
  ``chunk_size``, not by the number of rays or steps. ``chunk_size=None`` evaluates all points
  at once (the reference implementation's "dense" behaviour, kept for benchmarks).
- **Early exit** (``early_exit=True``, exact). Samples are visited in blocks of ``block_size``
  steps, all rays of a chunk together; a ray leaves the march as soon as one of its samples is
  inside, so the samples behind the surface are never evaluated. Blocks grow when few rays
  remain, so that a round holds about ``MARCH_ROUND_POINTS`` points (fewer rounds, hence fewer
  kernel launches, for small batches such as training steps).
- **Empty-space skipping** (``occupancy_grid=...``, exact where the grid is right). Samples in
  cells that the grid marks empty are not evaluated and count as outside; the remaining samples
  are visited in blocks of ``block_size`` occupied samples per ray, with early exit. A crossing
  is lost only where the grid wrongly marks as empty a cell that holds the first inside sample
  (see :class:`dvr_plugin.accel.occupancy_grid.OccupancyGrid` for how it is kept conservative).
- **Reduced precision** (``march_precision``, CUDA only). The march's matrix products run in
  TF32 or bfloat16; the two bracket ends are then re-evaluated and refined in full precision,
  so only the choice of the bracket can change (a crossing thinner than the reduced-precision
  error of the field); a bracket that full precision does not confirm is finished like the
  reduced-precision secant steps below, within one step of it. ``refine_precision`` runs the
  secant steps in reduced precision too; their estimate (off by about the field's
  reduced-precision error over its slope) is then finished in full precision: one evaluation
  there, a Newton step with the bracket's slope, a second evaluation, and the secant through
  the two full-precision points.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch

from .precision import REFINE_PRECISIONS, check_precision, reduced_precision, resolve_precision
from .query import InsideQuery
from .secant import (
    bracket_slope,
    check_finite_values,
    evaluate_query,
    polish_root,
    refine_brackets,
)

# The most samples whose bookkeeping (a few bytes each) is held at once during the march.
MARCH_SAMPLE_BUDGET = 2**22
# Early-exit blocks grow when few rays remain, so that a round holds about this many points
# (fewer rounds, hence fewer kernel launches, for small batches such as training steps).
MARCH_ROUND_POINTS = 2**16


class OccupancyTest(Protocol):
    """
    What the march asks of an occupancy grid
    (:class:`dvr_plugin.accel.occupancy_grid.OccupancyGrid`).

    Members:
        all_occupied: whether no cell is marked empty (then nothing can be skipped).
        occupied_at: `(..., 3)` world points -> `(...)` bool, the point's cell may hold surface.
    """

    @property
    def all_occupied(self) -> Any: ...

    def occupied_at(self, points: torch.Tensor) -> torch.Tensor: ...


class GridMarch(Protocol):
    """
    A replacement of the eager grid march (:class:`dvr_plugin.accel.march_graphs.MarchGraphs`).

    ``supports(query, device)`` says whether ``march`` can run this query; ``march(query, grid,
    *, ray_ids, origins, directions, near, spacing, n_steps, block, precision, check_finite)``
    takes `(M,)` ids, `(M, 3)` rays and `(M,)` near / spacing and returns the `(M,)` first inside
    index (``n_steps`` where none), its value and the value before it (NaN where not
    evaluated), or ``None`` to have the eager march run instead.
    """

    def supports(self, query: InsideQuery, device: torch.device) -> bool: ...

    def march(
        self, query: InsideQuery, grid: OccupancyTest, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None: ...


class BracketRefinement(Protocol):
    """
    A replacement of the eager secant refinement
    (:class:`dvr_plugin.accel.refine_graphs.RefinementGraphs`).

    ``supports(query, device, precision)`` says whether ``refine`` can run this query;
    ``refine(query, *, ray_ids, origins, directions, ends_d, ends_s, low, high,
    n_secant_steps, precision)`` takes `(h,)` ids, `(h, 3)` rays, `(h, 2)` bracket depths and
    values (outside end first; an outside value may be NaN: it evaluates it) and `(h,)` limits,
    and returns the `(h,)` depths :func:`dvr_plugin.surface.secant.refine_brackets` would.
    """

    def supports(self, query: InsideQuery, device: torch.device, precision: str) -> bool: ...

    def refine(self, query: InsideQuery, **kwargs: Any) -> torch.Tensor: ...


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


class _FirstInside(NamedTuple):
    """
    Per-ray march result.

    Members:
        index: `(M,)` long, the first sample inside (``n_steps`` where there is none).
        value: `(M,)` the inside value there (march precision).
        previous: `(M,)` the inside value at ``index - 1`` where it was evaluated, else NaN.
    """

    index: torch.Tensor
    value: torch.Tensor
    previous: torch.Tensor


class _MarchRays(NamedTuple):
    """
    The rays of one march.

    Members:
        ray_ids: `(M,)` indices into the flat ray list (passed on to the query).
        origins, directions: `(M, 3)`.
        near: `(M,)` depth of the first sample.
        spacing: `(M,)` depth between two samples.
    """

    ray_ids: torch.Tensor
    origins: torch.Tensor
    directions: torch.Tensor
    near: torch.Tensor
    spacing: torch.Tensor

    def rows(self, index: slice | torch.Tensor) -> _MarchRays:
        """The rays ``index`` (a slice or `(m,)` indices) of every member."""
        return _MarchRays(*(member[index] for member in self))


class _MarchSteps(NamedTuple):
    """
    How one march samples and evaluates its rays.

    Members:
        n_steps: samples per ray.
        block: samples (with a grid: occupied samples) per ray per round.
        chunk_size: the most points per query call, or ``None`` for all at once.
        check_finite: raise on non-finite query values.
    """

    n_steps: int
    block: int
    chunk_size: int | None
    check_finite: bool


def _round_block(block: int, n_active: int) -> int:
    """A round's block: at least ``block``, and enough to give ~MARCH_ROUND_POINTS points."""
    return max(block, MARCH_ROUND_POINTS // max(n_active, 1))


def _march_chunk_dense(query: InsideQuery, rays: _MarchRays, steps: _MarchSteps) -> _FirstInside:
    """Every sample of every ray, a block of steps at a time, with early exit between blocks."""
    ray_ids, origins, directions, near, spacing = rays
    n_steps, block, chunk_size, check_finite = steps
    n_rays = near.shape[0]
    index = torch.full((n_rays,), n_steps, dtype=torch.long, device=near.device)
    value = near.new_zeros(n_rays)
    previous = torch.full_like(value, math.nan)
    last = torch.full_like(value, math.nan)  # each active ray's value at the block's start - 1
    active = torch.arange(n_rays, device=near.device)
    start = 0
    while start < n_steps:
        stop = min(start + _round_block(block, active.shape[0]), n_steps)
        steps = torch.arange(start, stop, device=near.device, dtype=near.dtype)
        depths = near[active, None] + spacing[active, None] * steps  # (a, k)
        k = stop - start
        rows = active.shape[0] if chunk_size is None else max(1, chunk_size // k)
        parts = []
        for i in range(0, active.shape[0], rows):
            sub = active[i : i + rows]
            parts.append(
                evaluate_query(
                    query, ray_ids[sub], origins[sub], directions[sub], depths[i : i + rows],
                    check_finite, "marching points",
                )
            )
        values = torch.cat(parts) if len(parts) > 1 else parts[0]
        inside = values > 0
        found = inside.any(dim=1)
        first = torch.argmax(inside.to(torch.uint8), dim=1, keepdim=True)  # first True
        before = torch.where(
            first[:, 0] > 0, values.gather(1, (first - 1).clamp(min=0))[:, 0], last[active]
        )
        index[active] = torch.where(found, start + first[:, 0], index[active])
        value[active] = torch.where(found, values.gather(1, first)[:, 0], value[active])
        previous[active] = torch.where(found, before, previous[active])
        start = stop
        if stop == n_steps:
            break
        last[active] = values[:, -1]
        active = active[~found]
        if active.numel() == 0:
            break
    return _FirstInside(index, value, previous)


def _march_chunk_grid(
    query: InsideQuery, rays: _MarchRays, steps: _MarchSteps, grid: OccupancyTest
) -> _FirstInside:
    """
    Only the samples in occupied cells, a block of them per ray at a time, with early exit.
    The value before the first inside sample is kept where the same round evaluated it (NaN
    otherwise: that end is evaluated with the refinement).
    """
    ray_ids, origins, directions, near, spacing = rays
    n_steps, block, chunk_size, check_finite = steps
    n_rays = near.shape[0]
    device = near.device
    index = torch.full((n_rays,), n_steps, dtype=torch.long, device=device)
    value = near.new_zeros(n_rays)
    previous = torch.full_like(value, math.nan)
    # rank[r, i]: how many occupied samples ray r has before sample i; -1 where i is skipped
    occupied = torch.empty(n_rays, n_steps, dtype=torch.bool, device=device)
    per_block = max(1, MARCH_SAMPLE_BUDGET // (8 * max(n_rays, 1)))
    for start in range(0, n_steps, per_block):
        stop = min(start + per_block, n_steps)
        steps = torch.arange(start, stop, device=device, dtype=near.dtype)
        depths = near[:, None] + spacing[:, None] * steps
        points = origins[:, None, :] + depths[..., None] * directions[:, None, :]
        occupied[:, start:stop] = grid.occupied_at(points)
        del depths, points
    counts = occupied.sum(dim=1)
    rank = torch.cumsum(occupied, dim=1, dtype=torch.int32)
    rank.sub_(1).masked_fill_(~occupied, -1)
    del occupied
    rank = rank.to(torch.int16 if n_steps < 2**15 else torch.int32)
    active = torch.nonzero(counts > 0, as_tuple=True)[0]
    low = 0
    while active.numel() > 0:
        high = min(low + _round_block(block, active.shape[0]), n_steps)  # fits in `rank`
        ranks = rank[active]
        local, step = torch.nonzero((ranks >= low) & (ranks < high), as_tuple=True)
        del ranks  # the pairs come sorted by (ray, step)
        rays = active[local]
        depths = near[rays] + spacing[rays] * step.to(near.dtype)
        n_points = depths.shape[0]
        size = n_points if chunk_size is None else chunk_size
        parts = [
            evaluate_query(
                query, ray_ids[rays[i : i + size]], origins[rays[i : i + size]],
                directions[rays[i : i + size]], depths[i : i + size, None], check_finite,
                "marching points",
            )[:, 0]
            for i in range(0, n_points, size)
        ]
        values = torch.cat(parts) if len(parts) > 1 else parts[0]
        inside = values > 0
        position = torch.arange(n_points, device=device)
        first = torch.full((active.shape[0],), n_points, dtype=torch.long, device=device)
        first.scatter_reduce_(0, local[inside], position[inside], reduce="amin")
        found = first < n_points
        at = first[found]
        before = (at - 1).clamp(min=0)
        rays_found = active[found]
        index[rays_found] = step[at]
        value[rays_found] = values[at]
        same_round = (at > 0) & (local[before] == local[at]) & (step[before] == step[at] - 1)
        previous[rays_found] = torch.where(same_round, values[before], math.nan)
        low = high
        active = active[~found & (counts[active] > low)]
    return _FirstInside(index, value, previous)


def default_block_size(n_steps: int, *, grid: bool) -> int:
    """
    The early-exit block: samples (or, with a grid, occupied samples) per ray per round.

    Without a grid, ``max(16, n_steps // 8)`` steps (at most 8 rounds); with one,
    ``max(8, n_steps // 16)`` occupied samples (a ray meets the surface a few cells after its
    first occupied one).
    """
    return max(8, n_steps // 16) if grid else max(16, n_steps // 8)


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
    refine_precision: str = "float32",
    early_exit: bool = True,
    block_size: int | None = None,
    occupancy_grid: OccupancyTest | None = None,
    refine_graphs: BracketRefinement | None = None,
    march_graphs: GridMarch | None = None,
) -> SurfaceSearch:
    """
    Find the first free -> occupied crossing along each of ``M`` rays (see the module docstring).

    Args:
        query: the inside function ``query(ray_ids, origins, directions, lengths) -> (r, n)``.
            With an occupancy grid, one call may hold several points of one ray (as rows of
            `(r, 1)` lengths); otherwise the rows of a call are distinct rays.
        origins, directions: `(M, 3)` rays.
        near, far: `(M,)` the part of each ray to search (``near < far``).
        n_steps: marching samples per ray (>= 2).
        n_secant_steps: refinement steps (0 = the secant estimate of the marching bracket).
        chunk_size: the most points evaluated in one call of ``query``, or ``None`` for all
            points of a march round at once (with ``early_exit=False``: all at once).
        check_finite: raise ``ValueError`` when the field returns NaN or inf.
        ray_ids: `(M,)` the ids the query knows these rays by (default ``arange(M)``).
        march_precision: ``"float32"``, ``"tf32"``, ``"bfloat16"`` (CUDA) or ``"auto"`` (TF32
            on CUDA, float32 elsewhere) for the march only; the bracket ends are then
            re-evaluated and refined in full precision.
        refine_precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"`` (CUDA) for the
            secant steps; the result is finished by two full-precision evaluations.
        early_exit: march in blocks and stop each ray at its first sample inside (exact).
        block_size: the least samples per ray per block (occupied samples with a grid);
            default :func:`default_block_size`.
        occupancy_grid: skip samples in cells this grid marks empty
            (:class:`dvr_plugin.accel.occupancy_grid.OccupancyGrid`); implies ``early_exit``.
        refine_graphs: replay the secant steps as CUDA graphs from this cache
            (:class:`dvr_plugin.accel.refine_graphs.RefinementGraphs`; CUDA, float32 / TF32
            refinement, a :class:`~dvr_plugin.surface.query.FieldQuery` on an ``nn.Module``
            field; otherwise the steps run eagerly).
        march_graphs: with an occupancy grid, march in fixed shapes replayed as CUDA graphs
            from this cache (:class:`dvr_plugin.accel.march_graphs.MarchGraphs`; same conditions;
            the same brackets as the eager march).

    Returns:
        SurfaceSearch with `(M,)` tensors.
    """
    if n_steps < 2 or int(n_steps) != n_steps:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}.")
    n_steps = int(n_steps)
    if n_secant_steps < 0:
        raise ValueError(f"n_secant_steps must be >= 0, got {n_secant_steps}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}.")
    check_precision(march_precision, name="march_precision")
    check_precision(refine_precision, name="refine_precision", choices=REFINE_PRECISIONS)
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be positive or None, got {block_size}.")
    if origins.dim() != 2 or origins.shape[-1] != 3 or directions.shape != origins.shape:
        raise ValueError(
            f"origins and directions must both have shape (M, 3), got {tuple(origins.shape)} "
            f"and {tuple(directions.shape)}."
        )
    if near.shape != origins.shape[:1] or far.shape != near.shape:
        raise ValueError(
            f"near and far must have shape ({origins.shape[0]},), got {tuple(near.shape)} "
            f"and {tuple(far.shape)}."
        )
    device = origins.device
    march = resolve_precision(march_precision, device)
    refine = resolve_precision(refine_precision, device)
    n_rays = origins.shape[0]
    if ray_ids is None:
        ray_ids = torch.arange(n_rays, device=device)
    if n_rays == 0:
        empty = origins.new_zeros(0)
        return SurfaceSearch(empty, empty.bool(), empty.bool())
    grid = occupancy_grid
    if grid is not None and bool(grid.all_occupied):
        grid = None  # nothing to skip
    if grid is not None or early_exit:
        block = block_size or default_block_size(n_steps, grid=grid is not None)
    else:
        block = n_steps
    if chunk_size is None:
        rays_per_chunk = n_rays
    else:
        rays_per_chunk = max(1, MARCH_SAMPLE_BUDGET // n_steps)
    spacing = (far - near) / (n_steps - 1)
    parts = []
    with reduced_precision(march, device):
        if grid is not None and march_graphs is not None and march_graphs.supports(query, device):
            recorded = march_graphs.march(
                query, grid, ray_ids=ray_ids, origins=origins, directions=directions, near=near,
                spacing=spacing, n_steps=n_steps, block=block, precision=march,
                check_finite=check_finite,
            )
            if recorded is not None:
                parts.append(_FirstInside(*recorded))
        eager_chunks = range(0, n_rays, rays_per_chunk) if not parts else range(0)
        rays = _MarchRays(ray_ids, origins, directions, near, spacing)
        steps = _MarchSteps(n_steps, block, chunk_size, check_finite)
        for i in eager_chunks:
            chunk = rays.rows(slice(i, i + rays_per_chunk))
            if grid is not None:
                parts.append(_march_chunk_grid(query, chunk, steps, grid))
            else:
                parts.append(_march_chunk_dense(query, chunk, steps))
    first = _FirstInside(*(torch.cat(items) for items in zip(*parts, strict=True)))
    started_inside = first.index == 0
    hit = (first.index > 0) & (first.index < n_steps)

    # refine all bracketed rays together (one point per ray per secant step)
    depth = far.clone()
    rows = torch.nonzero(hit, as_tuple=True)[0]
    if rows.numel() == 0:
        return SurfaceSearch(depth=depth, hit=hit, started_inside=started_inside)
    step_in = first.index[rows].to(near.dtype)
    d_in = near[rows] + spacing[rows] * step_in
    d_out = near[rows] + spacing[rows] * (step_in - 1)
    s_in, s_out = first.value[rows], first.previous[rows]
    step = spacing[rows]
    refine_chunk = rows.numel() if chunk_size is None else max(1, chunk_size // 2)
    for start in range(0, rows.numel(), refine_chunk):
        part = slice(start, start + refine_chunk)
        r = rows[part]
        ids, o, w = ray_ids[r], origins[r], directions[r]
        ends_d = torch.stack([d_out[part], d_in[part]], dim=1)
        ends_s = torch.stack([s_out[part], s_in[part]], dim=1)
        # a reduced-precision bracket may be off by a step: the finish may leave it by one
        low, high = d_out[part] - step[part], d_in[part] + step[part]
        graphed = refine_graphs is not None and refine_graphs.supports(query, device, refine)
        if march != "float32" and refine == "float32":
            marched = ends_s
            ends_s = evaluate_query(query, ids, o, w, ends_d, check_finite, "bracket ends")
        else:  # keep the march's values; evaluate the ends it skipped (empty grid cells)
            marched = None
            missing = torch.isnan(ends_s[:, 0])  # the graphs evaluate these themselves
            if not graphed and bool(missing.any()):
                lost = torch.nonzero(missing, as_tuple=True)[0]
                with reduced_precision(refine, device):
                    ends_s[lost, 0] = evaluate_query(
                        query, ids[lost], o[lost], w[lost], ends_d[lost, :1], check_finite,
                        "bracket ends",
                    )[:, 0]
        if graphed:
            found = refine_graphs.refine(
                query, ray_ids=ids, origins=o, directions=w, ends_d=ends_d,
                ends_s=ends_s, low=low, high=high, n_secant_steps=n_secant_steps,
                precision=refine,
            )
            if check_finite:
                check_finite_values(found, "refined depths")
        else:
            found = refine_brackets(
                query, ids, o, w, ends_d[:, 0], ends_s[:, 0], ends_d[:, 1], ends_s[:, 1],
                n_secant_steps, check_finite, refine, low=low, high=high,
            )
        if marched is not None:  # brackets that full precision does not confirm: finish them
            broken = ~((ends_s[:, 0] <= 0) & (ends_s[:, 1] > 0))
            if bool(broken.any()):
                b = torch.nonzero(broken, as_tuple=True)[0]
                slope = bracket_slope(marched[b], ends_d[b])
                slope = torch.where(slope > 0, slope, bracket_slope(ends_s[b], ends_d[b]).abs())
                found[b] = polish_root(
                    query, ids[b], o[b], w[b], found[b], torch.where(slope > 0, slope, 1.0),
                    low[b], high[b], check_finite,
                )
        depth[r] = found
    return SurfaceSearch(depth=depth, hit=hit, started_inside=started_inside)


def find_surface_of_rays(
    query: InsideQuery,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    missed: torch.Tensor,
    **options: Any,
) -> SurfaceSearch:
    """
    :func:`find_surface` on the rays that are not ``missed``, with the result of every ray:
    the rays not searched and the rays without a surface keep ``depth = far``, ``hit`` and
    ``started_inside`` False where not searched.

    Args:
        query: the inside function, which knows the rays by their ids ``0 .. N - 1``.
        origins, directions: `(N, 3)` rays (searched detached).
        near, far: `(N,)` the part of each ray to search.
        missed: `(N,)` bool, the rays not to search (e.g. they miss the bounding box).
        **options: the keyword arguments of :func:`find_surface` (``n_steps`` ...).

    Returns:
        SurfaceSearch with `(N,)` tensors.
    """
    hit = torch.zeros(origins.shape[0], dtype=torch.bool, device=origins.device)
    started_inside = torch.zeros_like(hit)
    depth = far.clone()
    active = torch.nonzero(~missed, as_tuple=True)[0]
    if active.numel() > 0:
        search = find_surface(
            query,
            origins.detach()[active],
            directions.detach()[active],
            near[active],
            far[active],
            ray_ids=active,
            **options,
        )
        hit[active] = search.hit
        started_inside[active] = search.started_inside
        depth[active] = torch.where(search.hit, search.depth, far[active])
    return SurfaceSearch(depth=depth, hit=hit, started_inside=started_inside)
