"""
Command-line glue of single-view reconstruction.

``dvr_plugin.cli`` adds ``--task`` to ``dvr fit`` and the subcommands::

    from .single_view.cli import add_single_view_parsers, add_task_option

    add_task_option(fit_parser)            # dvr fit --task single-view
    add_single_view_parsers(commands)      # dvr make-category / reconstruct / eval-category

``dvr fit`` stays the multi-view fit unless ``--task single-view`` is given, or the config file
says ``task: single-view``, or ``--resume`` finds a single-view run in ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from .arguments import (
    add_device_option,
    add_image_size_option,
    add_marching_steps_option,
    add_new_folder_option,
    add_orbit_frames_option,
    add_output_folder_option,
    add_quiet_option,
    add_report_folder_option,
    add_supersample_option,
)
from .fit_commands import clean_errors

TASKS = ("multi-view", "single-view")
PACKAGED_CONFIG = "single_view"


def _device(name: str | None) -> str:
    import torch

    if name and name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _show_notices() -> None:
    """Print the package's warnings (e.g. the encoder's random-initialisation notice)."""
    import logging

    logger = logging.getLogger("dvr_plugin.single_view")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("notice: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# ---------------------------------------------------------------------------------------------
# dvr fit --task


def add_task_option(fit_parser: argparse.ArgumentParser) -> None:
    """Add ``--task`` to the ``fit`` parser and route ``single-view`` here."""
    fit_parser.add_argument(
        "--task",
        choices=TASKS,
        default=None,
        help="multi-view (default: one object from posed images) or single-view (an image "
        "encoder and a conditioned field trained on a category; see docs/single_view.md)",
    )
    multi_view = fit_parser.get_default("run")

    def run(args: argparse.Namespace) -> int:
        if wants_single_view(args):
            return run_single_view_fit(args)
        return multi_view(args)

    fit_parser.set_defaults(run=run)


def wants_single_view(args: argparse.Namespace) -> bool:
    """``--task single-view``, a config with ``task: single-view``, or resuming such a run."""
    from ..single_view.config import is_single_view_config

    if args.task is not None:
        return args.task == "single-view"
    if args.config is not None:
        path = args.config if os.path.exists(args.config) else _packaged(args.config)
        return path is not None and is_single_view_config(path)
    if args.resume:
        return is_single_view_config(os.path.join(args.out, "config.yaml"))
    return False


def _packaged(name: str) -> Optional[str]:
    """The packaged config ``name`` (``dvr_plugin/configs``), or ``None`` when there is none."""
    from ..training.fit import packaged_config

    try:
        return packaged_config(name)
    except FileNotFoundError:
        return None


@clean_errors
def run_single_view_fit(args: argparse.Namespace) -> int:
    """``dvr fit --task single-view``."""
    from ..single_view.config import load_single_view_config
    from ..single_view.trainer import fit_single_view
    from .fit_commands import fit_config_source, fit_overrides

    _show_notices()
    if args.format is not None:
        raise ValueError(
            "--format does not apply to --task single-view: the data is a category in the "
            "reference DVR layout (--data ROOT)."
        )
    config_path, base = fit_config_source(args)
    if config_path is None and base is None:
        config_path = _packaged(PACKAGED_CONFIG)
    config = load_single_view_config(config_path, fit_overrides(args), base=base)
    summary = fit_single_view(config, args.out, resume=args.resume, progress=not args.quiet)
    train = summary["train"]
    lines = [
        f"outputs in {args.out}:",
        f"  {train['iterations']} iterations on {train['device']} in {train['seconds']:.0f} s "
        f"({1000 * train['seconds_per_iteration']:.0f} ms/it), supervision "
        f"{summary['supervision']}",
    ]
    validation = summary.get("validation")
    if validation:
        lines.append(
            f"  validation (view {config.eval.target_view} from view {config.eval.input_view}): "
            f"mask IoU {validation['mask_iou']:.3f}, PSNR {validation['psnr']:.2f} dB"
        )
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# make-category, reconstruct, eval-category


def add_single_view_parsers(subparsers: Any) -> None:
    """Add ``make-category``, ``reconstruct`` and ``eval-category``."""
    make = subparsers.add_parser(
        "make-category",
        help="generate a category of shapes in code (chairs, tables, lamps), render them with "
        "PyTorch3D and write them in the reference DVR layout",
        description="Objects built from boxes and cylinders with random proportions and "
        "colours, rendered from N random views (images, masks, depth) and written as "
        "OUT/<class>/<object>/{image,mask,depth,cameras.npz,mesh.ply} with train/val/test "
        "split lists, for `dvr fit --task single-view`.",
    )
    add_new_folder_option(make)
    make.add_argument("--classes", default="chair,table,lamp", help="comma-separated classes")
    make.add_argument("--train", type=int, default=100, help="training objects per class")
    make.add_argument("--val", type=int, default=5, help="validation objects per class")
    make.add_argument("--test", type=int, default=17, help="test objects per class")
    make.add_argument("--views", type=int, default=24, help="views per object")
    add_image_size_option(make, default=64)
    add_supersample_option(make)
    make.add_argument("--distance", type=float, default=2.0, help="camera distance")
    make.add_argument("--fov", type=float, default=40.0, help="field of view (degrees)")
    make.add_argument("--seed", type=int, default=0, help="seed of the objects and cameras")
    make.add_argument("--workers", type=int, default=4, help="threads writing files")
    add_device_option(make)
    add_quiet_option(make)
    make.set_defaults(run=run_make_category)

    recon = subparsers.add_parser(
        "reconstruct",
        help="reconstruct the object in one image with a single-view checkpoint: mesh and "
        "renders from new viewpoints",
        description="Encodes IMAGE (the training image size; RGBA is composited over the "
        "training background), extracts the conditioned field's surface (mesh.ply) and "
        "renders an orbit (turntable.gif, renders.png).",
    )
    recon.add_argument("image", help="input image (PNG / JPG)")
    recon.add_argument("--checkpoint", required=True, help="a single-view checkpoint")
    add_output_folder_option(recon)
    recon.add_argument("--resolution", type=int, default=128, help="MISE resolution")
    add_orbit_frames_option(recon, default=24)
    recon.add_argument("--size", type=int, default=128, help="render size (pixels per side)")
    add_marching_steps_option(recon)
    recon.add_argument("--resize", action="store_true", help="resize an image of another size")
    add_device_option(recon)
    recon.add_argument(
        "--force", action="store_true", help="overwrite the outputs of an earlier reconstruction"
    )
    recon.set_defaults(run=run_reconstruct)

    evaluate = subparsers.add_parser(
        "eval-category",
        help="score a single-view checkpoint on held-out objects (Chamfer-L1, normal "
        "consistency, F@1%%) against retrieval baselines",
        description="Per class and class mean, DVR vs retrieval of the training shape with the "
        "nearest encoder code (and the oracle: the nearest true shape). Writes results.md, "
        "results.json, figure.png.",
    )
    evaluate.add_argument("checkpoint", help="a single-view checkpoint")
    add_report_folder_option(evaluate)
    evaluate.add_argument("--data", default=None, help="category root (default: the config's)")
    evaluate.add_argument("--split", default=None, help="split (default: data.test_split)")
    evaluate.add_argument("--resolution", type=int, default=None, help="MISE resolution")
    evaluate.add_argument("--points", type=int, default=None, help="samples per shape")
    evaluate.add_argument("--max-objects", type=int, default=None, help="objects per class")
    evaluate.add_argument("--no-oracle", action="store_true", help="skip the oracle retrieval")
    evaluate.add_argument("--save-meshes", action="store_true", help="keep the meshes")
    add_device_option(evaluate)
    add_quiet_option(evaluate)
    evaluate.set_defaults(run=run_eval_category)


@clean_errors
def run_make_category(args: argparse.Namespace) -> int:
    """``dvr make-category``."""
    from ..single_view.category import CategorySettings, make_category

    settings = CategorySettings(
        classes=[c.strip() for c in args.classes.split(",") if c.strip()],
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        n_views=args.views,
        image_size=args.image_size,
        supersample=args.supersample,
        camera_distance=args.distance,
        fov=args.fov,
        seed=args.seed,
    )
    summary = make_category(
        args.out,
        settings,
        device=_device(args.device),
        workers=args.workers,
        progress=not args.quiet,
    )
    print(
        f"wrote {summary['objects']} objects ({summary['splits']}) with {settings.n_views} views "
        f"of {settings.image_size}x{settings.image_size} to {args.out} in "
        f"{summary['seconds']:.1f} s"
    )
    if summary["masks_touching_border"]:
        print(
            f"note: {len(summary['masks_touching_border'])} object(s) touch the image border; "
            "use a larger --distance to keep objects whole."
        )
    return 0


RECONSTRUCT_OUTPUTS = ("mesh.ply", "turntable.gif", "renders.png", "reconstruction.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FILE_SUFFIXES = (".ply", ".obj", ".off", ".stl", ".glb", ".gltf", ".gif", ".json") + IMAGE_SUFFIXES


@clean_errors
def run_reconstruct(args: argparse.Namespace) -> int:
    """``dvr reconstruct``: every argument is checked before the checkpoint is loaded."""
    from ..single_view.reconstruct import reconstruct_image

    device = check_reconstruct_arguments(args)
    summary = reconstruct_image(
        args.image,
        args.checkpoint,
        args.out,
        device=device,
        resolution=args.resolution,
        n_frames=args.frames,
        render_size=args.size,
        n_steps=args.steps,
        resize=args.resize,
    )
    mesh = summary["mesh"] or f"no mesh (the field holds no surface: {summary['mesh_status']})"
    print(f"{args.out}: {mesh}, {summary['turntable']}, {summary['renders']}")
    if summary.get("mesh_frame"):
        print(f"mesh frame: {summary['mesh_frame']}")
    return 0 if summary["mesh"] else 1


def check_reconstruct_arguments(args: argparse.Namespace) -> str:
    """
    Check the arguments of ``dvr reconstruct`` without loading the checkpoint; return the
    device. ``ValueError`` / ``FileNotFoundError`` name the problem: a count that is not
    positive (``--steps`` >= 2; ``--resolution`` below 32 or 32 times a power of two), an input
    image that is missing or not an image, a missing checkpoint, an ``--out`` that is a file
    or names a file, whose parent folder is missing, or that holds an earlier reconstruction
    (without ``--force``), an unknown device.
    """
    from ..engine.checkpoint import checkpoint_exists
    from ..engine.config import resolve_device

    for flag, value, least in (
        ("--resolution", args.resolution, 1),
        ("--frames", args.frames, 1),
        ("--size", args.size, 1),
        ("--steps", args.steps, 2),
    ):
        if value < least:
            bound = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise ValueError(f"{flag} must be {bound}, got {value}.")
    if args.resolution > 32 and (
        args.resolution % 32 or (args.resolution // 32) & (args.resolution // 32 - 1)
    ):
        raise ValueError(
            "--resolution must be below 32 or 32 times a power of two (64, 128, 256, ...), got "
            f"{args.resolution}."
        )
    _check_input_image(args.image)
    if not checkpoint_exists(args.checkpoint):
        raise FileNotFoundError(f"No checkpoint at {args.checkpoint}.")
    _check_output_folder(args.out, force=args.force)
    try:
        return str(resolve_device(args.device))
    except RuntimeError as error:  # torch.device("nonsense")
        raise ValueError(f"Unknown device {args.device!r} ({error}).") from None


def _check_input_image(path: str) -> None:
    """A readable image file (only its header is read)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise FileNotFoundError(f"Input image not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"The input image {path} is a folder; give an image file.")
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise ValueError(
            f"The input image {path} has an unknown extension; give one of "
            f"{', '.join(IMAGE_SUFFIXES)}."
        )
    try:
        with Image.open(path):
            pass
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"Cannot read the input image {path}: {error}") from None


