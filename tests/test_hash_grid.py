"""
The hash-grid encoding and field: vertex values, exact trilinear interpolation, the hash, first
and second derivatives against finite differences (float64), and the whole field rendered by
``DVRRenderer`` with the gradients of a pixel loss (parameters, camera) against central finite
differences of the whole render (the root finder re-run at every perturbed value).

Frame and units: the normalised object frame (the box ``UNIT_CUBE_BOUNDS``, scene units).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import functional_call

from dvr_plugin.fields import HashGridEncoding, HashGridField
from dvr_plugin.fields.appearance import RenderingNetwork, ViewDependentField
from dvr_plugin.fields.field import (
    UNIT_CUBE_BOUNDS,
    CoarseToFine,
    OccupancyTextureField,
    evaluate_field,
    set_annealing_progress,
)
from dvr_plugin.fields.hash_grid import level_resolutions, spatial_hash
from tests.core_factories import check_parameter_gradients, finite_difference

LOWER = torch.tensor(UNIT_CUBE_BOUNDS[0], dtype=torch.float64)
EXTENT = torch.tensor(UNIT_CUBE_BOUNDS[1], dtype=torch.float64) - LOWER
PIXEL_WEIGHTS = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one intra-op thread is as fast, and far faster on busy cores."""


# Levels of 4, 8, 16 cells: two dense (125 and 729 vertices), one hashed into T = 1024.
SMALL_GRID = dict(
    n_levels=3, features_per_level=2, log2_table_size=10, base_resolution=4, max_resolution=16
)


def small_encoding(**kwargs) -> HashGridEncoding:
    """A float64 :data:`SMALL_GRID` encoding (``kwargs`` override) with random N(0, 1) rows."""
    encoding = HashGridEncoding(**{**SMALL_GRID, **kwargs}).double()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        encoding.embeddings.copy_(torch.randn(encoding.embeddings.shape, generator=generator))
    return encoding


def reference_hash(i: int, j: int, k: int, table_size: int) -> int:
    """Instant-NGP's hash in uint32 arithmetic (Python integers), its primes written out."""
    mask = 0xFFFFFFFF
    h = i & mask
    h ^= (j * 2654435761) & mask
    h ^= (k * 805459861) & mask
    return h % table_size


def vertex_row(encoding: HashGridEncoding, level: int, vertex: tuple[int, int, int]) -> int:
    """The row of ``embeddings`` of a vertex, computed independently of the encoding."""
    n = encoding.resolutions[level] + 1
    i, j, k = vertex
    if n**3 <= encoding.table_size:
        index = i + j * n + k * n * n
    else:
        index = reference_hash(i, j, k, encoding.table_size)
    return encoding.offsets[level] + index


def test_levels_and_layout():
    resolutions = level_resolutions(n_levels=16, base_resolution=16, max_resolution=2048)
    assert resolutions[::5] == [16, 80, 406, 2048]
    encoding = small_encoding()
    assert encoding.resolutions == (4, 8, 16)
    assert encoding.hashed == (False, False, True)
    assert encoding.sizes == (125, 729, 1024)
    assert encoding.offsets == (0, 125, 854)
    assert encoding.embeddings.shape == (1878, 2) and encoding.out_size == 6
    default = HashGridEncoding()
    assert default.resolutions[0] == 16 and default.resolutions[-1] == 2048
    assert sum(default.hashed) == 11 and default.embeddings.dtype == torch.float32
    assert float(default.embeddings.detach().abs().max()) <= 1e-4


def test_values_at_grid_vertices_are_table_entries():
    encoding = small_encoding()
    generator = torch.Generator().manual_seed(1)
    for level, resolution in enumerate(encoding.resolutions):
        vertices = torch.randint(0, resolution + 1, (40, 3), generator=generator)
        vertices[0] = 0
        vertices[1] = resolution  # the far corner of the box
        points = LOWER + vertices.double() / resolution * EXTENT
        features = encoding(points).view(40, 3, 2)[:, level]
        rows = [vertex_row(encoding, level, tuple(v)) for v in vertices.tolist()]
        expected = encoding.embeddings.detach()[rows]
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-12)


