"""
Tests of dvr_plugin.metrics.observed: visibility by rasterisation against closed-form seen
fractions and a brute-force ray / triangle reference, and the observed-region metrics.

Frames: every scene is built in one world frame (units of the unit sphere); the cameras look at
the origin.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch3d.ops import sample_points_from_meshes
from pytorch3d.renderer import (
    FoVOrthographicCameras,
    MeshRasterizer,
    PerspectiveCameras,
    RasterizationSettings,
    look_at_view_transform,
)
from pytorch3d.structures import Meshes
from pytorch3d.utils import ico_sphere, torus

from dvr_plugin.metrics import EMPTY_VALUES, evaluate_meshes, evaluate_observed, visible_points
from dvr_plugin.metrics.observed import (
    OBSERVED_KEYS,
    coarse_bin_size,
    faces_per_bin_bound,
    project_points,
    rasterize_depth,
    visibility_counts,
)

# Projections within this cosine of grazing (normal . direction to the camera) are the
# silhouette band, where a pixel-sized lookup legitimately disagrees with the exact answer.
GRAZING_COS = 0.2


def unit(v) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.norm()


def look_at(eyes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`R`, `T` of cameras at `eyes` `(N, 3)` looking at the origin."""
    up = torch.tensor([[0.0, 1.0, 0.0]]).expand(len(eyes), 3)
    up = torch.where((eyes[:, [0, 2]].norm(dim=1) < 1e-6)[:, None], torch.tensor([1.0, 0, 0]), up)
    return look_at_view_transform(eye=eyes, at=torch.zeros_like(eyes), up=up)


def orthographic_cameras(directions: torch.Tensor, *, distance: float = 5.0):
    """Orthographic cameras far along each direction `(N, 3)`, seeing ``[-1.5, 1.5]^2``."""
    R, T = look_at(distance * directions)
    return FoVOrthographicCameras(R=R, T=T, min_x=-1.5, max_x=1.5, min_y=-1.5, max_y=1.5)


def ndc_perspective_cameras(eyes: torch.Tensor, image_size, *, half_fov_deg: float = 25.0):
    """NDC ``PerspectiveCameras`` with ``image_size`` set, as the data loaders build them."""
    R, T = look_at(eyes)
    focal = 1.0 / math.tan(math.radians(half_fov_deg))
    return PerspectiveCameras(
        R=R, T=T, focal_length=focal, image_size=[list(image_size)] * len(eyes)
    )


def screen_perspective_cameras(eyes: torch.Tensor, image_size, *, half_fov_deg: float = 25.0):
    """The cameras of :func:`ndc_perspective_cameras`, in pixels (``in_ndc=False``)."""
    height, width = image_size
    R, T = look_at(eyes)
    focal = min(height, width) / 2.0 / math.tan(math.radians(half_fov_deg))
    return PerspectiveCameras(
        R=R,
        T=T,
        focal_length=[[focal, focal]] * len(eyes),
        principal_point=[[width / 2.0, height / 2.0]] * len(eyes),
        in_ndc=False,
        image_size=[list(image_size)] * len(eyes),
    )


def sphere_samples(level: int = 3, n: int = 10_000, seed: int = 0):
    torch.manual_seed(seed)
    mesh = ico_sphere(level)
    points, normals = sample_points_from_meshes(mesh, n, return_normals=True)
    return mesh, points[0], normals[0]


# ----------------------------------------------------------------------------------------------
# Visibility against closed forms.


def sphere_case(name: str, image_size):
    """Cameras, the exact per-sample visibility on a convex mesh, cosines, the seen fraction."""
    d1, d2 = unit([1.0, 2.0, 3.0]), unit([3.0, 0.0, -1.0])  # orthogonal
    if name == "orthographic_one":
        directions = d1[None]
        return orthographic_cameras(directions), "ortho", directions, 0.5
    if name == "orthographic_two":
        directions = torch.stack([d1, d2])
        return orthographic_cameras(directions), "ortho", directions, 0.75
    eyes = 3.0 * d1[None]  # tangent cone: the cap cos(theta) > 1/3, area (1 - 1/3) / 2
    builder = ndc_perspective_cameras if name == "perspective_ndc" else screen_perspective_cameras
    return builder(eyes, image_size), "centre", eyes, (1.0 - 1.0 / 3.0) / 2.0


