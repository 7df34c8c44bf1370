"""
Geometry terms for real captures: coarse-to-fine Fourier features, the sphere initialisation,
the eikonal term and IDR's soft mask loss, alone and wired into the trainer (CPU, seeded).

Scene units: the unit cube ``[-0.5, 0.5]^3``; cameras at distance 2 looking at the origin.
"""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
from torch import nn

from dvr_plugin.data import MultiViewData, cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.engine.logs import read_csv
from dvr_plugin.engine.losses import (
    LossWeights,
    eikonal_loss,
    eikonal_penalty,
    min_outside_along_rays,
    soft_mask_alpha,
    soft_mask_loss,
)
from dvr_plugin.fields.field import (
    FieldOutput,
    FourierFeatures,
    OccupancyTextureField,
    fourier_band_weights,
)
from dvr_plugin.fields.shapes import SphereField
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.training.config import FitConfig, apply_overrides
from dvr_plugin.training.trainer import Trainer, build_field
from tests.core_factories import (
    check_forward_with_tangent,
    tangent_test_field,
    tangent_test_inputs,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread is as fast, and far faster when the cores are busy."""


# ----------------------------------------------------------------------------- annealing


def test_band_weights_follow_the_cosine_window():
    weights = fourier_band_weights(torch.tensor(1.5, dtype=torch.float64), 4)
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64))
    quarter = fourier_band_weights(torch.tensor(2.25, dtype=torch.float64), 3)
    expected = (1 - math.cos(math.pi * 0.25)) / 2
    torch.testing.assert_close(quarter, torch.tensor([1.0, 1.0, expected], dtype=torch.float64))
    assert float(fourier_band_weights(torch.tensor(0.0), 5).abs().max()) == 0.0
    assert bool((fourier_band_weights(torch.tensor(5.0), 5) == 1.0).all())


def test_annealed_encoding_fades_bands_in():
    points = torch.rand(2, 5, 3) - 0.5
    plain = FourierFeatures(n_frequencies=3)
    annealed = FourierFeatures(n_frequencies=3, anneal=True)
    start = annealed(points)  # progress 0: only the raw coordinates
    torch.testing.assert_close(start[..., :3], points)
    assert float(start[..., 3:].abs().max()) == 0.0
    annealed.set_progress(1.0)
    torch.testing.assert_close(annealed(points), plain(points), rtol=0, atol=0)
    # alpha = 0.5 * 3 = 1.5: band 0 full, band 1 at half weight, band 2 off
    annealed.set_progress(0.5)
    features = annealed(points)
    full = plain(points)
    sin, sin_full = features[..., 3:12].reshape(2, 5, 3, 3), full[..., 3:12].reshape(2, 5, 3, 3)
    torch.testing.assert_close(sin, sin_full * torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="progress"):
        annealed.set_progress(1.5)
    with pytest.raises(ValueError, match="without annealing"):
        plain.set_progress(0.5)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_annealed_forward_with_tangent_matches_forward(field_type):
    """At a partial progress the stacked value + tangent pass equals forward, its tangents
    equal forward-mode AD, and its parameter gradients equal those of forward."""
    field = tangent_test_field(
        n_frequencies=3, field_type=field_type, fourier_anneal=True, geometric_init_radius=0.3
    )
    field.set_encoding_progress(0.55)  # alpha = 1.65: one band on, one fading in, one off
    points, tangents = tangent_test_inputs()
    plain, _ = check_forward_with_tangent(field, points, tangents)
    # the progress changes the field: the fading band matters
    field.set_encoding_progress(1.0)
    assert float((field(points).values - plain.values).detach().abs().max()) > 1e-3


def test_annealing_progress_is_saved_with_the_model():
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=16, n_blocks=1, n_frequencies=4, fourier_anneal=True)
    field.set_encoding_progress(0.3)
    state = field.state_dict()
    assert float(state["encoding.progress"]) == pytest.approx(0.3)
    torch.manual_seed(1)
    restored = OccupancyTextureField(
        hidden_size=16, n_blocks=1, n_frequencies=4, fourier_anneal=True
    )
    restored.load_state_dict(state)
    points = torch.rand(1, 6, 3) - 0.5
    torch.testing.assert_close(restored(points).values, field(points).values, rtol=0, atol=0)
    # without annealing the state dict is the plain decoder's (older checkpoints still load)
    plain = OccupancyTextureField(hidden_size=16, n_blocks=1, n_frequencies=4)
    assert not any("progress" in key for key in plain.state_dict())


# ----------------------------------------------------------------------------- sphere init


def untrained_sphere_field(field_type: str, radius: float, **sizes) -> OccupancyTextureField:
    """A field seeded with 0 and initialised to the sphere of ``radius`` (``sizes``: the
    network's ``hidden_size``, ``n_blocks``, ``n_frequencies``)."""
    torch.manual_seed(0)
    return OccupancyTextureField(field_type=field_type, geometric_init_radius=radius, **sizes)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_untrained_field_is_the_sphere(field_type):
    radius = 0.25
    field = untrained_sphere_field(field_type, radius, hidden_size=64, n_blocks=3, n_frequencies=6)
    directions = nn.functional.normalize(torch.randn(1, 200, 3), dim=-1)
    # the zero level set along each direction from the centre, by bisection
    low, high = torch.zeros(1, 200), torch.full((1, 200), 0.5)
    inside_sign = 1.0 if field_type == "occupancy" else -1.0
    with torch.no_grad():
        for _ in range(30):
            middle = 0.5 * (low + high)
            inside = inside_sign * field(directions * middle[..., None]).values > 0
            low, high = torch.where(inside, middle, low), torch.where(inside, high, middle)
        assert float((low - radius).abs().max()) < 2e-3
        # inside positive at half the radius, outside at 1.5 times it
        assert bool((inside_sign * field(directions * 0.5 * radius).values > 0).all())
        assert bool((inside_sign * field(directions * 1.5 * radius).values < 0).all())
    if field_type == "occupancy":  # logit slope: the configured sharpness
        values = field(directions * radius).values
        assert float(values.detach().abs().max()) < 0.02
    else:  # a distance: |grad| = 1 up to the small network's share (high frequencies)
        points = (directions * 0.4).requires_grad_(True)
        (gradient,) = torch.autograd.grad(field(points).values.sum(), points)
        torch.testing.assert_close(gradient.norm(dim=-1), torch.ones(1, 200), atol=0.03, rtol=0)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_untrained_field_renders_the_spheres_silhouette(field_type):
    radius, size = 0.3, 24
    field = untrained_sphere_field(field_type, radius, hidden_size=32, n_blocks=2, n_frequencies=4)
    eyes = 2.0 * fibonacci_sphere(3).float()
    cameras = cameras_looking_at_origin(eyes, image_size=size, fov=40.0)
    renderer = DVRRenderer.for_images(field=field, image_size=size, n_steps=32)
    with torch.no_grad():
        out = renderer(cameras)
    origins, directions = out.ray_bundle.origins, out.ray_bundle.directions
    # analytic silhouette: the ray's line passes within the radius of the centre
    unit = nn.functional.normalize(directions, dim=-1)
    closest = origins - (origins * unit).sum(-1, keepdim=True) * unit
    analytic = closest.norm(dim=-1) < radius
    hit = out.hit
    assert 0.1 < float(analytic.float().mean()) < 0.9
    iou = float((hit & analytic).sum()) / float((hit | analytic).sum())
    assert iou > 0.95


def test_geometric_init_options_are_checked():
    with pytest.raises(ValueError, match="geometric_init_radius"):
        OccupancyTextureField(hidden_size=8, geometric_init_radius=-0.1)
    with pytest.raises(ValueError, match="geometric_init_sharpness"):
        OccupancyTextureField(hidden_size=8, geometric_init_radius=0.2, geometric_init_sharpness=0)


# ----------------------------------------------------------------------------- eikonal


class RadialField(nn.Module):
    """``scale * |p| - radius``: a signed-distance-like field with ``|grad| = scale``."""

    field_type = "sdf"

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float64))

    def forward(self, points: torch.Tensor, latent=None) -> FieldOutput:
        return FieldOutput(self.scale * points.norm(dim=-1) - 0.3, None)


