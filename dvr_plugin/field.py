"""
Fields: the networks (or analytic functions) that DVR renders.

The field protocol
------------------
Any callable ``field(points, latent=None)`` can be rendered, where

- ``points`` is a tensor of shape `(B, P, 3)` of world coordinates (``B`` = the camera batch),
- ``latent`` is ``None`` or a tensor of shape `(B, C)`, one code per batch element,

and the call returns either

- a tensor of shape `(B, P)` or `(B, P, 1)`: the field values only, or
- a pair ``(values, rgb)`` (e.g. :class:`FieldOutput`) with ``values`` of shape `(B, P)` and
  ``rgb`` of shape `(B, P, 3)` in [0, 1] (or ``None`` for a geometry-only field).

The meaning of ``values`` is given by the optional attribute ``field.field_type``:

- ``"occupancy"`` (the default): occupancy *logits*; inside is ``values > level`` with the
  level 0 meaning occupancy probability tau = 0.5 (DVR's threshold);
- ``"sdf"``: signed distances; inside is ``values < level`` (level 0), as in IDR / NeuS / VolSDF.

The field must be differentiable in ``points`` (the renderer needs the spatial gradient for the
implicit depth gradient and for normals) and in whatever parameters should be learnt.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

FIELD_TYPES = ("occupancy", "sdf")


class FieldOutput(NamedTuple):
    """
    What a field returns.

    Members:
        values: `(B, P)` occupancy logits or signed distances (see ``field_type``).
        rgb: `(B, P, 3)` colours in [0, 1], or ``None`` for a geometry-only field.
    """

    values: torch.Tensor
    rgb: torch.Tensor | None


def field_type_of(field) -> str:
    """The ``field_type`` of a field (``"occupancy"`` when the attribute is absent)."""
    field_type = getattr(field, "field_type", "occupancy")
    if field_type not in FIELD_TYPES:
        raise ValueError(f"field_type must be one of {FIELD_TYPES}, got {field_type!r}.")
    return field_type


def evaluate_field(field, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
    """
    Call a field that follows the protocol and check what it returns.

    Args:
        field: a callable following the field protocol (module docstring).
        points: `(B, P, 3)` world points.
        latent: `(B, C)` codes or ``None``.

    Returns:
        FieldOutput with ``values`` `(B, P)` and ``rgb`` `(B, P, 3)` or ``None``.

    Raises:
        ValueError: if the field returns the wrong shapes.
    """
    batch, n_points = points.shape[0], points.shape[1]
    out = field(points, latent) if latent is not None else field(points)
    if isinstance(out, torch.Tensor):
        values, rgb = out, None
    elif isinstance(out, (tuple, list)) and len(out) == 2:
        values, rgb = out
    else:
        raise ValueError(
            "A field must return a tensor of values or a pair (values, rgb); "
            f"got {type(out).__name__}."
        )
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"The field's values must be a tensor, got {type(values).__name__}.")
    if values.dim() == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.shape != (batch, n_points):
        raise ValueError(
            f"The field returned values of shape {tuple(values.shape)} for points of shape "
            f"{tuple(points.shape)}; expected ({batch}, {n_points}) or ({batch}, {n_points}, 1)."
        )
    if rgb is not None and tuple(rgb.shape) != (batch, n_points, 3):
        raise ValueError(
            f"The field returned rgb of shape {tuple(rgb.shape)}; "
            f"expected ({batch}, {n_points}, 3)."
        )
    return FieldOutput(values, rgb)


class ResnetBlockFC(nn.Module):
    """``x + fc1(relu(fc0(relu(x))))`` with ``fc1`` initialised to zero (DVR's residual block)."""

    def __init__(self, *, size: int) -> None:
        super().__init__()
        self.fc0 = nn.Linear(size, size)
        self.fc1 = nn.Linear(size, size)
        nn.init.zeros_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc1(torch.relu(self.fc0(torch.relu(x))))


class FourierFeatures(nn.Module):
    """
    ``[p, sin(2^k pi p), cos(2^k pi p)]`` for k < n_frequencies (an optional extension; the
    reference decoder uses none).
    """

    def __init__(self, *, n_frequencies: int) -> None:
        super().__init__()
        self.n_frequencies = n_frequencies
        freqs = (2.0 ** torch.arange(n_frequencies, dtype=torch.float32)) * torch.pi
        self.register_buffer("freqs", freqs, persistent=False)

    @property
    def out_size(self) -> int:
        return 3 + 6 * self.n_frequencies

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if self.n_frequencies == 0:
            return points
        angles = (points[..., None] * self.freqs.to(points.dtype)).flatten(-2)
        return torch.cat([points, torch.sin(angles), torch.cos(angles)], dim=-1)


class OccupancyTextureField(nn.Module):
    """
    DVR's decoder: one network with an occupancy head and a texture head.

    ``Linear(3 -> H)``, then ``n_blocks`` residual fully connected blocks; when ``latent_size > 0``
    the latent code is projected by its own ``Linear(C -> H)`` per block and *added* before every
    block; finally ``Linear(H -> 1 + 3)`` on ``relu``: channel 0 is the occupancy logit (or the
    signed distance with ``field_type="sdf"``), channels 1..3 are RGB logits (sigmoid).

    Args (keyword-only):
        hidden_size: H (512 in the paper's default model, 128 for the small one).
        n_blocks: number of residual blocks (5 in the paper).
        latent_size: C, the size of the conditioning code (0 = unconditioned).
        rgb: whether the texture head exists (``False`` gives a geometry-only field).
        field_type: ``"occupancy"`` or ``"sdf"``.
        n_frequencies: Fourier feature frequencies of the input (0 = the reference decoder).
        sdf_init_radius: for ``field_type="sdf"``, the radius of the sphere the field starts as
            (the output is ``|p| - r + network(p)``, a geometric initialisation that keeps the
            initial field a valid distance); ignored for occupancy fields.
    """

    def __init__(
        self,
        *,
        hidden_size: int = 512,
        n_blocks: int = 5,
        latent_size: int = 0,
        rgb: bool = True,
        field_type: str = "occupancy",
        n_frequencies: int = 0,
        sdf_init_radius: float = 0.3,
    ) -> None:
        super().__init__()
        if field_type not in FIELD_TYPES:
            raise ValueError(f"field_type must be one of {FIELD_TYPES}, got {field_type!r}.")
        if hidden_size < 1 or n_blocks < 0 or latent_size < 0 or n_frequencies < 0:
            raise ValueError(
                "hidden_size must be >= 1 and n_blocks, latent_size, n_frequencies >= 0; got "
                f"{hidden_size}, {n_blocks}, {latent_size}, {n_frequencies}."
            )
        self.field_type = field_type
        self.hidden_size = hidden_size
        self.latent_size = latent_size
        self.has_rgb = rgb
        self.sdf_init_radius = sdf_init_radius
        self.encoding = FourierFeatures(n_frequencies=n_frequencies)
        self.fc_in = nn.Linear(self.encoding.out_size, hidden_size)
        self.blocks = nn.ModuleList([ResnetBlockFC(size=hidden_size) for _ in range(n_blocks)])
        if latent_size > 0:
            self.fc_latent = nn.ModuleList(
                [nn.Linear(latent_size, hidden_size) for _ in range(n_blocks)]
            )
        self.fc_out = nn.Linear(hidden_size, 1 + (3 if rgb else 0))
        if field_type == "sdf":
            nn.init.normal_(self.fc_out.weight, std=1e-4)
            nn.init.zeros_(self.fc_out.bias)

    def forward(self, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
        """
        Args:
            points: `(B, P, 3)` (or any `(..., 3)` when ``latent`` is ``None``).
            latent: `(B, C)` codes, required when ``latent_size > 0``.

        Returns:
            FieldOutput: ``values`` `(B, P)`, ``rgb`` `(B, P, 3)` in [0, 1] or ``None``.
        """
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (B, P, 3), got {tuple(points.shape)}.")
        self._check_latent(points, latent)
        net = self.fc_in(self.encoding(points))
        for i, block in enumerate(self.blocks):
            if self.latent_size > 0:
                net = net + self.fc_latent[i](latent)[:, None, :]
            net = block(net)
        out = self.fc_out(torch.relu(net))
        values = out[..., 0]
        if self.field_type == "sdf":
            values = values + points.norm(dim=-1) - self.sdf_init_radius
        rgb = torch.sigmoid(out[..., 1:4]) if self.has_rgb else None
        return FieldOutput(values, rgb)

    def _check_latent(self, points: torch.Tensor, latent: torch.Tensor | None) -> None:
        if self.latent_size > 0:
            if latent is None:
                raise ValueError(f"This field needs a latent code of size {self.latent_size}.")
            if latent.dim() != 2 or latent.shape != (points.shape[0], self.latent_size):
                raise ValueError(
                    f"latent must have shape ({points.shape[0]}, {self.latent_size}), "
                    f"got {tuple(latent.shape)}."
                )

    def forward_with_tangent(
        self,
        points: torch.Tensor,
        tangents: torch.Tensor,
        latent: torch.Tensor | None = None,
    ) -> tuple[FieldOutput, FieldOutput]:
        """
        The outputs and their directional derivatives along ``tangents`` (a forward-mode
        derivative), in one pass: points and tangents go through every layer as one stacked
        batch (a linear layer is linear; a ReLU passes a tangent where its input is positive).
        Differentiable like :meth:`forward`. The renderer uses it to get ``grad_p s . w`` and
        ``J_rgb w`` at the surface (:mod:`dvr_plugin.implicit_gradient`).

        Args:
            points: `(B, P, 3)`.
            tangents: `(B, P, 3)` directions to differentiate along.
            latent: `(B, C)` codes, as in :meth:`forward` (they have no tangent).

        Returns:
            ``(outputs, derivatives)``: two FieldOutputs, the second holding `(B, P)` and
            `(B, P, 3)` directional derivatives of the values and colours.
        """
        if points.shape[-1] != 3 or tangents.shape != points.shape:
            raise ValueError(
                f"points and tangents must both have shape (B, P, 3), got "
                f"{tuple(points.shape)} and {tuple(tangents.shape)}."
            )
        self._check_latent(points, latent)
        if self.encoding.n_frequencies > 0:
            freqs = self.encoding.freqs.to(points.dtype)
            angles = (points[..., None] * freqs).flatten(-2)
            angle_tangents = (tangents[..., None] * freqs).flatten(-2)
            sin, cos = torch.sin(angles), torch.cos(angles)
            stacked = torch.stack([  # (2, B, P, 3 + 6 F): value, tangent
                torch.cat([points, sin, cos], dim=-1),
                torch.cat([tangents, cos * angle_tangents, -sin * angle_tangents], dim=-1),
            ])
        else:
            stacked = torch.stack([points, tangents])  # (2, B, P, 3): value, tangent

        def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            # the bias belongs to the value only
            out = torch.nn.functional.linear(x, layer.weight)
            return torch.cat([out[:1] + layer.bias, out[1:]])

        def relu(x: torch.Tensor) -> torch.Tensor:
            return torch.where(x[:1] > 0, x, 0.0)  # the value's mask, for both

        net = linear(self.fc_in, stacked)
        for i, block in enumerate(self.blocks):
            if self.latent_size > 0:
                code = self.fc_latent[i](latent)[:, None, :]
                net = torch.cat([net[:1] + code, net[1:]])
            net = net + linear(block.fc1, relu(linear(block.fc0, relu(net))))
        out = linear(self.fc_out, relu(net))
        values, values_tangent = out[0, ..., 0], out[1, ..., 0]
        if self.field_type == "sdf":
            norm = points.norm(dim=-1)
            values = values + norm - self.sdf_init_radius
            values_tangent = values_tangent + (points * tangents).sum(-1) / norm.clamp(
                min=1e-12
            )
        rgb = rgb_tangent = None
        if self.has_rgb:
            rgb = torch.sigmoid(out[0, ..., 1:4])
            rgb_tangent = rgb * (1 - rgb) * out[1, ..., 1:4]
        return FieldOutput(values, rgb), FieldOutput(values_tangent, rgb_tangent)
