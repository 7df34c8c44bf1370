"""
``DVRRenderer``: cameras + field -> image, mask, depth, normals, with DVR's implicit gradient.

It is the bundle of :class:`~dvr_plugin.renderer.raysampler.SecantRaysampler` (rays, root finding,
implicit gradient), one field evaluation for colour at the surface points, and
:class:`~dvr_plugin.renderer.raymarcher.SurfaceRaymarcher`. The same pieces also plug into
PyTorch3D's own ``ImplicitRenderer``; :class:`FieldVolumetricFunction` adapts a field for that
route.

A :class:`~dvr_plugin.fields.appearance.ViewDependentField` (a geometry network with a
view-dependent colour head) is recognised by both: the root finder marches its geometry network
alone, and the head shades each hit with its own ray's direction, its normal computed at the surface
point that carries the implicit gradient (exact colour gradients;
:mod:`dvr_plugin.fields.appearance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..fields.appearance import ViewDependentField, geometry_of, view_dependent_field_of
from ..fields.field import evaluate_field, field_type_of
from .raymarcher import SurfaceRaymarcher
from .rays import ImageSize, image_size_hw
from .raysampler import FoundSurfaces, SecantRaysampler, SurfaceRayBundle


@dataclass
class DVRRenderOutput:
    """
    What :class:`DVRRenderer` returns; ``S`` is the spatial shape of the rays: `(H, W)` for a
    full image, `(R,)` for random rays, or that of the ``xys`` passed in.

    Members:
        images: `(B, *S, 3)` colour composited over the background.
        masks: `(B, *S)` alpha: 1 where the ray hit the surface, else 0.
        depths: `(B, *S)` z-depth of the surface (``background_depth`` elsewhere); carries the
            implicit gradient.
        normals: `(B, *S, 3)` world-space outward unit normals (zero elsewhere), or ``None``.
        surface_points: `(B, *S, 3)` ``origin + depth * direction``, with gradient.
        ray_bundle: the raysampler's bundle (hit, started_inside, missed_box per ray, xys).
    """

    images: torch.Tensor
    masks: torch.Tensor
    depths: torch.Tensor
    normals: torch.Tensor | None
    surface_points: torch.Tensor
    ray_bundle: SurfaceRayBundle

    @property
    def hit(self) -> torch.Tensor:
        """`(B, *S)` bool, the ray found a surface."""
        return self.ray_bundle.hit

    @property
    def rgba(self) -> torch.Tensor:
        """`(B, *S, 4)` colour and alpha."""
        return torch.cat([self.images, self.masks[..., None]], dim=-1)


class FieldVolumetricFunction(nn.Module):
    """
    A field seen as a PyTorch3D volumetric function, for ``ImplicitRenderer``.

    ``densities`` are occupancy probabilities (``sigmoid`` of the logits, surface at 0.5) for
    occupancy fields, or the signed distances (surface at 0) for SDF fields; ``features`` are
    the field's RGB (ones for a geometry-only field). ``SecantRaysampler`` reads the matching
    ``level`` and ``field_type`` from this object.

    For a :class:`~dvr_plugin.fields.appearance.ViewDependentField` the features are the head's
    colour of every sample seen along its ray's direction, with exact gradients through the normal.
    That needs the normal at every sample the function is asked for, including the root
    finder's march (a backward pass through the geometry network per call), unless the caller
    passes ``densities_only=True``: this route works, but :class:`DVRRenderer`, which marches
    the geometry alone, is the fast one.

    Args (keyword-only):
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol.
    """

    def __init__(self, *, field) -> None:
        super().__init__()
        self.field = field
        self.field_type = field_type_of(field)
        self.level = 0.5 if self.field_type == "occupancy" else 0.0

    def forward(
        self,
        ray_bundle,
        latent: torch.Tensor | None = None,
        densities_only: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            ray_bundle: with ``origins`` `(B, ..., 3)`, ``directions`` `(B, ..., 3)`,
                ``lengths`` `(B, ..., n)`.
            latent: `(B, C)` codes or ``None``.
            densities_only: the caller reads the densities alone (e.g. a root finder): a
                view-dependent field then evaluates its geometry network only, and the
                features are ones.

        Returns:
            densities `(B, ..., n, 1)` and features `(B, ..., n, 3)`.
        """
        points = ray_bundle.origins[..., None, :] + (
            ray_bundle.lengths[..., None] * ray_bundle.directions[..., None, :]
        )
        shape = points.shape[:-1]
        flat = points.reshape(shape[0], -1, 3)
        model = view_dependent_field_of(self.field)
        if model is not None and densities_only:
            values, rgb = evaluate_field(model.geometry, flat, latent).values, torch.ones_like(flat)
        elif model is not None:
            view = ray_bundle.directions[..., None, :].expand(points.shape).reshape(flat.shape)
            values, rgb, _ = model.shade(flat, view, latent)
        else:
            values, rgb = evaluate_field(self.field, flat, latent)
            rgb = rgb if rgb is not None else torch.ones_like(flat)
        values = torch.sigmoid(values) if self.field_type == "occupancy" else values
        return values.reshape(*shape, 1), rgb.reshape(*shape, 3)


