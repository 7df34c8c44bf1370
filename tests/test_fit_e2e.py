"""End to end: ``dvr fit`` on a tiny synthetic scene through the command-line function."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import unittest

import pytest
import torch

from dvr_plugin.training.cli_commands import add_fit_parser, add_render_parser


def dvr(argv: list[str]) -> int:
    """Parse and run ``dvr <argv>`` with the training subcommands."""
    parser = argparse.ArgumentParser(prog="dvr")
    commands = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(commands)
    add_render_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.mark.slow
class TestFitEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Small tensors: one thread is as fast, and far faster when the cores are busy.
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls.threads)

    def test_fit_and_render(self):
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
            self.assertEqual(code, 0)
            for name in (
                "checkpoint.pt",
                "config.yaml",
                "train_log.csv",
                "val_log.csv",
                "curves.png",
                "comparison.png",
                "turntable.gif",
                "mesh.ply",
                "metrics.json",
                "val/step_000000.png",
                "val/step_000300.png",
            ):
                self.assertTrue(os.path.exists(os.path.join(out, name)), name)
            with open(os.path.join(out, "metrics.json")) as handle:
                report = json.load(handle)
            self.assertEqual(report["train"]["iterations"], 300)
            trained = report["held_out"]["mask_iou"]
            untrained = report["untrained_held_out"]["mask_iou"]
            self.assertGreater(trained, 0.75)
            self.assertGreater(trained, untrained + 0.4)
            self.assertGreater(report["held_out"]["psnr"], report["untrained_held_out"]["psnr"])
            self.assertIn("chamfer_l1", report["mesh"])

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
            self.assertEqual(code, 0)
            self.assertTrue(os.path.exists(os.path.join(render_out, "turntable.gif")))
            self.assertTrue(os.path.exists(os.path.join(render_out, "frame_003.png")))


if __name__ == "__main__":
    unittest.main()