def _check_output_folder(out: str, *, force: bool) -> None:
    """``--out`` is a folder (new, or without an earlier reconstruction unless ``force``)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is an existing file; give a folder.")
    if not os.path.exists(out):
        if out.lower().endswith(FILE_SUFFIXES):
            raise ValueError(
                f"--out {out} names a file; give the output folder (it receives "
                f"{', '.join(RECONSTRUCT_OUTPUTS)})."
            )
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise FileNotFoundError(
                f"The folder that would hold --out {out} does not exist: {parent}"
            )
        return
    earlier = [name for name in RECONSTRUCT_OUTPUTS if os.path.exists(os.path.join(out, name))]
    if earlier and not force:
        raise ValueError(
            f"{out} already holds {', '.join(earlier)} of an earlier reconstruction; pass "
            "--force to overwrite, or choose another --out."
        )


@clean_errors
def run_eval_category(args: argparse.Namespace) -> int:
    """``dvr eval-category``."""
    from ..single_view.evaluate import evaluate_category

    evaluate_category(
        args.checkpoint,
        args.out,
        data_root=args.data,
        split=args.split,
        device=_device(args.device),
        resolution=args.resolution,
        n_points=args.points,
        max_objects_per_class=args.max_objects,
        oracle=not args.no_oracle,
        save_meshes=args.save_meshes,
        progress=not args.quiet,
    )
    with open(os.path.join(args.out, "results.md")) as handle:
        print(handle.read())
    return 0
