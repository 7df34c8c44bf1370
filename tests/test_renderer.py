"""DVRRenderer and the PyTorch3D ImplicitRenderer route; the surface raymarcher."""

from __future__ import annotations

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, ImplicitRenderer, look_at_view_transform

from dvr_plugin.fields.shapes import SphereField, demo_scene
from dvr_plugin.renderer.raymarcher import SurfaceRaymarcher
from dvr_plugin.renderer.raysampler import SecantRaysampler, SurfaceRayBundle
from dvr_plugin.renderer.renderer import DVRRenderer, FieldVolumetricFunction
from tests.core_factories import SphereMLPField


def _cameras(n: int = 2):
    rotation, translation = look_at_view_transform(1.6, 20.0, torch.linspace(0, 90, n))
    return FoVPerspectiveCameras(R=rotation, T=translation, fov=45.0)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_implicit_renderer_route_matches_dvr_renderer(field_type):
    field = demo_scene(field_type=field_type)
    cameras = _cameras()
    renderer = DVRRenderer(
        field=field, raysampler=SecantRaysampler(image_width=40, image_height=30, n_steps=64)
    )
    implicit = ImplicitRenderer(
        raysampler=SecantRaysampler(image_width=40, image_height=30, n_steps=64),
        raymarcher=SurfaceRaymarcher(return_depth=True, return_normals=True),
    )
    with torch.no_grad():
        ours = renderer(cameras)
        images, bundle = implicit(
            cameras=cameras, volumetric_function=FieldVolumetricFunction(field=field)
        )
    assert isinstance(bundle, SurfaceRayBundle)
    assert images.shape == (2, 30, 40, 3 + 1 + 1 + 3)
    assert ours.masks.mean() > 0.05
    torch.testing.assert_close(images[..., :3], ours.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(images[..., 3], ours.masks)
    torch.testing.assert_close(images[..., 4], ours.depths, atol=1e-5, rtol=0)
    torch.testing.assert_close(images[..., 5:8], ours.normals, atol=1e-4, rtol=0)


def test_for_images_builds_the_pixel_grid_renderer():
    field = demo_scene()
    cameras = _cameras()
    renderer = DVRRenderer.for_images(
        field=field, image_size=(30, 40), background_color=1.0, n_steps=64, compute_normals=False
    )
    assert (renderer.raysampler.image_height, renderer.raysampler.image_width) == (30, 40)
    assert renderer.raysampler.n_steps == 64 and renderer.raysampler.compute_normals is False
    reference = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(
            image_width=40, image_height=30, n_steps=64, compute_normals=False
        ),
        background_color=1.0,
    )
    with torch.no_grad():
        out, expected = renderer(cameras), reference(cameras)
    assert out.images.shape == (2, 30, 40, 3) and out.normals is None
    torch.testing.assert_close(out.images, expected.images, rtol=0, atol=0)
    assert DVRRenderer.for_images(field=field, image_size=16).raysampler.image_width == 16
    with pytest.raises(ValueError, match="image_size"):
        DVRRenderer.for_images(field=field, image_size=(1, 2, 3))