def exact_convex_visibility(points, normals, kind, where):
    """
    On a convex mesh a point is seen from a camera exactly when its face points at the camera:
    ``n . d > 0`` (orthographic, direction `d`) or ``n . (c - p) > 0`` (centre `c`).

    Returns:
        seen: `(P,)` bool, cosines: `(K, P)` of the normal with the direction to each camera.
    """
    if kind == "ortho":
        cosines = where @ normals.T
    else:
        to_camera = where[:, None, :] - points[None]
        cosines = (to_camera * normals[None]).sum(-1) / to_camera.norm(dim=-1)
    return (cosines > 0).any(dim=0), cosines


@pytest.mark.parametrize(
    "name, image_size",
    [
        ("orthographic_one", (128, 128)),
        ("orthographic_two", (128, 128)),
        ("perspective_ndc", (128, 128)),
        ("perspective_ndc", (96, 160)),
        ("perspective_screen", (96, 160)),
    ],
)
def test_sphere_seen_fraction_matches_closed_form(name, image_size):
    mesh, points, normals = sphere_samples()
    cameras, kind, where, expected = sphere_case(name, image_size)
    seen = visible_points(points, mesh, cameras, image_size)
    exact, cosines = exact_convex_visibility(points, normals, kind, where)
    # Away from the silhouette band every sample agrees with the exact answer.
    clear = (cosines.abs() > GRAZING_COS).all(dim=0)
    assert clear.float().mean() > 0.6
    assert (seen[clear] == exact[clear]).float().mean() >= 0.999
    # The fraction: 10k samples give a binomial standard deviation <= 0.005; the silhouette
    # band adds a small bias of either sign.
    assert abs(seen.float().mean().item() - expected) < 0.02


def test_visibility_counts_of_two_orthogonal_cameras():
    mesh, points, normals = sphere_samples()
    cameras, _, directions, _ = sphere_case("orthographic_two", (128, 128))
    per_point, per_camera = visibility_counts(points, mesh, cameras, (128, 128))
    n = points.shape[0]
    # Each camera sees a hemisphere; both see the quarter sphere between them.
    assert torch.allclose(per_camera.float() / n, torch.tensor([0.5, 0.5]), atol=0.02)
    assert abs((per_point == 2).float().mean().item() - 0.25) < 0.02
    assert per_point.sum() == per_camera.sum()
    # Chunking over cameras changes nothing.
    one_by_one, _ = visibility_counts(points, mesh, cameras, (128, 128), camera_chunk=1)
    assert torch.equal(one_by_one, per_point)


def test_projection_matches_pytorch3d_screen_transform():
    image_size = (96, 160)
    eyes = torch.tensor([[0.5, 1.0, 3.0], [-2.0, 0.3, 2.0]])
    cameras = ndc_perspective_cameras(eyes, image_size)
    _, points, _ = sphere_samples(level=2, n=500)
    pixel, depth, inside = project_points(points, cameras, image_size)
    screen = cameras.transform_points_screen(points[None].expand(2, -1, -1))
    assert inside.all()
    assert torch.equal(pixel, screen[..., 1].floor().long() * 160 + screen[..., 0].floor().long())
    view = cameras.get_world_to_view_transform().transform_points(points[None].expand(2, -1, -1))
    assert torch.allclose(depth, view[..., 2])


# ----------------------------------------------------------------------------------------------
# Visibility against a brute-force ray / triangle reference.


