"""DVRSurfaceRenderer: registration in Implicitron, GenericModel training steps, exact surfaces."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch3d.renderer import (
    FoVPerspectiveCameras,
    NDCMultinomialRaysampler,
    look_at_view_transform,
)

from dvr_plugin import DVRRenderer, SecantRaysampler
from dvr_plugin.fields.shapes import SphereField

try:
    from pytorch3d.implicitron.models.generic_model import GenericModel
    from pytorch3d.implicitron.models.renderer.base import (
        BaseRenderer,
        EvaluationMode,
        ImplicitFunctionWrapper,
        ImplicitronRayBundle,
    )
    from pytorch3d.implicitron.tools.config import expand_args_fields, registry

    from dvr_plugin.implicitron import (
        DEFAULT_CONFIG_PATH,
        DVRSurfaceRenderer,
        generic_model_args,
    )
except ImportError as error:  # pragma: no cover - only without Implicitron's imports
    pytest.skip(
        f"Implicitron or its imports (omegaconf, hydra-core, torchvision) are missing: {error}",
        allow_module_level=True,
    )

pytestmark = [
    pytest.mark.filterwarnings("ignore:Thresholding masks"),
    pytest.mark.filterwarnings("ignore:Masking images"),
    pytest.mark.filterwarnings("ignore:.*weight_norm"),
]

IMAGE_SIZE = 16


def _cameras(n_views: int = 3, distance: float = 1.5) -> FoVPerspectiveCameras:
    azimuth = torch.linspace(0.0, 360.0, n_views + 1)[:-1]
    rotation, translation = look_at_view_transform(distance, 20.0, azimuth)
    return FoVPerspectiveCameras(R=rotation, T=translation, fov=45.0)


def synthetic_batch(n_views: int = 3, image_size: int = IMAGE_SIZE):
    """
    Tiny posed images of a coloured sphere (radius 0.3) rendered by dvr_plugin's DVRRenderer.

    Returns:
        image_rgb `(V, 3, S, S)`, fg_probability `(V, 1, S, S)` and the V cameras.
    """
    cameras = _cameras(n_views)
    renderer = DVRRenderer(
        field=SphereField(radius=0.3),
        raysampler=SecantRaysampler(image_width=image_size, image_height=image_size, n_steps=32),
    )
    with torch.no_grad():
        out = renderer(cameras)
    return out.images.permute(0, 3, 1, 2).contiguous(), out.masks[:, None].contiguous(), cameras


def small_model_args(implicit_function: str, n_views: int):
    """The example config with tiny sizes: a few rays, a few steps, a small network."""
    overrides = dict(
        render_image_width=IMAGE_SIZE,
        render_image_height=IMAGE_SIZE,
        n_train_target_views=n_views,
        chunk_size_grid=64,
        implicit_function_class_type=implicit_function,
        renderer_DVRSurfaceRenderer_args=dict(n_steps_training=16, n_steps_evaluation=24),
        raysampler_AdaptiveRaySampler_args=dict(n_rays_per_image_sampled_from_mask=48),
    )
    if implicit_function == "IdrFeatureField":
        overrides["implicit_function_IdrFeatureField_args"] = dict(
            dims=[32, 32], n_harmonic_functions_xyz=2, skip_in=[]
        )
    else:
        overrides["implicit_function_NeuralRadianceFieldImplicitFunction_args"] = dict(
            n_harmonic_functions_xyz=2,
            n_harmonic_functions_dir=1,
            n_hidden_neurons_xyz=32,
            n_hidden_neurons_dir=16,
            n_layers_xyz=2,
            append_xyz=[],
        )
    return generic_model_args(**overrides)


class AnalyticSphere(torch.nn.Module):
    """
    An Implicitron-style implicit function with an exact sphere: ``(densities, colours, {})``
    with densities ``sharpness * (radius - |p - centre|)`` (occupancy logits), or one tensor
    ``[sdf, r, g, b]`` with ``as_tensor=True``. With ``radius_from_code`` the radius of image
    ``b`` is ``global_code[b, 0]``.
    """

    def __init__(
        self, *, radius: float = 0.3, as_tensor: bool = False, radius_from_code: bool = False
    ):
        super().__init__()
        self.radius = torch.nn.Parameter(torch.tensor(radius))
        self.centre = torch.nn.Parameter(torch.zeros(3))
        self.as_tensor = as_tensor
        self.radius_from_code = radius_from_code
        self.calls = []

    def on_bind_args(self) -> None:
        pass

    def forward(self, *, ray_bundle, global_code=None, **kwargs):
        points = ray_bundle.origins[..., None, :] + (
            ray_bundle.lengths[..., None] * ray_bundle.directions[..., None, :]
        )
        self.calls.append(tuple(points.shape))
        radius = self.radius
        if self.radius_from_code:
            if global_code is None or global_code.shape[0] != points.shape[0]:
                raise AssertionError("the rays must be batched like the global codes")
            radius = global_code[:, 0].reshape(-1, *([1] * (points.dim() - 2)))
        sdf = (points - self.centre).norm(dim=-1) - radius
        colour = torch.sigmoid(3.0 * (points - self.centre))
        if self.as_tensor:
            return torch.cat([sdf[..., None], colour], dim=-1)
        return (-20.0 * sdf)[..., None], colour, {}


def implicitron_rays(cameras, image_size: int = IMAGE_SIZE) -> ImplicitronRayBundle:
    """Implicitron's kind of rays: unit directions, lengths between near and far."""
    sampler = NDCMultinomialRaysampler(
        image_width=image_size,
        image_height=image_size,
        n_pts_per_ray=2,
        min_depth=0.5,
        max_depth=2.5,
        unit_directions=True,
    )
    bundle = sampler(cameras=cameras)
    return ImplicitronRayBundle(
        origins=bundle.origins, directions=bundle.directions, lengths=bundle.lengths,
        xys=bundle.xys,
    )


