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

import math
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

FIELD_TYPES = ("occupancy", "sdf")


# The default bounding box of the renderer's march, (min corner, max corner) in the normalised
# object frame where fields live: the unit cube of DVR's normalised scenes with a margin.
UNIT_CUBE_BOUNDS = ((-0.55, -0.55, -0.55), (0.55, 0.55, 0.55))


class FieldOutput(NamedTuple):
    """
    What a field returns.

    Members:
        values: `(B, P)` occupancy logits or signed distances (see ``field_type``).
        rgb: `(B, P, 3)` colours in [0, 1], or ``None`` for a geometry-only field.
    """

    values: torch.Tensor
    rgb: torch.Tensor | None


def check_field_type(field_type: str) -> str:
    """``field_type`` itself when it is one of :data:`FIELD_TYPES`, else a ValueError."""
    if field_type not in FIELD_TYPES:
        raise ValueError(f"field_type must be one of {FIELD_TYPES}, got {field_type!r}.")
    return field_type


def check_integers(minimum: int, **values: int) -> None:
    """
    Check constructor sizes: every one of ``values`` must be an integer (not a bool) that is at
    least ``minimum``.

    Raises:
        ValueError: naming the first value that is not, e.g. ``n_layers must be an integer
            >= 1, got 0.``
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def field_type_of(field) -> str:
    """The ``field_type`` of a field (``"occupancy"`` when the attribute is absent)."""
    return check_field_type(getattr(field, "field_type", "occupancy"))


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


def relu_mlp(*, in_size: int, hidden_size: int, n_layers: int, out_size: int) -> nn.Sequential:
    """
    ``n_layers`` of ``Linear + ReLU`` of width ``hidden_size``, then ``Linear(-> out_size)``:
    `(..., in_size)` -> `(..., out_size)`. The Sequential's indices (``2 i`` for hidden layer
    ``i``, ``2 n_layers`` for the last) name the layers in the ``state_dict``.
    """
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        layers += [nn.Linear(in_size, hidden_size), nn.ReLU()]
        in_size = hidden_size
    layers.append(nn.Linear(in_size, out_size))
    return nn.Sequential(*layers)


def fourier_band_weights(alpha: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """
    The coarse-to-fine window of Nerfies / BARF: the weight of frequency band ``k`` at the
    annealing position ``alpha`` (in ``[0, n_frequencies]``) is
    ``(1 - cos(pi * clamp(alpha - k, 0, 1))) / 2``: 0 until ``alpha`` reaches ``k``, 1 from
    ``k + 1`` on, a smooth ramp in between.

    Args:
        alpha: a 0-d tensor, the annealing position (bands fully on: ``alpha >= n_frequencies``).
        n_frequencies: F, the number of bands.

    Returns:
        `(F,)` weights in [0, 1], in ``alpha``'s dtype and device.
    """
    bands = torch.arange(n_frequencies, dtype=alpha.dtype, device=alpha.device)
    return 0.5 * (1.0 - torch.cos(torch.pi * (alpha - bands).clamp(0.0, 1.0)))


def write_annealing_progress(module: nn.Module, progress: float, *, what: str) -> None:
    """
    Write ``progress`` in [0, 1] into the 0-d ``progress`` buffer of an encoding built with
    ``anneal=True``, in place (recorded CUDA graphs that read the buffer see the new value).

    Raises:
        ValueError: for a module built without ``anneal`` (named ``what`` in the message), or a
            progress outside [0, 1].
    """
    if not module.anneal:
        raise ValueError(f"This {what} was built without annealing (anneal=False).")
    progress = float(progress)
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"The annealing progress must lie in [0, 1], got {progress}.")
    module.progress.fill_(progress)


@runtime_checkable
class CoarseToFine(Protocol):
    """
    What an encoding that fades its inputs in coarse to fine offers a trainer
    (:class:`FourierFeatures` and :class:`~dvr_plugin.fields.hash_grid.HashGridEncoding` follow
    it): ``anneal``, whether it was built to anneal, and ``set_progress(progress)``, which
    writes the progress in [0, 1] (see :func:`write_annealing_progress`). A field needs nothing
    more than such an encoding among its submodules: :func:`set_annealing_progress` finds it.
    """

    anneal: bool

    def set_progress(self, progress: float) -> None: ...


def set_annealing_progress(module: nn.Module, progress: float) -> None:
    """
    Set the coarse-to-fine progress in [0, 1] of every encoding inside ``module`` (itself
    included) that follows :class:`CoarseToFine` and was built with ``anneal=True``: the
    encoding of a field, of the geometry network of a
    :class:`~dvr_plugin.fields.appearance.ViewDependentField`, of any module composed of them.
    Encodings built without annealing are left alone.

    Raises:
        ValueError: for a progress outside [0, 1] (when an annealed encoding is found).
    """
    for encoding in module.modules():
        if isinstance(encoding, CoarseToFine) and encoding.anneal:
            encoding.set_progress(progress)


class FourierFeatures(nn.Module):
    """
    ``[p, w_k sin(2^k pi p), w_k cos(2^k pi p)]`` for k < n_frequencies (an optional extension;
    the reference decoder uses none). Points are in scene units (the unit cube).

    Without annealing every ``w_k`` is 1. With ``anneal=True`` the bands are faded in from
    coarse to fine (:func:`fourier_band_weights` at ``alpha = progress * n_frequencies``; the raw
    ``p`` is always on): ``progress`` is a buffer of the module, saved in its ``state_dict`` so
    that a restored field continues where the schedule was. It starts at 0 (only ``p``) and is
    set with :meth:`set_progress`; a trainer raises it from 0 to 1 over its annealing steps.

    Args (keyword-only):
        n_frequencies: F, the number of frequency bands.
        anneal: fade the bands in with the ``progress`` buffer (otherwise no buffer exists and
            the state dict is that of the plain encoding).
    """

    def __init__(self, *, n_frequencies: int, anneal: bool = False) -> None:
        super().__init__()
        self.n_frequencies = n_frequencies
        self.anneal = anneal
        freqs = (2.0 ** torch.arange(n_frequencies, dtype=torch.float32)) * torch.pi
        self.register_buffer("freqs", freqs, persistent=False)
        if anneal:
            self.register_buffer("progress", torch.zeros(()))

    @property
    def out_size(self) -> int:
        return 3 + 6 * self.n_frequencies

    def set_progress(self, progress: float) -> None:
        """
        Set the annealing progress in [0, 1] (0: only ``p``; 1: every band fully on). Written in
        place, so recorded CUDA graphs that read the buffer see the new value.

        Raises:
            ValueError: for an encoding built without ``anneal``, or a progress outside [0, 1].
        """
        write_annealing_progress(self, progress, what="Fourier encoding")

    def band_weights(self, dtype: torch.dtype) -> torch.Tensor | None:
        """`(3 F,)` weights of the ``sin`` (and ``cos``) features in their order, or ``None``
        without annealing."""
        if not self.anneal:
            return None
        alpha = self.progress.to(dtype) * self.n_frequencies
        # the features are ordered (coordinate, band): band k of x, y, z at k, F + k, 2 F + k
        return fourier_band_weights(alpha, self.n_frequencies).repeat(3)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` points -> `(..., 3 + 6 F)` features."""
        if self.n_frequencies == 0:
            return points
        angles = (points[..., None] * self.freqs.to(points.dtype)).flatten(-2)
        sin, cos = torch.sin(angles), torch.cos(angles)
        weights = self.band_weights(points.dtype)
        if weights is not None:
            sin, cos = sin * weights, cos * weights
        return torch.cat([points, sin, cos], dim=-1)

    def forward_with_tangent(
        self, points: torch.Tensor, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The features and their directional derivatives along ``tangents``.

        Args:
            points: `(..., 3)`.
            tangents: `(..., 3)`.

        Returns:
            ``(features, feature_tangents)``, both `(..., 3 + 6 F)`.
        """
        if self.n_frequencies == 0:
            return points, tangents
        freqs = self.freqs.to(points.dtype)
        angles = (points[..., None] * freqs).flatten(-2)
        angle_tangents = (tangents[..., None] * freqs).flatten(-2)
        sin, cos = torch.sin(angles), torch.cos(angles)
        weights = self.band_weights(points.dtype)
        if weights is not None:
            sin, cos = sin * weights, cos * weights
        features = torch.cat([points, sin, cos], dim=-1)
        feature_tangents = torch.cat([tangents, cos * angle_tangents, -sin * angle_tangents], -1)
        return features, feature_tangents


# The sphere an SDF field starts as when no ``geometric_init_radius`` is given.
SDF_INIT_RADIUS = 0.3


class SphereTermMixin:
    """
    The analytic sphere term of a field's geometric initialisation (see
    :class:`OccupancyTextureField`'s ``geometric_init_radius``): ``|p| - r`` added to signed
    distances, ``sharpness * (r - |p|)`` to occupancy logits. The field sets ``field_type`` and
    calls :meth:`_set_sphere_term` in its constructor.
    """

    field_type: str
    sphere_radius: float | None
    sphere_sharpness: float

    def _set_sphere_term(self, field_type: str, radius: float | None, sharpness: float) -> None:
        """Check and store the sphere term's radius (``None``: none) and sharpness."""
        if radius is not None and not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"geometric_init_radius must be a positive number, got {radius}.")
        if not (math.isfinite(sharpness) and sharpness > 0):
            raise ValueError(f"geometric_init_sharpness must be positive, got {sharpness}.")
        if field_type == "sdf" and radius is None:
            radius = SDF_INIT_RADIUS
        self.sphere_radius = radius
        self.sphere_sharpness = float(sharpness)

    def _add_sphere_term(self, values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """`(...)` network values plus the analytic sphere term at `(..., 3)` points (if any)."""
        if self.sphere_radius is None:
            return values
        norm = points.norm(dim=-1)
        if self.field_type == "sdf":
            return values + norm - self.sphere_radius
        return values + self.sphere_sharpness * (self.sphere_radius - norm)

    def _sphere_term_tangent(self, points: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
        """`(...)` the sphere term's derivative along `(..., 3)` tangents (``p . t / |p|``)."""
        radial = (points * tangents).sum(-1) / points.norm(dim=-1).clamp(min=1e-12)
        return radial if self.field_type == "sdf" else -self.sphere_sharpness * radial


class OccupancyTextureField(SphereTermMixin, nn.Module):
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
        fourier_anneal: fade the Fourier bands in coarse to fine (:class:`FourierFeatures`;
            the progress is a buffer of ``encoding``, set with :meth:`set_encoding_progress`).
        geometric_init_radius: start as a sphere of this radius (scene units) around the origin:
            an analytic sphere term is added to the network's value, ``|p| - r`` for SDFs (which
            keeps the initial field a valid distance) and ``sharpness * (r - |p|)`` (logits,
            inside positive) for occupancy, and the network's value output starts near zero
            (weights ~ N(0, 1e-4), bias 0), so the untrained field is that sphere and the
            network learns the difference. ``None``: no sphere term for occupancy (the
            reference decoder), radius 0.3 for SDFs.
        geometric_init_sharpness: the logit slope per scene unit of the occupancy sphere term.
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
        fourier_anneal: bool = False,
        geometric_init_radius: float | None = None,
        geometric_init_sharpness: float = 10.0,
    ) -> None:
        super().__init__()
        check_field_type(field_type)
        check_integers(1, hidden_size=hidden_size)
        check_integers(0, n_blocks=n_blocks, latent_size=latent_size, n_frequencies=n_frequencies)
        self.field_type = field_type
        self.hidden_size = hidden_size
        self.latent_size = latent_size
        self.has_rgb = rgb
        self._set_sphere_term(field_type, geometric_init_radius, geometric_init_sharpness)
        self.encoding = FourierFeatures(n_frequencies=n_frequencies, anneal=fourier_anneal)
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
        elif self.sphere_radius is not None:
            with torch.no_grad():  # the value row only: the colours keep the default init
                self.fc_out.weight[:1].normal_(std=1e-4)
                self.fc_out.bias[:1].zero_()

    def set_encoding_progress(self, progress: float) -> None:
        """The coarse-to-fine progress in [0, 1] of the Fourier features
        (:meth:`FourierFeatures.set_progress`; needs ``fourier_anneal=True``)."""
        self.encoding.set_progress(progress)

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
        values = self._add_sphere_term(out[..., 0], points)
        rgb = torch.sigmoid(out[..., 1:4]) if self.has_rgb else None
        return FieldOutput(values, rgb)

    def forward_with_features(
        self, points: torch.Tensor, latent: torch.Tensor | None = None
    ) -> tuple[FieldOutput, torch.Tensor]:
        """
        :meth:`forward` and the geometry feature vector of every point: the last hidden
        activation (``relu`` of the last block's output, i.e. the input of ``fc_out``), which
        an appearance network can condition on (:mod:`dvr_plugin.fields.appearance`). Read from the
        one forward pass, so it follows whatever :meth:`forward` computes.

        Args:
            points, latent: as in :meth:`forward`.

        Returns:
            ``(output, features)``: the FieldOutput of :meth:`forward` and `(B, P, H)`
            features (differentiable like the output).
        """
        captured: list[torch.Tensor] = []
        hook = self.fc_out.register_forward_hook(
            lambda _module, inputs, _output: captured.append(inputs[0])
        )
        try:
            output = self.forward(points, latent)
        finally:
            hook.remove()
        return output, captured[0]

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
        ``J_rgb w`` at the surface (:mod:`dvr_plugin.renderer.implicit_gradient`).

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
        # (2, B, P, 3 + 6 F): value, tangent
        stacked = torch.stack(self.encoding.forward_with_tangent(points, tangents))

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
        if self.sphere_radius is not None:
            values = self._add_sphere_term(values, points)
            values_tangent = values_tangent + self._sphere_term_tangent(points, tangents)
        rgb = rgb_tangent = None
        if self.has_rgb:
            rgb = torch.sigmoid(out[0, ..., 1:4])
            rgb_tangent = rgb * (1 - rgb) * out[1, ..., 1:4]
        return FieldOutput(values, rgb), FieldOutput(values_tangent, rgb_tangent)