def test_trilinear_interpolation_is_exact_for_linear_functions_on_dense_levels():
    encoding = small_encoding()
    a = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]], dtype=torch.float64)  # (F, 3)
    b = torch.tensor([0.25, -0.5], dtype=torch.float64)
    with torch.no_grad():
        for level in (0, 1):  # the dense ones
            n = encoding.resolutions[level] + 1
            k, j, i = torch.meshgrid(*(torch.arange(n),) * 3, indexing="ij")
            vertices = torch.stack([i, j, k], -1).reshape(-1, 3)  # row order i + j n + k n^2
            world = LOWER + vertices.double() / (n - 1) * EXTENT
            start = encoding.offsets[level]
            encoding.embeddings[start : start + n**3] = world @ a.T + b
    generator = torch.Generator().manual_seed(2)
    points = LOWER + torch.rand(500, 3, generator=generator, dtype=torch.float64) * EXTENT
    features = encoding(points).view(500, 3, 2)
    linear = points @ a.T + b
    for level in (0, 1):
        torch.testing.assert_close(features[:, level], linear, rtol=0, atol=1e-12)
    # the hashed level holds random entries: not the linear function
    assert float((features[:, 2] - linear).detach().abs().max()) > 0.1


def test_hashed_levels_index_into_the_table():
    encoding = small_encoding(log2_table_size=8)  # 4^3 = 125 dense; 8 and 16 cells hashed
    assert encoding.hashed == (False, True, True)
    generator = torch.Generator().manual_seed(3)
    inside = LOWER + torch.rand(2000, 3, generator=generator, dtype=torch.float64) * EXTENT
    corners = torch.tensor([UNIT_CUBE_BOUNDS[0], UNIT_CUBE_BOUNDS[1]], dtype=torch.float64)
    outside = torch.tensor([[5.0, -5.0, 0.0], [-1.0, 1.0, 9.0]], dtype=torch.float64)
    rows, weights = encoding.corner_indices(torch.cat([inside, corners, outside]))
    assert rows.shape == weights.shape == (2004, 3, 8)
    for level in range(3):
        local = rows[:, level] - encoding.offsets[level]
        assert int(local.min()) >= 0 and int(local.max()) < encoding.sizes[level]
    # the hash spreads the vertices over the table
    assert torch.unique(rows[:, 2]).numel() > 0.9 * encoding.table_size
    torch.testing.assert_close(weights.sum(-1), torch.ones(2004, 3, dtype=torch.float64))
    assert float(weights.min()) >= 0.0
    # outside the box the features are those of the box's boundary; NaN stays NaN, in range
    clamped = torch.tensor([[0.55, -0.55, 0.0], [-0.55, 0.55, 0.55]], dtype=torch.float64)
    torch.testing.assert_close(encoding(outside), encoding(clamped), rtol=0, atol=0)
    rows, _ = encoding.corner_indices(torch.tensor([[float("nan"), 0.0, 0.1]]))
    assert int(rows.min()) >= 0 and int(rows.max()) < encoding.embeddings.shape[0]
    assert bool(encoding(torch.tensor([[0.0, float("nan"), 0.1]])).isnan().all())
    # int64 arithmetic reduced mod T equals the uint32 hash of the reference implementation
    coords = torch.randint(0, 2049, (300, 3), generator=generator)
    for log2_size in (10, 19, 24):
        ours = spatial_hash(coords, 2**log2_size).tolist()
        expected = [reference_hash(*c, 2**log2_size) for c in coords.tolist()]
        assert ours == expected


def small_field(**kwargs) -> HashGridField:
    """A float64 field on :data:`SMALL_GRID` with hidden layers of width 8 (``kwargs``
    override any of the field's or the encoding's arguments)."""
    settings = dict(hidden_size=8, rgb_hidden_size=8)
    return HashGridField(**{**SMALL_GRID, **settings, **kwargs}).double()


