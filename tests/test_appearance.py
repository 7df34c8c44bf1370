"""
The view-dependent colour head: its colour gradients against central finite differences of the
whole render (the root finder re-run at every perturbed value), its view dependence, the
exported (head-on) colour, and its place in the configuration.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dvr_plugin.fields.appearance import (
    RenderingNetwork,
    ViewDependentField,
    geometry_of,
    view_dependent_field_of,
)
from dvr_plugin.fields.field import FieldOutput, OccupancyTextureField, evaluate_field
from tests.core_factories import (
    SphereMLPField,
    check_parameter_gradients,
    finite_difference,
    rays_towards_centre,
    surface_depth,
)

torch.manual_seed(0)
COLOUR_WEIGHTS = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)


class SphereMLPGeometry(nn.Module):
    """
    A geometry network with a surface at any initialisation: a small MLP added to a sphere of
    radius 0.3 (occupancy: ``20 (0.3 - |p|) + 2 mlp``; SDF: ``|p| - 0.3 + 0.02 mlp``), with the
    MLP's last hidden activation as the feature vector.
    """

    def __init__(self, *, field_type: str = "occupancy", latent_size: int = 4, seed: int = 0):
        super().__init__()
        self.field_type = field_type
        self.mlp = OccupancyTextureField(
            hidden_size=8, n_blocks=2, latent_size=latent_size, rgb=False, n_frequencies=1
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.mlp.parameters():
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))

    def forward_with_features(self, points, latent=None):
        out, features = self.mlp.forward_with_features(points, latent)
        radius = points.norm(dim=-1)
        if self.field_type == "occupancy":
            values = 20.0 * (0.3 - radius) + 2.0 * out.values
        else:
            values = radius - 0.3 + 0.02 * out.values
        return FieldOutput(values, None), features

    def forward(self, points, latent=None):
        return self.forward_with_features(points, latent)[0]


def make_model(
    *,
    field_type: str = "occupancy",
    latent_size: int = 4,
    seed: int = 0,
    point_grid: nn.Module | None = None,
):
    """A float64 view-dependent field with a tiny head whose colour varies visibly."""
    torch.manual_seed(seed)
    head = RenderingNetwork(
        feature_size=8,
        hidden_size=8,
        n_layers=2,
        n_view_frequencies=2,
        n_point_frequencies=1,
        point_grid=point_grid,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(0.6 * torch.randn(parameter.shape, generator=generator))
    geometry = SphereMLPGeometry(field_type=field_type, latent_size=latent_size, seed=seed)
    return ViewDependentField(geometry=geometry, appearance=head).double()


def render_rays(model, origins, directions, latent=None, *, normal_through_point=True):
    """
    `(M, 3)` colours of explicit rays: the root finder and the implicit gradient on the geometry
    (as the renderer does), then the head at ``o + d w``. ``normal_through_point=False`` is a
    deliberately wrong variant whose normal is taken at the detached surface point: it keeps
    the normal's direct dependence on the parameters but drops the one through the point.
    """
    depth, hit = surface_depth(model.geometry, origins, directions, latent=latent)
    assert bool(hit.all()), "the test rays must all hit"
    points = (origins + depth[:, None] * directions)[:, None]
    view = directions[:, None]
    if normal_through_point or not torch.is_grad_enabled():
        return model.shade(points, view, latent).rgb[:, 0]
    at = points.detach().requires_grad_(True)
    out, _ = model.geometry.forward_with_features(at, latent)
    (gradient,) = torch.autograd.grad(out.values.sum(), at, create_graph=True)
    sign = -1.0 if model.field_type == "occupancy" else 1.0
    normals = sign * gradient / gradient.norm(dim=-1, keepdim=True)
    _, features = model.geometry.forward_with_features(points, latent)
    unit_view = view / view.norm(dim=-1, keepdim=True)
    return model.appearance(points, normals, unit_view, features)[:, 0]


def colour_loss(rgb: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(0.5, 1.5, rgb.shape[0], dtype=rgb.dtype)
    return (weights[:, None] * rgb * COLOUR_WEIGHTS.to(rgb.dtype)).sum()


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_colour_gradients_of_parameters_and_latent(field_type):
    model = make_model(field_type=field_type)
    origins, directions = rays_towards_centre(5, seed=11)
    latent = torch.randn(1, 4, dtype=torch.float64).expand(5, 4).clone().requires_grad_(True)

    def loss():
        return colour_loss(render_rays(model, origins, directions, latent.detach()))

    model.zero_grad()
    colour_loss(render_rays(model, origins, directions, latent)).backward()
    names = check_parameter_gradients(
        model, loss, per_parameter=1, generator=torch.Generator().manual_seed(12), abs_tol=1e-8
    )
    parts = [name.split(".")[0] for name in names]
    assert parts.count("geometry") >= 8 and parts.count("appearance") >= 4
    for index in [(0, 0), (1, 3), (4, 2)]:
        numeric = finite_difference(loss, latent.data, index)
        assert latent.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_colour_gradients_of_rays(field_type):
    model = make_model(field_type=field_type, latent_size=0)
    origins, directions = rays_towards_centre(4, seed=13)
    origins.requires_grad_(True)
    directions.requires_grad_(True)
    colour_loss(render_rays(model, origins, directions)).backward()
    for tensor in (origins, directions):
        for i in range(4):
            for j in range(3):
                numeric = finite_difference(
                    lambda: colour_loss(render_rays(model, origins.detach(), directions.detach())),
                    tensor.data,
                    (i, j),
                )
                assert tensor.grad[i, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_dropping_the_normals_dependence_on_the_point_fails_the_check():
    """The same check with the normal taken at the detached surface point: it must fail."""
    model = make_model(latent_size=0)
    origins, directions = rays_towards_centre(4, seed=14)
    numeric = torch.zeros(4, 3, dtype=torch.float64)
    for i in range(4):
        for j in range(3):
            numeric[i, j] = finite_difference(
                lambda: colour_loss(render_rays(model, origins, directions)), origins, (i, j)
            )
    errors = {}
    for through_point in (True, False):
        o = origins.clone().requires_grad_(True)
        loss = colour_loss(render_rays(model, o, directions, normal_through_point=through_point))
        loss.backward()
        errors[through_point] = float((o.grad - numeric).abs().max() / numeric.abs().max())
    assert errors[True] < 1e-6
    assert errors[False] > 1e-2


def _cameras(distance: float, elevation: float, azimuth: float, translation=None):
    from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

    rotation, default_translation = look_at_view_transform(distance, elevation, azimuth)
    translation = default_translation.double() if translation is None else translation
    return FoVPerspectiveCameras(R=rotation.double(), T=translation, fov=40.0)


def _renderer(model):
    from dvr_plugin.renderer.raysampler import SecantRaysampler
    from dvr_plugin.renderer.renderer import DVRRenderer

    sampler = SecantRaysampler(n_steps=64, n_secant_steps=40, chunk_size=None)
    return DVRRenderer(field=model, raysampler=sampler, background_color=0.0)


def test_renderer_gradients_of_camera_parameters_latent_and_parameters():
    """``DVRRenderer`` on PyTorch3D cameras (float64), against finite differences."""
    model = make_model(field_type="sdf")
    renderer = _renderer(model)
    generator = torch.Generator().manual_seed(15)
    xys = 0.15 * (2 * torch.rand(1, 5, 2, generator=generator, dtype=torch.float64) - 1)
    translation = _cameras(1.6, 20.0, 30.0).T.clone().requires_grad_(True)
    latent = torch.randn(1, 4, dtype=torch.float64, generator=generator).requires_grad_(True)

    def render(t, code):
        out = renderer(_cameras(1.6, 20.0, 30.0, t), latent=code, xys=xys)
        assert bool(out.hit.all())
        return colour_loss(out.images[0])

    model.zero_grad()
    render(translation, latent).backward()

    def loss():
        return render(translation.detach(), latent.detach())

    for j in range(3):
        numeric = finite_difference(loss, translation.data, (0, j))
        assert translation.grad[0, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    for j in range(4):
        numeric = finite_difference(loss, latent.data, (0, j))
        assert latent.grad[0, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    for parameter in (model.geometry.mlp.fc_in.weight, model.appearance.mlp[0].weight):
        for i in (0, 5):
            numeric = finite_difference(loss, parameter.data.view(-1), i)
            assert parameter.grad.view(-1)[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_implicit_renderer_route_matches_dvr_renderer():
    from pytorch3d.renderer import ImplicitRenderer

    from dvr_plugin.renderer.raymarcher import SurfaceRaymarcher
    from dvr_plugin.renderer.raysampler import SecantRaysampler
    from dvr_plugin.renderer.renderer import FieldVolumetricFunction

    model = make_model(latent_size=0)
    xys = 0.2 * (2 * torch.rand(1, 6, 2, dtype=torch.float64) - 1)
    results = []
    for route in ("dvr", "implicit"):
        translation = _cameras(1.6, 10.0, -20.0).T.clone().requires_grad_(True)
        cameras = _cameras(1.6, 10.0, -20.0, translation)
        if route == "dvr":
            images = _renderer(model)(cameras, xys=xys).images
        else:
            renderer = ImplicitRenderer(
                raysampler=SecantRaysampler(n_steps=64, n_secant_steps=40, chunk_size=None),
                raymarcher=SurfaceRaymarcher(),
            )
            channels, _ = renderer(
                cameras=cameras, volumetric_function=FieldVolumetricFunction(field=model), xys=xys
            )
            images = channels[..., :3]
        colour_loss(images[0]).backward()
        results.append((images.detach(), translation.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-9)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-9)
    # a caller that reads densities alone gets the same densities without the head
    function = FieldVolumetricFunction(field=model)
    _, bundle = renderer(cameras=cameras, volumetric_function=function, xys=xys)
    with torch.no_grad():
        densities, features = function(ray_bundle=bundle)
        alone, ones = function(ray_bundle=bundle, densities_only=True)
    torch.testing.assert_close(alone, densities, rtol=0, atol=0)
    assert torch.equal(ones, torch.ones_like(features)) and not torch.equal(features, ones)


@pytest.mark.parametrize("colour", ["view_dependent", "texture"])
def test_two_cameras_see_one_point_in_different_colours_only_with_the_head(colour):
    """Rays from two camera centres 40 degrees apart, through one surface point."""
    if colour == "view_dependent":
        model = make_model(latent_size=0)
    else:
        model = SphereMLPField(latent_size=0).double()
    geometry = model.geometry if colour == "view_dependent" else model
    angle = torch.tensor(40.0, dtype=torch.float64).deg2rad()
    centres = 1.6 * torch.stack(
        [
            torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
            torch.stack([angle.sin(), torch.zeros_like(angle), angle.cos()]),
        ]
    )
    target = torch.tensor([[0.05, 0.02, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        depth, hit = surface_depth(geometry, centres[:1], target - centres[:1])
        point = centres[0] + depth[0] * (target[0] - centres[0])
        directions = point - centres
        depth, hit = surface_depth(geometry, centres, directions)
        points = centres + depth[:, None] * directions
        if colour == "view_dependent":
            rgb = render_rays(model, centres, directions)
        else:
            rgb = model(points[:, None]).rgb[:, 0]
    assert bool(hit.all())
    assert float((points - point).norm(dim=-1).max()) < 1e-9  # the same surface point
    difference = float((rgb[0] - rgb[1]).abs().max())
    if colour == "view_dependent":
        assert difference > 1e-2
    else:
        assert difference < 1e-12


def test_exported_colour_is_the_head_on_colour():
    model = make_model(field_type="sdf", latent_size=0)
    points = 0.3 * torch.nn.functional.normalize(torch.randn(1, 20, 3, dtype=torch.float64), dim=-1)
    with torch.no_grad():
        exported = evaluate_field(model, points)
    # reference: the normal from autograd, the head at v = -n
    at = points.clone().requires_grad_(True)
    out, features = model.geometry.forward_with_features(at)
    (gradient,) = torch.autograd.grad(out.values.sum(), at)
    normals = gradient / gradient.norm(dim=-1, keepdim=True)
    expected = model.appearance(points, normals, -normals, features.detach())
    torch.testing.assert_close(exported.rgb, expected.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(exported.values, out.values.detach(), rtol=0, atol=1e-12)
    assert exported.rgb.grad_fn is None
    # any viewing direction other than head-on gives another colour
    sideways = torch.cross(normals, torch.ones_like(normals), dim=-1)
    with torch.no_grad():
        other = model.shade(points, sideways).rgb
    assert float((other - exported.rgb).abs().max()) > 1e-2
    # the head-on colour is differentiable (in the parameters, through the normal too)
    rgb = model(points).rgb
    rgb.sum().backward()
    assert model.geometry.mlp.fc_in.weight.grad.abs().sum() > 0


def _fit_config(**model):
    from dvr_plugin.training.config import FitConfig

    return FitConfig.from_dict(
        {"device": "cpu", "model": {"hidden_size": 16, "n_blocks": 2, "n_frequencies": 2, **model}}
    )


def test_build_field_and_state_dict_round_trip():
    from dvr_plugin.training.trainer import build_field

    texture = build_field(_fit_config())
    assert isinstance(texture, OccupancyTextureField) and texture.has_rgb
    config = _fit_config(
        colour="view_dependent", colour_hidden_size=12, colour_n_layers=3, field_type="sdf"
    )
    torch.manual_seed(0)
    model = build_field(config)
    assert isinstance(model, ViewDependentField) and model.field_type == "sdf"
    assert not model.geometry.has_rgb  # its texture head would be untrained: none is built
    assert model.appearance.feature_size == 16
    widths = [m.out_features for m in model.appearance.mlp if isinstance(m, nn.Linear)]
    assert widths == [12, 12, 12, 3]
    torch.manual_seed(1)
    restored = build_field(config)
    points = 0.4 * torch.rand(1, 32, 3) - 0.2
    view = torch.randn(1, 32, 3)
    with torch.no_grad():
        assert not torch.equal(model.shade(points, view).rgb, restored.shade(points, view).rgb)
    restored.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.shade(points, view), restored.shade(points, view))
    keys = model.state_dict().keys()
    assert any(k.startswith("geometry.") for k in keys)
    assert any(k.startswith("appearance.") for k in keys)


def test_bad_configuration_and_wrapped_field():
    from dvr_plugin.training.config import FitConfig
    from dvr_plugin.training.trainer import AutocastField, build_field

    with pytest.raises(ValueError, match="model.colour"):
        _fit_config(colour="phong")
    with pytest.raises(ValueError, match="colour_n_layers"):
        _fit_config(colour="view_dependent", colour_n_layers=0)
    data = _fit_config(colour="view_dependent").to_dict()
    data["mixed_precision"] = True
    with pytest.raises(ValueError, match="mixed_precision"):
        build_field(FitConfig.from_dict(data))
    model = make_model(latent_size=0)
    assert view_dependent_field_of(model) is model
    texture = OccupancyTextureField(hidden_size=4)
    assert view_dependent_field_of(texture) is None
    assert geometry_of(model) is model.geometry and geometry_of(texture) is texture
    with pytest.raises(ValueError, match="wraps a view-dependent field"):
        view_dependent_field_of(AutocastField(field=model, device_type="cpu"))
    with pytest.raises(ValueError, match="forward_with_features"):
        ViewDependentField(geometry=SphereMLPField(), appearance=model.appearance)
    with pytest.raises(ValueError, match="view_directions"):
        model.shade(torch.zeros(1, 4, 3, dtype=torch.float64), torch.zeros(1, 3, 3))


def test_a_training_step_moves_both_networks():
    """One trainer step with the head: the loss reaches the geometry and the head."""
    from dvr_plugin.data import MultiViewData, cameras_looking_at_origin, fibonacci_sphere
    from dvr_plugin.fields.shapes import SphereField
    from dvr_plugin.renderer.raysampler import SecantRaysampler
    from dvr_plugin.renderer.renderer import DVRRenderer
    from dvr_plugin.training.config import FitConfig
    from dvr_plugin.training.trainer import Trainer

    eyes = 2.0 * fibonacci_sphere(4).float()
    cameras = cameras_looking_at_origin(eyes, image_size=16, fov=40.0)
    with torch.no_grad():
        views = DVRRenderer(
            field=SphereField(radius=0.3, sharpness=50.0),
            raysampler=SecantRaysampler(image_width=16, image_height=16, n_steps=32),
            background_color=1.0,
        )(cameras)
    data = MultiViewData(
        images=views.images.clamp(0, 1), masks=views.masks > 0.5, depths=None, cameras=cameras
    )
    config = FitConfig.from_dict(
        {
            "device": "cpu",
            "model": {
                "hidden_size": 16,
                "n_blocks": 1,
                "n_frequencies": 1,
                "field_type": "sdf",
                "colour": "view_dependent",
                "colour_hidden_size": 8,
                "colour_n_layers": 1,
            },
            "train": {"images_per_batch": 2, "rays_per_image": 64, "step_milestones": {0: 16}},
            "eval": {"validate_every": 0, "checkpoint_every": 0, "tensorboard": False},
        }
    )
    trainer = Trainer(config=config, train_data=data, progress=False)
    before = {k: v.clone() for k, v in trainer.field.state_dict().items()}
    stats = trainer.train_step()
    assert stats["hit_rate"] > 0 and "rgb" in stats
    after = trainer.field.state_dict()
    assert not torch.equal(before["appearance.mlp.0.weight"], after["appearance.mlp.0.weight"])
    assert not torch.equal(before["geometry.fc_in.weight"], after["geometry.fc_in.weight"])


class FrozenFeatures(nn.Module):
    """A stand-in point grid that returns fixed features whatever the points."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.out_size = features.shape[-1]

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.features


