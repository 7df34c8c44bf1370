"""SecantRaysampler: against PyTorch3D's mesh rasterizer, edge cases, bad input, memory."""

from __future__ import annotations

import pytest
import torch
from pytorch3d.renderer import (
    FoVOrthographicCameras,
    FoVPerspectiveCameras,
    MeshRasterizer,
    OrthographicCameras,
    PerspectiveCameras,
    RasterizationSettings,
    look_at_view_transform,
)
from pytorch3d.utils import ico_sphere

from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.fields.shapes import SphereField
from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer

from .core_factories import PointCounter, SphereMLPField, same_hits, saved_bytes

CENTRE = (0.05, -0.04, 0.03)
RADIUS = 0.3
HEIGHT, WIDTH = 48, 64


def _cameras(kind: str):
    rotation, translation = look_at_view_transform(
        torch.tensor([1.5, 1.8]), torch.tensor([15.0, -30.0]), torch.tensor([20.0, 140.0])
    )
    if kind == "fov_perspective":
        return FoVPerspectiveCameras(R=rotation, T=translation, fov=45.0)
    if kind == "perspective_screen":
        return PerspectiveCameras(
            R=rotation,
            T=translation,
            focal_length=((70.0, 75.0), (80.0, 80.0)),
            principal_point=((33.0, 22.0), (30.0, 25.0)),
            in_ndc=False,
            image_size=((HEIGHT, WIDTH), (HEIGHT, WIDTH)),
        )
    if kind == "perspective_ndc":
        return PerspectiveCameras(
            R=rotation, T=translation, focal_length=2.5, principal_point=((0.05, -0.02),) * 2
        )
    if kind == "fov_orthographic":
        return FoVOrthographicCameras(
            R=rotation, T=translation, min_x=-0.6, max_x=0.6, min_y=-0.6, max_y=0.6
        )
    if kind == "orthographic":
        return OrthographicCameras(R=rotation, T=translation, focal_length=1.7)
    raise AssertionError(kind)


def _mesh_reference(cameras):
    mesh = ico_sphere(5)
    verts = mesh.verts_packed() * RADIUS + torch.tensor(CENTRE)
    mesh = mesh.update_padded(verts[None]).extend(len(cameras))
    rasterizer = MeshRasterizer(
        cameras=cameras,
        raster_settings=RasterizationSettings(
            image_size=(HEIGHT, WIDTH), blur_radius=0.0, faces_per_pixel=1
        ),
    )
    fragments = rasterizer(mesh)
    return fragments.pix_to_face[..., 0] >= 0, fragments.zbuf[..., 0]


@pytest.mark.parametrize(
    "kind",
    [
        "fov_perspective",
        "perspective_screen",
        "perspective_ndc",
        "fov_orthographic",
        "orthographic",
    ],
)
@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_matches_mesh_rasterizer(kind, field_type):
    cameras = _cameras(kind)
    silhouette, zbuf = _mesh_reference(cameras)
    renderer = DVRRenderer(
        field=SphereField(centre=CENTRE, radius=RADIUS, field_type=field_type),
        raysampler=SecantRaysampler(image_width=WIDTH, image_height=HEIGHT, n_steps=128),
    )
    with torch.no_grad():
        out = renderer(cameras)
    assert out.images.shape == (2, HEIGHT, WIDTH, 3)
    hit = out.masks > 0.5
    assert int(silhouette.sum()) > 0.1 * silhouette.numel()
    iou = (hit & silhouette).sum() / (hit | silhouette).sum()
    assert float(iou) >= 0.99
    both = hit & silhouette
    error = (out.depths - zbuf)[both].abs()
    # the ico-sphere is inscribed in the true sphere: its faces lie up to ~7e-5 inside
    assert float(error.median()) < 1e-4
    assert float(torch.quantile(error, 0.99)) < 2e-3


