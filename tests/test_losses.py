"""Tests of dvr_plugin.engine.losses: hand-computed values, gradient directions, validation."""

from __future__ import annotations

import math

import pytest
import torch

from dvr_plugin.engine.losses import (
    REFERENCE_SETTINGS,
    LossWeights,
    depth_loss,
    freespace_and_occupancy_points,
    freespace_loss,
    image_gradient_loss,
    jitter_points,
    normal_smoothness_loss,
    occupancy_loss,
    rgb_loss,
    total_loss,
    world_point_loss,
)
from dvr_plugin.engine.sampling import gather, sample_uniform

T, F = True, False


def _bool(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _descends(loss_fn, param: torch.Tensor, lr: float = 1e-2) -> torch.Tensor:
    """Take one gradient step on ``param``; check the loss drops; return the gradient."""
    param = param.clone().requires_grad_(True)
    before = loss_fn(param)
    (grad,) = torch.autograd.grad(before, param)
    assert torch.isfinite(grad).all()
    with torch.no_grad():
        after = loss_fn(param - lr * grad)
    assert float(after) < float(before.detach())
    return grad


# ------------------------------------------------------------------------------------------ rgb


def make_rgb_inputs():
    """B = 2 images, R = 3 rays; three rays are selected (hit & mask)."""
    pred = torch.tensor(
        [
            [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [0.9, 0.9, 0.9]],
            [[0.1, 0.2, 0.3], [float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    gt = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
            [[0.3, 0.2, 0.1], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]],
        ]
    )
    hit = _bool([[T, T, T], [T, T, F]])
    mask = _bool([[T, F, T], [T, F, T]])
    return pred, gt, hit, mask


def test_rgb_loss_value_and_gradient():
    pred, gt, hit, mask = make_rgb_inputs()
    # selected: (0, 0): 1.5, (0, 2): 0.3, (1, 0): 0.2 + 0 + 0.2 = 0.4
    assert rgb_loss(pred, gt, hit, mask).item() == pytest.approx((1.5 + 0.3 + 0.4) / 2)
    assert rgb_loss(pred, gt, hit, mask, reduction="sum").item() == pytest.approx(2.2)
    assert rgb_loss(pred, gt, hit, mask, reduction="mean").item() == pytest.approx(2.2 / 3)
    grad = _descends(lambda p: rgb_loss(p, gt, hit, mask), pred)
    assert torch.equal(grad[0, 0], torch.full((3,), 0.5))  # pred > gt: gradient +1 / B
    assert torch.equal(grad[0, 2], torch.full((3,), -0.5))
    assert grad[1, 1].abs().sum() == 0 and grad[1, 2].abs().sum() == 0  # not selected (NaN ok)


def test_rgb_loss_no_selection_is_zero_in_graph():
    pred, gt, hit, mask = make_rgb_inputs()
    pred.requires_grad_(True)
    loss = rgb_loss(pred, gt, hit, torch.zeros_like(mask))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert pred.grad.abs().sum() == 0
    assert rgb_loss(pred, gt, hit, torch.zeros_like(mask), reduction="mean").item() == 0.0


def test_rgb_loss_validation():
    pred, gt, hit, mask = make_rgb_inputs()
    with pytest.raises(ValueError, match="same shape"):
        rgb_loss(pred, gt[:, :2], hit, mask)
    with pytest.raises(ValueError, match="bool"):
        rgb_loss(pred, gt, hit.float(), mask)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        rgb_loss(pred, gt, hit[:, :2], mask)
    with pytest.raises(ValueError, match=r"\(B, R, C\)"):
        rgb_loss(pred[0], gt[0], hit, mask)
    with pytest.raises(ValueError, match="reduction"):
        rgb_loss(pred, gt, hit, mask, reduction="avg")


# ---------------------------------------------------------------------------------------- depth


def test_depth_loss_value_and_gradient():
    pred = torch.tensor([[1.0, float("inf")], [2.0, 3.0]])
    gt = torch.tensor([[1.5, 2.0], [1.0, float("nan")]])
    valid = _bool([[T, T], [T, T]])
    hit = _bool([[T, F], [T, T]])
    # (0, 1) did not hit, (1, 1) has no finite true depth.
    assert depth_loss(pred, gt, valid, hit).item() == pytest.approx((0.5 + 1.0) / 2)
    assert depth_loss(pred, gt, valid, hit, reduction="mean").item() == pytest.approx(0.75)
    grad = _descends(lambda p: depth_loss(p, gt, valid, hit), pred)
    assert grad.tolist() == [[-0.5, 0.0], [0.5, 0.0]]
    with pytest.raises(ValueError, match="same shape"):
        depth_loss(pred, gt[:, :1], valid, hit)
    with pytest.raises(ValueError, match=r"\(B, R\)"):
        depth_loss(pred[..., None], gt[..., None], valid, hit)


def test_world_point_loss_value_and_gradient():
    pred = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0]]])
    gt = torch.tensor([[[3.0, 4.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    valid = _bool([[T, T, T]])
    hit = _bool([[T, T, F]])
    assert world_point_loss(pred, gt, valid).item() == pytest.approx(5.0 + 0.0 + math.sqrt(75))
    assert world_point_loss(pred, gt, valid, pred_hit=hit).item() == pytest.approx(5.0)
    grad = _descends(lambda p: world_point_loss(p, gt, valid, pred_hit=hit), pred)
    assert torch.allclose(grad[0, 0], torch.tensor([-0.6, -0.8, 0.0]))  # unit vector to gt
    assert grad[0, 1].abs().sum() == 0 and grad[0, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="same shape"):
        world_point_loss(pred, gt[..., :2], valid)


# ------------------------------------------------------------------------ free space, occupancy


def make_logits():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 5.0]])
    select = _bool([[T, T], [F, T]])
    return logits, select


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_freespace_loss_value_and_gradient():
    logits, select = make_logits()
    expected = (_softplus(0.0) + _softplus(2.0) + _softplus(5.0)) / 2
    assert freespace_loss(logits, select).item() == pytest.approx(expected, rel=1e-6)
    grad = _descends(lambda x: freespace_loss(x, select), logits)
    assert bool((grad[select] > 0).all())  # lowering the logits (towards empty) lowers the loss
    assert grad[1, 0] == 0
    assert grad[0, 0].item() == pytest.approx(0.5 * 0.5)  # sigmoid(0) / B


def test_occupancy_loss_value_and_gradient():
    logits, select = make_logits()
    expected = (_softplus(-0.0) + _softplus(-2.0) + _softplus(-5.0)) / 2
    assert occupancy_loss(logits, select).item() == pytest.approx(expected, rel=1e-6)
    grad = _descends(lambda x: occupancy_loss(x, select), logits)
    assert bool((grad[select] < 0).all())  # raising the logits (towards occupied) lowers it
    assert grad[1, 0] == 0


def test_sdf_variants_are_smoothed_hinges():
    sdf = torch.tensor([[-0.5, 0.0, 0.5]])
    select = _bool([[T, T, T]])
    beta = 100.0
    free = freespace_loss(sdf, select, field_type="sdf", sdf_beta=beta, reduction="sum")
    occ = occupancy_loss(sdf, select, field_type="sdf", sdf_beta=beta, reduction="sum")
    # max(0, -s) and max(0, s) plus log(2) / beta at s = 0.
    assert free.item() == pytest.approx(0.5 + math.log(2) / beta, abs=1e-6)
    assert occ.item() == pytest.approx(0.5 + math.log(2) / beta, abs=1e-6)
    grad_free = _descends(
        lambda s: freespace_loss(s, select, field_type="sdf", reduction="sum"), sdf
    )
    assert grad_free[0, 0] < 0  # inside point: increase s (move it outside)
    grad_occ = _descends(
        lambda s: occupancy_loss(s, select, field_type="sdf", reduction="sum"), sdf
    )
    assert grad_occ[0, 2] > 0  # outside point: decrease s
    with pytest.raises(ValueError, match="field_type"):
        freespace_loss(sdf, select, field_type="density")
    with pytest.raises(ValueError, match="sdf_beta"):
        occupancy_loss(sdf, select, field_type="sdf", sdf_beta=0.0)


def test_logit_losses_validation():
    logits, select = make_logits()
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        freespace_loss(logits, select[:, :1])
    with pytest.raises(ValueError, match=r"\(B, R\)"):
        occupancy_loss(logits[..., None], select)


def make_rays():
    """B = 1, R = 6 rays along +z from the origin, one per case of the point selection."""
    origins = torch.zeros(1, 6, 3)
    origins[..., 0] = torch.arange(6.0)
    directions = torch.tensor([0.0, 0.0, 1.0]).expand(1, 6, 3)
    depths_hit = torch.tensor([[2.0, float("inf"), float("nan"), float("inf"), 0.0, 1.7]])
    hit = _bool([[T, F, F, F, F, T]])
    mask = _bool([[F, F, F, T, T, T]])
    near = torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0, 1.0]])
    far = torch.tensor([[3.0, 3.0, 2.0, 3.0, 0.0, 3.0]])  # rays 2 and 4 miss the box
    hull = torch.tensor([[0.0, 0.0, 0.0, float("inf"), 2.5, 0.0]])
    return origins, directions, depths_hit, hit, mask, near, far, hull


