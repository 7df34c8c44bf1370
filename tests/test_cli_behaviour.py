"""
The ``dvr`` command line: every bad input to ``dvr render`` and ``dvr reconstruct`` gets one
line on stderr naming the problem and exit code 2, with no traceback, and is found before the
checkpoint is loaded; ``KEY=VALUE`` overrides may stand anywhere among the options of ``dvr fit``
and ``dvr demo``; ``dvr render`` shows its progress on stderr and keeps stdout for the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os

import pytest
import torch
from PIL import Image

from dvr_plugin.cli.fit_commands import RENDER_SETTING_FLAGS
from dvr_plugin.cli.main import build_parser, main
from dvr_plugin.engine.checkpoint import save_checkpoint
from dvr_plugin.training.config import load_config
from dvr_plugin.training.trainer import build_field

# the modules themselves (their packages export functions of the same names)
fit_module = importlib.import_module("dvr_plugin.training.fit")
reconstruct_module = importlib.import_module("dvr_plugin.single_view.reconstruct")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``dvr ARGV``: (exit code, stdout, stderr); argparse's own exits count as their code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint of a tiny untrained SDF field (a sphere of radius 0.3) on the demo data."""
    torch.manual_seed(0)
    config = load_config(
        None,
        [
            "model.hidden_size=8",
            "model.n_blocks=1",
            "model.n_frequencies=0",
            "model.field_type=sdf",
        ],
    )
    path = str(tmp_path_factory.mktemp("render") / "checkpoint.pt")
    save_checkpoint(
        path,
        {
            "step": 0,
            "config": config.to_dict(),
            "model": build_field(config).state_dict(),
            "image_size": [8, 8],
            "orbit": {"distance": 1.5, "fov": 45.0, "elevation": 20.0},
        },
    )
    return path


@pytest.fixture
def no_loading(refuse_calls):
    """Fail the test if anything loads a checkpoint or starts reconstructing."""
    refuse_calls(
        "the checkpoint was loaded before the arguments were checked",
        (fit_module, "load_checkpoint"),
        (reconstruct_module, "reconstruct_image"),
    )


# --------------------------------------------------------------------------------------------
# dvr render


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--frames", "0"], "--frames"),
        (["--frames", "-2"], "--frames"),
        (["--image-size", "0"], "--image-size"),
        (["--distance", "0"], "--distance"),
        (["--distance", "-1.5"], "--distance"),
        (["--distance", "nan"], "--distance"),
        (["--fov", "0"], "--fov"),
        (["--fov", "180"], "--fov"),
        (["--fov", "-10"], "--fov"),
        (["--elevation", "inf"], "--elevation"),
        (["--steps", "0"], "--steps"),
        (["--steps", "1"], "--steps"),
        (["--fps", "0"], "--fps"),
    ],
)
def test_render_bad_settings(checkpoint, tmp_path, no_loading, extra, flag):
    code, out, err = run_cli(["render", checkpoint, "--out", str(tmp_path / "r"), *extra])
    assert_one_line_error(code, err, "dvr render: error:", flag)
    assert out == ""
    assert not (tmp_path / "r").exists()


def test_render_missing_checkpoint_and_file_as_output(checkpoint, tmp_path, no_loading):
    code, _, err = run_cli(["render", str(tmp_path / "none.pt"), "--out", str(tmp_path / "r")])
    assert_one_line_error(code, err, "No checkpoint", "none.pt")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    code, _, err = run_cli(["render", checkpoint, "--out", str(a_file)])
    assert_one_line_error(code, err, "existing file")
    code, _, err = run_cli(["render", checkpoint, "--out", str(tmp_path / "r"), "--device", "gpu0"])
    assert_one_line_error(code, err, "device")


def test_render_api_checks_the_same_settings(checkpoint, tmp_path, no_loading):
    for settings, name in (
        ({"n_frames": 0}, "n_frames"),
        ({"distance": -1.0}, "distance"),
        ({"fov": 200.0}, "fov"),
        ({"n_steps": 1}, "n_steps"),
        ({"image_size": 12.5}, "image_size"),
        ({"cameras": "front"}, "cameras"),
    ):
        with pytest.raises(ValueError, match=name):
            fit_module.render_checkpoint(checkpoint, str(tmp_path / "r"), **settings)


def test_render_writes_json_to_stdout_and_progress_to_stderr(checkpoint, tmp_path):
    argv = [
        "render",
        checkpoint,
        "--frames",
        "2",
        "--image-size",
        "8",
        "--steps",
        "8",
        "--device",
        "cpu",
    ]
    code, out, err = run_cli([*argv, "--out", str(tmp_path / "shown")])
    assert code == 0, err
    summary = json.loads(out)  # nothing else on stdout
    assert summary["n_images"] == 2 and os.path.isfile(summary["gif"])
    assert "turntable" in err and "/2 " in err  # the tqdm bar
    code, out, err = run_cli([*argv, "--out", str(tmp_path / "quiet"), "--quiet"])
    assert code == 0 and json.loads(out)["n_images"] == 2
    assert err == ""


