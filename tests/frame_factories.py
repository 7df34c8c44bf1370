"""
Fixture data folders for the frame tests: for each data format, a tiny folder with a known,
non-trivial world transform (DTU / MonoSDF: a scale_mat of scale 200 with an offset;
NeRF-synthetic: Blender units; the DVR layout: a scale_mat with a rotation; a mesh file: its own
units; the demo: the identity), a checkpoint of a fixed, asymmetric field whose frame comes from
the format's loader, and a ground truth: the field's surface moved to the world with a matrix
computed here from the fixture's own numbers (not through ``WorldFrame``).

Frames and units: the field lives in the normalised frame (the object inside the unit cube);
``to_world`` matrices map it to the data's world frame, in the data's units.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch3d.structures import Meshes
from pytorch3d.utils import ico_sphere

from dvr_plugin.data import MultiViewData, cameras_looking_at_origin, monosdf_crop_matrix
from dvr_plugin.data.cameras import opencv_from_cameras
from dvr_plugin.data.dvr_layout import write_dvr_layout
from dvr_plugin.data.frame import WorldFrame
from dvr_plugin.engine.checkpoint import save_checkpoint
from dvr_plugin.meshing import extract_mesh, save_mesh
from dvr_plugin.training.config import FitConfig
from dvr_plugin.training.data import load_views
from dvr_plugin.training.trainer import build_field

FORMATS = ("mesh", "demo", "dtu", "monosdf", "nerf-synthetic", "dvr")
SIZE = 32  # pixels per side of the fixture images
N_VIEWS = 6
RESOLUTION = 32  # MISE resolution of every mesh here (a dense 32^3 grid)
POINTS = 20_000  # surface samples of `dvr eval` (identical surfaces: F@1% about 0.93)

# DTU / MonoSDF: X_world = scale_mat @ diag(2, 2, 2, 1) @ X_normalised (object radius 0.5).
DTU_SCALE_MAT = np.array(
    [[200.0, 0, 0, 30.0], [0, 200.0, 0, -50.0], [0, 0, 200.0, 700.0], [0, 0, 0, 1]]
)
# DVR layout: X_world = scale_mat @ X (a quarter turn about z, scale 2.5, an offset).
DVR_SCALE_MAT = np.array([[0.0, -2.5, 0, 4.0], [2.5, 0.0, 0, -1.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
# The mesh file: a sphere of this radius and centre (its own units).
MESH_RADIUS, MESH_CENTRE = 3.0, (1.0, 2.0, -4.0)


# -- the field ------------------------------------------------------------------------------


def blob_config(fmt: str, path: str | None = None) -> FitConfig:
    """A tiny SDF model and the data section of one format (few, small views)."""
    config = FitConfig()
    config.model.hidden_size = 16
    config.model.n_blocks = 1
    config.model.n_frequencies = 0
    config.model.field_type = "sdf"
    config.data.format = fmt
    config.data.path = path
    config.data.image_size = SIZE
    config.data.n_views = N_VIEWS
    config.data.supersample = 1
    config.data.held_out_every = 3
    config.eval.n_steps = 32
    if fmt == "mesh":
        config.data.longest_side = 0.6  # the sphere of radius 0.3 the field holds
    return config


@torch.no_grad()
def blob_field(config: FitConfig, *, sphere: bool = False) -> torch.nn.Module:
    """
    The field of ``config`` set to ``0.3 x + 0.4 relu(y) + 0.2 relu(z) + |p| - 0.3`` (a blob
    with no symmetry, so a wrong rotation, mirror, offset or scale shows), or to the sphere
    ``|p| - 0.3`` with ``sphere=True``; colours vary with position.
    """
    torch.manual_seed(0)
    field = build_field(config)
    for parameter in field.parameters():
        parameter.zero_()
    field.fc_in.weight[:3] = torch.eye(3)
    field.fc_in.bias[0] = 0.6  # relu(x + 0.6) = x + 0.6 inside the padded cube
    field.fc_out.weight[1:4, :3] = torch.eye(3)  # rgb = sigmoid(features)
    if not sphere:
        field.fc_out.weight[0, :3] = torch.tensor([0.3, 0.4, 0.2])
        field.fc_out.bias[0] = -0.3 * 0.6
    return field.eval()


# -- fixture data folders ------------------------------------------------------------------


def rig_cameras(image_size: int = SIZE):
    """`N_VIEWS` NDC cameras on the upper half of a sphere of radius 2 (normalised frame)."""
    azimuth = torch.arange(N_VIEWS, dtype=torch.float64) * (2 * math.pi / N_VIEWS)
    elevation = torch.deg2rad(torch.tensor([15.0, 35.0, 55.0] * (N_VIEWS // 3)).double())
    eyes = 2.0 * torch.stack(
        [
            torch.cos(elevation) * torch.sin(azimuth),
            torch.sin(elevation),
            torch.cos(elevation) * torch.cos(azimuth),
        ],
        dim=-1,
    )
    return cameras_looking_at_origin(eyes.float(), image_size=image_size, fov=40.0)


def _images(n: int) -> np.ndarray:
    generator = np.random.default_rng(0)
    return (generator.random((n, SIZE, SIZE, 3)) * 255).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _dtu_world_mats(to_world: np.ndarray, *, monosdf: bool) -> list[np.ndarray]:
    """``K [R | t] @ to_world^-1`` (4x4, DTU pixels: integer centres) of the rig."""
    R, t, K = opencv_from_cameras(rig_cameras(), integer_pixel_centers=not monosdf)
    if monosdf:  # full-resolution intrinsics whose crop is the 32x32 camera (see the loader)
        crop = monosdf_crop_matrix((1200, 1600), (SIZE, SIZE))
        K = torch.linalg.inv(crop) @ K
        K[:, :2, 2] -= 0.5
    mats = []
    for i in range(N_VIEWS):
        P = np.eye(4)
        P[:3, :3] = (K[i] @ R[i]).numpy()
        P[:3, 3] = (K[i] @ t[i]).numpy()
        mats.append(P @ np.linalg.inv(to_world))
    return mats


# (a MonoSDF crop, image i's file name, the mask folder, the cameras file) of the DTU layouts
_DTU_LAYOUTS = {
    "dtu": (False, "image/{:06d}.png", "mask", "cameras_sphere.npz"),
    "monosdf": (True, "{:06d}_rgb.png", "derived_mask_384", "cameras.npz"),
}


def _write_dtu_scan(root: Path, layout: str) -> np.ndarray:
    """
    The rig as a DTU scan in ``layout`` (a key of :data:`_DTU_LAYOUTS`): images, full masks and
    cameras; returns the expected ``to_world``.
    """
    monosdf, image_name, mask_dir, cameras_file = _DTU_LAYOUTS[layout]
    to_world = DTU_SCALE_MAT @ np.diag([2.0, 2.0, 2.0, 1.0])
    arrays = {}
    for i, (world_mat, image) in enumerate(
        zip(_dtu_world_mats(to_world, monosdf=monosdf), _images(N_VIEWS), strict=True)
    ):
        arrays[f"world_mat_{i}"] = world_mat
        arrays[f"scale_mat_{i}"] = DTU_SCALE_MAT
        _write_png(root / image_name.format(i), image)
        _write_png(root / mask_dir / f"{i:03d}.png", np.full((SIZE, SIZE), 255, np.uint8))
    np.savez(root / cameras_file, **arrays)
    return to_world


def write_dtu(root: Path) -> np.ndarray:
    """A DTU scan (IDR / NeuS layout); returns the expected ``to_world``."""
    return _write_dtu_scan(root, "dtu")


def write_monosdf(root: Path) -> np.ndarray:
    """A MonoSDF crop of a DTU scan; returns the expected ``to_world``."""
    return _write_dtu_scan(root, "monosdf")


def write_nerf_synthetic(root: Path) -> np.ndarray:
    """A NeRF-synthetic scene in Blender units (3x the normalised frame)."""
    R, t, _ = opencv_from_cameras(rig_cameras())
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    frames = []
    for i, image in enumerate(_images(N_VIEWS)):
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = R[i].T @ flip
        c2w[:3, 3] = 3.0 * (-R[i].T @ t[i])  # the camera centre in Blender units
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": c2w.tolist()})
        rgba = np.concatenate([image, np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=-1)
        _write_png(root / "train" / f"r_{i}.png", rgba)
    fov = 2.0 * math.atan(1.0 / rig_cameras().focal_length[0, 0].item())
    (root / "transforms_train.json").write_text(
        json.dumps({"camera_angle_x": fov, "frames": frames})
    )
    return np.diag([3.0, 3.0, 3.0, 1.0])


def write_dvr(root: Path) -> np.ndarray:
    """The reference DVR layout with a rotating scale_mat."""
    data = MultiViewData(
        images=torch.from_numpy(_images(N_VIEWS)).float() / 255.0,
        masks=torch.ones(N_VIEWS, SIZE, SIZE, dtype=torch.bool),
        cameras=rig_cameras(),
    )
    write_dvr_layout(root, data, scale_mat=torch.from_numpy(DVR_SCALE_MAT))
    return DVR_SCALE_MAT.copy()


def write_mesh(root: Path) -> np.ndarray:
    """A sphere mesh file in its own units; the fit sees it centred with longest side 0.6."""
    sphere = ico_sphere(4)
    verts = sphere.verts_packed().double() * MESH_RADIUS + torch.tensor(MESH_CENTRE).double()
    save_mesh(Meshes(verts=[verts.float()], faces=sphere.faces_list()), root / "object.obj")
    lower, upper = verts.min(0).values, verts.max(0).values
    scale = float((upper - lower).max()) / 0.6  # world units per normalised unit
    to_world = np.eye(4)
    to_world[:3, :3] *= scale
    to_world[:3, 3] = (0.5 * (lower + upper)).numpy()
    return to_world


WRITERS = {
    "dtu": (write_dtu, ""),
    "monosdf": (write_monosdf, ""),
    "nerf-synthetic": (write_nerf_synthetic, ""),
    "dvr": (write_dvr, ""),
    "mesh": (write_mesh, "object.obj"),
}


@dataclass
class FrameCase:
    """
    One format's fixture.

    Members:
        fmt: the data format.
        root: its folder.
        config: the fit config (data section pointing at the folder).
        to_world: `(4, 4)` float64 computed from the fixture's own numbers.
        checkpoint: a checkpoint of the field with the loader's data frame.
        gt: the ground-truth mesh file (world frame, no header).
        normalised: the field's surface in the normalised frame (``Meshes``).
    """

    fmt: str
    root: Path
    config: FitConfig
    to_world: torch.Tensor
    checkpoint: Path
    gt: Path
    normalised: Meshes


def to_world_by_hand(matrix: torch.Tensor, mesh: Meshes) -> Meshes:
    """``mesh`` moved by a `(4, 4)` matrix (float64 arithmetic; faces flipped for a mirror)."""
    verts = mesh.verts_packed().double() @ matrix[:3, :3].T + matrix[:3, 3]
    faces = mesh.faces_packed()
    if float(torch.linalg.det(matrix[:3, :3])) < 0:
        faces = faces[:, [0, 2, 1]]
    return Meshes(verts=[verts.float()], faces=[faces])


def make_case(fmt: str, root: Path, *, store_frame: bool = True) -> FrameCase:
    """Write ``fmt``'s fixture into ``root`` (a new folder)."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "demo":
        to_world, path = np.eye(4), None
    else:
        writer, name = WRITERS[fmt]
        data_root = root / "data"
        data_root.mkdir()
        to_world = writer(data_root)
        path = str(data_root / name) if name else str(data_root)
    config = blob_config(fmt, path)
    views, _ = load_views(config.data, background=list(config.background))
    field = blob_field(config, sphere=fmt == "mesh")
    state = {"step": 0, "config": config.to_dict(), "model": field.state_dict()}
    if store_frame:
        state["data_frame"] = WorldFrame.from_views(views, fmt).to_dict()
    checkpoint = root / "checkpoint.pt"
    save_checkpoint(str(checkpoint), state)
    normalised = extract_mesh(field, resolution=RESOLUTION, start_resolution=RESOLUTION).mesh
    to_world_t = torch.from_numpy(to_world)
    gt = root / "gt.ply"
    save_mesh(to_world_by_hand(to_world_t, normalised), gt)
    if fmt == "mesh":  # the true mesh is the data itself
        gt = Path(path)
    return FrameCase(fmt, root, config, to_world_t, checkpoint, gt, normalised)