def exact_sphere_distance(bundle: ImplicitronRayBundle, radius):
    """`(B, H, W)` distance to a centred sphere along unit directions and the `(B, H, W)` hits."""
    radius = torch.as_tensor(radius, dtype=bundle.origins.dtype)
    radius = radius.reshape(-1, *([1] * (bundle.origins.dim() - 2)))
    half_b = (bundle.origins * bundle.directions).sum(-1)
    c = (bundle.origins**2).sum(-1) - radius**2
    discriminant = half_b**2 - c
    distance = -half_b - discriminant.clamp(min=0).sqrt()
    return distance, discriminant > 0


def _render(renderer, function, bundle, mode=EvaluationMode.EVALUATION):
    if not isinstance(function, ImplicitFunctionWrapper):
        function = ImplicitFunctionWrapper(function)
    return renderer(ray_bundle=bundle, implicit_functions=[function], evaluation_mode=mode)


def _renderer(**kwargs) -> DVRSurfaceRenderer:
    expand_args_fields(DVRSurfaceRenderer)
    return DVRSurfaceRenderer(**kwargs)


def test_registered_and_selected_by_name_from_the_example_config():
    assert registry.get(BaseRenderer, "DVRSurfaceRenderer") is DVRSurfaceRenderer
    cfg = generic_model_args(DEFAULT_CONFIG_PATH)
    assert cfg.renderer_class_type == "DVRSurfaceRenderer"
    assert list(cfg.renderer_DVRSurfaceRenderer_args.bounds) == [-0.55] * 3 + [0.55] * 3
    model = GenericModel(**cfg)
    assert isinstance(model.renderer, DVRSurfaceRenderer)
    assert model.renderer.n_steps_evaluation == 128