# --------------------------------------------------------------------------------------------
# dvr reconstruct


@pytest.fixture
def reconstruct_inputs(tmp_path) -> dict:
    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (200, 100, 50)).save(image)
    checkpoint = tmp_path / "sv.pt"
    checkpoint.write_bytes(b"never read by these tests")
    return {"image": str(image), "checkpoint": str(checkpoint), "tmp": tmp_path}


def reconstruct_argv(inputs: dict, *extra: str, out: str | None = None) -> list[str]:
    out = out if out is not None else str(inputs["tmp"] / "recon")
    return [
        "reconstruct",
        inputs["image"],
        "--checkpoint",
        inputs["checkpoint"],
        "--out",
        out,
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--frames", "0"], "--frames"),
        (["--size", "0"], "--size"),
        (["--steps", "0"], "--steps"),
        (["--resolution", "0"], "--resolution"),
        (["--resolution", "100"], "--resolution"),
        (["--device", "gpu0"], "device"),
    ],
)
def test_reconstruct_bad_settings(reconstruct_inputs, no_loading, extra, needle):
    code, out, err = run_cli(reconstruct_argv(reconstruct_inputs, *extra))
    assert_one_line_error(code, err, "dvr reconstruct: error:", needle)
    assert out == ""


def test_reconstruct_bad_paths(reconstruct_inputs, no_loading):
    inputs, tmp = reconstruct_inputs, reconstruct_inputs["tmp"]
    cases = []
    missing = dict(inputs, image=str(tmp / "nope.png"))
    cases.append((reconstruct_argv(missing), "not found"))
    cases.append((reconstruct_argv(dict(inputs, image=str(tmp))), "folder"))
    text = tmp / "photo.txt"
    text.write_text("x")
    cases.append((reconstruct_argv(dict(inputs, image=str(text))), "unknown extension"))
    broken = tmp / "broken.png"
    broken.write_bytes(b"not a png")
    cases.append((reconstruct_argv(dict(inputs, image=str(broken))), "Cannot read"))
    cases.append((reconstruct_argv(dict(inputs, checkpoint=str(tmp / "no.pt"))), "No checkpoint"))
    a_file = tmp / "taken"
    a_file.write_text("x")
    cases.append((reconstruct_argv(inputs, out=str(a_file)), "existing file"))
    cases.append((reconstruct_argv(inputs, out=str(tmp / "mesh.obj")), "names a file"))
    cases.append((reconstruct_argv(inputs, out=str(tmp / "missing" / "recon")), "does not exist"))
    for argv, needle in cases:
        code, _, err = run_cli(argv)
        assert_one_line_error(code, err, needle)


def test_reconstruct_keeps_earlier_outputs_without_force(reconstruct_inputs, monkeypatch):
    calls = []

    def fake_reconstruct(image, checkpoint, out_dir, **kwargs):
        calls.append(out_dir)
        return {"mesh": "mesh.ply", "turntable": "turntable.gif", "renders": "renders.png"}

    monkeypatch.setattr(reconstruct_module, "reconstruct_image", fake_reconstruct)
    out = reconstruct_inputs["tmp"] / "recon"
    out.mkdir()
    (out / "mesh.ply").write_text("an earlier mesh")
    code, _, err = run_cli(reconstruct_argv(reconstruct_inputs, "--device", "cpu"))
    assert_one_line_error(code, err, "--force")
    assert calls == [] and (out / "mesh.ply").read_text() == "an earlier mesh"
    code, _, err = run_cli(reconstruct_argv(reconstruct_inputs, "--device", "cpu", "--force"))
    assert code == 0, err
    assert calls == [str(out)]
    # an empty folder, or a new one in an existing folder, needs no --force
    empty = reconstruct_inputs["tmp"] / "empty"
    empty.mkdir()
    for target in (empty, reconstruct_inputs["tmp"] / "new"):
        code, _, err = run_cli(
            reconstruct_argv(reconstruct_inputs, "--device", "cpu", out=str(target))
        )
        assert code == 0, err


# --------------------------------------------------------------------------------------------
# overrides anywhere on the command line


class Captured(Exception):
    """Raised by the stand-ins below so that nothing runs after the command line is read."""

    def __init__(self, value):
        super().__init__("captured")
        self.value = value


