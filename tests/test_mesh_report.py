"""`dvr eval` end to end on small meshes: numbers, files, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from pytorch3d.structures import Meshes
from pytorch3d.utils import ico_sphere

from dvr_plugin.cli.main import main
from dvr_plugin.meshing import save_mesh


def _sphere(level: int, radius: float) -> Meshes:
    mesh = ico_sphere(level)
    return mesh.update_padded(mesh.verts_padded() * radius)


def test_eval_writes_report_with_expected_numbers(tmp_path):
    save_mesh(_sphere(3, 0.4), str(tmp_path / "pred.ply"))
    save_mesh(_sphere(3, 0.4), str(tmp_path / "gt.ply"))
    out = tmp_path / "report"
    assert main(["eval", str(tmp_path / "pred.ply"), "--gt", str(tmp_path / "gt.ply"),
                 "--out", str(out), "--points", "20000", "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    # identical meshes: distances are only the sampling gap, normals agree, IoU 1
    assert report["chamfer_l1"] < 0.01
    assert report["normal_consistency"] > 0.98
    assert report["iou"] > 0.99
    assert report["f_score"][0] > 0.8
    assert "Chamfer-L1" in (out / "metrics.md").read_text()
    assert os.path.getsize(out / "errors.png") > 1000


def test_eval_scaled_sphere_matches_the_gap(tmp_path):
    save_mesh(_sphere(4, 0.40), str(tmp_path / "pred.ply"))
    save_mesh(_sphere(4, 0.44), str(tmp_path / "gt.ply"))
    out = tmp_path / "report"
    main(["eval", str(tmp_path / "pred.ply"), "--gt", str(tmp_path / "gt.ply"), "--out",
          str(out), "--points", "4000", "--device", "cpu", "--no-iou"])
    report = json.loads((out / "metrics.json").read_text())
    # normalised by the ground truth's bounding box (side 0.88): the gap is 0.04 / 0.88
    assert report["chamfer_l1"] == pytest.approx(0.04 / 0.88, rel=0.08)
    assert "iou" not in report


def test_eval_rejects_non_watertight_ground_truth(tmp_path, capsys):
    sphere = _sphere(2, 0.4)
    open_mesh = Meshes(verts=sphere.verts_list(), faces=[sphere.faces_list()[0][1:]])
    save_mesh(sphere, str(tmp_path / "pred.ply"))
    save_mesh(open_mesh, str(tmp_path / "gt.ply"))
    assert main(["eval", str(tmp_path / "pred.ply"), "--gt", str(tmp_path / "gt.ply"), "--out",
                 str(tmp_path / "r"), "--points", "1000", "--device", "cpu"]) == 2
    assert "watertight" in capsys.readouterr().err


def test_eval_missing_ground_truth(tmp_path, capsys):
    save_mesh(_sphere(2, 0.4), str(tmp_path / "pred.ply"))
    assert main(["eval", str(tmp_path / "pred.ply"), "--gt", str(tmp_path / "none.ply"),
                 "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _checkpoint(tmp_path, *, constant: bool, small_data: bool = False):
    from dvr_plugin.engine.checkpoint import save_checkpoint
    from dvr_plugin.training.config import FitConfig
    from dvr_plugin.training.trainer import build_field

    config = FitConfig()
    config.model.hidden_size = 16
    config.model.n_blocks = 1
    config.model.field_type = "occupancy" if constant else "sdf"
    if small_data:
        config.data.image_size = 24
        config.data.n_views = 8
        config.data.held_out_every = 4
    torch.manual_seed(0)
    field = build_field(config)
    with torch.no_grad():  # sdf: exactly |p| - 0.3; occupancy: a constant logit, no surface
        field.fc_out.weight.zero_()
        field.fc_out.bias.fill_(-1.0 if constant else 0.0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(str(path), {"step": 0, "config": config.to_dict(), "model": field.state_dict()})
    return path


def test_mesh_and_eval_on_a_checkpoint(tmp_path):
    checkpoint = _checkpoint(tmp_path, constant=False)
    assert main(["mesh", str(checkpoint), "--out", str(tmp_path / "m.ply"), "--resolution",
                 "64", "--device", "cpu"]) == 0
    from dvr_plugin.meshing import load_mesh

    verts = load_mesh(str(tmp_path / "m.ply")).verts_packed()
    assert verts.shape[0] > 500
    assert float((verts.norm(dim=-1) - 0.3).abs().max()) < 5e-3
    save_mesh(_sphere(4, 0.3), str(tmp_path / "gt.ply"))
    main(["eval", str(checkpoint), "--gt", str(tmp_path / "gt.ply"), "--out",
          str(tmp_path / "r"), "--points", "20000", "--resolution", "64", "--device", "cpu",
          "--gt-longest-side", "0.6"])
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["chamfer_l1"] < 0.01 and report["iou"] > 0.97


def test_mesh_command_reports_an_empty_field(tmp_path):
    checkpoint = _checkpoint(tmp_path, constant=True)
    assert main(["mesh", str(checkpoint), "--out", str(tmp_path / "m.ply"), "--resolution",
                 "32", "--device", "cpu"]) == 1
    assert not (tmp_path / "m.ply").exists()


def test_eval_held_out_views(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, constant=False, small_data=True)
    out = tmp_path / "views"
    assert main(["eval", str(checkpoint), "--views", "--out", str(out), "--device", "cpu"]) == 0
    held_out = json.loads((out / "metrics.json").read_text())["held_out"]
    assert held_out["views"] == 2
    # a sphere of radius 0.3 against the demo scene: overlapping but far from equal
    assert 0.2 < held_out["mask_iou"] < 0.95
    assert 5.0 < held_out["psnr"] < 40.0
    assert "held-out mask IoU" in (out / "metrics.md").read_text()
    assert os.path.getsize(out / "views.png") > 500
    assert main(["eval", str(checkpoint), "--out", str(out)]) == 2
    assert "--gt MESH and/or --views" in capsys.readouterr().err
