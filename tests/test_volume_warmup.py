"""
The volume-rendering warm-up (``loss.volume``): NeuS's and UNISURF's opacities against analytic
surfaces, the compositing weights against a loop, the loss against hand-computed values, its
schedule, its gradients against finite differences in float64 (plain and view-dependent fields),
and a short fit that logs it, fades it out and resumes step for step.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from dvr_plugin.engine.logs import read_csv
from dvr_plugin.engine.losses import LossWeights
from dvr_plugin.engine.volume_warmup import (
    VolumeRender,
    composite_weights,
    volume_alpha,
    volume_loss,
    volume_render_rays,
    volume_schedule,
)
from dvr_plugin.fields.appearance import RenderingNetwork, ViewDependentField
from dvr_plugin.fields.field import FieldOutput, OccupancyTextureField
from dvr_plugin.training.config import FitConfig
from dvr_plugin.training.trainer import Trainer
from tests.core_factories import check_parameter_gradients
from tests.training_factories import TrainingFactory


class PlaneField(torch.nn.Module):
    """The signed distance to the plane ``z = height`` (inside below it) with a colour that
    changes with ``x`` (``rgb = (x, 0.5, 1 - x)`` clamped)."""

    field_type = "sdf"

    def __init__(self, height: float) -> None:
        super().__init__()
        self.height = height

    def forward(self, points, latent=None):
        x = points[..., 0].clamp(0, 1)
        rgb = torch.stack([x, torch.full_like(x, 0.5), 1 - x], dim=-1)
        return FieldOutput(points[..., 2] - self.height, rgb)


def downward_rays(xs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(1, R, 3)` rays from ``z = 1`` straight down at the given ``x``."""
    origins = torch.tensor([[[x, 0.0, 1.0] for x in xs]], dtype=torch.float64)
    directions = torch.tensor([[[0.0, 0.0, -1.0]] * len(xs)], dtype=torch.float64)
    return origins, directions