def segment_blocked(
    starts: torch.Tensor, ends: torch.Tensor, triangles: torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """
    Moller-Trumbore: whether the segment from each start to its end crosses a triangle strictly
    between them (segment parameter in ``(eps, 1 - eps)``), in float64. Every triple product of
    the algorithm is written as a `(R, 3) x (3, F)` matrix product.

    Args:
        starts, ends: `(R, 3)`; triangles: `(F, 3, 3)`.

    Returns:
        `(R,)` bool.
    """
    o, tri = starts.double(), triangles.double()
    d = ends.double() - o
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    n = torch.cross(e1, e2, dim=-1)
    o_x_d = torch.cross(o, d, dim=-1)
    det = -(d @ n.T)  # e1 . (d x e2)
    u = o_x_d @ e2.T - d @ torch.cross(e2, v0, dim=-1).T  # (o - v0) . (d x e2)
    v = -(o_x_d @ e1.T) - d @ torch.cross(v0, e1, dim=-1).T  # d . ((o - v0) x e1)
    t = o @ n.T - (v0 * n).sum(-1)[None]  # e2 . ((o - v0) x e1)
    ok = det.abs() > 1e-12
    det = torch.where(ok, det, torch.ones_like(det))
    u, v, t = u / det, v / det, t / det
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > eps) & (t < 1 - eps)
    return hit.any(dim=1)


def brute_force_visibility(points, mesh, cameras, half_fov_deg):
    """`(N, P)` bool: in front, inside the square field of view, and nothing in between."""
    triangles = mesh.verts_packed()[mesh.faces_packed()]
    centres = cameras.get_camera_center()
    view = cameras.get_world_to_view_transform().transform_points(
        points[None].expand(len(cameras), -1, -1)
    )
    bound = math.tan(math.radians(half_fov_deg))
    z = view[..., 2]
    in_view = (z > 0) & (view[..., 0].abs() < bound * z) & (view[..., 1].abs() < bound * z)
    blocked = torch.stack(
        [segment_blocked(points, c.expand_as(points), triangles) for c in centres]
    )
    return in_view & ~blocked


def torus_and_ball() -> Meshes:
    """A torus around a ball: self-occlusion and occlusion between parts."""
    ring = torus(r=0.3, R=1.0, sides=16, rings=32)
    ball = ico_sphere(2).scale_verts(0.5)
    verts = torch.cat([ring.verts_packed(), ball.verts_packed()])
    faces = torch.cat([ring.faces_packed(), ball.faces_packed() + ring.verts_packed().shape[0]])
    return Meshes(verts=[verts], faces=[faces])


