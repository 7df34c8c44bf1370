"""
Empty-space skipping for DVR's march: an occupancy grid over the bounding box.

Most marching samples of a typical view lie in empty space: rays that miss the object cross the
whole box, and every ray crosses empty space before it meets the surface. An
:class:`OccupancyGrid` records, for each cell of a regular grid over the box, whether the object
may be inside it; the root finder (:func:`dvr_plugin.surface.root_finding.find_surface`, or
``SecantRaysampler(occupancy_grid=...)``) then evaluates the field only at samples in occupied
cells and counts every other sample as outside. Since the march looks for the first sample
inside, this finds the same bracket as the full march wherever the grid is right.

Keeping the grid right (conservative): :meth:`OccupancyGrid.refresh` evaluates the field at
``n_samples`` jittered points in every cell and marks the cell occupied when any of them is
inside (above ``-margin``); the marks are then dilated by ``dilation`` cells. A crossing can be
lost only where an inside region smaller than a cell escapes all samples of its cell and of its
neighbours. A fresh grid has every cell occupied (nothing is skipped until the first refresh),
and points outside the grid's box always count as occupied.

During training the field moves, so the grid is refreshed every few steps from the current field
(:meth:`OccupancyGrid.refresh_every`), optionally only a random ``fraction`` of the cells per
refresh to spread the cost; between refreshes the dilation absorbs small movements of the
surface. The grid describes one scene: with latent-conditioned fields, build one per code.

Example::

    grid = OccupancyGrid(resolution=64).to(device)
    grid.refresh(field)
    renderer = DVRRenderer(
        field=field, raysampler=SecantRaysampler(n_steps=128, occupancy_grid=grid)
    )
    for step in range(n_iterations):
        grid.refresh_every(step, field, every=16)
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..fields.field import UNIT_CUBE_BOUNDS, evaluate_field, field_type_of
from ..surface.precision import check_precision, reduced_precision

InsideFunction = Callable[[torch.Tensor], torch.Tensor]


def _resolution(resolution: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(resolution, int):
        resolution = (resolution,) * 3
    values = tuple(int(r) for r in resolution)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"resolution must be a positive int or 3 of them, got {resolution!r}.")
    return values  # type: ignore[return-value]


class OccupancyGrid(nn.Module):
    """
    Occupancy bits over an axis-aligned box, for skipping empty space in DVR's march.

    Args (keyword-only):
        resolution: cells per side (one int, or ``(X, Y, Z)``).
        bounds: ``(min_xyz, max_xyz)`` of the box (default: the padded unit cube
            ``[-0.55, 0.55]^3``, the box ``SecantRaysampler`` searches by default).
        dilation: cells by which the occupied cells are grown after every refresh.

    Buffers (saved in the ``state_dict`` of whatever module holds the grid, e.g. a
    ``SecantRaysampler``):
        occupied: `(X, Y, Z)` bool, what the march looks up (after dilation).
        raw: `(X, Y, Z)` bool, the cells found occupied (before dilation).
    """

    def __init__(
        self,
        *,
        resolution: int | Sequence[int] = 64,
        bounds: tuple[Sequence[float], Sequence[float]] = UNIT_CUBE_BOUNDS,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.resolution = _resolution(resolution)
        box = torch.tensor(bounds, dtype=torch.float32)
        if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
            raise ValueError(f"bounds must be (min_xyz, max_xyz) with min < max, got {bounds}.")
        if not isinstance(dilation, int) or dilation < 0:
            raise ValueError(f"dilation must be an integer >= 0, got {dilation!r}.")
        self.dilation = dilation
        self.register_buffer("bounds", box)
        self.register_buffer("raw", torch.ones(self.resolution, dtype=torch.bool))
        self.register_buffer("occupied", torch.ones(self.resolution, dtype=torch.bool))
        # cells per side as a tensor on the grid's device (lookups create no tensors)
        self.register_buffer(
            "cells_per_side", torch.tensor(self.resolution, dtype=torch.long), persistent=False
        )

    @property
    def all_occupied(self) -> bool:
        """Every cell is occupied (a fresh grid): nothing would be skipped."""
        return bool(self.occupied.all())

    @property
    def occupied_fraction(self) -> float:
        """The share of cells the march evaluates."""
        return float(self.occupied.float().mean())

    def cell_centres(self) -> torch.Tensor:
        """`(X, Y, Z, 3)` world coordinates of the cell centres."""
        low, high = self.bounds[0], self.bounds[1]
        axes = [
            low[i] + (torch.arange(n, device=low.device, dtype=low.dtype) + 0.5) * (
                (high[i] - low[i]) / n
            )
            for i, n in enumerate(self.resolution)
        ]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def occupied_at(self, points: torch.Tensor) -> torch.Tensor:
        """
        Look points up.

        Args:
            points: `(..., 3)` world points.

        Returns:
            `(...)` bool: the point's cell is occupied, or the point lies outside the box.
        """
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}.")
        low = self.bounds[0].to(device=points.device, dtype=points.dtype)
        high = self.bounds[1].to(device=points.device, dtype=points.dtype)
        size = self.cells_per_side.to(points.device)
        cells = (points - low) * (size.to(points.dtype) / (high - low))
        tolerance = 1e-4
        within = ((cells > -tolerance) & (cells < size + tolerance)).all(dim=-1)
        index = torch.minimum(cells.floor().clamp(min=0), size - 1).to(torch.int32)
        _, ny, nz = self.resolution
        flat = (index[..., 0] * ny + index[..., 1]) * nz + index[..., 2]  # int32: < 2^31 cells
        bits = self.occupied.to(points.device).reshape(-1)
        return bits[flat] | ~within

    @torch.no_grad()
    def refresh(
        self,
        field=None,
        *,
        inside_function: InsideFunction | None = None,
        latent: torch.Tensor | None = None,
        level: float = 0.0,
        field_type: str | None = None,
        n_samples: int = 4,
        margin: float = 0.0,
        fraction: float = 1.0,
        chunk_size: int = 2**16,
        precision: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        """
        Re-evaluate cells from the field and recompute the dilated grid.

        A cell is occupied when the largest inside value among ``n_samples`` uniformly jittered
        points in it exceeds ``-margin``. Points are created on the grid's device.

        Args:
            field: a field following :mod:`dvr_plugin.fields.field`'s protocol (its ``field_type``
                sets the inside side of ``level``), or ``None`` with ``inside_function``.
            inside_function: instead of a field, ``f(points (P, 3)) -> (P,)``, positive inside.
            latent: `(1, C)` code for a conditioned field.
            level: the surface level (0 = occupancy logit 0, or signed distance 0).
            field_type: overrides ``field.field_type``.
            n_samples: jittered samples per cell (>= 1).
            margin: cells whose inside value comes within ``margin`` of the level count as
                occupied too (more conservative, in the field's units).
            fraction: the share of cells re-evaluated (chosen at random); the others keep
                their state. 1 re-evaluates all.
            chunk_size: the most points per field call.
            precision: ``"auto"`` (TF32 on CUDA), ``"float32"``, ``"tf32"`` or ``"bfloat16"``.
            generator: random generator for the jitter and the choice of cells.
        """
        if (field is None) == (inside_function is None):
            raise ValueError("Give either a field or an inside_function.")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
        check_precision(precision)
        if latent is not None and (latent.dim() != 2 or latent.shape[0] != 1):
            raise ValueError(
                f"latent must have shape (1, C) (one scene), got {tuple(latent.shape)}."
            )
        if inside_function is None:
            sign = 1.0 if (field_type or field_type_of(field)) == "occupancy" else -1.0

            def inside_function(points: torch.Tensor) -> torch.Tensor:
                values = evaluate_field(field, points[None], latent).values[0]
                return sign * (values - level)

        device = self.bounds.device
        n_cells = self.raw.numel()
        if fraction < 1.0:
            count = max(1, int(round(fraction * n_cells)))
            cells = torch.randperm(n_cells, device=device, generator=generator)[:count]
        else:
            cells = torch.arange(n_cells, device=device)
        low, high = self.bounds[0], self.bounds[1]
        size = torch.tensor(self.resolution, device=device)
        cell_size = (high - low) / size.to(low.dtype)
        _, ny, nz = self.resolution
        corner = torch.stack([cells // (ny * nz), (cells // nz) % ny, cells % nz], dim=-1)
        best = torch.full((cells.shape[0],), -torch.inf, device=device)
        per_chunk = max(1, chunk_size // n_samples)
        with reduced_precision(precision, device):
            for start in range(0, cells.shape[0], per_chunk):
                base = corner[start : start + per_chunk].to(low.dtype)
                jitter = torch.rand(
                    base.shape[0], n_samples, 3, device=device, generator=generator
                )
                points = low + (base[:, None, :] + jitter) * cell_size
                values = inside_function(points.reshape(-1, 3)).float()
                if values.shape != (points.shape[0] * n_samples,):
                    raise ValueError(
                        f"The inside function returned shape {tuple(values.shape)} for "
                        f"{points.shape[0] * n_samples} points."
                    )
                best[start : start + per_chunk] = values.reshape(-1, n_samples).amax(dim=1)
        raw = self.raw.reshape(-1)
        raw[cells] = best > -margin
        self._dilate()

    def refresh_every(self, step: int, field=None, *, every: int = 16, **kwargs) -> bool:
        """
        Call :meth:`refresh` (with ``kwargs``) when ``step`` is a multiple of ``every``;
        returns whether it did. Meant for the training loop, in the spirit of nerfacc's
        ``update_every_n_steps``.
        """
        if every < 1:
            raise ValueError(f"every must be positive, got {every}.")
        if step % every != 0:
            return False
        self.refresh(field, **kwargs)
        return True

    def _dilate(self) -> None:
        if self.dilation == 0:
            self.occupied.copy_(self.raw)
            return
        width = 2 * self.dilation + 1
        grown = F.max_pool3d(
            self.raw[None, None].to(torch.float16 if self.raw.is_cuda else torch.float32),
            kernel_size=width,
            stride=1,
            padding=self.dilation,
        )
        self.occupied.copy_(grown[0, 0] > 0)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, dilation={self.dilation}"
