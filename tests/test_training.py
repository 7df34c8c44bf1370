"""The trainer, its configuration and checkpoints (CPU, seconds each)."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import tempfile
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from dvr_plugin.cli.fit_commands import add_demo_parser, add_fit_parser, add_render_parser
from dvr_plugin.data import cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.engine import checkpoint as checkpoint_module
from dvr_plugin.engine.checkpoint import load_checkpoint, save_checkpoint
from dvr_plugin.engine.config import parse_override, resolve_config
from dvr_plugin.engine.evaluation import orbit_cameras, orbit_settings
from dvr_plugin.engine.logs import read_csv
from dvr_plugin.engine.run_outputs import CHECKPOINT_NAME
from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.training.config import FitConfig, load_config
from dvr_plugin.training.data import check_training_views
from dvr_plugin.training.fit import render_checkpoint
from dvr_plugin.training.trainer import AutocastField, Trainer
from tests.training_factories import TrainingFactory


def test_yaml_and_overrides():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fit.yaml")
        with open(path, "w") as handle:
            handle.write(
                "seed: 3\n"
                "model: {hidden_size: 64}\n"
                "optim: {lr: 1e-4}\n"  # YAML reads this as a string; the config as a float
                "train: {iterations: 10}\n"
            )
        config = load_config(
            path,
            [
                "train.iterations=12",
                "loss.rgb=2",
                "loss.depth=0.5",
                "train.step_milestones={0: 8, 5: 16}",
                "optim.lr_milestones=[3, 6]",
                "data.loader_args.views=[1, 2]",
                "mixed_precision=true",
                "device_overrides.cuda.model.hidden_size=256",
            ],
        )
    assert config.seed == 3
    assert config.model.hidden_size == 64
    assert config.optim.lr == 1e-4
    assert isinstance(config.optim.lr, float)
    assert config.train.iterations == 12
    assert config.loss.rgb == 2.0
    assert config.loss.weights().depth == 0.5
    assert config.train.step_milestones == {0: 8, 5: 16}
    assert config.optim.lr_milestones == [3, 6]
    assert config.data.loader_args == {"views": [1, 2]}
    assert config.mixed_precision
    assert config.device_overrides == {"cuda": {"model": {"hidden_size": 256}}}
    # The round trip through a dict (as stored in checkpoints) is lossless.
    assert FitConfig.from_dict(config.to_dict()) == config


def test_device_overrides():
    data = {
        "train": {"iterations": 10},
        "device_overrides": {
            "cpu": {"train.iterations": 20, "model": {"hidden_size": 16}},
            "cuda": {"train.iterations": 30},
        },
    }
    config, device = resolve_config(load_config(base=data, overrides=["device=cpu"]))
    assert str(device) == "cpu"
    assert (config.train.iterations, config.model.hidden_size) == (20, 16)
    # An explicit override beats the file's per-device value.
    config, _ = resolve_config(
        load_config(base=data, overrides=["device=cpu", "train.iterations=5"])
    )
    assert (config.train.iterations, config.model.hidden_size) == (5, 16)


def test_parse_override():
    assert parse_override("a.b=1.5") == (["a", "b"], 1.5)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("p=a=b") == (["p"], "a=b")
    for bad in ("no_equals", "=3", "a..b=1"):
        with pytest.raises(ValueError, match="override"):
            parse_override(bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iteration=3", "Unknown config key 'train.iteration'"),
        ("nosuch.key=3", "Unknown config key 'nosuch.key'"),
        ("train.iterations=many", "train.iterations must be an integer"),
        ("model.hidden_size=1.5", "model.hidden_size must be an integer"),
        ("train.sampling=everywhere", "train.sampling"),
        ("data.format=dtu", "data.path is required"),
        ("train.step_milestones={0: 32, 10: 16}", "Step counts must not decrease"),
        ("train.iterations.x=3", "value, not a section"),
    ],
)
def test_bad_keys_and_types(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_failing_write_keeps_previous_file():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "checkpoint.pt")
        save_checkpoint(path, {"step": 1, "config": {}, "model": {"w": torch.ones(3)}})
        before = open(path, "rb").read()

        def failing_save(obj, handle):
            handle.write(b"partial bytes")
            raise OSError("disk full")

        with mock.patch.object(checkpoint_module.torch, "save", failing_save):
            with pytest.raises(OSError, match="disk full"):
                save_checkpoint(path, {"step": 2, "config": {}, "model": {}})
        assert open(path, "rb").read() == before
        assert load_checkpoint(path)["step"] == 1
        assert os.listdir(folder) == ["checkpoint.pt"]  # no temporary left over


def test_truncated_and_foreign_files():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "checkpoint.pt")
        save_checkpoint(path, {"step": 1, "config": {}, "model": {"w": torch.ones(100)}})
        data = open(path, "rb").read()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            load_checkpoint(path)
        other = os.path.join(folder, "other.pt")
        torch.save({"weights": 1}, other)
        with pytest.raises(ValueError, match="not a dvr_plugin checkpoint"):
            load_checkpoint(other)
        with pytest.raises(FileNotFoundError):
            load_checkpoint(os.path.join(folder, "missing.pt"))


@pytest.fixture(scope="module")
def sphere_split(one_thread):
    """Training and validation views of the analytic sphere (every fourth view held out)."""
    return TrainingFactory.sphere_views().split(every=4)


@pytest.fixture
def make_trainer(sphere_split):
    """``make_trainer(out_dir, *, resume=False, **overrides)``: a quiet tiny-config Trainer."""
    train, val = sphere_split

    def make(out_dir, *, resume=False, **overrides):
        return Trainer(
            config=TrainingFactory.config(**overrides),
            train_data=train,
            val_data=val,
            out_dir=out_dir,
            resume=resume,
            progress=False,
        )

    return make


def test_resume_equals_uninterrupted(make_trainer):
    extra = {"optim.lr_milestones": [3], "loss.normal": 0.1}
    with tempfile.TemporaryDirectory() as folder:
        straight = make_trainer(os.path.join(folder, "a"), **{"train.iterations": 6}, **extra)
        straight.fit()
        first = make_trainer(os.path.join(folder, "b"), **{"train.iterations": 3}, **extra)
        first.fit()
        # A fresh process would start from other RNG states: scramble them.
        torch.manual_seed(12345)
        resumed = make_trainer(
            os.path.join(folder, "b"), resume=True, **{"train.iterations": 6}, **extra
        )
        assert resumed.step == 3
        resumed.fit()
        assert resumed.step == 6
        for key, value in straight.field.state_dict().items():
            assert torch.equal(value, resumed.field.state_dict()[key]), key
        opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
        assert opt_a["param_groups"] == opt_b["param_groups"]
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), name
        log_a = read_csv(os.path.join(folder, "a", "train_log.csv"))
        log_b = read_csv(os.path.join(folder, "b", "train_log.csv"))
        assert log_a["step"] == log_b["step"]
        assert log_a["loss"] == log_b["loss"]


def test_schedule_by_time_moves_every_schedule_to_the_clock(make_trainer):
    overrides = {
        "train.iterations": 100,
        "train.time_budget_s": 10.0,
        "train.schedule_by_time": True,
        "train.step_milestones": {0: 16, 50: 24},
        "optim.lr_milestones": [40, 90],
        "model.fourier_anneal_steps": 80,
        "loss.mask": 1.0,
        "loss.mask_alpha_every": 30,
    }
    trainer = make_trainer(None, **overrides)
    trainer.train_seconds = 6.0  # 60% of the budget: the schedules stand at step 60 of 100
    trainer.update_schedule()
    assert (trainer.step, trainer.schedule_step) == (0, 60)
    stats = trainer.train_step()
    assert stats["n_steps"] == 24
    assert stats["lr"] == pytest.approx(0.5 * trainer.config.optim.lr)
    assert stats["fourier_progress"] == pytest.approx(60 / 80)
    assert stats["mask_alpha"] == pytest.approx(trainer._mask_alpha(60))
    assert trainer._mask_alpha(60) != trainer._mask_alpha(0)
    # a step counts as a step too: the schedules never fall behind it
    trainer.train_seconds = 0.0
    trainer.update_schedule()
    assert trainer.schedule_step == 1
    with pytest.raises(ValueError, match="schedule_by_time needs train.time_budget_s"):
        TrainingFactory.config(**{"train.schedule_by_time": True})
    with pytest.raises(ValueError, match="lr_by_time needs train.time_budget_s"):
        TrainingFactory.config(**{"train.lr_by_time": True})


def test_boundary_share_reaches_the_trainer_and_is_checked(make_trainer):
    trainer = make_trainer(None, **{"train.boundary_fraction": 0.5, "train.boundary_width": 1})
    options = trainer.config.train.sampling_options()
    assert (options["boundary_fraction"], options["boundary_width"]) == (0.5, 1)
    assert math.isfinite(trainer.train_step()["loss"])
    with pytest.raises(ValueError, match="boundary_fraction needs a balanced train.sampling"):
        TrainingFactory.config(**{"train.sampling": "uniform", "train.boundary_fraction": 0.2})


def test_short_fit_lowers_loss_and_raises_iou(make_trainer):
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(
            folder,
            **{
                "train.iterations": 150,
                "eval.log_every": 1,
                "eval.validate_every": 150,
                "optim.lr": 2e-3,
                "model.hidden_size": 48,
            },
        )
        summary = trainer.fit()
        log = read_csv(os.path.join(folder, "train_log.csv"))
        val = read_csv(os.path.join(folder, "val_log.csv"))
        for name in ("checkpoint.pt", "curves.png", "config.yaml", "val/step_000150.png"):
            assert os.path.exists(os.path.join(folder, name)), name
    losses = log["loss"]
    assert sum(losses[-15:]) / 15 < 0.5 * sum(losses[:15]) / 15
    assert val["step"] == [0.0, 150.0]
    iou_before, iou_after = val["mask_iou"]
    assert iou_after > 0.8
    assert iou_after > iou_before + 0.3
    assert summary["validation"]["mask_iou"] == pytest.approx(iou_after, abs=5e-6)


def test_occupancy_grid_is_refreshed_and_resumes_exactly(make_trainer):
    grid = {"train.occupancy_grid": 16, "train.grid_refresh_every": 2}
    with tempfile.TemporaryDirectory() as folder:
        straight = make_trainer(os.path.join(folder, "a"), **{"train.iterations": 6}, **grid)
        assert straight.grid.all_occupied  # nothing skipped before a refresh
        straight.fit()
        assert straight.grid.occupied_fraction < 0.9
        assert straight.renderer.raysampler.occupancy_grid is straight.grid
        first = make_trainer(os.path.join(folder, "b"), **{"train.iterations": 3}, **grid)
        first.fit()
        torch.manual_seed(12345)
        resumed = make_trainer(
            os.path.join(folder, "b"), resume=True, **{"train.iterations": 6}, **grid
        )
        assert torch.equal(resumed.grid.occupied, first.grid.occupied)
        resumed.fit()
        assert torch.equal(resumed.grid.occupied, straight.grid.occupied)
        for key, value in straight.field.state_dict().items():
            assert torch.equal(value, resumed.field.state_dict()[key]), key
    for key, value in (
        ("occupancy_grid", -1),
        ("grid_refresh_every", 0),
        ("grid_refresh_fraction", 0.0),
    ):
        with pytest.raises(ValueError, match=f"train.{key}"):
            TrainingFactory.config(**{f"train.{key}": value})


def test_refuses_to_overwrite_and_bad_resume(make_trainer):
    with tempfile.TemporaryDirectory() as folder:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            make_trainer(folder, resume=True)
        make_trainer(folder, **{"train.iterations": 1}).fit()
        path = os.path.join(folder, CHECKPOINT_NAME)
        with pytest.raises(ValueError, match="already holds a checkpoint"):
            make_trainer(folder)
        # A truncated checkpoint: a clear error, and the file stays as it was.
        data = open(path, "rb").read()
        with open(path, "wb") as handle:
            handle.write(data[:100])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            make_trainer(folder, resume=True)
        assert os.path.getsize(path) == 100
        # A checkpoint of another model size.
        with open(path, "wb") as handle:
            handle.write(data)
        with pytest.raises(ValueError, match="does not match"):
            make_trainer(folder, resume=True, **{"model.hidden_size": 16})


def test_bad_inputs(make_trainer, sphere_split):
    good, _ = sphere_split
    nan_cameras = cameras_looking_at_origin(
        2.0 * fibonacci_sphere(len(good)).float(), image_size=32
    )
    nan_cameras.R[0, 0, 0] = float("nan")
    cases = {
        "cameras for": SimpleNamespace(
            images=good.images, masks=good.masks, depths=None, cameras=good.cameras[[0, 1]]
        ),
        "one \\(H, W\\) mask per image": SimpleNamespace(
            images=good.images, masks=good.masks[:2], depths=None, cameras=good.cameras
        ),
        "non-finite": SimpleNamespace(
            images=good.images, masks=good.masks, depths=None, cameras=nan_cameras
        ),
        "Every training mask is empty": SimpleNamespace(
            images=good.images,
            masks=torch.zeros_like(good.masks),
            depths=None,
            cameras=good.cameras,
        ),
    }
    for message, views in cases.items():
        with pytest.raises(ValueError, match=message):
            check_training_views(views)
    one_empty = good.masks.clone()
    one_empty[0] = False
    views = SimpleNamespace(
        images=good.images, masks=one_empty, depths=None, cameras=good.cameras, names=None
    )
    views.names = [f"v{i}" for i in range(len(good))]
    with pytest.raises(ValueError, match="empty object mask: v0"):
        check_training_views(views)
    with pytest.warns(UserWarning, match="empty object mask"):
        check_training_views(views, empty_masks="warn")
    with pytest.raises(ValueError, match="image_gradient > 0 needs 2x2 pixel patches"):
        make_trainer(None, **{"loss.image_gradient": 1.0})
    with pytest.raises(ValueError, match="image_gradient > 0 needs 2x2 pixel patches"):
        make_trainer(
            None, **{"loss.image_gradient": 1.0, "train.sampling": "foreground_balanced"}
        )


def test_render_checkpoint(make_trainer):
    with tempfile.TemporaryDirectory() as folder:
        make_trainer(folder, **{"train.iterations": 2}).fit()
        out = os.path.join(folder, "render")
        result = render_checkpoint(
            os.path.join(folder, CHECKPOINT_NAME), out, n_frames=3, image_size=16, n_steps=16
        )
        assert len(result["images"]) == 3
        assert os.path.exists(os.path.join(out, "turntable.gif"))
        assert math.isfinite(result["seconds"])


def test_depth_terms_and_patches(make_trainer):
    trainer = make_trainer(
        None,
        **{
            "loss.depth": 1.0,
            "loss.world_point": 1.0,
            "loss.image_gradient": 1.0,
            "train.sampling": "patch",
        },
    )
    stats = trainer.train_step()
    for name in ("rgb", "depth", "world_point", "freespace", "occupancy", "image_gradient"):
        assert name in stats
        assert math.isfinite(stats[name]), name
    assert trainer.step == 1
    balanced = make_trainer(
        None, **{"loss.image_gradient": 1.0, "train.sampling": "foreground_balanced_patch"}
    )
    stats = balanced.train_step()
    assert math.isfinite(stats["image_gradient"]) and stats["image_gradient"] > 0


def test_low_precision_network_float32_outputs():
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=32, n_blocks=2, n_frequencies=2)
    wrapped = AutocastField(field=field, device_type="cpu")
    points = (torch.rand(2, 50, 3) - 0.5).requires_grad_(True)
    out = wrapped(points)
    reference = field(points)
    assert out.values.dtype == torch.float32
    assert out.rgb.dtype == torch.float32
    torch.testing.assert_close(out.values, reference.values, atol=0.05, rtol=0.05)
    assert wrapped.field_type == "occupancy"
    # Gradients reach the points (normals) and the parameters.
    (grad,) = torch.autograd.grad(out.values.sum(), points, create_graph=True)
    grad.norm().backward()
    assert field.fc_in.weight.grad is not None


def test_orbit_cameras_look_at_origin():
    axis = torch.tensor([0.3, -0.5, 0.8])
    cameras = orbit_cameras(
        6, image_size=20, distance=1.7, fov=40.0, elevation=35.0, axis=axis.tolist()
    )
    centres = cameras.get_camera_center()
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((6,), 1.7))
    sine = centres @ (axis / axis.norm()) / 1.7
    torch.testing.assert_close(sine, torch.full((6,), math.sin(math.radians(35.0))))
    centre = cameras.transform_points_screen(torch.zeros(6, 1, 3))[..., :2]
    torch.testing.assert_close(centre, torch.full((6, 1, 2), 10.0), atol=1e-4, rtol=0)


def test_orbit_settings_of_a_cap():
    # Cameras on a cap around +Z: the orbit turns around +Z at their elevation.
    azimuth = torch.linspace(0, 2 * math.pi, 9)[:-1]
    elevation = math.radians(50.0)
    eyes = 2.0 * torch.stack(
        [
            math.cos(elevation) * torch.cos(azimuth),
            math.cos(elevation) * torch.sin(azimuth),
            torch.full_like(azimuth, math.sin(elevation)),
        ],
        dim=-1,
    )
    cameras = cameras_looking_at_origin(eyes, image_size=16, fov=30.0)
    settings = orbit_settings(cameras)
    assert settings["distance"] == pytest.approx(2.0, abs=5e-5)
    assert settings["fov"] == pytest.approx(30.0, abs=5e-4)
    assert settings["elevation"] == pytest.approx(50.0, abs=5e-4)
    torch.testing.assert_close(
        torch.tensor(settings["axis"]), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0
    )


def test_parsers():
    parser = argparse.ArgumentParser(prog="dvr")
    commands = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(commands)
    add_render_parser(commands)
    add_demo_parser(commands)
    args = parser.parse_args(
        ["fit", "--data", "x.obj", "--format", "mesh", "--out", "o", "train.iterations=5"]
    )
    assert (args.data, args.format, args.out) == ("x.obj", "mesh", "o")
    assert args.overrides == ["train.iterations=5"]
    assert not args.resume
    args = parser.parse_args(["render", "c.pt", "--out", "r", "--frames", "4"])
    assert (args.checkpoint, args.frames, args.cameras) == ("c.pt", 4, "orbit")
    args = parser.parse_args(["demo", "--out", "d"])
    assert (args.out, args.device) == ("d", "auto")
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "--format", "obj", "--out", "o"])


def test_bad_input_is_one_line_and_exit_code_2():
    parser = argparse.ArgumentParser(prog="dvr")
    commands = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(commands)
    with tempfile.TemporaryDirectory() as folder:
        missing = os.path.join(folder, "no_such_scan")
        args = parser.parse_args(
            ["fit", "--format", "dtu", "--data", missing, "--out", folder, "--quiet"]
        )
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = args.run(args)
        assert code == 2
        assert "does not exist" in stderr.getvalue()
        assert os.listdir(folder) == []  # nothing written
        args = parser.parse_args(["fit", "--out", folder, "--resume"])
        with contextlib.redirect_stderr(io.StringIO()):
            assert args.run(args) == 2
