"""Tests of dvr_plugin.metrics.kaolin_compat: Kaolin's conventions, natively and against Kaolin."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch3d.loss import chamfer_distance
from pytorch3d.loss.point_mesh_distance import point_face_distance
from pytorch3d.utils import ico_sphere

from dvr_plugin.metrics import (
    chamfer_l1,
    check_sign,
    f_score,
    index_vertices_by_faces,
    kaolin_available,
    kaolin_chamfer_distance,
    kaolin_f_score,
    point_to_mesh_distance,
)
from dvr_plugin.metrics._geometry import closest_points_on_triangles

HAS_KAOLIN = kaolin_available()
HAS_CUDA = torch.cuda.is_available()
NO_KAOLIN_REASON = (
    "Kaolin is not installed: the registry has only a placeholder and its wheels (NVIDIA's "
    "index) exist for torch <= 2.8 only; the native versions are tested against NumPy instead."
)


def numpy_sided(p1, p2):
    """Squared distance from each point of p1 to its nearest point of p2, `(B, N1)`."""
    p1, p2 = np.asarray(p1, np.float64), np.asarray(p2, np.float64)
    return ((p1[:, :, None, :] - p2[:, None, :, :]) ** 2).sum(-1).min(-1)


def numpy_kaolin_f_score(gt, pred, radius, eps=1e-8):
    """Kaolin's f_score formula, written out with a full distance matrix."""
    pred_distances = np.sqrt(numpy_sided(gt, pred))  # from each true point
    gt_distances = np.sqrt(numpy_sided(pred, gt))  # from each predicted point
    fn = (pred_distances > radius).sum(1)
    fp = (gt_distances > radius).sum(1)
    tp = gt_distances.shape[1] - fp
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return 2 * precision * recall / (precision + recall + eps)


def init_clouds(batch=2, n1=40, n2=31, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p1 = torch.rand(batch, n1, 3, generator=gen)
    p2 = torch.rand(batch, n2, 3, generator=gen)
    return p1, p2


def test_chamfer_matches_numpy():
    p1, p2 = init_clouds()
    s12, s21 = numpy_sided(p1, p2), numpy_sided(p2, p1)
    for w1, w2, squared in [(1.0, 1.0, True), (0.3, 2.0, True), (0.5, 0.5, False)]:
        out = kaolin_chamfer_distance(p1, p2, w1, w2, squared, backend="native")
        d12, d21 = (s12, s21) if squared else (np.sqrt(s12), np.sqrt(s21))
        ref = w1 * d12.mean(1) + w2 * d21.mean(1)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)


def test_chamfer_relations():
    p1, p2 = init_clouds()
    # Kaolin's default is PyTorch3D's chamfer_distance without batch reduction.
    p3d, _ = chamfer_distance(p1, p2, batch_reduction=None)
    np.testing.assert_allclose(kaolin_chamfer_distance(p1, p2).numpy(), p3d.numpy(), rtol=1e-5)
    # The paper's Chamfer-L1 is w1 = w2 = 0.5, squared=False.
    paper = kaolin_chamfer_distance(p1, p2, w1=0.5, w2=0.5, squared=False)
    np.testing.assert_allclose(paper.numpy(), chamfer_l1(p1, p2).numpy(), rtol=1e-6)


def test_kaolin_docstring_examples():
    """The outputs printed in Kaolin's own docstrings."""
    p1 = torch.tensor(
        [
            [[8.8977, 4.1709, 1.2839], [8.5640, 7.7767, 9.4214]],
            [[0.5431, 6.4495, 11.4914], [3.2126, 8.0865, 3.1018]],
        ]
    )
    p2 = torch.tensor(
        [
            [[6.9340, 6.1152, 3.4435], [0.1032, 9.8181, 11.3350]],
            [[11.4006, 2.2154, 7.9589], [4.2586, 1.4133, 7.2606]],
        ]
    )
    np.testing.assert_allclose(
        kaolin_chamfer_distance(p1, p2).numpy(), [72.5838, 151.0809], rtol=1e-5
    )
    q2 = torch.tensor(
        [
            [[9.4863, 4.2249, 0.1712], [8.1783, 8.5310, 8.5119]],
            [[-0.0020699, 6.4429, 12.3], [3.8386, 8.3585, 4.7662]],
        ]
    )
    np.testing.assert_allclose(kaolin_f_score(p1, q2, radius=1).numpy(), [0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(
        kaolin_f_score(p1, q2, radius=1.5).numpy(), [1.0, 0.5], atol=1e-6
    )
    vertices = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2]])
    points = torch.tensor([[[0.5, 0.5, 0.5], [3.0, 4.0, 5.0]]])
    dist, idx, dist_type = point_to_mesh_distance(
        points, index_vertices_by_faces(vertices, faces)
    )
    np.testing.assert_allclose(dist.numpy(), [[0.25, 41.0]], rtol=1e-6)
    assert idx.tolist() == [[0, 0]]
    assert dist_type.tolist() == [[5, 5]]
    assert dist_type.dtype == torch.int32


