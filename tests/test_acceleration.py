"""
The root finder's fast paths (early exit, occupancy grid, reduced precision) against the float32
dense march, and the occupancy grid itself.

The accuracy check is the one of the benchmark (integration/benchmarks/bench_core.py): against
the float32 dense march with the same step count, hit flags agree on >= 99.9% of the rays and
the median |depth difference| is <= 1e-4 of the depth range.
"""

from __future__ import annotations

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

import dvr_plugin.surface.precision as precision_module
import dvr_plugin.surface.root_finding as root_finding
import dvr_plugin.surface.secant as secant
from dvr_plugin.accel.occupancy_grid import OccupancyGrid
from dvr_plugin.fields.shapes import SphereField, demo_scene
from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.surface.query import FieldQuery
from dvr_plugin.surface.root_finding import find_surface
from tests.core_factories import PointCounter, SphereMLPField, box_rays, same_hits, saved_bytes

SIZE = 24


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The tensors here are small: intra-op threads only add synchronisation (seconds on CPU
    quotas), so these tests run on one."""


def _rays(size: int = SIZE, elevation: float = 25.0, azimuth: float = 30.0):
    """Camera rays through a ``size`` x ``size`` image, clipped to the padded unit cube."""
    return box_rays(size, elevation=elevation, azimuth=azimuth)


def _accuracy(fast, reference) -> tuple[float, float]:
    """Share of rays with the same hit flag; median |depth difference| over the depth range."""
    agreement = float((fast.hit == reference.hit).float().mean())
    both = fast.hit & reference.hit
    depths = reference.depth[reference.hit]
    depth_range = float(depths.max() - depths.min())
    diff = (fast.depth - reference.depth)[both].abs()
    return agreement, float(diff.median()) / depth_range


def _mlp_field():
    return SphereMLPField(latent_size=0, seed=3)


def _dense(query, rays, n_steps):
    return find_surface(query, *rays, n_steps=n_steps, chunk_size=None, early_exit=False)


@pytest.mark.parametrize("field_name", ["analytic", "mlp"])
@pytest.mark.parametrize("n_steps", [16, 64])
@pytest.mark.parametrize(
    "options",
    [
        dict(early_exit=True),
        dict(early_exit=True, block_size=3, chunk_size=97),
        dict(occupancy_grid=True),
        dict(occupancy_grid=True, block_size=1, chunk_size=50),
    ],
    ids=["early-exit", "early-exit-small-blocks", "grid", "grid-small-blocks"],
)
def test_fast_paths_pass_the_accuracy_check(field_name, n_steps, options):
    field = demo_scene() if field_name == "analytic" else _mlp_field()
    query = FieldQuery(field=field)
    rays = _rays()
    options = dict(options)
    if options.pop("occupancy_grid", False):
        grid = OccupancyGrid(resolution=32)
        grid.refresh(field, generator=torch.Generator().manual_seed(0))
        assert grid.occupied_fraction < 0.5
        options["occupancy_grid"] = grid
    with torch.no_grad():
        reference = _dense(query, rays, n_steps)
        fast = find_surface(query, *rays, n_steps=n_steps, **options)
    assert int(reference.hit.sum()) > 30
    agreement, median = _accuracy(fast, reference)
    assert agreement >= 0.999 and median <= 1e-4
    assert torch.equal(fast.started_inside, reference.started_inside)
    # early exit and skipping empty cells find the very same brackets
    assert torch.equal(fast.hit, reference.hit)
    torch.testing.assert_close(fast.depth[fast.hit], reference.depth[fast.hit], atol=1e-5, rtol=0)


def test_rays_starting_inside_are_found_with_a_grid():
    field = SphereField(radius=0.3)
    grid = OccupancyGrid(resolution=16)
    grid.refresh(field)
    origins = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 1.5]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far = torch.tensor([0.0, 0.95]), torch.tensor([0.65, 2.05])
    result = find_surface(
        FieldQuery(field=field), origins, directions, near, far, n_steps=64, occupancy_grid=grid
    )
    assert result.started_inside.tolist() == [True, False]
    assert result.hit.tolist() == [False, True]
    assert float(result.depth[1]) == pytest.approx(1.2, abs=1e-5)


def _fake_reduced_precision(monkeypatch):
    """On CPU, pretend reduced precision is on: the query below then perturbs its values."""
    original = precision_module.resolve_precision

    def resolve(precision, device):
        return "tf32" if precision in ("tf32", "auto") else original(precision, device)

    for module in (precision_module, root_finding, secant):
        monkeypatch.setattr(module, "resolve_precision", resolve)


class _PerturbedQuery:
    """A field query whose values carry a smooth error while "TF32" is on."""

    def __init__(self, field):
        self.query = FieldQuery(field=field)

    def __call__(self, ray_ids, origins, directions, lengths):
        values = self.query(ray_ids, origins, directions, lengths)
        if torch.backends.cuda.matmul.allow_tf32:
            points = origins[:, None, :] + lengths[..., None] * directions[:, None, :]
            values = values + 0.004 + 0.003 * torch.sin(200.0 * points[..., 0])
        return values


@pytest.mark.parametrize(
    "march, refine", [("tf32", "float32"), ("float32", "tf32"), ("tf32", "tf32")]
)
@pytest.mark.parametrize("grid", [False, True])
def test_reduced_precision_paths_pass_the_accuracy_check(monkeypatch, march, refine, grid):
    field = demo_scene()
    rays = _rays()
    options = dict(march_precision=march, refine_precision=refine)
    if grid:
        options["occupancy_grid"] = OccupancyGrid(resolution=32)
        options["occupancy_grid"].refresh(field, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = _dense(FieldQuery(field=field), rays, 64)
        _fake_reduced_precision(monkeypatch)
        fast = find_surface(_PerturbedQuery(field), *rays, n_steps=64, **options)
    previous = torch.backends.cuda.matmul.allow_tf32
    assert not previous, "the reduced-precision context must restore the flag"
    agreement, median = _accuracy(fast, reference)
    assert agreement >= 0.999 and median <= 1e-4
    # the full-precision finish removes the reduced-precision error from every hit
    both = fast.hit & reference.hit
    assert float((fast.depth - reference.depth)[both].abs().max()) < 1e-4


def test_grid_never_removes_a_true_crossing():
    """Every first inside sample of the dense march lies in an occupied cell (several views)."""
    field = demo_scene()
    grid = OccupancyGrid(resolution=48)
    grid.refresh(field, n_samples=2, generator=torch.Generator().manual_seed(1))
    query = FieldQuery(field=field)
    for elevation, azimuth in [(25.0, 30.0), (-40.0, 200.0), (80.0, 95.0)]:
        origins, directions, near, far = _rays(20, elevation, azimuth)
        n_steps = 96
        depths = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, n_steps)
        with torch.no_grad():
            inside = query(torch.arange(len(near)), origins, directions, depths) > 0
        rows = torch.nonzero(inside.any(dim=1), as_tuple=True)[0]
        first = torch.argmax(inside[rows].to(torch.uint8), dim=1)
        points = origins[rows] + depths[rows, first, None] * directions[rows]
        assert len(rows) > 20
        assert bool(grid.occupied_at(points).all())
        with torch.no_grad():
            fast = find_surface(
                query, origins, directions, near, far, n_steps=n_steps, occupancy_grid=grid
            )
            dense = _dense(query, (origins, directions, near, far), n_steps)
        assert torch.equal(fast.hit, dense.hit)
        assert torch.equal(fast.started_inside, dense.started_inside)


def test_grid_covers_the_analytic_surface():
    """Points on the true surface (and inside it) are never in empty cells."""
    sphere = SphereField(centre=(0.1, -0.05, 0.02), radius=0.23)
    grid = OccupancyGrid(resolution=40)
    grid.refresh(sphere, n_samples=2, generator=torch.Generator().manual_seed(2))
    directions = torch.nn.functional.normalize(
        torch.randn(4000, 3, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    centre = sphere.centre.detach()
    for radius in (0.23, 0.2, 0.1):
        assert bool(grid.occupied_at(centre + radius * directions).all())
    far_away = centre + 0.4 * directions
    far_away = far_away[far_away.abs().max(dim=-1).values < 0.5]
    assert not bool(grid.occupied_at(far_away).any())


def test_grid_refresh_fraction_dilation_and_lookups():
    grid = OccupancyGrid(resolution=(8, 8, 4))
    assert grid.all_occupied and grid.occupied_fraction == 1.0
    empty = SphereField(radius=-1.0)
    assert grid.refresh_every(3, empty, every=2) is False
    assert grid.refresh_every(4, empty, every=2) is True
    assert not bool(grid.occupied.any())
    # outside the box counts as occupied; the faces of the box belong to it
    outside = torch.tensor([[0.0, 0.0, 0.9], [0.55, 0.55, 0.55], [-0.55, 0.0, 0.0]])
    assert grid.occupied_at(outside).tolist() == [True, False, False]
    small = SphereField(centre=(0.0, 0.0, 0.0), radius=0.1)
    grid.refresh(small, n_samples=64, fraction=0.25, generator=torch.Generator().manual_seed(0))
    assert int(grid.raw.sum()) < 8  # only re-evaluated cells change
    grid.refresh(small, n_samples=64, generator=torch.Generator().manual_seed(0))
    assert int(grid.raw.sum()) == 8  # the 2 x 2 x 2 cells around the centre
    assert int(grid.occupied.sum()) == 4 * 4 * 4  # dilated by one cell (z has 4 cells)
    state = grid.state_dict()
    restored = OccupancyGrid(resolution=(8, 8, 4))
    restored.load_state_dict(state)
    assert torch.equal(restored.occupied, grid.occupied)
    grid.refresh(inside_function=lambda points: -points.norm(dim=-1) + 0.05, margin=0.5)
    assert grid.occupied_fraction > 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(resolution=0), "resolution"),
        (dict(bounds=((0.5, 0, 0), (-0.5, 1, 1))), "bounds"),
        (dict(dilation=-1), "dilation"),
    ],
)
def test_grid_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OccupancyGrid(**kwargs)


def test_grid_bad_refresh_arguments():
    grid = OccupancyGrid(resolution=4)
    field = SphereField()
    with pytest.raises(ValueError, match="either a field"):
        grid.refresh()
    for kwargs, message in [
        (dict(n_samples=0), "n_samples"),
        (dict(fraction=0.0), "fraction"),
        (dict(precision="fp8"), "precision"),
        (dict(latent=torch.zeros(2, 3)), "latent"),
    ]:
        with pytest.raises(ValueError, match=message):
            grid.refresh(field, **kwargs)
    with pytest.raises(ValueError, match="points"):
        grid.occupied_at(torch.zeros(3, 2))


def test_bad_march_options_raise():
    with pytest.raises(ValueError, match="refine_precision"):
        SecantRaysampler(refine_precision="fp8")
    with pytest.raises(ValueError, match="march_precision"):
        SecantRaysampler(march_precision="fp16")
    with pytest.raises(ValueError, match="block_size"):
        SecantRaysampler(block_size=0)
    with pytest.raises(ValueError, match="occupancy_grid"):
        SecantRaysampler(occupancy_grid=torch.ones(4, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        SecantRaysampler(chunk_size="big")
    rays = _rays(4)
    with pytest.raises(ValueError, match="block_size"):
        find_surface(FieldQuery(field=SphereField()), *rays, n_steps=8, block_size=0)
    with pytest.raises(ValueError, match="near and far"):
        find_surface(FieldQuery(field=SphereField()), *rays[:2], rays[2][:1], rays[3], n_steps=8)


def _single_camera():
    rotation, translation = look_at_view_transform(eye=((0.0, 0.3, 1.5),))
    return FoVPerspectiveCameras(R=rotation, T=translation, fov=60.0)


@pytest.mark.parametrize("n_steps", [16, 1024])
def test_query_size_is_bounded_with_a_grid(n_steps):
    field = PointCounter(demo_scene())
    grid = OccupancyGrid(resolution=32)
    grid.refresh(demo_scene())
    sampler = SecantRaysampler(
        image_width=32,
        image_height=32,
        n_steps=n_steps,
        chunk_size=1000,
        occupancy_grid=grid,
        compute_normals=False,
    )
    with torch.no_grad():
        bundle = sampler(cameras=_single_camera(), field=field)
    assert bool(bundle.hit.any())
    assert 0 < field.largest <= 1000


def test_saved_for_backward_does_not_depend_on_steps_with_acceleration():
    field = _mlp_field()
    grid = OccupancyGrid(resolution=16)
    grid.refresh(field)
    renderer = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(n_steps=16, occupancy_grid=grid, refine_precision="tf32"),
    )
    xys = (2 * torch.rand(1, 128, 2, generator=torch.Generator().manual_seed(0)) - 1) * 0.4
    # the same rays hit at both step counts (memory follows the hit rays, not the steps)
    xys = same_hits(renderer, _single_camera(), xys, (16, 512))
    at_16 = saved_bytes(renderer, _single_camera(), xys, 16)
    at_512 = saved_bytes(renderer, _single_camera(), xys, 512)
    assert at_16 == at_512 > 0


def test_auto_chunk_size_follows_grad_mode():
    sampler = SecantRaysampler(n_steps=8)
    assert sampler.chunk_size == "auto"
    with torch.no_grad():
        assert sampler._march_chunk_size() == 2**16
    assert sampler._march_chunk_size() == 2**15
    assert SecantRaysampler(chunk_size=None)._march_chunk_size() is None