def room() -> Meshes:
    """The inside of the cube ``[-1, 1]^3``, 12 large faces: they cross the camera plane."""
    corners = torch.tensor(
        [[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]
    )
    faces = torch.tensor(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    )  # fmt: skip
    return Meshes(verts=[corners], faces=[faces])


def near_visibility_change(points, mesh, cameras, pairs, reference, half_fov, image_width):
    """
    For each `(camera, point)` pair, whether the exact answer changes when the point moves by
    one pixel (at its depth) in any of the 8 image-plane directions: the pair lies within one
    pixel of a silhouette, an occlusion boundary or the image border.
    """
    view = cameras.get_world_to_view_transform().transform_points(
        points[None].expand(len(cameras), -1, -1)
    )
    offsets = torch.tensor(
        [[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0) if (a, b) != (0, 0)]
    )
    near = torch.zeros(len(pairs), dtype=torch.bool)
    for k in range(len(cameras)):
        rows = torch.nonzero(pairs[:, 0] == k).flatten()
        if len(rows) == 0:
            continue
        index = pairs[rows, 1]
        pixel = 2.0 * math.tan(math.radians(half_fov)) * view[k, index, 2] / image_width
        axes = cameras.R[k][:, :2].T  # the camera's x and y axes in world coordinates
        moved = points[index, None, :] + pixel[:, None, None] * (offsets @ axes)[None]
        answers = brute_force_visibility(moved.reshape(-1, 3), mesh, cameras[[k]], half_fov)
        changed = answers.reshape(len(index), len(offsets)) != reference[k, index, None]
        near[rows] = changed.any(dim=1)
    return near


def brute_force_scene(scene: str, image_size):
    if scene == "torus_and_ball":
        half_fov = 30.0
        eyes = torch.tensor([[0.0, 3.0, 2.5], [3.5, 0.8, 0.5], [-1.0, -2.5, 2.5]])
        return (
            torus_and_ball(),
            ndc_perspective_cameras(eyes, image_size, half_fov_deg=half_fov),
            half_fov,
        )
    # Cameras inside the room, looking along +x and -y: PyTorch3D must clip the faces that
    # cross their image planes.
    half_fov = 45.0
    eyes = torch.tensor([[0.1, 0.2, -0.3], [0.5, -0.4, 0.2]])
    cameras = ndc_perspective_cameras(eyes, image_size, half_fov_deg=half_fov)
    cameras.R, cameras.T = look_at_view_transform(
        eye=eyes, at=eyes + torch.tensor([[1.0, 0, 0], [0, -1.0, 0]]), up=((0, 0, 1),)
    )
    return room(), cameras, half_fov


# The room has no silhouette and no occluder: only the image border can disagree.
@pytest.mark.parametrize("scene, max_mismatch", [("torus_and_ball", 0.08), ("room", 0.003)])
def test_visibility_matches_brute_force_ray_casting(scene, max_mismatch):
    image_size = (128, 128)
    mesh, cameras, half_fov = brute_force_scene(scene, image_size)
    torch.manual_seed(0)
    points = sample_points_from_meshes(mesh, 1000)[0]
    reference = brute_force_visibility(points, mesh, cameras, half_fov)
    assert reference.float().mean() > 0.05  # the cameras see a good part of the scene
    per_camera = torch.stack(
        [visible_points(points, mesh, cameras[[k]], image_size) for k in range(len(cameras))]
    )
    mismatch = per_camera != reference
    assert mismatch.float().mean() <= max_mismatch
    # Nearly every disagreement is within one pixel of a change of the exact answer; the rest
    # (under 0.2% of the pairs) are points hidden less than the depth tolerance behind the
    # visible sheet of a fold.
    near = near_visibility_change(
        points, mesh, cameras, mismatch.nonzero(), reference, half_fov, image_size[1]
    )
    assert (~near).sum() <= 0.002 * mismatch.numel()
    seen = visible_points(points, mesh, cameras, image_size)
    assert torch.equal(seen, per_camera.any(dim=0))


# ----------------------------------------------------------------------------------------------
# Observed-region metrics.


def upper_cameras(image_size=(64, 64)):
    """Five cameras at distance 4 above the sphere (polar angles 0 and 25 degrees): together
    they see the sphere down to about z = -0.18 and nothing below z = -0.3."""
    polar = math.radians(25.0)
    eyes = [[0.0, 0.0, 4.0]] + [
        [4 * math.sin(polar) * math.cos(a), 4 * math.sin(polar) * math.sin(a), 4 * math.cos(polar)]
        for a in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)
    ]
    return ndc_perspective_cameras(torch.tensor(eyes), image_size)


def sphere_with_shrunk_bottom(level: int = 3) -> Meshes:
    """The unit icosphere with every vertex below z = -0.3 pulled to 60% of its radius."""
    verts = ico_sphere(level).verts_packed().clone()
    below = verts[:, 2] < -0.3
    verts[below] *= 0.6
    return Meshes(verts=[verts], faces=[ico_sphere(level).faces_packed()])


def test_garbage_on_the_unseen_side_is_not_scored():
    gt = ico_sphere(3)
    cameras, image_size = upper_cameras(), (64, 64)
    kwargs = dict(n_points=2000, threshold=0.05, seed=0)
    garbage = evaluate_observed(sphere_with_shrunk_bottom(), gt, cameras, image_size, **kwargs)
    perfect = evaluate_observed(ico_sphere(3), gt, cameras, image_size, **kwargs)
    full = evaluate_meshes(
        sphere_with_shrunk_bottom(), gt, n_points=2000, thresholds=0.05, n_iou_points=0, seed=0
    )
    assert list(garbage) == list(OBSERVED_KEYS)
    # The cameras see the sphere down to z = -0.18 (the union of caps cos > 1/4 around them).
    assert 0.5 < perfect["gt_observed_fraction"] < 0.62
    # Observed: as good as a perfect prediction (independent samples: within their noise).
    assert garbage["observed_chamfer_l1"] < 1.2 * perfect["observed_chamfer_l1"]
    assert garbage["observed_f_score"] > 0.97 and perfect["observed_f_score"] > 0.97
    assert garbage["observed_normal_consistency"] > 0.98
    # Full: the shrunk bottom is 0.2 (in units of the longest side) off the truth.
    assert full["chamfer_l1"].item() > 3 * garbage["observed_chamfer_l1"]
    assert full["recall"].item() < 0.8
    assert garbage["tolerance"] == pytest.approx(0.005)


