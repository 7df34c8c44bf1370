"""
Shared builders for the render-core tests (seeded, CPU by default), imported as a module.

Frame and units: world coordinates in the unit cube's units (the sphere of radius 0.3 at the
origin), rays from around (0, 0, 1.5) with unit z steps, so lengths are z-depths.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS, FieldOutput, OccupancyTextureField
from dvr_plugin.renderer.implicit_gradient import attach_implicit_gradient
from dvr_plugin.renderer.rays import intersect_box
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
        query, origins, directions, search.depth, search.hit & ~missed, compute_normals=False,
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
