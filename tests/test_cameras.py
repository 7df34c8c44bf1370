"""Camera conversions: each one checked by projecting the same points both ways."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, PerspectiveCameras
from pytorch3d.transforms import random_rotations
from pytorch3d.utils import cameras_from_opencv_projection

from dvr_plugin.data import cameras as C
from dvr_plugin.data.paths import find_shared_data, missing_data_message

PIX_TOL = 1e-4  # pixels, float64 conversions


def init_opencv(
    n: int = 4, image_size: tuple[int, int] = (300, 400), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random OpenCV cameras looking at the origin-centred unit cube, and points in it."""
    gen = torch.Generator().manual_seed(seed)
    height, width = image_size
    R = random_rotations(n, dtype=torch.float64)
    t = 0.2 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    t[:, 2] += 3.0
    K = torch.zeros(n, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 500.0 + 100.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    K[:, 1, 1] = 480.0 + 100.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    K[:, 0, 2] = 0.5 * width + 10.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    K[:, 1, 2] = 0.5 * height + 10.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    K[:, 2, 2] = 1.0
    points = torch.rand(64, 3, generator=gen, dtype=torch.float64) - 0.5
    return R, t, K, points

# ------------------------------------------------------------------ OpenCV <-> PyTorch3D


def test_opencv_projection_matches():
    R, t, K, X = init_opencv()
    size = (300, 400)
    expected, z_expected = C.project_opencv(X, R, t, K)
    cams = C.cameras_from_opencv(R, t, K, size, dtype=torch.float64)
    pixels, depth = C.project_points(cams, X)
    assert float((pixels - expected).abs().max()) < PIX_TOL
    assert float((depth - z_expected).abs().max()) < 1e-9
    # The same parameters as PyTorch3D's own converter.
    ref = cameras_from_opencv_projection(R, t, K, torch.tensor([size] * len(R)))
    torch.testing.assert_close(cams.focal_length, ref.focal_length)
    torch.testing.assert_close(cams.principal_point, ref.principal_point)
    torch.testing.assert_close(cams.R, ref.R)
    torch.testing.assert_close(cams.T, ref.T)


def test_project_points_matches_pytorch3d_screen():
    R, t, K, X = init_opencv()
    cams = C.cameras_from_opencv(R, t, K, (300, 400))  # float32, as PyTorch3D renders
    assert cams.R.dtype == torch.float32
    ours, _ = C.project_points(cams, X.float())
    screen = cams.transform_points_screen(X.float()[None].expand(len(R), -1, -1))[..., :2]
    expected, _ = C.project_opencv(X, R, t, K)
    assert float((ours - screen).abs().max()) < 1e-3
    assert float((screen.double() - expected).abs().max()) < 1e-3


def test_opencv_round_trip():
    R, t, K, _ = init_opencv()
    cams = C.cameras_from_opencv(R, t, K, (300, 400), dtype=torch.float64)
    R2, t2, K2 = C.opencv_from_cameras(cams)
    torch.testing.assert_close(R2, R, atol=1e-12, rtol=0)
    torch.testing.assert_close(t2, t, atol=1e-12, rtol=0)
    torch.testing.assert_close(K2, K, atol=1e-9, rtol=0)


def test_integer_pixel_centers():
    R, t, K, X = init_opencv(n=2)
    expected, _ = C.project_opencv(X, R, t, K)  # K with integer pixel centres
    cams = C.cameras_from_opencv(
        R, t, K, (300, 400), integer_pixel_centers=True, dtype=torch.float64
    )
    corner, _ = C.project_points(cams, X)
    assert float((corner - 0.5 - expected).abs().max()) < PIX_TOL
    centred, _ = C.project_points(cams, X, integer_pixel_centers=True)
    assert float((centred - expected).abs().max()) < PIX_TOL
    _, _, K2 = C.opencv_from_cameras(cams, integer_pixel_centers=True)
    torch.testing.assert_close(K2, K, atol=1e-9, rtol=0)


def test_fov_cameras_to_opencv():
    R = random_rotations(3, dtype=torch.float32)
    T = torch.tensor([[0.0, 0.0, 3.0]] * 3)
    cams = FoVPerspectiveCameras(R=R, T=T, fov=50.0)
    X = torch.rand(32, 3) - 0.5
    screen = cams.transform_points_screen(X[None].expand(3, -1, -1), image_size=(120, 160))
    R2, t2, K2 = C.opencv_from_cameras(cams, image_size=(120, 160))
    ours, _ = C.project_opencv(X.double(), R2, t2, K2)
    assert float((ours - screen[..., :2].double()).abs().max()) < 1e-3
    assert float(K2[:, 0, 1].abs().max()) < 1e-3  # no skew
    # Screen-space PerspectiveCameras: the principal point is in corner-convention pixels.
    screen_cams = PerspectiveCameras(
        R=R, T=T, focal_length=((500.0, 480.0),), principal_point=((210.0, 140.0),),
        in_ndc=False, image_size=((300, 400),),
    )
    screen = screen_cams.transform_points_screen(X[None].expand(3, -1, -1))[..., :2]
    R3, t3, K3 = C.opencv_from_cameras(screen_cams)
    ours, _ = C.project_opencv(X.double(), R3, t3, K3)
    assert float((ours - screen.double()).abs().max()) < 1e-3
    expected_pp = torch.tensor([210.0, 140.0], dtype=torch.float64)
    torch.testing.assert_close(K3[0, :2, 2], expected_pp, atol=1e-3, rtol=0)  # float32


def test_non_square_and_batched_image_size():
    R, t, K, X = init_opencv(n=2)
    sizes = torch.tensor([[300, 400], [300, 400]])
    cams = C.cameras_from_opencv(R, t, K, sizes, dtype=torch.float64)
    pixels, _ = C.project_points(cams, X)
    expected, _ = C.project_opencv(X, R, t, K)
    assert float((pixels - expected).abs().max()) < PIX_TOL

# ------------------------------------------------------------------ RQ / DTU


def test_rq_decomposition():
    gen = torch.Generator().manual_seed(1)
    M = torch.randn(5, 3, 3, generator=gen, dtype=torch.float64)
    upper, ortho = C.rq_decomposition(M)
    torch.testing.assert_close(upper @ ortho, M, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        ortho @ ortho.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    )
    assert bool((torch.diagonal(upper, dim1=1, dim2=2) > 0).all())
    assert float(torch.tril(upper, diagonal=-1).abs().max()) < 1e-12


def test_decompose_projection_matrix():
    R, t, K, X = init_opencv()
    K = K.clone()
    K[:, 0, 1] = 2.0  # skew survives the decomposition
    for scale in (1.0, -3.5, 1e-3):
        P = scale * K @ torch.cat([R, t[..., None]], dim=-1)
        K2, R2, t2, s = C.decompose_projection_matrix(P)
        torch.testing.assert_close(K2, K, atol=1e-8, rtol=0)
        torch.testing.assert_close(R2, R, atol=1e-10, rtol=0)
        torch.testing.assert_close(t2, t, atol=1e-10, rtol=0)
        torch.testing.assert_close(s, torch.full_like(s, scale))
    P4 = torch.eye(4, dtype=torch.float64).repeat(len(R), 1, 1)
    P4[:, :3] = K @ torch.cat([R, t[..., None]], dim=-1)
    K3, _, _, _ = C.decompose_projection_matrix(P4)
    torch.testing.assert_close(K3, K, atol=1e-8, rtol=0)


def test_dtu_world_and_scale_mat():
    R, t, K, X = init_opencv()
    scale_mat = torch.tensor(
        [[200.0, 0, 0, 10.0], [0, 200.0, 0, -20.0], [0, 0, 200.0, 600.0], [0, 0, 0, 1]],
        dtype=torch.float64,
    )
    # A DTU-like world: the object sphere of radius 200 around (10, -20, 600).
    world_to_cam = torch.cat([R, t[..., None] * 400.0], dim=-1)  # t in world units
    world_mat = 7.0 * K @ world_to_cam  # arbitrary projective scale
    X_world = X @ (400.0 * torch.eye(3, dtype=torch.float64)).T + scale_mat[:3, 3]
    X_normalised = X  # X_world = scale_mat @ diag(2, 2, 2, 1) @ X_normalised
    proj = torch.einsum("nij,pj->npi", world_mat, torch.cat([X_world, torch.ones(64, 1,
                                                             dtype=torch.float64)], -1))
    expected = proj[..., :2] / proj[..., 2:]
    K2, R2, t2 = C.opencv_from_dtu(world_mat, scale_mat, object_radius=0.5)
    got, _ = C.project_opencv(X_normalised, R2, t2, K2)
    assert float((got - expected).abs().max()) < PIX_TOL
    cams = C.cameras_from_dtu(world_mat, scale_mat, (300, 400), dtype=torch.float64)
    got2, _ = C.project_points(cams, X_normalised, integer_pixel_centers=True)
    assert float((got2 - expected).abs().max()) < PIX_TOL
    to_world = C.dtu_to_world(scale_mat)
    torch.testing.assert_close(
        X_normalised @ to_world[:3, :3].T + to_world[:3, 3], X_world
    )

# ------------------------------------------------------------------ Blender / NeRF


def test_blender_cameras():
    # A NeRF-style camera on a sphere looking at the origin (OpenGL axes: -z forward).
    gen = torch.Generator().manual_seed(2)
    size, fov = (200, 200), 0.69
    f = 0.5 * size[1] / math.tan(0.5 * fov)
    X = torch.rand(32, 3, generator=gen, dtype=torch.float64) * 2 - 1
    c2ws = []
    for azim in (0.3, 1.7, 4.0):
        eye = 4.0 * torch.tensor([math.cos(azim), math.sin(azim), 0.6], dtype=torch.float64)
        back = eye / eye.norm()  # +z of the camera points away from the scene
        right = torch.linalg.cross(torch.tensor([0, 0, 1.0], dtype=torch.float64), back)
        right = right / right.norm()
        up = torch.linalg.cross(back, right)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
        c2ws.append(c2w)
    c2w = torch.stack(c2ws)
    # Pinhole in OpenGL camera space: u = W/2 + f x / (-z), v = H/2 - f y / (-z).
    cam = torch.einsum("nij,pj->npi", torch.linalg.inv(c2w)[:, :3],
                       torch.cat([X, torch.ones(32, 1, dtype=torch.float64)], -1))
    u = 0.5 * size[1] + f * cam[..., 0] / -cam[..., 2]
    v = 0.5 * size[0] - f * cam[..., 1] / -cam[..., 2]
    expected = torch.stack([u, v], dim=-1)
    for scale in (1.0, 1.0 / 3.0):
        cams = C.cameras_from_blender(c2w, size, fov_x=fov, scale=scale, dtype=torch.float64)
        got, depth = C.project_points(cams, X * scale)
        assert float((got - expected).abs().max()) < PIX_TOL
        torch.testing.assert_close(depth, -cam[..., 2] * scale)
    R, t = C.opencv_from_blender(c2w, scale=0.5)
    torch.testing.assert_close(C.blender_from_opencv(R, t, scale=0.5), c2w)

# ------------------------------------------------------------------ reference DVR


def test_dvr_round_trip():
    R, t, K, X = init_opencv()
    size = (300, 400)
    scale_mat = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))
    scale_mat[:3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    camera_mat, world_mat = C.dvr_from_opencv(R, t, K, size, scale_mat=scale_mat)
    # The reference's own projection: camera_mat @ world_mat @ scale_mat @ X = (xd, yd, d, 1)
    Xh = torch.cat([X, torch.ones(64, 1, dtype=torch.float64)], -1)
    p = torch.einsum("nij,pj->npi", camera_mat @ world_mat @ scale_mat, Xh)
    xy = p[..., :2] / p[..., 2:3]
    pixels = torch.stack([(xy[..., 0] + 1) * 0.5 * size[1], (xy[..., 1] + 1) * 0.5 * size[0]],
                         dim=-1)
    expected, z = C.project_opencv(X, R, t, K)
    assert float((pixels - expected).abs().max()) < PIX_TOL
    torch.testing.assert_close(p[..., 2], z)  # d is the z-depth
    K2, R2, t2, depth_scale = C.opencv_from_dvr(camera_mat, world_mat, size,
                                                scale_mat=scale_mat)
    torch.testing.assert_close(K2, K, atol=1e-8, rtol=0)
    torch.testing.assert_close(R2, R, atol=1e-10, rtol=0)
    torch.testing.assert_close(t2, t, atol=1e-10, rtol=0)
    torch.testing.assert_close(depth_scale, torch.ones_like(depth_scale))
    cams = C.cameras_from_dvr(camera_mat, world_mat, size, scale_mat=scale_mat,
                              dtype=torch.float64)
    got, _ = C.project_points(cams, X)
    assert float((got - expected).abs().max()) < PIX_TOL


def test_dvr_full_projection_world_mat():
    # DTU-style reference files: world_mat = K [R|t] in pixels, camera_mat = pixel -> [-1, 1].
    R, t, K, X = init_opencv(n=2)
    size = (300, 400)
    world_mat = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    world_mat[:, :3] = 5.0 * K @ torch.cat([R, t[..., None]], -1)
    camera_mat = torch.eye(4, dtype=torch.float64)
    camera_mat[0, 0], camera_mat[0, 2] = 2.0 / size[1], -1.0
    camera_mat[1, 1], camera_mat[1, 2] = 2.0 / size[0], -1.0
    K2, R2, t2, depth_scale = C.opencv_from_dvr(camera_mat, world_mat, size)
    got, z = C.project_opencv(X, R2, t2, K2)
    expected, z_expected = C.project_opencv(X, R, t, K)
    assert float((got - expected).abs().max()) < PIX_TOL
    torch.testing.assert_close(depth_scale, torch.full_like(depth_scale, 5.0))
    torch.testing.assert_close(z, z_expected)

# ------------------------------------------------------------------ Kaolin


def test_kaolin_math():
    R, t, K, X = init_opencv()
    size = (300, 400)
    params = C.kaolin_from_opencv(R, t, K, size)
    got, depth = C.project_kaolin(params, X)
    expected, z = C.project_opencv(X, R, t, K)
    assert float((got - expected).abs().max()) < PIX_TOL
    torch.testing.assert_close(depth, z)
    R2, t2, K2, size2 = C.opencv_from_kaolin(params)
    assert size2 == size
    torch.testing.assert_close(K2, K)
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    # Kaolin's ray generation (pixel centre -> direction), written out: the ray through a
    # projected pixel passes through the point.
    cam = X @ params.view_matrix[0, :3, :3].T + params.view_matrix[0, :3, 3]
    u, v = got[0, :, 0], got[0, :, 1]
    W, H = size[1], size[0]
    tan_x = 0.5 * W / params.focal_x[0]
    tan_y = 0.5 * H / params.focal_y[0]
    ndc_x = 2 * (u - params.x0[0]) / W - 1
    ndc_y = 2 * (v + params.y0[0]) / H - 1
    direction = torch.stack([ndc_x * tan_x, -ndc_y * tan_y, -torch.ones_like(u)], -1)
    torch.testing.assert_close(direction * -cam[:, 2:3], cam)
    cams = C.cameras_from_kaolin(params, dtype=torch.float64)
    got2, _ = C.project_points(cams, X)
    assert float((got2 - expected).abs().max()) < PIX_TOL
    back = C.kaolin_from_cameras(cams)
    torch.testing.assert_close(back.view_matrix, params.view_matrix)


@pytest.mark.skipif(
    not C.kaolin_available(),
    reason="Kaolin is not importable here (no wheels for this torch); the conversion math is "
    "covered by test_kaolin_math",
)
def test_real_kaolin_camera():  # pragma: no cover - needs Kaolin
    R, t, K, X = init_opencv(n=2)
    params = C.kaolin_from_opencv(R, t, K, (300, 400))
    camera = C.to_kaolin_camera(params, dtype=torch.float64)
    ndc = camera.transform(X.to(camera.device))[..., :2].cpu()
    pixels = torch.stack([(ndc[..., 0] + 1) * 200, (1 - ndc[..., 1]) * 150], -1)
    expected, _ = C.project_opencv(X, R, t, K)
    assert float((pixels - expected).abs().max()) < 1e-3
    R2, t2, K2, _ = C.opencv_from_kaolin(camera)
    torch.testing.assert_close(K2, K, atol=1e-6, rtol=0)


def test_to_kaolin_camera_without_kaolin():
    if C.kaolin_available():
        pytest.skip("Kaolin is installed")
    R, t, K, _ = init_opencv(n=1)
    with pytest.raises(ImportError, match="Kaolin"):
        C.to_kaolin_camera(C.kaolin_from_opencv(R, t, K, (300, 400)))

# ------------------------------------------------------------------ errors


def test_errors():
    R, t, K, _ = init_opencv(n=2)
    size = (300, 400)
    with pytest.raises(ValueError, match="shape"):
        C.cameras_from_opencv(R[:, :2], t, K, size)
    with pytest.raises(ValueError, match="Batch sizes"):
        C.cameras_from_opencv(R, t[:1].expand(3, 3), K, size)
    bad = K.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        C.cameras_from_opencv(R, t, bad, size)
    with pytest.raises(ValueError, match="rotation"):
        C.cameras_from_opencv(2 * R, t, K, size)
    skewed = K.clone()
    skewed[:, 0, 1] = 3.0
    with pytest.raises(ValueError, match="skew"):
        C.cameras_from_opencv(R, t, skewed, size)
    with pytest.raises(ValueError, match="image_size"):
        C.cameras_from_opencv(R, t, K, (300, 0))
    with pytest.raises(ValueError, match="singular"):
        C.decompose_projection_matrix(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        C.decompose_projection_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="scale_mat"):
        C.dtu_to_world(torch.eye(3))
    with pytest.raises(ValueError, match="exactly one"):
        C.cameras_from_blender(torch.eye(4), size)
    with pytest.raises(ValueError, match="w = 1"):
        bad_cam = torch.eye(4, dtype=torch.float64)
        bad_cam[3] = torch.tensor([0, 0, 1.0, 0])
        C.opencv_from_dvr(bad_cam, torch.eye(4), size)
    with pytest.raises(ValueError, match="image_size"):
        C.opencv_from_cameras(PerspectiveCameras())
    with pytest.raises(ValueError, match="KaolinPinholeParameters"):
        C.opencv_from_kaolin(object())


@pytest.mark.skipif(
    find_shared_data("dtu_scan24_neus_400", "scan24") is None,
    reason=missing_data_message("dtu_scan24_neus_400", "scan24"),
)
def test_dtu_file_conventions_agree():
    """The NeuS file carries both DTU (world_mat) and reference-DVR (camera_mat) cameras."""
    root = find_shared_data("dtu_scan24_neus_400", "scan24")
    with np.load(root / "cameras_sphere.npz") as archive:
        cams = {k: archive[k] for k in archive.files}
    ids = [0, 20, 44]
    world = np.stack([cams[f"world_mat_{i}"] for i in ids])
    camera_mat = np.stack([cams[f"camera_mat_{i}"] for i in ids])
    scale = cams["scale_mat_0"]
    size = (300, 400)
    # camera_mat is the pixel -> [-1, 1] map of the reference: x = 2u/W - 1, y = 2v/H - 1.
    np.testing.assert_allclose(camera_mat[0, 0, 0], 2.0 / size[1])
    np.testing.assert_allclose(camera_mat[0, 1, 1], 2.0 / size[0])
    np.testing.assert_allclose(camera_mat[0, :2, 2], [-1.0, -1.0])
    X = torch.rand(100, 3, dtype=torch.float64) - 0.5  # in the radius-0.5 frame
    Xh = torch.cat([X, torch.ones(100, 1, dtype=torch.float64)], -1) @ C.dtu_to_world(scale).T
    raw = torch.einsum("nij,pj->npi", torch.from_numpy(world)[:, :3], Xh)
    raw = raw[..., :2] / raw[..., 2:3]
    K, R, t = C.opencv_from_dtu(world, scale)
    got, _ = C.project_opencv(X, R, t, K)
    assert float((got - raw).abs().max()) < 1e-3  # the dropped skew is ~1e-4 px
    # The DVR reading of the same file treats world_mat pixels as corner coordinates: it lands
    # on the same numbers (i.e. half a pixel from the integer-centre reading of DTU).
    K2, R2, t2, depth_scale = C.opencv_from_dvr(camera_mat, world, size, scale_mat=scale)
    got2, _ = C.project_opencv(2.0 * X, R2, t2, K2)  # the reference frame is the unit sphere
    assert float((got2 - raw).abs().max()) < 1e-3
    np.testing.assert_allclose(depth_scale.numpy(), scale[0, 0], rtol=1e-6)