def _inside_points(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    unit = 0.05 + 0.9 * torch.rand(n, 3, generator=generator, dtype=torch.float64)
    return LOWER + unit * EXTENT


def test_gradients_of_table_and_points_against_finite_differences():
    encoding = small_encoding(n_levels=2, log2_table_size=6, base_resolution=2, max_resolution=4)
    assert encoding.hashed == (False, True)
    table = encoding.embeddings.detach().clone().requires_grad_(True)
    points = _inside_points(4, seed=4).requires_grad_(True)

    def encode(table, points):
        return functional_call(encoding, {"embeddings": table}, (points,))

    assert torch.autograd.gradcheck(encode, (table, points), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(encode, (table, points), eps=1e-6, atol=1e-8)


def test_the_normals_second_derivatives_against_finite_differences():
    """``d/d(table, x) |grad_x f|^2`` of a small field (what a normal loss back-propagates)."""
    torch.manual_seed(5)
    field = small_field(
        n_levels=2, log2_table_size=6, base_resolution=2, max_resolution=4, n_layers=1, rgb=False
    )
    with torch.no_grad():
        field.encoding.embeddings.normal_(std=0.5)
    points = _inside_points(3, seed=6)[None].requires_grad_(True)

    def normal_energy(points):
        with torch.enable_grad():
            at = points if points.requires_grad else points.requires_grad_(True)
            (grad,) = torch.autograd.grad(field(at).values.sum(), at, create_graph=True)
        return grad.pow(2).sum()

    field.zero_grad()
    normal_energy(points).backward()
    table = field.encoding.embeddings
    touched = torch.nonzero(table.grad.abs().sum(-1) > 1e-8)[:6, 0].tolist()
    assert len(touched) == 6
    for row in touched:
        numeric = finite_difference(lambda: normal_energy(points.detach()), table.data, (row, 0))
        assert table.grad[row, 0].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    moved = points.detach().clone()
    for index in [(0, 0, 0), (0, 1, 2), (0, 2, 1)]:
        numeric = finite_difference(lambda: normal_energy(moved), moved, index)
        assert points.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_float32_and_float64_and_forward_mode_derivative():
    encoding = HashGridEncoding(
        n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=32
    )
    points = _inside_points(50, seed=7)
    assert encoding(points.float()).dtype == torch.float32
    encoding = encoding.double()
    assert encoding.embeddings.dtype == torch.float64 and encoding(points).dtype == torch.float64
    field = HashGridField(
        n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=32, hidden_size=16
    ).double()
    batch = points[None].requires_grad_(True)
    tangent = torch.randn_like(batch)
    out = field(batch)
    reverse = [
        (torch.autograd.grad(channel.sum(), batch, retain_graph=True)[0] * tangent).sum(-1)
        for channel in (out.values, out.rgb[..., 0], out.rgb[..., 2])
    ]
    from torch.autograd import forward_ad

    with forward_ad.dual_level(), warnings.catch_warnings():
        # torch's forward-AD decompositions load through torch.jit.script (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        dual = field(forward_ad.make_dual(batch.detach(), tangent))
        forward = [
            forward_ad.unpack_dual(dual.values).tangent,
            forward_ad.unpack_dual(dual.rgb).tangent[..., 0],
            forward_ad.unpack_dual(dual.rgb).tangent[..., 2],
        ]
    for a, b in zip(forward, reverse, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_field_protocol_latent_heads_and_initialisation():
    torch.manual_seed(0)
    kwargs = dict(n_levels=4, log2_table_size=10, base_resolution=4, max_resolution=16)
    field = HashGridField(**kwargs, hidden_size=16, latent_size=5)
    points, latent = torch.rand(2, 7, 3) - 0.5, torch.randn(2, 5)
    out = evaluate_field(field, points, latent)
    assert out.values.shape == (2, 7) and out.rgb.shape == (2, 7, 3)
    assert bool((out.rgb > 0).all()) and bool((out.rgb < 1).all())
    assert not torch.allclose(field(points, torch.zeros(2, 5)).values, out.values)
    (output, features) = field.forward_with_features(points, latent)
    assert features.shape == (2, 7, 16) and torch.equal(output.values, out.values)
    with pytest.raises(ValueError, match="latent"):
        field(points)
    with pytest.raises(ValueError, match="latent must have shape"):
        field(points, torch.randn(3, 5))
    with pytest.raises(ValueError, match="points must have shape"):
        field(torch.rand(2, 7, 2), latent)
    assert HashGridField(**kwargs, rgb=False)(points).rgb is None
    without_points = HashGridField(**kwargs, include_points=False)
    assert without_points.layers[0].in_features == 8
    # SDF: the analytic sphere of radius 0.3 at initialisation
    sdf = HashGridField(**kwargs, field_type="sdf")
    sphere = torch.nn.functional.normalize(torch.randn(1, 50, 3), dim=-1) * 0.3
    assert sdf.field_type == "sdf" and float(sdf(sphere).values.detach().abs().max()) < 1e-2
    occupancy = HashGridField(**kwargs, geometric_init_radius=0.25)
    values = occupancy(torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]])).values.detach()
    assert float(values[0, 0]) > 2.0 and float(values[0, 1]) < -2.0


