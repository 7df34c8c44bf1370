"""
`dvr mesh` and `dvr eval` on the command line: validation before the work, --force, frames of
mesh-file predictions, older checkpoints, the bounding-box check, the error figure, held-out
views with the fit's settings, and the observed-region scores.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from pytorch3d.structures import Meshes
from pytorch3d.utils import ico_sphere

from dvr_plugin.cli.eval_report import error_figure
from dvr_plugin.cli.main import main
from dvr_plugin.meshing import save_mesh
from dvr_plugin.training import export, mesh_evaluation
from dvr_plugin.training.config import FitConfig
from tests.frame_factories import (
    RESOLUTION,
    blob_config,
    blob_field,
    make_case,
    to_world_by_hand,
)

POINTS = 5000  # two samplings of one surface: Chamfer-L1 about 0.011


@pytest.fixture(scope="module")
def dtu(tmp_path_factory):
    return make_case("dtu", tmp_path_factory.mktemp("cli") / "dtu")


@pytest.fixture(scope="module")
def mesh_case(tmp_path_factory):
    return make_case("mesh", tmp_path_factory.mktemp("cli") / "mesh")


@pytest.fixture
def no_loading(refuse_calls):
    """Fail when a checkpoint is read: the arguments must be checked before."""
    refuse_calls(
        "the checkpoint was read before the arguments were checked",
        (export, "load_fitted_checkpoint"),
        (mesh_evaluation, "load_fitted_checkpoint"),
    )


def one_line_error(capsys, command: str) -> str:
    """The stderr of a command that failed with a clean one-line error."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dvr {command}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def eval_args(prediction, gt, out, *extra) -> list[str]:
    return [
        "eval",
        str(prediction),
        "--gt",
        str(gt),
        "--out",
        str(out),
        "--points",
        str(POINTS),
        "--resolution",
        str(RESOLUTION),
        "--no-iou",
        "--device",
        "cpu",
        *extra,
    ]