class LinearMapField(nn.Module):
    """``|A p| - 0.3``, whose gradient ``A^T A p / |A p|`` has a length that varies."""

    field_type = "sdf"

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix)

    def forward(self, points: torch.Tensor, latent=None) -> FieldOutput:
        return FieldOutput((points @ self.matrix.T).norm(dim=-1) - 0.3, None)


def test_eikonal_loss_hand_values():
    points = torch.rand(2, 5, 3, dtype=torch.float64) - 0.5 + 0.6  # away from the origin
    field = RadialField(2.0)  # |grad| = 2: (2 - 1)^2 = 1 per point
    loss = eikonal_loss(field, points)
    assert float(loss.detach()) == pytest.approx(10 / 2)  # 10 points, divided by B = 2
    assert float(eikonal_loss(field, points, reduction="mean").detach()) == pytest.approx(1.0)
    select = torch.zeros(2, 5, dtype=torch.bool)
    select[0, :3] = True
    selected = eikonal_loss(field, points, select=select, reduction="sum")
    assert float(selected.detach()) == pytest.approx(3)
    # d/dscale of sum (scale - 1)^2 = 2 (scale - 1) per point
    loss.backward()
    assert float(field.scale.grad) == pytest.approx(2 * 1.0 * 10 / 2)
    assert float(eikonal_loss(RadialField(1.0), points).detach()) == pytest.approx(0.0, abs=1e-12)
    gradients = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.5]]])  # lengths 5 and 0.5
    assert float(eikonal_penalty(gradients)) == pytest.approx(16 + 0.25)


