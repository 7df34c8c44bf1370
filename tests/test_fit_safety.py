"""
``dvr fit`` never gives a silent wrong result: the data format is read from the data (never the
demo when a path is given), a resume on other data or to an earlier step is refused with nothing
written, a collapsed fit is reported as such, real photographs lead with the in-mask PSNR,
Ctrl-C saves a resumable checkpoint, and a missing ``--config`` file is named (CPU, tiny fits).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dvr_plugin.cli.fit_commands import add_fit_parser, infer_fit_format
from dvr_plugin.data import MultiViewData, detect_data_format, write_dvr_layout
from dvr_plugin.data.paths import find_shared_data, missing_data_message
from dvr_plugin.engine.checkpoint import load_checkpoint, save_checkpoint
from dvr_plugin.engine.logs import read_csv
from dvr_plugin.engine.run_outputs import CHECKPOINT_NAME
from dvr_plugin.engine.trainer import FitInterrupted
from dvr_plugin.training import trainer as trainer_module
from dvr_plugin.training.config import FitConfig, apply_device_overrides, load_config
from dvr_plugin.training.data import load_fit_data
from dvr_plugin.training.fit import finish_fit, packaged_config
from dvr_plugin.training.trainer import (
    Trainer,
    background_is_modelled,
    collapse_reason,
    resume_data_mismatch,
)
from tests.training_factories import TrainingFactory

# Tiny settings shared by every command-line fit below (16x16 images, a small network).
TINY = [
    "--device",
    "cpu",
    "--quiet",
    "model.hidden_size=32",
    "model.n_blocks=2",
    "model.n_frequencies=2",
    "train.iterations=4",
    "train.images_per_batch=2",
    "train.rays_per_image=64",
    "train.sampling=foreground_balanced",
    "train.step_milestones={0: 16}",
    "eval.validate_every=2",
    "eval.checkpoint_every=2",
    "eval.log_every=1",
    "eval.n_steps=16",
    "eval.turntable_frames=0",
    "eval.mesh_resolution=0",
    "eval.tensorboard=false",
]


# Small tensors: one thread is as fast, and far faster when the cores are busy.
pytestmark = pytest.mark.usefixtures("one_thread")


def dvr_fit(argv: list[str]) -> tuple[int, str, str]:
    """Run ``dvr fit <argv>``; returns ``(exit code, stdout, stderr)``."""
    parser = argparse.ArgumentParser(prog="dvr")
    add_fit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fit", *argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.run(args)
    return code, out.getvalue(), err.getvalue()


def folder_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def sphere_layout(root: Path, *, n_views: int = 8, tint: float = 1.0, noisy_background=False):
    """
    Renders of an analytic sphere written in the reference DVR layout (16x16); ``tint`` scales
    the colours, ``noisy_background`` replaces the white background by a seeded random "scene"
    (a photograph-like capture whose background is not modelled).
    """
    views = TrainingFactory.sphere_views(n_views=n_views, image_size=16)
    images = views.images * tint
    if noisy_background:
        noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
        images = torch.where(views.masks[..., None], images, noise)
    data = MultiViewData(images=images, masks=views.masks, cameras=views.cameras)
    return write_dvr_layout(root, data)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """DVR-layout folders: ``sphere``, ``tinted`` (other colours), ``photo`` (real background)."""
    base = tmp_path_factory.mktemp("layouts")
    return {
        "sphere": sphere_layout(base / "sphere"),
        "tinted": sphere_layout(base / "tinted", tint=0.5),
        "photo": sphere_layout(base / "photo", noisy_background=True),
    }


@pytest.fixture(scope="module")
def finished_fit(layouts, tmp_path_factory) -> Path:
    """A finished 4-step ``dvr fit`` of the sphere layout, its format inferred (not given)."""
    out = tmp_path_factory.mktemp("fits") / "sphere"
    code, stdout, stderr = dvr_fit(["--data", str(layouts["sphere"]), "--out", str(out), *TINY])
    assert code == 0, stderr
    assert "data.format=dvr (inferred from" in stderr
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


# ---------------------------------------------------------------------------------------------
# 1. The data format comes from the data


def _write_png(path: Path, size: int = 4) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


def test_detect_format_of_each_layout(tmp_path, layouts):
    mesh = tmp_path / "shape.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    assert detect_data_format(mesh).format == "mesh"

    nerf = tmp_path / "nerf"
    nerf.mkdir()
    (nerf / "transforms_train.json").write_text("{}")
    assert detect_data_format(nerf).format == "nerf-synthetic"

    monosdf = tmp_path / "monosdf"
    _write_png(monosdf / "000000_rgb.png")
    np.savez(monosdf / "cameras.npz", world_mat_0=np.eye(4), scale_mat_0=np.eye(4))
    assert detect_data_format(monosdf).format == "monosdf"

    # DTU: world_mat_i is a full projection K [R | t] (IDR / NeuS and the reference's DTU).
    K = np.array([[300.0, 0, 200, 0], [0, 300, 150, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    for name in ("cameras_sphere.npz", "cameras.npz"):
        dtu = tmp_path / f"dtu_{name[:-4]}"
        _write_png(dtu / "image" / "000000.png")
        np.savez(dtu / name, world_mat_0=K, scale_mat_0=np.eye(4), camera_mat_0=np.eye(4))
        assert detect_data_format(dtu).format == "dtu", name

    # The reference DVR layout: world_mat_i = [R | t], intrinsics in camera_mat_i.
    detected = detect_data_format(layouts["sphere"])
    assert detected.format == "dvr"
    assert "camera_mat_i" in detected.reason


def test_detect_format_refuses_to_guess(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="Cannot tell the data format") as error:
        detect_data_format(empty)
    for name in ("mesh", "dtu", "monosdf", "nerf-synthetic", "dvr", "--format"):
        assert name in str(error.value)
    both = tmp_path / "both"
    _write_png(both / "000000_rgb.png")
    np.savez(both / "cameras.npz", world_mat_0=np.eye(4))
    (both / "transforms_train.json").write_text("{}")
    with pytest.raises(ValueError, match="several data formats"):
        detect_data_format(both)
    with pytest.raises(ValueError, match="only mesh files"):
        detect_data_format(both / "transforms_train.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_data_format(tmp_path / "missing")


@pytest.mark.parametrize(
    "parts, expected",
    [
        (("dtu_scan24_neus_400", "scan24"), "dtu"),
        (("dtu_scan24_384", "scan24"), "monosdf"),
        (("nerf_synthetic_lego", "lego"), "nerf-synthetic"),
        (("meshes", "cow.obj"), "mesh"),
    ],
)
def test_detect_format_of_the_shared_data(parts, expected):
    path = find_shared_data(*parts)
    if path is None:
        pytest.skip(missing_data_message(*parts))
    assert detect_data_format(path).format == expected


def _fit_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dvr")
    add_fit_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["fit", "--out", "unused", *argv])


def test_format_precedence(tmp_path, layouts):
    data = str(layouts["sphere"])
    # Nothing names the format: inferred.
    inferred = infer_fit_format(_fit_args(["--data", data]), None, None)
    assert inferred.format == "dvr"
    # A config naming the demo, with --data: inferred too (never the demo with a data path).
    inferred = infer_fit_format(_fit_args(["--data", data]), packaged_config("demo"), None)
    assert inferred.format == "dvr"
    # --format, a data.format override, or a config naming a format: they decide.
    assert infer_fit_format(_fit_args(["--data", data, "--format", "dtu"]), None, None) is None
    assert infer_fit_format(_fit_args(["--data", data, "data.format=dtu"]), None, None) is None
    assert infer_fit_format(_fit_args(["--data", data]), packaged_config("cow"), None) is None
    # The demo together with a data path is refused.
    for argv in (["--format", "demo"], ["data.format=demo"]):
        with pytest.raises(ValueError, match="reads no data"):
            infer_fit_format(_fit_args(["--data", data, *argv]), None, None)
    with pytest.raises(ValueError, match="data.format=demo is the built-in scene"):
        FitConfig.from_dict({"data": {"path": data}})


def test_fit_without_format_never_trains_the_demo(tmp_path, finished_fit):
    config = load_config(str(finished_fit / "config.yaml"))
    assert config.data.format == "dvr"
    out = tmp_path / "out"
    code, _, stderr = dvr_fit(["--data", str(tmp_path), "--out", str(out), *TINY])
    assert code == 2
    assert "Cannot tell the data format" in stderr and "nerf-synthetic" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_fit_infers_a_mesh_file(tmp_path):
    corners = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    faces = [(1, 3, 4), (1, 4, 2), (5, 6, 8), (5, 8, 7), (1, 2, 6), (1, 6, 5),
             (3, 7, 8), (3, 8, 4), (1, 5, 7), (1, 7, 3), (2, 4, 8), (2, 8, 6)]
    cube = tmp_path / "cube.obj"
    cube.write_text(
        "".join(f"v {x} {y} {z}\n" for x, y, z in corners)
        + "".join(f"f {a} {b} {c}\n" for a, b, c in faces)
    )
    out = tmp_path / "out"
    settings = ["data.image_size=16", "data.n_views=4", "data.supersample=1",
                "data.held_out_every=4", "train.iterations=1"]
    code, _, stderr = dvr_fit(["--data", str(cube), "--out", str(out), *TINY, *settings])
    assert code == 0, stderr
    assert "data.format=mesh (inferred from" in stderr
    assert load_config(str(out / "config.yaml")).data.format == "mesh"


# ---------------------------------------------------------------------------------------------
# 2. Resuming


def test_resume_on_other_data_is_refused_and_writes_nothing(tmp_path, layouts, finished_fit):
    out = copy_of(finished_fit, tmp_path)
    before = folder_digest(out)
    code, _, stderr = dvr_fit(
        ["--out", str(out), "--resume", "--data", str(layouts["tinted"]), "train.iterations=6"]
    )
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert "trained on other data" in stderr and "image colours differ" in stderr
    assert folder_digest(out) == before

    # The same data resumes.
    code, _, stderr = dvr_fit(["--out", str(out), "--resume", "--quiet", "train.iterations=6"])
    assert code == 0, stderr
    assert load_checkpoint(str(out / CHECKPOINT_NAME))["step"] == 6


def test_resume_data_mismatch_names_what_differs():
    views = TrainingFactory.sphere_views(n_views=6, image_size=16)
    train, val = views.split(every=3)
    config = TrainingFactory.config(**{"data.format": "dvr", "data.path": "x"})
    state = Trainer(config=config, train_data=train, val_data=val, progress=False).state_dict()
    saved = state["data_fingerprint"]
    same = {"train_data": train, "val_data": val}
    assert resume_data_mismatch(saved, data_format="dvr", **same) is None
    assert "data.format dvr then, dtu now" in resume_data_mismatch(saved, data_format="dtu", **same)
    fewer = resume_data_mismatch(saved, data_format="dvr", train_data=train.subset([0, 1]),
                                 val_data=val)
    assert "training views: 4 views then, 2 now" in fewer
    without = resume_data_mismatch(saved, data_format="dvr", train_data=train, val_data=None)
    assert without == "2 held-out views then, none now"


def test_resume_of_an_older_checkpoint_warns(tmp_path, finished_fit):
    out = copy_of(finished_fit, tmp_path)
    path = str(out / CHECKPOINT_NAME)
    state = load_checkpoint(path)
    del state["data_fingerprint"]
    save_checkpoint(path, state)
    with pytest.warns(UserWarning, match="no data fingerprint"):
        code, _, stderr = dvr_fit(["--out", str(out), "--resume", "train.iterations=5"])
    assert code == 0, stderr
    assert load_checkpoint(path)["step"] == 5


def test_resume_to_an_earlier_or_the_same_step(tmp_path, finished_fit):
    out = copy_of(finished_fit, tmp_path)
    before = folder_digest(out)
    code, _, stderr = dvr_fit(["--out", str(out), "--resume", "train.iterations=2"])
    assert code == 2
    assert "train.iterations=2 is below the step" in stderr and "(4)" in stderr
    assert folder_digest(out) == before
    code, stdout, stderr = dvr_fit(["--out", str(out), "--resume"])
    assert code == 0, stderr
    assert "nothing to do" in stdout
    assert folder_digest(out) == before  # no duplicated log row, nothing rewritten
    steps = read_csv(str(out / "train_log.csv"))["step"]
    assert steps == sorted(set(steps))


def test_resume_with_a_used_up_time_budget_is_refused(tmp_path, finished_fit):
    out = copy_of(finished_fit, tmp_path)
    path = str(out / CHECKPOINT_NAME)
    state = load_checkpoint(path)
    state["config"]["train"]["time_budget_s"] = 1e-3
    save_checkpoint(path, state)
    before = folder_digest(out)
    code, _, stderr = dvr_fit(["--out", str(out), "--resume", "train.iterations=8"])
    assert code == 2
    assert "time_budget_s" in stderr
    assert folder_digest(out) == before


# ---------------------------------------------------------------------------------------------
# 3. Collapse


def test_collapse_reason():
    assert collapse_reason({"mask_iou": 0.8}, {"mask_iou": 0.2}, hit_rates=[0.3, 0.0]) is None
    assert "below 0.05" in collapse_reason({"mask_iou": 0.01}, None)
    assert "untrained model's 0.300" in collapse_reason({"mask_iou": 0.2}, {"mask_iou": 0.3})
    assert "no sampled training ray" in collapse_reason(None, None, hit_rates=[0.0, 0.0])
    assert collapse_reason(None, None) is None


def _tiny_trainer(folder, **overrides) -> Trainer:
    views = TrainingFactory.sphere_views(n_views=8, image_size=20)
    train, val = views.split(every=4)
    config = TrainingFactory.config(**{"eval.n_steps": 24, **overrides})
    return Trainer(config=config, train_data=train, val_data=val, out_dir=folder, progress=False)


def test_a_collapsed_fit_is_reported(tmp_path):
    # A huge free-space weight empties the field: no ray hits the sphere any more.
    trainer = _tiny_trainer(
        str(tmp_path),
        **{
            "train.iterations": 30,
            "optim.lr": 1e-2,
            "loss.freespace": 1000.0,
            "loss.occupancy": 0.0,
            "eval.validate_every": 15,
        },
    )
    with pytest.warns(RuntimeWarning, match="the fit is collapsing"):
        summary = trainer.fit()
    assert summary["collapse"] is not None
    with pytest.warns(RuntimeWarning, match="The fit collapsed"):
        report = finish_fit(trainer, out_dir=str(tmp_path))
    assert report["status"] == "collapsed"
    assert "held-out mask IoU 0.000" in report["status_reason"]
    assert "no sampled training ray hit a surface" in report["status_reason"]


def test_a_healthy_fit_is_ok(tmp_path):
    trainer = _tiny_trainer(
        str(tmp_path),
        **{"train.iterations": 25, "optim.lr": 5e-3, "eval.validate_every": 25},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        summary = trainer.fit()
        report = finish_fit(trainer, out_dir=str(tmp_path))
    assert summary["collapse"] is None
    assert report["held_out"]["mask_iou"] > report["untrained_held_out"]["mask_iou"]
    assert (report["status"], report["status_reason"]) == ("ok", None)


def test_collapse_in_the_command_line_summary(tmp_path, layouts):
    out = tmp_path / "collapsed"
    code, stdout, stderr = dvr_fit(
        [
            "--data", str(layouts["sphere"]), "--out", str(out), *TINY,
            "train.iterations=12", "optim.lr=1e-2", "loss.freespace=1000", "loss.occupancy=0",
        ]
    )
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[lines.index(f"outputs in {out}:") - 1].startswith("WARNING: the fit collapsed: ")
    assert "dvr fit: WARNING: the fit collapsed" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "collapsed" and metrics["status_reason"]


# ---------------------------------------------------------------------------------------------
# 4. The headline PSNR of real captures


def test_background_modelled():
    views = TrainingFactory.sphere_views(n_views=2, image_size=16)
    assert background_is_modelled("mesh", views)
    assert background_is_modelled("nerf-synthetic")
    assert not background_is_modelled("dtu", views)
    assert not background_is_modelled("monosdf")
    assert background_is_modelled("dvr", views)
    noisy = MultiViewData(
        images=torch.where(views.masks[..., None], views.images, torch.rand(views.images.shape)),
        masks=views.masks,
        cameras=views.cameras,
    )
    assert not background_is_modelled("dvr", noisy)


def test_real_captures_lead_with_the_in_mask_psnr(tmp_path, layouts, finished_fit):
    metrics = json.loads((finished_fit / "metrics.json").read_text())
    assert metrics["headline"]["psnr"] == "psnr"
    assert metrics["status"] == "ok"
    assert metrics["data"]["background_modelled"] is True

    out = tmp_path / "photo"
    code, stdout, stderr = dvr_fit(["--data", str(layouts["photo"]), "--out", str(out), *TINY])
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["background_modelled"] is False
    assert metrics["headline"]["psnr"] == "psnr_masked"
    assert metrics["headline"]["value"] == pytest.approx(metrics["held_out"]["psnr_masked"])
    line = next(line for line in stdout.splitlines() if line.startswith("  held-out"))
    assert line.index("PSNR inside the object mask") < line.index("whole image")
    assert "not modelled" in line


# ---------------------------------------------------------------------------------------------
# 5. Ctrl-C


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, layouts, monkeypatch):
    original = Trainer.train_step

    def interrupted_step(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    out = tmp_path / "out"
    code, _, stderr = dvr_fit(["--data", str(layouts["sphere"]), "--out", str(out), *TINY])
    assert code == 130
    assert stderr.strip().splitlines() == [
        stderr.strip().splitlines()[0],  # the inferred format
        f"dvr fit: interrupted at step 2; checkpoint saved to {out / CHECKPOINT_NAME}. "
        f"Resume with: dvr fit --out {out} --resume",
    ]
    assert "Traceback" not in stderr
    assert load_checkpoint(str(out / CHECKPOINT_NAME))["step"] == 2
    monkeypatch.setattr(Trainer, "train_step", original)
    code, _, stderr = dvr_fit(["--out", str(out), "--resume", "--quiet"])
    assert code == 0, stderr
    assert load_checkpoint(str(out / CHECKPOINT_NAME))["step"] == 4


def _stop_inside_step(monkeypatch, at_call: int, action) -> None:
    """Run ``action()`` inside the ``at_call``-th step, after its pixels were drawn."""
    original = trainer_module.total_loss
    calls = {"n": 0}

    def total_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "total_loss", total_loss)


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler for the test, as in a terminal: a suite started in the
    background inherits an ignored SIGINT, which a fit rightly leaves alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ignored_sigint_stays_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = _tiny_trainer(str(tmp_path), **{"train.iterations": 2, "eval.validate_every": 0})
        trainer.fit()
        assert trainer.step == 2
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how", ["exception", "signal"])
@pytest.mark.usefixtures("python_sigint_handler")
def test_interrupted_fit_resumes_exactly(tmp_path, monkeypatch, how):
    settings = {"train.iterations": 5, "eval.validate_every": 0}
    straight = _tiny_trainer(str(tmp_path / "a"), **settings)
    straight.fit()

    def stop():
        if how == "exception":
            raise KeyboardInterrupt  # inside step 3: saved as of the end of step 2
        signal.raise_signal(signal.SIGINT)  # Ctrl-C: step 3 ends, then saved

    _stop_inside_step(monkeypatch, 3, stop)
    first = _tiny_trainer(str(tmp_path / "b"), **settings)
    with pytest.raises(FitInterrupted) as stopped:
        first.fit()
    expected = 2 if how == "exception" else 3
    assert stopped.value.step == expected
    assert load_checkpoint(stopped.value.path)["step"] == expected
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    torch.manual_seed(12345)  # a fresh process starts from other random states
    resumed = Trainer(
        config=first.config, train_data=first.train_data, val_data=first.val_data,
        out_dir=str(tmp_path / "b"), resume=True, progress=False,
    )
    resumed.fit()
    for key, value in straight.field.state_dict().items():
        assert torch.equal(value, resumed.field.state_dict()[key]), key


# ---------------------------------------------------------------------------------------------
# 6. --config


def test_missing_config_file_is_named(tmp_path):
    missing = str(tmp_path / "nowhere" / "fit.yaml")
    for value, message in (
        (missing, f"file not found: {missing}"),
        ("cow.yaml", "file not found: cow.yaml (the packaged config is named without the suffix"),
        ("no_such_config", "No packaged config 'no_such_config'"),
    ):
        code, _, stderr = dvr_fit(["--config", value, "--out", str(tmp_path / "o")])
        assert code == 2, value
        assert message in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# 7. The NeRF-synthetic recipe


def test_nerf_synthetic_config():
    config = load_config(packaged_config("nerf-synthetic"))
    assert config.data.format == "nerf-synthetic"
    assert config.train.sampling == "foreground_balanced"  # against the empty field
    assert os.path.basename(config.data.path) == "lego"
    # The GPU setting is larger and every key of it is a valid config key.
    cuda = FitConfig.from_dict(apply_device_overrides(config.to_dict(), torch.device("cuda")))
    assert cuda.model.hidden_size > config.model.hidden_size
    assert cuda.data.downscale < config.data.downscale
    assert cuda.train.sampling == "foreground_balanced"
    path = find_shared_data("nerf_synthetic_lego", "lego")
    if path is not None:
        assert detect_data_format(path).format == config.data.format


@pytest.mark.slow
def test_lego_recipe_keeps_its_object():
    """
    The cause of the lego collapse at small scale (50x50): with DVR's occupancy recipe and
    uniform pixels the free-space term empties the field for dozens of steps. The packaged
    recipe (a sphere-initialised SDF with the soft mask loss) keeps its hits with uniform and
    with foreground-balanced pixels alike.
    """
    path = find_shared_data("nerf_synthetic_lego", "lego")
    if path is None:
        pytest.skip(missing_data_message("nerf_synthetic_lego", "lego"))
    occupancy_recipe = [
        "model.field_type=occupancy",
        "model.geometric_init_radius=null",
        "model.fourier_anneal_steps=0",
        "loss.freespace=1.0",
        "loss.occupancy=1.0",
        "loss.eikonal=0.0",
        "loss.mask=0.0",
    ]
    arms = {
        "recipe, foreground_balanced": ["train.sampling=foreground_balanced"],
        "recipe, uniform": ["train.sampling=uniform"],
        "occupancy, uniform": ["train.sampling=uniform", *occupancy_recipe],
    }
    empty_steps, late_hits = {}, {}
    for arm, overrides in arms.items():
        config = load_config(
            packaged_config("nerf-synthetic"),
            [
                "device=cpu",
                f"data.path={path}",
                "data.downscale=16",
                "train.rays_per_image=512",
                "eval.tensorboard=false",
                *overrides,
            ],
        )
        data = load_fit_data(config.data, background=config.background)
        trainer = Trainer(config=config, train_data=data.train, progress=False)
        hits = [trainer.train_step()["hit_rate"] for _ in range(60)]
        empty_steps[arm] = sum(rate == 0.0 for rate in hits)
        late_hits[arm] = sum(hits[-20:]) / 20
    for arm in ("recipe, foreground_balanced", "recipe, uniform"):
        assert empty_steps[arm] <= 3, (arm, empty_steps)
        assert late_hits[arm] > 0.2, (arm, late_hits)
    assert empty_steps["occupancy, uniform"] >= 15, empty_steps
