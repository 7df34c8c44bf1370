"""
The ``dvr fit``, ``dvr render`` and (fitting) ``dvr demo`` subcommands.

``dvr_plugin.cli`` wires them in::

    from .training.cli_commands import add_demo_parser, add_fit_parser, add_render_parser

    commands = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(commands)
    add_render_parser(commands)
    add_demo_parser(commands)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional

FORMAT_CHOICES = ("mesh", "dtu", "monosdf", "nerf-synthetic", "dvr", "demo")

FIT_EPILOG = """\
examples:
  dvr fit --config dvr_plugin/configs/cow.yaml --out outputs/cow
  dvr fit --data ../shared/data/meshes/cow.obj --format mesh --out outputs/cow \\
      train.iterations=3000 model.hidden_size=128 data.image_size=128
  dvr fit --config dvr_plugin/configs/dtu.yaml --data ../shared/data/dtu_scan24_384/scan24 \\
      --format monosdf --out outputs/dtu24
  dvr fit --out outputs/cow --resume train.iterations=6000     # continue (and extend) a fit
  torchrun --standalone --nproc_per_node=4 -m dvr_plugin.cli fit --config cow --out outputs/cow
      # 4 GPUs: train.images_per_batch is the global batch, split across the ranks

Overrides are dotted keys of the config (values parsed as YAML), e.g. train.iterations=2000,
optim.lr=1e-3, loss.depth=1.0, train.step_milestones="{0: 16, 2000: 32}". Sections: data,
model, optim, train, loss, eval; top-level keys: seed, device, mixed_precision, background.
Outputs (in --out): checkpoint.pt, config.yaml, train_log.csv, val_log.csv, val/*.png,
curves.png, comparison.png, turntable.gif, metrics.json (and mesh.ply with
eval.mesh_resolution > 0). A checkpoint already in --out is never overwritten unless --resume.
"""


def add_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fit``: fit DVR to posed images (a YAML config plus ``key=value`` overrides)."""
    parser = subparsers.add_parser(
        "fit",
        help="fit a DVR shape and texture to posed images with masks",
        description=(
            "Fit an occupancy + texture field to posed images and object masks with\n"
            "Differentiable Volumetric Rendering (no 3D supervision). Settings come from a\n"
            "YAML config (default: the built-in defaults) plus key=value overrides."
        ),
        epilog=FIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--config", default=None, help="YAML config (a path or a packaged name)")
    parser.add_argument(
        "--data", default=None, help="data folder, or mesh file for --format mesh (data.path)"
    )
    parser.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default=None,
        help="data format (data.format): a mesh rendered with PyTorch3D, DTU (IDR/NeuS layout), "
        "the MonoSDF DTU crop, NeRF-synthetic, the reference DVR layout, or the built-in demo",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (optimiser, step and random state restored); "
        "without --config the configuration stored in the checkpoint is used",
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_fit_command)
    return parser


def add_render_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``render``: render a fitted checkpoint (orbit GIF by default)."""
    parser = subparsers.add_parser(
        "render",
        help="render a fitted checkpoint: turntable GIF and frames, or the data's views",
        description=(
            "Render a checkpoint written by `dvr fit`. By default an orbit around the object "
            "(like the training cameras) is written as PNG frames and a turntable GIF; "
            "--cameras held-out / all renders the views of the fit's data set next to the "
            "ground truth."
        ),
    )
    parser.add_argument("checkpoint", help="checkpoint.pt of a fit")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cameras", choices=("orbit", "held-out", "all"), default="orbit")
    parser.add_argument("--frames", type=int, default=36, help="orbit frames")
    parser.add_argument("--image-size", type=int, default=None, help="orbit pixels per side")
    parser.add_argument("--distance", type=float, default=None, help="orbit camera distance")
    parser.add_argument("--fov", type=float, default=None, help="orbit field of view (degrees)")
    parser.add_argument("--elevation", type=float, default=None, help="orbit elevation (deg)")
    parser.add_argument("--steps", type=int, default=128, help="marching steps per ray")
    parser.add_argument("--fps", type=int, default=12, help="GIF frame rate")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda ...")
    parser.set_defaults(run=run_render_command)
    return parser


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``demo``: the self-contained fitting demo."""
    parser = subparsers.add_parser(
        "demo",
        help="build a textured scene in code, render it, fit DVR and write the results",
        description=(
            "The self-contained demo: a textured scene built in code is rendered from 32 views "
            "(48 on a GPU) with PyTorch3D's MeshRenderer, DVR is fitted to 7/8 of them (images "
            "and masks only) "
            "and the checkpoint, a held-out comparison grid, a turntable GIF, the mesh and "
            "metrics.json (held-out mask IoU and PSNR, Chamfer-L1) are written to --out. About "
            "5-8 minutes on a 2-core CPU; larger settings on a GPU."
        ),
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_demo_command)
    return parser


# ---------------------------------------------------------------------------------------------


def clean_errors(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Report a bad input (``ValueError`` / ``FileNotFoundError``) as one line, exit code 2."""
    import functools

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError) as error:
            print(f"dvr {args.command}: error: {error}", file=sys.stderr)
            return 2

    return wrapper


@clean_errors
def run_fit_command(args: argparse.Namespace) -> int:
    """``dvr fit``."""
    from .config import load_config
    from .fit import fit

    config_path, base = fit_config_source(args)
    config = load_config(config_path, fit_overrides(args), base=base)
    report = fit(config, args.out, resume=args.resume, progress=not args.quiet)
    if report.get("rank", 0) == 0:  # under torchrun rank 0 reports
        _print_summary(report, args.out)
    return 0


def fit_overrides(args: argparse.Namespace) -> list[str]:
    """
    The ``KEY=VALUE`` overrides of ``dvr fit``, followed by those that ``--format``, ``--data``
    and ``--device`` stand for.
    """
    overrides = list(args.overrides)
    if getattr(args, "format", None) is not None:
        overrides.append(f"data.format={args.format}")
    if args.data is not None:
        overrides.append(f"data.path={json.dumps(args.data)}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    return overrides


def fit_config_source(args: argparse.Namespace) -> tuple[Optional[str], Optional[dict]]:
    """
    Where ``dvr fit`` reads its configuration: ``(path, base)``. ``--config`` is a file or the
    name of a packaged config; without it, ``--resume`` starts from the configuration stored in
    ``OUT/checkpoint.pt``; ``(None, None)`` otherwise.
    """
    import os

    from .checkpoint import load_checkpoint
    from .fit import packaged_config
    from .trainer import CHECKPOINT_NAME

    config_path = args.config
    if config_path is not None and not os.path.exists(config_path):
        config_path = packaged_config(config_path)
    base = None
    if args.resume and config_path is None:
        state = load_checkpoint(os.path.join(args.out, CHECKPOINT_NAME))
        base = state["config"]
    return config_path, base


@clean_errors
def run_render_command(args: argparse.Namespace) -> int:
    """``dvr render``."""
    from .fit import render_checkpoint

    result = render_checkpoint(
        args.checkpoint,
        args.out,
        cameras=args.cameras,
        n_frames=args.frames,
        image_size=args.image_size,
        distance=args.distance,
        fov=args.fov,
        elevation=args.elevation,
        n_steps=args.steps,
        device=args.device,
        fps=args.fps,
    )
    summary = {k: v for k, v in result.items() if k != "images"}
    summary["n_images"] = len(result["images"])
    print(json.dumps(summary, indent=2))
    return 0


@clean_errors
def run_demo_command(args: argparse.Namespace) -> int:
    """``dvr demo``."""
    report = run_fit_demo(
        args.out, args.device, overrides=args.overrides, progress=not args.quiet
    )
    if report.get("rank", 0) == 0:
        _print_summary(report, args.out)
    return 0


def run_fit_demo(out_dir: str = "outputs/demo", device: str = "auto", **kwargs: Any) -> dict:
    """The fitting demo (see :func:`dvr_plugin.training.fit.run_fit_demo`)."""
    from .fit import run_fit_demo as _run

    return _run(out_dir, device, **kwargs)


def _print_summary(report: dict, out_dir: str) -> None:
    lines = [f"outputs in {out_dir}:"]
    held = report.get("held_out")
    if held:
        lines.append(
            f"  held-out mask IoU {held['mask_iou']:.3f}, PSNR {held['psnr']:.2f} dB "
            f"(inside the mask {held['psnr_masked']:.2f} dB)"
        )
    untrained = report.get("untrained_held_out")
    if untrained and "mask_iou" in untrained:
        lines.append(
            f"  untrained: mask IoU {untrained['mask_iou']:.3f}, PSNR {untrained['psnr']:.2f} dB"
        )
    mesh = report.get("mesh") or {}
    if "chamfer_l1" in mesh:
        f_score = mesh.get("f_score", float("nan"))
        lines.append(f"  mesh: Chamfer-L1 {mesh['chamfer_l1']:.4f}, F@1% {f_score:.3f}")
    train = report.get("train", {})
    timing = report.get("timing", {})
    lines.append(
        f"  {train.get('iterations')} iterations on {train.get('device')} in "
        f"{train.get('seconds', 0):.0f} s ({1000 * train.get('seconds_per_iteration', 0):.0f} "
        f"ms/it); total {timing.get('wall_seconds', 0):.0f} s"
    )
    print("\n".join(lines), file=sys.stdout)