def test_coarse_to_fine_levels():
    encoding = small_encoding(anneal=True)
    points = _inside_points(20, seed=8)
    features = encoding(points).view(20, 3, 2)
    assert float(features[:, 0].detach().abs().min()) > 0
    assert float(features[:, 1:].detach().abs().max()) == 0
    encoding.set_progress(0.75)  # alpha = 1.5: level 1 on, level 2 half-way
    features = encoding(points).view(20, 3, 2)
    plain = small_encoding()(points).view(20, 3, 2)
    torch.testing.assert_close(features[:, :2], plain[:, :2])
    torch.testing.assert_close(features[:, 2], 0.5 * plain[:, 2])
    assert float(encoding.state_dict()["progress"]) == 0.75
    field = HashGridField(n_levels=2, log2_table_size=8, max_resolution=32, anneal=True)
    field.set_encoding_progress(1.0)
    assert float(field.encoding.progress) == 1.0
    with pytest.raises(ValueError, match="without annealing"):
        small_encoding().set_progress(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoding.set_progress(1.5)


def test_annealing_progress_reaches_every_annealed_encoding_through_the_protocol():
    """``set_annealing_progress`` (what the trainer calls) finds the annealed encodings of any
    module: a hash-grid geometry inside a view-dependent field, a Fourier field, a module type
    of its own that follows ``CoarseToFine``; encodings built without annealing are left alone."""

    class Levels(torch.nn.Module):
        """A module unknown to the library that anneals: only the protocol is needed."""

        def __init__(self) -> None:
            super().__init__()
            self.anneal = True
            self.seen: list[float] = []

        def set_progress(self, progress: float) -> None:
            self.seen.append(progress)

    geometry = HashGridField(n_levels=2, log2_table_size=8, max_resolution=32, anneal=True)
    head = RenderingNetwork(feature_size=geometry.hidden_size, n_view_frequencies=2)
    fourier = OccupancyTextureField(hidden_size=8, n_blocks=1, n_frequencies=2, fourier_anneal=True)
    custom = Levels()
    model = torch.nn.ModuleList(
        [ViewDependentField(geometry=geometry, appearance=head), fourier, custom]
    )
    assert isinstance(custom, CoarseToFine) and isinstance(geometry.encoding, CoarseToFine)
    assert not isinstance(torch.nn.Linear(2, 2), CoarseToFine)
    set_annealing_progress(model, 0.25)
    assert float(geometry.encoding.progress) == 0.25
    assert float(fourier.encoding.progress) == 0.25
    assert custom.seen == [0.25]
    assert not head.view_encoding.anneal and "progress" not in head.state_dict()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_annealing_progress(model, 1.5)
    set_annealing_progress(HashGridField(n_levels=2, log2_table_size=8), 0.5)  # nothing annealed


def test_field_passes_its_encoding_options_on():
    field = HashGridField(
        **SMALL_GRID, bounds=((0, 0, 0), (1, 2, 3)), init_scale=0.0, anneal=True, hidden_size=8
    )
    encoding = field.encoding
    assert encoding.resolutions == (4, 8, 16) and encoding.table_size == 1024
    assert encoding.bounds == ((0.0, 0.0, 0.0), (1.0, 2.0, 3.0)) and encoding.anneal
    assert float(encoding.embeddings.detach().abs().max()) == 0.0
    default = HashGridField().encoding
    assert default.resolutions[-1] == 2048 and default.table_size == 2**19 and not default.anneal
    with pytest.raises(TypeError, match="n_level"):
        HashGridField(n_level=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_levels=0), "n_levels must be an integer >= 1, got 0"),
        (dict(features_per_level=1.5), "features_per_level must be an integer >= 1"),
        (dict(base_resolution=True), "base_resolution must be an integer"),
        (dict(log2_table_size=31), "log2_table_size must be at most 30"),
        (dict(base_resolution=64, max_resolution=32), "max_resolution"),
        (dict(bounds=((0, 0, 0), (1, 1))), "bounds must be"),
        (dict(bounds=((0, 0, 0), (1, -1, 1))), "bounds must be"),
        (dict(init_scale=-1.0), "init_scale"),
    ],
)
def test_bad_encoding_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HashGridEncoding(**kwargs)


