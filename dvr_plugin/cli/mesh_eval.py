"""
The ``dvr mesh`` and ``dvr eval`` subcommands: their arguments, the checks of those arguments
before any file is read, and the messages. The work is the library's: a checkpoint's surface
(:mod:`dvr_plugin.training.export`), its scores against a ground truth
(:mod:`dvr_plugin.training.mesh_evaluation`) and the report (:mod:`dvr_plugin.cli.eval_report`).

Frames. ``dvr mesh`` writes the mesh in the data's world frame unless ``--frame normalised``;
its header says which. ``dvr eval`` scores prediction and ground truth in one frame (the data's
world frame, or the normalised one with ``--gt-longest-side``), in units of the ground truth's
bounding box (longest side 1).

``dvr_plugin.cli`` wires them in::

    commands = parser.add_subparsers(dest="command", required=True)
    add_mesh_parser(commands)
    add_eval_parser(commands)
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .arguments import add_device_if_present_option, add_report_folder_option
from .fit_commands import clean_errors

# The mesh files `dvr mesh` writes and `dvr eval` reads.
MESH_SUFFIXES = (".ply", ".obj")


def _mesh(args: argparse.Namespace) -> int:
    """``dvr mesh`` (bad input: one line on stderr, exit code 2)."""
    return clean_errors(_mesh_command)(args)


def _mesh_command(args: argparse.Namespace) -> int:
    from ..meshing import save_mesh
    from ..training.export import check_mesh_resolution, mesh_from_checkpoint

    _check_input_file(args.checkpoint, "checkpoint", (".pt",))
    _check_output_mesh(args.out, force=args.force)
    check_mesh_resolution(args.resolution)
    if args.refine_steps < 0:
        raise ValueError(f"--refine-steps must be >= 0, got {args.refine_steps}.")
    device = _device(args.device)
    surface = mesh_from_checkpoint(
        args.checkpoint,
        resolution=args.resolution,
        refine_steps=args.refine_steps,
        frame=args.frame,
        device=device,
    )
    stats = surface.extraction.stats
    if surface.is_empty:
        print(f"The field has no surface in the box ({stats.status}): no mesh written.")
        return 1
    save_mesh(surface.mesh, args.out, comments=surface.comments())
    mesh = surface.mesh
    print(
        f"wrote {args.out}: {mesh.verts_packed().shape[0]} vertices, "
        f"{mesh.faces_packed().shape[0]} faces; field evaluated at "
        f"{stats.points_evaluated} of {stats.dense_points} grid points"
    )
    print(f"{args.out}: {surface.describe()}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """``dvr eval`` (bad input: one line on stderr, exit code 2)."""
    return clean_errors(_eval_command)(args)


def _eval_command(args: argparse.Namespace) -> int:
    from ..io import make_dirs
    from ..training.mesh_evaluation import (
        evaluate_held_out_views,
        evaluate_mesh_against,
        observed_region_metrics,
        prepare_evaluation_meshes,
    )
    from .eval_report import FIGURE_POINTS, write_report

    _check_eval_args(args)
    device = _device(args.device)
    report: dict = {"prediction": args.prediction}
    pred = gt = None
    if args.gt is not None:
        meshes = prepare_evaluation_meshes(
            args.prediction,
            args.gt,
            pred_frame=args.pred_frame,
            checkpoint=args.checkpoint,
            gt_longest_side=args.gt_longest_side,
            resolution=args.resolution,
            device=device,
            require_watertight=not args.no_iou,
        )
        for key, value in meshes.describe().items():
            print(f"frame - {key}: {value}")
        pred, gt = meshes.pred, meshes.gt
        report.update(
            evaluate_mesh_against(
                pred,
                gt,
                n_points=args.points,
                n_iou_points=0 if args.no_iou else args.points,
            )
        )
        report["ground_truth"] = args.gt
        report["frame"] = meshes.describe()
        if args.observed:
            report.update(observed_region_metrics(meshes, n_points=args.points, device=device))
    if args.views:
        make_dirs(args.out)
        held_out = evaluate_held_out_views(
            args.prediction, device=device, figure_path=os.path.join(args.out, "views.png")
        )
        settings = held_out["settings"]
        print(
            f"held-out views rendered with n_steps={settings['n_steps']}, "
            f"n_secant_steps={settings['n_secant_steps']} ({settings['source']})"
        )
        report["held_out"] = held_out
    paths = write_report(
        report, args.out, pred=pred, gt=gt, figure_points=min(args.points, FIGURE_POINTS)
    )
    print(open(paths["markdown"]).read())
    print("written:", ", ".join(paths.values()))
    return 0


def _is_uri(path: str) -> bool:
    return "://" in path


def _check_input_file(path: str, what: str, suffixes: tuple) -> None:
    """A one-line ``ValueError`` unless ``path`` is an existing file ending in ``suffixes``."""
    if not path.lower().endswith(suffixes):
        raise ValueError(f"The {what} {path!r} must end in one of {', '.join(suffixes)}.")
    if _is_uri(path):
        return
    if os.path.isdir(path):
        raise ValueError(f"The {what} {path!r} is a folder, not a file.")
    if not os.path.exists(path):
        raise ValueError(f"The {what} {path!r} does not exist (file not found).")


def _check_output_mesh(path: str, *, force: bool) -> None:
    """The output mesh: a known suffix, an existing folder, not a folder, no file unless
    ``force``."""
    if not path.lower().endswith(MESH_SUFFIXES):
        raise ValueError(
            f"--out {path!r} has an unknown extension: use one of {', '.join(MESH_SUFFIXES)}."
        )
    if _is_uri(path):
        return
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a folder; give a mesh file name.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"The output folder {folder!r} does not exist.")
    if os.path.exists(path) and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it.")


def _check_eval_args(args: argparse.Namespace) -> None:
    """Every argument of ``dvr eval`` that can be checked without loading anything."""
    from ..training.export import check_mesh_resolution

    if args.gt is None and not args.views:
        raise ValueError("Give --gt MESH and/or --views (held-out views of a checkpoint).")
    is_checkpoint = args.prediction.lower().endswith(".pt")
    _check_input_file(args.prediction, "prediction", (".pt",) + MESH_SUFFIXES)
    if args.views and not is_checkpoint:
        raise ValueError("--views needs a `dvr fit` checkpoint (.pt) as the prediction.")
    if args.gt is not None:
        _check_input_file(args.gt, "ground-truth mesh", MESH_SUFFIXES)
    if args.checkpoint is not None:
        if is_checkpoint:
            raise ValueError(
                "--checkpoint is for a mesh-file prediction; the prediction is a checkpoint."
            )
        _check_input_file(args.checkpoint, "checkpoint", (".pt",))
    if args.pred_frame is not None and is_checkpoint:
        raise ValueError(
            "--pred-frame is for a mesh-file prediction; a checkpoint is placed by the data "
            "frame it records."
        )
    if args.observed:
        if args.gt is None:
            raise ValueError("--observed scores meshes: give --gt MESH.")
        if not is_checkpoint and args.checkpoint is None:
            raise ValueError(
                "--observed needs the fit's training cameras: give a checkpoint as the "
                "prediction, or --checkpoint CHECKPOINT with a mesh file."
            )
    if args.points < 1:
        raise ValueError(f"--points must be >= 1, got {args.points}.")
    if args.gt is not None and is_checkpoint:
        check_mesh_resolution(args.resolution)
    if args.gt_longest_side is not None and not 0 < args.gt_longest_side <= 1:
        raise ValueError(f"--gt-longest-side must be in (0, 1], got {args.gt_longest_side}.")
    if not _is_uri(args.out) and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a file; the report needs a folder.")


def _device(name: str | None) -> str:
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available.")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_mesh_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``mesh``: the surface of a fitted field as a coloured mesh file."""
    mesh = subparsers.add_parser(
        "mesh",
        help="extract the surface of a fitted field as a coloured mesh (.ply or .obj)",
        description="MISE + marching cubes on a `dvr fit` checkpoint; vertex colours from the "
        "texture head. The mesh is written in the data's world frame (DTU millimetres, Blender "
        "units, the mesh file's units, ...) unless --frame normalised; its header says which.",
    )
    mesh.add_argument("checkpoint", help="a checkpoint written by `dvr fit`")
    mesh.add_argument("--out", required=True, help="mesh file to write (.ply keeps colours)")
    mesh.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="final grid cells per axis: 32 * 2^k (64, 128, 256, ...) or at most 32",
    )
    mesh.add_argument("--refine-steps", type=int, default=0, help="vertex refinement steps")
    mesh.add_argument(
        "--frame",
        choices=("world", "normalised"),
        default="world",
        help="world (default): the data's own frame; normalised: the fitting frame (the "
        "object in the unit cube)",
    )
    mesh.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    add_device_if_present_option(mesh)
    mesh.set_defaults(run=_mesh)
    return mesh


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval``: a mesh or checkpoint scored against a ground truth, and held-out views."""
    evaluate = subparsers.add_parser(
        "eval",
        help="score a mesh or checkpoint against a ground-truth mesh (Chamfer-L1, normal "
        "consistency, F-score, IoU)",
        description="Occupancy Networks / DVR protocol: prediction and ground truth are put in "
        "one frame (the data's world frame; a checkpoint's surface is moved there with the frame "
        "it records), then both are normalised by the ground truth's bounding box (longest side "
        "1). Stops when the two bounding boxes differ by more than 2x or do not overlap. With "
        "--observed, also the DTU-style observed-region scores (training cameras); with "
        "--views, image metrics on the held-out views of a checkpoint, rendered with the fit's "
        "settings. Writes metrics.json, metrics.md, errors.png, views.png.",
    )
    evaluate.add_argument("prediction", help="a mesh file, or a `dvr fit` checkpoint (.pt)")
    evaluate.add_argument(
        "--gt", default=None, help="ground-truth mesh (.obj / .ply) in the data's world frame"
    )
    evaluate.add_argument(
        "--views",
        action="store_true",
        help="also re-render the checkpoint's held-out views: PSNR, SSIM, mask IoU, depth error",
    )
    evaluate.add_argument(
        "--observed",
        action="store_true",
        help="also score only the observed region: accuracy over predicted samples and "
        "completeness over true samples that a training camera sees (needs a checkpoint)",
    )
    add_report_folder_option(evaluate)
    evaluate.add_argument("--points", type=int, default=100_000, help="samples per surface")
    evaluate.add_argument(
        "--no-iou", action="store_true", help="skip the IoU (for non-watertight ground truth)"
    )
    evaluate.add_argument(
        "--pred-frame",
        choices=("world", "normalised"),
        default=None,
        help="the frame of a mesh-file prediction (default: what its header states, else "
        "world); normalised needs the to_world of its header or of --checkpoint",
    )
    evaluate.add_argument(
        "--checkpoint",
        default=None,
        help="with a mesh-file prediction: the fit it comes from (its data frame, and the "
        "training cameras of --observed)",
    )
    evaluate.add_argument(
        "--gt-longest-side",
        type=float,
        default=None,
        help="score in the fitting frame instead: the ground truth is centred and scaled to "
        "this longest side (as `dvr fit --format mesh` does with data.longest_side); not "
        "needed when the ground truth is in the data's world frame",
    )
    evaluate.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="MISE resolution of a checkpoint's surface: 32 * 2^k or at most 32",
    )
    evaluate.add_argument("--device", default=None, help="cpu or cuda")
    evaluate.set_defaults(run=_eval)
    return evaluate
