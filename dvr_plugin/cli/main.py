"""The ``dvr`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from .arguments import (
    add_device_if_present_option,
    add_image_size_option,
    add_marching_steps_option,
    add_output_folder_option,
)


def _demo(args: argparse.Namespace) -> int:
    from .demo import render_demo

    report = render_demo(
        args.out,
        image_size=args.image_size,
        n_views=args.views,
        n_steps=args.steps,
        device=args.device,
    )
    print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dvr",
        description=(
            "Differentiable Volumetric Rendering (DVR) for PyTorch3D: render implicit surfaces "
            "through PyTorch3D cameras with exact implicit depth gradients."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    from .fit_commands import add_demo_parser, add_fit_parser, add_render_parser
    from .single_view import add_single_view_parsers, add_task_option

    add_task_option(add_fit_parser(commands))  # dvr fit --task single-view
    add_render_parser(commands)
    add_demo_parser(commands)
    add_single_view_parsers(commands)  # make-category, reconstruct, eval-category
    from .make_scene import add_make_scene_parser

    add_make_scene_parser(commands)  # DTU-like captures with exact ground truth

    demo = commands.add_parser(
        "render-scene",
        help="render the built-in analytic scene (image, depth and normal grid) to PNG",
    )
    add_output_folder_option(demo, default="outputs/scene")
    add_image_size_option(demo, default=128)
    demo.add_argument("--views", type=int, default=4, help="number of cameras on an orbit")
    add_marching_steps_option(demo)
    add_device_if_present_option(demo)
    demo.set_defaults(run=_demo)

    from .mesh_eval import add_eval_parser, add_mesh_parser

    add_mesh_parser(commands)  # a checkpoint's surface as a mesh file
    add_eval_parser(commands)  # scores against a ground-truth mesh and held-out views
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Run ``dvr`` on ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    ``KEY=VALUE`` overrides of the subcommands that take them (``fit``, ``demo``) may stand
    anywhere among the options (``dvr fit --out X train.iterations=5 --config cow
    model.hidden_size=32``); they apply in the order given. Anything else argparse does not
    know stops with its usual "unrecognized arguments" message (exit code 2).
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        # argparse fills the positional with the first run of KEY=VALUE tokens; later runs
        # (after an option) come back here, in order
        def is_override(token: str) -> bool:
            return not token.startswith("-") and "=" in token

        args.overrides = [*args.overrides, *filter(is_override, extras)]
        extras = [token for token in extras if not is_override(token)]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