def test_bad_inputs_and_field_arguments():
    encoding = small_encoding()
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        encoding(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating point"):
        encoding(torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="field_type"):
        HashGridField(field_type="density")
    with pytest.raises(ValueError, match="n_layers must be an integer >= 1, got 0"):
        HashGridField(n_layers=0)
    with pytest.raises(ValueError, match="latent_size must be an integer >= 0, got -1"):
        HashGridField(latent_size=-1)
    with pytest.raises(ValueError, match="geometric_init_radius"):
        HashGridField(geometric_init_radius=-0.1)


# ----------------------------------------------------------------------------------------------
# The whole field rendered by DVRRenderer (float64 PyTorch3D cameras)


def _cameras(translation=None):
    from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

    rotation, default_translation = look_at_view_transform(1.6, 20.0, 30.0)
    translation = default_translation.double() if translation is None else translation
    return FoVPerspectiveCameras(R=rotation.double(), T=translation, fov=40.0)


def render_field(field_type: str, *, rgb: bool = True, seed: int = 0) -> HashGridField:
    """A float64 hash-grid field with a surface near the sphere of radius 0.3, every
    parameter random enough to move the pixels."""
    torch.manual_seed(seed)
    field = small_field(
        log2_table_size=9,
        n_layers=2,
        rgb_n_layers=1,
        rgb=rgb,
        field_type=field_type,
        geometric_init_radius=0.3,
        geometric_init_sharpness=20.0,
    )
    with torch.no_grad():
        field.encoding.embeddings.uniform_(-0.5, 0.5)
        scale = 0.05 if field_type == "occupancy" else 0.003
        field.value_head.weight.normal_(std=scale)
    return field


def check_render_gradients(model, geometry: HashGridField, xys: torch.Tensor) -> int:
    """Pixel loss of ``DVRRenderer`` against finite differences in the camera translation, the
    table rows the rays touch (and one they do not) and entries of every other parameter."""
    from dvr_plugin.renderer.raysampler import SecantRaysampler
    from dvr_plugin.renderer.renderer import DVRRenderer

    renderer = DVRRenderer(
        field=model,
        raysampler=SecantRaysampler(n_steps=64, n_secant_steps=40, chunk_size=None),
        background_color=0.0,
    )
    n = xys.shape[1]
    ray_weights = torch.linspace(0.5, 1.5, n, dtype=torch.float64)

    def render(translation):
        out = renderer(_cameras(translation), xys=xys)
        assert bool(out.hit.all()), "the test rays must all hit"
        images = (ray_weights[:, None] * out.images[0] * PIXEL_WEIGHTS).sum()
        return images + (ray_weights * out.depths[0]).sum()

    translation = _cameras().T.clone().requires_grad_(True)
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no directional derivative: a fallback path
        render(translation).backward()

    def loss():
        return render(translation.detach())

    checked = 0
    for j in range(3):
        numeric = finite_difference(loss, translation.data, (0, j))
        assert translation.grad[0, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        checked += 1
    table = geometry.encoding.embeddings
    touched = torch.nonzero(table.grad.abs().sum(-1) > 0)[:, 0]
    assert 0 < touched.numel() < table.shape[0]
    untouched = int(torch.nonzero(table.grad.abs().sum(-1) == 0)[0, 0])
    picks = [(int(row), int(row) % 2) for row in touched[::5][:6]]
    for index in [*picks, (untouched, 0)]:
        numeric = finite_difference(loss, table.data, index)
        assert table.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        checked += 1
    generator = torch.Generator().manual_seed(9)
    others = check_parameter_gradients(
        model, loss, per_parameter=1, generator=generator, abs_tol=1e-8, skip=(table,)
    )
    return checked + len(others)


@pytest.mark.parametrize("field_type", ["occupancy", "sdf"])
def test_rendered_pixel_gradients_of_parameters_and_camera(field_type):
    """The texture head: depth and colour from one evaluation with forward-mode AD."""
    field = render_field(field_type)
    generator = torch.Generator().manual_seed(10)
    xys = 0.15 * (2 * torch.rand(1, 5, 2, generator=generator, dtype=torch.float64) - 1)
    assert check_render_gradients(field, field, xys) >= 18


def test_rendered_pixel_gradients_with_a_view_dependent_head():
    """The normal (double backward through the hash grid) feeds the colour."""
    geometry = render_field("sdf", rgb=False, seed=1)
    torch.manual_seed(2)
    head = RenderingNetwork(feature_size=8, hidden_size=8, n_layers=1, n_view_frequencies=1)
    model = ViewDependentField(geometry=geometry, appearance=head.double())
    generator = torch.Generator().manual_seed(11)
    xys = 0.15 * (2 * torch.rand(1, 4, 2, generator=generator, dtype=torch.float64) - 1)
    assert check_render_gradients(model, geometry, xys) >= 18