@pytest.mark.parametrize(
    "implicit_function", ["IdrFeatureField", "NeuralRadianceFieldImplicitFunction"]
)
def test_generic_model_forward_and_backward(implicit_function):
    """A training step (forward + backward) and a chunked full-grid evaluation, on CPU."""
    torch.manual_seed(0)
    image_rgb, fg_probability, cameras = synthetic_batch(n_views=3)
    model = GenericModel(**small_model_args(implicit_function, n_views=3))
    assert isinstance(model.renderer, DVRSurfaceRenderer)
    model.train()
    preds = model(
        image_rgb=image_rgb,
        camera=cameras,
        fg_probability=fg_probability,
        evaluation_mode=EvaluationMode.TRAINING,
    )
    objective = preds["objective"]
    assert torch.isfinite(objective)
    for name in ("loss_rgb_mse", "loss_mask_bce"):
        assert torch.isfinite(preds[name]), name
    if implicit_function == "IdrFeatureField":
        assert torch.isfinite(preds["loss_eikonal"])
    objective.backward()
    parameters = dict(model._implicit_functions.named_parameters())
    grads = {name: p.grad for name, p in parameters.items() if p.grad is not None}
    assert grads, "no gradient reached the implicit function"
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    if implicit_function == "NeuralRadianceFieldImplicitFunction":
        # the occupancy (density) head is trained through the soft mask / implicit gradient
        assert float(parameters["0._fn.density_layer.weight"].grad.abs().sum()) > 0

    model.eval()
    with torch.no_grad():
        preds = model(
            image_rgb=image_rgb[:1],
            camera=cameras[[0]],
            fg_probability=fg_probability[:1],
            evaluation_mode=EvaluationMode.EVALUATION,
        )
    assert preds["images_render"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert preds["depths_render"].shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    masks = preds["masks_render"]
    assert masks.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert bool(((masks >= 0) & (masks <= 1)).all())
    assert bool(torch.isfinite(preds["images_render"]).all())


def test_generic_model_with_a_global_encoder():
    """Per-sequence codes bound by GenericModel reach the renderer batched per target image."""
    torch.manual_seed(0)
    image_rgb, fg_probability, cameras = synthetic_batch(n_views=3)
    args = small_model_args("NeuralRadianceFieldImplicitFunction", n_views=3)
    args.global_encoder_class_type = "SequenceAutodecoder"
    args.global_encoder_SequenceAutodecoder_args.autodecoder_args.n_instances = 2
    args.global_encoder_SequenceAutodecoder_args.autodecoder_args.encoding_dim = 4
    model = GenericModel(**args)
    preds = model(
        image_rgb=image_rgb,
        camera=cameras,
        fg_probability=fg_probability,
        sequence_name=["first", "second", "first"],
        evaluation_mode=EvaluationMode.TRAINING,
    )
    assert torch.isfinite(preds["objective"])
    preds["objective"].backward()
    codes = model.global_encoder.autodecoder._autodecoder_codes.weight
    assert codes.grad is not None and bool(torch.isfinite(codes.grad).all())
    assert float(codes.grad.abs().sum()) > 0


@pytest.mark.parametrize("as_tensor", [False, True])
def test_surface_matches_the_exact_sphere(as_tensor):
    """Depth along unit directions, masks and normals of an exact sphere, occupancy and SDF."""
    cameras = _cameras(2)
    bundle = implicitron_rays(cameras)
    renderer = _renderer(n_steps_evaluation=48, bounds=(-0.55, -0.55, -0.55, 0.55, 0.55, 0.55))
    with torch.no_grad():
        out = _render(renderer, AnalyticSphere(as_tensor=as_tensor), bundle)
    distance, exact_hit = exact_sphere_distance(bundle, 0.3)
    hit = out.aux["hit"][..., 0]
    assert out.features.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert out.depths.shape == out.masks.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert bool((hit == exact_hit).float().mean() > 0.99)
    both = hit & exact_hit
    assert int(both.sum()) > 50
    assert float((out.depths[..., 0] - distance)[both].abs().max()) < 1e-4
    points = bundle.origins + distance[..., None] * bundle.directions
    normals = torch.nn.functional.normalize(points, dim=-1)
    assert float((out.normals - normals)[both].abs().max()) < 1e-3
    torch.testing.assert_close(out.masks[..., 0][hit], torch.ones(int(hit.sum())))
    assert float(out.masks[..., 0][~hit].max()) < 0.5
    assert bool((out.features[~hit] == 0).all()) and bool((out.depths[~hit] == 0).all())
    torch.testing.assert_close(out.points[both], points[both], atol=1e-4, rtol=0)


def test_implicit_gradient_of_the_depth_and_colour():
    """The central ray meets the sphere at distance 1.5 - r: d(depth)/d(radius) = -1."""
    origins = torch.tensor([[[0.0, 0.0, 1.5], [0.0, 0.0, -1.5]]])
    directions = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]])
    bundle = ImplicitronRayBundle(
        origins=origins, directions=directions, lengths=torch.tensor([[[0.5, 2.5]] * 2]),
        xys=torch.zeros(1, 2, 2),
    )
    sphere = AnalyticSphere()
    out = _render(_renderer(), sphere, bundle, EvaluationMode.TRAINING)
    torch.testing.assert_close(out.depths[0, :, 0], torch.tensor([1.2, 1.2]), atol=1e-5, rtol=0)
    (grad_radius,) = torch.autograd.grad(out.depths.sum(), sphere.radius, retain_graph=True)
    torch.testing.assert_close(grad_radius, torch.tensor(-2.0), atol=1e-4, rtol=0)
    (grad_centre,) = torch.autograd.grad(out.depths[0, 0, 0], sphere.centre)
    torch.testing.assert_close(grad_centre, torch.tensor([0.0, 0.0, -1.0]), atol=1e-4, rtol=0)
    # colour at the surface point follows the moving surface
    out = _render(_renderer(), sphere, bundle, EvaluationMode.TRAINING)
    (grad_colour,) = torch.autograd.grad(out.features[0, 0, 2], sphere.radius)
    z = 0.3
    expected = 3.0 * torch.sigmoid(torch.tensor(3.0 * z)) * (1 - torch.sigmoid(torch.tensor(3 * z)))
    torch.testing.assert_close(grad_colour, expected, atol=1e-4, rtol=0)


