"""
Shared builders for the render-core and data tests (seeded, CPU by default), imported as a
module.

Frame and units: world coordinates in the unit cube's units (the sphere of radius 0.3 at the
origin), rays from around (0, 0, 1.5) with unit z steps, so lengths are z-depths.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform
from torch import nn

from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS, FieldOutput, OccupancyTextureField
from dvr_plugin.renderer.implicit_gradient import attach_implicit_gradient
from dvr_plugin.renderer.rays import intersect_box, ndc_grid, rays_from_cameras
from dvr_plugin.surface.query import FieldQuery
from dvr_plugin.surface.root_finding import find_surface


class SphereMLPField(nn.Module):
    """
    A small MLP (with a latent code) added to a sphere, so it has a surface at any init.
    Occupancy: ``sharpness * (r - |p|) + mlp``; SDF: ``|p| - r + mlp``.
    """

    def __init__(self, *, field_type: str = "occupancy", latent_size: int = 4, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.field_type = field_type
        self.mlp = OccupancyTextureField(
            hidden_size=16, n_blocks=2, latent_size=latent_size, rgb=True
        )
        with torch.no_grad():
            for parameter in self.mlp.parameters():
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
        self.scale = 2.0 if field_type == "occupancy" else 0.02

    def forward(self, points: torch.Tensor, latent: Optional[torch.Tensor] = None) -> FieldOutput:
        out = self.mlp(points, latent)
        radius = points.norm(dim=-1)
        if self.field_type == "occupancy":
            values = 20.0 * (0.3 - radius) + self.scale * out.values
        else:
            values = radius - 0.3 + self.scale * out.values
        return FieldOutput(values, out.rgb)


class PointCounter(nn.Module):
    """Wraps a field; ``largest`` is the largest number of points ``B * P`` of one call."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.largest = 0

    def forward(self, points: torch.Tensor, latent: Optional[torch.Tensor] = None) -> FieldOutput:
        self.largest = max(self.largest, points.shape[0] * points.shape[1])
        return self.field(points, latent)


def finite_difference(evaluate, tensor: torch.Tensor, index, step: float = 1e-6) -> float:
    """
    The central difference ``(f(x + h) - f(x - h)) / 2h`` of the scalar ``evaluate()`` in the
    entry ``index`` of ``tensor`` (changed in place and restored).
    """
    with torch.no_grad():
        original = tensor[index].item()
        tensor[index] = original + step
        plus = evaluate().item()
        tensor[index] = original - step
        minus = evaluate().item()
        tensor[index] = original
    return (plus - minus) / (2 * step)


def check_parameter_gradients(
    model: nn.Module,
    loss,
    *,
    per_parameter: int,
    generator: torch.Generator,
    abs_tol: float,
    skip: tuple = (),
) -> list[str]:
    """
    Assert that the gradients already in ``model``'s parameters (from a backward pass of
    ``loss()``) match central finite differences of ``loss()`` at ``per_parameter`` random
    entries of every parameter (``rel=1e-5``, ``abs=abs_tol``), parameters in ``skip`` aside.

    Returns:
        the parameter name of every entry checked.
    """
    checked = []
    for name, parameter in model.named_parameters():
        if any(parameter is other for other in skip):
            continue
        flat = parameter.data.view(-1)
        for i in torch.randperm(flat.numel(), generator=generator)[:per_parameter].tolist():
            numeric = finite_difference(loss, flat, i)
            analytic = parameter.grad.view(-1)[i].item()
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=abs_tol), name
            checked.append(name)
    return checked


def box_rays(size: int, *, elevation: float = 25.0, azimuth: float = 30.0):
    """
    The rays of a ``size`` x ``size`` view from distance 1.5 (field of view 45 degrees) that
    meet the padded unit cube: `(M, 3)` origins and directions, `(M,)` near and far depths.
    """
    rotation, translation = look_at_view_transform(1.5, elevation, azimuth)
    cameras = FoVPerspectiveCameras(R=rotation, T=translation, fov=45.0)
    origins, directions = rays_from_cameras(cameras, ndc_grid((size, size))[None])
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    box = torch.tensor(UNIT_CUBE_BOUNDS)
    near, far, missed = intersect_box(origins, directions, box[0], box[1])
    keep = ~missed
    return origins[keep], directions[keep], near[keep], far[keep]


