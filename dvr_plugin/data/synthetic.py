"""
Synthetic multi-view renders of a mesh with PyTorch3D's ``MeshRenderer``.

The mesh is first normalised into the unit cube: centred on its bounding-box centre and scaled so
that the longest bounding-box side is ``longest_side`` (0.8 by default), i.e.
``X_normalised = scale * (X_mesh - centre)``. Cameras look at the origin from a sphere of radius
``distance`` (PyTorch3D world, +Y up). Masks are ``pix_to_face >= 0``, depth is ``zbuf`` (0 where
no face), images come from a hard (non-blurred) shader, by default ambient-only so that pixel
colours are the surface albedo (the view-independent colour DVR's texture field learns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from pytorch3d.io import load_objs_as_meshes
from pytorch3d.renderer import (
    AmbientLights,
    BlendParams,
    HardPhongShader,
    MeshRasterizer,
    PerspectiveCameras,
    PointLights,
    RasterizationSettings,
    TexturesVertex,
    look_at_view_transform,
)
from pytorch3d.renderer.cameras import CamerasBase
from pytorch3d.structures import Meshes

from .io import PathLike
from .multiview import Device, MultiViewData, as_ndc_perspective

LAYOUTS = ("fibonacci", "turntable", "random")
SHADINGS = ("albedo", "phong")


@dataclass
class MeshNormalization:
    """
    ``X_normalised = scale * (X_mesh - centre)``.

    Attributes:
        centre: `(3,)` float64 bounding-box centre of the original mesh.
        scale: normalised units per original unit.
    """

    centre: torch.Tensor
    scale: float

    def to_world(self) -> torch.Tensor:
        """`(4, 4)` float64 map from the normalised frame back to mesh coordinates."""
        M = torch.eye(4, dtype=torch.float64)
        M[:3, :3] /= self.scale
        M[:3, 3] = self.centre.to(torch.float64)
        return M

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` mesh-frame points to the normalised frame."""
        return (points - self.centre.to(points)) * self.scale

    def denormalise(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` normalised points back to the mesh frame."""
        return points / self.scale + self.centre.to(points)


@dataclass
class SyntheticViews:
    """
    Attributes:
        data: the rendered :class:`MultiViewData` (``to_world`` undoes the normalisation).
        mesh: the normalised mesh (a ``Meshes`` of one), the ground truth for metrics.
        normalization: how the mesh was normalised.
    """

    data: MultiViewData
    mesh: Meshes
    normalization: MeshNormalization


def load_mesh(path: PathLike, *, device: Device = "cpu") -> Meshes:
    """
    Load an ``.obj`` (with its texture when the ``.mtl`` has one) or a ``.ply`` / ``.off``
    (vertex colours when it has them, through ``pytorch3d.io.IO``) as a ``Meshes`` of one;
    meshes without a texture get a uniform light grey vertex colour.
    """
    try:
        if str(path).lower().endswith(".obj"):
            mesh = load_objs_as_meshes([str(path)], device=device, load_textures=True)
        else:
            from pytorch3d.io import IO

            mesh = IO().load_mesh(str(path), device=device)
    except Exception as error:  # any parse failure becomes a ValueError
        raise ValueError(f"Cannot load mesh {path}: {error}") from error
    if mesh.textures is None:
        verts = mesh.verts_padded()
        mesh.textures = TexturesVertex(verts_features=torch.full_like(verts, 0.7))
    return mesh


def normalize_mesh(
    mesh: Meshes, *, longest_side: float = 0.8
) -> tuple[Meshes, MeshNormalization]:
    """
    Centre ``mesh`` on its bounding-box centre and scale its longest bounding-box side to
    ``longest_side`` (textures are kept).

    Returns:
        the normalised mesh and the :class:`MeshNormalization`.
    """
    if len(mesh) != 1:
        raise ValueError(f"Expected a Meshes of one mesh, got {len(mesh)}.")
    if not 0 < longest_side <= 1.0:
        raise ValueError(f"longest_side must be in (0, 1], got {longest_side}.")
    verts = mesh.verts_packed()
    if verts.shape[0] == 0:
        raise ValueError("The mesh has no vertices.")
    if not bool(torch.isfinite(verts).all()):
        raise ValueError("The mesh has non-finite vertices.")
    low, high = verts.min(dim=0).values, verts.max(dim=0).values
    extent = float((high - low).max())
    if extent <= 0:
        raise ValueError("The mesh is degenerate (zero bounding box).")
    centre = (0.5 * (low + high)).to(torch.float64).cpu()
    norm = MeshNormalization(centre=centre, scale=longest_side / extent)
    offsets = norm.normalise(verts.to(torch.float64)).to(verts.dtype) - verts
    return mesh.offset_verts(offsets), norm


def fibonacci_sphere(num: int) -> torch.Tensor:
    """`(num, 3)` unit vectors spread evenly over the sphere (golden-angle spiral, +Y up)."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}.")
    i = torch.arange(num, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / num
    radius = torch.sqrt((1.0 - y * y).clamp_min(0.0))
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([radius * torch.sin(phi), y, radius * torch.cos(phi)], dim=-1)


def turntable(num: int, *, elevation: float = 30.0) -> torch.Tensor:
    """`(num, 3)` unit vectors at a fixed ``elevation`` (degrees), azimuths evenly spaced."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}.")
    azim = torch.arange(num, dtype=torch.float64) * (2.0 * math.pi / num)
    elev = torch.full_like(azim, math.radians(elevation))
    return _from_angles(elev, azim)


def random_elevation(
    num: int, *, elevation_range: tuple[float, float] = (-30.0, 60.0), seed: int = 0
) -> torch.Tensor:
    """`(num, 3)` unit vectors with uniform azimuth and elevation uniform in ``elevation_range``
    (degrees), seeded."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}.")
    low, high = elevation_range
    if not -90.0 <= low <= high <= 90.0:
        raise ValueError(
            f"elevation_range must satisfy -90 <= low <= high <= 90, got {elevation_range}."
        )
    gen = torch.Generator().manual_seed(seed)
    azim = torch.rand(num, generator=gen, dtype=torch.float64) * 2.0 * math.pi
    elev = torch.deg2rad(low + (high - low) * torch.rand(num, generator=gen, dtype=torch.float64))
    return _from_angles(elev, azim)


def _from_angles(elev: torch.Tensor, azim: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [torch.cos(elev) * torch.sin(azim), torch.sin(elev), torch.cos(elev) * torch.cos(azim)],
        dim=-1,
    )


def cameras_looking_at_origin(
    eyes: torch.Tensor,
    *,
    image_size: Union[int, tuple[int, int]],
    fov: float = 45.0,
    device: Device = "cpu",
) -> PerspectiveCameras:
    """
    NDC ``PerspectiveCameras`` at `(N, 3)` positions ``eyes`` looking at the origin with +Y up
    and a field of view of ``fov`` degrees across the shorter image side.
    """
    eyes = torch.as_tensor(eyes, dtype=torch.float32)
    if eyes.dim() != 2 or eyes.shape[-1] != 3:
        raise ValueError(f"eyes must have shape (N, 3), got {tuple(eyes.shape)}.")
    if not 0 < fov < 180:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov}.")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    up = torch.tensor([[0.0, 1.0, 0.0]]).expand_as(eyes).clone()
    horizontal = torch.linalg.norm(eyes[:, [0, 2]], dim=-1) < 1e-6 * torch.linalg.norm(eyes, dim=-1)
    up[horizontal] = torch.tensor([0.0, 0.0, 1.0])  # straight above / below: any up will do
    R, T = look_at_view_transform(eye=eyes, at=((0.0, 0.0, 0.0),), up=up)
    focal = 1.0 / math.tan(math.radians(fov) / 2.0)
    n = eyes.shape[0]
    return PerspectiveCameras(
        R=R,
        T=T,
        focal_length=torch.full((n, 2), focal),
        principal_point=torch.zeros(n, 2),
        image_size=torch.tensor([list(size)] * n),
        device=device,
    )


def render_mesh_views(
    mesh: Union[Meshes, PathLike],
    *,
    num_views: int = 16,
    image_size: Union[int, tuple[int, int]] = 128,
    layout: str = "fibonacci",
    distance: float = 2.0,
    fov: float = 45.0,
    elevation: float = 30.0,
    elevation_range: tuple[float, float] = (-30.0, 60.0),
    seed: int = 0,
    cameras: Optional[CamerasBase] = None,
    normalize: bool = True,
    longest_side: float = 0.8,
    shading: str = "albedo",
    background: Sequence[float] = (1.0, 1.0, 1.0),
    chunk_size: int = 8,
    device: Device = "cpu",
) -> SyntheticViews:
    """
    Render a textured mesh from many cameras: images, masks (``pix_to_face >= 0``) and depth
    (``zbuf``, 0 where empty).

    Args:
        mesh: a ``Meshes`` of one, or a path to an ``.obj``.
        num_views: number of cameras when ``cameras`` is not given.
        image_size: ``(H, W)`` or an int.
        layout: ``"fibonacci"`` (even over the sphere), ``"turntable"`` (fixed ``elevation``)
            or ``"random"`` (elevation uniform in ``elevation_range``, seeded by ``seed``).
        distance: camera distance from the origin (normalised units).
        fov: field of view in degrees across the shorter image side.
        cameras: explicit cameras in the normalised frame (overrides the layout).
        normalize: normalise the mesh into the unit cube first (else it is used as is and
            ``normalization`` is the identity).
        longest_side: the normalised mesh's longest bounding-box side.
        shading: ``"albedo"`` (ambient light only: pixel = texture colour) or ``"phong"``
            (a point light at each camera, plus ambient).
        background: RGB of empty pixels.
        chunk_size: views rasterised at once.
        device: where to render.

    Returns:
        :class:`SyntheticViews`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}.")
    if distance <= 0:
        raise ValueError(f"distance must be positive, got {distance}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    given = cameras is not None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}.")
    if not isinstance(mesh, Meshes):
        mesh = load_mesh(mesh, device=device)
    mesh = mesh.to(device)
    if normalize:
        mesh, norm = normalize_mesh(mesh, longest_side=longest_side)
    else:
        norm = MeshNormalization(centre=torch.zeros(3, dtype=torch.float64), scale=1.0)
    if cameras is None:
        if layout == "fibonacci":
            directions = fibonacci_sphere(num_views)
        elif layout == "turntable":
            directions = turntable(num_views, elevation=elevation)
        else:
            directions = random_elevation(num_views, elevation_range=elevation_range, seed=seed)
        cameras = cameras_looking_at_origin(
            distance * directions, image_size=size, fov=fov, device=device
        )
    else:
        cameras = as_ndc_perspective(cameras.to(device), size)
    n = len(cameras)
    eyes = cameras.get_camera_center()

    raster = RasterizationSettings(image_size=size, blur_radius=0.0, faces_per_pixel=1)
    blend = BlendParams(background_color=tuple(float(c) for c in background))
    images, masks, depths = [], [], []
    for start in range(0, n, chunk_size):
        idx = torch.arange(start, min(start + chunk_size, n), device=cameras.device)
        chunk = cameras[idx.tolist()]
        if shading == "albedo":
            lights = AmbientLights(ambient_color=((1.0, 1.0, 1.0),), device=device)
        else:
            lights = PointLights(
                location=eyes[idx],
                ambient_color=((0.4, 0.4, 0.4),),
                diffuse_color=((0.6, 0.6, 0.6),),
                specular_color=((0.1, 0.1, 0.1),),
                device=device,
            )
        meshes = mesh.extend(len(idx))
        fragments = MeshRasterizer(cameras=chunk, raster_settings=raster)(meshes)
        shader = HardPhongShader(device=device, cameras=chunk, lights=lights, blend_params=blend)
        rgba = shader(fragments, meshes)
        hit = fragments.pix_to_face[..., 0] >= 0
        images.append(rgba[..., :3].clamp(0.0, 1.0))
        masks.append(hit)
        zbuf = fragments.zbuf[..., 0]
        depths.append(torch.where(hit, zbuf, torch.zeros_like(zbuf)))
    data = MultiViewData(
        images=torch.cat(images),
        masks=torch.cat(masks),
        depths=torch.cat(depths).clamp_min(0.0),
        cameras=cameras,
        names=[f"view_{i:03d}" for i in range(n)],
        to_world=norm.to_world(),
        info={
            "format": "synthetic",
            "layout": "given" if given else layout,
            "distance": distance,
            "fov": fov,
            "shading": shading,
            "longest_side": longest_side if normalize else None,
            "normalised_frame": f"mesh bbox centred, longest side {longest_side}",
        },
    )
    return SyntheticViews(data=data, mesh=mesh, normalization=norm)
