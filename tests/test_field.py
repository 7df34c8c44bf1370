"""OccupancyTextureField and the field protocol."""

from __future__ import annotations

import pytest
import torch

from dvr_plugin.fields.field import OccupancyTextureField, evaluate_field
from tests.core_factories import (
    check_forward_with_tangent,
    tangent_test_field,
    tangent_test_inputs,
)


def test_shapes_and_heads():
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=32, n_blocks=3, latent_size=5)
    points, latent = torch.rand(2, 7, 3), torch.randn(2, 5)
    out = field(points, latent)
    assert out.values.shape == (2, 7) and out.rgb.shape == (2, 7, 3)
    assert float(out.rgb.min()) > 0 and float(out.rgb.max()) < 1
    geometry_only = OccupancyTextureField(hidden_size=8, rgb=False)
    assert geometry_only(points).rgb is None
    with pytest.raises(ValueError, match="latent"):
        field(points)
    with pytest.raises(ValueError, match="latent must have shape"):
        field(points, torch.randn(3, 5))


def test_latent_is_added_before_every_block():
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=16, n_blocks=2, latent_size=4)
    points = torch.rand(1, 5, 3)
    base = field(points, torch.zeros(1, 4)).values
    moved = field(points, torch.ones(1, 4)).values
    assert not torch.allclose(base, moved)
    # with fc1 zero-initialised, each block is the identity plus the latent projection
    net = field.fc_in(points)
    for projection in field.fc_latent:
        net = net + projection(torch.ones(1, 4))[:, None]
    expected = field.fc_out(torch.relu(net))[..., 0]
    torch.testing.assert_close(moved, expected)


def test_residual_blocks_start_as_identity():
    field = OccupancyTextureField(hidden_size=16, n_blocks=4)
    for block in field.blocks:
        assert float(block.fc1.weight.abs().sum()) == 0.0


def test_sdf_field_starts_as_a_sphere():
    field = OccupancyTextureField(hidden_size=16, field_type="sdf", geometric_init_radius=0.3)
    points = torch.nn.functional.normalize(torch.randn(1, 50, 3), dim=-1) * 0.3
    assert float(field(points).values.abs().max()) < 1e-2


def test_fourier_features():
    field = OccupancyTextureField(hidden_size=16, n_frequencies=4)
    assert field.fc_in.in_features == 3 + 6 * 4
    assert field(torch.rand(1, 3, 3)).values.shape == (1, 3)


def test_protocol_accepts_plain_tensors_and_checks_shapes():
    points = torch.rand(2, 4, 3)
    values = evaluate_field(lambda p: p[..., 0], points).values
    assert values.shape == (2, 4)
    values = evaluate_field(lambda p: p[..., :1], points).values
    assert values.shape == (2, 4)
    with pytest.raises(ValueError, match="values of shape"):
        evaluate_field(lambda p: p, points)
    with pytest.raises(ValueError, match="rgb of shape"):
        evaluate_field(lambda p: (p[..., 0], p[..., :2]), points)
    with pytest.raises(ValueError, match="pair"):
        evaluate_field(lambda p: "nope", points)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="field_type"):
        OccupancyTextureField(field_type="density")
    with pytest.raises(ValueError, match="hidden_size"):
        OccupancyTextureField(hidden_size=0)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
@pytest.mark.parametrize("latent_size", [0, 5])
@pytest.mark.parametrize("n_frequencies", [0, 3])
def test_forward_with_tangent_matches_forward_mode_ad(field_type, latent_size, n_frequencies):
    """The stacked value + tangent pass: the same outputs as forward, the same derivatives as
    torch's forward-mode AD, and the same parameter gradients through the values."""

    field = tangent_test_field(
        latent_size=latent_size, field_type=field_type, n_frequencies=n_frequencies
    )
    points, tangents = tangent_test_inputs()
    latent = torch.randn(2, latent_size, dtype=torch.float64) if latent_size else None
    _, values_tangent = check_forward_with_tangent(field, points, tangents, latent)
    assert float(values_tangent.detach().abs().max()) > 1e-3
    with pytest.raises(ValueError, match="tangents"):
        field.forward_with_tangent(points, tangents[:, :3], latent)