def similarity(meshes: Meshes, cameras, scale: float, rotation, shift):
    """Move meshes and cameras by ``x -> scale * x @ rotation + shift`` (row vectors)."""
    verts = scale * meshes.verts_packed() @ rotation + shift
    moved = Meshes(verts=[verts], faces=[meshes.faces_packed()])
    R = rotation.T @ cameras.R  # camera frames see the same view: X'_view = scale * X_view
    T = scale * cameras.T - (shift @ rotation.T) @ cameras.R
    return moved, R, T


def test_observed_metrics_are_invariant_to_a_similarity_of_the_frame():
    torch.manual_seed(0)
    gt = ico_sphere(3)
    bumpy = gt.verts_packed() * (1 + 0.05 * torch.randn(642, 1))
    pred = Meshes(verts=[bumpy], faces=[gt.faces_packed()])
    image_size = (64, 64)
    cameras = upper_cameras(image_size)
    before = evaluate_observed(pred, gt, cameras, image_size, n_points=2000, seed=0)
    # An axis permutation (a rotation that keeps bounding boxes axis-aligned), scale and shift.
    rotation = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    shift = torch.tensor([3.0, -1.0, 7.0])
    moved_pred, R, T = similarity(pred, cameras, 2.5, rotation, shift)
    moved_gt, _, _ = similarity(gt, cameras, 2.5, rotation, shift)
    moved_cameras = ndc_perspective_cameras(torch.zeros(len(R), 3), image_size)
    moved_cameras.R, moved_cameras.T = R, T
    after = evaluate_observed(
        moved_pred, moved_gt, moved_cameras, image_size, n_points=2000, seed=0
    )
    for key in OBSERVED_KEYS:
        # A few samples on the silhouette may flip visibility with float round-off.
        assert after[key] == pytest.approx(before[key], rel=0.01, abs=2e-3), key


def test_empty_prediction_gets_worst_case_values():
    gt = ico_sphere(2)
    empty = Meshes(verts=[torch.zeros(0, 3)], faces=[torch.zeros(0, 3, dtype=torch.int64)])
    out = evaluate_observed(empty, gt, upper_cameras(), (64, 64), n_points=500)
    assert out["observed_accuracy"] == EMPTY_VALUES["accuracy"]
    assert out["observed_completeness"] == EMPTY_VALUES["completeness"]
    assert out["observed_f_score"] == 0.0 and out["observed_normal_consistency"] == 0.0
    assert out["pred_observed_fraction"] == 0.0 and out["gt_observed_fraction"] > 0.5


def test_unseen_prediction_warns_and_unseen_truth_raises():
    gt = ico_sphere(2)
    cameras = upper_cameras()
    far_above = gt.verts_packed() * 0.2 + torch.tensor([0, 0, 9.0])  # behind every camera
    behind = Meshes(verts=[far_above], faces=[gt.faces_packed()])
    with pytest.warns(UserWarning, match="predicted surface"):
        out = evaluate_observed(behind, gt, cameras, (64, 64), n_points=500)
    assert out["observed_accuracy"] == EMPTY_VALUES["accuracy"]
    assert out["observed_precision"] == 0.0
    assert out["observed_completeness"] > 0.5  # real distances from the truth to the prediction
    with pytest.raises(ValueError, match="No camera sees any"):
        evaluate_observed(gt, behind, cameras, (64, 64), n_points=500)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(image_size=(0, 96)), "image_size"),
        (dict(image_size=(96.0, 96.0)), "image_size"),
        (dict(tolerance=-1.0), "tolerance"),
        (dict(n_points=0), "n_points"),
        (dict(gt=ico_sphere(1).extend(2)), "exactly one mesh"),
        (dict(cameras="not cameras"), "CamerasBase"),
    ],
)
def test_bad_input_raises_a_clear_value_error(change, message):
    args = dict(pred=ico_sphere(1), gt=ico_sphere(1), cameras=upper_cameras(), image_size=(64, 64))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_observed(**args)


