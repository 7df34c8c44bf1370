"""
A small category of shapes made in code, rendered with PyTorch3D and written in the reference
DVR layout: a stand-in for ShapeNet when no download is at hand.

Every object is assembled from boxes and (truncated) cylinders with random proportions and
colours. Classes (:data:`SHAPE_CLASSES`):

- ``chair``: seat, four legs (square or round), a backrest, sometimes arm panels;
- ``table``: a top on four legs, or a round or square top on a pedestal with a foot;
- ``lamp``: a foot (disc or block), a pole and a shade (a truncated cone).

The object stands on +Y (up), is centred on its bounding box and scaled so that the longest
side is ``longest_side`` (0.8: inside the unit cube like ShapeNet's normalised models). It is
rendered with ``MeshRasterizer`` + ``HardPhongShader`` from ``n_views`` cameras looking at the
origin (random azimuth, elevation uniform in ``elevation_range``), lit by ambient light and one
directional light fixed in the object frame with no specular part, so a surface point has the
same colour in every view (what DVR's texture field models) while the images still carry
shading. Images are rendered ``supersample`` times larger and averaged down; masks are the
pixels covered at least half, depth the mean z-buffer of their covered sub-pixels.

Layout written (the reference DVR / Occupancy Networks ShapeNet layout)::

    OUT/metadata.yaml                 {class: {id, name}}
    OUT/category.json                 the generation settings and counts
    OUT/<class>/train.lst, val.lst, test.lst   object ids, one per line
    OUT/<class>/<object>/image/0000.png ...    RGB
    OUT/<class>/<object>/mask/0000.png ...     object masks
    OUT/<class>/<object>/depth/0000.npy ...    z-depth, inf on the background
    OUT/<class>/<object>/cameras.npz           camera_mat_i, world_mat_i, scale_mat_i
    OUT/<class>/<object>/mesh.ply              the ground-truth mesh in the object frame
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from pytorch3d.renderer import (
    BlendParams,
    DirectionalLights,
    HardPhongShader,
    MeshRasterizer,
    RasterizationSettings,
    TexturesVertex,
)
from pytorch3d.structures import Meshes

from ..data import (
    MultiViewData,
    cameras_looking_at_origin,
    normalize_mesh,
    random_elevation,
    write_dvr_layout,
)
from ..engine.config import positive

MESH_FILE = "mesh.ply"
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Primitives: (verts (V, 3), faces (F, 3), colour (3,)) with outward faces and flat boxes


@dataclass
class Part:
    """
    One closed convex piece of an object.

    Members:
        verts: `(V, 3)` float vertices.
        faces: `(F, 3)` int triangles, outward oriented.
        colour: `(3,)` RGB in [0, 1].
    """

    verts: np.ndarray
    faces: np.ndarray
    colour: np.ndarray


def _orient_outward(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip the triangles of a convex piece whose normal points towards its centre."""
    centre = verts.mean(axis=0)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    normals = np.cross(b - a, c - a)
    inward = np.einsum("ij,ij->i", normals, (a + b + c) / 3.0 - centre) < 0
    out = faces.copy()
    out[inward] = out[inward][:, [0, 2, 1]]
    return out


def box(centre: Sequence[float], size: Sequence[float], colour: np.ndarray) -> Part:
    """An axis-aligned box (4 vertices per side, so every side is shaded flat)."""
    c = np.asarray(centre, dtype=np.float64)
    h = 0.5 * np.asarray(size, dtype=np.float64)
    if np.any(h <= 0):
        raise ValueError(f"A box needs positive sizes, got {size}.")
    verts, faces = [], []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for sign in (-1.0, 1.0):
            base = len(verts)
            for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[u], p[v] = sign * h[axis], su * h[u], sv * h[v]
                verts.append(c + p)
            faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    verts_a = np.asarray(verts)
    return Part(verts_a, _orient_outward(verts_a, np.asarray(faces)), colour)