def test_implicit_renderer_route_with_a_plain_volumetric_function():
    """A hand-written PyTorch3D volumetric function (probabilities, level 0.5)."""

    def sphere_function(ray_bundle, **kwargs):
        points = ray_bundle.origins[..., None, :] + (
            ray_bundle.lengths[..., None] * ray_bundle.directions[..., None, :]
        )
        densities = torch.sigmoid(30.0 * (0.3 - points.norm(dim=-1, keepdim=True)))
        features = torch.ones_like(points) * torch.tensor([1.0, 0.0, 0.0])
        return densities, features

    implicit = ImplicitRenderer(
        raysampler=SecantRaysampler(image_width=32, image_height=32, n_steps=64),
        raymarcher=SurfaceRaymarcher(background_color=(0.0, 0.0, 1.0), return_depth=True),
    )
    cameras = _cameras(1)
    images, bundle = implicit(cameras=cameras, volumetric_function=sphere_function)
    hit = bundle.hit[0]
    assert 0.1 < float(hit.float().mean()) < 0.6
    assert torch.allclose(images[0][hit][:, :3], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(images[0][~hit][:, :3], torch.tensor([0.0, 0.0, 1.0]))
    # depth: the exact ray-sphere intersection
    origins, directions = bundle.origins[0][hit], bundle.directions[0][hit]
    a = (directions * directions).sum(-1)
    b = 2 * (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - 0.09
    exact = (-b - torch.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert float((images[0][hit][:, 4] - exact).abs().max().detach()) < 1e-4


def test_depth_is_exact_on_an_analytic_sphere():
    field = SphereField(centre=(0.02, 0.01, -0.03), radius=0.27, field_type="sdf")
    renderer = DVRRenderer(
        field=field, raysampler=SecantRaysampler(image_width=48, image_height=40, n_steps=128)
    )
    with torch.no_grad():
        out = renderer(_cameras())
    hit = out.hit
    centre = field.centre.detach()
    origins = out.ray_bundle.origins[hit] - centre
    directions = out.ray_bundle.directions[hit]
    a = (directions * directions).sum(-1)
    b = 2 * (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - 0.27**2
    exact = (-b - torch.sqrt(b * b - 4 * a * c)) / (2 * a)
    error = (out.depths[hit] - exact).abs()
    assert float(error.median()) < 1e-6 and float(error.max()) < 1e-4
    # normals are the radial directions
    radial = torch.nn.functional.normalize(out.surface_points[hit] - centre, dim=-1)
    assert float((out.normals[hit] * radial).sum(-1).min()) > 0.999


def test_latent_conditioned_field_gets_gradients():
    field = SphereMLPField(latent_size=3)
    latent = torch.randn(2, 3, requires_grad=True)
    renderer = DVRRenderer(field=field, raysampler=SecantRaysampler(n_steps=32))
    out = renderer(_cameras(), latent=latent, n_rays_per_image=64)
    assert out.images.shape == (2, 64, 3) and out.depths.shape == (2, 64)
    assert bool(out.hit.any())
    (out.images.sum() + out.depths.sum()).backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) > 0


def test_raymarcher_channels_and_errors():
    hit = torch.tensor([[True, False]])
    bundle = SurfaceRayBundle(
        origins=torch.zeros(1, 2, 3),
        directions=torch.zeros(1, 2, 3),
        lengths=torch.tensor([[[1.5], [9.0]]]),
        xys=torch.zeros(1, 2, 2),
        hit=hit,
        started_inside=torch.zeros_like(hit),
        missed_box=torch.zeros_like(hit),
        normals=torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]),
    )
    features = torch.tensor([[[[0.2, 0.3, 0.4]], [[0.9, 0.9, 0.9]]]])
    densities = torch.ones(1, 2, 1, 1)
    marcher = SurfaceRaymarcher(
        background_color=(1.0, 0.5, 0.0), return_depth=True, return_normals=True,
        background_depth=-1.0,
    )
    out = marcher(rays_densities=densities, rays_features=features, ray_bundle=bundle)
    expected = torch.tensor(
        [[[0.2, 0.3, 0.4, 1.0, 1.5, 0.0, 0.0, 1.0], [1.0, 0.5, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0]]]
    )
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="hit"):
        marcher(rays_densities=densities, rays_features=features, ray_bundle=bundle[:4])
    with pytest.raises(ValueError, match="one sample per ray"):
        marcher(rays_densities=densities, rays_features=features[:, :, None], ray_bundle=bundle)
    with pytest.raises(ValueError, match="background_color"):
        marcher(
            rays_densities=densities, rays_features=features, ray_bundle=bundle,
            background_color=(1.0, 0.0),
        )


def test_geometry_only_field_renders_white():
    renderer = DVRRenderer(
        field=lambda points, latent=None: 20.0 * (0.3 - points.norm(dim=-1)),
        raysampler=SecantRaysampler(image_width=16, image_height=16, n_steps=32),
    )
    with torch.no_grad():
        out = renderer(_cameras(1))
    assert bool(out.hit.any())
    assert torch.allclose(out.images[out.hit], torch.ones(1, 3))


def test_rendering_without_gradients_colours_only_hits_and_matches():
    """The no-grad path evaluates colour at hit rays only (in chunks); images are unchanged."""
    field = SphereMLPField(latent_size=4)
    latent = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    calls = []

    def counting_field(points, latent=None):
        calls.append(points.shape[1])
        return field(points, latent)

    renderer = DVRRenderer(
        field=counting_field,
        raysampler=SecantRaysampler(image_width=20, image_height=16, n_steps=32),
        background_color=0.25,
        chunk_size=50,
    )
    with_grad = renderer(_cameras(), latent=latent)
    with torch.no_grad():
        without = renderer(_cameras(), latent=latent)
        hit = without.ray_bundle.hit
        hits = int(hit.sum())
        assert 0 < hits < 2 * 16 * 20
        calls.clear()
        renderer._colour(without.surface_points, latent, hit)
    assert sum(calls) == hits and max(calls) <= 50
    torch.testing.assert_close(without.images, with_grad.images.detach(), rtol=0, atol=1e-6)
