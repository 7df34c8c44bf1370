"""Tests of dvr_plugin.metrics.pointcloud against a brute-force NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch3d.structures import Pointclouds

from dvr_plugin.metrics import (
    EMPTY_VALUES,
    chamfer_l1,
    dvr_thresholds,
    evaluate_pointclouds,
    f_score,
    nearest_neighbor_distances,
    unit_cube_transform,
)


def reference_scores(pred, gt, pred_normals, gt_normals, thresholds):
    """The protocol for one pair of clouds, with a full NumPy distance matrix."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    dist = np.sqrt(((pred[:, None, :] - gt[None, :, :]) ** 2).sum(-1))  # (P1, P2)
    d_pred, i_pred = dist.min(1), dist.argmin(1)
    d_gt, i_gt = dist.min(0), dist.argmin(0)

    def unit(n):
        n = np.asarray(n, np.float64)
        return n / np.linalg.norm(n, axis=-1, keepdims=True)

    n_acc = np.abs((unit(pred_normals) * unit(gt_normals)[i_pred]).sum(-1)).mean()
    n_comp = np.abs((unit(gt_normals) * unit(pred_normals)[i_gt]).sum(-1)).mean()
    precision = np.array([(d_pred <= t).mean() for t in thresholds])
    recall = np.array([(d_gt <= t).mean() for t in thresholds])
    denom = precision + recall
    fs = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0)
    return {
        "accuracy": d_pred.mean(),
        "completeness": d_gt.mean(),
        "chamfer_l1": 0.5 * (d_pred.mean() + d_gt.mean()),
        "chamfer_l1_x10": 5.0 * (d_pred.mean() + d_gt.mean()),
        "accuracy_sq": (d_pred**2).mean(),
        "completeness_sq": (d_gt**2).mean(),
        "chamfer_l2": 0.5 * ((d_pred**2).mean() + (d_gt**2).mean()),
        "normal_accuracy": n_acc,
        "normal_completeness": n_comp,
        "normal_consistency": 0.5 * (n_acc + n_comp),
        "precision": precision,
        "recall": recall,
        "f_score": fs,
    }


def reference_normalise(points, like):
    """Map `points` with the transform that takes `like`'s bounding box to the unit box."""
    low, high = like.min(0), like.max(0)
    return (points - 0.5 * (low + high)) / (high - low).max()


