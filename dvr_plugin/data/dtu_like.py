"""
DTU-like captures with exact ground truth: any closed mesh rendered through the cameras of a DTU
cameras file, written in the IDR / NeuS layout that :func:`dvr_plugin.data.load_dtu` reads.

Frames and units:

- *World*: the frame of the cameras file (DTU millimetres for the DTU rig). ``world_mat_i`` maps
  world points to pixels of the written images, ``scale_mat`` maps the unit sphere to world
  (``X_world = scale_mat @ X_sphere``). The ground-truth mesh ``gt_mesh.ply`` is in world units.
- *Mesh*: the input file's own frame. The mesh is placed in world by a similarity
  ``X_world = s Q (X_mesh - c_mesh) + c_world``: its bounding-box centre ``c_mesh`` goes to the
  scale_mat centre ``c_world``, its up axis to the rig's up direction, its front axis towards the
  cameras, and its bounding sphere (about ``c_mesh``) gets radius ``radius_fraction * r``, with
  ``r`` the scale_mat radius.
- *Sphere*: ``X_sphere = scale_mat^-1 X_world`` (the object inside the unit sphere); rendering and
  shading run in this frame. Its directions equal world directions (``scale_mat`` is a uniform
  scale plus a translation).
- Pixels: ``world_mat_i`` uses DTU's convention (centre of the top-left pixel at ``(0, 0)``);
  pixel ``(row i, column j)`` of an image is the ray through ``(u, v) = (j, i)``.

Shading (linear RGB, clipped to [0, 1], no tone mapping) is computed from PyTorch3D's rasteriser
fragments; ``docs/dtu_like.md`` gives the formulas. ``"dtu"`` lighting puts a point light at each
camera (Lambert + Blinn-Phong or Phong highlights + ambient); ``"studio"`` lighting is one fixed
directional light + ambient, no highlights: view-independent colours, a plain background.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from pytorch3d.io import load_objs_as_meshes
from pytorch3d.ops import interpolate_face_attributes
from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
from pytorch3d.renderer.mesh.rasterizer import Fragments
from pytorch3d.structures import Meshes
from pytorch3d.transforms import axis_angle_to_matrix

from .cameras import cameras_from_opencv, decompose_projection_matrix, opencv_from_dtu
from .io import IMAGE_EXTENSIONS, PathLike, index_files, list_files
from .paths import find_shared_data, missing_data_message

__all__ = [
    "DTU_SCAN24",
    "DTURig",
    "Placement",
    "ProceduralTexture",
    "RenderedViews",
    "Shading",
    "background_images",
    "load_dtu_rig",
    "make_dtu_like_scene",
    "perturb_poses",
    "place_mesh",
    "rasterize_views",
    "render_views",
    "rescale_world_mats",
    "rig_up_and_front",
    "shade",
]

DTU_SCAN24 = ("dtu_scan24_384", "scan24")  # the default rig and photographs (shared data)
DTU_IMAGE_SIZE = (1200, 1600)  # (H, W) the DTU world_mat project into
LIGHTINGS = ("dtu", "studio")
SPECULAR_MODELS = ("blinn", "phong")
TEXTURES = ("auto", "procedural")
NAMED_COLOURS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5)}
CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")  # both written, identical
EXACT_CAMERAS_FILE = "cameras_exact.npz"  # with pose_noise: the poses the images were made with
Device = Union[str, torch.device]


# --------------------------------------------------------------------------------------------
# The rig: DTU cameras at a chosen image size
# --------------------------------------------------------------------------------------------


@dataclass
class DTURig:
    """
    Cameras of a DTU cameras file, rescaled to the output images.

    Attributes:
        ids: the camera numbers (``world_mat_<id>``), also the output file numbers.
        world_mats: `(N, 4, 4)` float64 projections ``K [R | t]`` from world to the pixels of
            ``image_size`` images (pixel centres at integer coordinates).
        scale_mat: `(4, 4)` float64, ``X_world = scale_mat @ X_sphere``.
        image_size: ``(H, W)`` of the output images.
        source: the cameras file.
    """

    ids: list[int]
    world_mats: np.ndarray
    scale_mat: np.ndarray
    image_size: tuple[int, int]
    source: str

    @property
    def centre(self) -> np.ndarray:
        """`(3,)` world centre of the scale_mat sphere."""
        return self.scale_mat[:3, 3].copy()

    @property
    def radius(self) -> float:
        """Radius of the scale_mat sphere in world units."""
        return float(self.scale_mat[0, 0])

    def opencv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        The cameras acting on the sphere frame: ``K`` `(N, 3, 3)` (integer pixel centres, no
        skew), ``R`` `(N, 3, 3)`, ``t`` `(N, 3)`, float64, with ``K (R X_sphere + t)``
        proportional to ``world_mat @ scale_mat @ X_sphere``.
        """
        return opencv_from_dtu(self.world_mats, self.scale_mat, object_radius=1.0, max_skew=1.0)

    def select(self, views: Optional[Sequence[int]]) -> DTURig:
        """The rig of the cameras numbered ``views`` (all when ``None``), in that order."""
        if views is None:
            return self
        views = [int(v) for v in views]
        missing = [v for v in views if v not in self.ids]
        if missing or not views:
            raise ValueError(
                f"Views {missing or views} are not in {Path(self.source).name}; available: "
                f"{self.ids}."
            )
        if len(set(views)) != len(views):
            raise ValueError(f"views holds duplicates: {views}.")
        rows = [self.ids.index(v) for v in views]
        return DTURig(
            ids=views, world_mats=self.world_mats[rows], scale_mat=self.scale_mat,
            image_size=self.image_size, source=self.source,
        )

    def camera_centres(self) -> torch.Tensor:
        """`(N, 3)` float64 camera centres in world units."""
        K, R, t, _ = decompose_projection_matrix(self.world_mats)
        return -(R.transpose(1, 2) @ t[..., None])[..., 0]