def test_freespace_and_occupancy_points_rules():
    origins, directions, depths_hit, hit, mask, near, far, hull = make_rays()
    gen = torch.Generator().manual_seed(0)
    points = freespace_and_occupancy_points(
        origins, directions, depths_hit, hit, mask, near, far, gen, visual_hull_depth=hull
    )
    # free space: outside the mask; ray 0 at its hit, ray 1 random, ray 2 has no range
    assert points.freespace_select.tolist() == [[T, T, F, F, F, F]]
    assert points.freespace_depths[0, 0] == 2.0
    assert 1.0 <= float(points.freespace_depths[0, 1]) <= 3.0
    # occupancy: inside the mask without a hit; ray 3 random (its hull depth is inf), ray 4 at
    # its visual-hull depth although it has no range, ray 5 hit
    assert points.occupancy_select.tolist() == [[F, F, F, T, T, F]]
    assert 1.0 <= float(points.occupancy_depths[0, 3]) <= 3.0
    assert points.occupancy_depths[0, 4] == 2.5
    for pts, depths in (
        (points.freespace_points, points.freespace_depths),
        (points.occupancy_points, points.occupancy_depths),
    ):
        assert torch.isfinite(pts).all() and torch.isfinite(depths).all()
        assert torch.allclose(pts, origins + depths[..., None] * directions)
    # without a visual hull, ray 4 (no range) drops out
    no_hull = freespace_and_occupancy_points(origins, directions, depths_hit, hit, mask, near, far)
    assert no_hull.occupancy_select.tolist() == [[F, F, F, T, F, F]]
    # floats for near / far
    flat = freespace_and_occupancy_points(origins, directions, depths_hit, hit, mask, 1.0, 3.0)
    assert flat.freespace_select.tolist() == [[T, T, T, F, F, F]]


