"""NeRF-synthetic loader on the shared lego scene (9 training views)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dvr_plugin.data import load_nerf_synthetic
from dvr_plugin.data.paths import find_shared_data, missing_data_message
from tests.core_factories import grid_points, mask_consistency

LEGO = ("nerf_synthetic_lego", "lego")

pytestmark = pytest.mark.skipif(find_shared_data(*LEGO) is None, reason=missing_data_message(*LEGO))


def nerf_pinhole(meta: dict, frame: dict, points: torch.Tensor, size: int = 800) -> torch.Tensor:
    """NeRF's own camera model in Blender axes: `(P, 3)` points -> `(P, 2)` pixels (corners)."""
    f = 0.5 * size / math.tan(0.5 * meta["camera_angle_x"])
    c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
    cam = (points.double() - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera (x right, y up, -z)
    u = 0.5 * size + f * cam[:, 0] / -cam[:, 2]
    v = 0.5 * size - f * cam[:, 1] / -cam[:, 2]
    return torch.stack([u, v], -1)


@pytest.fixture(scope="module")
def lego():
    """The shared lego scene: its ``root``, the loaded ``data`` and the training ``meta``."""
    root = find_shared_data(*LEGO)
    data = load_nerf_synthetic(root)
    meta = json.loads((root / "transforms_train.json").read_text())
    return SimpleNamespace(root=root, data=data, meta=meta)


def test_layout(lego):
    data = lego.data
    assert len(data) == 9
    assert data.image_size == (800, 800)
    assert data.names[:2] == ["r_0", "r_12"]
    assert data.world_scale == pytest.approx(3.0, abs=5e-8)
    # White background where alpha is 0; masks are alpha > 0.5.
    assert bool((data.images[~data.masks] > 0.45).all())
    share = data.masks.float().mean()
    assert 0.05 < float(share) < 0.6


def test_camera_round_trip(lego):
    points = (torch.rand(100, 3, dtype=torch.float64) - 0.5) * 3.0  # Blender frame
    pixels, depth = lego.data.project(lego.data.world_to_normalised(points))
    for i, frame in enumerate(lego.meta["frames"]):
        expected = nerf_pinhole(lego.meta, frame, points)
        assert float((pixels[i].double() - expected).abs().max()) < 2e-3
    assert bool((depth > 0).all())


def test_object_in_masks(lego):
    data = lego.data
    in_mask, in_image = data.lookup_masks(torch.zeros(1, 3))
    assert bool(in_image.all()) and bool(in_mask.all())
    grid = grid_points()
    hull = data.visual_hull(grid, min_views=len(data))
    assert int(hull.sum()) > 50
    # scale = 1/3 puts the object inside the unit cube.
    assert float(grid[hull].abs().max()) < 0.5
    # Leave-one-out: the other views' visual hull lands in each view's mask.
    shares = mask_consistency(data, grid)
    assert min(shares) > 0.75
    assert sum(shares) / len(shares) > 0.9


def test_scale_background_views_downscale(lego):
    raw = load_nerf_synthetic(lego.root, scale=1.0, background=None, views=["r_24", 0])
    assert raw.names == ["r_24", "r_0"]
    points = torch.rand(20, 3) - 0.5
    torch.testing.assert_close(
        raw.project(points * 3)[0],
        lego.data.subset([2, 0]).project(points)[0],
        atol=2e-3,
        rtol=0,
    )
    assert not torch.equal(raw.images, lego.data.images[[2, 0]])
    black = load_nerf_synthetic(lego.root, background=(0, 0, 0), views=[0])
    assert float(black.images[0][~black.masks[0]].max()) < 0.55
    small = black.downscale(8)
    assert small.image_size == (100, 100)
    torch.testing.assert_close(
        small.project(points)[0], black.project(points)[0] / 8, atol=1e-3, rtol=0
    )


def test_errors(lego):
    with pytest.raises(FileNotFoundError, match="transforms_test.json"):
        load_nerf_synthetic(lego.root, split="test")
    with pytest.raises(ValueError, match="r_5"):
        load_nerf_synthetic(lego.root, views=["r_5"])
    with pytest.raises(ValueError, match="out of range"):
        load_nerf_synthetic(lego.root, views=[9])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.symlink(lego.root / "train", tmp / "train")
        meta = dict(lego.meta)
        meta["frames"] = lego.meta["frames"][:1] + [
            {"file_path": "./train/r_1", "transform_matrix": np.eye(4).tolist()}
        ]
        (tmp / "transforms_train.json").write_text(json.dumps(meta))
        with pytest.raises(FileNotFoundError, match="r_1"):
            load_nerf_synthetic(tmp)
        (tmp / "transforms_val.json").write_text("{not json")
        with pytest.raises(ValueError, match="Cannot read"):
            load_nerf_synthetic(tmp, split="val")