def report_of(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


# -- validation -----------------------------------------------------------------------------


def test_mesh_rejects_bad_input_before_reading_the_checkpoint(dtu, tmp_path, capsys, no_loading):
    checkpoint = str(dtu.checkpoint)
    (tmp_path / "folder.ply").mkdir()
    (tmp_path / "taken.ply").write_text("x")
    cases = [
        (["--resolution", "0"], "resolution must be an integer >= 2"),
        (["--resolution", "48"], "32 * 2^k"),
        (["--refine-steps", "-1"], "--refine-steps"),
        (["--out", str(tmp_path / "m.stl")], "unknown extension"),
        (["--out", str(tmp_path / "missing" / "m.ply")], "does not exist"),
        (["--out", str(tmp_path / "folder.ply")], "is a folder"),
        (["--out", str(tmp_path / "taken.ply")], "pass --force"),
    ]
    for extra, message in cases:
        argv = ["mesh", checkpoint, "--out", str(tmp_path / "m.ply"), *extra]
        assert main(argv) == 2, extra
        assert message in one_line_error(capsys, "mesh"), extra
    assert main(["mesh", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.ply")]) == 2
    assert "file not found" in one_line_error(capsys, "mesh")
    assert (tmp_path / "taken.ply").read_text() == "x"


def test_mesh_overwrites_only_with_force(dtu, tmp_path, capsys):
    out = tmp_path / "m.ply"
    argv = ["mesh", str(dtu.checkpoint), "--out", str(out), "--resolution", "16", "--device", "cpu"]
    assert main(argv) == 0
    first = out.read_bytes()
    out.write_bytes(b"keep me")
    capsys.readouterr()
    assert main(argv) == 2
    assert "exists; pass --force" in one_line_error(capsys, "mesh")
    assert out.read_bytes() == b"keep me"
    assert main([*argv, "--force"]) == 0
    assert out.read_bytes() == first


def test_eval_rejects_bad_input_before_the_work(dtu, tmp_path, capsys, no_loading):
    checkpoint, gt = str(dtu.checkpoint), str(dtu.gt)
    mesh_file = tmp_path / "pred.ply"
    save_mesh(ico_sphere(1), mesh_file)
    open_gt = tmp_path / "open.ply"
    sphere = ico_sphere(2)
    save_mesh(Meshes(verts=sphere.verts_list(), faces=[sphere.faces_list()[0][1:]]), open_gt)
    (tmp_path / "a_file").write_text("x")
    out = str(tmp_path / "r")
    cases = [
        (["eval", checkpoint, "--out", out], "--gt MESH and/or --views"),
        (["eval", checkpoint, "--gt", gt, "--out", out, "--points", "0"], "--points"),
        (["eval", checkpoint, "--gt", gt, "--out", out, "--resolution", "0"], "resolution"),
        (["eval", str(tmp_path / "none.pt"), "--gt", gt, "--out", out], "file not found"),
        (["eval", checkpoint, "--gt", str(tmp_path / "none.ply"), "--out", out], "does not exist"),
        (["eval", str(tmp_path / "a_file"), "--gt", gt, "--out", out], "must end in"),
        (["eval", checkpoint, "--gt", gt, "--out", str(tmp_path / "a_file")], "is a file"),
        (["eval", str(mesh_file), "--views", "--out", out], "--views needs"),
        (["eval", str(mesh_file), "--gt", gt, "--out", out, "--observed"], "training cameras"),
        (["eval", checkpoint, "--views", "--observed", "--out", out], "give --gt"),
        (
            ["eval", checkpoint, "--gt", gt, "--out", out, "--pred-frame", "normalised"],
            "--pred-frame is for a mesh-file",
        ),
        (
            ["eval", checkpoint, "--gt", gt, "--out", out, "--checkpoint", checkpoint],
            "--checkpoint is for a mesh-file",
        ),
        (
            ["eval", checkpoint, "--gt", gt, "--out", out, "--gt-longest-side", "2"],
            "--gt-longest-side",
        ),
        (["eval", checkpoint, "--gt", str(open_gt), "--out", out], "not watertight"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_line_error(capsys, "eval"), argv
    assert not (tmp_path / "r").exists()


# -- frames of predictions ------------------------------------------------------------------


def test_eval_stops_when_the_boxes_do_not_line_up(dtu, tmp_path, capsys):
    plain = tmp_path / "normalised.ply"  # the fitting frame, no header: taken as world
    save_mesh(dtu.normalised, plain)
    out = tmp_path / "r"
    assert main(eval_args(plain, dtu.gt, out)) == 2
    err = one_line_error(capsys, "eval")
    assert "sizes differ" in err and "prediction box min (" in err
    assert "ground truth box min (" in err and "max (" in err
    far = tmp_path / "far.ply"  # the right size, 1 m away
    shifted = dtu.to_world.clone()
    shifted[:3, 3] += 1000.0
    save_mesh(to_world_by_hand(shifted, dtu.normalised), far)
    assert main(eval_args(far, dtu.gt, out)) == 2
    err = one_line_error(capsys, "eval")
    assert "do not overlap" in err and "sizes differ" not in err
    assert not out.exists()  # stopped before any metric


def test_eval_mesh_files_in_either_frame(dtu, tmp_path, capsys):
    world = tmp_path / "world.ply"
    normalised = tmp_path / "normalised.obj"
    for path, frame in ((world, "world"), (normalised, "normalised")):
        assert (
            main(
                [
                    "mesh",
                    str(dtu.checkpoint),
                    "--out",
                    str(path),
                    "--resolution",
                    str(RESOLUTION),
                    "--frame",
                    frame,
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    # each file's header says its frame (and to_world): no flags needed
    for path in (world, normalised):
        out = tmp_path / f"r_{path.stem}"
        assert main(eval_args(path, dtu.gt, out)) == 0
        assert report_of(out)["chamfer_l1"] < 0.015
    # a file without a header in the normalised frame: --pred-frame and a frame source
    plain = tmp_path / "plain.ply"
    save_mesh(dtu.normalised, plain)
    capsys.readouterr()
    assert main(eval_args(plain, dtu.gt, tmp_path / "r", "--pred-frame", "normalised")) == 2
    assert "pass --checkpoint" in one_line_error(capsys, "eval")
    out = tmp_path / "r_plain"
    assert (
        main(
            eval_args(
                plain,
                dtu.gt,
                out,
                "--pred-frame",
                "normalised",
                "--checkpoint",
                str(dtu.checkpoint),
            )
        )
        == 0
    )
    report = report_of(out)
    assert report["chamfer_l1"] < 0.015
    assert "moved from the normalised frame" in report["frame"]["prediction"]


def test_older_checkpoint_frame_is_rebuilt_from_its_data(tmp_path, capsys):
    case = make_case("dtu", tmp_path / "case", store_frame=False)
    out = tmp_path / "r"
    with pytest.warns(UserWarning, match="records no data frame"):
        assert main(eval_args(case.checkpoint, case.gt, out)) == 0
    assert report_of(out)["chamfer_l1"] < 0.015
    shutil.move(case.root / "data", case.root / "gone")  # the data cannot be read
    capsys.readouterr()
    with pytest.warns(UserWarning, match="normalised frame stands in"):
        assert main(eval_args(case.checkpoint, case.gt, tmp_path / "r2")) == 2
    assert "do not line up" in one_line_error(capsys, "eval")


def test_gt_longest_side_scores_in_the_fitting_frame(mesh_case, tmp_path):
    out = tmp_path / "r"
    assert main(eval_args(mesh_case.checkpoint, mesh_case.gt, out, "--gt-longest-side", "0.6")) == 0
    report = report_of(out)
    assert report["frame"]["evaluation"] == "normalised"
    assert report["chamfer_l1"] < 0.015
    # a world-frame mesh file goes to the fitting frame with the to_world of its header
    world = tmp_path / "world.ply"
    assert (
        main(
            [
                "mesh",
                str(mesh_case.checkpoint),
                "--out",
                str(world),
                "--resolution",
                str(RESOLUTION),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(eval_args(world, mesh_case.gt, tmp_path / "r2", "--gt-longest-side", "0.6")) == 0
    assert report_of(tmp_path / "r2")["chamfer_l1"] < 0.015


def test_eval_scores_an_empty_field_without_the_box_check(tmp_path, dtu):
    from dvr_plugin.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(str(dtu.checkpoint))
    state["model"]["fc_out.bias"][0] = 5.0  # the signed distance is positive everywhere
    empty = tmp_path / "empty.pt"
    save_checkpoint(str(empty), state)
    out = tmp_path / "r"
    assert main(eval_args(empty, dtu.gt, out)) == 0
    report = report_of(out)
    assert report["empty"] is True and report["chamfer_l1"] == pytest.approx(3**0.5)


# -- report ---------------------------------------------------------------------------------


def test_error_figure_has_equal_axes(tmp_path):
    sphere = ico_sphere(2)
    flat = sphere.update_padded(sphere.verts_padded() * torch.tensor([2.0, 0.2, 0.8]))
    limits = error_figure(flat, sphere, str(tmp_path / "e.png"), n_points=2000)
    assert (tmp_path / "e.png").stat().st_size > 1000
    assert limits[0] == limits[1]  # both panels share one cube
    spans = [hi - lo for lo, hi in limits[0].values()]
    assert max(spans) - min(spans) < 1e-9 * max(spans)
    # the cube holds the long prediction: the ground truth's box is [-1, 1]^3 before the
    # protocol's normalisation (side 2 -> 1), the prediction 2x wider along x
    assert spans[0] >= 2.0


def test_report_files_and_table(dtu, tmp_path):
    out = tmp_path / "r"
    assert main(eval_args(dtu.checkpoint, dtu.gt, out)) == 0
    report = report_of(out)
    assert report["frame"]["evaluation"] == "world"
    assert "dtu data" in report["frame"]["data"]
    table = (out / "metrics.md").read_text()
    assert "Chamfer-L1" in table and "- evaluation: world" in table
    assert (out / "errors.png").stat().st_size > 1000


def test_eval_views_uses_the_fits_settings(tmp_path, capsys):
    from dvr_plugin.engine.checkpoint import save_checkpoint
    from dvr_plugin.engine.evaluation import image_metrics, render_views
    from dvr_plugin.training.data import load_fit_data
    from dvr_plugin.training.trainer import build_field

    config = blob_config("demo")
    config.eval.n_steps = 24
    config.train.n_secant_steps = 3
    field = blob_field(config)
    checkpoint = tmp_path / "c.pt"
    save_checkpoint(
        str(checkpoint), {"step": 0, "config": config.to_dict(), "model": field.state_dict()}
    )
    out = tmp_path / "views"
    assert main(["eval", str(checkpoint), "--views", "--out", str(out), "--device", "cpu"]) == 0
    assert "n_steps=24, n_secant_steps=3" in capsys.readouterr().out
    held_out = report_of(out)["held_out"]
    assert held_out["settings"]["n_steps"] == 24
    # the same numbers as a render with those settings (what the fit's metrics.json holds)
    val = load_fit_data(config.data, background=list(config.background)).val
    model = build_field(FitConfig.from_dict(config.to_dict()))
    model.load_state_dict(field.state_dict())
    rendered = render_views(
        model.eval(),
        val.cameras,
        val.image_size,
        n_steps=24,
        n_secant_steps=3,
        background=config.background,
    )
    expected = image_metrics(rendered, val.images, val.masks)
    assert held_out["mask_iou"] == pytest.approx(expected["mask_iou"], abs=1e-6)
    assert held_out["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)


def test_eval_observed_side_by_side(dtu, tmp_path):
    observed = pytest.importorskip("dvr_plugin.metrics.observed")
    from dvr_plugin.training.data import load_fit_data

    out = tmp_path / "r"
    assert main(eval_args(dtu.checkpoint, dtu.gt, out, "--observed")) == 0
    report = report_of(out)
    table = (out / "metrics.md").read_text()
    assert "| metric | full | observed |" in table
    f_row = next(line for line in table.splitlines() if line.startswith("| F-score @ 0.01 |"))
    full, seen = (float(cell) for cell in f_row.strip("|").split("|")[1:])
    assert full == pytest.approx(report["f_score"][0], abs=1e-4)
    assert seen == pytest.approx(report["observed_f_score"], abs=1e-4)
    # the rig looks from above: part of the surface is unseen, what is seen is matched
    assert 0.3 < report["gt_observed_fraction"] < 0.99
    assert report["observed_chamfer_l1"] < 0.02 and report["chamfer_l1"] < 0.02
    assert report["observed_cameras"] == 4  # 6 views, every 3rd held out
    # the same numbers as the metric on the normalised meshes with the training cameras
    train = load_fit_data(dtu.config.data, background=list(dtu.config.background)).train
    pred = export.mesh_from_checkpoint(
        str(dtu.checkpoint), resolution=RESOLUTION, frame="normalised"
    ).mesh
    gt = to_world_by_hand(
        torch.linalg.inv(dtu.to_world),
        mesh_evaluation.load_ground_truth(str(dtu.gt), longest_side=None),
    )
    expected = observed.evaluate_observed(
        pred, gt, train.cameras, train.image_size, n_points=POINTS, seed=0
    )
    for key in ("observed_chamfer_l1", "gt_observed_fraction", "pred_observed_fraction"):
        assert report[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-5), key
