"""
Rows (a) and (d) of the comparison: PyTorch3D's ``MeshRenderer`` on a triangle mesh.

The mesh is rasterised with ``MeshRasterizer`` (one face per pixel, no blur) and shaded with
``HardPhongShader`` under ambient light only, the "albedo" shading the synthetic training views
use (pixel = texture colour). Besides the image the rasteriser gives the mask
(``pix_to_face >= 0``), the z-depth (``zbuf``, 0 where empty) and the normal of the face seen
in each pixel, turned towards the camera (a mesh with inward-facing triangles still shows its
visible side's outward normal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch3d.renderer import (
    AmbientLights,
    BlendParams,
    HardPhongShader,
    MeshRasterizer,
    RasterizationSettings,
    TexturesVertex,
)
from pytorch3d.structures import Meshes

from dvr_plugin.engine.evaluation import RenderedViews


@torch.no_grad()
def rasterize_views(
    mesh: Meshes,
    cameras,
    image_size: tuple[int, int],
    *,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> RenderedViews:
    """
    Render a mesh from every camera of a batch.

    Args:
        mesh: a ``Meshes`` of one (textured; without textures it is drawn light grey), on the
            cameras' device.
        cameras: ``N`` PyTorch3D cameras.
        image_size: ``(H, W)``.
        background: RGB of empty pixels.

    Returns:
        RenderedViews on the CPU: ``images`` `(N, H, W, 3)`, ``masks`` `(N, H, W)` (0 / 1),
        ``depths`` `(N, H, W)` (``zbuf``, 0 where empty), ``normals`` `(N, H, W, 3)` unit face
        normals facing the camera (0 where empty).
    """
    if len(mesh) != 1:
        raise ValueError(f"Expected a Meshes of one mesh, got {len(mesh)}.")
    if mesh.isempty():
        raise ValueError("The mesh has no faces; there is nothing to rasterise.")
    height, width = int(image_size[0]), int(image_size[1])
    device = cameras.device
    mesh = mesh.to(device)
    if mesh.textures is None:
        verts = mesh.verts_padded()
        mesh = Meshes(
            verts=verts,
            faces=mesh.faces_padded(),
            textures=TexturesVertex(verts_features=torch.full_like(verts, 0.7)),
        )
    n = len(cameras)
    meshes = mesh.extend(n)
    raster = RasterizationSettings(image_size=(height, width), blur_radius=0.0, faces_per_pixel=1)
    fragments = MeshRasterizer(cameras=cameras, raster_settings=raster)(meshes)
    shader = HardPhongShader(
        device=device,
        cameras=cameras,
        lights=AmbientLights(ambient_color=((1.0, 1.0, 1.0),), device=device),
        blend_params=BlendParams(background_color=tuple(float(c) for c in background)),
    )
    images = shader(fragments, meshes)[..., :3].clamp(0.0, 1.0)
    pix_to_face = fragments.pix_to_face[..., 0]
    hit = pix_to_face >= 0
    depths = torch.where(hit, fragments.zbuf[..., 0], torch.zeros_like(fragments.zbuf[..., 0]))
    face_normals = meshes.faces_normals_packed()
    normals = face_normals[pix_to_face.clamp_min(0)]
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # Face the camera: flip normals that point along the viewing ray.
    centres = cameras.get_camera_center()  # (N, 3)
    points = _pixel_points(fragments, meshes)
    towards_camera = centres[:, None, None, :] - points
    flip = (normals * towards_camera).sum(dim=-1, keepdim=True) < 0
    normals = torch.where(flip, -normals, normals)
    normals = torch.where(hit[..., None], normals, torch.zeros_like(normals))
    return RenderedViews(
        images=images.cpu(),
        masks=hit.float().cpu(),
        depths=depths.cpu(),
        normals=normals.cpu(),
    )


def _pixel_points(fragments, meshes: Meshes) -> torch.Tensor:
    """`(N, H, W, 3)` world points seen in each pixel (barycentric interpolation of the face)."""
    faces = meshes.faces_packed()
    verts = meshes.verts_packed()
    face_verts = verts[faces]  # (F, 3, 3)
    index = fragments.pix_to_face[..., 0].clamp_min(0)
    corners = face_verts[index]  # (N, H, W, 3, 3)
    bary = fragments.bary_coords[..., 0, :]  # (N, H, W, 3)
    return (bary[..., None] * corners).sum(dim=-2)