def sphere_views(cameras, image_size: tuple[int, int], radius: float):
    """
    Exact views of the sphere of ``radius`` at the origin through every pixel centre of ``N``
    cameras: `(N, H, W)` bool hits, `(N, H, W)` z-depths (0 where missed) and `(N, H, W, 3)`
    surface points (the ray origins where missed).
    """
    xys = ndc_grid(image_size)[None].expand(len(cameras), -1, -1, -1)
    origins, directions = rays_from_cameras(cameras, xys)
    a = (directions * directions).sum(-1)
    b = 2.0 * (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - 4 * a * c
    hit = disc > 0
    depth = torch.where(hit, (-b - disc.clamp_min(0).sqrt()) / (2 * a), torch.zeros_like(a))
    return hit, depth, origins + depth[..., None] * directions


def grid_points(half: float = 0.55, steps: int = 14) -> torch.Tensor:
    """`(steps^3, 3)` points of a regular grid over the cube ``[-half, half]^3``."""
    axis = torch.linspace(-half, half, steps)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def mask_consistency(data, points: torch.Tensor) -> list[float]:
    """
    For each view of a ``MultiViewData``: the share of the other views' visual hull (of
    `(P, 3)` normalised points) that lands in its mask. A check against gross errors (masks
    paired with the wrong camera, flipped axes), not sub-pixel ones.
    """
    in_mask, in_image = data.lookup_masks(points)
    shares = []
    for i in range(len(data)):
        others = [j for j in range(len(data)) if j != i]
        seen = in_image[others]
        hull = (in_mask[others] | ~seen).all(0) & (seen.sum(0) == len(others))
        shares.append(float(in_mask[i][hull].float().mean()))
    return shares


def rays_towards_centre(
    n_rays: int, *, seed: int = 0, dtype: torch.dtype = torch.float64, spread: float = 0.1
):
    """`(n, 3)` origins around (0, 0, 1.5) and `(n, 3)` directions at points near the centre."""
    generator = torch.Generator().manual_seed(seed)
    origins = torch.tensor([0.0, 0.0, 1.5], dtype=dtype) + 0.1 * torch.randn(
        n_rays, 3, generator=generator, dtype=dtype
    )
    targets = spread * (2 * torch.rand(n_rays, 3, generator=generator, dtype=dtype) - 1)
    directions = targets - origins
    directions = directions / directions[:, 2:].abs()  # unit z step, like camera rays
    return origins, directions


def surface_depth(
    field,
    origins: torch.Tensor,
    directions: torch.Tensor,
    *,
    latent: Optional[torch.Tensor] = None,
    n_steps: int = 64,
    n_secant_steps: int = 40,
    features: bool = False,
):
    """
    Root finder + implicit gradient on explicit rays: `(M,)` depth and `(M,)` hit (and, with
    ``features``, the `(M, 3)` colours from the same evaluation).
    """
    query = FieldQuery(field=field, latent=latent)
    box = torch.tensor(UNIT_CUBE_BOUNDS, dtype=origins.dtype)
    near, far, missed = intersect_box(origins.detach(), directions.detach(), box[0], box[1])
    search = find_surface(
        query,
        origins.detach(),
        directions.detach(),
        near,
        far,
        n_steps=n_steps,
        n_secant_steps=n_secant_steps,
        chunk_size=None,
    )
    geometry = attach_implicit_gradient(
        query,
        origins,
        directions,
        search.depth,
        search.hit & ~missed,
        compute_normals=False,
        return_features=features,
    )
    if features:
        assert geometry.features is not None
        return geometry.depth, search.hit & ~missed, geometry.features
    return geometry.depth, search.hit & ~missed


def same_hits(renderer, cameras, xys, step_counts):
    """The rays of ``xys`` `(1, R, 2)` whose hit flag is the same at all ``step_counts``."""
    with torch.no_grad():
        hits = [renderer(cameras, xys=xys, n_steps=n).masks[0] > 0 for n in step_counts]
    same = torch.stack(hits).all(0) | ~torch.stack(hits).any(0)
    assert int(same.sum()) > 0.8 * xys.shape[1] and bool(hits[0][same].any())
    return xys[:, same]


def saved_bytes(renderer, cameras, xys: torch.Tensor, n_steps: int) -> int:
    """The bytes autograd saves for backward in a training-like render of ``xys`` (and run
    that backward): the memory a step needs beyond its outputs."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = renderer(cameras, xys=xys, n_steps=n_steps)
        loss = (out.depths - 1.4).abs().mean() + out.images.mean()
    loss.backward()
    return total


def assert_same_surfaces(eager, graphed, cameras, latent=None) -> None:
    """Without gradients, ``graphed`` finds the hits (over 100) of ``eager`` and its depths
    to 1e-5."""
    with torch.no_grad():
        want = eager(cameras, latent=latent)
        got = graphed(cameras, latent=latent)
    assert int(want.hit.sum()) > 100
    assert torch.equal(want.hit, got.hit)
    assert float((want.depths - got.depths)[want.hit].abs().max()) < 1e-5


def tangent_test_field(**kwargs) -> OccupancyTextureField:
    """
    A float64 ``OccupancyTextureField(hidden_size=16, n_blocks=2, **kwargs)`` built after
    ``torch.manual_seed(0)``, every parameter drawn from N(0, 0.4^2) so that every layer counts
    (the default initialisation zeroes ``fc1``): the field of the tangent checks.
    """
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=16, n_blocks=2, **kwargs).double()
    for parameter in field.parameters():
        torch.nn.init.normal_(parameter, std=0.4)
    return field


def tangent_test_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """``(points, tangents)``, `(2, 7, 3)` float64 each, from the global generator: points
    uniform in the unit cube, tangents standard normal."""
    points = torch.rand(2, 7, 3, dtype=torch.float64) - 0.5
    tangents = torch.randn(2, 7, 3, dtype=torch.float64)
    return points, tangents


def check_forward_with_tangent(field, points, tangents, latent=None):
    """
    Assert that ``field.forward_with_tangent`` agrees with the plain forward pass (values and
    colours), with PyTorch's forward-mode AD (directional derivatives) and in the parameter
    gradients it gives; float64 tolerances. Returns ``(plain output, values tangent)``.
    """
    from torch.autograd import forward_ad

    out, derivative = field.forward_with_tangent(points, tangents, latent)
    plain = field(points, latent)
    torch.testing.assert_close(out.values, plain.values, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.rgb, plain.rgb, rtol=0, atol=1e-12)
    with forward_ad.dual_level():
        dual = field(forward_ad.make_dual(points, tangents), latent)
        values_tangent = forward_ad.unpack_dual(dual.values).tangent
        rgb_tangent = forward_ad.unpack_dual(dual.rgb).tangent
    torch.testing.assert_close(derivative.values, values_tangent, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(derivative.rgb, rgb_tangent, rtol=1e-10, atol=1e-12)
    grads = []
    for outputs in (out, plain):
        field.zero_grad()
        (outputs.values.sum() + (outputs.rgb * 1.7).sum()).backward(retain_graph=True)
        grads.append([p.grad.clone() for p in field.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    return plain, values_tangent
