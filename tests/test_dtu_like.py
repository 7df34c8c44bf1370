"""
DTU-like scene generator: the written capture loads with ``load_dtu``, its cameras project the
ground-truth mesh (world units) onto the masks, the lighting models behave as documented, and
the background is the photograph outside the mask.

A synthetic rig written here (6 cameras, world in "millimetres", a tilted up direction) keeps
the tests free of the shared data; the DTU scan 24 rig and the cow run when the shared data is
present.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch3d.io import save_obj
from pytorch3d.ops import sample_points_from_meshes
from pytorch3d.renderer import TexturesVertex
from pytorch3d.structures import Meshes
from pytorch3d.utils import ico_sphere

from dvr_plugin.cli.make_scene import add_make_scene_parser, parse_views
from dvr_plugin.data import find_shared_data, load_dtu, missing_data_message
from dvr_plugin.data.dtu_like import (
    Shading,
    load_dtu_rig,
    make_dtu_like_scene,
    place_mesh,
    rasterize_views,
    render_views,
    rescale_world_mats,
    rig_up_and_front,
    shade,
)
from dvr_plugin.meshing import load_mesh

SIZE = (48, 64)
IDS = [3, 7, 11, 15, 19, 23]
UP = np.array([0.14, -0.45, -0.88]) / np.linalg.norm([0.14, -0.45, -0.88])
CENTRE = np.array([40.0, -20.0, 600.0])
RADIUS = 200.0


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera ``R`` (rows: right, down, forward) and ``t``."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ eye


def _write_rig(path) -> np.ndarray:
    """A DTU-style cameras file: 6 cameras on a cap, 1200x1600 images; returns the centres."""
    side = np.cross(UP, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    front = np.cross(side, UP)
    K = np.array([[2890.0, 0.0, 799.5], [0.0, 2890.0, 599.5], [0.0, 0.0, 1.0]])
    scale_mat = np.diag([RADIUS, RADIUS, RADIUS, 1.0])
    scale_mat[:3, 3] = CENTRE
    arrays, centres = {}, []
    for k, i in enumerate(IDS):
        elevation = math.radians(15 + 7 * k)
        azimuth = math.radians(-50 + 20 * k)
        direction = math.cos(elevation) * (
            math.cos(azimuth) * front + math.sin(azimuth) * side
        ) + math.sin(elevation) * UP
        eye = CENTRE + 2.7 * RADIUS * direction
        R, t = _look_at(eye, CENTRE, UP)
        P = np.eye(4)
        P[:3] = K @ np.concatenate([R, t[:, None]], axis=1)
        arrays[f"world_mat_{i}"] = P
        arrays[f"scale_mat_{i}"] = scale_mat
        centres.append(eye)
    np.savez(path, **arrays)
    return np.stack(centres)


def _ellipsoid() -> Meshes:
    """A convex, closed, asymmetric mesh (an offset ellipsoid, 162 vertices)."""
    sphere = ico_sphere(2)
    verts = sphere.verts_packed() * torch.tensor([1.0, 0.7, 0.55]) + torch.tensor([0.3, -0.2, 0.1])
    return Meshes(verts=[verts], faces=[sphere.faces_packed()])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtu_like_assets")
    centres = _write_rig(root / "cameras.npz")
    mesh = _ellipsoid()
    save_obj(root / "ellipsoid.obj", mesh.verts_packed(), mesh.faces_packed())
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in IDS:
        photo = rng.integers(0, 256, size=(*SIZE, 3), dtype=np.uint8)
        Image.fromarray(photo).save(photos / f"{i:06d}.png")
    return {"root": root, "centres": centres}


def _scene(assets, tmp_path_factory, lighting: str, **kwargs) -> dict:
    out = tmp_path_factory.mktemp(f"scene_{lighting}")
    return make_dtu_like_scene(
        assets["root"] / "ellipsoid.obj",
        out,
        image_size=SIZE,
        lighting=lighting,
        cameras_path=assets["root"] / "cameras.npz",
        background=str(assets["root"] / "photos") if lighting == "dtu" else None,
        force=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def dtu_scene(assets, tmp_path_factory):
    return _scene(assets, tmp_path_factory, "dtu")


@pytest.fixture(scope="module")
def studio_scene(assets, tmp_path_factory):
    return _scene(assets, tmp_path_factory, "studio")


# --------------------------------------------------------------------------------------------
# helpers


def _read_masks(out_dir, ids) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(f"{out_dir}/mask/{i:03d}.png")) > 127 for i in ids]
    )


def _project(world_mats: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`(N, P, 2)` pixel coordinates (integer pixel centres) of world points."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    projected = homogeneous @ world_mats[:, :3].transpose(0, 2, 1)
    assert (projected[..., 2] > 0).all()
    return projected[..., :2] / projected[..., 2:3]


def _distance_to_set(queries: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of each `(Q, 2)` query to the nearest of `(P, 2)` points (brute force)."""
    q, p = torch.as_tensor(queries), torch.as_tensor(points)
    return torch.cat([torch.cdist(c, p).min(dim=1).values for c in q.split(2048)]).numpy()


