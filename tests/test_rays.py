"""Ray generation and NDC conventions against PyTorch3D's own raysampler."""

from __future__ import annotations

import builtins

import pytest
import torch
from pytorch3d.renderer import (
    FoVPerspectiveCameras,
    NDCMultinomialRaysampler,
    PerspectiveCameras,
    look_at_view_transform,
)

from dvr_plugin.rays import (
    intersect_box,
    ndc_grid,
    ndc_to_pixels,
    pixels_to_ndc,
    rays_from_cameras,
)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (40, 24)])
def test_grid_and_rays_match_pytorch3d(size):
    height, width = size
    rotation, translation = look_at_view_transform(2.0, 30.0, torch.tensor([10.0, 200.0]))
    for cameras in (
        FoVPerspectiveCameras(R=rotation, T=translation),
        PerspectiveCameras(
            R=rotation, T=translation, focal_length=((50.0, 55.0),) * 2,
            principal_point=((width / 2 + 1, height / 2 - 2),) * 2, in_ndc=False,
            image_size=((height, width),) * 2,
        ),
    ):
        reference = NDCMultinomialRaysampler(
            image_width=width, image_height=height, n_pts_per_ray=2, min_depth=1, max_depth=2
        )(cameras)
        grid = ndc_grid((height, width))[None].expand(2, -1, -1, -1)
        torch.testing.assert_close(grid, reference.xys)
        origins, directions = rays_from_cameras(cameras, grid)
        torch.testing.assert_close(origins, reference.origins, atol=1e-5, rtol=0)
        torch.testing.assert_close(directions, reference.directions, atol=1e-5, rtol=0)


def test_pixel_ndc_round_trip():
    pixels = torch.rand(100, 2) * torch.tensor([40.0, 24.0])
    torch.testing.assert_close(ndc_to_pixels(pixels_to_ndc(pixels, (24, 40)), (24, 40)), pixels)
    corner = pixels_to_ndc(torch.tensor([0.5, 0.5]), (24, 40))
    torch.testing.assert_close(corner, torch.tensor([39.0 / 24.0, 23.0 / 24.0]))


def test_box_intersection():
    origins = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.3, 0.2, 0.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, missed = intersect_box(
        origins, directions, torch.full((3,), -0.5), torch.full((3,), 0.5)
    )
    assert missed.tolist() == [False, True, False]
    torch.testing.assert_close(near[[0, 2]], torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(far[[0, 2]], torch.tensor([2.5, 0.5]))


def test_missing_pytorch3d_gives_install_hint(monkeypatch):
    from dvr_plugin import _pytorch3d

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.startswith("pytorch3d"):
            raise ImportError("No module named 'pytorch3d'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ImportError, match=r"pip install 'dvr-plugin\[pytorch3d\]'"):
        _pytorch3d.require_pytorch3d()
