"""End to end: ``dvr fit`` on a tiny synthetic scene through the command-line function."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from dvr_plugin.training.fit import DEMO_OUTPUTS
from tests.training_factories import dvr


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fit_and_render():
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "fit")
        code = dvr(
            [
                "fit",
                "--format",
                "demo",
                "--out",
                out,
                "--device",
                "cpu",
                "--quiet",
                "data.image_size=32",
                "data.n_views=16",
                "data.camera_distance=1.5",
                "model.hidden_size=48",
                "model.n_blocks=2",
                "model.n_frequencies=4",
                "train.iterations=300",
                "train.images_per_batch=2",
                "train.rays_per_image=256",
                "train.sampling=foreground_balanced",
                "train.step_milestones={0: 16}",
                "optim.lr=1e-3",
                "optim.lr_milestones=[200]",
                "eval.validate_every=150",
                "eval.checkpoint_every=100",
                "eval.n_steps=32",
                "eval.turntable_frames=8",
                "eval.mesh_resolution=64",
                "eval.mesh_points=5000",
                "eval.tensorboard=false",
            ]
        )
        assert code == 0
        for name in (*DEMO_OUTPUTS, "val/step_000000.png", "val/step_000300.png"):
            assert os.path.exists(os.path.join(out, name)), name
        with open(os.path.join(out, "metrics.json")) as handle:
            report = json.load(handle)
        assert report["train"]["iterations"] == 300
        trained = report["held_out"]["mask_iou"]
        untrained = report["untrained_held_out"]["mask_iou"]
        assert trained > 0.75
        assert trained > untrained + 0.4
        assert report["held_out"]["psnr"] > report["untrained_held_out"]["psnr"]
        assert "chamfer_l1" in report["mesh"]

        # Rendering the checkpoint: an orbit GIF.
        render_out = os.path.join(folder, "render")
        code = dvr(
            [
                "render",
                os.path.join(out, "checkpoint.pt"),
                "--out",
                render_out,
                "--frames",
                "4",
                "--image-size",
                "24",
                "--steps",
                "32",
                "--device",
                "cpu",
            ]
        )
        assert code == 0
        assert os.path.exists(os.path.join(render_out, "turntable.gif"))
        assert os.path.exists(os.path.join(render_out, "frame_003.png"))

