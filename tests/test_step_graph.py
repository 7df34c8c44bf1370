"""
The dense differentiable half of a render (every ray evaluated, misses masked) against the
sparse one (hits only), in values and gradients (float64, CPU); ``GraphedTrainStep`` against the
same step written by hand (eager on the CPU; recorded and replayed on CUDA, skipped elsewhere),
and its errors.

Frame and units: world coordinates of the unit cube, cameras 1.5 from the origin; depths are
z-depths in those units.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.renderer.step_graph import GraphedTrainStep, _check_capturable, optimizer_key
from tests.core_factories import SphereMLPField
from tests.test_appearance import make_model
from tests.test_hash_grid import small_field

COLOUR_WEIGHTS = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)


def _renderer(field, *, compute_normals=False, differentiable_normals=False, **sampler):
    raysampler = SecantRaysampler(
        n_steps=48,
        compute_normals=compute_normals,
        differentiable_normals=differentiable_normals,
        **sampler,
    )
    return DVRRenderer(field=field, raysampler=raysampler, check_finite=False)


def _views(dtype=torch.float64, device="cpu"):
    rotation, translation = look_at_view_transform(1.5, [20.0, -10.0], [30.0, 200.0])
    cameras = FoVPerspectiveCameras(
        R=rotation.to(dtype), T=translation.to(dtype), fov=45.0, device=device
    )
    generator = torch.Generator().manual_seed(3)
    # corners of the view included: some rays miss the box, some miss the object
    xys = torch.rand(2, 60, 2, generator=generator, dtype=dtype) * 2 - 1
    return cameras, xys.to(device)


def _loss(out, *, weights=COLOUR_WEIGHTS) -> torch.Tensor:
    loss = (out.images * weights.to(out.images)).sum() + (out.depths * out.masks).sum()
    # every ray's surface point: a miss must get no gradient in the dense half either
    loss = loss + 0.1 * out.surface_points.sum()
    if out.normals is not None:
        loss = loss + (out.normals * 0.3).sum()
    return loss


def _render_and_gradients(renderer, cameras, xys, dense):
    renderer.zero_grad(set_to_none=True)
    found = renderer.raysampler.find_surfaces(
        cameras=cameras, field=renderer.field if not hasattr(renderer.field, "geometry")
        else renderer.field.geometry, xys=xys,
    )
    out = renderer.render_surfaces(found, dense=dense)
    _loss(out).backward()
    grads = {name: p.grad.clone() for name, p in renderer.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize(
    "case", ["texture", "view_dependent", "sdf_normals", "differentiable_normals", "hash_grid"]
)
def test_dense_half_equals_sparse_half(case):
    if case == "texture":
        field = SphereMLPField(latent_size=0).double()
        renderer = _renderer(field)
    elif case == "hash_grid":  # an SDF starting as a sphere (points off the box: clamped)
        torch.manual_seed(0)
        renderer = _renderer(
            small_field(field_type="sdf", geometric_init_radius=0.3), compute_normals=False
        )
    elif case == "view_dependent":
        renderer = _renderer(make_model(latent_size=0))
    elif case == "sdf_normals":
        renderer = _renderer(
            SphereMLPField(field_type="sdf", latent_size=0).double(), compute_normals=True
        )
    else:
        renderer = _renderer(
            SphereMLPField(latent_size=0).double(),
            compute_normals=True,
            differentiable_normals=True,
        )
    cameras, xys = _views()
    sparse, sparse_grads = _render_and_gradients(renderer, cameras, xys, dense=False)
    dense, dense_grads = _render_and_gradients(renderer, cameras, xys, dense=True)
    hit = sparse.hit
    assert 10 < int(hit.sum()) < hit.numel()  # both hits and misses in the batch
    assert bool(sparse.ray_bundle.missed_box.any())
    assert torch.equal(dense.hit, hit)
    for name in ("images", "masks", "depths", "normals"):
        want, got = getattr(sparse, name), getattr(dense, name)
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert sparse_grads.keys() == dense_grads.keys() and len(sparse_grads) > 2
    for name, want in sparse_grads.items():
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(dense_grads[name], want, rtol=1e-9, atol=1e-11)


def test_dense_render_needs_check_finite_off():
    renderer = DVRRenderer(
        field=SphereMLPField(latent_size=0), raysampler=SecantRaysampler(n_steps=16)
    )
    cameras, xys = _views(torch.float32)
    found = renderer.raysampler.find_surfaces(cameras=cameras, field=renderer.field, xys=xys)
    with pytest.raises(ValueError, match="check_finite=False"):
        renderer.render_surfaces(found, dense=True)


def _depth_colour_loss(out, *, target_depth, target_rgb):
    rgb = ((out.images - target_rgb) ** 2).sum(-1)
    depth = (out.depths - target_depth).abs() * out.masks
    return (rgb + depth).mean()


def _targets(renderer, cameras, xys):
    with torch.no_grad():
        out = renderer(cameras, xys=xys)
    return {"target_depth": out.depths + 0.02, "target_rgb": out.images.flip(-1)}


def _hand_written_steps(renderer, optimizer, cameras, xys, targets, n):
    losses = []
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        out = renderer(cameras, xys=xys)
        loss = _depth_colour_loss(out, **targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_graphed_step_equals_the_hand_written_step_on_cpu():
    field = SphereMLPField(latent_size=0).double()
    renderer = _renderer(field)
    twin = copy.deepcopy(renderer)
    cameras, xys = _views()
    targets = _targets(renderer, cameras, xys)
    optimizer = torch.optim.Adam(renderer.parameters(), lr=1e-4)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1e-4)
    step = GraphedTrainStep(renderer=renderer, optimizer=optimizer, loss_fn=_depth_colour_loss)
    losses = [float(step(cameras, xys=xys, **targets)) for _ in range(4)]
    want = _hand_written_steps(twin, twin_optimizer, cameras, xys, targets, 4)
    assert losses == pytest.approx(want, rel=1e-10)
    assert losses[-1] < losses[0]  # it trains
    pairs = zip(renderer.named_parameters(), twin.named_parameters(), strict=True)
    for (name, got), (_, expected) in pairs:
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=name)
    assert step.recorded_shapes == 0  # nothing recorded off CUDA


def test_graphed_step_errors():
    field = SphereMLPField(latent_size=0)
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-3)
    checked = DVRRenderer(field=field, raysampler=SecantRaysampler(n_steps=16))
    with pytest.raises(ValueError, match="check_finite=False"):
        GraphedTrainStep(renderer=checked, optimizer=optimizer, loss_fn=_depth_colour_loss)
    with pytest.raises(ValueError, match="DVRRenderer"):
        GraphedTrainStep(renderer=field, optimizer=optimizer, loss_fn=_depth_colour_loss)
    renderer = _renderer(field)
    with pytest.raises(ValueError, match="warmup_steps"):
        GraphedTrainStep(
            renderer=renderer, optimizer=optimizer, loss_fn=_depth_colour_loss, warmup_steps=0
        )
    step = GraphedTrainStep(renderer=renderer, optimizer=optimizer, loss_fn=_depth_colour_loss)
    cameras, xys = _views(torch.float32)
    with pytest.raises(ValueError, match="must be tensors"):
        step(cameras, xys=xys, target_depth=1.0, target_rgb=torch.zeros(2, 60, 3))
    cameras.T.requires_grad_(True)
    with pytest.raises(ValueError, match="cameras without gradients"):
        step(cameras, xys=xys, target_depth=torch.ones(2, 60), target_rgb=torch.zeros(2, 60, 3))
    cameras.T.requires_grad_(False)
    vector_loss = GraphedTrainStep(
        renderer=renderer, optimizer=optimizer, loss_fn=lambda out: out.depths
    )
    with pytest.raises(ValueError, match="scalar tensor"):
        vector_loss(cameras, xys=xys)
    with pytest.raises(ValueError, match="capturable=True"):
        _check_capturable(optimizer)
    _check_capturable(torch.optim.Adam(field.parameters(), lr=1e-3, capturable=True))


def test_a_changed_optimiser_needs_a_new_recording():
    field = SphereMLPField(latent_size=0)
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-3)
    field(torch.zeros(1, 4, 3)).values.sum().backward()
    optimizer.step()  # the state exists
    key = optimizer_key(optimizer)
    assert optimizer_key(optimizer) == key
    optimizer.param_groups[0]["lr"] = 5e-4  # a number is baked into a recording
    assert optimizer_key(optimizer) != key
    optimizer.param_groups[0]["lr"] = 1e-3
    assert optimizer_key(optimizer) == key
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # new state tensors
    assert optimizer_key(optimizer) != key
    rate = torch.tensor(1e-3)
    tensor_rate = torch.optim.Adam(field.parameters(), lr=rate)
    before = optimizer_key(tensor_rate)
    rate.fill_(5e-4)  # a tensor is read at every replay: the same recording serves
    assert optimizer_key(tensor_rate) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("view_dependent", [False, True])
def test_recorded_step_matches_eager_steps_on_cuda(view_dependent):
    torch.manual_seed(0)
    field = make_model(latent_size=0).float() if view_dependent else SphereMLPField(latent_size=0)
    renderer = _renderer(field.cuda(), cuda_graphs=True).cuda()
    twin = copy.deepcopy(renderer)
    cameras, xys = _views(torch.float32, "cuda")
    targets = _targets(renderer, cameras, xys)

    def adam(module):
        return torch.optim.Adam(module.parameters(), lr=1e-3, fused=True, capturable=True)

    step = GraphedTrainStep(renderer=renderer, optimizer=adam(renderer), loss_fn=_depth_colour_loss)
    eager = GraphedTrainStep(
        renderer=twin, optimizer=adam(twin), loss_fn=_depth_colour_loss, cuda_graphs=False
    )
    got = [float(step(cameras, xys=xys, **targets)) for _ in range(6)]
    want = [float(eager(cameras, xys=xys, **targets)) for _ in range(6)]
    assert step.recorded_shapes == 1 and eager.recorded_shapes == 0
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert got[-1] < got[0]
    for (name, a), (_, b) in zip(renderer.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
