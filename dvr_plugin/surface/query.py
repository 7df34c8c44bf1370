"""
Surface queries: a uniform way for the root finder to evaluate "how far inside" a ray point is.

Both rendering routes reduce to one callable,
``query(ray_ids, origins, directions, lengths) -> inside``, where ``inside`` is positive inside
the object, negative outside, and zero on the surface:

- :class:`FieldQuery` wraps a field that follows the protocol of :mod:`dvr_plugin.fields.field`
  (occupancy logits: ``values - level``; signed distances: ``level - values``);
- :class:`VolumetricFunctionQuery` wraps a PyTorch3D volumetric function
  ``f(ray_bundle=..., **kwargs) -> (densities, features)`` and reads ``densities[..., 0]``.

Rays are handled as one flat list of ``M`` rays; ``ray_ids`` index into it so that a latent code
or a camera index can follow each ray into any chunk.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
from pytorch3d.renderer.implicit.utils import RayBundle

from ..fields.field import check_field_type, evaluate_field, field_type_of

# query(ray_ids (r,), origins (r, 3), directions (r, 3), lengths (r, k)) -> inside values (r, k)
InsideQuery = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def inside_sign(field_type: str) -> float:
    """+1 for occupancy (inside above the level), -1 for signed distances (inside below)."""
    return 1.0 if check_field_type(field_type) == "occupancy" else -1.0


def inside_values(values: torch.Tensor, *, field_type: str, level: float) -> torch.Tensor:
    """Raw field values -> inside values (positive inside, zero on the surface)."""
    return inside_sign(field_type) * (values - level)


class FieldQuery:
    """
    Evaluates a protocol field along rays.

    Args (keyword-only):
        field: the field.
        level: the level set that is the surface (0 = occupancy 0.5 or signed distance 0).
        field_type: overrides ``field.field_type`` when given.
        latent: `(M, C)` one code per ray, or ``None``.
    """

    def __init__(
        self,
        *,
        field,
        level: float = 0.0,
        field_type: str | None = None,
        latent: torch.Tensor | None = None,
    ) -> None:
        self.field = field
        self.level = level
        self.field_type = field_type or field_type_of(field)
        inside_sign(self.field_type)  # validates
        self.latent = latent

    def __call__(
        self,
        ray_ids: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            ray_ids: `(r,)` indices into the flat ray list.
            origins, directions: `(r, 3)`.
            lengths: `(r, n)` depths along each ray.

        Returns:
            `(r, n)` inside values (positive inside).
        """
        points = origins[:, None, :] + lengths[..., None] * directions[:, None, :]
        values, _ = self.evaluate(ray_ids, points)
        return inside_values(values, field_type=self.field_type, level=self.level)

    def ray_latent(self, ray_ids: torch.Tensor) -> torch.Tensor | None:
        """The `(r, C)` codes of the `(r,)` rays ``ray_ids``, or ``None`` without codes."""
        return None if self.latent is None else self.latent[ray_ids]

    def evaluate(
        self, ray_ids: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Field values `(r, k)` and rgb `(r, k, 3)` at `(r, k, 3)` points of rays ``ray_ids``."""
        latent = self.ray_latent(ray_ids)
        out = evaluate_field(self.field, points, latent)
        return out.values, out.rgb

    def evaluate_with_tangent(
        self, ray_ids: torch.Tensor, points: torch.Tensor, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """
        Field values `(r, k)`, rgb `(r, k, 3)` and their directional derivatives along
        ``tangents`` `(r, k, 3)`, from the field's ``forward_with_tangent`` where it has one
        (e.g. :class:`dvr_plugin.fields.field.OccupancyTextureField`), else forward-mode AD.
        """
        latent = self.ray_latent(ray_ids)
        if hasattr(self.field, "forward_with_tangent"):
            out, derivative = self.field.forward_with_tangent(points, tangents, latent)
            return out.values, out.rgb, derivative.values, derivative.rgb
        with forward_ad.dual_level():
            with warnings.catch_warnings():
                # the first dual tensor makes torch load its forward-AD decompositions, which
                # warns about torch.jit.script (torch's own use of it)
                warnings.simplefilter("ignore", DeprecationWarning)
                dual = forward_ad.make_dual(points, tangents)
            out = evaluate_field(self.field, dual, latent)
            values, values_tangent = forward_ad.unpack_dual(out.values)
            rgb = rgb_tangent = None
            if out.rgb is not None:
                rgb, rgb_tangent = forward_ad.unpack_dual(out.rgb)
        if values_tangent is None:  # the values do not depend on the points
            values_tangent = torch.zeros_like(values)
        if rgb is not None and rgb_tangent is None:
            rgb_tangent = torch.zeros_like(rgb)
        return values, rgb, values_tangent, rgb_tangent


class VolumetricFunctionQuery:
    """
    Evaluates a PyTorch3D volumetric function along rays; ``densities[..., 0]`` is compared with
    ``level`` (inside above it for ``field_type="occupancy"``, below it for ``"sdf"``). A function
    returning occupancy probabilities wants ``level=0.5``.

    Args (keyword-only):
        volumetric_function: ``f(ray_bundle=..., **kwargs) -> (densities, features)``.
        level, field_type: as above.
        kwargs: extra keyword arguments passed on to every call (e.g. ``cameras``).
    """

    def __init__(
        self,
        *,
        volumetric_function,
        level: float = 0.5,
        field_type: str = "occupancy",
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not callable(volumetric_function):
            raise ValueError("volumetric_function must be callable.")
        self.volumetric_function = volumetric_function
        self.level = level
        self.field_type = field_type
        inside_sign(field_type)  # validates
        self.kwargs = kwargs or {}

    def __call__(
        self,
        ray_ids: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        n_rays, n_points = lengths.shape
        bundle = RayBundle(
            origins=origins[None],
            directions=directions[None],
            lengths=lengths[None],
            xys=origins.new_zeros(1, n_rays, 2),
        )
        # densities are all the root finder needs: a function that can skip its features
        # (``FieldVolumetricFunction``) does; others take the keyword in their ``**kwargs``
        out = self.volumetric_function(ray_bundle=bundle, densities_only=True, **self.kwargs)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError("A volumetric function must return a pair (densities, features).")
        densities = out[0]
        if not isinstance(densities, torch.Tensor) or densities.shape[:3] != (1, n_rays, n_points):
            shape = getattr(densities, "shape", None)
            raise ValueError(
                f"The volumetric function returned densities of shape {shape} for rays of "
                f"shape (1, {n_rays}, {n_points}); expected (1, {n_rays}, {n_points}, 1)."
            )
        values = densities.reshape(1, n_rays, n_points, -1)[0, ..., 0]
        return inside_values(values, field_type=self.field_type, level=self.level)