def frustum(
    bottom: Sequence[float],
    height: float,
    radius_bottom: float,
    radius_top: float,
    colour: np.ndarray,
    *,
    segments: int = 24,
) -> Part:
    """
    A vertical truncated cone (a cylinder when both radii agree) standing on ``bottom``, with
    smooth sides and flat caps.
    """
    if height <= 0 or radius_bottom <= 0 or radius_top <= 0 or segments < 3:
        raise ValueError("A frustum needs a positive height and radii and >= 3 segments.")
    b = np.asarray(bottom, dtype=np.float64)
    angles = np.arange(segments) * (2.0 * math.pi / segments)
    ring = np.stack([np.cos(angles), np.zeros(segments), np.sin(angles)], axis=-1)
    lower = b + radius_bottom * ring
    upper = b + radius_top * ring + np.array([0.0, height, 0.0])
    nxt = (np.arange(segments) + 1) % segments
    i = np.arange(segments)
    side = np.concatenate(
        [np.stack([i, nxt, segments + nxt], -1), np.stack([i, segments + nxt, segments + i], -1)]
    )
    # Caps: their own copies of the rings (flat normals), fanned from a centre vertex.
    cap_lower = 2 * segments
    cap_upper = cap_lower + segments + 1
    bottom_cap = np.stack(
        [np.full(segments, cap_lower + segments), cap_lower + nxt, cap_lower + i], -1
    )
    top_cap = np.stack(
        [np.full(segments, cap_upper + segments), cap_upper + i, cap_upper + nxt], -1
    )
    verts = np.concatenate(
        [
            lower,
            upper,
            lower,
            b[None],
            upper,
            (b + np.array([0.0, height, 0.0]))[None],
        ]
    )
    faces = np.concatenate([side, bottom_cap, top_cap])
    return Part(verts, _orient_outward(verts, faces), colour)


def random_colour(
    rng: np.random.Generator,
    *,
    saturation: tuple[float, float] = (0.35, 0.9),
    value: tuple[float, float] = (0.45, 0.95),
) -> np.ndarray:
    """A random RGB colour from uniform hue and the given saturation / value ranges."""
    h = rng.uniform(0.0, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(*value)))


# ---------------------------------------------------------------------------------------------
# The classes (object frame: +Y up, standing on y = 0, front towards +Z)


def make_chair(rng: np.random.Generator) -> list[Part]:
    """A chair: seat, four legs (square or round), a backrest and sometimes arm panels."""
    body, legs_colour = random_colour(rng), random_colour(rng, saturation=(0.1, 0.7))
    width, depth = rng.uniform(0.40, 0.60), rng.uniform(0.38, 0.58)
    seat_t, leg_h = rng.uniform(0.04, 0.08), rng.uniform(0.32, 0.50)
    leg_t, back_h, back_t = (
        rng.uniform(0.045, 0.08),
        rng.uniform(0.30, 0.60),
        rng.uniform(0.03, 0.07),
    )
    inset = rng.uniform(0.0, 0.04)
    round_legs = rng.random() < 0.4
    parts = [box((0.0, leg_h + seat_t / 2, 0.0), (width, seat_t, depth), body)]
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            x = sx * (width / 2 - leg_t / 2 - inset)
            z = sz * (depth / 2 - leg_t / 2 - inset)
            if round_legs:
                parts.append(
                    frustum((x, 0.0, z), leg_h, leg_t / 2, leg_t / 2, legs_colour, segments=12)
                )
            else:
                parts.append(box((x, leg_h / 2, z), (leg_t, leg_h, leg_t), legs_colour))
    top = leg_h + seat_t
    parts.append(
        box((0.0, top + back_h / 2, -depth / 2 + back_t / 2), (width, back_h, back_t), body)
    )
    if rng.random() < 0.35:
        arm_h, arm_t = rng.uniform(0.12, 0.25), rng.uniform(0.03, 0.06)
        arm_d = depth - back_t
        for sx in (-1.0, 1.0):
            parts.append(
                box(
                    (sx * (width / 2 - arm_t / 2), top + arm_h / 2, back_t / 2),
                    (arm_t, arm_h, arm_d),
                    body,
                )
            )
    return parts


