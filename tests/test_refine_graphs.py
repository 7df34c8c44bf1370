"""CUDA graphs of the secant refinement: the recorded body on CPU, the graphs on CUDA."""

from __future__ import annotations

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

from dvr_plugin.accel.graph_cache import fill_padded
from dvr_plugin.accel.refine_graphs import RefinementGraphs
from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.surface.query import FieldQuery
from dvr_plugin.surface.secant import refine_brackets

from .core_factories import SphereMLPField, assert_same_surfaces, rays_towards_centre


def _brackets(field, latent, n_rays, *, dtype=torch.float64):
    """Rays towards a sphere-like field and a bracket of its first crossing on each."""
    origins, directions = rays_towards_centre(n_rays, dtype=dtype)
    query = FieldQuery(field=field, latent=latent)
    ids = torch.arange(n_rays)
    # the sphere of radius 0.3 around the origin: outside at depth 1.0, inside at depth 1.5
    ends_d = torch.tensor([1.0, 1.5], dtype=dtype).expand(n_rays, 2).clone()
    with torch.no_grad():
        ends_s = query(ids, origins, directions, ends_d)
    keep = (ends_s[:, 0] <= 0) & (ends_s[:, 1] > 0)
    assert int(keep.sum()) > n_rays // 2
    return query, ids[keep], origins[keep], directions[keep], ends_d[keep], ends_s[keep]


def test_bucket_sizes():
    graphs = RefinementGraphs(min_bucket=64)
    assert [graphs.bucket(n) for n in (1, 64, 65, 300, 1024)] == [64, 64, 128, 512, 1024]
    assert [graphs.bucket(n) for n in (1025, 2100, 8000, 9000)] == [2048, 3072, 8192, 16384]
    with pytest.raises(ValueError, match="min_bucket"):
        RefinementGraphs(min_bucket=0)


@pytest.mark.parametrize("latent_size", [0, 4])
def test_recorded_body_matches_eager_refinement_with_padding(latent_size):
    """What a graph records (padded buffers, latent rows re-bound to the padded rays)."""
    field = SphereMLPField(latent_size=latent_size).double()
    n_rays = 37
    latent = None
    if latent_size:
        latent = torch.randn(n_rays, latent_size, dtype=torch.float64)
    query, ids, origins, directions, ends_d, ends_s = _brackets(field, latent, n_rays)
    n_rays = ids.shape[0]
    low, high = ends_d[:, 0] - 0.01, ends_d[:, 1] + 0.01
    with torch.no_grad():
        expected = refine_brackets(
            query,
            ids,
            origins,
            directions,
            ends_d[:, 0],
            ends_s[:, 0],
            ends_d[:, 1],
            ends_s[:, 1],
            8,
            True,
            low=low,
            high=high,
        )
        bracket = dict(ends_d=ends_d, ends_s=ends_s, low=low, high=high)
        arrays = dict(origins=origins, directions=directions, **bracket)
        if latent is not None:
            arrays["latent"] = latent[ids]
        bucket = RefinementGraphs(min_bucket=64).bucket(n_rays)
        buffers = {k: v.new_full((bucket, *v.shape[1:]), float("nan")) for k, v in arrays.items()}
        fill_padded(buffers, arrays, n_rays)
        assert bool(torch.isfinite(buffers["origins"]).all())  # the padding is filled too
        result = RefinementGraphs._run(query, buffers, 8, "float32")
    assert result.shape == (bucket,)
    torch.testing.assert_close(result[:n_rays], expected, rtol=0, atol=1e-12)
    # the surface was found: the field is at its level there
    with torch.no_grad():
        at = query(ids, origins, directions, result[:n_rays, None])[:, 0]
    assert float(at.abs().max()) < 1e-6


def test_cpu_renderer_ignores_the_option():
    field = SphereMLPField(latent_size=0)
    R, T = look_at_view_transform(dist=1.6, elev=10.0, azim=30.0)
    cameras = FoVPerspectiveCameras(R=R, T=T, fov=40.0)
    depths = []
    for graphs in (False, True):
        sampler = SecantRaysampler(image_width=24, image_height=24, n_steps=32, cuda_graphs=graphs)
        with torch.no_grad():
            depths.append(DVRRenderer(field=field, raysampler=sampler)(cameras).depths)
    torch.testing.assert_close(depths[0], depths[1], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphs_match_eager_on_cuda_and_follow_parameter_updates():
    torch.manual_seed(0)
    field = SphereMLPField(latent_size=4).cuda()
    latent = torch.randn(2, 4, device="cuda")
    R, T = look_at_view_transform(dist=1.6, elev=10.0, azim=torch.tensor([30.0, 120.0]))
    cameras = FoVPerspectiveCameras(R=R, T=T, fov=40.0, device="cuda")
    eager = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(image_width=48, image_height=48, n_steps=64),
    )
    graphed = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(image_width=48, image_height=48, n_steps=64, cuda_graphs=True),
    )
    optimizer = torch.optim.SGD(field.parameters(), lr=1e-3)
    for _ in range(3):
        assert_same_surfaces(eager, graphed, cameras, latent)
        # an in-place update of the parameters: the graphs must read the new values
        out = eager(cameras, latent=latent)
        loss = (out.depths * out.masks).sum() / out.masks.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    graphs = graphed.raysampler._refine_graphs
    assert graphs.replays >= 3
    assert graphs.recordings <= 2  # one bucket (maybe two as the hit count changes)
