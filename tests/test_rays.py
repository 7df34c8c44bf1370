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

from dvr_plugin.renderer.rays import (
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
    with pytest.raises(ImportError, match=r"pip install dvr-plugin"):
        _pytorch3d.require_pytorch3d()


def _camera_batch():
    """Two views of every standard camera class, in NDC and in screen space."""
    from pytorch3d.renderer import FoVOrthographicCameras, OrthographicCameras

    torch.manual_seed(0)
    rotation, translation = look_at_view_transform(
        dist=torch.tensor([2.0, 3.0]), elev=torch.tensor([10.0, 40.0]),
        azim=torch.tensor([30.0, -70.0]),
    )
    translation = translation + 0.1 * torch.randn(2, 3)
    focal_ndc = torch.tensor([[2.0, 2.5], [1.5, 1.7]])
    principal_ndc = torch.tensor([[0.1, -0.2], [0.0, 0.05]])
    screen = dict(
        focal_length=torch.tensor([[200.0, 250.0], [150.0, 170.0]]),
        principal_point=torch.tensor([[60.0, 50.0], [70.0, 40.0]]),
        in_ndc=False, image_size=torch.tensor([[100, 120], [90, 140]]),
    )
    return [
        FoVPerspectiveCameras(
            R=rotation, T=translation, fov=torch.tensor([40.0, 60.0]),
            aspect_ratio=torch.tensor([1.0, 1.3]),
        ),
        FoVPerspectiveCameras(R=rotation, T=translation, fov=0.8, degrees=False),
        PerspectiveCameras(
            R=rotation, T=translation, focal_length=focal_ndc, principal_point=principal_ndc
        ),
        PerspectiveCameras(R=rotation, T=translation, **screen),
        PerspectiveCameras(R=rotation, T=translation, focal_length=3.0),
        FoVOrthographicCameras(
            R=rotation, T=translation, max_y=1.2, min_y=-0.8, max_x=0.9, min_x=-1.1,
            scale_xyz=((1.2, 0.7, 1.0),),
        ),
        OrthographicCameras(
            R=rotation, T=translation, focal_length=focal_ndc, principal_point=principal_ndc
        ),
        OrthographicCameras(R=rotation, T=translation, **screen),
    ]


@pytest.mark.parametrize("index", range(8))
def test_direct_rays_match_pytorch3d_unprojection(index):
    """The direct formulas give PyTorch3D's own unprojection, values and gradients."""
    from dvr_plugin.renderer.rays import _pinhole_rays, _unprojected_rays

    cameras = _camera_batch()[index]
    xys = torch.rand(2, 9, 2) * 2 - 1
    names = [
        name for name in ("R", "T", "focal_length", "principal_point", "fov")
        if isinstance(getattr(cameras, name, None), torch.Tensor)
    ]

    def points(rays_fn):
        for name in names:
            getattr(cameras, name).requires_grad_(True).grad = None
        rays = rays_fn(cameras, xys)
        assert rays is not None
        origins, directions = rays
        weights = torch.linspace(0.5, 2.0, 27).reshape(1, 9, 3)
        at = origins + 1.7 * directions
        (at * weights).sum().backward()
        grads = [getattr(cameras, name).grad.clone() for name in names]
        return origins.detach(), directions.detach(), at.detach(), grads

    direct = points(_pinhole_rays)
    reference = points(_unprojected_rays)
    for ours, theirs in zip(direct[:3], reference[:3], strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)
    for name, ours, theirs in zip(names, direct[3], reference[3], strict=True):
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), name
        assert theirs.abs().max() > 0


def test_cameras_with_an_explicit_K_fall_back_to_unprojection():
    from dvr_plugin.renderer.rays import _pinhole_rays

    cameras = _camera_batch()[2]
    explicit = PerspectiveCameras(
        R=cameras.R, T=cameras.T,
        K=cameras.get_projection_transform().get_matrix().transpose(1, 2),
    )
    assert _pinhole_rays(explicit, torch.zeros(2, 3, 2)) is None
    xys = torch.rand(2, 5, 2) * 2 - 1
    origins, directions = rays_from_cameras(explicit, xys)
    expected = rays_from_cameras(cameras, xys)
    assert torch.allclose(origins + directions, expected[0] + expected[1], atol=1e-5)