def test_freespace_and_occupancy_points_random_depths():
    b, r = 2, 4000
    origins = torch.randn(b, r, 3)
    directions = torch.randn(b, r, 3, requires_grad=True)
    depths = torch.full((b, r), 2.0, requires_grad=True)
    hit = torch.zeros(b, r, dtype=torch.bool)
    mask = torch.zeros(b, r, dtype=torch.bool)
    mask[:, ::2] = True
    near, far = torch.full((b, r), 1.0), torch.full((b, r), 3.0)
    out = freespace_and_occupancy_points(
        origins, directions, depths, hit, mask, near, far, torch.Generator().manual_seed(1)
    )
    again = freespace_and_occupancy_points(
        origins, directions, depths, hit, mask, near, far, torch.Generator().manual_seed(1)
    )
    assert torch.equal(out.freespace_points, again.freespace_points)
    assert not out.freespace_points.requires_grad and not out.occupancy_points.requires_grad
    free = out.freespace_depths[out.freespace_select]
    occ = out.occupancy_depths[out.occupancy_select]
    assert free.numel() == occ.numel() == b * r // 2
    for d in (free, occ):  # uniform in [1, 3]
        assert float(d.min()) >= 1.0 and float(d.max()) <= 3.0
        assert float(d.mean()) == pytest.approx(2.0, abs=0.05)
        assert float(d.min()) < 1.01 and float(d.max()) > 2.99
    with pytest.raises(ValueError, match="broadcast"):
        freespace_and_occupancy_points(origins, directions, depths, hit, mask, near[:, :3], far)
    with pytest.raises(ValueError, match="mask"):
        freespace_and_occupancy_points(origins, directions, depths, hit, mask[:1], near, far)