def test_conditioned_function_gets_rays_batched_per_image():
    """A bound global_code (one radius per image) with many small, padded chunks."""
    cameras = _cameras(3)
    bundle = implicitron_rays(cameras)
    codes = torch.tensor([[0.2], [0.3], [0.35]], requires_grad=True)
    sphere = AnalyticSphere(radius_from_code=True)
    wrapper = ImplicitFunctionWrapper(sphere)
    wrapper.bind_args(global_code=codes)
    renderer = _renderer(n_steps_training=32, chunk_size=100)
    out = _render(renderer, wrapper, bundle, EvaluationMode.TRAINING)
    assert all(shape[0] == 3 for shape in sphere.calls)
    distance, exact_hit = exact_sphere_distance(bundle, codes.detach()[:, 0])
    hit = out.aux["hit"][..., 0]
    assert bool((hit == exact_hit).float().mean() > 0.99)
    both = hit & exact_hit
    for image in range(3):
        assert int(both[image].sum()) > 10
    assert float((out.depths.detach()[..., 0] - distance)[both].abs().max()) < 1e-4
    (grad_codes,) = torch.autograd.grad(out.depths[..., 0][hit].sum(), codes)
    assert bool((grad_codes < 0).all())


def test_chunking_does_not_change_the_render():
    cameras = _cameras(2)
    bundle = implicitron_rays(cameras)
    sphere = AnalyticSphere()
    with torch.no_grad():
        one = _render(_renderer(n_steps_evaluation=24), sphere, bundle)
        many = _render(_renderer(n_steps_evaluation=24, chunk_size=50), sphere, bundle)
    for name in ("features", "depths", "masks", "normals"):
        torch.testing.assert_close(getattr(one, name), getattr(many, name))


def test_soft_mask_and_eikonal_term():
    """Missed rays get a soft mask with gradient; SDFs give grad_theta in training."""
    cameras = _cameras(1)
    bundle = implicitron_rays(cameras)
    sphere = AnalyticSphere(as_tensor=True)
    out = _render(_renderer(n_steps_training=16), sphere, bundle, EvaluationMode.TRAINING)
    hit = out.aux["hit"][..., 0]
    soft = out.masks[..., 0][~hit & ~out.aux["missed"][..., 0]]
    assert soft.numel() > 0 and bool(((soft > 0) & (soft < 0.5)).all())
    (grad_radius,) = torch.autograd.grad(soft.sum(), sphere.radius, retain_graph=True)
    assert float(grad_radius) > 0  # a larger sphere covers more of those pixels
    grad_theta = out.aux["grad_theta"]
    assert grad_theta.shape == (2 * IMAGE_SIZE * IMAGE_SIZE, 3)
    torch.testing.assert_close(grad_theta.norm(dim=-1), torch.ones(grad_theta.shape[0]))
    hard = _render(_renderer(soft_mask_alpha=0.0), sphere, bundle, EvaluationMode.TRAINING)
    torch.testing.assert_close(hard.masks[..., 0], hit.float())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(field_type="density"), "field_type"),
        (dict(bounds=(0.0, 1.0)), "bounds"),
        (dict(bounds=(1.0, 0.0, 0.0, 0.0, 1.0, 1.0)), "bounds"),
        (dict(n_steps_training=1), "n_steps_training"),
        (dict(feature_activation="relu"), "feature_activation"),
        (dict(march_precision="fp8"), "march_precision"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _renderer(**kwargs)


def test_invalid_inputs():
    bundle = implicitron_rays(_cameras(1))
    sphere = ImplicitFunctionWrapper(AnalyticSphere())
    renderer = _renderer(n_steps_evaluation=8)
    with pytest.raises(ValueError, match="one implicit function"):
        renderer(ray_bundle=bundle, implicit_functions=[sphere, sphere])
    with pytest.raises(ValueError, match="bg_color"):
        _render(_renderer(n_steps_evaluation=8, bg_color=(0.0, 0.0)), sphere, bundle)

    class DensitiesOnly(torch.nn.Module):
        def forward(self, *, ray_bundle, **kwargs):
            return (ray_bundle.lengths[..., None],)

    with pytest.raises(ValueError, match="must return"):
        _render(renderer, DensitiesOnly(), bundle)


def test_non_finite_field_is_reported():
    class NaNSphere(AnalyticSphere):
        def forward(self, **kwargs):
            densities, colours, aux = super().forward(**kwargs)
            return densities * math.nan, colours, aux

    bundle = implicitron_rays(_cameras(1))
    with pytest.raises(ValueError, match="non-finite"):
        _render(_renderer(n_steps_evaluation=8), NaNSphere(), bundle)
