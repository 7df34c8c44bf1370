"""Synthetic multi-view renders of the shared cow mesh with PyTorch3D's MeshRenderer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pytorch3d.ops import knn_points, sample_points_from_meshes

from dvr_plugin.data import (
    MultiViewData,
    cameras_looking_at_origin,
    fibonacci_sphere,
    load_mesh,
    normalize_mesh,
    random_elevation,
    render_mesh_views,
    turntable,
)
from dvr_plugin.data.paths import find_shared_data, missing_data_message
from dvr_plugin.renderer.rays import ndc_grid, rays_from_cameras

COW = ("meshes", "cow.obj")


def test_directions():
    fib = fibonacci_sphere(50)
    torch.testing.assert_close(fib.norm(dim=-1), torch.ones(50, dtype=torch.float64))
    assert float(fib.mean(0).norm()) < 0.05  # evenly spread
    ring = turntable(8, elevation=30.0)
    torch.testing.assert_close(ring[:, 1], torch.full((8,), 0.5, dtype=torch.float64))
    rnd = random_elevation(20, elevation_range=(-10.0, 40.0), seed=3)
    torch.testing.assert_close(rnd, random_elevation(20, elevation_range=(-10.0, 40.0),
                                                      seed=3))
    elev = torch.rad2deg(torch.asin(rnd[:, 1]))
    assert bool(((elev >= -10.0 - 1e-6) & (elev <= 40.0 + 1e-6)).all())
    with pytest.raises(ValueError, match="elevation_range"):
        random_elevation(3, elevation_range=(50.0, 10.0))


def test_cameras_look_at_origin():
    eyes = 2.0 * torch.cat([fibonacci_sphere(5), torch.tensor([[0.0, 1.0, 0.0]])]).float()
    cams = cameras_looking_at_origin(eyes, image_size=(30, 40), fov=45.0)
    torch.testing.assert_close(cams.get_camera_center(), eyes, atol=1e-5, rtol=0)
    # The origin projects onto the image centre.
    centre = cams.transform_points_screen(torch.zeros(6, 1, 3))[..., :2]
    torch.testing.assert_close(centre, torch.tensor([[[20.0, 15.0]]]).expand(6, 1, 2))
    focal = 1 / math.tan(math.radians(22.5))
    assert float(cams.focal_length[0, 0]) == pytest.approx(focal, abs=5e-6)


requires_cow = pytest.mark.skipif(
    find_shared_data(*COW) is None, reason=missing_data_message(*COW)
)


@pytest.fixture(scope="module")
def cow():
    """The shared cow mesh's ``path`` and six ``views`` of it rendered at 40 x 48."""
    path = find_shared_data(*COW)
    views = render_mesh_views(path, num_views=6, image_size=(40, 48))
    return SimpleNamespace(path=path, views=views)


@requires_cow
def test_normalisation(cow):
    mesh = cow.views.mesh
    verts = mesh.verts_packed()
    low, high = verts.min(0).values, verts.max(0).values
    assert float((high - low).max()) == pytest.approx(0.8, abs=5e-6)
    torch.testing.assert_close(0.5 * (low + high), torch.zeros(3), atol=1e-6, rtol=0)
    original = load_mesh(cow.path).verts_packed()
    norm = cow.views.normalization
    torch.testing.assert_close(norm.denormalise(verts), original, atol=1e-5, rtol=0)
    data = cow.views.data
    torch.testing.assert_close(data.normalised_to_world(verts.double()), original.double(),
                               atol=1e-5, rtol=0)
    _, custom = normalize_mesh(load_mesh(cow.path), longest_side=0.5)
    assert custom.scale == pytest.approx(norm.scale * 0.5 / 0.8, abs=5e-8)


@requires_cow
def test_masks_depth_and_images(cow):
    data = cow.views.data
    assert len(data) == 6
    assert data.image_size == (40, 48)
    assert torch.equal(data.masks, data.depths > 0)
    assert bool(data.masks.any(dim=(1, 2)).all())
    # Background pixels are exactly the background colour; object pixels are textured.
    assert bool((data.images[~data.masks] == 1.0).all())
    assert float(data.images[data.masks].std()) > 0.02
    # Unprojected depth lands on the mesh surface.
    xys = ndc_grid(data.image_size)[None].expand(len(data), -1, -1, -1)
    origins, directions = rays_from_cameras(data.cameras, xys)
    surface = (origins + data.depths[..., None] * directions)[data.masks]
    samples = sample_points_from_meshes(cow.views.mesh, 20000)
    dist = knn_points(surface[None], samples, K=1).dists[0, :, 0].sqrt()
    assert float(dist.quantile(0.95)) < 0.01
    # Mesh vertices project into the silhouettes: most onto mask pixels, all of them within
    # one pixel of one (thin parts are narrower than a pixel at this resolution).
    verts = cow.views.mesh.verts_packed()
    in_mask, in_image = data.lookup_masks(verts)
    assert bool(in_image.all())
    assert float(in_mask.float().mean()) > 0.85
    grown = torch.nn.functional.max_pool2d(data.masks[:, None].float(), 3, 1, 1)[:, 0] > 0
    grown_data = MultiViewData(images=data.images, masks=grown, cameras=data.cameras)
    assert bool(grown_data.lookup_masks(verts)[0].all())


@requires_cow
def test_options(cow):
    mesh = cow.views.mesh
    ring = render_mesh_views(mesh, num_views=2, image_size=24, layout="turntable",
                             elevation=10.0, distance=2.5, shading="phong",
                             background=(0.0, 0.0, 0.0), normalize=False)
    centres = ring.data.cameras.get_camera_center()
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((2,), 2.5))
    height = 2.5 * math.sin(math.radians(10))
    torch.testing.assert_close(centres[:, 1], torch.full((2,), height))
    assert bool((ring.data.images[~ring.data.masks] == 0.0).all())
    assert ring.normalization.scale == 1.0
    given = render_mesh_views(mesh, cameras=cow.views.data.cameras[[0]], image_size=(40, 48),
                              normalize=False)
    assert torch.equal(given.data.masks[0], cow.views.data.masks[0])
    assert given.data.info["layout"] == "given"
    with pytest.raises(ValueError, match="layout"):
        render_mesh_views(mesh, layout="spiral")
    with pytest.raises(ValueError, match="shading"):
        render_mesh_views(mesh, shading="pbr")
    with pytest.raises(ValueError, match="Cannot load mesh"):
        load_mesh(cow.path.parent / "missing.obj")


@requires_cow
def test_downscale(cow):
    data = cow.views.data
    small = data.downscale(2)
    points = cow.views.mesh.verts_packed()[::50]
    torch.testing.assert_close(small.project(points)[0], data.project(points)[0] / 2,
                               atol=1e-3, rtol=0)
    both = small.masks & (small.depths > 0)
    assert int(both.sum()) > 0