def test_random_and_given_rays_follow_the_grid():
    cameras = _cameras("fov_perspective")
    field = SphereField(centre=CENTRE, radius=RADIUS)
    sampler = SecantRaysampler(image_width=WIDTH, image_height=HEIGHT, n_steps=64)
    with torch.no_grad():
        full = sampler(cameras=cameras, field=field)
        xys = full.xys[:, 10:20:3, 5:60:7]
        given = sampler(cameras=cameras, field=field, xys=xys)
        random = sampler(cameras=cameras, field=field, n_rays_per_image=100)
    assert given.lengths.shape == (2, 4, 8, 1)
    torch.testing.assert_close(given.lengths, full.lengths[:, 10:20:3, 5:60:7])
    assert torch.equal(given.hit, full.hit[:, 10:20:3, 5:60:7])
    assert random.lengths.shape == (2, 100, 1) and random.hit.shape == (2, 100)
    assert float(random.xys[..., 0].abs().max()) <= WIDTH / HEIGHT
    assert float(random.xys[..., 1].abs().max()) <= 1.0


def _single_camera(eye, at=(0.0, 0.0, 0.0)):
    rotation, translation = look_at_view_transform(eye=(eye,), at=(at,))
    return FoVPerspectiveCameras(R=rotation, T=translation, fov=60.0)


def test_rays_starting_inside_are_flagged_not_hit():
    sampler = SecantRaysampler(image_width=16, image_height=16, n_steps=32)
    field = SphereField(radius=0.3)
    with torch.no_grad():
        bundle = sampler(cameras=_single_camera((0.0, 0.0, 0.1), at=(0.0, 0.0, -1.0)), field=field)
    assert bool(bundle.started_inside.all())
    assert not bool(bundle.hit.any())


def test_rays_missing_the_box():
    sampler = SecantRaysampler(image_width=16, image_height=16, n_steps=32)
    with torch.no_grad():
        bundle = sampler(
            cameras=_single_camera((0.0, 0.0, 2.0), at=(0.0, 0.0, 5.0)), field=SphereField()
        )
    assert bool(bundle.missed_box.all())
    assert not bool(bundle.hit.any()) and not bool(bundle.started_inside.any())
    assert bool(torch.isfinite(bundle.lengths).all())


def test_empty_and_full_fields():
    cameras = _single_camera((0.0, 0.3, 1.5))
    renderer = DVRRenderer(
        field=SphereField(radius=-1.0),
        raysampler=SecantRaysampler(image_width=16, image_height=16, n_steps=32),
        background_color=(0.2, 0.4, 0.6),
    )
    with torch.no_grad():
        empty = renderer(cameras)
    assert not bool(empty.hit.any())
    assert torch.allclose(empty.images, torch.tensor([0.2, 0.4, 0.6]).expand(1, 16, 16, 3))
    assert float(empty.depths.abs().max()) == 0.0
    renderer.field = SphereField(radius=10.0)
    with torch.no_grad():
        full = renderer(cameras)
    crossing = ~full.ray_bundle.missed_box
    assert bool(full.ray_bundle.started_inside[crossing].all())
    assert not bool(full.hit.any())


def test_grazing_rays_give_finite_depths_and_gradients():
    field = SphereField(radius=0.3, field_type="occupancy")
    offsets = torch.tensor([1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0, -1e-3])
    x = 0.3 - offsets
    xys = None
    # orthographic rays along -z, passing at distance x from the sphere centre
    cameras = OrthographicCameras(focal_length=1.0, T=torch.tensor([[0.0, 0.0, 2.0]]))
    xys = torch.stack([-x, torch.zeros_like(x)], dim=-1)[None]  # +X is left in NDC
    sampler = SecantRaysampler(n_steps=256)
    bundle = sampler(cameras=cameras, field=field, xys=xys)
    depth = bundle.lengths[..., 0]
    depth.sum().backward()
    assert bool(torch.isfinite(depth).all())
    assert bool(torch.isfinite(field.radius.grad)) and bool(torch.isfinite(field.centre.grad).all())
    assert bool(bundle.hit[0, 0]) and not bool(bundle.hit[0, -1]) and not bool(bundle.hit[0, -2])
    hits = bundle.hit[0]
    expected = 2.0 - torch.sqrt((0.3**2 - x**2).clamp(min=0))
    assert torch.allclose(depth[0][hits], expected[hits], atol=2e-3)