def test_eikonal_loss_gradient_against_finite_differences():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.eye(3, dtype=torch.float64) + 0.4 * torch.randn(
        3, 3, generator=generator, dtype=torch.float64
    )
    points = torch.rand(1, 6, 3, generator=generator, dtype=torch.float64) - 0.5

    def loss_of(m: torch.Tensor) -> torch.Tensor:
        field = LinearMapField(matrix)
        del field.matrix
        field.matrix = m  # a plain tensor: gradcheck differentiates through it
        return eikonal_loss(field, points)

    assert float(loss_of(matrix)) > 1e-3
    assert torch.autograd.gradcheck(loss_of, (matrix.clone().requires_grad_(True),))


# ----------------------------------------------------------------------------- soft mask


def test_soft_mask_loss_hand_values():
    min_values = torch.tensor([[0.1, -0.2, 0.05], [0.3, -0.01, 0.0]])
    masks = torch.tensor([[False, True, True], [False, False, True]])
    alpha = 10.0

    def bce(logit: float, target: bool) -> float:  # -log(sigmoid) / -log(1 - sigmoid)
        return math.log1p(math.exp(-logit)) if target else math.log1p(math.exp(logit))

    per_ray = [
        [bce(-alpha * m, t) / alpha for m, t in zip(row_m, row_t, strict=True)]
        for row_m, row_t in zip(min_values.tolist(), masks.tolist(), strict=True)
    ]
    total = sum(sum(row) for row in per_ray)
    assert float(soft_mask_loss(min_values, masks, alpha)) == pytest.approx(total / 2, rel=1e-6)
    assert float(soft_mask_loss(min_values, masks, alpha, reduction="mean")) == pytest.approx(
        total / 6, rel=1e-6
    )
    select = torch.tensor([[True, False, False], [False, True, False]])
    expected = (per_ray[0][0] + per_ray[1][1]) / 2
    assert float(soft_mask_loss(min_values, masks, alpha, select=select)) == pytest.approx(
        expected, rel=1e-6
    )
    # sharp limit: max(0, m) inside the mask, max(0, -m) outside
    sharp = soft_mask_loss(min_values, masks, 1e4, reduction="sum")
    assert float(sharp) == pytest.approx(0.05 + 0.01, abs=1e-3)
    with pytest.raises(ValueError, match="alpha"):
        soft_mask_loss(min_values, masks, 0.0)
    with pytest.raises(ValueError, match="masks"):
        soft_mask_loss(min_values, masks.float(), 1.0)