def make_table(rng: np.random.Generator) -> list[Part]:
    """A table: a top on four legs, or a round / square top on a pedestal with a foot."""
    top_colour, legs_colour = random_colour(rng), random_colour(rng, saturation=(0.1, 0.7))
    height, top_t = rng.uniform(0.35, 0.60), rng.uniform(0.03, 0.07)
    if rng.random() < 0.3:
        radius = rng.uniform(0.30, 0.50)
        foot_r, foot_h = rng.uniform(0.12, 0.25), rng.uniform(0.02, 0.05)
        pole_r = rng.uniform(0.025, 0.06)
        parts = [
            frustum((0.0, 0.0, 0.0), foot_h, foot_r, foot_r, legs_colour),
            frustum(
                (0.0, foot_h, 0.0),
                height - foot_h - top_t,
                pole_r,
                pole_r,
                legs_colour,
                segments=16,
            ),
        ]
        if rng.random() < 0.5:
            parts.append(
                frustum((0.0, height - top_t, 0.0), top_t, radius, radius, top_colour, segments=32)
            )
        else:
            side = radius * 1.6
            parts.append(box((0.0, height - top_t / 2, 0.0), (side, top_t, side), top_colour))
        return parts
    width, depth = rng.uniform(0.70, 1.00), rng.uniform(0.45, 0.80)
    leg_t, inset = rng.uniform(0.04, 0.08), rng.uniform(0.0, 0.06)
    leg_h = height - top_t
    parts = [box((0.0, height - top_t / 2, 0.0), (width, top_t, depth), top_colour)]
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            x = sx * (width / 2 - leg_t / 2 - inset)
            z = sz * (depth / 2 - leg_t / 2 - inset)
            parts.append(box((x, leg_h / 2, z), (leg_t, leg_h, leg_t), legs_colour))
    return parts


def make_lamp(rng: np.random.Generator) -> list[Part]:
    """A lamp: a foot (disc or block), a pole and a shade (truncated cone)."""
    metal = random_colour(rng, saturation=(0.0, 0.3), value=(0.3, 0.8))
    shade_colour = random_colour(rng, saturation=(0.4, 0.9), value=(0.7, 1.0))
    foot_r, foot_h = rng.uniform(0.12, 0.22), rng.uniform(0.03, 0.07)
    pole_r, pole_h = rng.uniform(0.02, 0.04), rng.uniform(0.45, 0.80)
    shade_h = rng.uniform(0.15, 0.30)
    shade_bottom, shade_top = rng.uniform(0.15, 0.28), rng.uniform(0.06, 0.18)
    if rng.random() < 0.3:
        parts = [box((0.0, foot_h / 2, 0.0), (2 * foot_r, foot_h, 2 * foot_r), metal)]
    else:
        parts = [frustum((0.0, 0.0, 0.0), foot_h, foot_r, foot_r, metal)]
    parts.append(frustum((0.0, foot_h, 0.0), pole_h, pole_r, pole_r, metal, segments=12))
    parts.append(
        frustum(
            (0.0, foot_h + pole_h, 0.0), shade_h, shade_bottom, shade_top, shade_colour, segments=32
        )
    )
    return parts


SHAPE_CLASSES: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "chair": make_chair,
    "table": make_table,
    "lamp": make_lamp,
}


def parts_to_mesh(parts: Sequence[Part], *, device: Union[str, torch.device] = "cpu") -> Meshes:
    """Join parts into one ``Meshes`` of one with vertex colours (``TexturesVertex``)."""
    if not parts:
        raise ValueError("An object needs at least one part.")
    verts, faces, colours, offset = [], [], [], 0
    for part in parts:
        verts.append(part.verts)
        faces.append(part.faces + offset)
        colours.append(np.broadcast_to(part.colour, part.verts.shape))
        offset += part.verts.shape[0]
    v = torch.tensor(np.concatenate(verts), dtype=torch.float32, device=device)
    f = torch.tensor(np.concatenate(faces), dtype=torch.int64, device=device)
    c = torch.tensor(np.concatenate(colours), dtype=torch.float32, device=device)
    return Meshes(verts=[v], faces=[f], textures=TexturesVertex(verts_features=[c]))


