"""
Chunked, counted evaluation of a field on flat lists of points.

Every field call made by the mesh extractor goes through :class:`ChunkedFieldEvaluator`, so no
call ever receives more than ``chunk_size`` points (the memory of the field's forward pass is
bounded by the chunk, whatever the grid resolution), and the number of calls and points is
recorded for the statistics.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..fields.appearance import geometry_of
from ..fields.field import evaluate_field, field_type_of


class ChunkedFieldEvaluator:
    """
    Evaluates a field that follows the protocol of :mod:`dvr_plugin.fields.field` on `(P, 3)`
    points, at most ``chunk_size`` points per call, with the batch dimension of one.

    The *inside value* of a point is ``values - level`` for occupancy fields and
    ``level - values`` for SDF fields: positive inside, negative outside, zero on the surface.
    The mesh extractor works with inside values only, so occupancy and SDF fields share one
    code path.

    Args (keyword-only):
        field: a callable following the field protocol.
        latent: `(1, C)` latent code or ``None``.
        level: the iso-level in the field's own units.
        chunk_size: the most points passed to one field call.
    """

    def __init__(
        self,
        *,
        field,
        latent: Optional[torch.Tensor],
        level: float,
        chunk_size: int,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.field = field
        # values alone come from the geometry network (a view-dependent field's own call also
        # computes its normal and colour)
        self.geometry = geometry_of(field)
        self.latent = latent
        self.level = float(level)
        self.chunk_size = int(chunk_size)
        self.field_type = field_type_of(field)
        self.orientation = 1.0 if self.field_type == "occupancy" else -1.0
        self.calls = 0
        self.points = 0
        self.max_points_per_call = 0

    def _call(
        self, points: torch.Tensor, *, colour: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        One field call on `(P, 3)` points, ``P <= chunk_size``; returns `(P,)` values and
        `(P, 3)` colours (``None`` unless ``colour`` and the field has a colour head).
        """
        n_points = points.shape[0]
        if n_points > self.chunk_size:  # pragma: no cover - guarded by the callers
            raise ValueError(f"{n_points} points exceed chunk_size={self.chunk_size}.")
        self.calls += 1
        self.points += n_points
        self.max_points_per_call = max(self.max_points_per_call, n_points)
        network = self.field if colour else self.geometry
        values, rgb = evaluate_field(network, points[None], self.latent)
        return values[0], (None if rgb is None or not colour else rgb[0])

    def _inside(self, values: torch.Tensor) -> torch.Tensor:
        return self.orientation * (values - self.level)

    @torch.no_grad()
    def inside_values(self, points: torch.Tensor) -> torch.Tensor:
        """
        Inside values of up to ``chunk_size`` points, without gradients.

        Args:
            points: `(P, 3)` world points, ``P <= chunk_size``.

        Returns:
            `(P,)` float32 inside values.

        Raises:
            ValueError: if the field returns NaN or infinite values.
        """
        values, _ = self._call(points)
        inside = self._inside(values.float())
        if not bool(torch.isfinite(inside).all()):
            raise ValueError(
                "The field returned NaN or infinite values; the mesh extractor needs finite "
                "values everywhere in the bounds."
            )
        return inside

    @torch.no_grad()
    def inside_values_and_rgb(
        self, points: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Inside values and colours of any number of points, chunked, without gradients.

        Args:
            points: `(P, 3)` world points.

        Returns:
            `(P,)` inside values and `(P, 3)` colours (or ``None`` for a geometry-only field).
        """
        inside, colours = [], []
        for chunk in points.split(self.chunk_size):
            values, rgb = self._call(chunk, colour=True)
            inside.append(self._inside(values.float()))
            colours.append(rgb)
        if not inside:
            return points.new_zeros(0), None
        rgb_all = None if colours[0] is None else torch.cat([c.float() for c in colours])
        return torch.cat(inside), rgb_all

    def inside_values_and_gradient(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Inside values and their spatial gradients at up to ``chunk_size`` points.

        Args:
            points: `(P, 3)` world points, ``P <= chunk_size``.

        Returns:
            `(P,)` inside values and `(P, 3)` gradients, both detached.
        """
        with torch.enable_grad():
            points = points.detach().requires_grad_(True)
            values, _ = self._call(points)
            inside = self._inside(values)
            (gradient,) = torch.autograd.grad(inside.sum(), points, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(points)
        return inside.detach().float(), gradient.detach().float()
