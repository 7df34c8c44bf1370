"""
The fixed-shape grid march: eagerly on CPU against the compacting march, recorded on CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

import dvr_plugin.surface.root_finding as root_finding
from dvr_plugin.accel.march_graphs import FixedShapeGridMarch, MarchGraphs, points_per_round
from dvr_plugin.accel.occupancy_grid import OccupancyGrid
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.surface.query import FieldQuery

from .core_factories import SphereMLPField, assert_same_surfaces, box_rays


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one intra-op thread is as fast, and far faster on busy cores."""


def _scene(size: int = 20, latent_size: int = 0):
    """Rays of one view through the box, a field and a refreshed grid."""
    torch.manual_seed(0)
    field = SphereMLPField(latent_size=latent_size, seed=3)
    origins, directions, near, far = box_rays(size)
    latent = torch.randn(origins.shape[0], latent_size) if latent_size else None
    query = FieldQuery(field=field, latent=latent)
    grid = OccupancyGrid(resolution=16)
    grid.refresh(field, latent=None if latent is None else latent[:1])
    assert 0.05 < grid.occupied_fraction < 0.9
    return query, grid, origins, directions, near, far


@pytest.mark.parametrize(
    "n_steps, block, slots, padding",
    [(32, 4, 64, 0), (32, 1, 7, 5), (64, 8, 1000, 3), (48, 3, 1, 0), (64, 2, 4096, 1)],
    ids=["several-rounds", "tiny-slots-padding", "one-round", "one-slot", "round-sizes"],
)
def test_fixed_shape_march_finds_the_compacting_marchs_brackets(n_steps, block, slots, padding):
    query, grid, origins, directions, near, far = _scene()
    n_rays = origins.shape[0]
    ids = torch.arange(n_rays)
    spacing = (far - near) / (n_steps - 1)
    with torch.no_grad():
        expected = root_finding._march_chunk_grid(
            query,
            root_finding._MarchRays(ids, origins, directions, near, spacing),
            root_finding._MarchSteps(n_steps, block, None, True),
            grid,
        )
        march = FixedShapeGridMarch(
            n_rays=n_rays + padding,
            n_steps=n_steps,
            block=block,
            slots=slots,
            device=origins.device,
            dtype=origins.dtype,
        )
        march.fill(origins=origins, directions=directions, near=near, spacing=spacing, ray_ids=ids)
        march.run(query, grid, check_finite=True)
    index, value, previous = (t[:n_rays] for t in (march.index, march.value, march.previous))
    hit = (expected.index > 0) & (expected.index < n_steps)
    assert int(hit.sum()) > 20
    assert torch.equal(index, expected.index)
    found = expected.index < n_steps
    torch.testing.assert_close(value[found], expected.value[found], rtol=0, atol=1e-6)
    # the value before the bracket: wherever the compacting march knew it, the same; known
    # at least as often here
    known = ~torch.isnan(expected.previous)
    torch.testing.assert_close(previous[known], expected.previous[known], rtol=0, atol=1e-6)
    assert int((~torch.isnan(previous[found])).sum()) >= int(known[found].sum())
    # and where it is known it is the value one step before the first inside sample
    now_known = found & ~torch.isnan(previous) & (index > 0)
    before = (near + spacing * (index - 1).clamp(min=0).to(near.dtype))[now_known]
    with torch.no_grad():
        truth = query(ids[now_known], origins[now_known], directions[now_known], before[:, None])
    torch.testing.assert_close(previous[now_known], truth[:, 0], rtol=0, atol=1e-6)
    assert bool(march.done.all()) and int(march.status[0]) == 0


def test_fixed_shape_march_with_latent_codes_and_bracket_values():
    query, grid, origins, directions, near, far = _scene(latent_size=3)
    n_rays, n_steps = origins.shape[0], 40
    spacing = (far - near) / (n_steps - 1)
    ids = torch.arange(n_rays)
    with torch.no_grad():
        expected = root_finding._march_chunk_grid(
            query,
            root_finding._MarchRays(ids, origins, directions, near, spacing),
            root_finding._MarchSteps(n_steps, 4, None, True),
            grid,
        )
        march = FixedShapeGridMarch(
            n_rays=n_rays + 2,
            n_steps=n_steps,
            block=4,
            slots=points_per_round(n_rays),
            device=origins.device,
            dtype=origins.dtype,
            latent_size=3,
        )
        # the march's own copy of the codes, looked up by its slot ids (what a graph does)
        inner = FieldQuery(field=query.field, latent=march.latent)
        march.fill(
            origins=origins,
            directions=directions,
            near=near,
            spacing=spacing,
            ray_ids=torch.arange(n_rays),
            latent=query.latent,
        )
        march.run(inner, grid, check_finite=True)
    assert torch.equal(march.index[:n_rays], expected.index)


