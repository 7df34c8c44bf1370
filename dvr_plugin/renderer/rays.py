"""
Rays from PyTorch3D cameras, and their intersection with a bounding box.

Conventions (the same as PyTorch3D's ``NDCMultinomialRaysampler`` with ``unit_directions=False``):

- Pixel coordinates ``(u, v)`` are continuous (column, row) positions in an image of
  ``(H, W)`` pixels; the centre of pixel ``(row i, column j)`` is ``(j + 0.5, i + 0.5)``.
- NDC: ``x = (W - 2u) / S`` and ``y = (H - 2v) / S`` with ``S = min(H, W)``, so +X points left,
  +Y up, and the shorter image side spans [-1, 1]; grids built here line up pixel for pixel with
  ``MeshRenderer`` output.
- A ray is ``origin + length * direction`` where ``origin`` lies on the camera's z = 0 plane
  (the camera centre for perspective cameras) and ``direction`` moves one unit of camera-space z,
  so ``length`` is the z-depth, the quantity of ``MeshRasterizer``'s ``zbuf``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Union

import torch
from pytorch3d.renderer.cameras import (
    CamerasBase,
    FoVOrthographicCameras,
    FoVPerspectiveCameras,
    OrthographicCameras,
    PerspectiveCameras,
)

ImageSize = Union[int, Sequence[int]]

def pixel_count(value, name: str) -> int:
    """
    ``value`` as a positive number of pixels: an ``int`` (or NumPy / 0-dim torch integer);
    ``ValueError`` naming ``name`` for anything else (``64.0``, ``64.5``, ``True``, ``0``).
    """
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer number of pixels, got {value!r}.")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer number of pixels, got {value!r} "
            f"({type(value).__name__})."
        ) from None
    if count < 1:
        raise ValueError(f"{name} must be positive, got {count}.")
    return count


def image_size_hw(image_size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or an ``(H, W)`` pair of ints, validated."""
    scalar = isinstance(image_size, torch.Tensor) and image_size.dim() == 0
    if hasattr(image_size, "__len__") and not scalar:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}.")
        return pixel_count(image_size[0], "image height"), pixel_count(image_size[1], "image width")
    size = pixel_count(image_size, "image_size")
    return size, size


def pixels_to_ndc(pixels: torch.Tensor, image_size: ImageSize) -> torch.Tensor:
    """
    Continuous pixel coordinates to PyTorch3D NDC.

    Args:
        pixels: `(..., 2)` ``(u, v)`` = (column, row); pixel centres at half-integers.
        image_size: ``(H, W)`` or an int.

    Returns:
        `(..., 2)` NDC ``(x, y)``.
    """
    height, width = image_size_hw(image_size)
    scale = float(min(height, width))
    x = (width - 2.0 * pixels[..., 0]) / scale
    y = (height - 2.0 * pixels[..., 1]) / scale
    return torch.stack([x, y], dim=-1)


def ndc_to_pixels(xys: torch.Tensor, image_size: ImageSize) -> torch.Tensor:
    """The inverse of :func:`pixels_to_ndc`: `(..., 2)` NDC to `(..., 2)` ``(u, v)``."""
    height, width = image_size_hw(image_size)
    scale = float(min(height, width))
    u = 0.5 * (width - scale * xys[..., 0])
    v = 0.5 * (height - scale * xys[..., 1])
    return torch.stack([u, v], dim=-1)