def test_f_score_matches_kaolin_formula():
    for seed in range(3):
        gt, pred = init_clouds(n1=50, n2=23, seed=seed)
        for radius in (0.05, 0.1, 0.2):
            out = kaolin_f_score(gt, pred, radius=radius, backend="native")
            ref = numpy_kaolin_f_score(gt, pred, radius)
            np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


def test_kaolin_recall_differs_from_standard_as_documented():
    """Two true points, one far from the prediction; three predicted points near the other.

    Standard: precision = 3/3, recall = 1/2 (one of two true points is hit), F = 2/3.
    Kaolin: tp = 3 predicted hits, fp = 0, fn = 1 missed true point,
    precision = 3/3, recall = tp / (tp + fn) = 3/4, F = 2 * 0.75 / 1.75 = 6/7.
    """
    gt = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    pred = torch.tensor([[[0.0, 0.0, 0.0], [0.001, 0.0, 0.0], [0.0, 0.002, 0.0]]])
    standard, precision, recall = f_score(pred, gt, threshold=0.01)
    assert float(precision) == pytest.approx(1.0, abs=5e-8)
    assert float(recall) == pytest.approx(0.5, abs=5e-8)
    assert float(standard) == pytest.approx(2.0 / 3.0, abs=5e-7)
    kaolin = kaolin_f_score(gt, pred, radius=0.01)
    assert float(kaolin) == pytest.approx(6.0 / 7.0, abs=5e-7)
    # When every true point is hit (fn = 0) the two agree.
    gt_hit = gt[:, :1]
    standard_hit, _, _ = f_score(pred, gt_hit, threshold=0.01)
    assert float(kaolin_f_score(gt_hit, pred)) == pytest.approx(float(standard_hit), abs=5e-7)


def test_point_to_mesh_distance_matches_pytorch3d():
    mesh = ico_sphere(2)
    verts, faces = mesh.verts_packed()[None] * 0.4, mesh.faces_packed()
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(2, 200, 3, generator=gen) - 0.5
    face_vertices = index_vertices_by_faces(verts.expand(2, -1, -1), faces)
    dist, idx, _ = point_to_mesh_distance(points, face_vertices, max_pairs=10000)
    # Chunking (here over faces too) changes nothing.
    few = points[:, :16]
    dist_small, idx_small, _ = point_to_mesh_distance(few, face_vertices, max_pairs=100)
    assert torch.equal(dist_small, dist[:, :16])
    assert torch.equal(idx_small, idx[:, :16])
    tris = face_vertices[0]
    for b in range(2):
        ref = point_face_distance(
            points[b], torch.tensor([0]), tris, torch.tensor([0]), points.shape[1]
        )
        np.testing.assert_allclose(dist[b].numpy(), ref.numpy(), rtol=1e-4, atol=1e-7)
        # The returned face attains the distance.
        chosen = tris[idx[b]]
        closest, _ = closest_points_on_triangles(
            points[b], chosen[:, 0], chosen[:, 1], chosen[:, 2]
        )
        own = ((closest - points[b]) ** 2).sum(-1)
        np.testing.assert_allclose(own.numpy(), dist[b].numpy(), rtol=1e-6)
    assert idx.dtype == torch.int64