def test_non_finite_field_values_are_reported():
    query, grid, origins, directions, near, far = _scene()

    def broken(ray_ids, o, w, lengths):
        values = query(ray_ids, o, w, lengths)
        return torch.where(ray_ids[:, None] % 2 == 0, math.nan, values)

    n_steps = 32
    march = FixedShapeGridMarch(
        n_rays=origins.shape[0],
        n_steps=n_steps,
        block=4,
        slots=64,
        device=origins.device,
        dtype=origins.dtype,
    )
    spacing = (far - near) / (n_steps - 1)
    march.fill(
        origins=origins,
        directions=directions,
        near=near,
        spacing=spacing,
        ray_ids=torch.arange(origins.shape[0]),
    )
    with torch.no_grad(), pytest.raises(ValueError, match="non-finite"):
        march.run(broken, grid, check_finite=True)


def test_round_sizes():
    from dvr_plugin.accel.march_graphs import choose_slots, slot_levels

    assert slot_levels(16384) == [16384, 4096, 1024, 256]
    assert slot_levels(300) == [300]
    levels = slot_levels(16384)
    assert choose_slots(levels, 2500, 30000, 8) == 16384  # 20000 wanted: the largest
    assert choose_slots(levels, 400, 9000, 8) == 4096  # every active ray gets 8
    assert choose_slots(levels, 30, 1500, 8) == 4096  # few samples left: all of them
    assert choose_slots(levels, 3, 40, 8) == 256


def test_bad_sizes_and_cpu_support():
    with pytest.raises(ValueError, match="positive"):
        FixedShapeGridMarch(
            n_rays=0,
            n_steps=8,
            block=2,
            slots=4,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
    with pytest.raises(ValueError, match="min_bucket"):
        MarchGraphs(min_bucket=512, max_rays=256)
    graphs = MarchGraphs(min_bucket=64, max_rays=1024)
    assert [graphs.bucket(n) for n in (1, 64, 65, 1000, 5000)] == [64, 64, 128, 1024, 1024]
    query = FieldQuery(field=SphereMLPField(latent_size=0))
    assert not graphs.supports(query, torch.device("cpu"))
    assert points_per_round(10) == 40 and points_per_round(2**20) == 2**16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("latent_size", [0, 4])
def test_recorded_march_matches_eager_on_cuda(latent_size):
    torch.manual_seed(0)
    field = SphereMLPField(latent_size=latent_size).cuda()
    latent = torch.randn(2, latent_size, device="cuda") if latent_size else None
    R, T = look_at_view_transform(dist=1.6, elev=10.0, azim=torch.tensor([30.0, 120.0]))
    cameras = FoVPerspectiveCameras(R=R, T=T, fov=40.0, device="cuda")
    grid = OccupancyGrid(resolution=32).cuda()
    grid.refresh(field, latent=None if latent is None else latent[:1])
    if latent is not None:
        latent = latent[:1].expand(2, -1).contiguous()  # the grid describes one code

    def renderer(graphs):
        return DVRRenderer.for_images(
            field=field,
            image_size=48,
            n_steps=64,
            occupancy_grid=grid,
            cuda_graphs=graphs,
            march_precision="float32",
        )

    eager, graphed = renderer(False), renderer(True)
    optimizer = torch.optim.SGD(field.parameters(), lr=1e-3)
    for _ in range(3):
        assert_same_surfaces(eager, graphed, cameras, latent)
        # gradients through the graphed route match the eager ones
        grads = []
        for model in (eager, graphed):
            out = model(cameras, latent=latent)
            loss = (out.depths * out.masks).sum() / out.masks.sum() + out.images.mean()
            optimizer.zero_grad()
            loss.backward()
            grads.append([p.grad.clone() for p in field.parameters()])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # depths agree to 1e-5
        optimizer.step()  # in place: the graphs must read the new values
        grid.refresh(field, latent=None if latent is None else latent[:1])
    march_graphs = graphed.raysampler._march_graphs
    assert march_graphs.recordings >= 1 and march_graphs.rounds >= 3