@pytest.mark.parametrize("field_type", ["sdf", "occupancy"])
def test_min_outside_along_rays_on_a_sphere(field_type):
    """Rays along +z at distance b from the centre of a sphere: the smallest outside value is
    ``b - r`` (SDF) or ``k (b - r)`` (occupancy logits, slope k), at depth = the origin's
    distance to the closest point."""
    radius, sharpness = 0.3, 20.0
    sphere = SphereField(radius=radius, field_type=field_type, sharpness=sharpness).double()
    offsets_xy = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.6], dtype=torch.float64)
    origins = torch.zeros(1, 5, 3, dtype=torch.float64)
    origins[0, :, 0] = offsets_xy
    origins[0, :, 2] = -1.0
    directions = torch.zeros(1, 5, 3, dtype=torch.float64)
    directions[..., 2] = 1.0
    near = torch.full((1, 5), 0.45, dtype=torch.float64)
    far = torch.full((1, 5), 1.55, dtype=torch.float64)
    select = torch.tensor([[True, True, True, True, False]])
    # 11 strata of 0.1 with the centre offset: a sample lands on depth 1.0 (z = 0)
    minimum = min_outside_along_rays(
        sphere, origins, directions, near, far, select, n_samples=11, offsets=0.5
    )
    scale = 1.0 if field_type == "sdf" else sharpness
    expected = scale * (offsets_xy - sphere.radius.detach())  # the float32 radius
    expected[4] = 0.0  # not selected
    torch.testing.assert_close(minimum.values[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        minimum.depths[0], torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    )
    # the value carries the field's gradient: d(b - r)/dr = -1 per ray (times k)
    minimum.values.sum().backward()
    assert float(sphere.radius.grad) == pytest.approx(-4 * scale)
    # random strata: close to the true minimum, never below it
    jittered = min_outside_along_rays(
        sphere,
        origins,
        directions,
        near,
        far,
        select,
        n_samples=64,
        offsets=torch.rand(1, 5, dtype=torch.float64),
    )
    error = (jittered.values - expected)[select]
    assert float(error.min()) >= -1e-12 and float(error.max()) < 0.02 * scale


def test_min_outside_along_rays_with_latent_codes_and_bad_ranges():
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=8, n_blocks=1, latent_size=2, rgb=False)
    origins = torch.tensor([[[0.0, 0.0, -1.0]] * 3] * 2)
    directions = torch.tensor([[[0.0, 0.0, 1.0]] * 3] * 2)
    near, far = torch.full((2, 3), 0.5), torch.full((2, 3), 1.5)
    select = torch.tensor([[True, False, True], [False, True, True]])
    latent = torch.randn(2, 2)
    minimum = min_outside_along_rays(
        field, origins, directions, near, far, select, n_samples=8, latent=latent
    )
    with torch.no_grad():  # brute force: every sample of ray (b, r)
        depths = 0.5 + (torch.arange(8) + 0.5) / 8
        points = origins[:, :1] + depths[None, :, None] * directions[:, :1]
        brute = (-field(points, latent).values).min(dim=1).values  # occupancy: outside = -logit
    for b in range(2):
        for r in range(3):
            want = float(brute[b]) if select[b, r] else 0.0
            assert float(minimum.values[b, r]) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="depth range"):
        min_outside_along_rays(field, origins, directions, far, near, select, latent=latent)


def test_soft_mask_alpha_schedule():
    assert soft_mask_alpha(0, start=50.0, every=100) == 50.0
    assert soft_mask_alpha(99, start=50.0, every=100) == 50.0
    assert soft_mask_alpha(100, start=50.0, every=100) == 100.0
    assert soft_mask_alpha(10_000, start=50.0, every=100) == 1600.0  # five doublings at most
    assert soft_mask_alpha(10_000, start=1.0, every=0) == 1.0
    with pytest.raises(ValueError):
        soft_mask_alpha(-1, start=1.0)


# ----------------------------------------------------------------------------- training


BASE = [
    "device=cpu",
    "model.hidden_size=32",
    "model.n_blocks=2",
    "model.n_frequencies=2",
    "train.images_per_batch=2",
    "train.rays_per_image=64",
    "train.step_milestones={0: 16}",
    "eval.validate_every=0",
    "eval.checkpoint_every=0",
    "eval.log_every=1",
    "eval.n_steps=16",
    "eval.turntable_frames=0",
    "eval.tensorboard=false",
]


def fit_config(*overrides: str) -> FitConfig:
    return FitConfig.from_dict(apply_overrides({}, [*BASE, *overrides]))


