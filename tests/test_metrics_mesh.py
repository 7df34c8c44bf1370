"""Tests of dvr_plugin.metrics.mesh: the mesh protocol, inside test and IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch3d.structures import Meshes
from pytorch3d.utils import ico_sphere

from dvr_plugin.metrics import (
    EMPTY_VALUES,
    evaluate_meshes,
    is_watertight,
    mesh_iou,
    meshes_unit_cube_transform,
    normalize_meshes,
    points_inside_meshes,
    winding_numbers,
)

# A unit cube [0, 1]^3 with outward-facing (counter-clockwise seen from outside) triangles.
CUBE_VERTS = torch.tensor(
    [[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)]
)  # index = 4x + 2y + z
CUBE_FACES = torch.tensor(
    [
        [0, 1, 3], [0, 3, 2],  # x = 0
        [4, 6, 7], [4, 7, 5],  # x = 1
        [0, 4, 5], [0, 5, 1],  # y = 0
        [2, 3, 7], [2, 7, 6],  # y = 1
        [0, 2, 6], [0, 6, 4],  # z = 0
        [1, 5, 7], [1, 7, 3],  # z = 1
    ]
)  # fmt: skip


def sphere(radius: float, level: int = 3, centre=(0.0, 0.0, 0.0)) -> Meshes:
    mesh = ico_sphere(level)
    return mesh.scale_verts(radius).offset_verts(torch.tensor(centre))


def empty_mesh() -> Meshes:
    return Meshes(verts=[torch.zeros(0, 3)], faces=[torch.zeros(0, 3, dtype=torch.int64)])


def init_spheres(r_pred: float = 0.4, r_gt: float = 0.5, level: int = 3):
    """Concentric predicted and true spheres, as a benchmark would build them."""
    return sphere(r_pred, level), sphere(r_gt, level)


def test_sphere_vs_scaled_sphere_analytic_chamfer():
    pred, gt = init_spheres(0.4, 0.5)
    out = evaluate_meshes(
        pred,
        gt,
        n_points=4000,
        n_iou_points=0,
        normalize="none",
        thresholds=[0.01, 0.12],
        seed=0,
    )
    gap = 0.1  # Distance between the two spheres everywhere.
    for key in ("accuracy", "completeness", "chamfer_l1"):
        assert float(out[key]) == pytest.approx(gap, abs=0.03 * gap)
    assert float(out["chamfer_l1_x10"]) == pytest.approx(10 * gap, abs=0.03 * 10 * gap)
    assert float(out["chamfer_l2"]) == pytest.approx(gap**2, abs=0.06 * gap**2)
    np.testing.assert_allclose(out["f_score"][0].numpy(), [0.0, 1.0])
    assert float(out["normal_consistency"]) > 0.99
    assert not bool(out["empty"])


def test_gt_frame_scales_both_meshes():
    """In the gt frame a sphere of radius 1 becomes radius 0.5, and so does the gap."""
    pred, gt = init_spheres(0.8, 1.0)
    out = evaluate_meshes(pred, gt, n_points=4000, n_iou_points=0, seed=0)
    assert float(out["chamfer_l1"]) == pytest.approx(0.1, abs=0.003)
    centre, scale = meshes_unit_cube_transform(gt)
    np.testing.assert_allclose(centre.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(scale.numpy(), 0.5, rtol=1e-6)
    # "each" maps both spheres to the same unit-box sphere.
    each = evaluate_meshes(pred, gt, n_points=4000, n_iou_points=0, normalize="each", seed=0)
    assert float(each["chamfer_l1"]) < 0.02


def test_normalize_meshes():
    gt = Meshes(verts=[CUBE_VERTS * torch.tensor([2.0, 4.0, 1.0]) + 3.0], faces=[CUBE_FACES])
    pred = Meshes(verts=[CUBE_VERTS], faces=[CUBE_FACES])
    pred_n, gt_n = normalize_meshes(pred, gt)
    box = gt_n.get_bounding_boxes()[0]
    np.testing.assert_allclose(box.numpy(), [[-0.25, 0.25], [-0.5, 0.5], [-0.125, 0.125]])
    np.testing.assert_allclose(
        pred_n.verts_packed().numpy(), ((CUBE_VERTS - torch.tensor([4.0, 5.0, 3.5])) / 4.0)
    )
    pred_n, _ = normalize_meshes(pred, gt, mode="each")
    np.testing.assert_allclose(pred_n.verts_packed().numpy(), CUBE_VERTS - 0.5)
    with pytest.raises(ValueError, match="normalize"):
        normalize_meshes(pred, gt, mode="unit")


def test_iou_of_concentric_spheres():
    # Concentric copies of one polyhedron: the IoU is the volume ratio whatever the faceting.
    pred, gt = init_spheres(0.4, 0.5, level=2)
    iou = mesh_iou(pred, gt, n_points=10000, seed=0)
    assert float(iou) == pytest.approx((0.4 / 0.5) ** 3, abs=0.03)
    # Swapping the roles gives the same IoU (symmetric measure, same points).
    assert float(mesh_iou(gt, pred, n_points=10000, seed=0)) == pytest.approx(float(iou), abs=5e-8)
    # The full protocol in the gt frame: both meshes get the same similarity transform,
    # which leaves the IoU unchanged.
    out = evaluate_meshes(pred, gt, n_points=500, n_iou_points=10000, seed=0)
    assert float(out["iou"]) == pytest.approx((0.4 / 0.5) ** 3, abs=0.03)


def test_winding_numbers_of_a_cube():
    cube = Meshes(verts=[CUBE_VERTS], faces=[CUBE_FACES])
    points = torch.tensor([[[0.5, 0.5, 0.5], [0.1, 0.9, 0.2], [1.5, 0.5, 0.5], [-3, 2, 9]]])
    w = winding_numbers(cube, points)
    np.testing.assert_allclose(w.numpy(), [[1, 1, 0, 0]], atol=1e-5)
    flipped = Meshes(verts=[CUBE_VERTS], faces=[CUBE_FACES.flip(1)])
    np.testing.assert_allclose(winding_numbers(flipped, points).numpy(), -w.numpy(), atol=1e-5)
    inside = points_inside_meshes(flipped, points)
    assert inside.tolist() == [[True, True, False, False]]
    # Chunking does not change the answer.
    w_small = winding_numbers(cube, points, max_pairs=5)
    np.testing.assert_allclose(w_small.numpy(), w.numpy(), atol=1e-6)


def test_inside_sphere_matches_radius():
    mesh = sphere(0.5, level=3, centre=(0.1, -0.2, 0.05))
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(1, 3000, 3, generator=gen) * 1.4 - 0.7
    radius = (points - torch.tensor([0.1, -0.2, 0.05])).norm(dim=-1)
    inside = points_inside_meshes(mesh, points)
    # Exact away from the faceted surface (the polyhedron lies within 1% of the sphere).
    far = (radius - 0.5).abs() > 0.01
    assert torch.equal(inside[far], (radius < 0.5)[far])


def test_watertightness():
    cube = Meshes(verts=[CUBE_VERTS], faces=[CUBE_FACES])
    holed = Meshes(verts=[CUBE_VERTS], faces=[CUBE_FACES[1:]])
    batch = Meshes(
        verts=[CUBE_VERTS, CUBE_VERTS, torch.zeros(0, 3)],
        faces=[CUBE_FACES, CUBE_FACES[1:], torch.zeros(0, 3, dtype=torch.int64)],
    )
    assert is_watertight(cube).tolist() == [True]
    assert is_watertight(ico_sphere(2)).tolist() == [True]
    assert is_watertight(holed).tolist() == [False]
    assert is_watertight(batch).tolist() == [True, False, False]
    # An edge shared by three faces is not watertight either.
    fin = torch.cat([CUBE_FACES, torch.tensor([[0, 3, 5]])])
    assert is_watertight(Meshes(verts=[CUBE_VERTS], faces=[fin])).tolist() == [False]


def test_non_watertight_gt_raises():
    pred, gt = init_spheres(0.4, 0.5, level=2)
    holed = Meshes(verts=gt.verts_list(), faces=[gt.faces_packed()[1:]])
    with pytest.raises(ValueError, match=r"not watertight.*check_watertight=False"):
        evaluate_meshes(pred, holed, n_points=100, n_iou_points=100)
    with pytest.raises(ValueError, match="not watertight"):
        mesh_iou(pred, holed, n_points=100)
    with pytest.raises(ValueError, match="not watertight"):
        points_inside_meshes(holed, torch.zeros(1, 1, 3))
    # The documented fallback: the winding number tolerates one missing face.
    iou = mesh_iou(pred, holed, n_points=5000, check_watertight=False, seed=0)
    assert float(iou) == pytest.approx(0.512, abs=0.04)
    # Without the IoU, no watertightness is needed.
    out = evaluate_meshes(pred, holed, n_points=200, n_iou_points=0)
    assert "iou" not in out


def test_empty_prediction_gets_worst_case():
    _, gt = init_spheres(0.4, 0.5, level=2)
    pred = Meshes(
        verts=[torch.zeros(0, 3), gt.verts_packed()],
        faces=[torch.zeros(0, 3, dtype=torch.int64), gt.faces_packed()],
    )
    gt2 = gt.extend(2)
    out = evaluate_meshes(pred, gt2, n_points=1000, n_iou_points=2000, seed=0)
    assert out["empty"].tolist() == [True, False]
    assert float(out["accuracy"][0]) == pytest.approx(math.sqrt(3.0), abs=5e-7)
    assert float(out["completeness"][0]) == pytest.approx(math.sqrt(3.0), abs=5e-7)
    assert float(out["chamfer_l1"][0]) == pytest.approx(math.sqrt(3.0), abs=5e-7)
    for key in ("normal_consistency", "f_score", "iou"):
        assert (out[key][0] == 0).all(), key
        assert float(out[key].flatten()[0]) == EMPTY_VALUES[key]
    assert float(out["iou"][1]) == pytest.approx(1.0, abs=5e-7)
    iou = mesh_iou(pred, gt2, n_points=2000, seed=0)
    assert float(iou[0]) == EMPTY_VALUES["iou"]
    assert float(iou[1]) == pytest.approx(1.0, abs=5e-7)
    # A batch of empty predictions only.
    only = evaluate_meshes(empty_mesh(), gt, n_points=100, n_iou_points=100)
    assert bool(only["empty"])
    assert float(only["iou"]) == 0.0


def test_normal_consistency_of_identical_meshes():
    mesh = sphere(0.5, level=3)
    out = evaluate_meshes(mesh, mesh, n_points=3000, n_iou_points=0, seed=1)
    assert float(out["normal_consistency"]) > 0.99
    assert float(out["normal_consistency"]) <= 1.0 + 1e-6
    # Two independent samplings: the mean gap is about the sample spacing (~0.016 here).
    assert float(out["chamfer_l1"]) < 0.03
    cube = Meshes(verts=[CUBE_VERTS], faces=[CUBE_FACES])
    out = evaluate_meshes(cube, cube, n_points=3000, n_iou_points=500, seed=1)
    # Samples near an edge find their nearest neighbour on the perpendicular face.
    assert float(out["normal_consistency"]) > 0.93
    assert float(out["iou"]) == pytest.approx(1.0, abs=5e-8)


def test_seed_is_reproducible_and_restores_rng():
    pred, gt = init_spheres(0.45, 0.5, level=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = evaluate_meshes(pred, gt, n_points=500, n_iou_points=500, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate_meshes(pred, gt, n_points=500, n_iou_points=500, seed=7)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_device_mismatch_raises():
    pred, gt = init_spheres(0.4, 0.5, level=1)
    # CPU data that reports another device, to test the check without a GPU.
    elsewhere = gt.clone()
    elsewhere.device = torch.device("meta")
    with pytest.raises(ValueError, match="same device.*pred on cpu.*gt on meta"):
        evaluate_meshes(pred, elsewhere, n_points=10)
    with pytest.raises(ValueError, match="same device"):
        mesh_iou(elsewhere, gt, n_points=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_cuda():
    pred, gt = init_spheres(0.4, 0.5, level=1)
    with pytest.raises(ValueError, match="pred on cpu and gt on cuda"):
        evaluate_meshes(pred, gt.to("cuda"), n_points=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    pred, gt = init_spheres(0.4, 0.5, level=2)
    kwargs = {"n_points": 3000, "n_iou_points": 3000, "normalize": "none", "seed": 0}
    cpu = evaluate_meshes(pred, gt, **kwargs)
    gpu = evaluate_meshes(pred.to("cuda"), gt.to("cuda"), **kwargs)
    for key in ("chamfer_l1", "chamfer_l2", "normal_consistency", "iou"):
        assert float(gpu[key]) == pytest.approx(float(cpu[key]), abs=0.02 * float(cpu[key]))
    assert gpu["chamfer_l1"].device.type == "cuda"


def test_invalid_inputs():
    pred, gt = init_spheres(0.4, 0.5, level=1)
    with pytest.raises(ValueError, match="Batch sizes differ"):
        evaluate_meshes(pred.extend(2), gt, n_points=10)
    with pytest.raises(ValueError, match="needs at least one face"):
        evaluate_meshes(pred, empty_mesh(), n_points=10)
    with pytest.raises(ValueError, match="Meshes"):
        evaluate_meshes(pred.verts_padded(), gt)
    with pytest.raises(ValueError, match="points must have shape"):
        winding_numbers(gt, torch.zeros(2, 4, 3))