def test_colour_grid_trains_its_tables_and_does_not_move_the_surface():
    """
    The head's hash grid (``point_grid``): its tables get exact gradients, and the rest of the
    render's gradient equals that of the same model with the grid's features frozen at the
    surface points, i.e. the grid's spatial derivative reaches neither the geometry nor the
    rays (the lookup takes the point detached). Keeping that derivative fails the second check.
    """
    from dvr_plugin.fields.hash_grid import HashGridEncoding

    grid = HashGridEncoding(
        n_levels=2, features_per_level=2, log2_table_size=10, base_resolution=4, max_resolution=8
    )
    model = make_model(field_type="sdf", latent_size=0, point_grid=grid)
    origins, directions = rays_towards_centre(5, seed=21)
    origins.requires_grad_(True)

    def loss():
        return colour_loss(render_rays(model, origins.detach(), directions))

    model.zero_grad()
    colour_loss(render_rays(model, origins, directions)).backward()
    tables = model.appearance.point_grid.embeddings
    used = tables.grad.abs().sum(-1).nonzero()[:, 0]
    assert used.numel() >= 8  # 5 points x 2 levels x 8 corners, some shared
    for row in used[:6].tolist():
        numeric = finite_difference(loss, tables.data, (row, 1))
        assert tables.grad[row, 1].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    analytic_origins = origins.grad.clone()

    with torch.no_grad():
        depth, _ = surface_depth(model.geometry, origins, directions)
        points = (origins + depth[:, None] * directions)[:, None]
        model.appearance.point_grid = FrozenFeatures(grid(points))
    checked = check_parameter_gradients(
        model, loss, per_parameter=1, generator=torch.Generator().manual_seed(22), abs_tol=1e-8
    )
    assert sum(name.startswith("geometry") for name in checked) >= 8
    for i in range(3):
        numeric = finite_difference(loss, origins.data, (i, 0))
        assert analytic_origins[i, 0].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)

    # with the grid's live features, the same origin derivative differs: the check has teeth
    model.appearance.point_grid = grid
    moved = [
        abs(finite_difference(loss, origins.data, (i, 0)) - analytic_origins[i, 0].item())
        for i in range(3)
    ]
    assert max(moved) > 1e-4


