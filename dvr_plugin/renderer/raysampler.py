"""
``SecantRaysampler``: DVR's root finding as a PyTorch3D raysampler.

PyTorch3D's ``ImplicitRenderer`` hands its raysampler the volumetric function, so a raysampler can
find the surface itself and return one sample per ray, at the surface, whose length carries DVR's
implicit gradient. The volumetric function is then evaluated there for colour, and
:class:`dvr_plugin.renderer.raymarcher.SurfaceRaymarcher` turns that into an image::

    cameras -> rays (+ box clipping) -> root finding (no grad) -> implicit gradient -> bundle
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
from pytorch3d.renderer.cameras import CamerasBase
from torch import nn

from ..accel.march_graphs import MarchGraphs
from ..accel.occupancy_grid import OccupancyGrid
from ..accel.refine_graphs import RefinementGraphs
from ..fields.field import UNIT_CUBE_BOUNDS, check_field_type
from ..surface.precision import REFINE_PRECISIONS, check_precision
from ..surface.query import FieldQuery, VolumetricFunctionQuery
from ..surface.root_finding import find_surface_of_rays
from .implicit_gradient import attach_implicit_gradient
from .rays import (
    check_camera_batch,
    intersect_box,
    ndc_grid,
    pixel_count,
    rays_from_cameras,
)


class SurfaceRayBundle(NamedTuple):
    """
    A PyTorch3D ``RayBundle`` with one sample per ray, at the surface, plus per-ray hit info.
    The first four fields mean what they mean in ``pytorch3d.renderer.RayBundle``, so
    ``ray_bundle_to_ray_points`` and any volumetric function accept it.

    Members:
        origins: `(B, ..., 3)` ray origins (on the camera's z = 0 plane).
        directions: `(B, ..., 3)` unnormalised directions; one length unit = one unit of z-depth.
        lengths: `(B, ..., 1)` z-depth of the surface, carrying the implicit gradient; where a
            ray has no surface it is the box exit (no crossing), the box entry (started inside),
            or the ray's closest approach to the box centre (missed the box).
        xys: `(B, ..., 2)` NDC coordinates of the rays' pixels.
        hit: `(B, ...)` bool, a surface was found.
        started_inside: `(B, ...)` bool, the ray entered the box already inside the object.
        missed_box: `(B, ...)` bool, the ray does not cross the bounding box.
        normals: `(B, ..., 3)` unit outward normals at the surface (zero where no hit), or None.
        features: `(B, ..., 3)` colours at the surface with their gradient (white where no
            hit), when requested with ``return_features=True`` and available; else None.
    """

    origins: torch.Tensor
    directions: torch.Tensor
    lengths: torch.Tensor
    xys: torch.Tensor
    hit: torch.Tensor
    started_inside: torch.Tensor
    missed_box: torch.Tensor
    normals: torch.Tensor | None = None
    features: torch.Tensor | None = None


class FoundSurfaces(NamedTuple):
    """
    The root finder's answer before the implicit gradient is attached
    (:meth:`SecantRaysampler.find_surfaces`); ``N = B x prod(S)`` rays, ``S`` the spatial shape.
    Everything that depends on how many rays hit (host synchronisations, data-dependent
    shapes) happens before it; :meth:`SecantRaysampler.attach` with ``dense=True`` works in
    fixed shapes from here.

    Members:
        origins: `(N, 3)` ray origins, world units (carrying camera gradients, if any).
        directions: `(N, 3)` unnormalised directions (one length unit = one unit of z-depth).
        depths: `(N,)` z-depth of the surface found (no gradient; where a ray has no surface,
            as in :class:`SurfaceRayBundle`'s ``lengths``).
        hit, started_inside, missed_box: `(N,)` bool, as in :class:`SurfaceRayBundle`.
        xys: `(B, *S, 2)` NDC coordinates of the rays' pixels.
        query: the inside function the surface was searched with (field, level, codes).
    """

    origins: torch.Tensor
    directions: torch.Tensor
    depths: torch.Tensor
    hit: torch.Tensor
    started_inside: torch.Tensor
    missed_box: torch.Tensor
    xys: torch.Tensor
    query: object


class SecantRaysampler(nn.Module):
    """
    Casts rays from PyTorch3D cameras and finds where each first enters the object.

    For every ray, the part inside the bounding box is sampled at ``n_steps`` equally spaced
    depths under ``torch.no_grad()`` (in chunks of at most ``chunk_size`` points), the first
    free -> occupied interval is refined by ``n_secant_steps`` bracketing secant steps
    (:mod:`dvr_plugin.surface.root_finding`), and one more evaluation at the surface attaches the
    exact implicit gradient of the depth with respect to the field's parameters, a latent code and
    the rays (hence the camera parameters) (:mod:`dvr_plugin.renderer.implicit_gradient`).

    Which rays (first match wins): the ``xys`` passed to ``forward`` (NDC, `(B, ..., 2)`);
    else ``n_rays_per_image`` random positions inside the image; else the full
    ``image_height x image_width`` pixel grid, laid out like ``MeshRenderer`` images.

    The surface is queried through either a field (``forward(field=...)``, the protocol of
    :mod:`dvr_plugin.fields.field`) or a PyTorch3D volumetric function
    (``forward(volumetric_function=...)``, as ``ImplicitRenderer`` passes it), whose
    ``densities[..., 0]`` are read as the field values.

    Args (keyword-only):
        image_width, image_height: the pixel grid (also the NDC range for random rays).
        n_rays_per_image: random rays per camera instead of the full grid.
        n_steps: marching samples per ray (>= 2).
        n_secant_steps: refinement steps.
        bounds: ``(min_xyz, max_xyz)`` of the box searched (default: the padded unit cube
            ``[-0.55, 0.55]^3``).
        min_depth: nothing nearer than this z-depth is searched.
        level: the surface level. Default: 0 for fields (logit 0 = occupancy 0.5, or signed
            distance 0); for volumetric functions their ``level`` attribute if they have one,
            else 0.5 (densities read as occupancy probabilities).
        field_type: ``"occupancy"`` (inside above the level) or ``"sdf"`` (inside below);
            default: the ``field_type`` attribute of the field or volumetric function, else
            ``"occupancy"``.
        chunk_size: the most points per field call while marching; ``"auto"`` (default):
            2^16 without gradients (rendering) and 2^15 with them (training, where the
            march's peak memory then stays under that of the step's graph, at any step
            count); ``None`` = all at once.
        compute_normals: return outward unit normals in the bundle.
        differentiable_normals: keep the graph of the normals (for normal losses).
        grad_eps: the smallest magnitude of the implicit-gradient denominator.
        check_finite: raise ``ValueError`` if the field returns NaN / inf.
        march_precision: ``"auto"`` (default: TF32 on CUDA, float32 elsewhere),
            ``"float32"``, ``"tf32"`` or ``"bfloat16"``: the precision of the march's matrix
            products on CUDA (the bracket ends, the secant steps and everything with gradients
            stay in full precision). TF32 agrees with the float32 march on >= 99.99% of the
            hit flags of the benchmark scenes (docs/performance.md).
        refine_precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"``: the precision
            of the secant steps on CUDA; their result is finished by two full-precision
            evaluations (a Newton step and a secant).
        early_exit: march in blocks of ``block_size`` steps and stop each ray at its first
            sample inside (exact: the same bracket as marching every sample).
        block_size: the least samples per ray per march block (occupied samples with a
            grid); default :func:`dvr_plugin.surface.root_finding.default_block_size`.
        occupancy_grid: an :class:`dvr_plugin.accel.occupancy_grid.OccupancyGrid` over the scene:
            samples in cells it marks empty are skipped and count as outside (refresh it from
            the field; during training every few steps). ``None`` (default) skips nothing.
        cuda_graphs: replay the secant steps as CUDA graphs (one launch instead of ~100
            kernels per step; :mod:`dvr_plugin.accel.refine_graphs`) and, with an occupancy grid,
            the march's rounds in fixed shapes (one launch per round instead of ~40;
            :mod:`dvr_plugin.accel.march_graphs`). Needs a field that is a pure function of its
            inputs, parameters and buffers; CUDA only (ignored elsewhere).
    """

    def __init__(
        self,
        *,
        image_width: int | None = None,
        image_height: int | None = None,
        n_rays_per_image: int | None = None,
        n_steps: int = 128,
        n_secant_steps: int = 8,
        bounds: tuple[Sequence[float], Sequence[float]] = UNIT_CUBE_BOUNDS,
        min_depth: float = 0.0,
        level: float | None = None,
        field_type: str | None = None,
        chunk_size: int | str | None = "auto",
        compute_normals: bool = True,
        differentiable_normals: bool = False,
        grad_eps: float = 1e-4,
        check_finite: bool = True,
        march_precision: str = "auto",
        refine_precision: str = "float32",
        early_exit: bool = True,
        block_size: int | None = None,
        occupancy_grid: OccupancyGrid | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        if (image_width is None) != (image_height is None):
            raise ValueError("Give both image_width and image_height, or neither.")
        if image_width is not None:
            image_width = pixel_count(image_width, "image_width")
            image_height = pixel_count(image_height, "image_height")
        if n_rays_per_image is not None:
            n_rays_per_image = _ray_count(n_rays_per_image)
        _check_steps(n_steps, n_secant_steps)
        if field_type is not None:
            check_field_type(field_type)
        if chunk_size is not None and chunk_size != "auto":
            if not isinstance(chunk_size, int) or chunk_size < 1:
                raise ValueError(
                    f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}."
                )
        box = torch.tensor(bounds, dtype=torch.float32)
        if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
            raise ValueError(f"bounds must be (min_xyz, max_xyz) with min < max, got {bounds}.")
        check_precision(march_precision, name="march_precision")
        check_precision(refine_precision, name="refine_precision", choices=REFINE_PRECISIONS)
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}.")
        if occupancy_grid is not None and not isinstance(occupancy_grid, OccupancyGrid):
            raise ValueError(
                "occupancy_grid must be a dvr_plugin.accel.occupancy_grid.OccupancyGrid or None, "
                f"got {type(occupancy_grid).__name__}."
            )
        self.image_width = image_width
        self.image_height = image_height
        self.n_rays_per_image = n_rays_per_image
        self.n_steps = n_steps
        self.n_secant_steps = n_secant_steps
        self.register_buffer("bounds", box, persistent=False)
        self.min_depth = min_depth
        self.level = level
        self.field_type = field_type
        self.chunk_size = chunk_size
        self.compute_normals = compute_normals
        self.differentiable_normals = differentiable_normals
        self.grad_eps = grad_eps
        self.check_finite = check_finite
        self.march_precision = march_precision
        self.refine_precision = refine_precision
        self.early_exit = early_exit
        self.block_size = block_size
        self.occupancy_grid = occupancy_grid
        self.cuda_graphs = cuda_graphs
        self._refine_graphs = RefinementGraphs() if cuda_graphs else None
        self._march_graphs = MarchGraphs() if cuda_graphs else None

    def forward(self, *, return_features: bool = False, **search) -> SurfaceRayBundle:
        """
        ``attach(find_surfaces(**search))``: the search, then the implicit gradient.

        Args:
            return_features: with gradients, a field and no normals, also return the colours
                at the surface from the implicit-gradient evaluation (one field evaluation at
                the surface instead of two; :mod:`dvr_plugin.renderer.implicit_gradient`).
            search: the keyword arguments of :meth:`find_surfaces` (``cameras``, ``field`` or
                ``volumetric_function``, ``latent``, ``xys``, ``n_steps``,
                ``n_rays_per_image``, and what the volumetric function takes).

        Returns:
            SurfaceRayBundle, spatial shape `(B, H, W)`, `(B, n_rays_per_image)` or that of
            ``xys``.
        """
        return self.attach(self.find_surfaces(**search), return_features=return_features)

    def find_surfaces(
        self,
        *,
        cameras: CamerasBase,
        volumetric_function=None,
        field=None,
        latent: torch.Tensor | None = None,
        xys: torch.Tensor | None = None,
        n_steps: int | None = None,
        n_rays_per_image: int | None = None,
        **kwargs,
    ) -> FoundSurfaces:
        """
        The first half of :meth:`forward`: rays, box clipping and root finding (no gradient
        flows through the search).

        Args:
            cameras: ``B`` cameras (any ``CamerasBase``).
            volumetric_function: a PyTorch3D volumetric function (the ``ImplicitRenderer``
                route); ignored when ``field`` is given.
            field: a field following :mod:`dvr_plugin.fields.field`'s protocol.
            latent: `(B, C)` codes for a conditioned field.
            xys: `(B, ..., 2)` NDC ray positions (overrides the constructor's choice).
            n_steps: marching samples for this call (e.g. from a step schedule).
            n_rays_per_image: random rays for this call.
            kwargs: passed on to the volumetric function.

        Returns:
            FoundSurfaces of the ``N = B x prod(S)`` rays.
        """
        n_steps = self.n_steps if n_steps is None else n_steps
        _check_steps(n_steps, self.n_secant_steps)
        check_camera_batch(cameras)  # finite parameters: checked with the rays
        check_field_matches_cameras(field if field is not None else volumetric_function, cameras)
        if latent is not None:
            _check_latent_device(latent, cameras)
        xys = self._ray_positions(cameras, xys, n_rays_per_image)
        batch = xys.shape[0]
        origins, directions = rays_from_cameras(cameras, xys)
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        n_rays = origins.shape[0]
        query = self._query(field, volumetric_function, latent, batch, n_rays, cameras, kwargs)

        bounds = self.bounds.to(device=origins.device, dtype=origins.dtype)
        near, far, missed = intersect_box(
            origins.detach(), directions.detach(), bounds[0], bounds[1], min_depth=self.min_depth
        )
        closest = _closest_approach(origins.detach(), directions.detach(), bounds.mean(0))
        closest = closest.clamp(min=self.min_depth)
        near = torch.where(missed, closest, near)
        far = torch.where(missed, closest, far)

        depth, hit, started_inside = find_surface_of_rays(
            query,
            origins,
            directions,
            near,
            far,
            missed,
            n_steps=n_steps,
            n_secant_steps=self.n_secant_steps,
            chunk_size=self._march_chunk_size(),
            check_finite=self.check_finite,
            march_precision=self.march_precision,
            refine_precision=self.refine_precision,
            early_exit=self.early_exit,
            block_size=self.block_size,
            occupancy_grid=self.occupancy_grid,
            refine_graphs=self._refine_graphs,
            march_graphs=self._march_graphs,
        )
        # a ray that starts inside and finds no crossing stops at its first sample
        depth = torch.where(started_inside & ~hit, near, depth)
        return FoundSurfaces(
            origins=origins,
            directions=directions,
            depths=depth.detach(),
            hit=hit,
            started_inside=started_inside,
            missed_box=missed,
            xys=xys,
            query=query,
        )

    def attach(
        self, found: FoundSurfaces, *, return_features: bool = False, dense: bool = False
    ) -> SurfaceRayBundle:
        """
        The second half of :meth:`forward`: the implicit gradient (and normals, colours) at
        the surfaces that :meth:`find_surfaces` found.

        Args:
            found: what :meth:`find_surfaces` returned.
            return_features: as for :meth:`forward`.
            dense: evaluate every ray, hit or not, and mask the misses: the same values and
                gradients in shapes that do not depend on the hit count, with no host
                synchronisation (what :class:`dvr_plugin.renderer.step_graph.GraphedTrainStep`
                records).

        Returns:
            SurfaceRayBundle, spatial shape that of ``found.xys`` without its last axis.
        """
        geometry = attach_implicit_gradient(
            found.query,
            found.origins,
            found.directions,
            found.depths,
            found.hit,
            compute_normals=self.compute_normals,
            differentiable_normals=self.differentiable_normals,
            eps=self.grad_eps,
            return_features=return_features,
            dense=dense,
        )
        shape = tuple(found.xys.shape[:-1])
        features = geometry.features
        return SurfaceRayBundle(
            origins=found.origins.reshape(*shape, 3),
            directions=found.directions.reshape(*shape, 3),
            lengths=geometry.depth.reshape(*shape, 1),
            xys=found.xys,
            hit=found.hit.reshape(shape),
            started_inside=found.started_inside.reshape(shape),
            missed_box=found.missed_box.reshape(shape),
            normals=None if geometry.normals is None else geometry.normals.reshape(*shape, 3),
            features=None if features is None else features.reshape(*shape, 3),
        )

    def _march_chunk_size(self) -> int | None:
        if self.chunk_size != "auto":
            return self.chunk_size
        return 2**15 if torch.is_grad_enabled() else 2**16

    def _ray_positions(
        self, cameras: CamerasBase, xys: torch.Tensor | None, n_rays_per_image: int | None
    ) -> torch.Tensor:
        batch = len(cameras)
        device = cameras.device
        dtype = cameras.R.dtype
        if xys is not None:
            if not isinstance(xys, torch.Tensor) or xys.dim() < 2 or xys.shape[-1] != 2:
                raise ValueError(
                    f"xys must be a tensor of shape (B, ..., 2), got {getattr(xys, 'shape', xys)}."
                )
            if xys.shape[0] != batch:
                raise ValueError(
                    f"Got {batch} cameras for {xys.shape[0]} sets of ray positions (xys)."
                )
            if not bool(torch.isfinite(xys).all()):
                raise ValueError("xys holds non-finite values.")
            return xys.to(device=device, dtype=dtype)
        n_random = n_rays_per_image if n_rays_per_image is not None else self.n_rays_per_image
        if n_random is not None:
            n_random = _ray_count(n_random)
            if self.image_height is not None:
                height, width = self.image_height, self.image_width
                half = torch.tensor(
                    [width / min(height, width), height / min(height, width)],
                    device=device,
                    dtype=dtype,
                )
            else:
                half = torch.ones(2, device=device, dtype=dtype)
            unit = torch.rand(batch, n_random, 2, device=device, dtype=dtype)
            return (2.0 * unit - 1.0) * half
        if self.image_height is None:
            raise ValueError(
                "SecantRaysampler needs image_width/image_height, n_rays_per_image or xys."
            )
        grid = ndc_grid((self.image_height, self.image_width), device=device, dtype=dtype)
        return grid[None].expand(batch, -1, -1, -1)

    def _query(self, field, volumetric_function, latent, batch, n_rays, cameras, kwargs):
        if field is not None:
            ray_latent = None
            if latent is not None:
                if latent.dim() != 2 or latent.shape[0] != batch:
                    raise ValueError(
                        f"latent must have shape (B={batch}, C), got {tuple(latent.shape)}."
                    )
                if not bool(torch.isfinite(latent).all()):
                    raise ValueError("latent holds non-finite values.")
                ray_latent = latent.repeat_interleave(n_rays // batch, dim=0)
            return FieldQuery(
                field=field,
                level=0.0 if self.level is None else self.level,
                field_type=self.field_type,
                latent=ray_latent,
            )
        if volumetric_function is None:
            raise ValueError("SecantRaysampler needs a field or a volumetric_function.")
        default_level = getattr(volumetric_function, "level", 0.5)
        default_type = getattr(volumetric_function, "field_type", "occupancy")
        return VolumetricFunctionQuery(
            volumetric_function=volumetric_function,
            level=default_level if self.level is None else self.level,
            field_type=self.field_type or default_type,
            kwargs={"cameras": cameras, **kwargs},
        )


def check_field_matches_cameras(field, cameras: CamerasBase) -> None:
    """
    Raise ``ValueError`` when a field (or a volumetric function that is an ``nn.Module``)
    keeps its parameters in another dtype or on another device than the cameras. A field
    without parameters (e.g. an analytic function) is not checked.
    """
    parameter = _first_floating_parameter(field)
    if parameter is None:
        return
    camera_dtype = cameras.R.dtype
    if parameter.dtype != camera_dtype:
        raise ValueError(
            f"The field's parameters are {_dtype_name(parameter.dtype)} but the cameras are "
            f"{_dtype_name(camera_dtype)}: give both one dtype (field.to(torch."
            f"{_dtype_name(camera_dtype)}), or cameras built from {_dtype_name(parameter.dtype)} "
            "tensors)."
        )
    if not _same_device(parameter.device, cameras.device):
        raise ValueError(
            f"The field's parameters are on {parameter.device} but the cameras are on "
            f"{cameras.device}; move one to the other (field.to(device) / cameras.to(device))."
        )


def _first_floating_parameter(field) -> torch.Tensor | None:
    if not isinstance(field, nn.Module):
        return None
    for parameter in field.parameters():
        if parameter.is_floating_point():
            return parameter
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Devices equal up to an unset CUDA index (``cuda`` is the current CUDA device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        if a.type != "cuda":
            return True
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (
            b.index if b.index is not None else current
        )
    return a.index == b.index


def _check_latent_device(latent: torch.Tensor, cameras: CamerasBase) -> None:
    if isinstance(latent, torch.Tensor) and not _same_device(latent.device, cameras.device):
        raise ValueError(
            f"The latent codes are on {latent.device} but the cameras are on {cameras.device}."
        )


def _ray_count(value) -> int:
    """``n_rays_per_image`` as a positive ``int`` (``ValueError`` otherwise)."""
    if isinstance(value, bool):
        raise ValueError(f"n_rays_per_image must be a positive integer, got {value!r}.")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"n_rays_per_image must be a positive integer, got {value!r}.") from None
    if count < 1:
        raise ValueError(f"n_rays_per_image must be positive, got {count}.")
    return count


def _check_steps(n_steps: int, n_secant_steps: int) -> None:
    if not isinstance(n_steps, int) or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}.")
    if not isinstance(n_secant_steps, int) or n_secant_steps < 0:
        raise ValueError(f"n_secant_steps must be an integer >= 0, got {n_secant_steps!r}.")


def _closest_approach(
    origins: torch.Tensor, directions: torch.Tensor, centre: torch.Tensor
) -> torch.Tensor:
    """`(M,)` length of each ray's closest point to ``centre``."""
    return ((centre - origins) * directions).sum(-1) / (directions * directions).sum(-1).clamp(
        min=1e-12
    )
