"""
Bad input to the renderer's API is refused early with a one-line ``ValueError`` naming the
problem: dtypes or devices of field and cameras that differ, an empty camera batch, image sizes
that are not integers, and a field whose colour is NaN (as NaN occupancy already is). Both
routes are covered: ``DVRRenderer`` and PyTorch3D's ``ImplicitRenderer`` with our raysampler.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, ImplicitRenderer, look_at_view_transform

from dvr_plugin.engine.evaluation import render_views, turntable_frames
from dvr_plugin.fields.field import FieldOutput, OccupancyTextureField
from dvr_plugin.fields.shapes import SphereField
from dvr_plugin.renderer.raymarcher import SurfaceRaymarcher
from dvr_plugin.renderer.rays import image_size_hw, rays_from_cameras
from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer, FieldVolumetricFunction

SIZE = 8  # pixels per side: every test renders tiny images


def make_cameras(n: int = 2, dtype: torch.dtype = torch.float32) -> FoVPerspectiveCameras:
    R, T = look_at_view_transform(dist=1.5, elev=20.0, azim=torch.linspace(0.0, 90.0, n))
    return FoVPerspectiveCameras(R=R.to(dtype), T=T.to(dtype), fov=45.0)


def empty_cameras() -> FoVPerspectiveCameras:
    return FoVPerspectiveCameras(
        R=torch.empty(0, 3, 3),
        T=torch.empty(0, 3),
        fov=torch.empty(0),
        znear=torch.empty(0),
        zfar=torch.empty(0),
        aspect_ratio=torch.empty(0),
    )


def dvr(field, **raysampler) -> DVRRenderer:
    options = dict(image_width=SIZE, image_height=SIZE, n_steps=16)
    options.update(raysampler)
    return DVRRenderer(field=field, raysampler=SecantRaysampler(**options), background_color=1.0)


def implicit() -> ImplicitRenderer:
    return ImplicitRenderer(
        raysampler=SecantRaysampler(image_width=SIZE, image_height=SIZE, n_steps=16),
        raymarcher=SurfaceRaymarcher(background_color=1.0, return_depth=True),
    )


class NaNColourSphere(torch.nn.Module):
    """A sphere of radius 0.3 whose colour is NaN (everywhere, or outside radius ``nan_beyond``)."""

    field_type = "sdf"

    def __init__(self, nan_beyond: float = 0.0) -> None:
        super().__init__()
        self.radius = torch.nn.Parameter(torch.tensor(0.3))
        self.nan_beyond = nan_beyond

    def forward(self, points: torch.Tensor, latent=None) -> FieldOutput:
        norm = points.norm(dim=-1)
        rgb = torch.full_like(points, 0.5)
        rgb = torch.where((norm >= self.nan_beyond)[..., None], math.nan, rgb)
        return FieldOutput(norm - self.radius, rgb)


# --------------------------------------------------------------------------------------------
# dtype and device of field and cameras


def test_float64_field_with_float32_cameras_names_both_dtypes():
    field = OccupancyTextureField(hidden_size=8, n_blocks=1).double()
    for render in (
        lambda: dvr(field)(make_cameras()),
        lambda: implicit()(
            cameras=make_cameras(), volumetric_function=FieldVolumetricFunction(field=field)
        ),
    ):
        with pytest.raises(ValueError, match="float64.*float32") as error:
            render()
        assert "\n" not in str(error.value)


def test_float32_field_with_float64_cameras_is_refused_too():
    # an analytic field with parameters counts: its parameters decide the dtype
    with pytest.raises(ValueError, match="float32.*float64"):
        dvr(SphereField())(make_cameras(dtype=torch.float64))


def test_matching_float64_field_and_cameras_render():
    out = dvr(SphereField().double())(make_cameras(dtype=torch.float64))
    assert out.depths.dtype == torch.float64
    assert bool(out.masks.bool().any())


def test_a_field_without_parameters_is_not_checked():
    def sphere(points: torch.Tensor, latent=None) -> torch.Tensor:  # float64 constants inside
        return 20.0 * (torch.tensor(0.3, dtype=torch.float64) - points.double().norm(dim=-1))

    out = dvr(sphere)(make_cameras())
    assert bool(out.masks.bool().any())


def test_field_on_another_device_names_both_devices():
    field = OccupancyTextureField(hidden_size=8, n_blocks=1).to("meta")
    with pytest.raises(ValueError, match="meta.*cpu"):
        dvr(field)(make_cameras())
    with pytest.raises(ValueError, match="meta.*cpu"):
        implicit()(cameras=make_cameras(), volumetric_function=FieldVolumetricFunction(field=field))


def test_latent_on_another_device_is_refused():
    field = OccupancyTextureField(hidden_size=8, n_blocks=1, latent_size=4)
    with pytest.raises(ValueError, match="latent.*meta.*cpu"):
        dvr(field)(make_cameras(), latent=torch.zeros(2, 4, device="meta"))


# --------------------------------------------------------------------------------------------
# empty camera batch


def test_empty_camera_batch_is_refused_on_every_route():
    cameras = empty_cameras()
    assert len(cameras) == 0
    with pytest.raises(ValueError, match="empty"):
        dvr(SphereField())(cameras)
    with pytest.raises(ValueError, match="empty"):
        implicit()(
            cameras=cameras, volumetric_function=FieldVolumetricFunction(field=SphereField())
        )
    with pytest.raises(ValueError, match="empty"):
        rays_from_cameras(cameras, torch.zeros(0, 4, 2))


# --------------------------------------------------------------------------------------------
# image sizes


@pytest.mark.parametrize("bad", [64.0, 64.5, True, "64", None, 0, -3])
def test_non_integer_or_non_positive_image_width_is_refused(bad):
    if bad is None:
        with pytest.raises(ValueError, match="both"):
            SecantRaysampler(image_width=None, image_height=64)
        return
    with pytest.raises(ValueError, match="image_width"):
        SecantRaysampler(image_width=bad, image_height=64)
    with pytest.raises(ValueError, match="image_height"):
        SecantRaysampler(image_width=64, image_height=bad)


def test_integer_like_image_sizes_are_accepted():
    import numpy as np

    sampler = SecantRaysampler(image_width=np.int64(12), image_height=torch.tensor(10))
    assert (sampler.image_height, sampler.image_width) == (10, 12)
    assert isinstance(sampler.image_width, int) and isinstance(sampler.image_height, int)
    out = dvr(SphereField(), image_width=np.int64(12), image_height=10)(make_cameras(1))
    assert out.images.shape == (1, 10, 12, 3)


@pytest.mark.parametrize("bad", [64.5, 64.0, True, (64, 64.5), (0, 4)])
def test_image_size_hw_refuses_what_is_not_a_pixel_count(bad):
    with pytest.raises(ValueError):
        image_size_hw(bad)


@pytest.mark.parametrize("bad", [10.5, True, 0])
def test_non_integer_ray_count_is_refused(bad):
    with pytest.raises(ValueError, match="n_rays_per_image"):
        SecantRaysampler(n_rays_per_image=bad)
    with pytest.raises(ValueError, match="n_rays_per_image"):
        dvr(SphereField())(make_cameras(), n_rays_per_image=bad)


# --------------------------------------------------------------------------------------------
# NaN colour


def test_nan_colour_raises_like_nan_occupancy():
    torch.manual_seed(0)
    renderer = dvr(NaNColourSphere())
    with torch.no_grad(), pytest.raises(ValueError, match="non-finite colours") as error:
        renderer(make_cameras())
    assert "NaN" in str(error.value)
    with pytest.raises(ValueError, match="non-finite colours"):  # training: random rays, grads
        renderer(make_cameras(), n_rays_per_image=64)
    with pytest.raises(ValueError, match="non-finite colours"):
        implicit()(
            cameras=make_cameras(),
            volumetric_function=FieldVolumetricFunction(field=NaNColourSphere()),
        )


def test_nan_occupancy_message_is_the_model_mirrored():
    def nan_field(points: torch.Tensor, latent=None) -> torch.Tensor:
        return torch.full(points.shape[:-1], math.nan)

    with pytest.raises(ValueError, match="non-finite values"):
        dvr(nan_field)(make_cameras())


def test_nan_colour_where_nothing_is_hit_leaves_the_background_clean():
    # ImplicitRenderer evaluates the colour on every ray; NaN off the surface never shows
    field = NaNColourSphere(nan_beyond=0.31)
    images, _ = implicit()(
        cameras=make_cameras(), volumetric_function=FieldVolumetricFunction(field=field)
    )
    assert bool(torch.isfinite(images).all())
    alpha = images[..., 3]
    assert bool((alpha > 0).any()) and bool((alpha == 0).any())
    background, surface = images[..., :3][alpha == 0], images[..., :3][alpha > 0]
    torch.testing.assert_close(background, torch.ones_like(background))
    torch.testing.assert_close(surface, torch.full_like(surface, 0.5))


def test_the_colour_check_can_be_turned_off():
    marcher = SurfaceRaymarcher(check_finite=False)
    bundle = dvr(SphereField()).raysampler(cameras=make_cameras(1), field=SphereField())
    features = torch.full((*bundle.hit.shape, 1, 3), math.nan)
    out = marcher(bundle.lengths[..., None], features, bundle)
    assert bool(torch.isnan(out[..., :3][bundle.hit]).all())


# --------------------------------------------------------------------------------------------
# progress bars of the evaluation renders


def test_render_views_and_turntable_show_progress_on_stderr_only_when_asked(capsys):
    field, cameras = SphereField(), make_cameras(2)
    render_views(field, cameras, (SIZE, SIZE), n_steps=8)
    orbit = {"distance": 1.5, "fov": 45.0, "elevation": 20.0}
    turntable_frames(field, orbit, n_frames=2, image_size=SIZE, n_steps=8)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    render_views(field, cameras, (SIZE, SIZE), n_steps=8, progress=True, description="held-out")
    frames = turntable_frames(field, orbit, n_frames=2, image_size=SIZE, n_steps=8, progress=True)
    shown = capsys.readouterr()
    assert shown.out == ""
    assert "held-out" in shown.err and "turntable" in shown.err and "/2 " in shown.err
    assert len(frames) == 2 and frames[0].shape == (SIZE, 2 * SIZE, 3)