def test_colour_grid_configuration():
    from dvr_plugin.fields.hash_grid import HashGridEncoding
    from dvr_plugin.training.trainer import build_field, parameter_groups

    with pytest.raises(ValueError, match="colour_point_grid needs model.colour: view_dependent"):
        _fit_config(colour_point_grid=True)
    small_grid = {"n_levels": 3, "log2_table_size": 10, "base_resolution": 4, "max_resolution": 16}
    config = _fit_config(
        colour="view_dependent",
        colour_point_grid=True,
        hash_grid=small_grid,
    )
    model = build_field(config)
    grid = model.appearance.point_grid
    assert isinstance(grid, HashGridEncoding) and grid.resolutions == (4, 8, 16)
    assert not grid.anneal
    first = next(m for m in model.appearance.mlp if isinstance(m, nn.Linear))
    assert first.in_features == 3 + grid.out_size + 3 + 3 * (1 + 2 * 4) + 16
    optim = config.optim.__class__(lr=1e-3, encoding_lr=1e-2)
    groups = parameter_groups(model, optim)
    assert len(groups) == 2 and groups[1]["lr"] == 1e-2
    assert groups[1]["params"][0] is grid.embeddings
    with pytest.raises(ValueError, match="point_grid must have an integer out_size"):
        RenderingNetwork(feature_size=0, point_grid=nn.Identity())

    # a colour grid finer than the geometry's: its own finest level, the geometry's unchanged
    finer = _fit_config(
        encoding="hash_grid",
        colour="view_dependent",
        colour_point_grid=True,
        colour_grid_max_resolution=64,
        hash_grid=small_grid,
    )
    model = build_field(finer)
    assert model.appearance.point_grid.resolutions == (4, 16, 64)
    geometry_grids = [m for m in model.geometry.modules() if isinstance(m, HashGridEncoding)]
    assert [g.resolutions for g in geometry_grids] == [(4, 8, 16)]
    with pytest.raises(ValueError, match="colour_grid_max_resolution needs model.colour_point"):
        _fit_config(colour="view_dependent", colour_grid_max_resolution=64)
    with pytest.raises(ValueError, match="colour_grid_max_resolution must be >= model.hash_grid"):
        _fit_config(colour="view_dependent", colour_point_grid=True, colour_grid_max_resolution=8)