def test_sdf_opacity_puts_the_ray_on_the_plane():
    origins, directions = downward_rays([0.2, 0.7])
    near = torch.zeros(1, 2, dtype=torch.float64)
    far = torch.full((1, 2), 2.0, dtype=torch.float64)
    select = torch.ones(1, 2, dtype=torch.bool)
    render = volume_render_rays(
        PlaneField(0.1), origins, directions, near, far, select, n_samples=200, sharpness=2000.0
    )
    depth = (render.weights * render.depths).sum(-1)
    assert torch.allclose(render.opacity, torch.ones(1, 2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(depth, torch.full((1, 2), 0.9, dtype=torch.float64), atol=0.01)
    expected = torch.tensor([[0.2, 0.5, 0.8], [0.7, 0.5, 0.3]], dtype=torch.float64)
    assert torch.allclose(render.rgb[0], expected, atol=1e-6)
    assert torch.all(render.weights[..., -1] == 0)  # the last sample closes no section

    # the plane below the box's far end: the ray stays outside and is clear
    clear = volume_render_rays(
        PlaneField(-2.0), origins, directions, near, far, select, n_samples=200, sharpness=2000.0
    )
    assert float(clear.opacity.max()) < 1e-6


def test_unselected_rays_stay_empty_and_bad_ranges_are_refused():
    origins, directions = downward_rays([0.2, 0.7])
    near = torch.zeros(1, 2, dtype=torch.float64)
    far = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    select = torch.tensor([[True, False]])
    render = volume_render_rays(
        PlaneField(0.1), origins, directions, near, far, select, n_samples=8, sharpness=50.0
    )
    assert float(render.opacity[0, 1]) == 0 and torch.all(render.rgb[0, 1] == 0)
    with pytest.raises(ValueError, match="no depth range"):
        volume_render_rays(
            PlaneField(0.1), origins, directions, near, far, torch.ones_like(select),
            n_samples=8, sharpness=50.0,
        )
    with pytest.raises(ValueError, match="n_samples"):
        volume_render_rays(
            PlaneField(0.1), origins, directions, near, far, select, n_samples=0, sharpness=50.0
        )


def test_occupancy_opacity_is_unisurf_and_sdf_opacity_is_neus():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(volume_alpha(logits, field_type="occupancy", sharpness=1.0),
                          torch.sigmoid(logits))
    sdf = torch.tensor([0.3, 0.1, -0.2, -0.4])
    s = 10.0
    phi = [1 / (1 + math.exp(-s * v)) for v in sdf.tolist()]
    expected = [max(0.0, (phi[i] - phi[i + 1]) / phi[i]) for i in range(3)] + [0.0]
    assert torch.allclose(volume_alpha(sdf, field_type="sdf", sharpness=s),
                          torch.tensor(expected), atol=1e-6)
    # leaving the object (distance rising) is clear, not negative
    assert float(volume_alpha(sdf.flip(0), field_type="sdf", sharpness=s)[:3].max()) == 0
    with pytest.raises(ValueError, match="sharpness"):
        volume_alpha(sdf, field_type="sdf", sharpness=0.0)
    with pytest.raises(ValueError):
        volume_alpha(sdf, field_type="density", sharpness=1.0)


def test_compositing_weights_match_a_loop():
    alpha = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = composite_weights(alpha)
    for index in [(0, 0), (1, 3), (2, 4)]:
        clear = 1.0
        for i in range(7):
            expected = float(alpha[index][i]) * clear
            assert float(weights[index][i]) == pytest.approx(expected, rel=1e-12)
            clear *= 1.0 - float(alpha[index][i])
    assert torch.all(weights.sum(-1) <= 1 + 1e-12)


def test_loss_against_hand_computed_values():
    rgb = torch.tensor([[[0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]]])
    opacity = torch.tensor([[0.75, 0.5, 0.25]])
    render = VolumeRender(rgb, opacity, torch.zeros(1, 3, 2), torch.zeros(1, 3, 2))
    gt = torch.tensor([[[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, False, True]])
    select = torch.tensor([[True, True, False]])
    # ray 0: colour 0.5 + 0 + 0.5 = 1, opacity |0.75 - 1| = 0.25; ray 1: outside, |0.5 - 0|
    assert float(volume_loss(render, gt, mask, select)) == pytest.approx(1.25 + 0.5)
    two = VolumeRender(rgb.repeat(2, 1, 1), opacity.repeat(2, 1), *[torch.zeros(2, 3, 2)] * 2)
    assert float(volume_loss(two, gt.repeat(2, 1, 1), mask.repeat(2, 1), select.repeat(2, 1))) \
        == pytest.approx(1.75)  # divided by the batch
    with pytest.raises(ValueError, match="must match"):
        volume_loss(render, gt[:, :2], mask, select)


def test_schedule_fades_the_weight_and_sharpens_geometrically():
    options = {"until": 100, "sharpness_start": 20.0, "sharpness_end": 320.0}
    assert volume_schedule(0, **options) == (1.0, 20.0)
    fade, sharpness = volume_schedule(50, **options)
    assert fade == pytest.approx(0.5) and sharpness == pytest.approx(80.0)
    assert volume_schedule(100, **options) == (0.0, pytest.approx(320.0))
    assert volume_schedule(500, **options)[0] == 0.0
    assert volume_schedule(500, until=0, sharpness_start=20.0, sharpness_end=320.0) == (1.0, 20.0)
    with pytest.raises(ValueError, match="sharpness_end"):
        volume_schedule(0, until=10, sharpness_start=1.0, sharpness_end=-1.0)


def test_schedule_fades_to_the_floor_and_keeps_the_end_sharpness():
    options = {"until": 100, "sharpness_start": 20.0, "sharpness_end": 320.0, "floor": 0.2}
    fade, sharpness = volume_schedule(50, **options)
    assert fade == pytest.approx(0.6) and sharpness == pytest.approx(80.0)
    for step in (100, 5000):
        fade, sharpness = volume_schedule(step, **options)
        assert fade == pytest.approx(0.2) and sharpness == pytest.approx(320.0)
    with pytest.raises(ValueError, match="floor must lie in"):
        volume_schedule(0, until=10, sharpness_start=1.0, sharpness_end=2.0, floor=1.5)


def _sphere_sdf_field(view_dependent: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    geometry = OccupancyTextureField(
        hidden_size=8, n_blocks=1, n_frequencies=1, field_type="sdf",
        geometric_init_radius=0.4, rgb=not view_dependent,
    )
    if view_dependent:
        appearance = RenderingNetwork(
            feature_size=8, hidden_size=8, n_layers=1, n_view_frequencies=1
        )
        return ViewDependentField(geometry=geometry, appearance=appearance).double()
    return geometry.double()


@pytest.mark.parametrize("view_dependent", [False, True])
def test_gradients_match_finite_differences(view_dependent):
    field = _sphere_sdf_field(view_dependent)
    generator = torch.Generator().manual_seed(1)
    origins = torch.tensor([[[0.05, 0.02, 1.5], [1.5, 0.1, 0.1], [0.3, 1.5, -0.2]]],
                           dtype=torch.float64)
    directions = -origins / origins.norm(dim=-1, keepdim=True)
    near = torch.full((1, 3), 0.5, dtype=torch.float64)
    far = torch.full((1, 3), 2.5, dtype=torch.float64)
    select = torch.ones(1, 3, dtype=torch.bool)
    offsets = torch.rand(1, 3, generator=generator, dtype=torch.float64)
    gt = torch.rand(1, 3, 3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])

    def loss():
        render = volume_render_rays(
            field, origins, directions, near, far, select,
            n_samples=24, sharpness=15.0, offsets=offsets,
        )
        return volume_loss(render, gt, mask, select)

    value = loss()
    assert value.item() > 0
    value.backward()
    checked = check_parameter_gradients(
        field, loss, per_parameter=3, generator=generator, abs_tol=1e-8
    )
    assert any("appearance" in name for name in checked) == view_dependent
    assert len(checked) >= 9


@pytest.mark.slow
def test_fit_logs_the_warm_up_fades_it_out_and_resumes(tmp_path):
    """A short SDF fit with the warm-up: the term is logged while it lasts and is gone once it
    has faded out, and a resumed run equals the uninterrupted one step for step."""
    data = TrainingFactory.sphere_views(n_views=8, image_size=16)
    train, val = data.split(every=4)
    overrides = {
        "model.field_type": "sdf",
        "model.geometric_init_radius": 0.3,
        "loss.eikonal": 0.1,
        "loss.freespace": 0.0,
        "loss.occupancy": 0.0,
        "loss.mask": 10.0,
        "loss.mask_samples": 8,
        "loss.volume": 1.0,
        "loss.volume_until": 8,
        "loss.volume_rays": 32,
        "loss.volume_samples": 16,
    }

    def trainer(folder: str, iterations: int, resume: bool = False) -> Trainer:
        config = TrainingFactory.config(**overrides, **{"train.iterations": iterations})
        return Trainer(
            config=config, train_data=train, val_data=val, out_dir=str(tmp_path / folder),
            resume=resume, progress=False,
        )

    trainer("a", 12).fit()
    log = read_csv(os.path.join(tmp_path, "a", "train_log.csv"))
    volume = dict(zip(log["step"], log["volume"], strict=True))
    assert all(math.isfinite(volume[step]) and volume[step] > 0 for step in range(1, 9))
    assert all(math.isnan(volume[step]) for step in range(9, 13))

    trainer("b", 5).fit()
    torch.manual_seed(4321)
    trainer("b", 12, resume=True).fit()
    log_b = read_csv(os.path.join(tmp_path, "b", "train_log.csv"))
    assert log["step"] == log_b["step"]
    for name in ("loss", "volume"):  # the same values, the faded-out steps NaN in both
        assert [str(v) for v in log[name]] == [str(v) for v in log_b[name]], name

    overrides["loss.volume_floor"] = 0.25  # kept on at a quarter of its weight after step 8
    trainer("c", 12).fit()
    log_c = read_csv(os.path.join(tmp_path, "c", "train_log.csv"))
    assert all(math.isfinite(value) and value > 0 for value in log_c["volume"])


def test_config_defaults_and_errors():
    config = FitConfig()
    assert config.loss.volume == 0 and LossWeights().volume == 0
    assert config.loss.weights().volume == 0
    for key, value, match in [
        ("volume_until", -1, "volume_until"),
        ("volume_floor", 1.5, "volume_floor"),
        ("volume_rays", 0, "volume_rays"),
        ("volume_samples", 0, "volume_samples"),
        ("volume_sharpness_start", 0.0, "volume_sharpness_start"),
        ("volume", -1.0, "volume"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainingFactory.config(**{f"loss.{key}": value})
