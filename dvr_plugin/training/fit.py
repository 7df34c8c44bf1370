"""
The fitting pipeline behind ``dvr fit``, ``dvr render`` and ``dvr demo``.

:func:`fit` loads the data of a :class:`FitConfig`, trains with :class:`Trainer` and writes the
final outputs into one folder:

=====================  ==========================================================================
``checkpoint.pt``      model, optimiser, step, RNG states and config (resumable)
``config.yaml``        the resolved configuration
``train_log.csv``      losses, learning rate, marching steps, hit rate per logged step
``val_log.csv``        held-out PSNR / SSIM / mask IoU per validation
``val/step_*.png``     validation grids: ground truth | render | depth | normals
``curves.png``         training curves
``comparison.png``     the final grid on the held-out views
``turntable.gif``      an orbit around the object (colour | normals)
``mesh.ply``           the extracted surface in the data's world frame, said in its header
                       (when ``eval.mesh_resolution > 0``)
``metrics.json``       held-out metrics (final and untrained), 3D metrics, timings
=====================  ==========================================================================

Under ``torchrun`` :func:`fit` trains on every rank and rank 0 writes these files (see
``docs/distributed.md``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.config import resolve_config, resolve_device
from ..engine.evaluation import (
    comparison_grid,
    image_metrics,
    mesh_metrics,
    orbit_settings,
    render_views,
    turntable_frames,
)
from ..engine.logs import read_csv
from ..engine.run_outputs import (
    CHECKPOINT_NAME,
    COMPARISON_NAME,
    CONFIG_NAME,
    RUN_OUTPUTS,
    TRAIN_LOG_NAME,
    VAL_LOG_NAME,
    write_json,
)
from ..io import make_dirs, path_manager
from ..visualize import save_gif, save_png
from .config import FitConfig, load_config
from .data import load_fit_data, load_views
from .distributed import DistributedContext, environment_rank, process_group_from_environment
from .trainer import (
    Trainer,
    build_field,
    collapse_reason,
    headline_psnr,
    untrained_row,
)

MESH_SCORE_KEYS = (
    "chamfer_l1",
    "chamfer_l1_x10",
    "accuracy",
    "completeness",
    "normal_consistency",
    "f_score",
    "precision",
    "recall",
)


PACKAGED_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def packaged_config_names() -> list[str]:
    """The names of the configurations shipped in ``dvr_plugin/configs`` (``["cow", ...]``)."""
    return sorted(f[:-5] for f in os.listdir(PACKAGED_CONFIG_DIR) if f.endswith(".yaml"))


def packaged_config(name: str) -> str:
    """The path of a configuration shipped in ``dvr_plugin/configs`` (e.g. ``"demo"``)."""
    path = os.path.join(PACKAGED_CONFIG_DIR, name if name.endswith(".yaml") else f"{name}.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No packaged config {name!r} and no file of that name; packaged: "
            f"{', '.join(packaged_config_names())}."
        )
    return path


def fit(
    config: FitConfig,
    out_dir: str,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """
    Fit DVR to the data of ``config`` and write every output into ``out_dir``.

    Args:
        config: the configuration (device ``"auto"`` picks CUDA when available and applies
            the config's ``device_overrides``).
        out_dir: the output folder (local path or iopath URI).
        resume: continue from ``out_dir/checkpoint.pt``.
        progress: show a progress bar.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every rank calls this: it joins
    the process group for the fit (``nccl`` on CUDA, with ``cuda:LOCAL_RANK``; ``gloo`` on the
    CPU), loads the data, trains its share of every global batch, and rank 0 writes every
    output. Without that environment nothing changes.

    Returns:
        The report also written to ``metrics.json`` (with ``status``: ``"ok"`` or
        ``"collapsed"`` and ``status_reason``, and ``headline``: which PSNR leads); on ranks
        other than 0 only ``rank``, ``world_size`` and ``train`` (iterations and seconds); for
        a resume already at ``train.iterations`` (and ``metrics.json`` written)
        ``{"nothing_to_do": True, "message": str, "step": int}``, and nothing is written.

    Raises:
        ValueError: bad input, or a resume that is refused (other data, ``train.iterations``
            below the checkpoint's step); nothing is written then.
        FitInterrupted: Ctrl-C during training, after the checkpoint of the current step was
            written (:class:`dvr_plugin.engine.trainer.FitInterrupted`).
    """
    wall_start = time.perf_counter()
    config, device = resolve_config(config)
    with process_group_from_environment(device) as context:
        if context is not None:
            device = context.device_for(device)
        return _fit(
            config,
            device,
            out_dir,
            resume=resume,
            progress=progress,
            context=context,
            wall_start=wall_start,
        )


def _fit(
    config: FitConfig,
    device: torch.device,
    out_dir: str,
    *,
    resume: bool,
    progress: bool,
    context: Optional[DistributedContext],
    wall_start: float,
) -> dict[str, Any]:
    """The body of :func:`fit` (in the process group when there is one)."""
    is_main = context is None or context.is_main
    data_start = time.perf_counter()
    data = load_fit_data(config.data, background=config.background, device=device)
    data_seconds = time.perf_counter() - data_start
    if is_main:
        make_dirs(out_dir)
    trainer = Trainer(
        config=config,
        train_data=data.train,
        val_data=data.val,
        out_dir=out_dir,
        resume=resume,
        progress=progress,
    )
    summary = trainer.fit()
    if not is_main:
        return {
            "rank": context.rank,
            "world_size": context.world_size,
            "train": {"iterations": trainer.step, "seconds": trainer.train_seconds},
        }
    metrics_path = os.path.join(out_dir, "metrics.json")
    if summary["nothing_to_do"] is not None and path_manager.exists(metrics_path):
        return {"nothing_to_do": True, "message": summary["nothing_to_do"], "step": trainer.step}
    # (a finished fit whose final outputs are missing, e.g. interrupted after training: write them)
    report = finish_fit(trainer, out_dir=out_dir, gt_mesh=data.mesh, progress=progress)
    if context is not None:
        report["train"]["world_size"] = context.world_size
        report["train"]["backend"] = context.backend
    report["timing"]["data_seconds"] = data_seconds
    report["timing"]["wall_seconds"] = time.perf_counter() - wall_start
    report["stopped_early"] = summary["stopped_early"]
    write_json(os.path.join(out_dir, "metrics.json"), report)
    return report


@torch.no_grad()
def finish_fit(
    trainer: Trainer, *, out_dir: str, gt_mesh=None, progress: bool = False
) -> dict[str, Any]:
    """
    Final outputs of a fit: the held-out comparison grid, the turntable GIF, the mesh (in the
    data's world frame) and its metrics, and the report (returned; :func:`fit` writes it to
    ``metrics.json``). ``progress`` shows bars (stderr) for the held-out renders and the
    turntable.
    """
    config = trainer.config
    field = trainer.field.eval()
    device = trainer.device
    report: dict[str, Any] = {
        "data": {
            "format": config.data.format,
            "path": config.data.path,
            "train_views": len(trainer.train_data),
            "held_out_views": 0 if trainer.val_data is None else len(trainer.val_data),
            "image_size": list(trainer.train_data.image_size),
        },
        "train": {
            "iterations": trainer.step,
            "seconds": trainer.train_seconds,
            "seconds_per_iteration": trainer.train_seconds / max(trainer.step, 1),
            "device": str(device),
            "mixed_precision": trainer.amp,
            "parameters": sum(p.numel() for p in field.parameters()),
        },
        "timing": {},
    }
    start = time.perf_counter()
    val = trainer.val_data
    if val is not None:
        rendered = render_views(
            field,
            val.cameras,
            val.image_size,
            n_steps=config.eval.n_steps,
            n_secant_steps=config.train.n_secant_steps,
            background=config.background,
            batch_size=4 if device.type == "cuda" else 1,
            progress=progress,
            description="held-out views",
        )
        metrics = image_metrics(rendered, val.images, val.masks)
        report["held_out"] = metrics
        grid = comparison_grid(rendered, val.images, val.masks, max_views=len(val))
        zoom = max(1, 256 // max(val.image_size))  # small images: enlarge (nearest) to see
        grid = grid.repeat_interleave(zoom, dim=0).repeat_interleave(zoom, dim=1)
        save_png(grid, os.path.join(out_dir, COMPARISON_NAME))
        initial = _initial_validation(os.path.join(out_dir, VAL_LOG_NAME))
        if initial is not None:
            report["untrained_held_out"] = initial
        report["headline"] = headline_entry(metrics, trainer.background_modelled)
    report["data"]["background_modelled"] = trainer.background_modelled
    report.update(fit_status(report, os.path.join(out_dir, TRAIN_LOG_NAME)))
    if report["status"] != "ok":
        import warnings

        warnings.warn(
            f"The fit collapsed: {report['status_reason']}. See 'When a fit collapses' in "
            "docs/training.md.",
            RuntimeWarning,
            stacklevel=3,
        )
    report["timing"]["held_out_render_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    if config.eval.turntable_frames > 0:
        orbit = orbit_settings(trainer.train_data.cameras, config.data)
        size = config.eval.turntable_size or trainer.train_data.image_size[0]
        frames = turntable_frames(
            field,
            orbit,
            n_frames=config.eval.turntable_frames,
            image_size=size,
            n_steps=config.eval.n_steps,
            background=config.background,
            device=device,
            progress=progress,
        )
        save_gif(frames, os.path.join(out_dir, "turntable.gif"))
    report["timing"]["turntable_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    if config.eval.mesh_resolution > 0:
        try:
            scores, mesh = mesh_metrics(
                field,
                gt_mesh,
                resolution=config.eval.mesh_resolution,
                n_points=config.eval.mesh_points,
                seed=config.seed,
            )
        except ImportError as error:  # meshing or metrics not installed: skip the 3D part
            scores, mesh = {"skipped": str(error)}, None
        report["mesh"] = {k: v for k, v in scores.items() if k in MESH_SCORE_KEYS or k == "skipped"}
        if "chamfer_l1" in report["mesh"]:  # scored in the fitting frame, like the ground truth
            report["mesh"]["frame"] = (
                "normalised (prediction and ground truth in the fitting frame; distances in "
                "units of the ground truth's bounding box, longest side 1)"
            )
        if mesh is not None:
            from ..data.frame import WorldFrame
            from ..meshing import save_mesh

            frame = WorldFrame.from_views(trainer.train_data, config.data.format)
            save_mesh(
                frame.mesh_to_world(mesh),
                os.path.join(out_dir, "mesh.ply"),
                comments=frame.file_comments("world"),
            )
            report["mesh"]["file_frame"] = f"mesh.ply: {frame.describe()}"
    report["timing"]["mesh_seconds"] = time.perf_counter() - start
    names = {name for name in path_manager.ls(out_dir) if not name.startswith(".")}
    report["outputs"] = sorted(names | {"metrics.json"})
    return report


def render_checkpoint(
    checkpoint: str,
    out_dir: str,
    *,
    cameras: str = "orbit",
    n_frames: int = 36,
    image_size: Optional[int] = None,
    distance: Optional[float] = None,
    fov: Optional[float] = None,
    elevation: Optional[float] = None,
    n_steps: int = 128,
    device: str = "auto",
    fps: int = 12,
    progress: bool = False,
    names: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """
    Render a fitted checkpoint: an orbit (turntable GIF plus one PNG per frame) or the views of
    its data set (PNG per view and a comparison grid with the ground truth).

    Every argument is checked (the settings can render, the checkpoint exists, ``out_dir`` is
    not a file) before the checkpoint is loaded.

    Args:
        checkpoint: a checkpoint written by a fit.
        out_dir: where the images go.
        cameras: ``"orbit"``, ``"held-out"`` (the fit's held-out views) or ``"all"`` (every
            view of the fit's data).
        n_frames: frames of the orbit.
        image_size: pixels per side of the orbit (default: the training images' height).
        distance, fov, elevation: the orbit (default: like the training cameras).
        n_steps: marching steps per ray.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        fps: GIF frame rate.
        progress: show a progress bar (tqdm, on stderr) while rendering.
        names: the name a message gives a setting (e.g. ``{"n_frames": "--frames"}`` for a
            command line; default: the argument's name).

    Returns:
        ``{"images": [...], "gif": path or None, "grid": path or None, "seconds": float}``.

    Raises:
        ValueError: a bad setting (frames, pixels, steps or frame rate that are not positive
            integers, steps >= 2; a camera distance that is not positive; a field of view
            outside (0, 180) degrees; a non-finite elevation), an output path that is a file, an
            unknown device.
        FileNotFoundError: no checkpoint at ``checkpoint``.
    """
    from ..engine.checkpoint import checkpoint_exists

    _check_render_settings(
        cameras=cameras,
        n_frames=n_frames,
        image_size=image_size,
        distance=distance,
        fov=fov,
        elevation=elevation,
        n_steps=n_steps,
        fps=fps,
        names=names or {},
    )
    if not checkpoint_exists(str(checkpoint)):
        raise FileNotFoundError(f"No checkpoint at {checkpoint}.")
    if path_manager.exists(str(out_dir)) and not path_manager.isdir(str(out_dir)):
        raise ValueError(f"The output folder {out_dir} is an existing file.")
    start = time.perf_counter()
    try:
        device_t = resolve_device(device)
    except RuntimeError as error:  # torch.device("nonsense")
        raise ValueError(f"Unknown device {device!r} ({error}).") from None
    state = load_checkpoint(checkpoint, map_location=device_t)
    config = load_config(base=state["config"])
    field = build_field(config).to(device_t)
    field.load_state_dict(state["model"])
    field.eval()
    make_dirs(out_dir)
    background = config.background
    written: list[str] = []
    result: dict[str, Any] = {"gif": None, "grid": None}
    if cameras == "orbit":
        orbit = dict(state.get("orbit") or {})
        orbit.setdefault("distance", 2.0)
        orbit.setdefault("fov", 40.0)
        orbit.setdefault("elevation", 30.0)
        for key, value in (("distance", distance), ("fov", fov), ("elevation", elevation)):
            if value is not None:
                orbit[key] = float(value)
        size = image_size or int((state.get("image_size") or [128])[0])
        frames = turntable_frames(
            field,
            orbit,
            n_frames=n_frames,
            image_size=size,
            n_steps=n_steps,
            background=background,
            device=device_t,
            with_normals=False,
            progress=progress,
        )
        for i, frame in enumerate(frames):
            path = os.path.join(out_dir, f"frame_{i:03d}.png")
            save_png(frame, path)
            written.append(path)
        result["gif"] = os.path.join(out_dir, "turntable.gif")
        save_gif(frames, result["gif"], fps=fps)
    else:
        if cameras == "held-out":
            views = load_fit_data(config.data, background=background, device=device_t).val
        else:
            views = load_views(config.data, background=background)[0].to(device_t)
        rendered = render_views(
            field,
            views.cameras,
            views.image_size,
            n_steps=n_steps,
            background=background,
            batch_size=4 if device_t.type == "cuda" else 1,
            progress=progress,
            description=f"{cameras} views",
        )
        for i, name in enumerate(views.names):
            path = os.path.join(out_dir, f"{name}.png")
            save_png(rendered.images[i].clamp(0, 1), path)
            written.append(path)
        result["grid"] = os.path.join(out_dir, COMPARISON_NAME)
        save_png(
            comparison_grid(rendered, views.images, views.masks, max_views=len(views)),
            result["grid"],
        )
        result["metrics"] = {
            k: v
            for k, v in image_metrics(rendered, views.images, views.masks).items()
            if k != "per_view"
        }
    result["images"] = written
    result["seconds"] = time.perf_counter() - start
    return result


RENDER_CAMERAS = ("orbit", "held-out", "all")


def _check_render_settings(
    *,
    cameras: str,
    n_frames: int,
    image_size: Optional[int],
    distance: Optional[float],
    fov: Optional[float],
    elevation: Optional[float],
    n_steps: int,
    fps: int,
    names: Mapping[str, str],
) -> None:
    """Raise ``ValueError`` for a setting of :func:`render_checkpoint` that cannot render."""

    def label(key: str) -> str:
        return names.get(key, key)

    if cameras not in RENDER_CAMERAS:
        raise ValueError(
            f"{label('cameras')} must be one of {', '.join(RENDER_CAMERAS)}, got {cameras!r}."
        )
    for key, value, least in (
        ("n_frames", n_frames, 1),
        ("image_size", image_size, 1),
        ("n_steps", n_steps, 2),
        ("fps", fps, 1),
    ):
        if value is None and key == "image_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            bound = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise ValueError(f"{label(key)} must be {bound}, got {value!r}.")
    for key, value in (("distance", distance), ("fov", fov), ("elevation", elevation)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{label(key)} must be a finite number, got {value!r}.")
    if distance is not None and distance <= 0:
        raise ValueError(
            f"{label('distance')} must be positive (the cameras' distance from the centre), "
            f"got {distance!r}."
        )
    if fov is not None and not 0 < fov < 180:
        raise ValueError(f"{label('fov')} must be between 0 and 180 degrees, got {fov!r}.")


def run_fit_demo(
    out_dir: str = "outputs/demo",
    device: str = "auto",
    *,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """
    The ``dvr demo``: build a textured scene in code (no downloads), render it from 32 views
    (48 on CUDA) with PyTorch3D's ``MeshRenderer``, fit DVR on 7/8 of them and write the
    checkpoint, the held-out comparison grid, a turntable GIF, the mesh and ``metrics.json``
    (held-out mask IoU and PSNR, untrained baseline, Chamfer-L1) into ``out_dir``.

    Settings come from the packaged ``configs/demo.yaml``: 64x64 images and a small network
    on a CPU, bounded by a training time budget so the whole demo ends within 10 minutes on two
    cores; larger settings on CUDA. Outputs of an earlier demo in ``out_dir`` are replaced.

    Args:
        out_dir: the output folder.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        overrides: extra ``key=value`` config overrides.
        progress: show a progress bar.

    Returns:
        The report written to ``metrics.json``.
    """
    config = load_config(packaged_config("demo"), [f"device={device}", *overrides])
    if environment_rank() == 0:  # under torchrun rank 0 alone touches the folder
        _clear_previous_demo(out_dir)
    return fit(config, out_dir, progress=progress)


# ---------------------------------------------------------------------------------------------


# Logged training steps whose hit rate decides "no ray hits the object any more" at the end.
FINAL_HIT_ROWS = 5


def fit_status(report: Mapping[str, Any], train_csv: str) -> dict[str, Any]:
    """
    ``{"status": "ok" | "collapsed", "status_reason": None | str}`` of a finished fit: collapsed
    when the held-out mask IoU fell below :data:`.trainer.MASK_IOU_FLOOR` or below the untrained
    model's, or no sampled training ray hit a surface in the last :data:`FINAL_HIT_ROWS`
    logged steps (:func:`.trainer.collapse_reason`).
    """
    hit_rates = read_csv(train_csv).get("hit_rate", [])[-FINAL_HIT_ROWS:]
    reason = collapse_reason(
        report.get("held_out"), report.get("untrained_held_out"), hit_rates=hit_rates
    )
    return {"status": "ok" if reason is None else "collapsed", "status_reason": reason}


def headline_entry(metrics: Mapping[str, Any], background_modelled: bool) -> dict[str, Any]:
    """
    The ``headline`` of ``metrics.json``: which PSNR leads the reports (``psnr`` for the whole
    image when the background is modelled, else ``psnr_masked``, inside the true mask), its
    value and why.
    """
    key, words = headline_psnr(background_modelled)
    return {"psnr": key, "value": metrics.get(key), "why": words}


def _initial_validation(val_csv: str) -> Optional[dict[str, float]]:
    """The step-0 row of the validation log (the untrained model), if there is one."""
    return untrained_row(val_csv)


DEMO_OUTPUTS = (*RUN_OUTPUTS, "turntable.gif", "mesh.ply", "metrics.json")


def _clear_previous_demo(out_dir: str) -> None:
    """Remove the files of an earlier demo run in ``out_dir`` (and nothing else)."""
    if not os.path.isdir(out_dir):
        return
    config_path = os.path.join(out_dir, CONFIG_NAME)
    if os.path.exists(os.path.join(out_dir, CHECKPOINT_NAME)):
        try:
            previous = load_config(config_path)
        except Exception as error:  # unreadable: not ours to delete
            raise ValueError(
                f"{out_dir} holds a checkpoint that is not from an earlier demo; choose another "
                f"output folder ({error})."
            ) from error
        if previous.data.format != "demo":
            raise ValueError(
                f"{out_dir} holds a checkpoint of another fit (data.format="
                f"{previous.data.format}); choose another output folder."
            )
    for name in DEMO_OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    val_dir = os.path.join(out_dir, "val")
    if os.path.isdir(val_dir):
        for name in os.listdir(val_dir):
            if name.startswith("step_") and name.endswith(".png"):
                os.remove(os.path.join(val_dir, name))