def init_clouds(batch=3, p1=57, p2=44, seed=0, dtype=torch.float64):
    """Padded random clouds with random normals and per-cloud lengths."""
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, p1, 3, generator=gen, dtype=dtype) * 0.6 - 0.3
    gt = torch.rand(batch, p2, 3, generator=gen, dtype=dtype) * 0.8 - 0.4
    pred_normals = torch.randn(batch, p1, 3, generator=gen, dtype=dtype)
    gt_normals = torch.randn(batch, p2, 3, generator=gen, dtype=dtype)
    pred_lengths = torch.randint(p1 // 2, p1 + 1, (batch,), generator=gen)
    gt_lengths = torch.randint(p2 // 2, p2 + 1, (batch,), generator=gen)
    pred_lengths[0], gt_lengths[0] = p1, p2
    return pred, gt, pred_normals, gt_normals, pred_lengths, gt_lengths


def check_against_reference(normalize):
    pred, gt, pn, gn, pl, gl = init_clouds()
    thresholds = [0.0, 0.01, 0.05, 0.1, 0.3]
    out = evaluate_pointclouds(
        pred,
        gt,
        pred_normals=pn,
        gt_normals=gn,
        pred_lengths=pl,
        gt_lengths=gl,
        thresholds=thresholds,
        normalize=normalize,
    )
    for b in range(pred.shape[0]):
        p, g = pred[b, : pl[b]].numpy(), gt[b, : gl[b]].numpy()
        if normalize == "gt":
            p, g = reference_normalise(p, g), reference_normalise(g, g)
        elif normalize == "each":
            p, g = reference_normalise(p, p), reference_normalise(g, g)
        ref = reference_scores(p, g, pn[b, : pl[b]], gn[b, : gl[b]], thresholds)
        for key, value in ref.items():
            np.testing.assert_allclose(out[key][b].numpy(), value, rtol=1e-6, atol=1e-9)
    assert not out["empty"].any()
    np.testing.assert_allclose(out["thresholds"].numpy(), thresholds)


def test_matches_numpy_reference_unnormalised():
    check_against_reference("none")


def test_matches_numpy_reference_gt_frame():
    check_against_reference("gt")


def test_matches_numpy_reference_each_frame():
    check_against_reference("each")


def test_float32_matches_float64():
    pred, gt, pn, gn, pl, gl = init_clouds()
    kwargs = {"pred_lengths": pl, "gt_lengths": gl, "thresholds": [0.02, 0.1]}
    out64 = evaluate_pointclouds(pred, gt, pred_normals=pn, gt_normals=gn, **kwargs)
    out32 = evaluate_pointclouds(
        pred.float(), gt.float(), pred_normals=pn.float(), gt_normals=gn.float(), **kwargs
    )
    for key in ("accuracy", "completeness", "chamfer_l2", "normal_consistency"):
        np.testing.assert_allclose(out32[key].numpy(), out64[key].numpy(), rtol=1e-5)


def test_identical_clouds():
    pred, _, normals, _, _, _ = init_clouds(batch=2)
    out = evaluate_pointclouds(
        pred, pred.clone(), pred_normals=normals, gt_normals=-normals, threshold_sweep=True
    )
    for key in ("accuracy", "completeness", "chamfer_l1", "chamfer_l2"):
        np.testing.assert_allclose(out[key].numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(out["f_score"].numpy(), 1.0)
    np.testing.assert_allclose(out["sweep_f_score"].numpy(), 1.0)
    # Normals are compared up to sign.
    np.testing.assert_allclose(out["normal_consistency"].numpy(), 1.0, rtol=1e-12)


def test_pointclouds_input_and_padding():
    """A Pointclouds batch of different sizes equals scoring each pair alone."""
    pred, gt, pn, gn, pl, gl = init_clouds()
    pred_pc = Pointclouds(
        points=[pred[b, : pl[b]] for b in range(3)], normals=[pn[b, : pl[b]] for b in range(3)]
    )
    gt_pc = Pointclouds(
        points=[gt[b, : gl[b]] for b in range(3)], normals=[gn[b, : gl[b]] for b in range(3)]
    )
    batched = evaluate_pointclouds(pred_pc, gt_pc, thresholds=[0.05])
    for b in range(3):
        single = evaluate_pointclouds(
            pred[b : b + 1, : pl[b]],
            gt[b : b + 1, : gl[b]],
            pred_normals=pn[b : b + 1, : pl[b]],
            gt_normals=gn[b : b + 1, : gl[b]],
            thresholds=[0.05],
        )
        for key in ("chamfer_l1", "chamfer_l2", "normal_consistency", "f_score"):
            np.testing.assert_allclose(batched[key][b].numpy(), single[key][0].numpy())


def test_threshold_sweep():
    pred, gt, _, _, pl, gl = init_clouds()
    out = evaluate_pointclouds(
        pred, gt, pred_lengths=pl, gt_lengths=gl, threshold_sweep=True, normalize="none"
    )
    sweep = out["sweep_thresholds"]
    assert tuple(sweep.shape) == (1000,)
    np.testing.assert_allclose(sweep.numpy(), np.linspace(1 / 1000, 1, 1000), rtol=1e-6)
    assert float(dvr_thresholds()[9]) == pytest.approx(0.01, abs=5e-7)
    assert tuple(out["sweep_f_score"].shape) == (3, 1000)
    # The default threshold (0.01) is entry 9 of the sweep.
    np.testing.assert_allclose(out["sweep_f_score"][:, 9], out["f_score"][:, 0])
    # Precision and recall never decrease with the threshold.
    assert (out["sweep_precision"].diff(dim=1) >= 0).all()
    assert (out["sweep_recall"].diff(dim=1) >= 0).all()
    np.testing.assert_allclose(out["sweep_f_score"][:, -1].numpy(), 1.0)


def test_empty_prediction_gets_worst_case():
    _, gt, _, gn, _, _ = init_clouds(batch=2)
    pred = Pointclouds(
        points=[torch.zeros(0, 3, dtype=gt.dtype), gt[1]],
        normals=[torch.zeros(0, 3, dtype=gt.dtype), gn[1]],
    )
    gt_pc = Pointclouds(points=list(gt), normals=list(gn))
    out = evaluate_pointclouds(pred, gt_pc, threshold_sweep=True)
    assert out["empty"].tolist() == [True, False]
    assert float(out["accuracy"][0]) == pytest.approx(math.sqrt(3.0), abs=5e-7)
    assert float(out["completeness"][0]) == pytest.approx(math.sqrt(3.0), abs=5e-7)
    assert float(out["chamfer_l2"][0]) == pytest.approx(3.0, abs=5e-7)
    for key in ("normal_consistency", "f_score", "precision", "recall", "sweep_f_score"):
        assert (out[key][0] == 0).all(), key
    for key in EMPTY_VALUES:
        if key in out and key != "iou":
            assert torch.all(out[key][0] == EMPTY_VALUES[key]), key
    # The non-empty item is the identical cloud.
    assert float(out["chamfer_l1"][1]) == pytest.approx(0.0, abs=5e-13)
    assert float(out["f_score"][1, 0]) == pytest.approx(1.0, abs=5e-8)
    # All predictions empty.
    all_empty = Pointclouds(points=[torch.zeros(0, 3), torch.zeros(0, 3)])
    out = evaluate_pointclouds(all_empty, gt.float())
    assert out["empty"].all()
    np.testing.assert_allclose(out["chamfer_l1"].numpy(), math.sqrt(3.0), rtol=1e-6)
    out = evaluate_pointclouds(torch.zeros(2, 0, 3), gt.float())
    assert out["empty"].all()
    np.testing.assert_allclose(out["f_score"].numpy(), 0.0)


def test_gt_frame_is_similarity_invariant():
    """Moving and scaling both clouds together changes nothing in the gt frame."""
    pred, gt, _, _, _, _ = init_clouds()
    base = evaluate_pointclouds(pred, gt, thresholds=[0.02, 0.05])
    moved = evaluate_pointclouds(
        pred * 7.0 + torch.tensor([1.0, -2.0, 3.0], dtype=pred.dtype),
        gt * 7.0 + torch.tensor([1.0, -2.0, 3.0], dtype=pred.dtype),
        thresholds=[0.02, 0.05],
    )
    for key in ("chamfer_l1", "chamfer_l2", "f_score"):
        np.testing.assert_allclose(moved[key].numpy(), base[key].numpy(), rtol=1e-9)
    # "each" forgives a uniform scale error of the prediction, "gt" does not.
    each = evaluate_pointclouds(gt * 1.3, gt, normalize="each")
    assert float(each["chamfer_l1"].max()) < 1e-7
    strict = evaluate_pointclouds(gt * 1.3, gt, normalize="gt")
    assert float(strict["chamfer_l1"].min()) > 1e-3


def test_unit_cube_transform():
    _, gt, _, _, _, gl = init_clouds()
    centre, scale = unit_cube_transform(gt, gl)
    for b in range(3):
        g = (gt[b, : gl[b]] - centre[b]) * scale[b]
        np.testing.assert_allclose((g.amax(0) - g.amin(0)).max().item(), 1.0)
        np.testing.assert_allclose((g.amax(0) + g.amin(0)).numpy(), 0.0, atol=1e-12)


def test_helpers_match_evaluate():
    pred, gt, _, _, pl, gl = init_clouds()
    out = evaluate_pointclouds(
        pred, gt, pred_lengths=pl, gt_lengths=gl, thresholds=[0.03], normalize="none"
    )
    cd = chamfer_l1(pred, gt, pred_lengths=pl, gt_lengths=gl)
    np.testing.assert_allclose(cd.numpy(), out["chamfer_l1"].numpy())
    fs, precision, recall = f_score(pred, gt, threshold=0.03, pred_lengths=pl, gt_lengths=gl)
    np.testing.assert_allclose(fs.numpy(), out["f_score"][:, 0].numpy())
    np.testing.assert_allclose(precision.numpy(), out["precision"][:, 0].numpy())
    np.testing.assert_allclose(recall.numpy(), out["recall"][:, 0].numpy())


def test_chamfer_gradient_is_finite_at_zero_distance():
    pred, _, _, _, _, _ = init_clouds(batch=1)
    pred = pred.clone().requires_grad_(True)
    gt = pred.detach().clone()
    gt[:, :5] += 0.01
    chamfer_l1(pred, gt).sum().backward()
    assert torch.isfinite(pred.grad).all()
    assert float(pred.grad.abs().sum()) > 0.0


def test_nearest_neighbor_distances():
    src = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [9, 9, 9]]])
    tgt = torch.tensor([[[0.0, 3, 4], [1, 0, 0.5]]])
    dist, idx = nearest_neighbor_distances(src, tgt, src_lengths=torch.tensor([2]))
    np.testing.assert_allclose(dist.numpy(), [[math.sqrt(1.25), 0.5, 0.0]], rtol=1e-6)
    assert idx[0, :2].tolist() == [1, 1]


def test_invalid_inputs():
    pred, gt, _, _, _, _ = init_clouds()
    with pytest.raises(ValueError, match="same device.*cpu.*meta"):
        evaluate_pointclouds(pred, torch.zeros(3, 5, 3, device="meta", dtype=pred.dtype))
    with pytest.raises(ValueError, match="Batch sizes differ"):
        evaluate_pointclouds(pred[:2], gt)
    with pytest.raises(ValueError, match=r"\(B, P, 3\)"):
        evaluate_pointclouds(pred[..., :2], gt)
    with pytest.raises(ValueError, match="normalize"):
        evaluate_pointclouds(pred, gt, normalize="bbox")
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_pointclouds(pred, gt, thresholds=[-0.1])
    with pytest.raises(ValueError, match="ground-truth cloud"):
        evaluate_pointclouds(pred, gt, gt_lengths=torch.tensor([3, 0, 3]))
    with pytest.raises(ValueError, match="lengths"):
        evaluate_pointclouds(pred, gt, pred_lengths=torch.tensor([1, 2]))