def ndc_grid(
    image_size: ImageSize, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """
    NDC centres of all pixels, in image order.

    Returns:
        `(H, W, 2)` tensor; ``grid[i, j]`` is the NDC ``(x, y)`` of pixel row ``i``, column ``j``.
    """
    height, width = image_size_hw(image_size)
    rows = torch.arange(height, device=device, dtype=dtype) + 0.5
    cols = torch.arange(width, device=device, dtype=dtype) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return pixels_to_ndc(torch.stack([u, v], dim=-1), (height, width))


def check_camera_batch(cameras: CamerasBase) -> None:
    """Raise ``ValueError`` unless ``cameras`` is a non-empty PyTorch3D camera batch (no sync)."""
    if not isinstance(cameras, CamerasBase):
        raise ValueError(f"cameras must be a pytorch3d CamerasBase, got {type(cameras).__name__}.")
    if len(cameras) == 0:
        raise ValueError("The camera batch is empty: give at least one camera.")


def check_cameras(cameras: CamerasBase) -> None:
    """Raise ``ValueError`` when a camera batch is empty or holds non-finite parameters."""
    check_camera_batch(cameras)
    names, flags = [], []
    for name in ("R", "T", "focal_length", "principal_point", "fov", "znear", "zfar", "K"):
        value = getattr(cameras, name, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            names.append(name)
            flags.append(torch.isfinite(value).all())
    if not flags:
        return
    finite = torch.stack([flag.to(flags[0].device) for flag in flags])
    if bool(finite.all()):  # one host synchronisation for all parameters
        return
    bad = names[int(torch.nonzero(~finite)[0, 0])]
    raise ValueError(f"The cameras' {bad} holds non-finite values (NaN or inf).")


def rays_from_cameras(
    cameras: CamerasBase, xys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Unproject NDC points into world-space rays, differentiably in the camera parameters.

    Args:
        cameras: a batch of ``B`` cameras (any ``CamerasBase``; screen-space cameras need their
            ``image_size``).
        xys: `(B, ..., 2)` NDC points, one set per camera.

    Returns:
        origins: `(B, ..., 3)` points on the camera's z = 0 plane.
        directions: `(B, ..., 3)` unnormalised; one unit of length = one unit of camera z.
    """
    check_cameras(cameras)
    if xys.dim() < 2 or xys.shape[-1] != 2:
        raise ValueError(f"xys must have shape (B, ..., 2), got {tuple(xys.shape)}.")
    batch = xys.shape[0]
    if len(cameras) != batch:
        raise ValueError(
            f"Got {len(cameras)} cameras for {batch} sets of pixel coordinates; they must match."
        )
    spatial = xys.shape[1:-1]
    flat = xys.reshape(batch, -1, 2)
    rays = _pinhole_rays(cameras, flat)
    if rays is None:
        rays = _unprojected_rays(cameras, flat)
    origins, directions = rays
    return origins.reshape(batch, *spatial, 3), directions.reshape(batch, *spatial, 3)


def _unprojected_rays(
    cameras: CamerasBase, flat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Any camera: unproject every point at z = 1 and z = 2 (PyTorch3D's transforms)."""
    n_rays = flat.shape[1]
    depth_one = flat.new_ones(flat.shape[0], n_rays, 1)
    to_unproject = torch.cat(
        [torch.cat([flat, depth_one], dim=-1), torch.cat([flat, 2.0 * depth_one], dim=-1)], dim=1
    )
    world = cameras.unproject_points(to_unproject, world_coordinates=True, from_ndc=True)
    plane_one, plane_two = world[:, :n_rays], world[:, n_rays:]
    directions = plane_two - plane_one
    return plane_one - directions, directions


def _as_columns(value, batch: int, reference: torch.Tensor, width: int) -> torch.Tensor:
    """A camera parameter (number, `(N,)`, `(N, 1)` or `(N, width)`) as `(batch, width)`."""
    if not torch.is_tensor(value):
        value = torch.tensor(value, dtype=reference.dtype, device=reference.device)
    value = value.to(reference.dtype)
    if value.dim() <= 1:
        value = value.reshape(-1, 1)
    return value.expand(batch, width) if value.shape[-1] == 1 else value


def _ndc_intrinsics(cameras: CamerasBase, batch: int, reference: torch.Tensor):
    """
    ``(focal, principal, perspective)``: `(B, 2)` NDC focal lengths and principal points of the
    four standard PyTorch3D camera classes (the projection is ``x_ndc = f X / Z + p``, or
    ``f X + p`` for orthographic cameras), or ``None`` for any other camera.
    """
    kind = type(cameras)
    if getattr(cameras, "K", None) is not None:
        return None
    if kind is FoVPerspectiveCameras:
        fov = _as_columns(cameras.fov, batch, reference, 1)[:, 0]
        if cameras.degrees:
            fov = fov * (math.pi / 180.0)
        aspect = _as_columns(cameras.aspect_ratio, batch, reference, 1)[:, 0]
        tan_half = torch.tan(fov / 2)
        focal = torch.stack([1.0 / (tan_half * aspect), 1.0 / tan_half], dim=-1)
        return focal, torch.zeros_like(focal), True
    if kind is FoVOrthographicCameras:
        low = torch.stack(
            [_as_columns(cameras.min_x, batch, reference, 1)[:, 0],
             _as_columns(cameras.min_y, batch, reference, 1)[:, 0]], dim=-1,
        )
        high = torch.stack(
            [_as_columns(cameras.max_x, batch, reference, 1)[:, 0],
             _as_columns(cameras.max_y, batch, reference, 1)[:, 0]], dim=-1,
        )
        scale = _as_columns(cameras.scale_xyz, batch, reference, 3)[:, :2]
        focal = 2.0 / (high - low) * scale
        return focal, -(high + low) / (high - low), False
    if kind not in (PerspectiveCameras, OrthographicCameras):
        return None
    focal = _as_columns(cameras.focal_length, batch, reference, 2)
    principal = _as_columns(cameras.principal_point, batch, reference, 2)
    if not cameras.in_ndc():
        # screen space: pixels, +X right / +Y down from the top-left corner (PyTorch3D's
        # get_ndc_camera_transform); NDC scales the shorter side to [-1, 1]
        size = _as_columns(cameras.get_image_size(), batch, reference, 2)  # (H, W)
        width_height = size.flip(-1)
        half = size.min(dim=-1, keepdim=True).values / 2.0
        focal = focal / half
        principal = (width_height / 2.0 - principal) / half
    return focal, principal, kind is PerspectiveCameras


def _pinhole_rays(
    cameras: CamerasBase, flat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """
    Rays of the standard PyTorch3D cameras straight from their parameters (a dozen tensor
    operations instead of PyTorch3D's composed transforms); ``None`` for any other camera.
    The same rays as :func:`_unprojected_rays`, differentiable in the same parameters.
    """
    batch = flat.shape[0]
    intrinsics = _ndc_intrinsics(cameras, batch, flat)
    if intrinsics is None:
        return None
    focal, principal, perspective = intrinsics
    rotation = cameras.R.to(flat.dtype)
    translation = cameras.T.to(flat.dtype)
    if rotation.shape != (batch, 3, 3) or translation.shape != (batch, 3):
        return None
    # world = (camera - T) R^-1 for row vectors (PyTorch3D: camera = world R + T)
    to_world = torch.linalg.inv_ex(rotation).inverse
    planar = (flat - principal[:, None, :]) / focal[:, None, :]  # (B, n, 2) camera x / z, y / z
    if perspective:
        rows = torch.cat([planar, torch.ones_like(planar[..., :1])], dim=-1)
        directions = torch.bmm(rows, to_world)
        origins = -torch.bmm(translation[:, None, :], to_world).expand_as(directions)
        return origins, directions
    rows = torch.cat([planar, torch.zeros_like(planar[..., :1])], dim=-1)
    origins = torch.bmm(rows - translation[:, None, :], to_world)
    directions = to_world[:, None, 2, :].expand_as(origins)
    return origins, directions


def intersect_box(
    origins: torch.Tensor,
    directions: torch.Tensor,
    box_min: torch.Tensor,
    box_max: torch.Tensor,
    *,
    min_depth: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Slab intersection of rays with an axis-aligned box.

    Args:
        origins, directions: `(..., 3)` rays (directions need not be normalised).
        box_min, box_max: `(3,)` box corners.
        min_depth: the smallest length allowed (the part of a ray behind it is ignored).

    Returns:
        near, far: `(...)` lengths where each ray enters and leaves the box (clamped to
            ``min_depth``); meaningless where ``missed``.
        missed: `(...)` bool, the ray does not cross the box ahead of ``min_depth``.
    """
    with torch.no_grad():
        box_min = box_min.to(origins)
        box_max = box_max.to(origins)
        safe = torch.where(
            directions.abs() < 1e-12,
            torch.full_like(directions, 1e-12) * torch.where(directions < 0, -1.0, 1.0),
            directions,
        )
        t0 = (box_min - origins) / safe
        t1 = (box_max - origins) / safe
        near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=min_depth)
        far = torch.maximum(t0, t1).amin(dim=-1)
        missed = ~(far > near)
        return near, far, missed
