"""The ``dvr`` command line."""

from __future__ import annotations

import argparse
import json
import sys


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
    demo = commands.add_parser(
        "demo", help="render the built-in analytic scene (image, depth and normal grid) to PNG"
    )
    demo.add_argument("--out", default="outputs/demo", help="output folder")
    demo.add_argument("--image-size", type=int, default=128, help="pixels per side")
    demo.add_argument("--views", type=int, default=4, help="number of cameras on an orbit")
    demo.add_argument("--steps", type=int, default=128, help="marching steps per ray")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