def test_geometry_options_are_off_by_default():
    config = FitConfig()
    assert config.loss.eikonal == 0 and config.loss.mask == 0
    assert config.model.fourier_anneal_steps == 0 and config.model.geometric_init_radius is None
    assert LossWeights().eikonal == 0 and LossWeights().mask == 0
    torch.manual_seed(0)
    field = build_field(config)
    torch.manual_seed(0)
    reference = OccupancyTextureField(
        hidden_size=config.model.hidden_size,
        n_blocks=config.model.n_blocks,
        n_frequencies=config.model.n_frequencies,
    )
    assert field.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(field.state_dict()[key], value), key
    with pytest.raises(ValueError, match="field_type=sdf"):
        fit_config("loss.eikonal=0.1")
    with pytest.raises(ValueError, match="n_frequencies"):
        fit_config("model.n_frequencies=0", "model.fourier_anneal_steps=10")
    with pytest.raises(ValueError, match="geometric_init_radius"):
        fit_config("model.geometric_init_radius=0.7")
    with pytest.raises(ValueError, match="mask_alpha_factor"):
        fit_config("loss.mask_alpha_factor=0.5")


def sphere_capture(*, n_views: int = 8, image_size: int = 16) -> MultiViewData:
    """Renders of a sphere off the origin (radius 0.22, centre (0.08, 0, -0.05))."""
    eyes = 2.0 * fibonacci_sphere(n_views).float()
    cameras = cameras_looking_at_origin(eyes, image_size=image_size, fov=40.0)
    renderer = DVRRenderer.for_images(
        field=SphereField(centre=(0.08, 0.0, -0.05), radius=0.22, sharpness=50.0),
        image_size=image_size,
        background_color=1.0,
        n_steps=64,
    )
    with torch.no_grad():
        out = renderer(cameras)
    return MultiViewData(images=out.images.clamp(0, 1), masks=out.masks > 0.5, cameras=cameras)


ALL_TERMS = {
    "sdf": [
        "model.field_type=sdf",
        "loss.eikonal=0.1",
    ],
    "occupancy": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("field_type", ["sdf", "occupancy"])
def test_fit_with_every_geometry_term_logs_and_resumes(field_type):
    """A short fit with annealing, the sphere initialisation, the soft mask and (SDF) the
    eikonal term: the terms are logged, the annealing reaches 1, and a resumed run equals the
    uninterrupted one step for step (the annealing progress travels in the model)."""
    overrides = [
        *ALL_TERMS[field_type],
        "model.fourier_anneal_steps=12",
        "model.geometric_init_radius=0.3",
        "loss.mask=10",
        "loss.mask_alpha_every=2",
        "loss.mask_samples=16",
        "loss.normal=0.05",
    ]
    train, val = sphere_capture().split(every=4)

    def trainer(out_dir: str, iterations: int, resume: bool = False) -> Trainer:
        return Trainer(
            config=fit_config(*overrides, f"train.iterations={iterations}"),
            train_data=train,
            val_data=val,
            out_dir=out_dir,
            resume=resume,
            progress=False,
        )

    with tempfile.TemporaryDirectory() as folder:
        straight = trainer(os.path.join(folder, "a"), 20)
        summary = straight.fit()
        log_a = read_csv(os.path.join(folder, "a", "train_log.csv"))
        terms = ("mask", "eikonal") if field_type == "sdf" else ("mask",)
        for name in terms:
            assert all(math.isfinite(v) for v in log_a[name]), name
            assert max(log_a[name]) > 0, name
        if field_type == "occupancy":
            assert all(math.isnan(v) for v in log_a["eikonal"])
        assert float(straight.field.encoding.progress) == 1.0
        assert summary["last"]["fourier_progress"] == 1.0
        assert summary["last"]["mask_alpha"] == (50.0 if field_type == "sdf" else 1.0) * 32

        first = trainer(os.path.join(folder, "b"), 6)
        first.fit()
        assert float(first.field.encoding.progress) == pytest.approx(5 / 12)
        torch.manual_seed(12345)  # a fresh process would start from other RNG states
        resumed = trainer(os.path.join(folder, "b"), 20, resume=True)
        assert float(resumed.field.encoding.progress) == pytest.approx(5 / 12)
        resumed.fit()
        for key, value in straight.field.state_dict().items():
            assert torch.equal(value, resumed.field.state_dict()[key]), key
        log_b = read_csv(os.path.join(folder, "b", "train_log.csv"))
        assert log_a["step"] == log_b["step"]
        for name in ("loss", *terms):
            assert log_a[name] == log_b[name], name
