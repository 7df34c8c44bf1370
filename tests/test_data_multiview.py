"""MultiViewData: validation, subset / split / downscale / to, projections and mask lookups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dvr_plugin.data import MultiViewData, cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.data import paths as data_paths
from dvr_plugin.data.cameras import opencv_from_cameras
from dvr_plugin.renderer.rays import ndc_grid, rays_from_cameras
from tests.core_factories import sphere_views

RADIUS = 0.3


def init_sphere_views(
    num_views: int = 5, image_size: tuple[int, int] = (40, 48), cameras=None
) -> MultiViewData:
    """Exact views of a sphere of radius 0.3 at the origin (masks and z-depth)."""
    if cameras is None:
        cameras = cameras_looking_at_origin(
            2.0 * fibonacci_sphere(num_views), image_size=image_size, fov=40.0
        )
    hit, depth, points = sphere_views(cameras, image_size, RADIUS)
    colour = torch.where(hit[..., None], 0.5 + 0.5 * points / RADIUS, torch.ones_like(points))
    return MultiViewData(
        images=colour.clamp(0, 1),
        masks=hit,
        depths=depth,
        cameras=cameras,
        info={"format": "test-sphere"},
    )


def test_construction_and_repr():
    data = init_sphere_views()
    assert len(data) == 5
    assert data.image_size == (40, 48)
    assert data.masks.dtype == torch.bool
    assert data.names == ["0", "1", "2", "3", "4"]
    assert "5 views" in repr(data)
    torch.testing.assert_close(data.to_world, torch.eye(4, dtype=torch.float64))


def test_depth_matches_projection():
    data = init_sphere_views()
    # Unproject each masked pixel with its depth: it lies on the sphere.
    xys = ndc_grid(data.image_size)[None].expand(len(data), -1, -1, -1)
    origins, directions = rays_from_cameras(data.cameras, xys)
    points = origins + data.depths[..., None] * directions
    radius = points[data.masks].norm(dim=-1)
    torch.testing.assert_close(radius, torch.full_like(radius, RADIUS), atol=1e-4, rtol=0)
    # And projecting those points lands on the pixel centres with the same depth.
    pixels, depth = data.project(points[0][data.masks[0]])
    rows, cols = torch.nonzero(data.masks[0], as_tuple=True)
    expected = torch.stack([cols + 0.5, rows + 0.5], -1).float()
    torch.testing.assert_close(pixels[0], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(depth[0], data.depths[0][data.masks[0]], atol=1e-4, rtol=0)


def test_subset_split_and_to():
    data = init_sphere_views(num_views=9)
    sub = data.subset([4, 1])
    assert sub.names == ["4", "1"]
    torch.testing.assert_close(sub.images[0], data.images[4])
    torch.testing.assert_close(sub.cameras.R[1], data.cameras.R[1])
    assert len(data.subset(slice(0, 9, 3))) == 3
    mask = torch.zeros(9, dtype=torch.bool)
    mask[[2, 3]] = True
    assert data.subset(mask).names == ["2", "3"]
    train, test = data.split(every=4)
    assert test.names == ["0", "4", "8"]
    assert len(train) == 6
    train, test = data.split(held_out=[7])
    assert test.names == ["7"]
    moved = data.to("cpu")
    assert moved.cameras is not data.cameras
    torch.testing.assert_close(moved.cameras.T, data.cameras.T)
    with pytest.raises(ValueError, match="indices"):
        data.subset([9])
    with pytest.raises(ValueError, match="no views"):
        data.subset([])
    with pytest.raises(ValueError, match="at least one"):
        data.split(held_out=list(range(9)))


def test_downscale_keeps_projections():
    data = init_sphere_views(image_size=(41, 50))  # odd sizes: cropped to 40 x 50
    small = data.downscale(2)
    assert small.image_size == (20, 25)
    points = torch.rand(200, 3) - 0.5
    big_px, big_z = data.project(points)
    small_px, small_z = small.project(points)
    torch.testing.assert_close(small_px, big_px / 2, atol=2e-4, rtol=0)
    torch.testing.assert_close(small_z, big_z, atol=1e-5, rtol=0)
    # Intrinsics: K' = diag(1/2, 1/2, 1) K in the pixel-corner convention.
    _, _, K = opencv_from_cameras(data.cameras)
    _, _, K_small = opencv_from_cameras(small.cameras)
    torch.testing.assert_close(K_small[:, :2], K[:, :2] / 2, atol=1e-4, rtol=0)
    # Masks and depths match an exact render at the lower resolution, up to the edges.
    exact = init_sphere_views(image_size=(20, 25), cameras=small.cameras)
    agree = (small.masks == exact.masks).float().mean()
    assert float(agree) > 0.97
    both = small.masks & exact.masks & (small.depths > 0)
    err = (small.depths - exact.depths)[both].abs()
    assert float(err.median()) < 5e-3
    # depth and mask follow the same coverage rule: no depth outside the mask
    assert not bool(((small.depths > 0) & ~small.masks).any())
    assert data.downscale(1).images is data.images
    with pytest.raises(ValueError, match="factor"):
        data.downscale(0)
    with pytest.raises(ValueError, match="larger"):
        data.downscale(64)


def test_mask_lookup_and_visual_hull():
    data = init_sphere_views(num_views=8)
    inside = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.1, 0.15]])
    outside = torch.tensor([[0.45, 0.0, 0.0], [0.0, 0.4, 0.3]])
    in_mask, in_image = data.lookup_masks(torch.cat([inside, outside]))
    assert bool(in_image.all())
    assert bool(in_mask[:, :2].all())
    hull = data.visual_hull(torch.cat([inside, outside]), min_views=8)
    assert hull.tolist() == [True, True, False, False]
    behind_first_camera = 5 * data.cameras.get_camera_center()[:1]
    _, in_image = data.lookup_masks(behind_first_camera)
    assert not bool(in_image[0, 0])


def test_world_frame_helpers():
    data = init_sphere_views(num_views=2)
    to_world = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64))
    to_world[:3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    data = MultiViewData(
        images=data.images, masks=data.masks, cameras=data.cameras, to_world=to_world
    )
    points = torch.rand(5, 3, dtype=torch.float64)
    world = data.normalised_to_world(points)
    torch.testing.assert_close(
        world, 4 * points + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    )
    torch.testing.assert_close(data.world_to_normalised(world), points)
    assert data.world_scale == pytest.approx(4.0, abs=5e-8)


def test_validation_errors():
    data = init_sphere_views(num_views=2)
    good = {"images": data.images, "masks": data.masks, "cameras": data.cameras}
    with pytest.raises(ValueError, match="images must have shape"):
        MultiViewData(**{**good, "images": data.images[..., :2]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MultiViewData(**{**good, "images": data.images * 255})
    with pytest.raises(ValueError, match="masks must have shape"):
        MultiViewData(**{**good, "masks": data.masks[:, :10]})
    with pytest.raises(ValueError, match="cameras for 1 images"):
        MultiViewData(**{**good, "images": data.images[:1], "masks": data.masks[:1]})
    bad_depth = torch.full(data.masks.shape, float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        MultiViewData(**good, depths=bad_depth)
    with pytest.raises(ValueError, match=">= 0"):
        MultiViewData(**good, depths=-torch.ones(data.masks.shape))
    with pytest.raises(ValueError, match="names"):
        MultiViewData(**good, names=["a"])
    with pytest.raises(ValueError, match="image_size"):
        MultiViewData(**{**good, "images": data.images[:, :20], "masks": data.masks[:, :20]})


def test_shared_data_dir():
    saved = data_paths.os.environ.pop(data_paths.DATA_DIR_ENV, None)
    try:
        default = data_paths.shared_data_dir()
        assert default == data_paths.repo_root().parent / "shared" / "data"
        data_paths.os.environ[data_paths.DATA_DIR_ENV] = "/nonexistent/dvr-data"
        assert data_paths.shared_data_dir() == Path("/nonexistent/dvr-data")
        assert data_paths.find_shared_data("meshes") is None
        assert "DVR_DATA_DIR" in data_paths.missing_data_message("meshes")
    finally:
        data_paths.os.environ.pop(data_paths.DATA_DIR_ENV, None)
        if saved is not None:
            data_paths.os.environ[data_paths.DATA_DIR_ENV] = saved
