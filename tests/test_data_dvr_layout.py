"""The reference DVR layout: tiny layouts written from known cameras, read back."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvr_plugin.data import (
    MultiViewData,
    cameras_looking_at_origin,
    load_dvr_layout,
    turntable,
    write_dvr_layout,
)
from dvr_plugin.data.cameras import opencv_from_cameras, project_opencv
from tests.core_factories import sphere_views

RADIUS = 0.3


def init_views(num_views: int = 3, image_size: tuple[int, int] = (24, 32)) -> MultiViewData:
    """Exact views of a sphere of radius 0.3 (masks and z-depth), cameras on a turntable."""
    cameras = cameras_looking_at_origin(
        1.8 * turntable(num_views, elevation=20.0), image_size=image_size, fov=40.0
    )
    hit, depth, _ = sphere_views(cameras, image_size, RADIUS)
    colour = torch.where(hit[..., None], torch.tensor([0.8, 0.3, 0.1]), torch.ones(3))
    return MultiViewData(images=colour, masks=hit, depths=depth, cameras=cameras)


def scale_mat() -> torch.Tensor:
    S = torch.diag(torch.tensor([250.0, 250.0, 250.0, 1.0], dtype=torch.float64))
    S[:3, 3] = torch.tensor([10.0, -5.0, 600.0], dtype=torch.float64)
    return S


def test_write_and_read_back():
    data = init_views()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dvr_layout(Path(tmp) / "obj", data, scale_mat=scale_mat())
        assert sorted(p.name for p in (root / "depth").iterdir())[0] == "0000.npy"
        loaded = load_dvr_layout(root)
    assert len(loaded) == 3
    torch.testing.assert_close(loaded.to_world, scale_mat())
    torch.testing.assert_close(loaded.images, data.images, atol=1 / 255, rtol=0)
    assert torch.equal(loaded.masks, data.masks)
    torch.testing.assert_close(loaded.depths, data.depths, atol=1e-5, rtol=1e-5)
    points = torch.rand(50, 3) - 0.5
    torch.testing.assert_close(
        loaded.project(points)[0], data.project(points)[0], atol=1e-3, rtol=0
    )


def test_reference_projection_of_written_cameras():
    """camera_mat @ world_mat @ scale_mat @ X = (x d, y d, d, 1), x = 2u/W - 1, y = 2v/H - 1."""
    data = init_views()
    height, width = data.image_size
    S = scale_mat()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dvr_layout(Path(tmp) / "obj", data, scale_mat=S)
        with np.load(root / "cameras.npz") as archive:
            cams = {k: torch.from_numpy(archive[k]) for k in archive.files}
    X = torch.rand(40, 3, dtype=torch.float64) - 0.5
    Xh = torch.cat([X, torch.ones(40, 1, dtype=torch.float64)], -1)
    pixels, depth = data.project(X.float())
    for i in range(len(data)):
        p = Xh @ (cams[f"camera_mat_{i}"] @ cams[f"world_mat_{i}"] @ S).T
        x, y = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
        ref = torch.stack([(x + 1) * 0.5 * width, (y + 1) * 0.5 * height], -1)
        torch.testing.assert_close(ref.float(), pixels[i], atol=1e-3, rtol=0)
        torch.testing.assert_close(p[:, 2].float(), depth[i], atol=1e-5, rtol=0)


def test_projection_world_mat_and_depth_units():
    """DTU-style files: world_mat = K [R|t] (pixels, world units), depth in world units."""
    data = init_views(num_views=2)
    S = scale_mat()
    R, t, K = opencv_from_cameras(data.cameras)
    world_R = R  # S has no rotation: X_world = 250 X + S[:3, 3]
    height, width = data.image_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("image", "mask", "depth"):
            (root / sub).mkdir()
        arrays = {}
        camera_mat = np.eye(4)
        camera_mat[0, 0], camera_mat[0, 2] = 2.0 / width, -1.0
        camera_mat[1, 1], camera_mat[1, 2] = 2.0 / height, -1.0
        for i in range(2):
            # World-frame extrinsics: X_world = S X, so t_world = 250 t - R S[:3, 3].
            t_world = 250.0 * t[i] - world_R[i] @ S[:3, 3]
            P = np.eye(4)
            P[:3] = (K[i] @ torch.cat([world_R[i], t_world[:, None]], -1)).numpy()
            arrays[f"world_mat_{i}"] = P
            arrays[f"camera_mat_{i}"] = camera_mat
            arrays[f"scale_mat_{i}"] = S.numpy()
            image = (data.images[i].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(image).save(root / "image" / f"{i:03d}.png")
            mask = data.masks[i].numpy().astype(np.uint8) * 255
            Image.fromarray(mask).save(root / "mask" / f"{i:03d}.png")
            depth = np.where(data.masks[i].numpy(), 250.0 * data.depths[i].numpy(), np.inf)
            np.save(root / "depth" / f"{i:03d}.npy", depth)
        np.savez(root / "cameras.npz", **arrays)
        loaded = load_dvr_layout(root)
    torch.testing.assert_close(loaded.depths, data.depths, atol=1e-5, rtol=1e-5)
    points = torch.rand(30, 3, dtype=torch.float64) - 0.5
    R2, t2, K2 = opencv_from_cameras(loaded.cameras)
    got, _ = project_opencv(points, R2, t2, K2)
    expected, _ = project_opencv(points, R, t, K)
    assert float((got - expected).abs().max()) < 1e-3


def test_camera_index_modes_and_errors():
    data = init_views(num_views=3)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dvr_layout(Path(tmp) / "obj", data)
        # Rename so that sorted position and file number disagree: 0002 -> 10.
        for sub, ext in (("image", "png"), ("mask", "png"), ("depth", "npy")):
            (root / sub / f"0002.{ext}").rename(root / sub / f"0010.{ext}")
        with np.load(root / "cameras.npz") as archive:
            arrays = {k: archive[k] for k in archive.files}
        for key in ("camera_mat", "world_mat", "scale_mat"):
            arrays[f"{key}_10"] = arrays.pop(f"{key}_2")
        np.savez(root / "cameras.npz", **arrays)
        by_name = load_dvr_layout(root, camera_index="name")
        torch.testing.assert_close(by_name.cameras.R, data.cameras.R, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="lacks camera_mat_i for views \\[2\\]"):
            load_dvr_layout(root)  # by position, view 2 has no camera
        by_name_subset = load_dvr_layout(root, camera_index="name", views=[10])
        assert by_name_subset.names == ["0010"]
        with pytest.raises(ValueError, match="camera_index"):
            load_dvr_layout(root, camera_index="sorted")
        # Counts that do not match.
        (root / "depth" / "0010.npy").unlink()
        with pytest.raises(ValueError, match="2 depth files for 3 images"):
            load_dvr_layout(root, camera_index="name")
        assert load_dvr_layout(root, camera_index="name", depth_dir=None).depths is None
        (root / "depth" / "0010.exr").write_bytes(b"not an exr")
        with pytest.raises(ValueError, match="Cannot read depth map"):
            load_dvr_layout(root, camera_index="name")
        del arrays["world_mat_10"]
        np.savez(root / "cameras.npz", **arrays)
        with pytest.raises(ValueError, match="with camera_index='position' they must match"):
            load_dvr_layout(root)
        with pytest.raises(ValueError, match="exists already"):
            write_dvr_layout(root, data)
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(FileNotFoundError, match="image folder"):
            load_dvr_layout(tmp)