def test_fit_overrides_may_stand_anywhere(monkeypatch, tmp_path):
    def capture(config, out_dir, **kwargs):
        raise Captured(config)

    monkeypatch.setattr(fit_module, "fit", capture)
    out = str(tmp_path / "fit")
    argv = [
        "fit",
        "--out",
        out,
        "train.iterations=5",
        "--config",
        "cow",
        "model.hidden_size=32",
        "--quiet",
        "optim.lr=0.002",
        "train.iterations=7",
    ]
    with pytest.raises(Captured) as captured:
        main(argv)
    config = captured.value.value
    assert config.model.hidden_size == 32
    assert config.optim.lr == pytest.approx(0.002)
    assert config.train.iterations == 7  # later overrides win, as written
    assert config.data.format == "mesh"  # the cow config was read too
    # the same with every override first, the historical form
    with pytest.raises(Captured) as captured:
        main(["fit", "model.hidden_size=32", "--config", "cow", "--out", out])
    assert captured.value.value.model.hidden_size == 32


def test_demo_overrides_may_stand_anywhere(monkeypatch, tmp_path):
    def capture(out_dir, device, *, overrides=(), progress=True):
        raise Captured(list(overrides))

    monkeypatch.setattr(fit_module, "run_fit_demo", capture)
    argv = [
        "demo",
        "train.iterations=3",
        "--out",
        str(tmp_path),
        "model.hidden_size=16",
        "--quiet",
        "seed=4",
    ]
    with pytest.raises(Captured) as captured:
        main(argv)
    assert captured.value.value == ["train.iterations=3", "model.hidden_size=16", "seed=4"]


def test_unknown_options_still_get_argparse_errors(checkpoint, tmp_path):
    code, _, err = run_cli(["fit", "--out", str(tmp_path), "a.b=1", "--bogus"])
    assert code == 2 and "unrecognized arguments: --bogus" in err
    code, _, err = run_cli(["fit", "a.b=1", "--out", str(tmp_path), "stray"])
    assert code == 2 and "unrecognized arguments: stray" in err
    # next to other overrides a token without "=" is named by the config reader
    code, _, err = run_cli(["fit", "--out", str(tmp_path), "a.b=1", "stray"])
    assert_one_line_error(code, err, "stray")
    # a subcommand without overrides refuses KEY=VALUE tokens
    code, _, err = run_cli(["render", checkpoint, "--out", str(tmp_path), "train.iterations=5"])
    assert code == 2 and "unrecognized arguments: train.iterations=5" in err


def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name`` of ``parser``."""
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def option_actions(parser: argparse.ArgumentParser) -> dict:
    """The parser's arguments by destination: (flags, default, required, nargs, help)."""
    return {
        action.dest: (
            action.option_strings,
            action.default,
            action.required,
            action.nargs,
            action.help,
        )
        for action in parser._actions
    }


def test_render_passes_each_option_to_its_setting(monkeypatch, tmp_path):
    def capture(checkpoint, out_dir, **settings):
        raise Captured(settings)

    keywords = inspect.signature(fit_module.render_checkpoint).parameters
    assert set(RENDER_SETTING_FLAGS) <= set(keywords)
    monkeypatch.setattr(fit_module, "render_checkpoint", capture)
    argv = ["render", "c.pt", "--out", str(tmp_path), "--cameras", "all", "--frames", "3"]
    argv += ["--image-size", "9", "--distance", "2.5", "--fov", "40", "--elevation", "10"]
    argv += ["--steps", "7", "--fps", "5", "--device", "cpu", "--quiet"]
    with pytest.raises(Captured) as captured:
        main(argv)
    assert captured.value.value == {
        "cameras": "all",
        "n_frames": 3,
        "image_size": 9,
        "distance": 2.5,
        "fov": 40.0,
        "elevation": 10.0,
        "n_steps": 7,
        "fps": 5,
        "device": "cpu",
        "progress": False,
        "names": RENDER_SETTING_FLAGS,
    }


def test_shared_options_read_the_same_wherever_they_stand():
    from integration.compare.__main__ import build_parser as build_compare_parser

    dvr = build_parser()
    fit = option_actions(subcommand_parser(dvr, "fit"))
    compare = option_actions(build_compare_parser())
    for dest in ("overrides", "out", "device"):
        assert compare[dest] == fit[dest], dest
    demo = option_actions(subcommand_parser(dvr, "demo"))
    assert demo["overrides"] == fit["overrides"]
    assert demo["out"][1:3] == ("outputs/demo", False)  # a default, so not required
    assert fit["out"][1:3] == (None, True)
    for name in ("make-category", "reconstruct", "eval-category"):
        assert option_actions(subcommand_parser(dvr, name))["device"] == demo["device"], name
    quiet = fit["quiet"]
    for name in ("render", "demo", "make-category", "eval-category", "make-scene"):
        assert option_actions(subcommand_parser(dvr, name))["quiet"] == quiet, name
