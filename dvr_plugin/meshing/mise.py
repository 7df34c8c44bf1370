"""
Multiresolution IsoSurface Extraction (MISE): the field's values on a fine grid, evaluated only
near the surface.

The grid
--------
A box ``[lo, hi]`` is cut into ``N`` cells per axis (``N = resolution``), so the grid has
``N + 1`` points per axis; point ``(i, j, k)`` of the final grid sits at
``lo + (i, j, k) * (hi - lo) / N`` (computed in float64, then rounded to float32, so the same
grid point gets bit-identical coordinates at every level and in a dense evaluation). A coarser
level ``l`` has ``N_l = start_resolution * 2^l`` cells per axis; its point ``(i, j, k)`` is the
final grid point ``(i, j, k) * N / N_l``.

Values are kept as *inside values*: positive inside, negative (or zero) outside, zero on the
surface (see :class:`~dvr_plugin.meshing._evaluation.ChunkedFieldEvaluator`).

The algorithm
-------------
1. Evaluate every point of the start grid (``start_resolution + 1`` per axis).
2. At every level: a cell *straddles* the surface when its 8 corners are not all inside or all
   outside. The *active* cells are the straddling cells dilated by one cell (their 26
   neighbours). The dilation makes the search follow the surface: a neighbour that the surface
   enters between its corners, or through a thin feature, gets its corners evaluated, and if it
   turns out to straddle it is dilated in turn. This *closure* repeats (each pass evaluates only
   new points) until every corner of every active cell is evaluated, so every connected piece of
   the surface that touches a cell known to straddle is followed to its end at this resolution.
3. Subdivide the active cells (2 x 2 x 2 children each), move to the next level and repeat 2
   until ``resolution`` is reached.

Points that are never evaluated take the trilinear interpolation of the coarser level (the mean
of the 2, 4 or 8 coarse corners around them). They only exist in cells whose coarse corners all
lie on one side of the level, so the filled value has the same sign as those corners: filling
never creates a sign change, and every sign change in the final grid is between two evaluated
points. Consequently marching cubes on the MISE grid gives the same mesh as on the densely
evaluated grid, unless the dense grid has surface pieces that the coarser levels could not see
(a thin part or a small component that falls between the corners of the start grid and of the
neighbourhood of every straddling cell): raise ``start_resolution`` for such fields.

Memory
------
The field is called on at most ``chunk_size`` points at once, whatever the resolution. The grid
itself is dense: a float32 value grid (4 bytes per point of the final grid) and a boolean
"evaluated" mask (1 byte per point). The work grids (straddle, dilation and corner masks, the
upsampling) are built in slabs of about ``SLAB_POINTS`` points along the first axis, and point
indices are gathered per slab, so the peak is about 5 bytes per final grid point (plus the
coarser level while upsampling): about 85 MiB at 256^3 and 0.7 GiB at 512^3.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._evaluation import ChunkedFieldEvaluator


@dataclass
class MiseLevelStats:
    """
    What MISE did at one level.

    Members:
        resolution: cells per axis at this level.
        points_evaluated: field evaluations at this level (new points only).
        passes: evaluation passes at this level (1 + the closure passes that found new points).
        straddling_cells: cells whose corners are not all on one side of the level.
        active_cells: straddling cells dilated by one cell (those subdivided next).
    """

    resolution: int
    points_evaluated: int
    passes: int
    straddling_cells: int
    active_cells: int


@dataclass
class MiseResult:
    """
    The outcome of :func:`run_mise`.

    Members:
        values: `(N + 1, N + 1, N + 1)` float32 inside values of the final grid, indexed
            ``[i, j, k]`` along (x, y, z); ``None`` when the start grid has no sign change.
        status: ``"surface"``, or ``"empty"`` / ``"full"`` when every start-grid point is
            outside / inside.
        levels: per-level statistics, coarse to fine.
        closure_capped: whether some level stopped its closure at ``max_closure_passes``.
    """

    values: Optional[torch.Tensor]
    status: str
    levels: List[MiseLevelStats] = dataclass_field(default_factory=list)
    closure_capped: bool = False


def _along(dim: int, index: slice) -> tuple:
    """An index that applies ``index`` along axis ``dim`` of a 3D tensor."""
    return (slice(None),) * dim + (index,)


def _pairwise(x: torch.Tensor, op) -> torch.Tensor:
    """``op`` of neighbouring entries along every axis: `(a, b, c)` -> `(a-1, b-1, c-1)`."""
    for dim in range(3):
        x = op(x[_along(dim, slice(None, -1))], x[_along(dim, slice(1, None))])
    return x


def straddling_cells(inside: torch.Tensor) -> torch.Tensor:
    """
    Cells whose 8 corners are not all inside or all outside.

    Args:
        inside: `(n + 1, n + 1, n + 1)` boolean grid.

    Returns:
        `(n, n, n)` boolean cell mask.
    """
    return _pairwise(inside, torch.logical_or) & ~_pairwise(inside, torch.logical_and)


def dilate_cells(cells: torch.Tensor) -> torch.Tensor:
    """
    Dilation by one cell in all 26 directions (separable along the three axes).

    Args:
        cells: `(n, n, n)` boolean cell mask.

    Returns:
        `(n, n, n)` boolean cell mask.
    """
    for dim in range(3):
        out = cells.clone()
        out[_along(dim, slice(1, None))] |= cells[_along(dim, slice(None, -1))]
        out[_along(dim, slice(None, -1))] |= cells[_along(dim, slice(1, None))]
        cells = out
    return cells


def cell_corners(cells: torch.Tensor) -> torch.Tensor:
    """
    The grid points that are a corner of at least one marked cell.

    Args:
        cells: `(n, n, n)` boolean cell mask.

    Returns:
        `(n + 1, n + 1, n + 1)` boolean point mask.
    """
    for dim in range(3):
        shape = list(cells.shape)
        shape[dim] += 1
        out = cells.new_zeros(shape)
        out[_along(dim, slice(None, -1))] = cells
        out[_along(dim, slice(1, None))] |= cells
        cells = out
    return cells


def subdivide_cells(cells: torch.Tensor) -> torch.Tensor:
    """
    The 2 x 2 x 2 children of marked cells.

    Args:
        cells: `(n, n, n)` boolean cell mask.

    Returns:
        `(2n, 2n, 2n)` boolean cell mask.
    """
    for dim in range(3):
        cells = cells.repeat_interleave(2, dim=dim)
    return cells


def upsample_values(values: torch.Tensor) -> torch.Tensor:
    """
    Trilinear upsampling by two with aligned corners: the old points keep their values
    exactly, new points get the mean of their 2, 4 or 8 old neighbours.

    Args:
        values: `(n + 1, n + 1, n + 1)` grid values.

    Returns:
        `(2n + 1, 2n + 1, 2n + 1)` contiguous grid values.
    """
    for dim in range(3):
        shape = list(values.shape)
        shape[dim] = 2 * shape[dim] - 1
        out = values.new_empty(shape)
        out[_along(dim, slice(0, None, 2))] = values
        out[_along(dim, slice(1, None, 2))] = 0.5 * (
            values[_along(dim, slice(None, -1))] + values[_along(dim, slice(1, None))]
        )
        values = out
    return values


# Work grids (booleans, temporary floats) are built this many points at a time, in slabs of
# whole planes along the first axis.
SLAB_POINTS = 1 << 22


def _slabs(side: int) -> List[Tuple[int, int]]:
    """``[p0, p1)`` ranges of planes along the first axis, about ``SLAB_POINTS`` points each."""
    planes = max(1, SLAB_POINTS // (side * side))
    return [(first, min(first + planes, side)) for first in range(0, side, planes)]


def upsample_grid(values: torch.Tensor) -> torch.Tensor:
    """
    :func:`upsample_values` done slab by slab into one preallocated grid (peak memory: the
    two grids and one slab).

    Args:
        values: `(n + 1, n + 1, n + 1)` grid values.

    Returns:
        `(2n + 1, 2n + 1, 2n + 1)` grid values.
    """
    side = values.shape[0]
    fine = values.new_empty((2 * side - 1,) * 3)
    rows = max(1, SLAB_POINTS // (4 * side * side))
    for first in range(0, side - 1, rows):
        last = min(first + rows, side - 1)
        fine[2 * first : 2 * last + 1] = upsample_values(values[first : last + 1])
    return fine


def grid_points(
    flat_index: torch.Tensor,
    *,
    side: int,
    stride: int,
    origin: torch.Tensor,
    spacing: torch.Tensor,
) -> torch.Tensor:
    """
    World coordinates of grid points.

    Args:
        flat_index: `(K,)` int64 flat indices into a `(side, side, side)` grid.
        side: points per axis of that grid.
        stride: final-grid points per step of that grid (``N / N_l``).
        origin: `(3,)` float64 lower corner of the box.
        spacing: `(3,)` float64 cell size of the final grid.

    Returns:
        `(K, 3)` float32 points.
    """
    i = torch.div(flat_index, side * side, rounding_mode="floor")
    j = torch.div(flat_index, side, rounding_mode="floor") % side
    k = flat_index % side
    ijk = torch.stack([i, j, k], dim=-1) * stride
    return (origin + ijk.to(torch.float64) * spacing).to(torch.float32)


class _LevelGrid:
    """
    The grid of one MISE level: values, the evaluated mask, and slab-wise sweeps that mark
    cells, find the corners still to evaluate, and evaluate them.
    """

    def __init__(
        self,
        *,
        evaluator: ChunkedFieldEvaluator,
        values: torch.Tensor,
        evaluated: Optional[torch.Tensor],
        stride: int,
        origin: torch.Tensor,
        spacing: torch.Tensor,
    ) -> None:
        self.evaluator = evaluator
        self.values = values
        self.evaluated = evaluated  # None: every point is evaluated
        self.side = values.shape[0]
        self.n_cells = self.side - 1
        self.stride = stride
        self.origin = origin
        self.spacing = spacing

    def evaluate_rows(self, mask: Optional[torch.Tensor], first: int, last: int) -> int:
        """Evaluate the marked points of planes ``[first, last)`` (all when ``mask`` is None)."""
        plane = self.side * self.side
        if mask is None:
            flat = torch.arange(first * plane, last * plane, device=self.values.device)
        else:
            flat = mask.reshape(-1).nonzero().squeeze(1) + first * plane
        values = self.values.view(-1)
        for chunk in flat.split(self.evaluator.chunk_size):
            points = grid_points(
                chunk,
                side=self.side,
                stride=self.stride,
                origin=self.origin,
                spacing=self.spacing,
            )
            values[chunk] = self.evaluator.inside_values(points)
            if self.evaluated is not None:
                self.evaluated.view(-1)[chunk] = True
        return int(flat.numel())

    def sweep(self, marked_cells: Callable[[int, int, int], torch.Tensor]) -> int:
        """
        Evaluate the unevaluated corners of marked cells, slab by slab; returns the number of
        points evaluated. For the point planes ``[first, last)`` of a slab,
        ``marked_cells(c0, c1, first)`` gives the boolean mask of cell planes ``[c0, c1)``
        (the cells with a corner in the slab); cell planes ``[first, c1)`` are the slab's own.
        """
        count = 0
        for first, last in _slabs(self.side):
            c0, c1 = max(first - 1, 0), min(last, self.n_cells)
            cells = marked_cells(c0, c1, first)
            if self.evaluated is None:
                continue
            corners = cell_corners(cells)[first - c0 : last - c0]
            need = corners & ~self.evaluated[first:last]
            if bool(need.any()):
                count += self.evaluate_rows(need, first, last)
        return count

    def closure_cells(self, record: Optional[torch.Tensor], counts: List[int]):
        """
        ``marked_cells`` for :meth:`sweep`: straddling cells dilated by one cell. Counts the
        straddling and active cells of each slab's own planes into ``counts`` and copies the
        active cells into ``record`` (a `(n, n, n)` mask) when given.
        """

        def marked(c0: int, c1: int, own0: int) -> torch.Tensor:
            s0, s1 = max(c0 - 1, 0), min(c1 + 1, self.n_cells)
            straddle = straddling_cells(self.values[s0 : s1 + 1] > 0)
            active = dilate_cells(straddle)
            own0 = min(own0, c1)
            counts[0] += int(straddle[own0 - s0 : c1 - s0].sum())
            counts[1] += int(active[own0 - s0 : c1 - s0].sum())
            if record is not None:
                record[own0:c1] = active[own0 - s0 : c1 - s0]
            return active[c0 - s0 : c1 - s0]

        return marked

    def seed_cells(self, coarse_active: torch.Tensor):
        """``marked_cells`` for :meth:`sweep`: the children of the coarse level's active cells."""

        def marked(c0: int, c1: int, own0: int) -> torch.Tensor:
            parents = coarse_active[c0 // 2 : (c1 - 1) // 2 + 1]
            children = subdivide_cells(parents)
            offset = c0 - 2 * (c0 // 2)
            return children[offset : offset + c1 - c0]

        return marked


def run_mise(
    evaluator: ChunkedFieldEvaluator,
    *,
    origin: Sequence[float],
    spacing: Sequence[float],
    resolution: int,
    start_resolution: int,
    device: torch.device,
    max_closure_passes: int = 64,
) -> MiseResult:
    """
    Evaluate a field on a grid of ``resolution`` cells per axis by MISE (module docstring).
    With ``start_resolution == resolution`` this is the plain dense evaluation.

    Args:
        evaluator: the chunked field evaluator (gives inside values).
        origin: `(3,)` lower corner of the box.
        spacing: `(3,)` cell size of the final grid (``(hi - lo) / resolution``).
        resolution: final cells per axis, ``start_resolution * 2^k``.
        start_resolution: cells per axis of the start grid.
        device: where the grid lives.
        max_closure_passes: the most evaluation passes per level (a safety bound; the
            closure normally adds nothing after the first pass).

    Returns:
        MiseResult.
    """
    if start_resolution < 1 or resolution < start_resolution:
        raise ValueError(
            f"Need 1 <= start_resolution <= resolution, got {start_resolution}, {resolution}."
        )
    n_levels = 0
    while start_resolution << n_levels < resolution:
        n_levels += 1
    if start_resolution << n_levels != resolution:
        raise ValueError(
            "resolution must be start_resolution times a power of two, got "
            f"resolution={resolution}, start_resolution={start_resolution}."
        )
    if max_closure_passes < 1:
        raise ValueError(f"max_closure_passes must be >= 1, got {max_closure_passes}.")
    origin_t = torch.tensor(list(origin), dtype=torch.float64, device=device)
    spacing_t = torch.tensor(list(spacing), dtype=torch.float64, device=device)
    result = MiseResult(values=None, status="surface")

    # Level 0: every point of the start grid.
    n_cells = start_resolution
    side = n_cells + 1
    grid = _LevelGrid(
        evaluator=evaluator,
        values=torch.empty((side,) * 3, dtype=torch.float32, device=device),
        evaluated=None,
        stride=resolution // n_cells,
        origin=origin_t,
        spacing=spacing_t,
    )
    count = sum(grid.evaluate_rows(None, first, last) for first, last in _slabs(side))
    active = torch.zeros((n_cells,) * 3, dtype=torch.bool, device=device) if n_levels else None
    counts = [0, 0]
    grid.sweep(grid.closure_cells(active, counts))
    result.levels.append(MiseLevelStats(n_cells, count, 1, counts[0], counts[1]))
    if counts[0] == 0:
        full = all(bool((grid.values[a:b] > 0).all()) for a, b in _slabs(side))
        result.status = "full" if full else "empty"
        return result

    for level in range(1, n_levels + 1):
        n_cells *= 2
        side = n_cells + 1
        fine_evaluated = torch.zeros((side,) * 3, dtype=torch.bool, device=device)
        fine_evaluated[0::2, 0::2, 0::2] = True if grid.evaluated is None else grid.evaluated
        grid = _LevelGrid(
            evaluator=evaluator,
            values=upsample_grid(grid.values),
            evaluated=fine_evaluated,
            stride=grid.stride // 2,
            origin=origin_t,
            spacing=spacing_t,
        )
        del fine_evaluated
        count, passes = grid.sweep(grid.seed_cells(active)), 1
        active = None
        while True:
            record = (
                torch.zeros((n_cells,) * 3, dtype=torch.bool, device=device)
                if level < n_levels
                else None
            )
            counts = [0, 0]
            new = grid.sweep(grid.closure_cells(record, counts))
            active = record
            if new == 0:
                break
            count += new
            passes += 1
            if passes >= max_closure_passes:
                result.closure_capped = True
                break
        result.levels.append(MiseLevelStats(n_cells, count, passes, counts[0], counts[1]))
    result.values = grid.values
    return result
