"""DTU loaders (IDR / NeuS layout and the MonoSDF crop) on the shared scan 24."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dvr_plugin.data import MultiViewData, load_dtu, load_dtu_monosdf
from dvr_plugin.data.cameras import opencv_from_dtu, project_opencv
from dvr_plugin.data.paths import find_shared_data, missing_data_message
from tests.core_factories import grid_points, mask_consistency

NEUS = ("dtu_scan24_neus_400", "scan24")
MONOSDF = ("dtu_scan24_384", "scan24")


def raw_projection(world_mats: np.ndarray, data: MultiViewData, points: torch.Tensor):
    """Project normalised points through ``to_world`` and the raw ``world_mat`` (float64)."""
    X = torch.cat([points.double(), torch.ones(len(points), 1, dtype=torch.float64)], -1)
    world = X @ data.to_world.T
    proj = torch.einsum("nij,pj->npi", torch.from_numpy(world_mats)[:, :3].double(), world)
    return proj[..., :2] / proj[..., 2:3]


requires_neus = pytest.mark.skipif(
    find_shared_data(*NEUS) is None, reason=missing_data_message(*NEUS)
)
requires_monosdf = pytest.mark.skipif(
    find_shared_data(*MONOSDF) is None, reason=missing_data_message(*MONOSDF)
)


@pytest.fixture(scope="module")
def neus():
    """Scan 24 in the IDR / NeuS layout: its ``root``, the loaded ``data`` and raw ``cams``."""
    root = find_shared_data(*NEUS)
    data = load_dtu(root)
    with np.load(root / "cameras_sphere.npz") as archive:
        cams = {k: archive[k] for k in archive.files}
    return SimpleNamespace(root=root, data=data, cams=cams)


@requires_neus
def test_neus_layout(neus):
    data = neus.data
    assert len(data) == 12
    assert data.image_size == (300, 400)
    assert data.info["views"] == list(range(0, 48, 4))
    assert data.names[1] == "000004"
    assert data.depths is None
    assert bool(data.masks.any(dim=(1, 2)).all())
    # to_world = scale_mat @ diag(2, 2, 2, 1): the scale_mat unit sphere has radius 0.5.
    expected = neus.cams["scale_mat_0"] @ np.diag([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(data.to_world.numpy(), expected)


@requires_neus
def test_neus_camera_round_trip(neus):
    """The raw world_mat and the converted cameras project world points alike."""
    data = neus.data
    world = np.stack([neus.cams[f"world_mat_{i}"] for i in data.info["views"]])
    points = torch.rand(200, 3, dtype=torch.float64) - 0.5
    expected = raw_projection(world, data, points)  # DTU pixels: centres at integers
    pixels, depth = data.project(points)  # float32 cameras
    assert float((pixels.double() - 0.5 - expected).abs().max()) < 2e-3
    assert bool((depth > 0).all())
    K, R, t = opencv_from_dtu(world, neus.cams["scale_mat_0"])  # float64
    exact, _ = project_opencv(points, R, t, K)
    assert float((exact - expected).abs().max()) < 1e-3  # only the ~1e-4 px skew


@requires_neus
def test_neus_masks_line_up(neus):
    data = neus.data
    pixels, _ = data.project(torch.zeros(1, 3))  # the sphere centre is on the object
    in_mask, in_image = data.lookup_masks(torch.zeros(1, 3))
    assert bool(in_image.all()) and bool(in_mask.all()), pixels
    # Swapping masks between views, or flipping them, drops these to ~0.4 / 0.88.
    shares = mask_consistency(data, grid_points())
    assert min(shares) > 0.7
    assert sum(shares) / len(shares) > 0.93
    hull = data.visual_hull(grid_points(), min_views=12)
    assert int(hull.sum()) > 20
    assert float(grid_points()[hull].norm(dim=-1).max()) < 0.6


@requires_neus
def test_neus_views_by_number_and_downscale(neus):
    data = load_dtu(neus.root, views=[44, 8])
    assert data.names == ["000044", "000008"]
    full = neus.data.subset([11, 2])
    torch.testing.assert_close(data.cameras.R, full.cameras.R)
    torch.testing.assert_close(data.images, full.images)
    small = data.downscale(4)
    assert small.image_size == (75, 100)
    points = torch.rand(50, 3) - 0.5
    torch.testing.assert_close(
        small.project(points)[0], data.project(points)[0] / 4, atol=1e-3, rtol=0
    )
    in_mask, _ = small.lookup_masks(torch.zeros(1, 3))
    assert bool(in_mask.all())


@requires_neus
def test_neus_errors(neus):
    with pytest.raises(FileNotFoundError):
        load_dtu(neus.root / "missing")
    with pytest.raises(ValueError, match="no image"):
        load_dtu(neus.root, views=[1])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "image").mkdir()
        (tmp / "mask").mkdir()
        os.symlink(neus.root / "cameras_sphere.npz", tmp / "cameras_sphere.npz")
        for name in ("000000", "000004"):
            os.symlink(neus.root / "image" / f"{name}.png", tmp / "image" / f"{name}.png")
        os.symlink(neus.root / "mask" / "000.png", tmp / "mask" / "000.png")
        with pytest.raises(ValueError, match="No mask"):
            load_dtu(tmp)
        np.save(tmp / "x.npy", np.zeros(1))
        empty = np.zeros((300, 400), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(empty).save(tmp / "mask" / "004.png")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_dtu(tmp)
        assert len(data) == 2
        assert any("empty object mask" in str(w.message) for w in caught)
        with pytest.raises(ValueError, match="empty object mask"):
            load_dtu(tmp, empty_masks="error")
        # An image without a camera.
        os.symlink(neus.root / "image" / "000008.png", tmp / "image" / "000099.png")
        os.symlink(neus.root / "mask" / "008.png", tmp / "mask" / "099.png")
        with pytest.raises(ValueError, match="no world_mat for views \\[99\\]"):
            load_dtu(tmp, empty_masks="ignore")
        # An unreadable image.
        (tmp / "image" / "000099.png").unlink()
        (tmp / "image" / "000004.png").unlink()
        (tmp / "image" / "000004.png").write_bytes(b"not a png")
        with pytest.raises(ValueError, match="Cannot read image"):
            load_dtu(tmp, empty_masks="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(FileNotFoundError, match="camera file"):
            load_dtu(tmp)


@pytest.fixture(scope="module")
def monosdf():
    """Scan 24 in the MonoSDF crop: ``root``, every sixth view (``views``), ``data``, ``cams``."""
    root = find_shared_data(*MONOSDF)
    views = list(range(0, 49, 6))
    data = load_dtu_monosdf(root, views=views)
    with np.load(root / "cameras.npz") as archive:
        cams = {k: archive[k] for k in archive.files}
    return SimpleNamespace(root=root, views=views, data=data, cams=cams)


@requires_monosdf
def test_monosdf_layout(monosdf):
    assert len(monosdf.data) == len(monosdf.views)
    assert monosdf.data.image_size == (384, 384)
    assert monosdf.data.names[1] == "000006_rgb"


@requires_monosdf
def test_monosdf_camera_round_trip(monosdf):
    data = monosdf.data
    world = np.stack([monosdf.cams[f"world_mat_{i}"] for i in monosdf.views])
    points = torch.rand(200, 3, dtype=torch.float64) - 0.5
    full = raw_projection(world, data, points)  # 1600x1200 pixels, centres at integers
    s = 1200 / 384
    expected = torch.stack([(full[..., 0] + 0.5 - 200) / s, (full[..., 1] + 0.5) / s], -1)
    pixels, _ = data.project(points)
    assert float((pixels.double() - expected).abs().max()) < 2e-3
    # The data README's K384 = C @ K1600 differs from ours by 0.5 / s px in u and v.
    K, R, t = opencv_from_dtu(world, monosdf.cams[f"scale_mat_{monosdf.views[0]}"])
    C = torch.tensor([[1 / s, 0, -200 / s], [0, 1 / s, 0], [0, 0, 1]], dtype=torch.float64)
    readme, _ = project_opencv(points, R, t, C @ K)
    offset = pixels.double() - readme
    torch.testing.assert_close(offset, torch.full_like(offset, 0.5 / s), atol=2e-3, rtol=0)


@requires_monosdf
def test_monosdf_masks_line_up(monosdf):
    data = monosdf.data
    in_mask, in_image = data.lookup_masks(torch.zeros(1, 3))
    assert bool(in_image.all()) and bool(in_mask.all())
    shares = mask_consistency(data, grid_points())
    assert min(shares) > 0.7
    assert sum(shares) / len(shares) > 0.93


@requires_monosdf
def test_monosdf_without_masks_and_errors(monosdf):
    data = load_dtu_monosdf(monosdf.root, views=[3], mask_dir=None)
    assert bool(data.masks.all())
    with pytest.raises(FileNotFoundError, match="mask"):
        load_dtu_monosdf(monosdf.root, views=[3], mask_dir="nope")
    with pytest.raises(ValueError, match="no image"):
        load_dtu_monosdf(monosdf.root, views=[77])
