"""
A view-dependent colour head (an IDR-style rendering network) on top of a geometry network.

DVR's texture head gives every surface point one colour, whatever the camera: right for
diffuse renders, wrong for photographs with highlights and shading, where the only way for the
model to explain a highlight is to bend the surface. The rendering network of IDR (Yariv et al.
2020) lets the colour depend on how the point is seen:

    colour = sigmoid(MLP([gamma_x(x), h(x), n, gamma_v(v), z]))

- ``x``: the surface point (world frame, scene units), optionally Fourier-encoded (``gamma_x``;
  none by default, as in IDR);
- ``h(x)``: optional multi-resolution hash-grid features of the point (a
  :class:`~dvr_plugin.fields.hash_grid.HashGridEncoding` of its own, not shared with the
  geometry): fine texture detail at the cost of a table lookup, without giving the geometry
  network more high-frequency capacity (none by default). The lookup takes the point detached:
  the features train through their tables, but their spatial derivative (a piecewise-trilinear
  texture gradient) is not passed on to the surface point, where it would pull the surface
  along the rays to wherever the texture matches; measured, it broke the geometry on DTU scan
  24 (docs/real_data.md);
- ``n``: the unit outward normal at ``x``, ``normalize(grad_x f)`` (sign from the field type);
- ``v``: the unit viewing direction, the ray direction normalised (camera -> point), encoded
  with ``n_view_frequencies`` Fourier bands (``gamma_v``; 4 as in IDR);
- ``z``: the geometry network's feature vector at ``x``, its last hidden activation
  (:meth:`dvr_plugin.fields.field.OccupancyTextureField.forward_with_features`); the MLP's first
  layer is its projection.

:class:`ViewDependentField` bundles a geometry network and this head. It follows the field
protocol of :mod:`dvr_plugin.fields.field` (``field(points, latent) -> (values, rgb)``), where
``rgb`` is the colour seen head-on, ``v = -n`` (looking straight at the surface): a view-independent
colour for uses without a camera, e.g. a mesh's vertex colours. :class:`dvr_plugin.renderer.
DVRRenderer` and :class:`dvr_plugin.renderer.FieldVolumetricFunction` recognise it and shade
every surface point with its own ray's direction instead.

Gradients. The normal depends on the parameters both directly and through the surface point,
which moves with them (DVR's implicit gradient on the depth). :meth:`ViewDependentField.shade`
computes ``n`` with ``torch.autograd.grad(..., create_graph=True)`` at the points it is given;
given the surface points ``o + d w`` whose depth carries the implicit gradient, the colour's
derivatives are exact: ``dn/dtheta`` includes the second derivatives of the field along the
point's motion. The price is a double backward through the geometry network at the hit points.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .field import FieldOutput, FourierFeatures, check_integers, field_type_of, relu_mlp

COLOUR_MODELS = ("texture", "view_dependent")


class RenderingNetwork(nn.Module):
    """
    ``colour = sigmoid(MLP([gamma_x(x), h(x), n, gamma_v(v), z]))``: ``n_layers`` hidden layers
    of width ``hidden_size`` with ReLU, then a linear layer to 3 logits.

    Args (keyword-only):
        feature_size: F, the size of the geometry feature vector ``z`` (0: none).
        hidden_size: W, the width of the hidden layers.
        n_layers: the number of hidden layers (>= 1; IDR uses 4).
        n_view_frequencies: Fourier bands of the viewing direction (IDR: 4).
        n_point_frequencies: Fourier bands of the point (IDR: 0, the raw point).
        point_grid: a module mapping `(..., 3)` points to `(..., E)` features with an
            ``out_size`` attribute (E), typically a
            :class:`~dvr_plugin.fields.hash_grid.HashGridEncoding`, whose features of the
            detached point join the head's input (module docstring); ``None`` (the default)
            for none.
    """

    def __init__(
        self,
        *,
        feature_size: int,
        hidden_size: int = 128,
        n_layers: int = 4,
        n_view_frequencies: int = 4,
        n_point_frequencies: int = 0,
        point_grid: nn.Module | None = None,
    ) -> None:
        super().__init__()
        check_integers(1, hidden_size=hidden_size, n_layers=n_layers)
        check_integers(
            0,
            feature_size=feature_size,
            n_view_frequencies=n_view_frequencies,
            n_point_frequencies=n_point_frequencies,
        )
        self.feature_size = feature_size
        self.point_encoding = FourierFeatures(n_frequencies=n_point_frequencies)
        self.view_encoding = FourierFeatures(n_frequencies=n_view_frequencies)
        grid_size = 0
        if point_grid is not None:
            grid_size = getattr(point_grid, "out_size", None)
            if not isinstance(grid_size, int) or grid_size < 1:
                raise ValueError(
                    "point_grid must have an integer out_size >= 1 (its feature size), got "
                    f"{grid_size!r}."
                )
        self.point_grid = point_grid
        in_size = (
            self.point_encoding.out_size
            + grid_size
            + 3
            + self.view_encoding.out_size
            + feature_size
        )
        self.mlp = relu_mlp(in_size=in_size, hidden_size=hidden_size, n_layers=n_layers, out_size=3)

    def forward(
        self,
        points: torch.Tensor,
        normals: torch.Tensor,
        view_directions: torch.Tensor,
        features: torch.Tensor | None,
    ) -> torch.Tensor:
        """
        Args:
            points: `(..., 3)` surface points (world frame).
            normals: `(..., 3)` unit outward normals.
            view_directions: `(..., 3)` unit viewing directions (camera -> point).
            features: `(..., F)` geometry features, or ``None`` when ``feature_size == 0``.

        Returns:
            `(..., 3)` colours in [0, 1].
        """
        inputs = [self.point_encoding(points)]
        if self.point_grid is not None:
            # detached: the texture's spatial derivative must not move the surface
            inputs.append(self.point_grid(points.detach()).to(points.dtype))
        inputs += [normals, self.view_encoding(view_directions)]
        if self.feature_size > 0:
            if features is None or features.shape[-1] != self.feature_size:
                raise ValueError(
                    f"The rendering network expects {self.feature_size} geometry features, got "
                    f"{None if features is None else features.shape[-1]}."
                )
            inputs.append(features.to(points.dtype))
        return torch.sigmoid(self.mlp(torch.cat(inputs, dim=-1)))


class ShadedPoints(NamedTuple):
    """
    What :meth:`ViewDependentField.shade` returns.

    Members:
        values: `(B, P)` the geometry's values (occupancy logits or signed distances).
        rgb: `(B, P, 3)` colours in [0, 1] as seen along the given viewing directions.
        normals: `(B, P, 3)` unit outward normals (differentiable when gradients are on).
    """

    values: torch.Tensor
    rgb: torch.Tensor
    normals: torch.Tensor


class ViewDependentField(nn.Module):
    """
    A geometry network with a view-dependent colour head (module docstring).

    Calling it follows the field protocol: ``field(points, latent) -> FieldOutput(values, rgb)``
    with ``rgb`` the head-on colour (``v = -n``). Every call computes the normal, i.e. a
    backward pass through the geometry network; code that needs the values alone (marching,
    occupancy grids) should evaluate :attr:`geometry`, as :class:`dvr_plugin.renderer.
    DVRRenderer` does.

    Args (keyword-only):
        geometry: the geometry network: a field with ``forward_with_features(points, latent)
            -> (FieldOutput, features)`` (e.g. an :class:`~dvr_plugin.fields.field.
            OccupancyTextureField`, best built with ``rgb=False``: its own colours are unused)
            and a ``field_type`` attribute.
        appearance: the :class:`RenderingNetwork`; its ``feature_size`` must be the geometry's
            feature size.
    """

    def __init__(self, *, geometry: nn.Module, appearance: RenderingNetwork) -> None:
        super().__init__()
        if not callable(getattr(geometry, "forward_with_features", None)):
            raise ValueError(
                "The geometry network must have forward_with_features(points, latent) "
                "(e.g. dvr_plugin.fields.field.OccupancyTextureField)."
            )
        if not isinstance(appearance, RenderingNetwork):
            raise ValueError(
                f"appearance must be a RenderingNetwork, got {type(appearance).__name__}."
            )
        self.geometry = geometry
        self.appearance = appearance
        self.field_type = field_type_of(geometry)

    def forward(self, points: torch.Tensor, latent: torch.Tensor | None = None) -> FieldOutput:
        """
        Args:
            points: `(B, P, 3)` world points.
            latent: `(B, C)` codes for a conditioned geometry network, or ``None``.

        Returns:
            FieldOutput: ``values`` `(B, P)` and ``rgb`` `(B, P, 3)`, the head-on colour.
        """
        shaded = self.shade(points, None, latent)
        return FieldOutput(shaded.values, shaded.rgb)

    def shade(
        self,
        points: torch.Tensor,
        view_directions: torch.Tensor | None,
        latent: torch.Tensor | None = None,
    ) -> ShadedPoints:
        """
        Values, normals and colours at ``points`` seen along ``view_directions``.

        With gradients enabled, the normal is computed with ``create_graph=True``, so the
        colour is differentiable in the parameters and in ``points`` through the normal as well
        (second derivatives of the geometry); pass surface points that carry the implicit
        gradient and the colour's gradient is exact. Without gradients nothing is kept.

        Args:
            points: `(B, P, 3)` world points.
            view_directions: `(B, P, 3)` viewing directions (any length > 0, camera ->
                point), or ``None`` for the head-on view ``v = -n``.
            latent: `(B, C)` codes or ``None``.

        Returns:
            ShadedPoints with `(B, P)` values, `(B, P, 3)` colours and `(B, P, 3)` normals.
        """
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (B, P, 3), got {tuple(points.shape)}.")
        if view_directions is not None and view_directions.shape != points.shape:
            raise ValueError(
                f"view_directions must have the shape of points {tuple(points.shape)}, got "
                f"{tuple(view_directions.shape)}."
            )
        values, normals, features, points = self._geometry_and_normals(points, latent)
        if view_directions is None:
            view = -normals
        else:
            view = view_directions / view_directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        rgb = self.appearance(points, normals, view.to(points.dtype), features)
        return ShadedPoints(values, rgb, normals)

    def _geometry_and_normals(
        self, points: torch.Tensor, latent: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Values `(B, P)`, unit outward normals `(B, P, 3)`, features `(B, P, F)` and the points
        the head should see (``points`` itself, or a detached copy without gradients).
        """
        grad_mode = torch.is_grad_enabled()
        with torch.enable_grad():
            if grad_mode and points.requires_grad:
                at = points  # the gradient w.r.t. these very points: d(grad f)/d(points) kept
            else:
                at = points.detach().requires_grad_(True)
            output, features = self.geometry.forward_with_features(at, latent)
            values = output.values
            if values.dim() == 3:
                values = values[..., 0]
            (gradient,) = torch.autograd.grad(
                values.sum(),
                at,
                create_graph=grad_mode,
                allow_unused=True,
                materialize_grads=True,
            )
        if not grad_mode:
            values, features, at = values.detach(), features.detach(), points.detach()
        # inside is values > level for occupancy (outward = -grad), values < level for an SDF
        outward = -gradient if self.field_type == "occupancy" else gradient
        normals = outward / outward.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return values, normals, features, at


def view_dependent_field_of(field) -> ViewDependentField | None:
    """
    The :class:`ViewDependentField` a renderer was given, or ``None`` for any other field.

    Raises:
        ValueError: for a wrapper around one (e.g. a mixed-precision wrapper): it would hide
            the view dependence, and its colour would silently be the head-on one.
    """
    if isinstance(field, ViewDependentField):
        return field
    if isinstance(getattr(field, "field", None), ViewDependentField):
        raise ValueError(
            f"A {type(field).__name__} wraps a view-dependent field; render the "
            "ViewDependentField itself (mixed precision does not apply to it)."
        )
    return None


def geometry_of(field):
    """
    The network that gives ``field``'s values: the geometry network of a
    :class:`ViewDependentField`, else ``field`` itself. Code that reads values alone (marching,
    occupancy grids, free-space / occupancy / eikonal / mask losses, mesh extraction) should
    evaluate this: the view-dependent field's own call also computes the normal and the colour.
    """
    return field.geometry if isinstance(field, ViewDependentField) else field
