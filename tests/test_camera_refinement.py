"""
Camera refinement (``train.refine_cameras``): the rigid per-view correction, its gradients
through the renderer against finite differences in float64, recovering a perturbed pose, and
the corrections in a fit's checkpoint and summary.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch3d.renderer import PerspectiveCameras
from pytorch3d.transforms import so3_exp_map, so3_log_map

from dvr_plugin.data import as_ndc_perspective, cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.engine.run_outputs import CHECKPOINT_NAME
from dvr_plugin.fields.shapes import demo_scene
from dvr_plugin.renderer import DVRRenderer, SecantRaysampler
from dvr_plugin.training.camera_refinement import CameraRefinement
from dvr_plugin.training.trainer import Trainer, build_field, parameter_groups
from tests.core_factories import finite_difference
from tests.training_factories import TrainingFactory


def _cameras(n: int, size: int, dtype=torch.float64):
    eyes = 2.0 * fibonacci_sphere(n).float()
    cameras = cameras_looking_at_origin(eyes, image_size=size, fov=40.0)
    return as_ndc_perspective(cameras, (size, size), dtype=dtype)


def _view(cameras, points: torch.Tensor) -> torch.Tensor:
    """`(N, P, 3)` view-space points of `(P, 3)` world points: ``X R + T`` for each camera."""
    return points[None] @ cameras.R + cameras.T[:, None, :]


def _renderer(size: int, dtype=torch.float64) -> DVRRenderer:
    field = demo_scene()
    if dtype == torch.float64:
        field = field.double()
    return DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(image_width=size, image_height=size, n_steps=64),
        background_color=1.0,
    )


def test_zero_corrections_keep_the_cameras():
    cameras = _cameras(3, 16)
    refine = CameraRefinement(n_views=5).double()
    out = refine(cameras, torch.tensor([4, 0, 2]))
    torch.testing.assert_close(out.R, cameras.R)
    torch.testing.assert_close(out.T, cameras.T)
    torch.testing.assert_close(out.focal_length, cameras.focal_length)


def test_correction_acts_in_view_space():
    cameras = _cameras(2, 16)
    refine = CameraRefinement(n_views=2).double()
    w, t = torch.tensor([0.1, -0.2, 0.05]), torch.tensor([0.01, 0.02, -0.03])
    with torch.no_grad():
        refine.deltas[1] = torch.cat([w, t]).double()
    out = refine(cameras, torch.tensor([0, 1]))
    points = torch.randn(7, 3, dtype=torch.float64)
    view, view_refined = _view(cameras, points), _view(out, points)
    rotation = so3_exp_map(w[None].double())[0]
    torch.testing.assert_close(view_refined[0], view[0])  # view 0 has no correction
    torch.testing.assert_close(view_refined[1], view[1] @ rotation + t.double())


def test_bad_index_is_refused():
    with pytest.raises(ValueError, match="index must be"):
        CameraRefinement(n_views=2)(_cameras(2, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="n_views"):
        CameraRefinement(n_views=0)


def test_gradients_match_finite_differences():
    size = 12
    cameras = _cameras(2, size)
    renderer = _renderer(size)
    refine = CameraRefinement(n_views=2).double()
    with torch.no_grad():
        refine.deltas.copy_(0.01 * torch.randn(2, 6, dtype=torch.float64))
    index = torch.tensor([0, 1])

    def loss() -> torch.Tensor:
        out = renderer(refine(cameras, index))
        return (out.images * torch.linspace(0, 1, 3, dtype=torch.float64)).sum() + out.depths.sum()

    refine.deltas.grad = None
    loss().backward()
    analytic = refine.deltas.grad.clone()
    for entry in [(0, 0), (0, 4), (1, 2), (1, 5)]:
        numeric = finite_difference(loss, refine.deltas, entry, step=1e-6)
        assert math.isclose(analytic[entry].item(), numeric, rel_tol=2e-3, abs_tol=1e-6), (
            entry,
            analytic[entry].item(),
            numeric,
        )


def test_a_perturbed_pose_is_recovered():
    """The field is right and fixed; optimising the correction brings a moved camera back."""
    size = 24
    cameras = _cameras(1, size, dtype=torch.float32)
    renderer = _renderer(size, dtype=torch.float32)
    with torch.no_grad():
        target = renderer(cameras)
    error = torch.tensor([[0.04, -0.03, 0.0, 0.03, -0.02, 0.02]])
    moved = CameraRefinement(n_views=1)
    with torch.no_grad():
        moved.deltas.copy_(error)
    start = moved(cameras, torch.tensor([0]))
    start = type(start)(
        R=start.R.detach(),
        T=start.T.detach(),
        focal_length=cameras.focal_length,
        principal_point=cameras.principal_point,
        image_size=cameras.image_size,
    )
    refine = CameraRefinement(n_views=1)
    optimiser = torch.optim.Adam(refine.parameters(), lr=2e-3)
    for _ in range(200):
        out = renderer(refine(start, torch.tensor([0])))
        both = (out.masks > 0.5) & (target.masks > 0.5)  # depth is differentiable on hits
        loss = (out.depths - target.depths)[both].abs().mean()
        loss = loss + (out.images - target.images)[both].abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # the recovered camera against the true one: compare world-to-view maps on scene points
    points = torch.rand(200, 3) - 0.5
    true_view = _view(cameras, points)
    before = _view(start, points)
    with torch.no_grad():
        after = _view(refine(start, torch.tensor([0])), points)
    error_before = (before - true_view).norm(dim=-1).mean().item()
    error_after = (after - true_view).norm(dim=-1).mean().item()
    # measured: 0.110 -> 0.0067 of the scene's unit
    assert error_after < 0.2 * error_before, (error_before, error_after)


def test_fit_saves_and_resumes_the_corrections(tmp_path):
    views = TrainingFactory.sphere_views(n_views=6, image_size=16)
    config = TrainingFactory.config(
        **{"train.refine_cameras": True, "train.camera_lr": 1e-3, "train.iterations": 6}
    )
    trainer = Trainer(config=config, train_data=views, out_dir=str(tmp_path), progress=False)
    summary = trainer.fit()
    corrections = trainer.camera_refinement.deltas.detach().clone()
    assert corrections.abs().sum() > 0  # the cameras were trained
    assert summary["camera_refinement"]["views"] == 6
    assert summary["camera_refinement"]["rotation_deg_max"] > 0
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    torch.testing.assert_close(state["camera_refinement"]["deltas"], corrections)
    longer = TrainingFactory.config(
        **{"train.refine_cameras": True, "train.camera_lr": 1e-3, "train.iterations": 8}
    )
    resumed = Trainer(
        config=longer, train_data=views, out_dir=str(tmp_path), resume=True, progress=False
    )
    torch.testing.assert_close(resumed.camera_refinement.deltas.detach(), corrections)
    assert resumed.optimizer.param_groups[-1]["lr"] == pytest.approx(1e-3)


def test_the_corrections_are_the_last_parameter_group():
    """``parameter_groups`` builds the camera group: its own learning rate, no weight decay,
    after the field's groups (the hash-grid tables' group included), which it leaves as they
    are; the trainer's optimiser has exactly these groups."""
    config = TrainingFactory.config(
        **{"model.encoding": "hash_grid", "model.hash_grid.n_levels": 2, "optim.encoding_lr": 1e-2}
    )
    field = build_field(config)
    refinement = CameraRefinement(n_views=3)
    without = parameter_groups(field, config.optim)
    groups = parameter_groups(field, config.optim, camera_refinement=refinement, camera_lr=1e-3)
    assert len(without) == 2 and len(groups) == 3
    for plain, grouped in zip(without, groups, strict=False):
        assert plain.keys() == grouped.keys()
        assert [id(q) for q in plain["params"]] == [id(q) for q in grouped["params"]]
    camera = groups[-1]
    assert camera["params"] == [refinement.deltas]
    assert camera["lr"] == 1e-3 and camera["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="camera_lr"):
        parameter_groups(field, config.optim, camera_refinement=refinement)

    views = TrainingFactory.sphere_views(n_views=3, image_size=16)
    trainer = Trainer(
        config=TrainingFactory.config(**{"train.refine_cameras": True, "train.camera_lr": 1e-3}),
        train_data=views,
        progress=False,
    )
    assert len(trainer.optimizer.param_groups) == 2
    last = trainer.optimizer.param_groups[-1]
    assert last["params"] == [trainer.camera_refinement.deltas]
    assert last["lr"] == pytest.approx(1e-3) and last["weight_decay"] == 0.0


def test_bad_camera_lr_is_refused():
    with pytest.raises(ValueError, match="train.camera_lr"):
        TrainingFactory.config(**{"train.camera_lr": 0.0})


def test_corrections_start_at_camera_refine_after():
    views = TrainingFactory.sphere_views(n_views=4, image_size=16)
    config = TrainingFactory.config(
        **{
            "train.refine_cameras": True,
            "train.camera_lr": 1e-3,
            "train.camera_refine_after": 3,
        }
    )
    trainer = Trainer(config=config, train_data=views, progress=False)
    for _ in range(3):
        trainer.train_step()
    assert trainer.camera_refinement.deltas.abs().sum() == 0  # steps 0-2: the data's cameras
    for _ in range(3):
        trainer.train_step()
    assert trainer.camera_refinement.deltas.abs().sum() > 0
    with pytest.raises(ValueError, match="train.camera_refine_after"):
        TrainingFactory.config(**{"train.camera_refine_after": -1})


def _exact_cameras(n: int) -> PerspectiveCameras:
    """``n`` float64 cameras with exactly orthonormal rotations, 2 to 3 units from the origin."""
    generator = torch.Generator().manual_seed(5)
    R = so3_exp_map(torch.randn(n, 3, generator=generator, dtype=torch.float64))
    T = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 0.3
    T[:, 2] += 2.5
    return PerspectiveCameras(R=R, T=T, focal_length=2.0)


def _common_motion_corrections(cameras, rotation_vector, shift) -> CameraRefinement:
    """Corrections that move every camera by one world motion ``X -> X A + a``: the refined
    cameras are ``R' = A^T R``, ``T' = T - a A^T R`` (the object moved by it looks the same)."""
    A = so3_exp_map(rotation_vector[None])[0]
    R, T = cameras.R, cameras.T
    R_moved = A.T @ R
    T_moved = T - (shift[None, None, :] @ R_moved)[:, 0]
    correction = R.transpose(1, 2) @ R_moved
    refine = CameraRefinement(n_views=R.shape[0]).double()
    with torch.no_grad():
        refine.deltas[:, :3] = so3_log_map(correction)
        refine.deltas[:, 3:] = T_moved - (T[:, None, :] @ correction)[:, 0]
    return refine


def test_a_common_motion_of_all_cameras_is_taken_out():
    cameras = _exact_cameras(12)
    rotation_vector = torch.tensor([0.01, -0.02, 0.015], dtype=torch.float64)
    shift = torch.tensor([0.003, -0.002, 0.001], dtype=torch.float64)
    refine = _common_motion_corrections(cameras, rotation_vector, shift)
    # the corrections really are that motion: every view point moves as X A + a would
    points = torch.randn(5, 3, dtype=torch.float64)
    A = so3_exp_map(rotation_vector[None])[0]
    moved = _view(refine(cameras, torch.arange(12)), points @ A + shift)
    torch.testing.assert_close(moved, _view(cameras, points))
    assert refine.deltas.abs().max() > 1e-3
    removed = refine.remove_common_motion(cameras.R, cameras.T)
    assert removed["rotation_deg"] == pytest.approx(math.degrees(rotation_vector.norm()), rel=1e-6)
    assert removed["translation"] == pytest.approx(float(shift.norm()), rel=1e-6)
    assert refine.deltas.abs().max() < 1e-9


def test_removing_the_common_motion_keeps_what_differs_between_views():
    cameras = _exact_cameras(12)
    generator = torch.Generator().manual_seed(0)
    own = 1e-2 * torch.randn(12, 6, generator=generator, dtype=torch.float64)
    refine = _common_motion_corrections(
        cameras,
        torch.tensor([0.02, 0.01, -0.01], dtype=torch.float64),
        torch.tensor([0.0, 0.004, -0.002], dtype=torch.float64),
    )
    with torch.no_grad():
        refine.deltas += own
    refine.remove_common_motion(cameras.R, cameras.T)
    once = refine.deltas.detach().clone()
    again = refine.remove_common_motion(cameras.R, cameras.T)  # nothing common is left
    assert again["rotation_deg"] < 1e-6 and again["translation"] < 1e-8
    torch.testing.assert_close(refine.deltas.detach(), once, atol=1e-9, rtol=0)
    # what is left is of the size of the views' own corrections, not of the common motion
    assert 0.2 * own.abs().mean() < once.abs().mean() < 2.0 * own.abs().mean()


def test_remove_common_motion_checks_the_cameras():
    cameras = _cameras(3, 16)
    with pytest.raises(ValueError, match=r"R and T must be \(4, 3, 3\) and \(4, 3\)"):
        CameraRefinement(n_views=4).remove_common_motion(cameras.R, cameras.T)


def test_camera_anchor_keeps_the_mean_motion_at_zero_during_a_fit():
    views = TrainingFactory.sphere_views(n_views=6, image_size=16)
    config = TrainingFactory.config(
        **{"train.refine_cameras": True, "train.camera_lr": 1e-2, "train.camera_anchor": True}
    )
    trainer = Trainer(config=config, train_data=views, progress=False)
    for _ in range(4):
        trainer.train_step()
    refine = trainer.camera_refinement
    assert refine.deltas.abs().sum() > 0  # the views were corrected...
    left = refine.remove_common_motion(views.cameras.R, views.cameras.T)
    assert left["rotation_deg"] < 1e-4 and left["translation"] < 1e-6  # ...but not together
