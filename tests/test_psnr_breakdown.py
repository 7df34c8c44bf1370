"""
The held-out error breakdown (integration/benchmarks/psnr_breakdown.py) against values computed
by hand on small synthetic images, and its command line on a short demo fit.

Frame and units: images only (channels-last RGB in [0, 1], PSNR in dB with peak 1); the demo fit
is in its own world frame.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from integration.benchmarks.psnr_breakdown import eroded, error_breakdown, gaussian_blur, main
from tests.training_factories import dvr


def _images(seed: int = 0, n: int = 2, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(n, size, size, 3, generator=generator, dtype=torch.float64)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[:, 3:13, 2:14] = True
    return target, mask


def test_eroded_mask_counts_pixels_by_hand():
    _, mask = _images()
    inner = eroded(mask, 2)
    expected = torch.zeros_like(mask)
    expected[:, 5:11, 4:12] = True
    assert torch.equal(inner, expected)
    assert torch.equal(eroded(mask, 0), mask)
    # the image's edge counts as outside the mask
    full = torch.ones(1, 6, 6, dtype=torch.bool)
    assert int(eroded(full, 1).sum()) == 16


def test_shares_and_psnr_match_a_brute_force_sum():
    target, mask = _images()
    generator = torch.Generator().manual_seed(1)
    pred = (target + 0.05 * torch.randn(target.shape, generator=generator, dtype=torch.float64))
    pred = pred.clamp(0, 1)
    hit = mask.clone()
    hit[:, 3:5, 2:14] = False  # the render misses the top two rows of the mask
    pred[~hit] = 1.0  # where it misses, it shows the white background
    result = error_breakdown(pred, target, mask, hit, border=2, blur_sigmas=())

    squared = ((pred - target) ** 2).mean(-1)
    in_mask = [(v, i, j) for v in range(2) for i in range(16) for j in range(16) if mask[v, i, j]]
    total = sum(float(squared[p]) for p in in_mask)
    missed = sum(float(squared[p]) for p in in_mask if not hit[p])
    inside = [(v, i, j) for (v, i, j) in in_mask if 5 <= i < 11 and 4 <= j < 12 and hit[v, i, j]]
    inside_sum = sum(float(squared[p]) for p in inside)
    assert result["missed_share"] == pytest.approx(missed / total)
    assert result["inside_share"] == pytest.approx(inside_sum / total)
    assert result["border_share"] == pytest.approx(1 - (missed + inside_sum) / total)
    assert result["missed_fraction"] == pytest.approx(2 * 12 / 120)
    # the missed rows 3-4 are the top two rows of the mask: all within its 2-px border band
    assert result["missed_on_border"] == 1.0
    hit_deep = mask.clone()
    hit_deep[:, 7, 6] = False  # one missed pixel deep inside each view
    deep = error_breakdown(pred, target, mask, hit & hit_deep, border=2, blur_sigmas=())
    assert deep["missed_on_border"] == pytest.approx(48 / 50)
    assert result["psnr_in_mask"] == pytest.approx(-10 * math.log10(total / len(in_mask)))
    assert result["psnr_inside"] == pytest.approx(-10 * math.log10(inside_sum / len(inside)))
    assert len(result["per_view"]) == 2


def test_affine_fix_recovers_an_exposure_error_and_blur_a_detail_error():
    target, mask = _images(seed=2)
    scaled = 0.8 * target + 0.1  # an exposure / offset error, the same for every pixel
    result = error_breakdown(scaled, target, mask, mask, blur_sigmas=(1.0,))
    assert result["psnr_inside"] < 30
    assert result["psnr_inside_affine"] > 100  # exact up to rounding

    # a render that is the photograph's blur: right at a coarse scale, wrong in detail
    soft = gaussian_blur(target, 1.0)
    result = error_breakdown(soft, target, mask, mask, blur_sigmas=(2.0,))
    assert result["psnr_inside_blurred"][2.0] > result["psnr_inside"] + 6
    assert result["psnr_photo_detail"][2.0] < 20  # random pixels: all detail


def test_blur_keeps_constants_and_sums():
    constant = torch.full((1, 9, 7, 3), 0.25, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(constant, 1.5), constant)
    with pytest.raises(ValueError, match="sigma must be positive"):
        gaussian_blur(constant, 0.0)


def test_bad_shapes_are_named():
    target, mask = _images()
    with pytest.raises(ValueError, match=r"pred and target must both be \(N, H, W, 3\)"):
        error_breakdown(target[..., :2], target[..., :2], mask, mask)
    with pytest.raises(ValueError, match="mask and hit must be"):
        error_breakdown(target, target, mask[:, :4], mask)
    with pytest.raises(ValueError, match="border must be >= 0"):
        error_breakdown(target, target, mask, mask, border=-1)


@pytest.mark.slow
def test_command_line_on_a_short_demo_fit(tmp_path, one_thread):
    out = os.path.join(tmp_path, "fit")
    settings = ["data.image_size=24", "data.n_views=10", "model.hidden_size=32", "optim.lr=1e-3"]
    settings += ["train.iterations=60", "train.rays_per_image=128", "eval.validate_every=0"]
    settings += ["eval.turntable_frames=0", "eval.mesh_resolution=16", "eval.n_steps=32"]
    code = dvr(["fit", "--config", "demo", "--out", out, "--device", "cpu", "--quiet", *settings])
    assert code == 0
    report = os.path.join(tmp_path, "breakdown")
    result = main([os.path.join(out, "checkpoint.pt"), "--out", report, "--steps", "32"])
    with open(os.path.join(report, "psnr_breakdown.json")) as handle:
        stored = json.load(handle)
    assert stored["psnr_in_mask"] == pytest.approx(result["psnr_in_mask"])
    with open(os.path.join(out, "metrics.json")) as handle:
        fitted = json.load(handle)
    # the same views and renderer: the fit's own held-out scores inside the mask, view by view
    per_view = fitted["held_out"]["per_view"]["psnr_masked"]
    assert result["per_view"] == pytest.approx(per_view, abs=0.05)
    for name in ("psnr_breakdown.md", "error_maps.png"):
        assert os.path.isfile(os.path.join(report, name))
    with pytest.raises(SystemExit):
        main([os.path.join(tmp_path, "missing.pt"), "--out", report])
    with pytest.raises(SystemExit):
        main([os.path.join(out, "checkpoint.pt"), "--out", report, "--data", str(tmp_path / "x")])