def object_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of one object: depends on the seed, the class and the index only."""
    class_key = sum((i + 1) * ord(ch) for i, ch in enumerate(class_name))
    return np.random.default_rng([int(seed), class_key, int(index)])


def make_object(
    class_name: str,
    rng: np.random.Generator,
    *,
    longest_side: float = 0.8,
    device: Union[str, torch.device] = "cpu",
) -> Meshes:
    """
    One random object of ``class_name``, centred and scaled into the unit cube.

    Returns:
        A ``Meshes`` of one with vertex colours.
    """
    if class_name not in SHAPE_CLASSES:
        raise ValueError(f"Unknown shape class {class_name!r}; known: {sorted(SHAPE_CLASSES)}.")
    mesh = parts_to_mesh(SHAPE_CLASSES[class_name](rng), device=device)
    mesh, _ = normalize_mesh(mesh, longest_side=longest_side)
    return mesh


# ---------------------------------------------------------------------------------------------
# Rendering


LIGHT_DIRECTION = (0.4, 1.0, 0.6)


@torch.no_grad()
def render_object(
    mesh: Meshes,
    cameras,
    *,
    supersample: int = 2,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    ambient: float = 0.45,
    diffuse: float = 0.55,
    light_direction: Sequence[float] = LIGHT_DIRECTION,
) -> MultiViewData:
    """
    Render a vertex-coloured mesh from NDC ``PerspectiveCameras`` (with ``image_size``).

    Shading: ``albedo * (ambient + diffuse * max(0, n . l))`` with ``l`` fixed in the object
    frame (view independent). The cameras' image size is rendered ``supersample`` times larger
    and averaged down (:meth:`MultiViewData.downscale`).

    Args:
        mesh: a ``Meshes`` of one with ``TexturesVertex``.
        cameras: ``N`` NDC ``PerspectiveCameras`` whose ``image_size`` is the final size.
        supersample: the rendering factor.
        background: RGB of empty pixels.
        ambient, diffuse: light strengths.
        light_direction: towards the light, object frame.

    Returns:
        :class:`MultiViewData` with images, masks, z-depth (0 = background) and the cameras.
    """
    positive("supersample", supersample)
    device = cameras.device
    size = [int(s) for s in cameras.image_size[0].tolist()]
    big = (size[0] * supersample, size[1] * supersample)
    n = len(cameras)
    big_cameras = cameras_like(cameras, big)
    lights = DirectionalLights(
        ambient_color=((ambient,) * 3,),
        diffuse_color=((diffuse,) * 3,),
        specular_color=((0.0,) * 3,),
        direction=(tuple(float(v) for v in light_direction),),
        device=device,
    )
    meshes = mesh.to(device).extend(n)
    raster = RasterizationSettings(image_size=big, blur_radius=0.0, faces_per_pixel=1)
    fragments = MeshRasterizer(cameras=big_cameras, raster_settings=raster)(meshes)
    shader = HardPhongShader(
        device=device,
        cameras=big_cameras,
        lights=lights,
        blend_params=BlendParams(background_color=tuple(float(c) for c in background)),
    )
    rgba = shader(fragments, meshes)
    hit = fragments.pix_to_face[..., 0] >= 0
    zbuf = fragments.zbuf[..., 0]
    data = MultiViewData(
        images=rgba[..., :3].clamp(0.0, 1.0),
        masks=hit,
        depths=torch.where(hit, zbuf, torch.zeros_like(zbuf)).clamp_min(0.0),
        cameras=big_cameras,
        names=[f"{i:04d}" for i in range(n)],
        info={"format": "category"},
    )
    if supersample == 1:
        return data
    small = data.downscale(supersample)
    # A pixel is object when at least half of it is covered (thin parts survive), and depth is
    # known exactly there: the mean depth of its covered sub-pixels.
    coverage = F.avg_pool2d(hit[:, None].float(), supersample)[:, 0]
    masks = coverage >= 0.5
    covered_depth = F.avg_pool2d(data.depths[:, None], supersample)[:, 0]
    depths = covered_depth / coverage.clamp_min(1e-12)
    return MultiViewData(
        images=small.images,
        masks=masks,
        depths=torch.where(masks, depths, torch.zeros_like(depths)),
        cameras=small.cameras,
        names=small.names,
        info=small.info,
    )


def cameras_like(cameras, image_size: tuple[int, int]):
    """The same NDC ``PerspectiveCameras`` with another ``image_size`` (square pixels kept)."""
    from pytorch3d.renderer import PerspectiveCameras

    n = len(cameras)
    return PerspectiveCameras(
        R=cameras.R,
        T=cameras.T,
        focal_length=cameras.focal_length.expand(n, -1),
        principal_point=cameras.principal_point.expand(n, -1),
        image_size=torch.tensor([list(image_size)] * n, device=cameras.device),
        device=cameras.device,
    )


def object_cameras(
    n_views: int,
    *,
    image_size: int,
    distance: float,
    fov: float,
    elevation_range: tuple[float, float],
    seed: int,
    device: Union[str, torch.device] = "cpu",
):
    """``n_views`` cameras at random azimuth and elevation (seeded) looking at the origin."""
    directions = random_elevation(n_views, elevation_range=elevation_range, seed=seed)
    return cameras_looking_at_origin(
        distance * directions.float(), image_size=image_size, fov=fov, device=device
    )


# ---------------------------------------------------------------------------------------------
# The whole category


@dataclass
class CategorySettings:
    """
    How :func:`make_category` builds and renders the objects.

    Members:
        classes: shape classes (:data:`SHAPE_CLASSES`).
        n_train, n_val, n_test: objects per class in each split.
        n_views: rendered views per object (view 0 is the input at test time).
        image_size: pixels per side.
        supersample: render this much larger and average down.
        camera_distance: distance of the cameras from the origin.
        fov: field of view (degrees).
        elevation_range: ``[min, max]`` camera elevation (degrees).
        longest_side: the objects' longest bounding-box side.
        background: RGB of empty pixels.
        seed: seeds every object (an object depends on the seed, its class and its index).
    """

    classes: list = field(default_factory=lambda: ["chair", "table", "lamp"])
    n_train: int = 100
    n_val: int = 5
    n_test: int = 17
    n_views: int = 24
    image_size: int = 64
    supersample: int = 2
    camera_distance: float = 2.0
    fov: float = 40.0
    elevation_range: list = field(default_factory=lambda: [-10.0, 50.0])
    longest_side: float = 0.8
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("classes must name at least one shape class.")
        unknown = [c for c in self.classes if c not in SHAPE_CLASSES]
        if unknown:
            raise ValueError(f"Unknown shape classes {unknown}; known: {sorted(SHAPE_CLASSES)}.")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must not repeat, got {self.classes}.")
        if self.n_train < 1 or self.n_val < 0 or self.n_test < 0:
            raise ValueError("n_train must be >= 1 and n_val, n_test >= 0.")
        positive("n_views", self.n_views)
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}.")
        positive("supersample", self.supersample)
        if self.camera_distance <= 0.9:
            raise ValueError(
                "camera_distance must exceed 0.9 (outside the unit cube), got "
                f"{self.camera_distance}."
            )
        if not 0 < self.fov < 180:
            raise ValueError(f"fov must lie in (0, 180) degrees, got {self.fov}.")
        low, high = self.elevation_range
        if not -90.0 <= low <= high <= 90.0:
            raise ValueError(
                f"elevation_range must satisfy -90 <= min <= max <= 90, got {self.elevation_range}."
            )
        if not 0 < self.longest_side <= 1:
            raise ValueError(f"longest_side must lie in (0, 1], got {self.longest_side}.")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


def _check_output_folder(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir} exists and is not a folder.")
        if any(out_dir.iterdir()):
            raise ValueError(
                f"{out_dir} exists and is not empty; choose a new folder (nothing was written)."
            )


def _write_object(root: Path, data: MultiViewData, mesh: Meshes) -> None:
    from ..meshing import save_mesh

    write_dvr_layout(root, data)
    save_mesh(mesh.cpu(), root / MESH_FILE)


def make_category(
    out_dir: Union[str, os.PathLike],
    settings: Optional[CategorySettings] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    workers: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """
    Generate a category of objects and write it in the reference DVR layout (module docstring).

    Args:
        out_dir: a new or empty folder (never overwritten).
        settings: the :class:`CategorySettings` (defaults: chairs, tables and lamps,
            100 / 5 / 17 objects per class, 24 views of 64x64).
        device: where meshes are rendered (``"cuda"`` is much faster for many objects).
        workers: threads writing files while the next objects render.
        progress: show a progress bar.

    Returns:
        The summary also written to ``category.json`` (settings, counts, seconds, objects
        whose mask touches the image border).
    """
    import yaml
    from tqdm.auto import tqdm

    settings = settings or CategorySettings()
    positive("workers", workers)
    out = Path(out_dir)
    _check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    start = time.perf_counter()
    sizes = settings.split_sizes()
    per_class = sum(sizes.values())
    jobs = []
    for class_name in settings.classes:
        index = 0
        for split in SPLITS:
            for _ in range(sizes[split]):
                jobs.append((class_name, split, index))
                index += 1
    lists: dict[str, dict[str, list[str]]] = {c: {s: [] for s in SPLITS} for c in settings.classes}
    touching: list[str] = []
    bar = tqdm(total=len(jobs), desc="make-category", unit="obj", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for class_name, split, index in jobs:
            rng = object_rng(settings.seed, class_name, index)
            mesh = make_object(class_name, rng, longest_side=settings.longest_side, device=device)
            cameras = object_cameras(
                settings.n_views,
                image_size=settings.image_size,
                distance=settings.camera_distance,
                fov=settings.fov,
                elevation_range=tuple(settings.elevation_range),
                seed=int(rng.integers(0, 2**31 - 1)),
                device=device,
            )
            data = render_object(
                mesh, cameras, supersample=settings.supersample, background=settings.background
            ).to("cpu")
            name = f"{class_name}_{index:04d}"
            border = data.masks[:, 0, :].any() | data.masks[:, -1, :].any()
            border = border | data.masks[:, :, 0].any() | data.masks[:, :, -1].any()
            if bool(border):
                touching.append(name)
            lists[class_name][split].append(name)
            pending.append(pool.submit(_write_object, out / class_name / name, data, mesh.cpu()))
            if len(pending) > 4 * workers:
                pending.pop(0).result()
            bar.update(1)
        for job in pending:
            job.result()
    bar.close()
    for class_name in settings.classes:
        for split in SPLITS:
            names = lists[class_name][split]
            (out / class_name / f"{split}.lst").write_text("".join(f"{n}\n" for n in names))
    with open(out / "metadata.yaml", "w") as handle:
        yaml.safe_dump({c: {"id": c, "name": c} for c in settings.classes}, handle, sort_keys=False)
    summary = {
        "generator": "dvr_plugin.single_view.category",
        "version": GENERATOR_VERSION,
        "settings": asdict(settings),
        "objects": len(jobs),
        "objects_per_class": per_class,
        "splits": {s: sizes[s] * len(settings.classes) for s in SPLITS},
        "masks_touching_border": touching,
        "device": str(device),
        "seconds": time.perf_counter() - start,
    }
    with open(out / "category.json", "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    return summary
