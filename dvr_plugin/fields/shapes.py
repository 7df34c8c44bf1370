"""
Analytic fields that follow the field protocol of :mod:`dvr_plugin.fields.field`.

They have exact surfaces (for tests against meshes and closed-form depths) and learnable
parameters (for gradient checks), and the union of a few of them is the built-in demo scene.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .field import FieldOutput, check_field_type


def _position_colour(points: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """A smooth colour that varies over the surface: `(B, P, 3)` in (0, 1)."""
    return torch.sigmoid(3.0 * (points - centre))


def _values(sdf: torch.Tensor, field_type: str, sharpness: float) -> torch.Tensor:
    """Field values `(...)` from signed distances `(...)`: themselves, or occupancy logits."""
    return sdf if field_type == "sdf" else -sharpness * sdf


class _Shape(nn.Module):
    """What the shapes share: ``field_type``, ``sharpness`` and a learnable `(3,)` ``centre``."""

    def __init__(self, *, centre: Sequence[float], field_type: str, sharpness: float) -> None:
        super().__init__()
        check_field_type(field_type)
        self.field_type = field_type
        self.sharpness = sharpness
        self.centre = nn.Parameter(torch.tensor(centre, dtype=torch.float32))


class SphereField(_Shape):
    """
    A sphere with learnable centre and radius.

    Occupancy values are ``sharpness * (radius - |p - centre|)`` (logits, inside positive);
    SDF values are ``|p - centre| - radius``. Colour varies smoothly with position.

    Args (keyword-only):
        centre: `(3,)` centre.
        radius: the radius.
        field_type: ``"occupancy"`` or ``"sdf"``.
        sharpness: logit slope per unit distance for the occupancy version.
        colour: a fixed RGB colour instead of the position-dependent one.
    """

    def __init__(
        self,
        *,
        centre: Sequence[float] = (0.0, 0.0, 0.0),
        radius: float = 0.3,
        field_type: str = "occupancy",
        sharpness: float = 20.0,
        colour: Sequence[float] | None = None,
    ) -> None:
        super().__init__(centre=centre, field_type=field_type, sharpness=sharpness)
        self.radius = nn.Parameter(torch.tensor(float(radius)))
        self.colour = None if colour is None else torch.tensor(colour, dtype=torch.float32)

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        centre = self.centre.to(points.dtype)
        return (points - centre).norm(dim=-1) - self.radius.to(points.dtype)

    def forward(self, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
        sdf = self.signed_distance(points)
        values = _values(sdf, self.field_type, self.sharpness)
        if self.colour is not None:
            rgb = self.colour.to(points).expand(*points.shape[:-1], 3)
        else:
            rgb = _position_colour(points, self.centre.to(points.dtype))
        return FieldOutput(values, rgb)


class BoxField(_Shape):
    """
    An axis-aligned box (exact signed distance), occupancy ``-sharpness * sdf``.

    Args (keyword-only):
        centre: `(3,)` centre. half_size: `(3,)` half extents. colour: `(3,)` RGB.
        field_type, sharpness: as for :class:`SphereField`.
    """

    def __init__(
        self,
        *,
        centre: Sequence[float] = (0.0, 0.0, 0.0),
        half_size: Sequence[float] = (0.2, 0.2, 0.2),
        colour: Sequence[float] = (0.8, 0.3, 0.2),
        field_type: str = "occupancy",
        sharpness: float = 20.0,
    ) -> None:
        super().__init__(centre=centre, field_type=field_type, sharpness=sharpness)
        self.half_size = nn.Parameter(torch.tensor(half_size, dtype=torch.float32))
        self.register_buffer("colour", torch.tensor(colour, dtype=torch.float32), persistent=False)

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        q = (points - self.centre.to(points.dtype)).abs() - self.half_size.to(points.dtype)
        outside = q.clamp(min=0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp(max=0)
        return outside + inside

    def forward(self, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
        sdf = self.signed_distance(points)
        values = _values(sdf, self.field_type, self.sharpness)
        shade = 0.75 + 0.25 * torch.cos(12.0 * points.sum(dim=-1, keepdim=True))
        rgb = (self.colour.to(points) * shade).clamp(0, 1)
        return FieldOutput(values, rgb)


class UnionField(nn.Module):
    """
    The union of analytic fields of one ``field_type`` (minimum signed distance); each point
    takes the colour of the part it is closest to.

    Args (keyword-only):
        parts: fields with a ``signed_distance(points)`` method and the field protocol.
    """

    def __init__(self, *, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("UnionField needs at least one part.")
        types = {part.field_type for part in parts}
        if len(types) != 1:
            raise ValueError(f"All parts must share one field_type, got {sorted(types)}.")
        self.parts = nn.ModuleList(parts)
        self.field_type = types.pop()
        self.sharpness = max(getattr(part, "sharpness", 1.0) for part in parts)

    def forward(self, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
        sdfs = torch.stack([part.signed_distance(points) for part in self.parts], dim=-1)
        rgbs = torch.stack([part(points).rgb for part in self.parts], dim=-2)
        sdf, index = sdfs.min(dim=-1)
        rgb = torch.gather(rgbs, -2, index[..., None, None].expand(*index.shape, 1, 3))[..., 0, :]
        values = _values(sdf, self.field_type, self.sharpness)
        return FieldOutput(values, rgb)


def demo_scene(*, field_type: str = "occupancy") -> UnionField:
    """The built-in scene: a sphere resting on a box next to a smaller sphere, in the unit cube."""
    return UnionField(
        parts=[
            BoxField(
                centre=(0.0, -0.22, 0.0),
                half_size=(0.32, 0.08, 0.22),
                colour=(0.85, 0.45, 0.2),
                field_type=field_type,
            ),
            SphereField(centre=(-0.08, 0.03, 0.0), radius=0.17, field_type=field_type),
            SphereField(
                centre=(0.2, -0.06, 0.08),
                radius=0.08,
                field_type=field_type,
                colour=(0.2, 0.5, 0.9),
            ),
        ]
    )