def test_faces_per_bin_bound_counts_every_overlapping_face():
    image_size, bin_size = (100, 70), 16
    cameras = ndc_perspective_cameras(torch.tensor([[0.3, 0.5, 3.0], [2.0, 0.0, 2.0]]), image_size)
    projected = MeshRasterizer(cameras=cameras).transform(ico_sphere(2).extend(2))
    bound = faces_per_bin_bound(projected, image_size, bin_size)
    # Brute force: each bin against every face's pixel box (from the bottom right, widened by
    # one pixel), as PyTorch3D's coarse pass assigns faces to bins.
    corners = projected.verts_padded()[:, projected.faces_list()[0]]
    u = 35.0 + 50.0 * corners[..., 0]
    v = 50.0 + 50.0 * corners[..., 1]
    most = 0
    for by in range(math.ceil(100 / bin_size)):
        for bx in range(math.ceil(70 / bin_size)):
            lo_u, hi_u = bx * bin_size, min((bx + 1) * bin_size, 70)
            lo_v, hi_v = by * bin_size, min((by + 1) * bin_size, 100)
            overlap = (
                (u.amax(-1) + 1 >= lo_u)
                & (u.amin(-1) - 1 < hi_u)
                & (v.amax(-1) + 1 >= lo_v)
                & (v.amin(-1) - 1 < hi_v)
            )
            most = max(most, int(overlap.sum(dim=1).max()))
    assert 0 < most < bound <= most + 1 + 320 // 10  # tight: boxes touching a bin edge only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_naive_rasterisation_on_a_dense_mesh_and_cpu():
    # 81 920 faces in a few bins: more than PyTorch3D's default bin capacity (10 000), which
    # then drops faces with only a printed message.
    mesh = ico_sphere(6, device="cuda").scale_verts(0.1)
    image_size = (128, 128)
    cameras = ndc_perspective_cameras(torch.tensor([[0.0, 0.5, 3.0]]), image_size).to("cuda")
    projected = MeshRasterizer(cameras=cameras).transform(mesh)
    assert faces_per_bin_bound(projected, image_size, coarse_bin_size(image_size)) > 10_000
    zbuf, hit = rasterize_depth(mesh, cameras, image_size)
    naive = MeshRasterizer(
        cameras=cameras,
        raster_settings=RasterizationSettings(image_size=image_size, bin_size=0),
    )(mesh)
    assert hit.sum() > 20
    assert torch.equal(hit, naive.pix_to_face[..., 0] >= 0)
    assert torch.allclose(zbuf[hit], naive.zbuf[..., 0][hit], atol=1e-5)
    # The whole evaluation agrees with the CPU.
    mesh, points, _ = sphere_samples(level=4)
    image_size = (256, 256)
    seen = visible_points(points, mesh, upper_cameras(image_size), image_size)
    seen_gpu = visible_points(
        points.cuda(), mesh.cuda(), upper_cameras(image_size).to("cuda"), image_size
    )
    assert (seen_gpu.cpu() != seen).float().mean() < 2e-3
    out = evaluate_observed(
        mesh, ico_sphere(3), upper_cameras(image_size), image_size, n_points=5000
    )
    gpu = (mesh.cuda(), ico_sphere(3).cuda(), upper_cameras(image_size).to("cuda"), image_size)
    out_gpu = evaluate_observed(*gpu, n_points=5000)
    assert out_gpu["gt_observed_fraction"] == pytest.approx(out["gt_observed_fraction"], abs=0.02)
    assert out_gpu["observed_chamfer_l1"] == pytest.approx(out["observed_chamfer_l1"], rel=0.1)