# ---------------------------------------------------------------------------------- normals


def test_normal_smoothness_value_and_gradient():
    normals = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    jittered = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [float("nan"), 0.0, 0.0]]])
    select = _bool([[T, T, F]])
    # unit normals: 0 for the first pair, sqrt(2) for the perpendicular pair
    assert normal_smoothness_loss(normals, jittered, select).item() == pytest.approx(math.sqrt(2))
    raw = normal_smoothness_loss(normals, jittered, select, normalize=False)
    assert raw.item() == pytest.approx(1.0 + math.sqrt(2))
    jittered_ok = jittered.clone()
    jittered_ok[0, 2] = torch.tensor([1.0, 0.0, 0.0])
    grad = _descends(lambda n: normal_smoothness_loss(normals, n, select), jittered_ok)
    # rotate (0, 1, 0) towards (1, 0, 0); the radial part is projected out by the normalisation
    assert grad[0, 1, 0] < 0 and grad[0, 1, 1].abs() < 1e-6
    assert grad[0, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="same shape"):
        normal_smoothness_loss(normals, jittered[:, :2], select)


def test_jitter_points():
    points = torch.randn(2, 100, 3)
    a = jitter_points(points, 1e-3, torch.Generator().manual_seed(0))
    b = jitter_points(points, 1e-3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, points)
    offset = a - points
    assert float(offset.abs().max()) <= 0.5e-3 + 1e-7
    assert float(offset.abs().max()) > 0.4e-3  # the offsets fill the cube
    assert torch.equal(jitter_points(points, scale=0.0), points)
    grad_points = points.clone().requires_grad_(True)
    jitter_points(grad_points).sum().backward()
    assert torch.equal(grad_points.grad, torch.ones_like(points))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        jitter_points(points[..., :2])
    with pytest.raises(ValueError, match="scale"):
        jitter_points(points, -1.0)


# --------------------------------------------------------------------------- image gradients


def test_image_gradient_loss_value_and_gradient():
    # One image, two patches (TL, TR, BL, BR), two channels; patch 1 has an invalid ray.
    pred_0 = [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [9.0, 1.0]]
    pred_1 = [[0.0, 0.0], [5.0, 5.0], [7.0, 7.0], [1.0, 1.0]]
    gt_0 = [[0.0, 0.0], [0.0, 3.0], [0.0, 4.0], [0.0, 0.0]]
    pred = torch.tensor([pred_0 + pred_1])
    gt = torch.tensor([gt_0 + [[0.0, 0.0]] * 4])
    valid = _bool([[T, T, T, T, T, T, F, T]])
    # channel 0: pred (dx, dy) = (1, 2), gt (0, 0) -> sqrt(5); channel 1: pred (0, 0), gt (3, 4)
    # -> 5; the bottom-right value does not enter; patch 1 is skipped.
    expected = math.sqrt(5.0) + 5.0
    assert image_gradient_loss(pred, gt, valid).item() == pytest.approx(expected)
    assert image_gradient_loss(pred, gt, valid, reduction="mean").item() == pytest.approx(expected)
    two = image_gradient_loss(pred.expand(2, -1, -1), gt.expand(2, -1, -1), valid.expand(2, -1))
    assert two.item() == pytest.approx(expected)  # summed over images, divided by B
    # a constant offset has the same gradients
    assert image_gradient_loss(gt + 0.3, gt, valid).item() == pytest.approx(0.0, abs=1e-6)
    grad = _descends(lambda p: image_gradient_loss(p, gt, valid), pred)
    assert grad[0, 4:].abs().sum() == 0 and grad[0, 3].abs().sum() == 0
    with pytest.raises(ValueError, match="divisible by 4"):
        image_gradient_loss(pred[:, :6], gt[:, :6], valid[:, :6])