def test_point_to_mesh_region_types():
    """Points placed in each Voronoi region of one triangle get Kaolin's type codes."""
    tri = torch.tensor([[[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    points = torch.tensor(
        [
            [
                [0.2, 0.2, 0.5],  # above the interior
                [-0.5, -0.5, 0.1],  # beyond vertex 0
                [2.0, -0.5, 0.0],  # beyond vertex 1
                [-0.5, 2.0, 0.0],  # beyond vertex 2
                [0.5, -1.0, 0.3],  # beyond edge 0-1
                [1.0, 1.0, 0.0],  # beyond edge 1-2
                [-1.0, 0.5, -0.2],  # beyond edge 2-0
            ]
        ]
    )
    dist, _, dist_type = point_to_mesh_distance(points, tri)
    assert dist_type.tolist() == [[0, 1, 2, 3, 4, 5, 6]]
    expected = [0.25, 0.51, 1.25, 1.25, 1.09, 0.5, 1.04]
    np.testing.assert_allclose(dist[0].numpy(), expected, rtol=1e-6)


def test_point_to_mesh_gradient():
    tri = torch.tensor([[[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    points = torch.tensor([[[0.2, 0.2, 0.5], [2.0, -0.5, 0.0]]], requires_grad=True)
    dist, _, _ = point_to_mesh_distance(points, tri.requires_grad_(True))
    dist.sum().backward()
    closest = torch.tensor([[[0.2, 0.2, 0.0], [1.0, 0.0, 0.0]]])
    expected = 2 * (points - closest).detach().numpy()
    np.testing.assert_allclose(points.grad.numpy(), expected, atol=1e-6)
    assert torch.isfinite(tri.grad).all()


def test_check_sign_sphere():
    mesh = ico_sphere(2)
    verts = torch.stack([mesh.verts_packed() * 0.5, mesh.verts_packed() * 0.3])
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(2, 500, 3, generator=gen) - 0.5
    inside = check_sign(verts, mesh.faces_packed(), points)
    radius = points.norm(dim=-1)
    r = torch.tensor([[0.5], [0.3]])
    far = (radius - r).abs() > 0.05 * r  # away from the faceted surface
    assert torch.equal(inside[far], (radius < r)[far])
    assert inside.dtype == torch.bool


def test_backend_selection():
    p1, p2 = init_clouds()
    with pytest.raises(ValueError, match="backend"):
        kaolin_chamfer_distance(p1, p2, backend="cuda")
    if not HAS_KAOLIN:
        with pytest.raises(ImportError, match="Kaolin"):
            kaolin_chamfer_distance(p1, p2, backend="kaolin")
    # "auto" on CPU tensors is always the native version.
    auto = kaolin_chamfer_distance(p1, p2)
    native = kaolin_chamfer_distance(p1, p2, backend="native")
    assert torch.equal(auto, native)


def test_invalid_inputs():
    p1, p2 = init_clouds()
    with pytest.raises(ValueError, match="Batch sizes"):
        kaolin_f_score(p1, p2[:1])
    with pytest.raises(ValueError, match=r"\(B, P, 3\)"):
        kaolin_chamfer_distance(p1[0], p2)
    with pytest.raises(ValueError, match="face_vertices"):
        point_to_mesh_distance(p1, p2)


requires_kaolin = pytest.mark.skipif(not HAS_KAOLIN, reason=NO_KAOLIN_REASON)
requires_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="Kaolin's point-cloud metrics are CUDA-only; no GPU here"
)


@pytest.fixture
def cuda_case():
    """Two random clouds `(2, 200, 3)`, `(2, 150, 3)` and an ico-sphere of radius 0.4, on CUDA."""
    gen = torch.Generator().manual_seed(0)
    p1 = torch.rand(2, 200, 3, generator=gen).cuda()
    p2 = torch.rand(2, 150, 3, generator=gen).cuda()
    mesh = ico_sphere(2)
    verts = (mesh.verts_packed() * 0.4)[None].cuda()
    faces = mesh.faces_packed().cuda()
    return SimpleNamespace(p1=p1, p2=p2, verts=verts, faces=faces)


@requires_cuda
@requires_kaolin
def test_against_kaolin_chamfer(cuda_case):
    for args in [(1.0, 1.0, True), (0.5, 0.5, False)]:
        ours = kaolin_chamfer_distance(cuda_case.p1, cuda_case.p2, *args, backend="native")
        theirs = kaolin_chamfer_distance(cuda_case.p1, cuda_case.p2, *args, backend="kaolin")
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@requires_cuda
@requires_kaolin
def test_against_kaolin_f_score(cuda_case):
    for radius in (0.02, 0.05):
        ours = kaolin_f_score(cuda_case.p1, cuda_case.p2, radius, backend="native")
        theirs = kaolin_f_score(cuda_case.p1, cuda_case.p2, radius, backend="kaolin")
        torch.testing.assert_close(ours, theirs)


@requires_cuda
@requires_kaolin
def test_against_kaolin_point_to_mesh_distance(cuda_case):
    fv = index_vertices_by_faces(cuda_case.verts, cuda_case.faces)
    ours = point_to_mesh_distance(cuda_case.p1[:1] - 0.5, fv, backend="native")
    theirs = point_to_mesh_distance(cuda_case.p1[:1] - 0.5, fv, backend="kaolin")
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-6)


@requires_cuda
@requires_kaolin
def test_against_kaolin_check_sign(cuda_case):
    points = cuda_case.p1[:1] - 0.5
    ours = check_sign(cuda_case.verts, cuda_case.faces, points, backend="native")
    theirs = check_sign(cuda_case.verts, cuda_case.faces, points, backend="kaolin")
    assert float((ours == theirs).float().mean()) >= 0.99