@pytest.mark.parametrize("n_steps", [16, 512])
def test_marching_memory_is_bounded_by_chunk_size(n_steps):
    field = PointCounter(SphereField(radius=0.3))
    sampler = SecantRaysampler(image_width=40, image_height=40, n_steps=n_steps, chunk_size=4096)
    with torch.no_grad():
        sampler(cameras=_single_camera((0.0, 0.3, 1.5)), field=field)
    assert 0 < field.largest <= 4096


def test_saved_for_backward_does_not_depend_on_steps():
    torch.manual_seed(0)
    field = SphereMLPField(latent_size=0)  # a network with a surface: some rays hit
    renderer = DVRRenderer(field=field, raysampler=SecantRaysampler(n_steps=16))
    cameras = _single_camera((0.0, 0.3, 1.5))
    xys = 2 * torch.rand(1, 256, 2) - 1
    # the same rays hit at both step counts (memory follows the hit rays, not the steps)
    xys = same_hits(renderer, cameras, xys, (16, 512))
    at_16 = saved_bytes(renderer, cameras, xys, 16)
    at_512 = saved_bytes(renderer, cameras, xys, 512)
    assert at_16 == at_512 > 0


def _bad_field_wrong_shape(points, latent=None):
    return points[..., :2]


def _bad_field_nan(points, latent=None):
    return torch.full(points.shape[:-1], float("nan"))


@pytest.mark.parametrize(
    "field, message",
    [(_bad_field_wrong_shape, "values of shape"), (_bad_field_nan, "non-finite")],
)
def test_bad_fields_raise(field, message):
    sampler = SecantRaysampler(image_width=8, image_height=8, n_steps=8)
    with pytest.raises(ValueError, match=message):
        sampler(cameras=_single_camera((0.0, 0.0, 1.5)), field=field)


def test_bad_input_raises():
    field = SphereField()
    cameras = _single_camera((0.0, 0.0, 1.5))
    with pytest.raises(ValueError, match="n_steps"):
        SecantRaysampler(image_width=8, image_height=8, n_steps=1)
    sampler = SecantRaysampler(image_width=8, image_height=8, n_steps=8)
    with pytest.raises(ValueError, match="n_steps"):
        sampler(cameras=cameras, field=field, n_steps=1)
    with pytest.raises(ValueError, match="xys"):
        sampler(cameras=cameras, field=field, xys=torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="cameras"):
        sampler(cameras=cameras, field=field, xys=torch.zeros(2, 5, 2))
    bad = FoVPerspectiveCameras(T=torch.tensor([[0.0, float("nan"), 1.5]]))
    with pytest.raises(ValueError, match="non-finite"):
        sampler(cameras=bad, field=field)
    with pytest.raises(ValueError, match="latent"):
        sampler(
            cameras=cameras,
            field=OccupancyTextureField(hidden_size=8, latent_size=3),
            latent=torch.zeros(2, 3),
        )
    with pytest.raises(ValueError, match="bounds"):
        SecantRaysampler(bounds=((0.5, 0, 0), (-0.5, 1, 1)))
    with pytest.raises(ValueError, match="image_width"):
        SecantRaysampler(image_width=8)
    with pytest.raises(ValueError, match="field or a volumetric_function"):
        sampler(cameras=cameras)


def test_broken_brackets_fall_back_to_bisection():
    """Bracket ends that do not change sign (a reduced-precision march) give no NaN."""
    from dvr_plugin.surface.secant import refine_brackets

    def query(ray_ids, origins, directions, lengths):
        flat = torch.ones_like(lengths)  # ray 2: constant, no root at all
        return torch.where(ray_ids[:, None] == 2, flat, lengths - 1.0)

    n = 3
    d_out = torch.tensor([0.5, 1.2, 0.2])
    d_in = torch.tensor([1.5, 1.4, 0.4])
    s_out = torch.tensor([-0.5, 0.2, 1.0])
    s_in = torch.tensor([0.5, 0.4, 1.0])
    depth = refine_brackets(
        query,
        torch.arange(n),
        torch.zeros(n, 3),
        torch.ones(n, 3),
        d_out,
        s_out,
        d_in,
        s_in,
        8,
        True,
    )
    assert bool(torch.isfinite(depth).all())
    assert float(depth[0]) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(depth[1]) - 1.0) <= 0.2  # within one interval of the true root
    assert 0.2 <= float(depth[2]) <= 0.4  # no root: stays in the interval
