"""
Shared builders for the training tests (seeded, CPU): ground-truth views of an analytic sphere,
a tiny fit configuration, and ``dvr`` run in-process with its training subcommands.

Frame and units: PyTorch3D world frame, the sphere of radius 0.3 (world units) at the origin,
cameras 2 units away; images in [0, 1], z-depth in world units.
"""

from __future__ import annotations

import argparse

import torch

from dvr_plugin.cli.fit_commands import add_fit_parser, add_render_parser
from dvr_plugin.data import MultiViewData, cameras_looking_at_origin, fibonacci_sphere
from dvr_plugin.fields.shapes import SphereField
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.training.config import FitConfig, apply_overrides


class TrainingFactory:
    """Seeded inputs shared by the tests: an analytic sphere rendered as ground truth."""

    @staticmethod
    def sphere_views(
        *, n_views: int = 12, image_size: int = 32, radius: float = 0.3
    ) -> MultiViewData:
        """``n_views`` renders of a sphere (exact analytic surface) from a Fibonacci sphere."""
        eyes = 2.0 * fibonacci_sphere(n_views).float()
        cameras = cameras_looking_at_origin(eyes, image_size=image_size, fov=40.0)
        renderer = DVRRenderer.for_images(
            field=SphereField(radius=radius, sharpness=50.0),
            image_size=image_size,
            background_color=1.0,
            n_steps=64,
        )
        with torch.no_grad():
            out = renderer(cameras)
        return MultiViewData(
            images=out.images.clamp(0, 1),
            masks=out.masks > 0.5,
            depths=out.depths,
            cameras=cameras,
        )

    @staticmethod
    def config(**overrides) -> FitConfig:
        """A tiny CPU configuration; ``overrides`` are ``{"section.key": value}``."""
        base = [
            "device=cpu",
            "model.hidden_size=32",
            "model.n_blocks=2",
            "model.n_frequencies=2",
            "train.images_per_batch=2",
            "train.rays_per_image=128",
            "train.sampling=foreground_balanced",
            "train.step_milestones={0: 16}",
            "eval.validate_every=0",
            "eval.checkpoint_every=0",
            "eval.log_every=1",
            "eval.n_steps=32",
            "eval.turntable_frames=0",
            "eval.tensorboard=false",
        ]
        data = apply_overrides({}, base)
        data = apply_overrides(data, [(k.split("."), v) for k, v in overrides.items()])
        return FitConfig.from_dict(data)


def dvr(argv: list[str]) -> int:
    """Parse and run ``dvr <argv>`` with the training subcommands; returns the exit code."""
    parser = argparse.ArgumentParser(prog="dvr")
    commands = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(commands)
    add_render_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)
