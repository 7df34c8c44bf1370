"""
The ``dvr fit``, ``dvr render`` and (fitting) ``dvr demo`` subcommands.

``dvr_plugin.cli`` wires them in::

    from .fit_commands import add_demo_parser, add_fit_parser, add_render_parser

    commands = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(commands)
    add_render_parser(commands)
    add_demo_parser(commands)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .arguments import (
    add_config_device_option,
    add_device_option,
    add_marching_steps_option,
    add_orbit_frames_option,
    add_output_folder_option,
    add_overrides_argument,
    add_quiet_option,
    option_value,
)

FORMAT_CHOICES = ("mesh", "dtu", "monosdf", "nerf-synthetic", "dvr", "demo")

FIT_EPILOG = """\
examples:
  dvr fit --config dvr_plugin/configs/cow.yaml --out outputs/cow
  dvr fit --data ../shared/data/meshes/cow.obj --format mesh --out outputs/cow \\
      train.iterations=3000 model.hidden_size=128 data.image_size=128
  dvr fit --config dvr_plugin/configs/dtu.yaml --data ../shared/data/dtu_scan24_384/scan24 \\
      --format monosdf --out outputs/dtu24
  dvr fit --config nerf-synthetic --data ../shared/data/nerf_synthetic_lego/lego --out outputs/lego
  dvr fit --out outputs/cow --resume train.iterations=6000     # continue (and extend) a fit
  torchrun --standalone --nproc_per_node=4 -m dvr_plugin.cli fit --config cow --out outputs/cow
      # 4 GPUs: train.images_per_batch is the global batch, split across the ranks

