"""
The time-to-quality benchmark (``integration.benchmarks.bench_fit``) in its quick mode: DVR and
the Instant-NGP-style baseline on its PyTorch stand-in (nerfacc's kernels need CUDA), trained
for fractions of a second on 16x16 views of the built-in demo scene, scored at two checkpoints.
Plus the pieces of the baseline that the run cannot check: the density level of its mesh and
the stand-in's compositing against a hand computation.

Frame and units: the demo scene's normalised object frame (unit cube), seconds of training time.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS
from dvr_plugin.fields.hash_grid import HashGridEncoding
from integration.benchmarks import bench_fit
from integration.compare.ngp_baseline import (
    ENCODING_SOURCE,
    DensityGrid,
    DensityLevelField,
    NGPField,
    half_absorption_density,
    probe_nerfacc,
    render_dense,
)

CHECKPOINTS = [0.25, 0.5]
TINY = [
    "data.image_size=16",
    "data.supersample=1",
    "eval.n_steps=16",
    "eval.mesh_resolution=16",
    "eval.mesh_points=1000",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_fit")
    result = bench_fit.run_benchmark(
        scene_name="demo",
        methods=["dvr", "dvr-hash", "dvr-sdf", "dvr-sdf-clock", "nerfacc"],
        device="cpu",
        checkpoints=CHECKPOINTS,
        quick=True,
        overrides=TINY,
        out_dir=str(out),
        progress=False,
    )
    return result, out


def test_every_checkpoint_has_finite_metrics(report):
    result, _ = report
    assert list(result["methods"]) == ["dvr", "dvr-hash", "dvr-sdf", "dvr-sdf-clock", "nerfacc"]
    assert result["methods"]["dvr-hash"]["settings"]["encoding"] == "hash_grid"
    sdf = result["methods"]["dvr-sdf"]["settings"]
    assert (sdf["encoding"], sdf["field_type"]) == ("hash_grid", "sdf")
    assert not sdf["schedule_by_time"]
    assert result["methods"]["dvr-sdf-clock"]["settings"]["schedule_by_time"]
    assert result["methods"]["dvr"]["settings"]["field_type"] == "occupancy"
    for name, entry in result["methods"].items():
        assert entry["error"] is None, (name, entry["error"])
        rows = entry["checkpoints"]
        assert [row["checkpoint_s"] for row in rows] == CHECKPOINTS
        for row in rows:
            assert row["train_seconds"] >= row["checkpoint_s"]
            assert row["step"] >= 1
            for key in (
                "psnr",
                "psnr_masked",
                "mask_iou",
                "chamfer_l1",
                "f_score",
                "normal_consistency",
            ):
                assert math.isfinite(row[key]), (name, key, row[key])
            assert 0.0 <= row["f_score"] <= 1.0 and 0.0 <= row["mask_iou"] <= 1.0
        # the clock keeps running across checkpoints: later rows trained at least as long
        assert rows[1]["step"] >= rows[0]["step"]


def test_nerfacc_row_runs_the_stand_in_on_cpu_and_says_why(report):
    result, _ = report
    assert result["nerfacc"]["available"] is False
    assert result["nerfacc"]["stage"] == "device"
    assert "CUDA" in result["nerfacc"]["error"]
    settings = result["methods"]["nerfacc"]["settings"]
    assert settings["backend"] == "torch"
    assert result["device"].startswith("CPU")


def test_outputs_and_table_columns(report):
    result, out = report
    stem = os.path.join(out, "bench_fit_demo")
    for suffix in (".json", ".md", ".png"):
        assert os.path.getsize(stem + suffix) > 0
    with open(stem + ".json") as handle:
        stored = json.load(handle)
    assert stored["settings"]["checkpoints_s"] == CHECKPOINTS
    table = open(stem + ".md").read().split("\n")
    header = next(line for line in table if line.startswith("| method |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns == [
        "method",
        "0.25 s",
        "0.5 s",
        "steps (ms/step)",
        "time to F@1% >= 0.97",
        "time to PSNR >= 33 dB",
    ]
    rows = [line for line in table[table.index(header) + 2 :] if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[:5]] == [
        "dvr",
        "dvr-hash",
        "dvr-sdf",
        "dvr-sdf-clock",
        "nerfacc (PyTorch stand-in)",
    ]
    # a few steps of a toy fit reach neither target
    assert all(row.rstrip(" |").endswith("not met") for row in rows[:5])


def test_time_to_takes_the_first_checkpoint_that_reaches_the_target():
    entry = {
        "checkpoints": [
            {"checkpoint_s": 5.0, "psnr": 30.0},
            {"checkpoint_s": 10.0, "psnr": float("nan")},
            {"checkpoint_s": 20.0, "psnr": 33.5},
            {"checkpoint_s": 30.0, "psnr": 34.0},
        ]
    }
    assert bench_fit.time_to(entry, "psnr", 33.0) == 20.0
    assert bench_fit.time_to(entry, "psnr", 35.0) is None


def test_mesh_level_is_where_a_voxel_absorbs_half_the_light():
    torch.manual_seed(0)
    field = NGPField(
        n_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8, hidden_size=8
    )
    voxel = 1.1 / 64  # a cell of a 64-cell grid over the padded unit cube
    level_field = DensityLevelField(field=field, sigma_level=half_absorption_density(voxel))
    points = torch.rand(1, 50, 3) - 0.5
    sigma = field.density(points)
    alpha = 1.0 - torch.exp(-sigma * voxel)
    values = level_field(points).values
    # value > 0 (inside) exactly where the voxel's alpha exceeds 0.5
    torch.testing.assert_close(values, torch.log(sigma) - math.log(math.log(2.0) / voxel))
    assert torch.equal(values > 0, alpha > 0.5)


def test_stand_in_compositing_matches_a_hand_computation():
    class Constant(torch.nn.Module):
        """Density 2 inside |z| < 0.25, else 0; colour (1, 0, 0)."""

        def forward(self, points, directions):
            sigma = torch.where(points[:, 2].abs() < 0.25, 2.0, 0.0)
            return torch.tensor([1.0, 0.0, 0.0]).expand(points.shape[0], 3), sigma

    grid = DensityGrid(resolution=8)  # a fresh grid: every cell occupied
    origins = torch.tensor([[0.0, 0.0, -1.0], [0.3, 0.0, -1.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near = torch.tensor([0.45, 0.45])
    far = torch.tensor([1.55, 1.55])
    out = render_dense(
        Constant(),
        grid,
        origins,
        directions,
        near,
        far,
        step_size=0.01,
        background=torch.ones(3),
        stratified=False,
    )
    opacity = 1.0 - math.exp(-2.0 * 0.5)  # 50 samples of sigma 2 over 0.01 each
    torch.testing.assert_close(out.opacities, torch.full((2,), opacity), atol=1e-5, rtol=0)
    expected = torch.tensor([1.0, 1.0 - opacity, 1.0 - opacity])
    torch.testing.assert_close(out.colours, expected.expand(2, 3), atol=1e-5, rtol=0)
    # the expected length is the weighted mean of the sample centres inside the slab
    assert 0.75 < float(out.depths[0]) < 1.0


def test_probe_reports_the_device_stage_on_cpu():
    status = probe_nerfacc("cpu")
    assert not status.available and status.stage == "device"
    assert "stand-in" in status.short() or "device" in status.short()


def _tiny_ngp_field(*, n_levels: int, log2_table_size: int, max_resolution: int) -> NGPField:
    """A float64 baseline field with 2 features per level from 4 cells per axis up."""
    return NGPField(
        n_levels=n_levels,
        features_per_level=2,
        log2_table_size=log2_table_size,
        base_resolution=4,
        max_resolution=max_resolution,
        hidden_size=4,
        geometry_features=2,
    ).double()


def test_the_baseline_field_encodes_with_the_project_hash_grid_and_has_fd_gradients():
    # one dense level of 4 cells per axis over the padded unit cube: 125 vertices <= 256 rows
    field = _tiny_ngp_field(n_levels=1, log2_table_size=8, max_resolution=4)
    grid = field.encoding
    assert isinstance(grid, HashGridEncoding)
    assert field.encoding_source == ENCODING_SOURCE
    assert grid.resolutions == (4,) and grid.table_size == 256 and grid.bounds == UNIT_CUBE_BOUNDS
    n, low, size = 4, -0.55, 1.1
    index = torch.arange(grid.embeddings.shape[0])
    assert index.numel() == (n + 1) ** 3
    i, j, k = index % (n + 1), (index // (n + 1)) % (n + 1), index // (n + 1) ** 2
    vertex = low + torch.stack([i, j, k], dim=-1).double() * size / n  # (V, 3) scene units
    slope = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.5, -0.4]], dtype=torch.float64)
    with torch.no_grad():
        grid.embeddings.copy_(vertex @ slope.T + torch.tensor([0.1, -0.2], dtype=torch.float64))
    torch.manual_seed(0)
    points = (torch.rand(64, 3, dtype=torch.float64) - 0.5) * 1.0
    expected = points @ slope.T + torch.tensor([0.1, -0.2], dtype=torch.float64)
    torch.testing.assert_close(grid(points), expected)
    # derivatives of the field's log density in the points and of its hashed tables against
    # finite differences (away from cell faces)
    inside = torch.tensor([[0.03, -0.11, 0.2], [-0.3, 0.31, 0.07]], dtype=torch.float64)
    torch.autograd.gradcheck(lambda p: field.log_density(p)[0], (inside.requires_grad_(True),))
    hashed = _tiny_ngp_field(n_levels=2, log2_table_size=6, max_resolution=16)
    assert all(hashed.encoding.hashed)
    torch.autograd.gradcheck(
        lambda table: torch.func.functional_call(
            hashed.encoding, {"embeddings": table}, (inside.detach(),)
        ),
        (hashed.encoding.embeddings.detach().clone().requires_grad_(True),),
    )
