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


def _mesh(args: argparse.Namespace) -> int:
    from .mesh_report import mesh_from_checkpoint
    from .meshing import save_mesh

    extraction, _ = mesh_from_checkpoint(
        args.checkpoint,
        resolution=args.resolution,
        refine_steps=args.refine_steps,
        device=_device(args.device),
    )
    stats = extraction.stats
    if extraction.is_empty:
        print(f"The field has no surface in the box ({stats.status}): no mesh written.")
        return 1
    save_mesh(extraction.mesh, args.out)
    mesh = extraction.mesh
    print(
        f"wrote {args.out}: {mesh.verts_packed().shape[0]} vertices, "
        f"{mesh.faces_packed().shape[0]} faces; field evaluated at "
        f"{stats.points_evaluated} of {stats.dense_points} grid points"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .io import make_dirs
    from .mesh_report import (
        evaluate_held_out_views,
        evaluate_mesh_against,
        load_ground_truth,
        mesh_from_checkpoint,
        write_report,
    )

    if args.gt is None and not args.views:
        raise ValueError("Give --gt MESH and/or --views (held-out views of a checkpoint).")
    is_checkpoint = args.prediction.endswith(".pt")
    if args.views and not is_checkpoint:
        raise ValueError("--views needs a `dvr fit` checkpoint (.pt) as the prediction.")
    device = _device(args.device)
    report: dict = {"prediction": args.prediction}
    pred = gt = None
    if args.gt is not None:
        longest_side = args.gt_longest_side
        if is_checkpoint:
            extraction, config = mesh_from_checkpoint(
                args.prediction, resolution=args.resolution, device=device
            )
            pred = extraction.mesh
            data = config.get("data", {})
            if longest_side is None and data.get("format") in ("mesh", "demo"):
                longest_side = data.get("longest_side")
        else:
            from .meshing import load_mesh

            pred = load_mesh(args.prediction, device=device)
        gt = load_ground_truth(args.gt, longest_side=longest_side, device=device)
        report.update(
            evaluate_mesh_against(
                pred.to(device),
                gt,
                n_points=args.points,
                n_iou_points=0 if args.no_iou else args.points,
            )
        )
        report["ground_truth"] = args.gt
    if args.views:
        import os

        make_dirs(args.out)
        report["held_out"] = evaluate_held_out_views(
            args.prediction, device=device, figure_path=os.path.join(args.out, "views.png")
        )
    paths = write_report(report, args.out, pred=pred, gt=gt)
    print(open(paths["markdown"]).read())
    print("written:", ", ".join(paths.values()))
    return 0


def _device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dvr",
        description=(
            "Differentiable Volumetric Rendering (DVR) for PyTorch3D: render implicit surfaces "
            "through PyTorch3D cameras with exact implicit depth gradients."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    from .single_view.cli import add_single_view_parsers, add_task_option
    from .training.cli_commands import add_demo_parser, add_fit_parser, add_render_parser

    add_task_option(add_fit_parser(commands))  # dvr fit --task single-view
    add_render_parser(commands)
    add_demo_parser(commands)
    add_single_view_parsers(commands)  # make-category, reconstruct, eval-category

    demo = commands.add_parser(
        "render-scene",
        help="render the built-in analytic scene (image, depth and normal grid) to PNG",
    )
    demo.add_argument("--out", default="outputs/scene", help="output folder")
    demo.add_argument("--image-size", type=int, default=128, help="pixels per side")
    demo.add_argument("--views", type=int, default=4, help="number of cameras on an orbit")
    demo.add_argument("--steps", type=int, default=128, help="marching steps per ray")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    demo.set_defaults(run=_demo)

    mesh = commands.add_parser(
        "mesh",
        help="extract the surface of a fitted field as a coloured mesh (.ply or .obj)",
        description="MISE + marching cubes on a `dvr fit` checkpoint; vertex colours from the "
        "texture head.",
    )
    mesh.add_argument("checkpoint", help="a checkpoint written by `dvr fit`")
    mesh.add_argument("--out", required=True, help="mesh file to write (.ply keeps colours)")
    mesh.add_argument("--resolution", type=int, default=256, help="final grid cells per axis")
    mesh.add_argument("--refine-steps", type=int, default=0, help="vertex refinement steps")
    mesh.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    mesh.set_defaults(run=_mesh)

    evaluate = commands.add_parser(
        "eval",
        help="score a mesh or checkpoint against a ground-truth mesh (Chamfer-L1, normal "
        "consistency, F-score, IoU)",
        description="Occupancy Networks / DVR protocol: both meshes normalised by the ground "
        "truth's bounding box (longest side 1); with --views, image metrics on the held-out "
        "views of a checkpoint. Writes metrics.json, metrics.md, errors.png, views.png.",
    )
    evaluate.add_argument("prediction", help="a mesh file, or a `dvr fit` checkpoint (.pt)")
    evaluate.add_argument("--gt", default=None, help="ground-truth mesh (.obj / .ply)")
    evaluate.add_argument(
        "--views",
        action="store_true",
        help="also re-render the checkpoint's held-out views: PSNR, SSIM, mask IoU, depth error",
    )
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.add_argument("--points", type=int, default=100_000, help="samples per surface")
    evaluate.add_argument(
        "--no-iou", action="store_true", help="skip the IoU (for non-watertight ground truth)"
    )
    evaluate.add_argument(
        "--gt-longest-side",
        type=float,
        default=None,
        help="move the ground truth into the fitting frame (centred, this longest side); "
        "taken from the checkpoint for mesh-rendered data",
    )
    evaluate.add_argument("--resolution", type=int, default=256, help="MISE resolution")
    evaluate.add_argument("--device", default=None, help="cpu or cuda")
    evaluate.set_defaults(run=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
