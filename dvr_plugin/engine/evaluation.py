"""
Rendering a fitted field for evaluation, for every task: full-image renders of cameras (a
conditioned field with one code per camera), image metrics, comparison grids, orbits and
turntables, and mesh metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..metrics import mask_iou, psnr, ssim
from ..renderer.renderer import DVRRenderer
from ..visualize import colorize_depth, colorize_normals, image_grid


@dataclass
class RenderedViews:
    """
    Full-image renders of ``N`` cameras (on the CPU).

    Members:
        images: `(N, H, W, 3)` colours over the background.
        masks: `(N, H, W)` alpha (1 where a surface was hit).
        depths: `(N, H, W)` z-depth (0 where no surface).
        normals: `(N, H, W, 3)` unit normals (zero where no surface).
    """

    images: torch.Tensor
    masks: torch.Tensor
    depths: torch.Tensor
    normals: torch.Tensor


@torch.no_grad()
def render_views(
    field,
    cameras,
    image_size: tuple[int, int],
    *,
    n_steps: int = 128,
    n_secant_steps: int = 8,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    batch_size: int = 1,
    latent: Optional[torch.Tensor] = None,
    progress: bool = False,
    description: str = "rendering views",
) -> RenderedViews:
    """
    Render every camera of a batch at full resolution with DVR (no gradients).

    Args:
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol, on the cameras' device.
        cameras: ``N`` PyTorch3D cameras.
        image_size: ``(H, W)``.
        n_steps: marching steps per ray.
        n_secant_steps: secant refinement steps.
        background: RGB behind the object.
        batch_size: cameras rendered per call.
        latent: `(N, C)` codes of a conditioned field (camera ``i`` rendered with
            ``latent[i]``), or ``None``.
        progress: show a progress bar (tqdm, on stderr) over the views.
        description: the progress bar's label.

    Returns:
        RenderedViews on the CPU.
    """
    from tqdm.auto import tqdm

    renderer = DVRRenderer.for_images(
        field=field,
        image_size=(int(image_size[0]), int(image_size[1])),
        background_color=list(background),
        n_steps=n_steps,
        n_secant_steps=n_secant_steps,
    )
    parts: list[Any] = []
    bar = tqdm(total=len(cameras), desc=description, unit="view", disable=not progress, leave=False)
    for start in range(0, len(cameras), batch_size):
        index = list(range(start, min(start + batch_size, len(cameras))))
        out = renderer(cameras[index], latent=None if latent is None else latent[index])
        parts.append((out.images.cpu(), out.masks.cpu(), out.depths.cpu(), out.normals.cpu()))
        bar.update(len(index))
    bar.close()
    images, masks, depths, normals = (torch.cat(p) for p in zip(*parts, strict=False))
    return RenderedViews(images=images, masks=masks, depths=depths, normals=normals)


def image_metrics(
    rendered: RenderedViews, images: torch.Tensor, masks: torch.Tensor
) -> dict[str, Any]:
    """
    Held-out image metrics, averaged over views (per-view values under ``per_view``).

    Args:
        rendered: the renders.
        images: `(N, H, W, 3)` true images.
        masks: `(N, H, W)` true masks.

    Returns:
        ``psnr`` (whole image, dB), ``psnr_masked`` (inside the true mask), ``ssim``,
        ``mask_iou`` and ``per_view`` lists.
    """
    gt_images = images.detach().cpu().float()
    gt_masks = masks.detach().cpu().bool()
    pred = rendered.images.float().clamp(0.0, 1.0)
    per_view = {
        "psnr": psnr(pred, gt_images),
        "psnr_masked": psnr(pred, gt_images, mask=gt_masks),
        "mask_iou": mask_iou(rendered.masks > 0.5, gt_masks),
    }
    if min(pred.shape[1:3]) >= 11:
        per_view["ssim"] = ssim(pred, gt_images)
    out: dict[str, Any] = {}
    for key, values in per_view.items():
        finite = values[torch.isfinite(values)]
        out[key] = float(finite.mean()) if finite.numel() else math.nan
    out["per_view"] = {key: [float(v) for v in values] for key, values in per_view.items()}
    return out


def comparison_grid(
    rendered: RenderedViews,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    max_views: int = 4,
) -> torch.Tensor:
    """
    One row per view: ground truth | render | depth | normals.

    Args:
        rendered: the renders.
        images: `(N, H, W, 3)` true images.
        masks: `(N, H, W)` true masks (unused in the picture; kept for symmetry).
        max_views: the most rows.

    Returns:
        `(H', W', 3)` image in [0, 1].
    """
    rows = []
    for i in range(min(max_views, rendered.images.shape[0])):
        alpha = rendered.masks[i]
        rows.append(
            [
                images[i].detach().cpu().float(),
                rendered.images[i].clamp(0.0, 1.0),
                colorize_depth(rendered.depths[i], alpha),
                colorize_normals(rendered.normals[i], alpha),
            ]
        )
    return image_grid(rows)


def orbit_settings(cameras, data_config=None) -> dict[str, Any]:
    """
    An orbit that looks like a camera set (keyword arguments of :func:`orbit_cameras`).

    For rendered data (``data_config.format`` ``"demo"`` / ``"mesh"``) these are the rendering
    settings: ``camera_distance``, ``fov``, ``elevation``, around +Y. Otherwise they are
    estimated: ``distance`` is the median camera distance from the origin, ``fov`` the median
    field of view; when the cameras gather on one side (a spherical cap, as in DTU) the orbit
    turns around the cap's axis at the cameras' median angle from it, else around the mean
    camera up vector; ``up`` (the image's up direction) is the mean camera up vector.
    """
    if data_config is not None and data_config.format in ("demo", "mesh"):
        return {
            "distance": float(data_config.camera_distance),
            "fov": float(data_config.fov),
            "elevation": float(data_config.elevation),
            "axis": [0.0, 1.0, 0.0],
            "up": [0.0, 1.0, 0.0],
        }
    centres = cameras.get_camera_center().detach().cpu().double()
    radius = centres.norm(dim=-1)
    directions = centres / radius[:, None].clamp_min(1e-12)
    # PyTorch3D: X_view = X_world @ R + T, so the camera's +Y axis in the world is R[:, :, 1].
    up = cameras.R.detach().cpu().double()[:, :, 1].mean(dim=0)
    up = up / up.norm().clamp_min(1e-12)
    mean_direction = directions.mean(dim=0)
    axis = mean_direction / mean_direction.norm() if mean_direction.norm() > 0.3 else up
    sine = (directions @ axis).clamp(-1.0, 1.0)
    fov = 45.0
    focal = getattr(cameras, "focal_length", None)
    if focal is not None and cameras.in_ndc():
        f = float(focal.detach().cpu().reshape(len(cameras), -1)[:, -1].abs().median())
        if f > 0:
            fov = math.degrees(2.0 * math.atan(1.0 / f))
    return {
        "distance": float(radius.median()),
        "fov": fov,
        "elevation": float(torch.rad2deg(torch.asin(sine)).median()),
        "axis": [float(v) for v in axis],
        "up": [float(v) for v in up],
    }


def orbit_cameras(
    n_frames: int,
    *,
    image_size: int,
    distance: float,
    fov: float,
    elevation: float,
    axis: Sequence[float] = (0.0, 1.0, 0.0),
    up: Optional[Sequence[float]] = None,
    device: torch.device | str = "cpu",
):
    """
    ``n_frames`` NDC ``PerspectiveCameras`` on a circle around ``axis`` (through the origin) at
    ``elevation`` degrees above the plane orthogonal to it, looking at the origin, with ``up``
    (default: ``axis``) as the images' up direction.
    """
    from pytorch3d.renderer import PerspectiveCameras, look_at_view_transform

    axis_t = torch.tensor(list(axis), dtype=torch.float64)
    axis_t = axis_t / axis_t.norm().clamp_min(1e-12)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(axis_t @ helper)) > 0.9:
        helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    first = torch.linalg.cross(axis_t, helper)
    first = first / first.norm()
    second = torch.linalg.cross(first, axis_t)
    azimuth = torch.arange(n_frames, dtype=torch.float64) * (2.0 * math.pi / n_frames)
    elev = math.radians(elevation)
    ring = torch.cos(azimuth)[:, None] * second + torch.sin(azimuth)[:, None] * first
    eyes = distance * (math.cos(elev) * ring + math.sin(elev) * axis_t)
    up_t = axis_t if up is None else torch.tensor(list(up), dtype=torch.float64)
    ups = up_t[None].expand(n_frames, 3).clone()
    # An up vector (nearly) along the viewing direction leaves the roll undefined: use the axis.
    along = ((eyes / eyes.norm(dim=-1, keepdim=True)) @ (up_t / up_t.norm())).abs() > 0.98
    ups[along] = axis_t if bool((eyes @ axis_t).abs().max() < 0.98 * distance) else second
    R, T = look_at_view_transform(eye=eyes.float(), at=((0.0, 0.0, 0.0),), up=ups.float())
    focal = 1.0 / math.tan(math.radians(fov) / 2.0)
    return PerspectiveCameras(
        R=R,
        T=T,
        focal_length=torch.full((n_frames, 2), focal),
        principal_point=torch.zeros(n_frames, 2),
        image_size=torch.tensor([[image_size, image_size]] * n_frames),
        device=device,
    )


@torch.no_grad()
def turntable_frames(
    field,
    orbit: Mapping[str, Any],
    *,
    n_frames: int,
    image_size: int,
    n_steps: int = 128,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    device: torch.device | str = "cpu",
    with_normals: bool = True,
    progress: bool = False,
) -> list[torch.Tensor]:
    """
    Frames of a turntable: ``n_frames`` views of :func:`orbit_cameras` on the circle ``orbit``
    (its keyword arguments ``distance``, ``fov``, ``elevation`` and optionally ``axis``, ``up``,
    as :func:`orbit_settings` gives them), each `(S, S, 3)`, or `(S, 2S, 3)` (colour next to
    normals) when ``with_normals``, ``S = image_size``; ``progress`` shows a progress bar
    (tqdm, on stderr).
    """
    cameras = orbit_cameras(n_frames, image_size=image_size, device=device, **orbit)
    rendered = render_views(
        field,
        cameras,
        (image_size, image_size),
        n_steps=n_steps,
        background=background,
        progress=progress,
        description="turntable",
    )
    frames = []
    for i in range(n_frames):
        frame = rendered.images[i].clamp(0.0, 1.0)
        if with_normals:
            frame = torch.cat(
                [frame, colorize_normals(rendered.normals[i], rendered.masks[i])], dim=1
            )
        frames.append(frame)
    return frames


def mesh_metrics(
    field,
    gt_mesh,
    *,
    resolution: int = 128,
    n_points: int = 20000,
    seed: int = 0,
) -> tuple[dict[str, float], Optional[Any]]:
    """
    Extract the fitted surface as a mesh and score it against a ground-truth mesh (Chamfer-L1,
    normal consistency, F-score at 1%, with the Occupancy Networks normalisation).

    Frames: the field is meshed in its own (normalised) frame and scored there against
    ``gt_mesh``, which must be in that frame too (``FitData.mesh`` is). The distances are in
    units of the ground truth's bounding box (longest side 1), so they are the same in any
    frame that differs by a similarity (e.g. the data's world frame).

    Args:
        field: the fitted field (put in ``eval()`` mode by the caller).
        gt_mesh: a ``Meshes`` of one in the normalised frame, or ``None`` (then only the mesh
            is extracted).
        resolution: MISE grid resolution (a power-of-two multiple of 32).
        n_points: surface samples per mesh.
        seed: seeds the surface samples.

    Returns:
        ``(metrics, mesh)``; ``metrics`` is empty when no ground truth is given, ``mesh`` (in
        the normalised frame: move it with :class:`dvr_plugin.data.frame.WorldFrame` before
        writing it) is ``None`` when extraction failed.
    """
    from ..meshing import extract_mesh
    from ..metrics import evaluate_meshes

    start = min(32, resolution)
    extraction = extract_mesh(field, resolution=resolution, start_resolution=start)
    mesh = None if extraction.is_empty else extraction.mesh
    if gt_mesh is None:
        return {}, mesh
    if mesh is None:
        return {"mesh_empty": 1.0}, None
    scores = evaluate_meshes(
        mesh.to(gt_mesh.device),
        gt_mesh,
        n_points=n_points,
        n_iou_points=0,
        seed=seed,
    )
    out: dict[str, float] = {}
    for key, value in scores.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value)
    return out, mesh