def _distance_to_pixels(queries: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance of each `(Q, 2)` query to the nearest pixel square (centre +- 1/2) of
    `(P, 2)` pixel centres (brute force)."""
    q, p = torch.as_tensor(queries), torch.as_tensor(centres)
    out = []
    for chunk in q.split(1024):
        gap = ((chunk[:, None] - p[None]).abs() - 0.5).clamp_min(0.0)  # (Q, P, 2)
        out.append(gap.norm(dim=-1).min(dim=1).values)
    return torch.cat(out).numpy()


def _check_projection_against_masks(report: dict, *, n_samples: int = 8000) -> None:
    out = report["out_dir"]
    with np.load(f"{out}/cameras_sphere.npz") as npz:
        world_mats = np.stack([npz[f"world_mat_{i}"] for i in report["views"]])
    gt = load_mesh(f"{out}/gt_mesh.ply")
    masks = _read_masks(out, report["views"])
    vertex_pixels = _project(world_mats, gt.verts_packed().double().numpy())
    torch.manual_seed(0)
    samples = sample_points_from_meshes(gt, n_samples)[0].double().numpy()
    sample_pixels = _project(world_mats, samples)
    for k in range(len(report["views"])):
        rows, cols = np.nonzero(masks[k])
        assert rows.size > 0
        mask_centres = np.stack([cols, rows], axis=1).astype(np.float64)
        # Every vertex projects within 1 px of a mask pixel (of its square).
        assert _distance_to_pixels(vertex_pixels[k], mask_centres).max() <= 1.0
        # Every mask pixel lies within 1.5 px of projected surface.
        assert _distance_to_set(mask_centres, sample_pixels[k]).max() <= 1.5


# --------------------------------------------------------------------------------------------
# cameras and placement


def test_rescaled_world_mats_scale_pixel_corners():
    rng = np.random.default_rng(1)
    P = np.eye(4)
    P[:3] = np.array([[2890.0, 0.3, 812.0], [0, 2880.0, 611.0], [0, 0, 1]]) @ np.concatenate(
        [np.eye(3), [[10.0], [-5.0], [700.0]]], axis=1
    )
    points = rng.normal(size=(50, 3)) * 100
    before = _project(P[None], points)[0]
    after = _project(rescale_world_mats(P[None], (1200, 1600), (300, 400)), points)[0]
    np.testing.assert_allclose(after + 0.5, 0.25 * (before + 0.5), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="aspect ratio"):
        rescale_world_mats(P[None], (1200, 1600), (300, 300))


def test_rig_up_front_and_fitted_placement(assets):
    rig = load_dtu_rig(assets["root"] / "cameras.npz", image_size=SIZE)
    up, front = rig_up_and_front(rig)
    np.testing.assert_allclose(up, UP, atol=1e-9)
    assert abs(up @ front) < 1e-9
    towards = assets["centres"] - CENTRE
    towards /= np.linalg.norm(towards, axis=1, keepdims=True)
    assert (towards @ front > 0).all()
    mean = towards.mean(axis=0) - (towards.mean(axis=0) @ UP) * UP
    assert mean @ front == pytest.approx(np.linalg.norm(mean), rel=1e-9)

    verts = _ellipsoid().verts_packed().double()
    placement = place_mesh(verts, rig, up_axis="+y", front_axis="+z")
    assert 0 < placement.radius_fraction <= 0.8
    np.testing.assert_allclose(placement.rotation @ [0, 1, 0], UP, atol=1e-9)
    world = placement.apply(verts).numpy()
    box_centre = 0.5 * (verts.min(dim=0).values + verts.max(dim=0).values)
    np.testing.assert_allclose(placement.apply(box_centre).numpy(), CENTRE, atol=1e-9)
    radius = np.linalg.norm(world - CENTRE, axis=1).max()
    assert radius == pytest.approx(placement.radius_fraction * RADIUS, rel=1e-9)
    pixels = _project(rig.world_mats, world)
    margin = 0.04 * min(SIZE)
    assert pixels.min() >= margin - 0.5 - 1e-6
    assert (pixels[..., 0] <= SIZE[1] - 0.5 - margin + 1e-6).all()
    assert (pixels[..., 1] <= SIZE[0] - 0.5 - margin + 1e-6).all()
    # The fit is tight: the largest fraction keeping the margin, unless capped at 0.8.
    if placement.radius_fraction < 0.8:
        bigger = place_mesh(verts, rig, radius_fraction=placement.radius_fraction * 1.02)
        assert not (_project(rig.world_mats, bigger.apply(verts).numpy()).min() >= margin - 0.5
                    and (_project(rig.world_mats, bigger.apply(verts).numpy())[..., 0]
                         <= SIZE[1] - 0.5 - margin).all()
                    and (_project(rig.world_mats, bigger.apply(verts).numpy())[..., 1]
                         <= SIZE[0] - 0.5 - margin).all())


def test_tiled_rasterisation_matches_whole_images(assets):
    rig = load_dtu_rig(assets["root"] / "cameras.npz", image_size=SIZE, views=IDS[:2])
    verts = _ellipsoid().verts_packed().double()
    placement = place_mesh(verts, rig)
    sphere = ((placement.apply(verts) - torch.as_tensor(CENTRE)) / RADIUS).float()
    K, R, t = rig.opencv()
    Kc = K.clone()
    Kc[:, :2, 2] += 0.5
    faces = _ellipsoid().faces_packed()
    whole = rasterize_views(sphere, faces, R, t, Kc, SIZE, tile=0)
    tiled = rasterize_views(sphere, faces, R, t, Kc, SIZE, tile=8)
    assert bool((whole.pix_to_face >= 0).any())
    assert torch.equal(whole.pix_to_face, tiled.pix_to_face)
    torch.testing.assert_close(whole.bary_coords, tiled.bary_coords, atol=1e-4, rtol=0)
    torch.testing.assert_close(whole.zbuf, tiled.zbuf, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# the written scene


def test_scene_loads_with_load_dtu(dtu_scene):
    out = dtu_scene["out_dir"]
    data = load_dtu(out)
    assert data.images.shape == (len(IDS), *SIZE, 3)
    assert data.info["views"] == IDS
    assert bool(data.masks.flatten(1).any(dim=1).all())
    # to_world maps the normalised frame to world; the ground truth lands inside the unit cube.
    gt = load_mesh(f"{out}/gt_mesh.ply").verts_packed().double()
    homogeneous = torch.cat([gt, torch.ones(len(gt), 1, dtype=gt.dtype)], dim=1)
    normalised = (homogeneous @ torch.linalg.inv(data.to_world).T)[:, :3]
    assert normalised.abs().max() <= 0.5
    assert normalised.norm(dim=1).max() == pytest.approx(
        0.5 * dtu_scene["placement"]["radius_fraction"], rel=1e-3
    )
    # The loader's cameras project the normalised mesh where world_mat projects the world one.
    from dvr_plugin.data.cameras import project_points

    with np.load(f"{out}/cameras.npz") as npz:
        world_mats = np.stack([npz[f"world_mat_{i}"] for i in IDS])
    expected = _project(world_mats, gt.numpy())
    pixels, _ = project_points(
        data.cameras, normalised.float(), integer_pixel_centers=True
    )
    np.testing.assert_allclose(pixels.double().numpy(), expected, atol=2e-3)
    scene = json.loads(open(f"{out}/scene.json").read())
    assert scene["seed"] == 0 and scene["lighting"]["lighting"] == "dtu"
    np.testing.assert_allclose(
        np.array(scene["placement"]["rotation"]) @ [0, 1, 0], UP, atol=1e-9
    )


def test_cameras_project_ground_truth_onto_masks(dtu_scene):
    _check_projection_against_masks(dtu_scene)


def test_background_is_the_photo_outside_the_mask(dtu_scene, assets):
    out = dtu_scene["out_dir"]
    masks = torch.as_tensor(_read_masks(out, IDS)).float()[:, None]
    near_object = F.max_pool2d(masks, 5, stride=1, padding=2)[:, 0] > 0
    for k, i in enumerate(IDS):
        image = np.asarray(Image.open(f"{out}/image/{i:06d}.png")).astype(int)
        photo = np.asarray(Image.open(assets["root"] / "photos" / f"{i:06d}.png")).astype(int)
        outside = ~near_object[k].numpy()
        assert outside.sum() > 0.3 * outside.size
        assert np.abs(image - photo)[outside].max() == 0
        assert np.abs(image - photo)[masks[k, 0].numpy() > 0].mean() > 20


def test_studio_scene_has_plain_background(studio_scene):
    out = studio_scene["out_dir"]
    masks = _read_masks(out, IDS)
    image = np.asarray(Image.open(f"{out}/image/{IDS[0]:06d}.png"))
    far = ~(F.max_pool2d(torch.as_tensor(masks[:1]).float()[:, None], 5, 1, 2)[0, 0] > 0).numpy()
    assert (image[far] == 255).all()
    _check_projection_against_masks(studio_scene, n_samples=10000)


def test_scene_is_deterministic_and_seeded(assets, tmp_path, dtu_scene):
    def render(seed, name):
        report = make_dtu_like_scene(
            assets["root"] / "ellipsoid.obj", tmp_path / name, image_size=(24, 32),
            cameras_path=assets["root"] / "cameras.npz", views=IDS[:2], background="black",
            seed=seed, noise=0.02,
        )
        image = np.asarray(Image.open(f"{report['out_dir']}/image/{IDS[0]:06d}.png"))
        return image, report

    (first, report), (again, _), (other, _) = render(0, "a"), render(0, "b"), render(1, "c")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # A subset of the views shares the placement of the whole rig.
    for key in ("scale", "rotation", "translation"):
        np.testing.assert_allclose(report["placement"][key], dtu_scene["placement"][key])


def test_refuses_a_non_empty_folder(assets, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_dtu_like_scene(
            assets["root"] / "ellipsoid.obj", tmp_path, image_size=(24, 32),
            cameras_path=assets["root"] / "cameras.npz", background="white",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# --------------------------------------------------------------------------------------------
# lighting


def test_shade_matches_hand_computed_values():
    albedo = torch.tensor([[0.5, 0.4, 0.2]], dtype=torch.float64)
    normal = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    point = torch.zeros(1, 3, dtype=torch.float64)
    theta = 0.3
    eye = 2.0 * torch.tensor([[math.sin(theta), 0.0, math.cos(theta)]], dtype=torch.float64)
    settings = dict(ambient=0.2, diffuse=0.7, specular=0.5, shininess=10.0)
    blinn = shade(albedo, normal, point, eye, Shading(lighting="dtu", **settings))
    expected = albedo * (0.2 + 0.7 * math.cos(theta)) + 0.5 * math.cos(theta) ** 10
    torch.testing.assert_close(blinn, expected)
    phong = shade(albedo, normal, point, eye, Shading(specular_model="phong", **settings))
    expected = albedo * (0.2 + 0.7 * math.cos(theta)) + 0.5 * math.cos(2 * theta) ** 10
    torch.testing.assert_close(phong, expected)
    far = shade(
        albedo, normal, point, 2.0 * eye, Shading(falloff=True, **settings),
        reference_distance=torch.tensor([2.0], dtype=torch.float64),
    )
    expected = albedo * (0.2 + 0.25 * 0.7 * math.cos(theta)) + 0.25 * 0.5 * math.cos(theta) ** 10
    torch.testing.assert_close(far, expected)
    behind = shade(albedo, -normal, point, eye, Shading(lighting="dtu", **settings))
    torch.testing.assert_close(behind, albedo * 0.2)
    light = [0.0, math.sin(0.4), math.cos(0.4)]
    studio = Shading(lighting="studio", ambient=0.5, diffuse=0.5, light_direction=light)
    for position in (eye, -3.0 * eye):  # the camera does not matter
        torch.testing.assert_close(
            shade(albedo, normal, point, position, studio), albedo * (0.5 + 0.5 * math.cos(0.4))
        )


def test_studio_is_view_independent_and_dtu_has_highlights(assets):
    a, b = IDS[0], IDS[3]
    rig = load_dtu_rig(assets["root"] / "cameras.npz", image_size=(96, 128), views=[a, b])
    mesh = _ellipsoid()
    verts = mesh.verts_packed().double()
    placement = place_mesh(verts, rig)
    sphere = ((placement.apply(verts) - torch.as_tensor(CENTRE)) / RADIUS).float()
    low, high = verts.min(0).values, verts.max(0).values
    colours = 0.25 + 0.5 * (verts - low) / (high - low)  # smooth at the pixel scale
    textured = Meshes(
        verts=[sphere], faces=[mesh.faces_packed()],
        textures=TexturesVertex(verts_features=[colours.float()]),
    )
    K, R, t = rig.opencv()
    studio = Shading(lighting="studio", ambient=0.5, diffuse=0.5, light_direction=UP.tolist())
    dtu = Shading(lighting="dtu", ambient=0.2, diffuse=0.8, specular=0.5, shininess=32.0)
    renders = {
        name: render_views(sphere_mesh, verts.float(), R, t, K, (96, 128), shading)
        for name, shading, sphere_mesh in (("studio", studio, textured), ("dtu", dtu, textured))
    }
    # Well-seen vertices (convex shape: visible iff facing the camera) of views 0 and 3.
    normals = textured.verts_normals_packed().double()
    centres = (-(R.transpose(1, 2) @ t[..., None])[..., 0]).double()
    pixels = _project(rig.world_mats, placement.apply(verts).numpy())
    a, b = 0, 1
    facing = []
    for k in (a, b):
        to_eye = centres[k] - sphere.double()
        facing.append((normals * to_eye).sum(-1) / to_eye.norm(dim=-1) > 0.4)
    both = (facing[0] & facing[1]).numpy()
    assert both.sum() >= 10

    def sample(image: torch.Tensor, uv: np.ndarray) -> torch.Tensor:
        h, w = image.shape[:2]
        grid = torch.as_tensor(uv, dtype=torch.float32)
        grid = torch.stack([(grid[:, 0] + 0.5) / w * 2 - 1, (grid[:, 1] + 0.5) / h * 2 - 1], -1)
        out = F.grid_sample(
            image.permute(2, 0, 1)[None], grid[None, None], align_corners=False, mode="bilinear"
        )
        return out[0, :, 0].T

    difference = {}
    for name, views in renders.items():
        ca = sample(views.colour[a], pixels[a][both])
        cb = sample(views.colour[b], pixels[b][both])
        difference[name] = float((ca - cb).abs().max(dim=1).values.median())
    assert difference["studio"] < 0.01
    assert difference["dtu"] > 5 * difference["studio"] + 0.03

    hit = renders["dtu"].coverage == 1
    lambert_bound = renders["dtu"].albedo * (dtu.ambient + dtu.diffuse)
    assert float((renders["dtu"].colour - lambert_bound)[hit].max()) > 0.2
    studio_bound = renders["studio"].albedo * (studio.ambient + studio.diffuse)
    assert float((renders["studio"].colour - studio_bound)[hit].max()) <= 1e-5


# --------------------------------------------------------------------------------------------
# command line


def _cli(argv):
    parser = argparse.ArgumentParser(prog="dvr")
    commands = parser.add_subparsers(dest="command", required=True)
    add_make_scene_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_writes_a_scene_and_refuses_to_overwrite(assets, tmp_path, capsys):
    argv = [
        "make-scene", str(assets["root"] / "ellipsoid.obj"), "--out", str(tmp_path / "s"),
        "--image-size", "24", "32", "--cameras", str(assets["root"] / "cameras.npz"),
        "--views", "3-11:4", "19", "--lighting", "studio", "--quiet",
    ]
    assert _cli(argv) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "image").iterdir()) == [
        "000003.png", "000007.png", "000011.png", "000019.png"
    ]
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err
    assert _cli([*argv[:-3], "--views", "3", "--force", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "mask").iterdir()) == ["003.png"]
    assert _cli([*argv, "--force", "--image-size", "30", "30"]) == 2
    assert "aspect ratio" in capsys.readouterr().err


def test_parse_views():
    assert parse_views(None) is None
    assert parse_views(["0-8:4", "10,12", "13"]) == [0, 4, 8, 10, 12, 13]
    with pytest.raises(ValueError, match="--views"):
        parse_views(["a-b"])


# --------------------------------------------------------------------------------------------
# the DTU scan 24 rig and the cow (shared data)


def test_cow_on_the_dtu_rig(tmp_path):
    if find_shared_data("dtu_scan24_384", "scan24") is None or find_shared_data("meshes") is None:
        pytest.skip(missing_data_message("dtu_scan24_384", "scan24"))
    report = make_dtu_like_scene(
        find_shared_data("meshes", "cow.obj"), tmp_path / "cow", image_size=SIZE,
        views=[0, 16, 32, 48], front_axis="-z",
    )
    assert report["texture"] == "TexturesUV"
    assert report["views_touching_border"] == []
    data = load_dtu(tmp_path / "cow")
    assert data.images.shape == (4, *SIZE, 3)
    assert report["background"]["files"][0].endswith("000000_rgb.png")
    _check_projection_against_masks(report)


def _camera_poses(path, ids) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera rotations and camera centres (world) of a cameras file."""
    from dvr_plugin.data.cameras import decompose_projection_matrix

    arrays = np.load(path)
    _, R, t, _ = decompose_projection_matrix(np.stack([arrays[f"world_mat_{i}"] for i in ids]))
    centres = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    return R.numpy(), centres.numpy()


def test_pose_noise_moves_the_written_cameras_by_exactly_the_asked_amount(assets, tmp_path):
    def scene(name, pose_noise):
        return make_dtu_like_scene(
            assets["root"] / "ellipsoid.obj", tmp_path / name, image_size=(24, 32),
            cameras_path=assets["root"] / "cameras.npz", views=IDS[:3], background="black",
            pose_noise=pose_noise,
        )

    exact, noisy = scene("exact", (0.0, 0.0)), scene("noisy", (1.5, 0.02))
    # the images are made with the exact cameras: the same pixels either way
    for i in IDS[:3]:
        a = np.asarray(Image.open(f"{exact['out_dir']}/image/{i:06d}.png"))
        b = np.asarray(Image.open(f"{noisy['out_dir']}/image/{i:06d}.png"))
        assert np.array_equal(a, b)
    assert not (tmp_path / "exact" / "cameras_exact.npz").exists()
    R0, c0 = _camera_poses(tmp_path / "exact" / "cameras.npz", IDS[:3])
    R_kept, c_kept = _camera_poses(tmp_path / "noisy" / "cameras_exact.npz", IDS[:3])
    np.testing.assert_allclose(R_kept, R0, atol=1e-9)
    np.testing.assert_allclose(c_kept, c0, atol=1e-6)
    R1, c1 = _camera_poses(tmp_path / "noisy" / "cameras.npz", IDS[:3])
    # every pose turned by 1.5 degrees (angle of R1 R0^T) ...
    cosines = (np.einsum("nij,nkj->nik", R1, R0).trace(axis1=1, axis2=2) - 1.0) / 2.0
    np.testing.assert_allclose(np.degrees(np.arccos(np.clip(cosines, -1, 1))), 1.5, atol=1e-6)
    # ... and moved by 0.02 of the unit sphere (world: times the scale_mat's radius)
    radius = np.load(tmp_path / "noisy" / "cameras.npz")[f"scale_mat_{IDS[0]}"][0, 0]
    np.testing.assert_allclose(np.linalg.norm(c1 - c0, axis=1), 0.02 * radius, rtol=1e-6)
    stored = json.loads((tmp_path / "noisy" / "scene.json").read_text())
    assert stored["pose_noise"]["degrees"] == 1.5 and stored["pose_noise"]["distance"] == 0.02
    with pytest.raises(ValueError, match="pose_noise"):
        scene("bad", (-1.0, 0.0))
