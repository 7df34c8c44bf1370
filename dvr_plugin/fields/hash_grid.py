"""
A multi-resolution hash-grid encoding (Instant-NGP, Mueller et al. 2022) and a field built on it.

Frame and units: points are in the renderer's normalised object frame (scene units, the unit
cube of DVR's normalised scenes); the grids span the box ``bounds`` (by default
:data:`~dvr_plugin.fields.field.UNIT_CUBE_BOUNDS`, where the renderer marches).

The encoding. Level ``l`` (of ``L``) divides the box into ``N_l`` cells per axis,

    N_l = floor(N_min * b^l),   b = exp((ln N_max - ln N_min) / (L - 1)),

so its vertices are the integer points ``0 .. N_l`` of the scaled coordinates
``q = N_l (x - lo) / (hi - lo)``. Every vertex owns a feature vector of size ``F`` in the
level's table: a point's feature is the trilinear interpolation of the 8 corners of its cell,
the corner's weight being ``prod_a w_a`` with ``w_a = q_a - c_a`` on the axes where it is the
upper vertex and ``1 - (q_a - c_a)`` where it is the lower one (``c`` the cell's lower
corner). A level whose ``(N_l + 1)^3`` vertices fit in the table size ``T = 2^log2_T``
indexes them densely (``i + j (N + 1) + k (N + 1)^2``); a finer level hashes them,

    h(i, j, k) = (i * 1  xor  j * 2654435761  xor  k * 805459861) mod T,

and lets the colliding vertices share an entry (the gradients of the finer levels sort it
out). The features of all levels are concatenated: ``L * F`` numbers per point.

Derivatives. The trilinear weights are polynomials of the point, so the encoding is
differentiable in the table and in the points, twice over (the double backward of a normal
``grad_x f`` taken with ``create_graph=True``): inside a cell it is smooth, and across a face it
is continuous with a jump in its derivative (the interpolation is piecewise trilinear). Points
outside the box are clamped to it, so the features are constant outward (zero derivative there);
a NaN point gets NaN features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .field import (
    UNIT_CUBE_BOUNDS,
    FieldOutput,
    SphereTermMixin,
    check_field_type,
    check_integers,
    fourier_band_weights,
    relu_mlp,
    write_annealing_progress,
)

# The primes of Instant-NGP's spatial hash, one per axis (the first is 1, for coherence along x).
HASH_PRIMES = (1, 2654435761, 805459861)


def level_resolutions(*, n_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """
    The cells per axis ``N_l = floor(N_min b^l)`` of every level, with the growth factor
    ``b = (N_max / N_min)^(1 / (L - 1))`` (1 for a single level), so level 0 has ``N_min`` and
    level ``L - 1`` has ``N_max`` cells.

    Returns:
        ``L`` integers, non-decreasing.
    """
    if n_levels == 1:
        return [base_resolution]
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    # the small epsilon keeps N_min b^l from rounding down just below an integer
    return [int(math.floor(base_resolution * growth**level + 1e-6)) for level in range(n_levels)]


def spatial_hash(coords: torch.Tensor, table_size: int) -> torch.Tensor:
    """
    Instant-NGP's hash of integer vertex coordinates.

    Args:
        coords: `(..., 3)` int64 non-negative vertex coordinates.
        table_size: T, a power of two.

    Returns:
        `(...)` int64 indices in ``[0, T)``. Computed in int64 and reduced with ``& (T - 1)``:
        the same low bits as the uint32 arithmetic of the reference implementation.
    """
    h = coords[..., 0] * HASH_PRIMES[0]
    h = torch.bitwise_xor(h, coords[..., 1] * HASH_PRIMES[1])
    h = torch.bitwise_xor(h, coords[..., 2] * HASH_PRIMES[2])
    return torch.bitwise_and(h, table_size - 1)


def _check_bounds(bounds) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    try:
        lower, upper = (tuple(float(v) for v in corner) for corner in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be ((x0, y0, z0), (x1, y1, z1)), got {bounds!r}.") from None
    if (
        len(lower) != 3
        or len(upper) != 3
        or not all(a < b for a, b in zip(lower, upper, strict=True))
    ):
        raise ValueError(
            f"bounds must be ((x0, y0, z0), (x1, y1, z1)) with x0 < x1 etc., got {bounds!r}."
        )
    return lower, upper


class HashGridEncoding(nn.Module):
    """
    Multi-resolution hash-grid features of points (module docstring).

    All tables live in one parameter ``embeddings`` of shape `(S, F)`: level ``l`` owns the
    rows ``offsets[l] .. offsets[l] + sizes[l]`` with ``sizes[l] = min(T, (N_l + 1)^3)``.
    They follow the module's dtype (``.double()`` gives float64 tables) and start uniform in
    ``[-init_scale, init_scale]`` (Instant-NGP: 1e-4).

    With ``anneal=True`` the levels are faded in from coarse to fine (as Neuralangelo does):
    level 0 is always on and level ``l >= 1`` is weighted by
    :func:`~dvr_plugin.fields.field.fourier_band_weights` at ``alpha = progress (L - 1)``, band
    ``l - 1``. ``progress`` is a buffer (saved in the ``state_dict``), 0 at construction and
    set with :meth:`set_progress`.

    Args (keyword-only):
        n_levels: L, the number of levels.
        features_per_level: F, the features of a vertex.
        log2_table_size: ``log2 T``, the most entries of one level's table (1 .. 30).
        base_resolution: ``N_min``, the cells per axis of the coarsest level.
        max_resolution: ``N_max``, the cells per axis of the finest level (>= ``N_min``).
        bounds: ``((x0, y0, z0), (x1, y1, z1))`` the box the grids span (scene units).
        init_scale: the half-width of the uniform initialisation of the tables.
        anneal: fade the levels in with the ``progress`` buffer.
    """

    def __init__(
        self,
        *,
        n_levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        bounds: Sequence[Sequence[float]] = UNIT_CUBE_BOUNDS,
        init_scale: float = 1e-4,
        anneal: bool = False,
    ) -> None:
        super().__init__()
        check_integers(
            1,
            n_levels=n_levels,
            features_per_level=features_per_level,
            log2_table_size=log2_table_size,
            base_resolution=base_resolution,
            max_resolution=max_resolution,
        )
        if log2_table_size > 30:
            raise ValueError(f"log2_table_size must be at most 30, got {log2_table_size}.")
        if max_resolution < base_resolution:
            raise ValueError(
                f"max_resolution ({max_resolution}) must be >= base_resolution ({base_resolution})."
            )
        if not (math.isfinite(init_scale) and init_scale >= 0):
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale}.")
        lower, upper = _check_bounds(bounds)
        self.n_levels = n_levels
        self.features_per_level = features_per_level
        self.table_size = 2**log2_table_size
        self.bounds = (lower, upper)
        self.anneal = anneal
        resolutions = level_resolutions(
            n_levels=n_levels, base_resolution=base_resolution, max_resolution=max_resolution
        )
        self.resolutions = tuple(resolutions)
        sizes = [min(self.table_size, (n + 1) ** 3) for n in resolutions]
        self.hashed = tuple((n + 1) ** 3 > self.table_size for n in resolutions)
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.sizes = tuple(sizes)
        self.offsets = tuple(offsets)
        self.embeddings = nn.Parameter(torch.empty(sum(sizes), features_per_level))
        nn.init.uniform_(self.embeddings, -init_scale, init_scale)
        # per-level constants, non-persistent buffers so that they follow .to(device). The
        # levels are sorted by resolution, so the dense ones come first.
        self.n_dense = self.hashed.index(True) if any(self.hashed) else n_levels
        multipliers = [
            (1, n + 1, (n + 1) ** 2) if not hashed else HASH_PRIMES
            for n, hashed in zip(resolutions, self.hashed, strict=True)
        ]
        self.register_buffer("_resolution", torch.tensor(resolutions), persistent=False)  # (L,)
        self.register_buffer(  # (L, 3, 1): the strides of a dense level, the primes of a hashed one
            "_multipliers",
            torch.tensor(multipliers, dtype=torch.int64)[..., None],
            persistent=False,
        )
        self.register_buffer("_offsets", torch.tensor(offsets), persistent=False)  # (L,)
        self.register_buffer("_ends", torch.tensor([0, 1]), persistent=False)  # (2,)
        # the box in float64 (cast to the points' dtype on use: no host copy per call)
        box = torch.tensor([lower, upper], dtype=torch.float64)
        self.register_buffer("_lower", box[0], persistent=False)  # (3,)
        self.register_buffer("_extent", box[1] - box[0], persistent=False)  # (3,)
        if anneal:
            self.register_buffer("progress", torch.zeros(()))

    @property
    def out_size(self) -> int:
        """``L * F``, the size of a point's feature vector."""
        return self.n_levels * self.features_per_level

    def set_progress(self, progress: float) -> None:
        """
        Set the coarse-to-fine progress in [0, 1] (0: level 0 alone; 1: every level fully on),
        written in place.

        Raises:
            ValueError: for an encoding built without ``anneal``, or a progress outside [0, 1].
        """
        write_annealing_progress(self, progress, what="hash-grid encoding")

    def level_weights(self, dtype: torch.dtype) -> torch.Tensor | None:
        """`(L,)` weights of the levels in [0, 1], or ``None`` without annealing."""
        if not self.anneal:
            return None
        alpha = self.progress.to(dtype) * (self.n_levels - 1)
        rest = fourier_band_weights(alpha, self.n_levels - 1)
        return torch.cat([torch.ones(1, dtype=dtype, device=rest.device), rest])

    def corner_indices(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The table rows of the corners of every point's cell at every level and their trilinear
        weights.

        Args:
            points: `(..., 3)` points in the normalised object frame.

        Returns:
            ``(rows, weights)``: `(..., L, 8)` int64 rows of ``embeddings`` (level ``l``'s lie
            in ``offsets[l] + [0, sizes[l])``) and `(..., L, 8)` weights in the points' dtype,
            differentiable in the points, summing to 1 over the corners.
        """
        self._check_points(points)
        lower, extent = self._lower.to(points.dtype), self._extent.to(points.dtype)
        unit = ((points - lower) / extent).clamp(0.0, 1.0)  # (..., 3) in [0, 1]
        resolution = self._resolution.to(points.dtype)  # (L,)
        scaled = unit[..., None, :] * resolution[:, None]  # (..., L, 3) in [0, N_l]
        top = (self._resolution - 1).to(points.dtype)[:, None]  # the last cell's lower corner
        # (a NaN point gets cell 0 and NaN weights: NaN features, never a row out of range)
        cell = torch.minimum(torch.floor(scaled.detach()).nan_to_num(nan=0.0), top)  # (..., L, 3)
        frac = scaled - cell  # (..., L, 3) in [0, 1], carries the points' gradient
        # per axis, the terms of the cell's lower and upper vertex: (..., L, 3, 2)
        terms = (cell.to(torch.int64)[..., None] + self._ends) * self._multipliers
        weights = torch.stack([1.0 - frac, frac], dim=-1)  # (..., L, 3, 2) likewise
        # corner k = x + 2 y + 4 z (bits of k): broadcast the axes as (..., L, z, y, x)
        x, y, z = (t[..., None, None, :] for t in terms.unbind(-2))
        y, z = y.transpose(-1, -2), z.transpose(-1, -3)
        d = self.n_dense
        parts = []
        if d > 0:  # the level's offset rides on the z term (a (..., L, 2) tensor)
            z_offset = z[..., :d, :, :, :] + self._offsets[:d, None, None, None]
            parts.append(x[..., :d, :, :, :] + y[..., :d, :, :, :] + z_offset)
        if d < self.n_levels:
            xor = torch.bitwise_xor(x[..., d:, :, :, :], y[..., d:, :, :, :])
            xor = torch.bitwise_xor(xor, z[..., d:, :, :, :])
            xor = torch.bitwise_and(xor, self.table_size - 1)
            parts.append(xor + self._offsets[d:, None, None, None])
        rows = torch.cat(parts, dim=-4) if len(parts) > 1 else parts[0]  # (..., L, 2, 2, 2)
        rows = rows.flatten(-3)  # (..., L, 8)
        wx, wy, wz = weights.unbind(-2)  # (..., L, 2) each
        weights = wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
        weights = weights.flatten(-3)  # (..., L, 8)
        return rows, weights

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """
        Args:
            points: `(..., 3)` points in the normalised object frame (scene units); points
                outside ``bounds`` are clamped to the box.

        Returns:
            `(..., L * F)` features, level by level (level ``l`` at ``l F .. (l + 1) F``), in
            the promoted dtype of the table and the points; differentiable (twice) in both.
        """
        rows, weights = self.corner_indices(points)
        corners = self.embeddings.index_select(0, rows.reshape(-1))
        corners = corners.reshape(*rows.shape, self.features_per_level)  # (..., L, 8, F)
        features = (weights[..., None] * corners).sum(-2)  # (..., L, F)
        level_weights = self.level_weights(features.dtype)
        if level_weights is not None:
            features = features * level_weights[:, None]
        return features.flatten(-2)

    def _check_points(self, points: torch.Tensor) -> None:
        if points.dim() < 1 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}.")
        if not points.is_floating_point():
            raise ValueError(f"points must be floating point, got {points.dtype}.")

    def extra_repr(self) -> str:
        return (
            f"n_levels={self.n_levels}, features_per_level={self.features_per_level}, "
            f"table_size={self.table_size}, resolutions={self.resolutions[0]}..."
            f"{self.resolutions[-1]}, hashed_levels={sum(self.hashed)}, anneal={self.anneal}"
        )


class HashGridField(SphereTermMixin, nn.Module):
    """
    A field on a hash-grid encoding with DVR's two outputs (the field protocol of
    :mod:`dvr_plugin.fields.field`): an occupancy logit (or signed distance) and a colour.

    ``x -> [HashGridEncoding(x), x]`` (the raw point with ``include_points``), then the
    geometry network: ``n_layers`` of ``Linear(-> H)`` (plus ``Linear(C -> H)`` of the latent
    code when ``latent_size > 0``, added before the ReLU) and ``ReLU``; the value head
    ``Linear(H -> 1)`` gives channel 0 (plus the sphere term below); the texture head, a small
    MLP (``rgb_n_layers`` hidden layers of width ``rgb_hidden_size``) on the geometry
    network's last hidden activation, gives RGB logits (sigmoid).

    Geometric initialisation follows :class:`~dvr_plugin.fields.field.OccupancyTextureField`:
    with ``geometric_init_radius`` (always for SDFs, radius 0.3 when ``None``) the analytic
    sphere ``|p| - r`` (SDF) or ``sharpness (r - |p|)`` (occupancy logits) is added to the value
    and the value head starts near zero (weights ~ N(0, 1e-4), bias 0), so the untrained field
    is that sphere.

    Args (keyword-only):
        include_points: feed the raw point to the geometry network beside the encoding.
        hidden_size: H, the width of the geometry network.
        n_layers: its hidden layers (>= 1).
        rgb_hidden_size, rgb_n_layers: the texture head's width and hidden layers (>= 0).
        latent_size: C, the size of the conditioning code (0 = unconditioned).
        rgb: whether the texture head exists (``False``: a geometry-only field).
        field_type: ``"occupancy"`` or ``"sdf"``.
        geometric_init_radius: the radius of the initial sphere (scene units), or ``None``.
        geometric_init_sharpness: the logit slope per scene unit of the occupancy sphere.
        **encoding_options: the keyword arguments of the :class:`HashGridEncoding`
            (``n_levels``, ``features_per_level``, ``log2_table_size``, ``base_resolution``,
            ``max_resolution``, ``bounds``, ``init_scale``; ``anneal`` fades the levels in
            coarse to fine, :meth:`set_encoding_progress`), with its defaults.
    """

    def __init__(
        self,
        *,
        include_points: bool = True,
        hidden_size: int = 64,
        n_layers: int = 2,
        rgb_hidden_size: int = 64,
        rgb_n_layers: int = 2,
        latent_size: int = 0,
        rgb: bool = True,
        field_type: str = "occupancy",
        geometric_init_radius: float | None = None,
        geometric_init_sharpness: float = 10.0,
        **encoding_options: Any,
    ) -> None:
        super().__init__()
        check_field_type(field_type)
        check_integers(
            1, hidden_size=hidden_size, n_layers=n_layers, rgb_hidden_size=rgb_hidden_size
        )
        check_integers(0, rgb_n_layers=rgb_n_layers, latent_size=latent_size)
        self._set_sphere_term(field_type, geometric_init_radius, geometric_init_sharpness)
        self.field_type = field_type
        self.hidden_size = hidden_size
        self.latent_size = latent_size
        self.include_points = include_points
        self.has_rgb = rgb
        self.encoding = HashGridEncoding(**encoding_options)
        in_size = self.encoding.out_size + (3 if include_points else 0)
        sizes = [in_size] + [hidden_size] * n_layers
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        if latent_size > 0:
            self.fc_latent = nn.ModuleList(
                nn.Linear(latent_size, hidden_size) for _ in range(n_layers)
            )
        self.value_head = nn.Linear(hidden_size, 1)
        self.texture_head = None
        if rgb:
            self.texture_head = relu_mlp(
                in_size=hidden_size, hidden_size=rgb_hidden_size, n_layers=rgb_n_layers, out_size=3
            )
        if self.sphere_radius is not None:
            nn.init.normal_(self.value_head.weight, std=1e-4)
            nn.init.zeros_(self.value_head.bias)

    def set_encoding_progress(self, progress: float) -> None:
        """The coarse-to-fine progress in [0, 1] of the levels
        (:meth:`HashGridEncoding.set_progress`; needs ``anneal=True``)."""
        self.encoding.set_progress(progress)

    def forward(self, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
        """
        Args:
            points: `(B, P, 3)` points in the normalised object frame (or any `(..., 3)` when
                ``latent`` is ``None``).
            latent: `(B, C)` codes, required when ``latent_size > 0`` (ignored otherwise).

        Returns:
            FieldOutput: ``values`` `(B, P)`, ``rgb`` `(B, P, 3)` in [0, 1] or ``None``.
        """
        return self.forward_with_features(points, latent)[0]

    def forward_with_features(
        self, points: torch.Tensor, latent: torch.Tensor | None = None
    ) -> tuple[FieldOutput, torch.Tensor]:
        """
        :meth:`forward` and the geometry feature vector of every point (the geometry
        network's last hidden activation, the input of both heads), which a view-dependent
        head can condition on (:class:`~dvr_plugin.fields.appearance.ViewDependentField`).

        Args:
            points, latent: as in :meth:`forward`.

        Returns:
            ``(output, features)``: the FieldOutput and `(B, P, H)` features.
        """
        if points.dim() < 1 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (B, P, 3), got {tuple(points.shape)}.")
        self._check_latent(points, latent)
        net = self.encoding(points)
        if self.include_points:
            net = torch.cat([net, points.to(net.dtype)], dim=-1)
        for i, layer in enumerate(self.layers):
            net = layer(net)
            if self.latent_size > 0:
                net = net + self.fc_latent[i](latent)[:, None, :]
            net = torch.relu(net)
        values = self._add_sphere_term(self.value_head(net)[..., 0], points)
        rgb = torch.sigmoid(self.texture_head(net)) if self.texture_head is not None else None
        return FieldOutput(values, rgb), net

    def _check_latent(self, points: torch.Tensor, latent: torch.Tensor | None) -> None:
        if self.latent_size == 0:  # an unconditioned field ignores a code, as DVR's decoder
            return
        if latent is None:
            raise ValueError(f"This field needs a latent code of size {self.latent_size}.")
        if points.dim() != 3:
            raise ValueError(
                f"With a latent code, points must have shape (B, P, 3), got {tuple(points.shape)}."
            )
        if latent.dim() != 2 or latent.shape != (points.shape[0], self.latent_size):
            raise ValueError(
                f"latent must have shape ({points.shape[0]}, {self.latent_size}), "
                f"got {tuple(latent.shape)}."
            )