class DVRRenderer(nn.Module):
    """
    Renders a field through PyTorch3D cameras with DVR.

    Example::

        renderer = DVRRenderer(
            field=OccupancyTextureField(hidden_size=128),
            raysampler=SecantRaysampler(image_width=128, image_height=128, n_steps=64),
        )
        out = renderer(cameras)          # out.images (B, 128, 128, 3), out.depths, ...

    Args (keyword-only):
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol (an ``nn.Module`` field
            is registered as a submodule, so its parameters belong to the renderer).
        raysampler: the :class:`SecantRaysampler` (rays, root finding, implicit gradient).
        background_color: RGB (or one value) behind the object.
        background_depth: depth reported where no surface was hit.
        chunk_size: colour evaluation chunk (rays) when no gradient is needed.
        check_finite: raise ``ValueError`` when the field returns a non-finite colour at a hit
            (one host synchronisation per call; a training loop that already checks its loss
            for finiteness may turn it off).
    """

    def __init__(
        self,
        *,
        field,
        raysampler: SecantRaysampler,
        background_color: float | Sequence[float] = 0.0,
        background_depth: float = 0.0,
        chunk_size: int = 2**16,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not callable(field):
            raise ValueError(
                "field must be callable (see dvr_plugin.fields.field for the protocol)."
            )
        self.field = field
        self.raysampler = raysampler
        self.raymarcher = SurfaceRaymarcher(
            background_color=background_color,
            return_depth=True,
            return_normals=raysampler.compute_normals,
            background_depth=background_depth,
            check_finite=check_finite,
        )
        self.chunk_size = chunk_size

    @classmethod
    def for_images(
        cls,
        *,
        field,
        image_size: ImageSize,
        background_color: float | Sequence[float] = 0.0,
        check_finite: bool = True,
        **sampler_options: Any,
    ) -> DVRRenderer:
        """
        A renderer of full images: a :class:`SecantRaysampler` over the ``image_size`` pixel
        grid.

        Example::

            renderer = DVRRenderer.for_images(field=field, image_size=(96, 128), n_steps=64)
            out = renderer(cameras)          # out.images (B, 96, 128, 3), out.depths (B, 96, 128)

        Args (keyword-only):
            field: as for the constructor.
            image_size: ``(H, W)`` or an int (square images).
            background_color, check_finite: as for the constructor.
            **sampler_options: the raysampler's other keyword arguments (``n_steps``,
                ``n_secant_steps``, ``compute_normals``, ``occupancy_grid``, ...).

        Returns:
            The renderer; its outputs are `(B, H, W, ...)`.
        """
        height, width = image_size_hw(image_size)
        raysampler = SecantRaysampler(image_width=width, image_height=height, **sampler_options)
        return cls(
            field=field,
            raysampler=raysampler,
            background_color=background_color,
            check_finite=check_finite,
        )

    def forward(
        self,
        cameras,
        *,
        latent: torch.Tensor | None = None,
        xys: torch.Tensor | None = None,
        n_steps: int | None = None,
        n_rays_per_image: int | None = None,
    ) -> DVRRenderOutput:
        """
        Args:
            cameras: ``B`` PyTorch3D cameras.
            latent: `(B, C)` codes for a conditioned field.
            xys: `(B, ..., 2)` NDC ray positions (instead of the raysampler's grid / random).
            n_steps: marching samples for this call.
            n_rays_per_image: random rays per camera for this call.

        Returns:
            DVRRenderOutput.
        """
        found = self.raysampler.find_surfaces(
            cameras=cameras,
            field=geometry_of(self.field),
            latent=latent,
            xys=xys,
            n_steps=n_steps,
            n_rays_per_image=n_rays_per_image,
        )
        return self.render_surfaces(found, latent=latent)

    def render_surfaces(
        self, found: FoundSurfaces, *, latent: torch.Tensor | None = None, dense: bool = False
    ) -> DVRRenderOutput:
        """
        The second half of :meth:`forward`: implicit gradient, colour and compositing at the
        surfaces of ``self.raysampler.find_surfaces(...)`` (called with this renderer's
        geometry field, ``geometry_of(self.field)``).

        Args:
            found: the raysampler's :class:`~dvr_plugin.renderer.raysampler.FoundSurfaces`.
            latent: `(B, C)` codes, the ones the surfaces were found with.
            dense: evaluate every ray, hit or not, and mask the misses (the same images,
                depths and gradients in shapes that do not depend on the hit count, with no
                host synchronisation: what a recorded CUDA graph needs). Needs
                ``check_finite=False`` (the check reads a flag on the host).

        Returns:
            DVRRenderOutput.
        """
        if dense and self.raymarcher.check_finite:
            raise ValueError(
                "render_surfaces(dense=True) needs a DVRRenderer built with check_finite=False "
                "(the finiteness check synchronises with the host)."
            )
        model = view_dependent_field_of(self.field)
        bundle = self.raysampler.attach(found, return_features=True, dense=dense)
        points = bundle.origins + bundle.lengths * bundle.directions
        # the colour from the implicit-gradient evaluation where the raysampler had it
        rgb = bundle.features
        if model is not None:
            rgb = self._view_dependent_colour(
                model, points, bundle.directions, latent, bundle.hit, dense
            )
        elif rgb is None:
            rgb = self._colour(points, latent, bundle.hit, dense)
        channels = self.raymarcher(
            rays_densities=bundle.lengths[..., None],
            rays_features=rgb[..., None, :],
            ray_bundle=bundle,
        )
        normals = channels[..., 5:8] if self.raymarcher.return_normals else None
        return DVRRenderOutput(
            images=channels[..., :3],
            masks=channels[..., 3],
            depths=channels[..., 4],
            normals=normals,
            surface_points=points,
            ray_bundle=bundle,
        )

    def _colour(
        self,
        points: torch.Tensor,
        latent: torch.Tensor | None,
        hit: torch.Tensor,
        dense: bool = False,
    ) -> torch.Tensor:
        """
        `(B, ..., 3)` colours at `(B, ..., 3)` surface points (white without a texture head).
        Only the rays that ``hit`` `(B, ...)` are evaluated (the others are background in the
        image whatever their colour, and get no gradient from it), or every ray with the
        misses masked (``dense``): with gradients all in one call (a few kernels for a
        training batch), without them in chunks.
        """
        batch = points.shape[0]
        flat = points.reshape(batch, -1, 3)
        hits = hit.reshape(batch, -1)
        if torch.is_grad_enabled():
            images, rows = _rays_to_shade(hits, dense)
            code = None if latent is None else latent[images]
            # one ray per row, with its image's code
            colour = evaluate_field(self.field, flat[images, rows][:, None], code).rgb
            if colour is None:
                return torch.ones_like(points.detach())
            return _white_except(flat, images, rows, colour[:, 0], hits, dense).reshape(
                points.shape
            )
        rgb = torch.ones_like(flat)
        for b in range(batch):
            rows = torch.nonzero(hits[b], as_tuple=True)[0]
            code = None if latent is None else latent[b : b + 1]
            for i in range(0, rows.shape[0], self.chunk_size):
                part = rows[i : i + self.chunk_size]
                colour = evaluate_field(self.field, flat[b : b + 1, part], code).rgb
                if colour is None:
                    break
                rgb[b, part] = colour[0].to(rgb.dtype)
        return rgb.reshape(points.shape)

    def _view_dependent_colour(
        self,
        model: ViewDependentField,
        points: torch.Tensor,
        directions: torch.Tensor,
        latent: torch.Tensor | None,
        hit: torch.Tensor,
        dense: bool = False,
    ) -> torch.Tensor:
        """
        `(B, ..., 3)` colours of the view-dependent head at `(B, ..., 3)` surface points seen
        along their rays' `(B, ..., 3)` directions (white where a ray missed). With gradients,
        the hits (every ray with the misses masked, ``dense``) are shaded in one call and
        ``points`` carry the implicit gradient, so the normal's derivative through the moving
        surface point enters the backward pass
        (:meth:`~dvr_plugin.fields.appearance.ViewDependentField.shade`); without, in chunks.
        """
        batch = points.shape[0]
        flat = points.reshape(batch, -1, 3)
        flat_directions = directions.reshape(batch, -1, 3)
        hits = hit.reshape(batch, -1)
        if torch.is_grad_enabled():
            images, rows = _rays_to_shade(hits, dense)
            code = None if latent is None else latent[images]
            # one ray per row, with its image's code
            shaded = model.shade(
                flat[images, rows][:, None], flat_directions[images, rows][:, None], code
            )
            return _white_except(flat, images, rows, shaded.rgb[:, 0], hits, dense).reshape(
                points.shape
            )
        rgb = torch.ones_like(flat)
        for b in range(batch):
            rows = torch.nonzero(hits[b], as_tuple=True)[0]
            code = None if latent is None else latent[b : b + 1]
            for i in range(0, rows.shape[0], self.chunk_size):
                part = rows[i : i + self.chunk_size]
                shaded = model.shade(flat[b : b + 1, part], flat_directions[b : b + 1, part], code)
                rgb[b, part] = shaded.rgb[0].to(rgb.dtype)
        return rgb.reshape(points.shape)


def _white_except(
    flat: torch.Tensor,
    images: torch.Tensor,
    rows: torch.Tensor,
    colour: torch.Tensor,
    hits: torch.Tensor,
    dense: bool,
) -> torch.Tensor:
    """`(B, R, 3)` white like ``flat`` with the `(K, 3)` ``colour`` of the shaded rays
    ``(images, rows)`` put in place; after a dense evaluation the misses among `(B, R)`
    ``hits`` are white again."""
    white = torch.ones_like(flat.detach())
    rgb = white.index_put((images, rows), colour.to(white.dtype))
    return torch.where(hits[..., None], rgb, 1.0) if dense else rgb


def _rays_to_shade(hits: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and ray indices `(K,)` of the rays to evaluate among `(B, R)` ``hits``: the hits,
    or every ray (``dense``: a shape independent of the hit count)."""
    if not dense:
        return torch.nonzero(hits, as_tuple=True)
    batch, n_rays = hits.shape
    images = torch.arange(batch, device=hits.device).repeat_interleave(n_rays)
    rows = torch.arange(n_rays, device=hits.device).repeat(batch)
    return images, rows
