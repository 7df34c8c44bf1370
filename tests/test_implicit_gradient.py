"""The implicit depth gradient against central finite differences of the whole root finder."""

from __future__ import annotations

import pytest
import torch

from dvr_plugin.fields.shapes import SphereField
from dvr_plugin.renderer.implicit_gradient import guard_denominator
from tests.core_factories import (
    SphereMLPField,
    check_parameter_gradients,
    finite_difference,
    rays_towards_centre,
    surface_depth,
)

torch.manual_seed(0)


def _weights(n: int) -> torch.Tensor:
    return torch.linspace(0.5, 1.5, n, dtype=torch.float64)


def _loss(field, origins, directions, latent=None) -> torch.Tensor:
    depth, hit = surface_depth(field, origins, directions, latent=latent)
    assert bool(hit.all()), "the test rays must all hit"
    return (_weights(depth.shape[0]) * depth).sum()


def _check_parameters(field, origins, directions, latent=None, n_entries: int = 4) -> int:
    field.zero_grad()
    _loss(field, origins, directions, latent).backward()
    checked = check_parameter_gradients(
        field,
        lambda: _loss(field, origins, directions, latent),
        per_parameter=n_entries,
        generator=torch.Generator().manual_seed(1),
        abs_tol=1e-7,
    )
    return len(checked)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_sphere_parameters(field_type):
    field = SphereField(centre=(0.02, -0.03, 0.01), radius=0.3, field_type=field_type).double()
    origins, directions = rays_towards_centre(6)
    assert _check_parameters(field, origins, directions, n_entries=3) == 4
    # the closed form: a larger radius moves every hit towards the camera
    assert bool((field.radius.grad < 0).all())


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_mlp_parameters_and_latent(field_type):
    field = SphereMLPField(field_type=field_type).double()
    origins, directions = rays_towards_centre(5, seed=2)
    seeded = torch.Generator().manual_seed(3)
    latent_rows = torch.randn(1, 4, dtype=torch.float64, generator=seeded)
    latent = latent_rows.expand(5, 4).clone().requires_grad_(True)
    assert _check_parameters(field, origins, directions, latent) > 10
    latent.grad = None
    _loss(field, origins, directions, latent).backward()
    for i in range(5):
        for j in range(4):
            numeric = finite_difference(
                lambda: _loss(field, origins, directions, latent.detach()), latent.data, (i, j)
            )
            assert latent.grad[i, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
@pytest.mark.parametrize("which", ["origins", "directions"])
def test_ray_origins_and_directions(field_type, which):
    field = SphereMLPField(field_type=field_type, latent_size=0).double()
    origins, directions = rays_towards_centre(4, seed=3)
    tensor = (origins if which == "origins" else directions).clone().requires_grad_(True)

    def loss(t):
        if which == "origins":
            return _loss(field, t, directions)
        return _loss(field, origins, t)

    loss(tensor).backward()
    for i in range(4):
        for j in range(3):
            numeric = finite_difference(lambda: loss(tensor.detach()), tensor.data, (i, j))
            assert tensor.grad[i, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_camera_parameters_receive_gradients():
    """PyTorch3D cameras compute in float32, so this check uses float32 and a wider step."""
    from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

    from dvr_plugin.renderer.raysampler import SecantRaysampler

    field = SphereMLPField(latent_size=0)
    rotation, translation = look_at_view_transform(1.6, 20.0, 30.0)
    translation = translation.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(4)
    xys = 0.2 * (2 * torch.rand(1, 6, 2, generator=generator) - 1)
    sampler = SecantRaysampler(n_steps=64, n_secant_steps=20, chunk_size=None)
    weights = _weights(6).float()

    def loss(t):
        cameras = FoVPerspectiveCameras(R=rotation, T=t, fov=50.0)
        bundle = sampler(cameras=cameras, field=field, xys=xys)
        assert bool(bundle.hit.all())
        return (bundle.lengths[..., 0] * weights).sum()

    loss(translation).backward()
    step = 1e-3
    for j in range(3):
        with torch.no_grad():
            plus, minus = translation.detach().clone(), translation.detach().clone()
            plus[0, j] += step
            minus[0, j] -= step
            numeric = (loss(plus) - loss(minus)).item() / (2 * step)
        assert translation.grad[0, j].item() == pytest.approx(numeric, rel=2e-3, abs=2e-3)


def test_guard_keeps_sign():
    values = torch.tensor([-1e-9, 0.0, 1e-9, -0.5, 0.5])
    guarded = guard_denominator(values, 1e-4)
    assert guarded.tolist() == pytest.approx([-1e-4, 1e-4, 1e-4, -0.5, 0.5])


def _colour_loss(field, origins, directions, latent=None, *, single=True) -> torch.Tensor:
    """Depth and colour at the surface: from one evaluation (``single``), or the colour
    evaluated a second time at ``o + d w`` (the two-evaluation reference)."""
    if single and torch.is_grad_enabled():  # (finite differences run without gradients)
        depth, hit, rgb = surface_depth(field, origins, directions, latent=latent, features=True)
    else:
        depth, hit = surface_depth(field, origins, directions, latent=latent)
        points = origins + depth[:, None] * directions
        rgb = field(points[:, None, :], latent).rgb[:, 0]
    assert bool(hit.all()), "the test rays must all hit"
    n = depth.shape[0]
    colour_weights = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    return (_weights(n) * depth).sum() + (_weights(n)[:, None] * rgb * colour_weights).sum()


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_colour_from_the_implicit_evaluation_matches_finite_differences(field_type):
    """One evaluation with forward-mode AD gives the colour's gradient through the depth."""
    field = SphereMLPField(field_type=field_type).double()
    origins, directions = rays_towards_centre(5, seed=5)
    seeded = torch.Generator().manual_seed(4)
    latent = torch.randn(1, 4, dtype=torch.float64, generator=seeded).expand(5, 4).clone()
    latent.requires_grad_(True)
    origins.requires_grad_(True)
    directions.requires_grad_(True)
    field.zero_grad()
    _colour_loss(field, origins, directions, latent).backward()
    checked = check_parameter_gradients(
        field,
        lambda: _colour_loss(field, origins.detach(), directions.detach(), latent.detach()),
        per_parameter=3,
        generator=torch.Generator().manual_seed(6),
        abs_tol=1e-7,
    )
    assert len(checked) > 10
    for tensor in (latent, origins, directions):
        for index in [(0, 0), (2, 1), (4, 2)]:
            if index[1] >= tensor.shape[1]:
                continue
            numeric = finite_difference(
                lambda: _colour_loss(field, origins.detach(), directions.detach(), latent.detach()),
                tensor.data,
                index,
            )
            assert tensor.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_colour_from_one_evaluation_equals_two_evaluations():
    field = SphereMLPField(latent_size=0).double()
    origins, directions = rays_towards_centre(7, seed=7)
    grads = []
    for single in (True, False):
        o = origins.clone().requires_grad_(True)
        w = directions.clone().requires_grad_(True)
        field.zero_grad()
        loss = _colour_loss(field, o, w, single=single)
        loss.backward()
        grads.append([loss.detach(), o.grad, w.grad, *(p.grad.clone() for p in field.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