def rescale_world_mats(
    world_mats: np.ndarray, source_size: Sequence[int], image_size: Sequence[int]
) -> np.ndarray:
    """
    Projections into ``source_size`` images made to project into resized ``image_size``
    images (pixel centres at integer coordinates on both sides).

    A pixel-corner coordinate scales with the size, ``u' + 1/2 = s_x (u + 1/2)``, so
    ``world_mat' = A @ world_mat`` with ``A = [[s_x, 0, (s_x - 1)/2], [0, s_y, (s_y - 1)/2],
    [0, 0, 1]]``, ``s_x = W' / W``, ``s_y = H' / H``.

    Args:
        world_mats: `(N, 3|4, 4)` projection matrices.
        source_size, image_size: ``(H, W)``; the aspect ratios must agree (within 0.5%).

    Returns:
        `(N, 4, 4)` float64.
    """
    (h0, w0), (h, w) = (int(s) for s in source_size), (int(s) for s in image_size)
    if min(h0, w0, h, w) < 1:
        raise ValueError(f"Image sizes must be positive, got {source_size} and {image_size}.")
    sx, sy = w / w0, h / h0
    if abs(sx / sy - 1.0) > 5e-3:
        raise ValueError(
            f"image_size {h}x{w} (H x W) changes the aspect ratio of the cameras' {h0}x{w0} "
            f"images (W/H {w / h:.4f} vs {w0 / h0:.4f}); keep the aspect ratio."
        )
    A = np.array(
        [[sx, 0, 0.5 * (sx - 1), 0], [0, sy, 0.5 * (sy - 1), 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        dtype=np.float64,
    )
    P = np.asarray(world_mats, dtype=np.float64)
    if P.shape[-2] == 3:
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (*P.shape[:-2], 1, 4))
        P = np.concatenate([P, bottom], axis=-2)
    return A @ P


def _camera_ids(archive: dict[str, np.ndarray], path: Path) -> list[int]:
    ids = sorted(
        int(m.group(1)) for key in archive if (m := re.fullmatch(r"world_mat_(\d+)", key))
    )
    if not ids:
        raise ValueError(f"{path} holds no world_mat_<i> arrays; is it a DTU cameras file?")
    return ids


def _check_scale_mat(scale_mat: np.ndarray, path: Path) -> np.ndarray:
    S = np.asarray(scale_mat, dtype=np.float64)
    if S.shape != (4, 4):
        raise ValueError(f"scale_mat in {path} must be 4x4, got {S.shape}.")
    r = S[0, 0]
    if not r > 0 or np.abs(S[:3, :3] - r * np.eye(3)).max() > 1e-6 * r:
        raise ValueError(
            f"scale_mat in {path} must be a uniform scale plus a translation "
            f"(diag(r, r, r) and a centre); got rows {S[:3, :3].round(6).tolist()}."
        )
    if np.abs(S[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise ValueError(f"scale_mat in {path} must have the last row (0, 0, 0, 1).")
    return S


def load_dtu_rig(
    cameras_path: Optional[PathLike] = None,
    *,
    image_size: Sequence[int] = (300, 400),
    camera_image_size: Sequence[int] = DTU_IMAGE_SIZE,
    views: Optional[Sequence[int]] = None,
) -> DTURig:
    """
    Read the cameras of a DTU / IDR / NeuS cameras file and rescale them to ``image_size``.

    Args:
        cameras_path: a ``.npz`` with ``world_mat_i`` and ``scale_mat_i`` (default: DTU scan 24
            in the shared data, 49 cameras).
        image_size: ``(H, W)`` of the images to write.
        camera_image_size: ``(H, W)`` of the images the file's ``world_mat_i`` project into
            (1200 x 1600 for DTU's originals).
        views: camera numbers to keep (default: all).

    Returns:
        :class:`DTURig`.
    """
    if cameras_path is None:
        root = find_shared_data(*DTU_SCAN24)
        if root is None:
            raise FileNotFoundError(
                missing_data_message(*DTU_SCAN24) + " Or pass cameras_path (--cameras)."
            )
        cameras_path = root / "cameras.npz"
    path = Path(cameras_path)
    if not path.is_file():
        raise FileNotFoundError(f"Cameras file not found: {path}")
    try:
        with np.load(path) as npz:
            archive = {key: np.asarray(npz[key]) for key in npz.files}
    except Exception as error:  # unreadable archive
        raise ValueError(f"Cannot read cameras file {path}: {error}") from error
    ids = _camera_ids(archive, path)
    scale_keys = [f"scale_mat_{i}" for i in ids]
    if not all(key in archive for key in scale_keys):
        raise ValueError(
            f"{path.name} lacks scale_mat_i for some views; the object is placed in the "
            "scale_mat sphere, so every view needs one."
        )
    scales = np.stack([archive[k] for k in scale_keys]).astype(np.float64)
    if np.abs(scales - scales[:1]).max() > 1e-6 * max(1.0, np.abs(scales[0]).max()):
        raise ValueError(f"The scale_mat_i in {path.name} differ between views.")
    world = np.stack([archive[f"world_mat_{i}"] for i in ids]).astype(np.float64)
    size = tuple(int(s) for s in image_size)
    rig = DTURig(
        ids=ids,
        world_mats=rescale_world_mats(world, camera_image_size, size),
        scale_mat=_check_scale_mat(scales[0], path),
        image_size=size,
        source=str(path),
    )
    return rig.select(views)


def rig_up_and_front(rig: DTURig) -> tuple[np.ndarray, np.ndarray]:
    """
    The rig's world up direction and the horizontal direction towards its cameras.

    ``up`` is the direction most orthogonal to every camera's x axis (the image rows are
    horizontal in upright photographs): the right singular vector of the stacked x axes with the
    smallest singular value, signed to agree with the cameras' up axes (``-y``). ``front`` is the
    mean direction from the scale_mat centre to the camera centres with its ``up`` part removed.

    Returns:
        up, front: `(3,)` float64 unit vectors in world coordinates, orthogonal.
    """
    _, R, _, _ = decompose_projection_matrix(rig.world_mats)
    R = R.numpy()
    _, _, vt = np.linalg.svd(R[:, 0, :])
    up = vt[-1]
    if (-R[:, 1, :] @ up).sum() < 0:
        up = -up
    towards = rig.camera_centres().numpy() - rig.centre
    towards /= np.linalg.norm(towards, axis=-1, keepdims=True)
    front = towards.mean(axis=0)
    front -= (front @ up) * up
    if np.linalg.norm(front) < 1e-6:  # cameras straight above: any horizontal direction
        front = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    return up, front / np.linalg.norm(front)


# --------------------------------------------------------------------------------------------
# Placing the mesh
# --------------------------------------------------------------------------------------------

_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0),
         "+z": (0, 0, 1), "-z": (0, 0, -1)}


@dataclass
class Placement:
    """
    The similarity that puts the mesh in world: ``X_world = scale * rotation @ X_mesh +
    translation``.

    Attributes:
        scale: world units per mesh unit.
        rotation: `(3, 3)` proper rotation.
        translation: `(3,)` world units.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    radius_fraction: float = 0.0

    def matrix(self) -> np.ndarray:
        """`(4, 4)` float64 ``X_world = M @ X_mesh``."""
        M = np.eye(4)
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` mesh points to world (float64 math, the input dtype back)."""
        M = torch.as_tensor(self.matrix(), device=points.device)
        return (points.to(torch.float64) @ M[:3, :3].T + M[:3, 3]).to(points.dtype)


def _axis(name: str, what: str) -> np.ndarray:
    if name not in _AXES:
        raise ValueError(f"{what} must be one of {sorted(_AXES)}, got {name!r}.")
    return np.array(_AXES[name], dtype=np.float64)


def place_mesh(
    verts: torch.Tensor,
    rig: DTURig,
    *,
    radius_fraction: Optional[float] = None,
    margin: float = 0.04,
    up_axis: str = "+y",
    front_axis: str = "+z",
    yaw: float = 0.0,
) -> Placement:
    """
    Place a mesh where the rig's object sits.

    The bounding-box centre goes to the scale_mat centre; ``up_axis`` to the rig's up direction,
    ``front_axis`` towards the cameras (:func:`rig_up_and_front`), then a turn of ``yaw`` degrees
    about up; the scale makes the largest distance of a vertex from the bounding-box centre
    ``radius_fraction`` times the scale_mat radius.

    Args:
        verts: `(V, 3)` mesh vertices.
        rig: the cameras.
        radius_fraction: the bounding-sphere radius over the scale_mat radius, in (0, 1];
            ``None``: the largest value up to 0.8 that keeps every vertex at least ``margin``
            times the shorter image side inside every image.
        margin: see ``radius_fraction``.
        up_axis, front_axis: the mesh's up and front axes (``"+x"``, ``"-y"``, ...).
        yaw: degrees about up, after aligning the axes.

    Returns:
        :class:`Placement`.
    """
    if radius_fraction is not None and not 0.0 < radius_fraction <= 1.0:
        raise ValueError(f"radius_fraction must lie in (0, 1], got {radius_fraction}.")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must lie in [0, 0.5), got {margin}.")
    up_m, front_m = _axis(up_axis, "up_axis"), _axis(front_axis, "front_axis")
    if abs(up_m @ front_m) > 0.5:
        raise ValueError(f"up_axis {up_axis} and front_axis {front_axis} must be orthogonal.")
    V = verts.detach().to(torch.float64).cpu().numpy()
    if V.shape[0] == 0 or not np.isfinite(V).all():
        raise ValueError("The mesh has no vertices or non-finite ones.")
    centre = 0.5 * (V.min(axis=0) + V.max(axis=0))
    extent = float(np.linalg.norm(V - centre, axis=-1).max())
    if extent <= 0:
        raise ValueError("The mesh is degenerate (all vertices coincide).")
    up_w, front_w = rig_up_and_front(rig)
    mesh_axes = np.stack([front_m, up_m, np.cross(up_m, front_m)], axis=1)
    world_axes = np.stack([front_w, up_w, np.cross(up_w, front_w)], axis=1)
    rotation = _rotation_about(up_w, math.radians(yaw)) @ world_axes @ mesh_axes.T
    offsets = (V - centre) @ rotation.T * (rig.radius / extent)  # at radius_fraction 1
    if radius_fraction is None:
        radius_fraction = _largest_fitting_fraction(offsets, rig, margin=margin, at_most=0.8)
    scale = radius_fraction * rig.radius / extent
    translation = rig.centre - scale * rotation @ centre
    return Placement(
        scale=scale, rotation=rotation, translation=translation,
        radius_fraction=float(radius_fraction),
    )


def _inside_every_view(points: np.ndarray, rig: DTURig, margin_px: float) -> bool:
    """Whether `(P, 3)` world points project in front of and inside every camera's image."""
    H, W = rig.image_size
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    projected = homogeneous @ rig.world_mats[:, :3].transpose(0, 2, 1)  # (N, P, 3)
    depth = projected[..., 2]
    if not (depth > 0).all():
        return False
    u, v = projected[..., 0] / depth, projected[..., 1] / depth
    low = margin_px - 0.5
    return bool((u >= low).all() and (u <= W - 0.5 - margin_px).all()
                and (v >= low).all() and (v <= H - 0.5 - margin_px).all())


def _largest_fitting_fraction(
    offsets: np.ndarray, rig: DTURig, *, margin: float, at_most: float
) -> float:
    """The largest ``f <= at_most`` with ``centre + f * offsets`` inside every view (bisection)."""
    margin_px = margin * min(rig.image_size)
    if _inside_every_view(rig.centre + at_most * offsets, rig, margin_px):
        return at_most
    low, high = 0.0, at_most
    for _ in range(40):
        middle = 0.5 * (low + high)
        if _inside_every_view(rig.centre + middle * offsets, rig, margin_px):
            low = middle
        else:
            high = middle
    if low < 1e-3:
        raise ValueError(
            "The scale_mat centre is not inside every image with the margin; the mesh cannot "
            "be placed in view of all cameras (choose views or pass radius_fraction)."
        )
    return low


def _rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation by ``angle`` radians about the unit ``axis``."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * k @ k


# --------------------------------------------------------------------------------------------
# Texture and shading
# --------------------------------------------------------------------------------------------


class ProceduralTexture:
    """
    A seeded solid texture for meshes without one: albedo as a function of the mesh-frame
    position, so it needs no UV map and has no resolution limit.

    ``f(x) = sum_k a_k sin(2 pi w_k (d_k . u) + phi_k)`` with ``u = (x - centre) / radius``,
    random unit ``d_k``, frequencies ``w_k`` from 1.5 to 12 cycles per radius and `(3,)`
    amplitudes ``a_k ~ N(0, I) / w_k``; with ``g = f / s`` (``s`` the fields' standard
    deviations) the first channel blends two random base colours into patches, the second adds
    brightness detail, all three a little colour: ``albedo = clip(mix(c0, c1, sigmoid(4 g_0)) +
    0.12 g_1 + 0.03 g, 0.05, 0.95)``.
    """

    def __init__(
        self, *, seed: int, centre: torch.Tensor, radius: float, n_waves: int = 48
    ) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        directions = torch.randn(n_waves, 3, generator=gen, dtype=torch.float64)
        self.directions = directions / directions.norm(dim=-1, keepdim=True)
        octaves = 3.0 * torch.rand(n_waves, generator=gen, dtype=torch.float64)
        self.frequencies = 1.5 * 2.0**octaves
        self.phases = 2.0 * math.pi * torch.rand(n_waves, generator=gen, dtype=torch.float64)
        self.amplitudes = torch.randn(n_waves, 3, generator=gen, dtype=torch.float64)
        self.amplitudes /= self.frequencies[:, None]
        self.std = (0.5 * (self.amplitudes**2).sum(dim=0)).sqrt()
        self.colours = 0.15 + 0.7 * torch.rand(2, 3, generator=gen, dtype=torch.float64)
        self.centre = centre.detach().to(torch.float64).cpu()
        self.radius = float(radius)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` mesh-frame points -> `(..., 3)` albedo in [0.05, 0.95] (points' dtype)."""
        device = points.device
        u = (points.to(torch.float64) - self.centre.to(device)) / self.radius
        angle = 2.0 * math.pi * self.frequencies.to(device) * (u @ self.directions.T.to(device))
        f = torch.sin(angle + self.phases.to(device)) @ self.amplitudes.to(device)
        f = f / self.std.to(device)
        blend = torch.sigmoid(4.0 * f[..., :1])
        c0, c1 = self.colours.to(device)
        albedo = c0 + (c1 - c0) * blend + 0.12 * f[..., 1:2] + 0.03 * f
        return albedo.clamp(0.05, 0.95).to(points.dtype)


@dataclass
class Shading:
    """
    Lighting settings (see ``docs/dtu_like.md`` for the formulas).

    Attributes:
        lighting: ``"dtu"`` (a point light at each camera, highlights) or ``"studio"``
            (one fixed directional light, no highlights).
        ambient, diffuse: ``k_a``, ``k_d`` (albedo multipliers).
        specular: ``k_s``, highlight strength (``"dtu"`` only).
        shininess: the Phong / Blinn-Phong exponent.
        specular_model: ``"blinn"`` (``(n . h)^shininess``) or ``"phong"``
            (``(r . v)^shininess``).
        falloff: ``"dtu"`` only: scale the light by ``(d0 / d)^2``, ``d`` the light-to-point
            distance, ``d0`` the camera's distance to the scale_mat centre.
        light_direction: ``"studio"`` only: `(3,)` world direction towards the light.
    """

    lighting: str = "dtu"
    ambient: float = 0.2
    diffuse: float = 0.8
    specular: float = 0.5
    shininess: float = 32.0
    specular_model: str = "blinn"
    falloff: bool = False
    light_direction: Optional[list[float]] = None

    def __post_init__(self) -> None:
        if self.lighting not in LIGHTINGS:
            raise ValueError(f"lighting must be one of {LIGHTINGS}, got {self.lighting!r}.")
        if self.specular_model not in SPECULAR_MODELS:
            raise ValueError(
                f"specular_model must be one of {SPECULAR_MODELS}, got {self.specular_model!r}."
            )
        for name in ("ambient", "diffuse", "specular"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if not (math.isfinite(self.shininess) and self.shininess > 0):
            raise ValueError(f"shininess must be positive, got {self.shininess}.")
        if self.lighting == "studio" and self.light_direction is None:
            raise ValueError("studio lighting needs a light_direction.")


def shade(
    albedo: torch.Tensor,
    normals: torch.Tensor,
    points: torch.Tensor,
    eyes: torch.Tensor,
    shading: Shading,
    *,
    reference_distance: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Shade surface samples (linear RGB, not clipped).

    Args:
        albedo: `(..., 3)` surface colour.
        normals: `(..., 3)` unit normals (outward).
        points: `(..., 3)` surface points (sphere frame).
        eyes: `(..., 3)` camera centres, broadcastable to ``points`` (the light for ``"dtu"``).
        shading: the settings.
        reference_distance: `(...)`, ``d0`` of the falloff (broadcastable), needed when
            ``shading.falloff``.

    Returns:
        `(..., 3)` colour.
    """
    if shading.lighting == "studio":
        light = torch.as_tensor(shading.light_direction, dtype=normals.dtype, device=normals.device)
        light = light / light.norm()
        lambert = (normals * light).sum(-1, keepdim=True).clamp_min(0.0)
        return albedo * (shading.ambient + shading.diffuse * lambert)
    to_eye = eyes - points
    distance = to_eye.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    view = to_eye / distance  # the light sits at the camera: l = v
    n_dot_l = (normals * view).sum(-1, keepdim=True)
    lit = (n_dot_l > 0).to(albedo.dtype)
    if shading.specular_model == "blinn":  # h = (l + v) / |l + v| = v
        alignment = n_dot_l
    else:  # r = 2 (n . l) n - l, r . v = 2 (n . v)^2 - 1
        alignment = 2.0 * n_dot_l**2 - 1.0
    highlight = shading.specular * alignment.clamp_min(0.0) ** shading.shininess * lit
    light = torch.ones_like(distance)
    if shading.falloff:
        if reference_distance is None:
            raise ValueError("falloff needs reference_distance.")
        light = (reference_distance[..., None] / distance) ** 2
    diffuse = shading.diffuse * n_dot_l.clamp_min(0.0)
    return albedo * (shading.ambient + diffuse * light) + highlight * light


# --------------------------------------------------------------------------------------------
# Rasterising (PyTorch3D's MeshRasterizer; on the CPU in screen tiles)
# --------------------------------------------------------------------------------------------


def _corner_intrinsics(K: torch.Tensor, supersample: int) -> torch.Tensor:
    """Integer-centre ``K`` -> pixel-corner ``K`` of the ``supersample`` times larger image."""
    Kc = K.clone()
    Kc[:, :2, 2] += 0.5
    Kc[:, :2] *= supersample
    return Kc


def _raster_settings(size: tuple[int, int], bin_size: Optional[int]) -> RasterizationSettings:
    return RasterizationSettings(
        image_size=size, blur_radius=0.0, faces_per_pixel=1, bin_size=bin_size,
        perspective_correct=True, cull_backfaces=False,
    )


def _rasterize_tiled(
    verts: torch.Tensor,
    faces: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    size: tuple[int, int],
    tile: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    One view in square tiles, each rasterised with only the faces whose screen bounding box
    meets it (PyTorch3D's CPU rasteriser tests every face at every pixel).

    Args:
        verts: `(V, 3)`, faces: `(F, 3)`; R `(3, 3)`, t `(3,)`, K `(3, 3)` pixel-corner.
        size: ``(H, W)``.

    Returns:
        pix_to_face `(H, W)` (indices into ``faces``, -1 for none), bary `(H, W, 3)`,
        zbuf `(H, W)`.
    """
    H, W = size
    X = verts.to(torch.float64) @ R.T.to(verts.device) + t.to(verts.device)
    z = X[:, 2]
    uv = (X @ K.T.to(verts.device))[:, :2] / z.clamp_min(1e-12)[:, None]
    corners = uv[faces]  # (F, 3, 2)
    low, high = corners.min(dim=1).values, corners.max(dim=1).values
    behind = (z[faces] <= 1e-9).any(dim=1)  # cannot be bounded on screen: keep everywhere
    tiles, subsets = [], []
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            inside = (high[:, 0] >= x0 - 1) & (low[:, 0] <= x0 + tile + 1)
            inside &= (high[:, 1] >= y0 - 1) & (low[:, 1] <= y0 + tile + 1)
            selected = torch.nonzero(inside | behind)[:, 0]
            if selected.numel():
                tiles.append((y0, x0))
                subsets.append(selected)
    pix_to_face = torch.full((H, W), -1, dtype=torch.long, device=verts.device)
    bary = torch.full((H, W, 3), -1.0, dtype=verts.dtype, device=verts.device)
    zbuf = torch.full((H, W), -1.0, dtype=verts.dtype, device=verts.device)
    if not tiles:
        return pix_to_face, bary, zbuf
    shifts = torch.tensor([[x0, y0] for y0, x0 in tiles], dtype=torch.float64)
    Kt = K.expand(len(tiles), 3, 3).clone()
    Kt[:, :2, 2] -= shifts
    cameras = cameras_from_opencv(
        R.expand(len(tiles), 3, 3), t.expand(len(tiles), 3), Kt, (tile, tile),
        device=verts.device,
    )
    tile_verts, tile_faces = [], []
    for selected in subsets:  # each tile keeps only the vertices its faces use
        used, local_faces = torch.unique(faces[selected], return_inverse=True)
        tile_verts.append(verts[used])
        tile_faces.append(local_faces)
    meshes = Meshes(verts=tile_verts, faces=tile_faces)
    fragments = MeshRasterizer(cameras=cameras, raster_settings=_raster_settings((tile, tile), 0))(
        meshes
    )
    first = meshes.mesh_to_faces_packed_first_idx()
    for k, ((y0, x0), selected) in enumerate(zip(tiles, subsets, strict=True)):
        h, w = min(tile, H - y0), min(tile, W - x0)
        local = fragments.pix_to_face[k, :h, :w, 0]
        hit = local >= 0
        index = torch.where(hit, local - first[k], torch.zeros_like(local))
        pix_to_face[y0 : y0 + h, x0 : x0 + w] = torch.where(hit, selected[index], -1)
        bary[y0 : y0 + h, x0 : x0 + w] = fragments.bary_coords[k, :h, :w, 0]
        zbuf[y0 : y0 + h, x0 : x0 + w] = fragments.zbuf[k, :h, :w, 0]
    return pix_to_face, bary, zbuf


def rasterize_views(
    verts: torch.Tensor,
    faces: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    size: tuple[int, int],
    *,
    tile: Optional[int] = None,
) -> Fragments:
    """
    Rasterise one mesh in ``N`` views with PyTorch3D's ``MeshRasterizer`` (one face per pixel,
    no blur, perspective-correct barycentrics).

    Args:
        verts: `(V, 3)`, faces: `(F, 3)` (long), on the device to render on.
        R: `(N, 3, 3)`, t: `(N, 3)`, K: `(N, 3, 3)` OpenCV cameras with pixel-corner ``K``.
        size: ``(H, W)``.
        tile: rasterise in ``tile`` x ``tile`` screen tiles (default: 32 on the CPU, where
            PyTorch3D has no coarse-to-fine pass, and whole images on a GPU); 0 for whole
            images.

    Returns:
        ``Fragments`` with ``pix_to_face`` `(N, H, W, 1)` indexing ``faces`` (-1: none),
        ``bary_coords`` `(N, H, W, 1, 3)`, ``zbuf`` `(N, H, W, 1)` (camera z-depth), ``dists``
        ``None``.
    """
    if tile is None:
        tile = 32 if verts.device.type == "cpu" else 0
    if tile:
        parts = [
            _rasterize_tiled(verts, faces, R[i], t[i], K[i], size, tile) for i in range(len(R))
        ]
        p2f, bary, zbuf = (torch.stack(x) for x in zip(*parts, strict=True))
    else:
        n = R.shape[0]
        cameras = cameras_from_opencv(R, t, K, size, device=verts.device)
        meshes = Meshes(verts=[verts] * n, faces=[faces] * n)
        fragments = MeshRasterizer(cameras=cameras, raster_settings=_raster_settings(size, None))(
            meshes
        )
        local = fragments.pix_to_face[..., 0]
        offsets = meshes.mesh_to_faces_packed_first_idx().view(n, 1, 1)
        p2f = torch.where(local >= 0, local - offsets, -1)
        bary, zbuf = fragments.bary_coords[..., 0, :], fragments.zbuf[..., 0]
    return Fragments(
        pix_to_face=p2f[..., None], zbuf=zbuf[..., None], bary_coords=bary[..., None, :], dists=None
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass
class RenderedViews:
    """
    Attributes:
        colour: `(N, H, W, 3)` shaded object colour, averaged over the object's sub-samples
            (0 where ``coverage == 0``).
        albedo: `(N, H, W, 3)` texture colour, averaged the same way.
        coverage: `(N, H, W)` fraction of each pixel's sub-samples that hit the object.
    """

    colour: torch.Tensor
    albedo: torch.Tensor
    coverage: torch.Tensor

    def composite(self, background: torch.Tensor) -> torch.Tensor:
        """`(N, H, W, 3)` images over a `(N, H, W, 3)` (or broadcastable) background, clipped."""
        alpha = self.coverage[..., None]
        return (alpha * self.colour.clamp(0.0, 1.0) + (1.0 - alpha) * background).clamp(0.0, 1.0)


def _downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """`(N, H*f, W*f, C)` -> `(N, H, W, C)` box mean."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    return x.view(n, h // factor, factor, w // factor, factor, c).mean(dim=(2, 4))


def render_views(
    mesh: Meshes,
    mesh_points: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    shading: Shading,
    *,
    texture: Optional[ProceduralTexture] = None,
    supersample: int = 2,
    tile: Optional[int] = None,
) -> RenderedViews:
    """
    Rasterise and shade ``N`` views of one mesh (sphere frame).

    Args:
        mesh: a ``Meshes`` of one in the sphere frame, with PyTorch3D textures unless
            ``texture`` is given.
        mesh_points: `(V, 3)` the same vertices in the mesh's own frame (the procedural
            texture's argument).
        R, t, K: `(N, 3, 3)`, `(N, 3)`, `(N, 3, 3)` OpenCV cameras on the sphere frame with
            integer-centre ``K`` for ``image_size`` images.
        image_size: ``(H, W)``.
        shading: lighting settings.
        texture: a procedural albedo (replaces the mesh's textures).
        supersample: sub-samples per pixel side (box filter).
        tile: see :func:`rasterize_views`.

    Returns:
        :class:`RenderedViews` at ``image_size``.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}.")
    device = mesh.device
    H, W = image_size
    verts, faces = mesh.verts_packed(), mesh.faces_packed()
    R, t = R.to(device), t.to(device)
    Kc = _corner_intrinsics(K, supersample).to(device)
    fine_size = (H * supersample, W * supersample)
    fragments = rasterize_views(verts, faces, R, t, Kc, fine_size, tile=tile)
    p2f, bary = fragments.pix_to_face, fragments.bary_coords
    hit = (p2f[..., 0] >= 0).to(verts.dtype)[..., None]

    def interpolate(vertex_values: torch.Tensor) -> torch.Tensor:
        return interpolate_face_attributes(p2f, bary, vertex_values[faces])[..., 0, :]

    centres = -(R.transpose(1, 2) @ t[..., None])[..., 0].to(verts.dtype)  # (N, 3) sphere frame
    points = interpolate(verts)
    normals = torch.nn.functional.normalize(interpolate(mesh.verts_normals_packed()), dim=-1)
    # Two-sided: a face seen from its back (an open mesh, inverted winding) is shaded with its
    # normals turned to the viewer. Decided per face, so smooth normals keep their silhouettes.
    face_normals = mesh.faces_normals_packed()[p2f[..., 0].clamp_min(0)]
    backside = (face_normals * (centres[:, None, None] - points)).sum(-1, keepdim=True) < 0
    normals = torch.where(backside, -normals, normals)
    if texture is not None:  # evaluated at the sub-samples that hit the mesh only
        inside = hit[..., 0] > 0
        positions = interpolate(mesh_points.to(device=device, dtype=verts.dtype))[inside]
        albedo = torch.zeros(*inside.shape, 3, dtype=verts.dtype, device=device)
        albedo[inside] = texture(positions)
    else:
        albedo = torch.cat(
            [
                mesh.textures.sample_textures(
                    Fragments(pix_to_face=p2f[i : i + 1], zbuf=fragments.zbuf[i : i + 1],
                              bary_coords=bary[i : i + 1], dists=None),
                    faces_packed=faces,
                )[..., 0, :3]
                for i in range(p2f.shape[0])
            ]
        )
    colour = shade(
        albedo, normals, points, centres[:, None, None, :], shading,
        reference_distance=centres.norm(dim=-1)[:, None, None],
    )
    coverage = _downsample(hit, supersample)
    denominator = coverage.clamp_min(1e-12)
    return RenderedViews(
        colour=_downsample(colour * hit, supersample) / denominator,
        albedo=_downsample(albedo * hit, supersample) / denominator,
        coverage=coverage[..., 0],
    )


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------


def _parse_colour(text: str) -> Optional[tuple[float, float, float]]:
    text = text.strip().lower()
    if text in NAMED_COLOURS:
        return NAMED_COLOURS[text]
    if re.fullmatch(r"#[0-9a-f]{6}", text):
        return tuple(int(text[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    parts = text.split(",")
    if len(parts) == 3:
        try:
            rgb = tuple(float(p) for p in parts)
        except ValueError:
            return None
        if not all(0.0 <= c <= 1.0 for c in rgb):
            raise ValueError(f"A background colour r,g,b needs values in [0, 1], got {text!r}.")
        return rgb
    return None


def _fit_photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Scale a photograph to cover ``size`` (H, W) and crop its centre: `(H, W, 3)` float32."""
    from PIL import Image

    try:
        image = Image.open(path).convert("RGB")
    except OSError as error:
        raise ValueError(f"Cannot read background image {path}: {error}") from error
    H, W = size
    w0, h0 = image.size
    scale = max(W / w0, H / h0)
    w1, h1 = max(W, round(w0 * scale)), max(H, round(h0 * scale))
    if (w1, h1) != (w0, h0):
        image = image.resize((w1, h1), Image.Resampling.LANCZOS)
    left, top = (w1 - W) // 2, (h1 - H) // 2
    image = image.crop((left, top, left + W, top + H))
    return np.asarray(image, dtype=np.float32) / 255.0


def _background_source(background: Optional[str], lighting: str) -> tuple[str, Any]:
    """``("colour", rgb)`` or ``("photos", [paths])`` for a background setting."""
    if background is None:
        background = "dtu" if lighting == "dtu" else "white"
    colour = _parse_colour(str(background))
    if colour is not None:
        return "colour", colour
    if str(background) == "dtu":
        root = find_shared_data(*DTU_SCAN24)
        if root is None:
            raise FileNotFoundError(
                missing_data_message(*DTU_SCAN24)
                + " Or pass background='white' (--background white) or a folder of photographs."
            )
        return "photos", list_files(root, IMAGE_EXTENSIONS, suffix="_rgb")
    path = Path(background)
    if path.is_dir():
        return "photos", list_files(path, IMAGE_EXTENSIONS, what="background image")
    if path.is_file():
        return "photos", [path]
    raise ValueError(
        f"background {background!r} is neither a colour (white, black, grey, #rrggbb, r,g,b), "
        "'dtu', an image nor a folder of images."
    )


def background_images(
    background: Optional[str], ids: Sequence[int], image_size: tuple[int, int], *,
    lighting: str = "dtu",
) -> tuple[torch.Tensor, dict]:
    """
    Backgrounds for the views ``ids``.

    Args:
        background: ``None`` (DTU scan 24's photographs for ``"dtu"`` lighting, white for
            ``"studio"``), ``"dtu"``, a colour (``white``, ``black``, ``grey``, ``#rrggbb``,
            ``r,g,b`` in [0, 1]), an image file or a folder of images. In a folder, view ``i``
            takes the image numbered ``i`` when every view has one, else the image at its
            position in the sorted list (cycling).
        ids: camera numbers.
        image_size: ``(H, W)``.

    Returns:
        `(N, H, W, 3)` float32 backgrounds and a description for ``scene.json``.
    """
    kind, source = _background_source(background, lighting)
    H, W = image_size
    if kind == "colour":
        images = torch.tensor(source, dtype=torch.float32).expand(len(ids), H, W, 3)
        return images, {"kind": "colour", "rgb": list(source)}
    paths: list[Path] = source
    try:
        numbered = index_files(paths, "background")
    except ValueError:
        numbered = {}
    if all(i in numbered for i in ids):
        chosen = [numbered[i] for i in ids]
    else:
        chosen = [paths[k % len(paths)] for k in range(len(ids))]
    cache: dict[Path, np.ndarray] = {}
    for path in chosen:
        if path not in cache:
            cache[path] = _fit_photo(path, (H, W))
    images = torch.from_numpy(np.stack([cache[p] for p in chosen]))
    return images, {
        "kind": "photos",
        "files": [str(p) for p in chosen],
        "fit": "scaled to cover the image (Lanczos), centre crop",
    }


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------


def _load_input_mesh(path: Path, device: Device) -> Meshes:
    from ..meshing import load_mesh as load_any_mesh

    if not path.is_file():
        raise FileNotFoundError(f"Mesh not found: {path}")
    try:
        if path.suffix.lower() == ".obj":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="No mtl file provided")
                mesh = load_objs_as_meshes([str(path)], device=device, load_textures=True)
        else:
            mesh = load_any_mesh(path, device=str(device))
    except Exception as error:  # any parse failure becomes a ValueError
        raise ValueError(f"Cannot load mesh {path}: {error}") from error
    if len(mesh) != 1 or mesh.faces_packed().shape[0] == 0:
        raise ValueError(f"{path} must hold one mesh with faces.")
    return mesh


def _prepare_output(out_dir: Path, force: bool) -> None:
    """Refuse a non-empty folder unless ``force``; with ``force`` remove earlier scene files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ValueError(
                f"{out_dir} exists and is not empty; choose a new folder or pass --force "
                "(nothing was written)."
            )
        for folder, pattern in (("image", r"\d{6}\.png"), ("mask", r"\d{3}\.png")):
            if (out_dir / folder).is_dir():
                for path in (out_dir / folder).iterdir():
                    if re.fullmatch(pattern, path.name):
                        path.unlink()
    (out_dir / "image").mkdir(parents=True, exist_ok=True)
    (out_dir / "mask").mkdir(parents=True, exist_ok=True)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


def perturb_poses(
    R: torch.Tensor, t: torch.Tensor, degrees: float, distance: float, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A seeded calibration error of known size: every pose turned by exactly ``degrees`` about
    its own random axis and its camera centre moved by exactly ``distance`` in a random
    direction.

    Args:
        R: `(N, 3, 3)` OpenCV rotations (world -> camera).
        t: `(N, 3)` OpenCV translations (``x_cam = R x + t``).
        degrees: the rotation error of every camera.
        distance: the displacement of every camera centre (the units of ``t``).
        seed: the seed of the axes and directions.

    Returns:
        ``(R', t')`` with ``R' = dR R`` and ``t' = dR t - R' dc`` (centre ``c + dc``).
    """
    gen = torch.Generator().manual_seed(int(seed) + 2)
    n = R.shape[0]
    axes = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=R.dtype), dim=-1)
    moves = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=R.dtype), dim=-1)
    turn = axis_angle_to_matrix(axes * math.radians(degrees))
    new_R = turn @ R
    new_t = (turn @ t[..., None])[..., 0] - (new_R @ (distance * moves)[..., None])[..., 0]
    return new_R, new_t


def _write_cameras(
    out_dir: Path,
    rig: DTURig,
    world_mats: np.ndarray,
    names: Sequence[str] = CAMERA_FILES,
) -> list[str]:
    arrays: dict[str, np.ndarray] = {}
    for i, P in zip(rig.ids, world_mats, strict=True):
        arrays[f"world_mat_{i}"] = P
        arrays[f"scale_mat_{i}"] = rig.scale_mat
    written = []
    for name in names:
        np.savez(out_dir / name, **arrays)
        written.append(name)
    return written


def _resolve_device(device: Device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available.")
    return device


def _default_light_direction(rig: DTURig) -> list[float]:
    """Studio light: from the front, 45 degrees above the horizon, a little from the side."""
    up, front = rig_up_and_front(rig)
    side = np.cross(up, front)
    direction = up + front + 0.3 * side
    return (direction / np.linalg.norm(direction)).tolist()


@dataclass
class _SceneFacts:
    views: list[int]
    image_size: list[int]
    mask_fraction: list[float] = field(default_factory=list)
    views_touching_border: list[int] = field(default_factory=list)


def make_dtu_like_scene(
    mesh_path: PathLike,
    out_dir: PathLike,
    *,
    image_size: Sequence[int] = (300, 400),
    lighting: str = "dtu",
    shininess: float = 32.0,
    specular: float = 0.5,
    ambient: Optional[float] = None,
    diffuse: Optional[float] = None,
    specular_model: str = "blinn",
    falloff: bool = False,
    light_direction: Optional[Sequence[float]] = None,
    background: Optional[str] = None,
    cameras_path: Optional[PathLike] = None,
    camera_image_size: Sequence[int] = DTU_IMAGE_SIZE,
    views: Optional[Sequence[int]] = None,
    radius_fraction: Optional[float] = None,
    margin: float = 0.04,
    up_axis: str = "+y",
    front_axis: str = "+z",
    yaw: float = 0.0,
    texture: str = "auto",
    soft_masks: bool = False,
    noise: float = 0.0,
    pose_noise: Sequence[float] = (0.0, 0.0),
    supersample: int = 2,
    device: Device = "cpu",
    seed: int = 0,
    chunk_size: Optional[int] = None,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """
    Render a mesh as a DTU-style capture with exact ground truth.

    Writes to ``out_dir``: ``image/000000.png ...`` (8-bit RGB), ``mask/000.png ...`` (0 / 255;
    coverage * 255 with ``soft_masks``), ``cameras_sphere.npz`` and an identical
    ``cameras.npz`` (``world_mat_i``: world -> pixels of these images, integer pixel centres;
    ``scale_mat_i``: the unit sphere -> world), ``gt_mesh.ply`` (world units) and ``scene.json``
    (frame, units, placement, lighting, background, seed, per-view facts).

    Args:
        mesh_path: a closed mesh (``.obj`` with its texture when the ``.mtl`` has one, or
            ``.ply``).
        out_dir: a new or empty folder (or any folder with ``force``).
        image_size: ``(H, W)``, the aspect ratio of ``camera_image_size``.
        lighting: ``"dtu"`` (a point light at each camera, highlights, photo background) or
            ``"studio"`` (a fixed directional light, no highlights, plain background).
        shininess, specular, specular_model, falloff: the highlights (``"dtu"``).
        ambient, diffuse: ``k_a``, ``k_d`` (default 0.2 / 0.8 for ``"dtu"``, 0.5 / 0.5 for
            ``"studio"``).
        light_direction: ``"studio"``: world direction towards the light (default: 45 degrees
            above the horizon, towards the cameras).
        background: see :func:`background_images`.
        cameras_path: a DTU cameras file (default: DTU scan 24, 49 cameras).
        camera_image_size: ``(H, W)`` the file's ``world_mat_i`` project into.
        views: camera numbers to render (default: all).
        radius_fraction, margin, up_axis, front_axis, yaw: the placement (see
            :func:`place_mesh`; by default the mesh is as large as fits in every image, with
            its bounding sphere at most 0.8 times the scale_mat radius).
        texture: ``"auto"`` (the mesh's own texture, else procedural) or ``"procedural"``.
        soft_masks: write anti-aliased masks (coverage) instead of 0 / 255.
        noise: standard deviation of seeded Gaussian noise added to the images.
        pose_noise: ``(degrees, distance)``: a calibration error. The images are rendered from
            the exact cameras, but the cameras files get each pose turned by exactly
            ``degrees`` about a random axis and moved by exactly ``distance`` (units of the
            scale_mat's unit sphere) in a random direction (camera frame), seeded by ``seed``;
            the exact ones go to ``cameras_exact.npz`` (:func:`perturb_poses`).
        supersample: sub-samples per pixel side (anti-aliasing; masks are coverage >= 1/2).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        seed: seeds the procedural texture and the noise.
        chunk_size: views rendered at once (default: as many as keep about 4 million
            sub-samples, at most 8).
        force: write into a non-empty folder (earlier ``image/`` and ``mask/`` files of a scene
            are removed first).
        progress: show a progress bar over the views.

    Returns:
        A dict of paths and facts (also in ``scene.json``).
    """
    started = time.time()
    if lighting not in LIGHTINGS:
        raise ValueError(f"lighting must be one of {LIGHTINGS}, got {lighting!r}.")
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}.")
    if not (isinstance(supersample, int) and 1 <= supersample <= 8):
        raise ValueError(f"supersample must be an integer in 1..8, got {supersample}.")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be >= 0, got {noise}.")
    pose_noise = tuple(float(v) for v in pose_noise)
    if len(pose_noise) != 2 or not all(math.isfinite(v) and v >= 0 for v in pose_noise):
        raise ValueError(
            f"pose_noise must be (degrees, distance), both >= 0, got {tuple(pose_noise)}."
        )
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be (H, W) with both >= 8, got {tuple(image_size)}.")
    if chunk_size is None:
        chunk_size = int(min(8, max(1, 4_000_000 // (size[0] * size[1] * supersample**2))))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    device = _resolve_device(device)
    mesh_path, out = Path(mesh_path), Path(out_dir)

    full_rig = load_dtu_rig(cameras_path, image_size=size, camera_image_size=camera_image_size)
    rig = full_rig.select(views)  # the placement uses every camera, so subsets agree
    studio = lighting == "studio"
    shading = Shading(
        lighting=lighting,
        ambient=(0.5 if studio else 0.2) if ambient is None else float(ambient),
        diffuse=(0.5 if studio else 0.8) if diffuse is None else float(diffuse),
        specular=0.0 if studio else float(specular),
        shininess=float(shininess),
        specular_model=specular_model,
        falloff=bool(falloff) and not studio,
        light_direction=(
            (list(map(float, light_direction)) if light_direction is not None
             else _default_light_direction(full_rig)) if studio else None
        ),
    )
    backgrounds, background_info = background_images(background, rig.ids, size, lighting=lighting)
    mesh = _load_input_mesh(mesh_path, device)
    _warn_if_open(mesh, mesh_path)
    _prepare_output(out, force)

    mesh_verts = mesh.verts_packed().to(torch.float64)
    placement = place_mesh(
        mesh_verts, full_rig, radius_fraction=radius_fraction, margin=margin, up_axis=up_axis,
        front_axis=front_axis, yaw=yaw,
    )
    world_verts = placement.apply(mesh_verts)
    sphere_verts = ((world_verts - torch.as_tensor(rig.centre, device=device)) / rig.radius).float()
    render_mesh = Meshes(verts=[sphere_verts], faces=[mesh.faces_packed()], textures=mesh.textures)
    use_procedural = texture == "procedural" or mesh.textures is None
    procedural = None
    if use_procedural:
        low, high = mesh_verts.min(dim=0).values, mesh_verts.max(dim=0).values
        centre = 0.5 * (low + high)
        procedural = ProceduralTexture(
            seed=seed, centre=centre, radius=float((mesh_verts - centre).norm(dim=-1).max())
        )

    K, R, t = rig.opencv()
    written_mats = _recompose_world_mats(K, R, t, rig.scale_mat)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    facts = _SceneFacts(views=list(rig.ids), image_size=list(size))
    bar = _progress(len(rig.ids), progress)
    for start in range(0, len(rig.ids), chunk_size):
        idx = list(range(start, min(start + chunk_size, len(rig.ids))))
        views_out = render_views(
            render_mesh, mesh_verts.float(), R[idx], t[idx], K[idx], size,
            shading, texture=procedural, supersample=supersample,
        )
        images = views_out.composite(backgrounds[idx].to(device)).cpu()
        if noise > 0:
            images = (images + noise * torch.randn(images.shape, generator=gen)).clamp(0.0, 1.0)
        coverage = views_out.coverage.cpu()
        masks = coverage if soft_masks else (coverage >= 0.5).float()
        for k, i in enumerate(idx):
            view = rig.ids[i]
            _write_png(out / "image" / f"{view:06d}.png", _to_uint8(images[k]))
            _write_png(out / "mask" / f"{view:03d}.png", _to_uint8(masks[k]))
            hard = coverage[k] >= 0.5
            facts.mask_fraction.append(round(float(hard.float().mean()), 5))
            border = torch.cat([hard[0], hard[-1], hard[:, 0], hard[:, -1]])
            if bool(border.any()):
                facts.views_touching_border.append(view)
        bar.update(len(idx))
    bar.close()
    empty = [v for v, f in zip(facts.views, facts.mask_fraction, strict=True) if f == 0.0]
    if empty:
        warnings.warn(
            f"The object is not seen in views {empty} (empty masks); check the placement "
            "(radius_fraction, the cameras file).",
            stacklevel=2,
        )
    if facts.views_touching_border:
        warnings.warn(
            f"The object crosses the image border in {len(facts.views_touching_border)} of "
            f"{len(facts.views)} views ({facts.views_touching_border}); masks there show only "
            "part of it. Leave radius_fraction unset to fit the object in every view.",
            stacklevel=2,
        )

    exact_mats = written_mats
    if any(v > 0 for v in pose_noise):
        noisy_R, noisy_t = perturb_poses(R, t, *pose_noise, seed=seed)
        written_mats = _recompose_world_mats(K, noisy_R, noisy_t, rig.scale_mat)
        _write_cameras(out, rig, exact_mats, names=(EXACT_CAMERAS_FILE,))
    camera_files = _write_cameras(out, rig, written_mats)
    _write_gt_mesh(out / "gt_mesh.ply", world_verts, mesh.faces_packed(), rig)
    report = {
        "format": "dtu_like",
        "out_dir": str(out),
        "images": str(out / "image"),
        "masks": str(out / "mask"),
        "cameras": [str(out / name) for name in camera_files],
        "gt_mesh": str(out / "gt_mesh.ply"),
        "scene": str(out / "scene.json"),
        "frame": "world: the frame of the cameras file "
        f"({Path(rig.source).name}); world_mat_i maps it to pixels (integer pixel centres)",
        "units": "DTU millimetres" if cameras_path is None else "the cameras file's world units",
        "mesh": str(mesh_path),
        "texture": "procedural (seeded)" if use_procedural else type(mesh.textures).__name__,
        "cameras_file": rig.source,
        "camera_image_size": [int(s) for s in camera_image_size],
        "scale_mat": rig.scale_mat.tolist(),
        "placement": {
            "formula": "X_world = scale * rotation @ X_mesh + translation",
            "scale": placement.scale,
            "rotation": placement.rotation.tolist(),
            "translation": placement.translation.tolist(),
            "radius_fraction": placement.radius_fraction,
            "radius_fraction_chosen": "given" if radius_fraction is not None else (
                f"largest up to 0.8 with a margin of {margin} x the shorter image side"
            ),
            "up_axis": up_axis,
            "front_axis": front_axis,
            "yaw_degrees": yaw,
            "rig_up": rig_up_and_front(full_rig)[0].tolist(),
            "from_cameras": "all cameras of the file (so view subsets share one placement)",
        },
        "lighting": asdict(shading),
        "background": background_info,
        "supersample": supersample,
        "soft_masks": soft_masks,
        "noise": noise,
        "pose_noise": {
            "degrees": pose_noise[0],
            "distance": pose_noise[1],
            "note": (
                f"{CAMERA_FILES} hold the perturbed poses, {EXACT_CAMERAS_FILE} the exact ones"
                if any(v > 0 for v in pose_noise)
                else "none: the cameras files hold the exact poses"
            ),
        },
        "seed": seed,
        "device": str(device),
        "seconds": round(time.time() - started, 2),
        **asdict(facts),
    }
    stored = {key: value for key, value in report.items() if key != "out_dir"}
    for key in ("images", "masks", "gt_mesh", "scene"):  # relative: the folder can move
        stored[key] = Path(report[key]).name
    stored["cameras"] = list(CAMERA_FILES)
    (out / "scene.json").write_text(json.dumps(stored, indent=2) + "\n")
    return report


def _recompose_world_mats(
    K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, scale_mat: np.ndarray
) -> np.ndarray:
    """`(N, 4, 4)` ``K [R | t] scale_mat^-1``: exactly the (skew-free) cameras rendered with."""
    Rt = torch.cat([R, t[..., None]], dim=-1).numpy()
    P = np.zeros((len(R), 4, 4))
    P[:, :3] = K.numpy() @ Rt @ np.linalg.inv(scale_mat)
    P[:, 3, 3] = 1.0
    return P


def _write_gt_mesh(path: Path, verts: torch.Tensor, faces: torch.Tensor, rig: DTURig) -> None:
    from ..meshing import save_mesh

    mesh = Meshes(verts=[verts.float().cpu()], faces=[faces.cpu()])
    save_mesh(
        mesh,
        path,
        comments=[
            f"frame: world of {Path(rig.source).name} (world_mat_i in cameras_sphere.npz)",
            "units: the cameras file's world units (DTU: millimetres)",
        ],
    )


def _warn_if_open(mesh: Meshes, path: Path) -> None:
    from ..metrics import is_watertight

    if not bool(is_watertight(mesh.cpu()).all()):
        warnings.warn(
            f"{path.name} is not closed (watertight): renders and masks are fine, but volume "
            "IoU against it is undefined (score with `dvr eval --no-iou`).",
            stacklevel=3,
        )


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="make-scene", unit="view", disable=not enabled)