def test_image_gradient_loss_with_sampled_patches():
    height, width = 9, 11
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    gt_image = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(0))
    ramp = (0.3 * cols + 0.4 * rows)[None, :, :, None]  # d/dcol = 0.3, d/drow = 0.4
    sample = sample_uniform(
        2, (height, width), 32, patches=True, generator=torch.Generator().manual_seed(0)
    )
    gt = gather(gt_image, sample)
    pred = gather(gt_image + ramp, sample)
    valid = torch.ones(2, 32, dtype=torch.bool)
    # every patch and channel contributes |(0.3, 0.4)| = 0.5: 8 patches x 3 channels, B = 2
    assert image_gradient_loss(pred, gt, valid).item() == pytest.approx(8 * 3 * 0.5, rel=1e-5)


# ----------------------------------------------------------------------------- weights, total


def test_loss_weights_defaults_and_presets():
    weights = LossWeights()
    assert weights.to_dict() == {
        "rgb": 1.0,
        "depth": 1.0,
        "world_point": 1.0,
        "freespace": 1.0,
        "occupancy": 1.0,
        "normal": 0.05,
        "image_gradient": 0.0,
        "eikonal": 0.0,
        "mask": 0.0,
        "volume": 0.0,
    }
    assert LossWeights.from_dict(weights.to_dict()) == weights
    dtu = LossWeights.reference("dtu_rgb")
    assert dtu.image_gradient == 1.0 and dtu.depth == 0.0 and dtu.rgb == 1.0
    assert LossWeights.reference("shapenet_combined").depth == 10.0
    assert LossWeights.reference("shapenet_depth").rgb == 0.0
    assert LossWeights.reference("dtu_depth").world_point == 1.0
    assert set(REFERENCE_SETTINGS) == {
        "shapenet_rgb",
        "shapenet_depth",
        "shapenet_combined",
        "dtu_rgb",
        "dtu_depth",
    }
    with pytest.raises(ValueError, match="setting"):
        LossWeights.reference("dtu")
    with pytest.raises(ValueError, match=">= 0"):
        LossWeights(normal=-0.1)
    with pytest.raises(ValueError, match="finite"):
        LossWeights(rgb=float("nan"))
    with pytest.raises(ValueError, match="Unknown"):
        LossWeights.from_dict({"normals": 0.1})


def test_total_loss():
    rgb = torch.tensor(2.0, requires_grad=True)
    normal = torch.tensor(4.0, requires_grad=True)
    terms = {"rgb": rgb, "normal": normal, "image_gradient": torch.tensor(float("nan"))}
    total = total_loss(terms, LossWeights())
    assert total.item() == pytest.approx(2.0 + 0.05 * 4.0)  # image_gradient weight 0: skipped
    total.backward()
    assert rgb.grad.item() == 1.0 and normal.grad.item() == pytest.approx(0.05)
    assert total_loss({"rgb": torch.tensor(1.0)}, {"rgb": 3.0}).item() == 3.0
    assert total_loss({"depth": None, "rgb": torch.tensor(1.0)}).item() == 1.0
    assert total_loss({}).item() == 0.0
    with pytest.raises(ValueError, match="Unknown loss term"):
        total_loss({"photo": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="scalar"):
        total_loss({"rgb": torch.ones(2)})


def test_losses_compose_into_one_step():
    """A tiny end-to-end check: every term's gradient reaches a shared parameter."""
    torch.manual_seed(0)
    b, r = 2, 8
    param = torch.zeros(b, r, requires_grad=True)
    hit = torch.ones(b, r, dtype=torch.bool)
    mask = torch.ones(b, r, dtype=torch.bool)
    rgb_pred = torch.sigmoid(param)[..., None].expand(b, r, 3)
    terms = {
        "rgb": rgb_loss(rgb_pred, torch.ones(b, r, 3), hit, mask),
        "depth": depth_loss(param + 1.0, torch.full((b, r), 2.0), mask, hit),
        "freespace": freespace_loss(param, ~mask),
        "occupancy": occupancy_loss(param, mask),
        "image_gradient": image_gradient_loss(rgb_pred, torch.rand(b, r, 3), mask),
    }
    total = total_loss(terms, LossWeights(image_gradient=0.5))
    total.backward()
    assert torch.isfinite(param.grad).all() and bool((param.grad < 0).all())