Overrides are dotted keys of the config (values parsed as YAML), e.g. train.iterations=2000,
optim.lr=1e-3, loss.depth=1.0, train.step_milestones="{0: 16, 2000: 32}". Sections: data,
model, optim, train, loss, eval; top-level keys: seed, device, mixed_precision, background.
Outputs (in --out): checkpoint.pt, config.yaml, train_log.csv, val_log.csv, val/*.png,
curves.png, comparison.png, turntable.gif, metrics.json (and mesh.ply with
eval.mesh_resolution > 0). A checkpoint already in --out is never overwritten unless --resume.
Without --format (and a config naming one) the format is read from the --data files. --resume
refuses other data and a train.iterations below the checkpoint's step, writing nothing. Ctrl-C
saves a checkpoint at the current step and prints the command that resumes (exit code 130).
metrics.json records "status": "collapsed" when the object vanished.
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
    add_overrides_argument(parser)
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
    add_output_folder_option(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (optimiser, step and random state restored); "
        "without --config the configuration stored in the checkpoint is used",
    )
    add_config_device_option(parser)
    add_quiet_option(parser)
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
    add_output_folder_option(parser)
    parser.add_argument("--cameras", choices=("orbit", "held-out", "all"), default="orbit")
    add_orbit_frames_option(parser, default=36)
    parser.add_argument("--image-size", type=int, default=None, help="orbit pixels per side")
    parser.add_argument("--distance", type=float, default=None, help="orbit camera distance")
    parser.add_argument("--fov", type=float, default=None, help="orbit field of view (degrees)")
    parser.add_argument("--elevation", type=float, default=None, help="orbit elevation (deg)")
    add_marching_steps_option(parser)
    parser.add_argument("--fps", type=int, default=12, help="GIF frame rate")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda ...")
    add_quiet_option(parser)
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
    add_overrides_argument(parser)
    add_output_folder_option(parser, default="outputs/demo")
    add_device_option(parser)
    add_quiet_option(parser)
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
    """
    ``dvr fit``. Ctrl-C saves a checkpoint at the current step and exits with code 130 and one
    line giving the command that resumes.
    """
    from ..training.config import load_config
    from ..training.fit import fit

    config_path, base = fit_config_source(args)
    overrides = fit_overrides(args)
    inferred = infer_fit_format(args, config_path, base)
    if inferred is not None:
        _note(
            f"dvr fit: data.format={inferred.format} (inferred from {inferred.path}: "
            f"{inferred.reason}; pass --format to choose another)"
        )
        overrides.append(f"data.format={inferred.format}")
    config = load_config(config_path, overrides, base=base)
    try:
        report = fit(config, args.out, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt as stop:
        print(f"dvr fit: {interrupt_message(stop, args.out)}", file=sys.stderr)
        return 130
    if report.get("rank", 0) == 0:  # under torchrun rank 0 reports
        if report.get("nothing_to_do"):
            print(f"dvr fit: {report['message']}", file=sys.stdout)
        else:
            _print_summary(report, args.out)
    return 0


def resume_command(out_dir: str) -> str:
    """The command that continues the fit in ``out_dir`` (with its stored configuration)."""
    import shlex

    return f"dvr fit --out {shlex.quote(str(out_dir))} --resume"


def interrupt_message(stop: BaseException, out_dir: str) -> str:
    """
    One line for a ``dvr fit`` stopped by Ctrl-C: the step saved and the command that resumes
    (``stop`` is a :class:`dvr_plugin.engine.FitInterrupted` when training was under way).
    """
    import os

    from ..engine.checkpoint import checkpoint_exists
    from ..engine.run_outputs import CHECKPOINT_NAME
    from ..engine.trainer import FitInterrupted

    if isinstance(stop, FitInterrupted) and stop.path is None:  # a rank other than 0
        return f"interrupted at step {stop.step}; rank 0 writes the checkpoint."
    if isinstance(stop, FitInterrupted):
        return (
            f"interrupted at step {stop.step}; checkpoint saved to {stop.path}. Resume with: "
            f"{resume_command(out_dir)}"
        )
    path = os.path.join(str(out_dir), CHECKPOINT_NAME)
    if checkpoint_exists(path):
        return (
            f"interrupted; {path} holds the last saved step. Resume with: {resume_command(out_dir)}"
        )
    return "interrupted before the first checkpoint; nothing to resume."


@dataclass(frozen=True)
class InferredFormat:
    """``data.format`` read from the data by :func:`infer_fit_format`: format, path and why."""

    format: str
    path: str
    reason: str


def infer_fit_format(
    args: argparse.Namespace, config_path: Optional[str], base: Optional[dict]
) -> Optional[InferredFormat]:
    """
    The data format that ``dvr fit`` reads from the data path when nothing names it.

    Precedence: ``--format`` or a ``data.format=`` override wins (``demo`` together with a data
    path is refused: the demo reads no data); then a format named by ``--config`` or by the
    resumed checkpoint, unless it is ``demo``; otherwise, when there is a data path (``--data``,
    a ``data.path=`` override or the config's), the format is inferred from its files
    (:func:`dvr_plugin.data.detect_data_format`), and a path that matches no format stops with
    the list of formats. A data path never falls back to the demo.

    Returns:
        The inferred format, or ``None`` when the configuration decides (or there is no path).

    Raises:
        ValueError, FileNotFoundError: the path is missing or matches no format (or several),
            or ``demo`` was asked for together with a data path.
    """
    from ..data.detect import detect_data_format
    from ..engine.config import parse_override
    from ..training.config import load_config_data

    explicit = getattr(args, "format", None)
    path = getattr(args, "data", None)
    for text in args.overrides:
        parts, value = parse_override(text)
        if parts == ["data", "format"]:
            explicit = value
        elif parts == ["data", "path"] and path is None:
            path = value
    configured = load_config_data(config_path, [], base=base).get("data") or {}
    if path is None:
        path = configured.get("path")
    if explicit is not None:
        if explicit == "demo" and path is not None:
            raise ValueError(
                f"data.format=demo is the built-in scene and reads no data, but a data path "
                f"was given ({path}); name the data's format or drop the path."
            )
        return None
    named = configured.get("format")
    if path is None:
        return None
    if named is not None and named != "demo":
        _note_format_disagreement(named, str(path))
        return None
    detected = detect_data_format(str(path))
    return InferredFormat(detected.format, str(path), detected.reason)


def _note_format_disagreement(named: str, path: str) -> None:
    """A note on stderr when the configured format is not the one the data looks like."""
    from ..data.detect import detect_data_format

    try:
        detected = detect_data_format(path)
    except (ValueError, FileNotFoundError):
        return  # the loader reports what is wrong
    if detected.format != named:
        _note(
            f"dvr fit: note: the configuration reads {path} as data.format={named}, but it "
            f"looks like {detected.format} data ({detected.reason}); pass --format to choose."
        )


def _note(line: str) -> None:
    """One line on stderr (under torchrun from rank 0 only)."""
    from ..training.distributed import environment_rank

    if environment_rank() == 0:
        print(line, file=sys.stderr)


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
    name of a packaged config (:func:`resolve_config_argument`); without it, ``--resume``
    starts from the configuration stored in ``OUT/checkpoint.pt``; ``(None, None)`` otherwise.
    """
    import os

    from ..engine.checkpoint import load_checkpoint
    from ..engine.run_outputs import CHECKPOINT_NAME

    config_path = args.config
    if config_path is not None:
        config_path = resolve_config_argument(config_path)
    base = None
    if args.resume and config_path is None:
        state = load_checkpoint(os.path.join(args.out, CHECKPOINT_NAME))
        base = state["config"]
    return config_path, base


def resolve_config_argument(value: str) -> str:
    """
    The file that ``--config VALUE`` names: an existing file; else, for a path-like value (one
    with a slash or a ``.yaml`` / ``.yml`` suffix), ``FileNotFoundError("file not found: ...")``;
    else the packaged config of that name (``dvr_plugin/configs/VALUE.yaml``).
    """
    import os

    from ..training.fit import packaged_config, packaged_config_names

    if os.path.isfile(value):
        return value
    if os.path.isdir(value):
        raise ValueError(f"--config {value} is a folder; give a YAML file.")
    has_folder = "/" in value or os.sep in value
    if has_folder or value.lower().endswith((".yaml", ".yml")):
        stem = os.path.splitext(os.path.basename(value))[0]
        hint = ""
        if not has_folder and stem in packaged_config_names():
            hint = f" (the packaged config is named without the suffix: --config {stem})"
        raise FileNotFoundError(f"file not found: {value}{hint}")
    return packaged_config(value)


# The render settings of `dvr render` (keyword arguments of render_checkpoint) and their flags.
RENDER_SETTING_FLAGS = {
    "cameras": "--cameras",
    "n_frames": "--frames",
    "image_size": "--image-size",
    "distance": "--distance",
    "fov": "--fov",
    "elevation": "--elevation",
    "n_steps": "--steps",
    "fps": "--fps",
}


@clean_errors
def run_render_command(args: argparse.Namespace) -> int:
    """
    ``dvr render``: every option is checked before the checkpoint is loaded; the progress bar
    goes to stderr, the JSON summary to stdout.
    """
    from ..training.fit import render_checkpoint

    settings = {name: option_value(args, flag) for name, flag in RENDER_SETTING_FLAGS.items()}
    result = render_checkpoint(
        args.checkpoint,
        args.out,
        **settings,
        device=args.device,
        progress=not args.quiet,
        names=RENDER_SETTING_FLAGS,
    )
    summary = {k: v for k, v in result.items() if k != "images"}
    summary["n_images"] = len(result["images"])
    print(json.dumps(summary, indent=2))
    return 0


@clean_errors
def run_demo_command(args: argparse.Namespace) -> int:
    """``dvr demo``."""
    report = run_fit_demo(args.out, args.device, overrides=args.overrides, progress=not args.quiet)
    if report.get("rank", 0) == 0:
        _print_summary(report, args.out)
    return 0


def run_fit_demo(out_dir: str = "outputs/demo", device: str = "auto", **kwargs: Any) -> dict:
    """The fitting demo (see :func:`dvr_plugin.training.fit.run_fit_demo`)."""
    from ..training.fit import run_fit_demo as _run

    return _run(out_dir, device, **kwargs)


def _print_summary(report: dict, out_dir: str) -> None:
    lines = [f"outputs in {out_dir}:"]
    if report.get("status", "ok") != "ok":
        warning = (
            f"WARNING: the fit {report['status']}: {report.get('status_reason')}. The object "
            "vanished; see 'When a fit collapses' in docs/training.md."
        )
        lines.insert(0, warning)
        print(f"dvr fit: {warning}", file=sys.stderr)
    held = report.get("held_out")
    masked = (report.get("headline") or {}).get("psnr") == "psnr_masked"
    if held:
        if masked:
            lines.append(
                f"  held-out mask IoU {held['mask_iou']:.3f}, PSNR inside the object mask "
                f"{held['psnr_masked']:.2f} dB (the headline: real background, not modelled; "
                f"whole image {held['psnr']:.2f} dB)"
            )
        else:
            lines.append(
                f"  held-out mask IoU {held['mask_iou']:.3f}, PSNR {held['psnr']:.2f} dB "
                f"(inside the mask {held['psnr_masked']:.2f} dB)"
            )
    untrained = report.get("untrained_held_out")
    if untrained and "mask_iou" in untrained:
        key, words = ("psnr_masked", "PSNR inside the mask") if masked else ("psnr", "PSNR")
        if key in untrained:
            lines.append(
                f"  untrained: mask IoU {untrained['mask_iou']:.3f}, {words} "
                f"{untrained[key]:.2f} dB"
            )
    mesh = report.get("mesh") or {}
    if "chamfer_l1" in mesh:
        f_score = mesh.get("f_score", float("nan"))
        lines.append(f"  mesh: Chamfer-L1 {mesh['chamfer_l1']:.4f}, F@1% {f_score:.3f}")
    if "file_frame" in mesh:
        lines.append(f"  {mesh['file_frame']}")
    train = report.get("train", {})
    timing = report.get("timing", {})
    lines.append(
        f"  {train.get('iterations')} iterations on {train.get('device')} in "
        f"{train.get('seconds', 0):.0f} s ({1000 * train.get('seconds_per_iteration', 0):.0f} "
        f"ms/it); total {timing.get('wall_seconds', 0):.0f} s"
    )
    print("\n".join(lines), file=sys.stdout)
