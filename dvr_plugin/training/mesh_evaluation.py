"""
Scoring a fit against its ground truth, as ``dvr eval`` does: a predicted mesh (a mesh file or a
checkpoint's surface) against a ground-truth mesh with the Occupancy Networks / DVR protocol
(and DTU-style over the observed region only), and a checkpoint's renders of its held-out views
against the held-out images.

Frames. The prediction and the ground truth are put in one frame before scoring
(:func:`prepare_evaluation_meshes`): the data's world frame (a checkpoint's surface is moved
there with the frame it records, :mod:`dvr_plugin.training.export`), or the normalised frame
when ``gt_longest_side`` moves the ground truth there. Scoring stops when the two bounding boxes
do not line up (:func:`check_bounding_boxes`). The scores are in units of the ground truth's
bounding box (longest side 1), as the protocol prescribes; the held-out depth error is in the
units of the fitting frame.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..data.frame import WorldFrame, check_frame_name, frame_from_comments
from ..data.synthetic import load_mesh as load_textured_mesh
from ..data.synthetic import normalize_mesh
from ..engine.evaluation import image_metrics, render_views
from ..meshing import load_mesh, read_mesh_comments
from ..metrics import depth_error, evaluate_meshes, evaluate_observed, is_watertight
from ..visualize import image_grid, save_png
from .config import FitConfig
from .data import load_fit_data
from .export import (
    FittedCheckpoint,
    field_from_checkpoint,
    load_fitted_checkpoint,
    mesh_from_checkpoint,
)

# The largest ratio of the longest bounding-box sides of prediction and ground truth accepted.
MAX_BOX_RATIO = 2.0


def load_ground_truth(path: str, *, longest_side: Optional[float], device: str = "cpu"):
    """
    Load a ground-truth mesh (.obj / .ply); with ``longest_side``, move it into the normalised
    frame that ``dvr fit --format mesh`` trains in (centred, longest side = ``longest_side``).
    """
    if not os.path.exists(path) and "://" not in path:
        raise ValueError(f"Ground-truth mesh {path} does not exist.")
    load = load_textured_mesh if path.lower().endswith(".obj") else load_mesh
    mesh = load(path, device=device)
    if longest_side is not None:
        mesh, _ = normalize_mesh(mesh, longest_side=longest_side)
    return mesh


def evaluate_mesh_against(
    pred,
    gt,
    *,
    n_points: int = 100_000,
    n_iou_points: int = 100_000,
    seed: int = 0,
) -> Dict[str, Any]:
    """Score one predicted ``Meshes`` against one ground-truth ``Meshes``: a flat dict of floats."""
    if pred.device != gt.device:
        raise ValueError(
            f"The predicted mesh is on {pred.device} and the ground truth on {gt.device}."
        )
    if n_iou_points > 0:
        _check_watertight_ground_truth(gt)
    scores = evaluate_meshes(pred, gt, n_points=n_points, n_iou_points=n_iou_points, seed=seed)
    report: Dict[str, Any] = {}
    for key, value in scores.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key in ("precision", "recall", "f_score", "thresholds"):
            report[key] = [float(v) for v in value.reshape(-1)]
        elif value.numel() == 1:
            report[key] = float(value) if value.is_floating_point() else bool(value)
    return report


def stated_frame(path: str) -> Tuple[Optional[str], Optional[WorldFrame]]:
    """
    The frame a mesh file's header states (written by ``dvr mesh`` / ``dvr fit``):
    ``(frame, data_frame)`` as in :func:`dvr_plugin.data.frame.frame_from_comments`,
    ``(None, None)`` when it states none.
    """
    try:
        return frame_from_comments(read_mesh_comments(path))
    except (OSError, ValueError):
        return None, None


def bounding_box(mesh) -> Tuple[torch.Tensor, torch.Tensor]:
    """`(3,)` float64 minimum and maximum corners of the vertices of a ``Meshes``."""
    verts = mesh.verts_packed().detach().double().cpu()
    return verts.min(dim=0).values, verts.max(dim=0).values


def _box_text(lower: torch.Tensor, upper: torch.Tensor) -> str:
    def corner(values: torch.Tensor) -> str:
        return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"

    return f"min {corner(lower)} max {corner(upper)}"


def check_bounding_boxes(
    pred, gt, *, frame: str = "world", max_ratio: float = MAX_BOX_RATIO
) -> None:
    """
    Stop before scoring two meshes that cannot be in one frame: a ``ValueError`` naming both
    bounding boxes when their longest sides differ by more than ``max_ratio`` or when they do
    not overlap (a prediction in the normalised frame scored against a world-frame ground
    truth, a ground truth of other data, ...). An empty prediction passes (it is scored with
    the protocol's worst-case values).
    """
    if pred.verts_packed().shape[0] == 0 or pred.faces_packed().shape[0] == 0:
        return
    pred_lo, pred_hi = bounding_box(pred)
    gt_lo, gt_hi = bounding_box(gt)
    pred_side = float((pred_hi - pred_lo).max())
    gt_side = float((gt_hi - gt_lo).max())
    problems = []
    ratio = max(pred_side, gt_side) / max(min(pred_side, gt_side), 1e-300)
    if ratio > max_ratio:
        problems.append(f"sizes differ {ratio:.3g}x")
    if bool((pred_lo > gt_hi).any()) or bool((gt_lo > pred_hi).any()):
        problems.append("the boxes do not overlap")
    if problems:
        raise ValueError(
            f"The prediction and the ground truth do not line up in the {frame} frame "
            f"({'; '.join(problems)}): prediction box {_box_text(pred_lo, pred_hi)}, ground "
            f"truth box {_box_text(gt_lo, gt_hi)}. Check --pred-frame / --gt-longest-side and "
            "that the ground truth belongs to this data."
        )


@dataclass
class EvaluationMeshes:
    """
    A prediction and a ground truth in one frame, ready to be scored.

    Members:
        pred: ``Meshes`` of one (empty when the field has no surface).
        gt: ``Meshes`` of one.
        frame: ``"world"`` (the data's frame) or ``"normalised"`` (with ``--gt-longest-side``).
        data_frame: the data's frame when known (from the checkpoint or the prediction's file).
        fitted: the checkpoint that was read (the prediction, or ``checkpoint=``), else ``None``.
        notes: how each mesh got into ``frame`` (``"prediction"``, ``"ground_truth"``).
    """

    pred: Any
    gt: Any
    frame: str
    data_frame: Optional[WorldFrame]
    fitted: Optional[FittedCheckpoint]
    notes: Dict[str, str] = field(default_factory=dict)

    def describe(self) -> Dict[str, str]:
        """The frame record of the report (``metrics.json["frame"]``)."""
        out = {"evaluation": self.frame}
        if self.data_frame is not None:
            out["data"] = self.data_frame.describe()
        out.update(self.notes)
        out["scores"] = "distances in units of the ground truth's bounding box (longest side 1)"
        return out


def prepare_evaluation_meshes(
    prediction: str,
    gt: str,
    *,
    pred_frame: Optional[str] = None,
    checkpoint: Optional[str] = None,
    gt_longest_side: Optional[float] = None,
    resolution: int = 256,
    device: str = "cpu",
    max_box_ratio: float = MAX_BOX_RATIO,
    require_watertight: bool = False,
) -> EvaluationMeshes:
    """
    Load a prediction and a ground truth into one frame (what ``dvr eval`` scores).

    The frame is the data's world frame; with ``gt_longest_side`` the ground truth is centred and
    scaled to that longest side (the fitting frame of ``dvr fit --format mesh``) and the frame is
    the normalised one.

    - A checkpoint (``.pt``) is meshed in the normalised frame and moved with its data frame.
    - A mesh file is in ``pred_frame``; by default the frame its header states (``dvr mesh``
      writes it), else ``"world"``. It is moved, when needed, with the ``to_world`` of its header
      or else of ``checkpoint``.
    - A ground-truth file is in the world frame (one whose header states the normalised frame is
      moved with the ``to_world`` there).

    With ``require_watertight`` (the IoU will be computed), a ground truth that is not
    watertight stops it before the checkpoint is meshed.

    Raises:
        ValueError: conflicting arguments, a move with no ``to_world`` known, or bounding boxes
            that disagree (:func:`check_bounding_boxes`), all before any metric is computed.
    """
    is_checkpoint = prediction.lower().endswith(".pt")
    if is_checkpoint and checkpoint is not None:
        raise ValueError(
            "The prediction is a checkpoint already; --checkpoint is for a mesh-file prediction."
        )
    if is_checkpoint and pred_frame is not None:
        raise ValueError(
            "--pred-frame is for a mesh-file prediction; a checkpoint is placed by the data "
            "frame it records."
        )
    if pred_frame is not None:
        check_frame_name(pred_frame)
    frame = "normalised" if gt_longest_side is not None else "world"
    notes: Dict[str, str] = {}
    gt_mesh = load_ground_truth(gt, longest_side=gt_longest_side, device=device)
    if require_watertight:
        _check_watertight_ground_truth(gt_mesh)
    if gt_longest_side is not None:
        notes["ground_truth"] = (
            f"centred and scaled to longest side {gt_longest_side:g} (the fitting frame of "
            "mesh-rendered data)"
        )
    else:
        gt_stated, gt_to_world = stated_frame(gt)
        if gt_stated == "normalised":
            if gt_to_world is None:
                raise ValueError(f"{gt} states the normalised frame but records no to_world.")
            gt_mesh = gt_to_world.mesh_to_world(gt_mesh)
            notes["ground_truth"] = "moved to the world frame with the to_world of its header"
        else:
            notes["ground_truth"] = "as stored (the data's world frame)"
    source = prediction if is_checkpoint else checkpoint
    fitted = load_fitted_checkpoint(source, device=device) if source is not None else None
    data_frame = None if fitted is None else fitted.data_frame
    if is_checkpoint:
        surface = mesh_from_checkpoint(
            prediction, resolution=resolution, frame=frame, device=device, fitted=fitted
        )
        pred_mesh = surface.mesh
        notes["prediction"] = (
            f"the checkpoint's surface (resolution {resolution}) in the {frame} frame"
        )
    else:
        pred_mesh = load_mesh(prediction, device=device)
        file_frame, file_to_world = stated_frame(prediction)
        if pred_frame is not None and file_frame is not None and pred_frame != file_frame:
            warnings.warn(
                f"{prediction} states the {file_frame} frame; taking it as {pred_frame} as "
                "--pred-frame says.",
                stacklevel=2,
            )
        source_frame = pred_frame or file_frame or "world"
        if file_to_world is not None:
            data_frame = file_to_world
        if source_frame != frame:
            if data_frame is None:
                raise ValueError(
                    f"The prediction is in the {source_frame} frame and the ground truth in the "
                    f"{frame} frame, and nothing gives the map between them: pass --checkpoint "
                    "CHECKPOINT (the fit the mesh comes from)."
                )
            move = data_frame.mesh_to_world if frame == "world" else data_frame.mesh_to_normalised
            pred_mesh = move(pred_mesh)
            notes["prediction"] = f"moved from the {source_frame} frame to the {frame} frame"
        else:
            notes["prediction"] = f"as stored (the {source_frame} frame)"
    pred_mesh = pred_mesh.to(device)
    check_bounding_boxes(pred_mesh, gt_mesh, frame=frame, max_ratio=max_box_ratio)
    return EvaluationMeshes(
        pred=pred_mesh, gt=gt_mesh, frame=frame, data_frame=data_frame, fitted=fitted, notes=notes
    )


def observed_region_metrics(
    meshes: EvaluationMeshes, *, n_points: int = 100_000, seed: int = 0, device: str = "cpu"
) -> Dict[str, Any]:
    """
    DTU-style observed-region scores (:func:`dvr_plugin.metrics.observed.evaluate_observed`)
    with the fit's training cameras: the meshes are moved to the normalised frame the cameras
    are in. Needs ``meshes.fitted`` (the prediction or ``--checkpoint`` is a checkpoint).

    Returns:
        the ``observed_*`` scores, ``pred_observed_fraction``, ``gt_observed_fraction``,
        ``tolerance`` and ``observed_cameras`` (the number of training cameras).
    """
    if meshes.fitted is None:
        raise ValueError(
            "--observed needs the fit's training cameras: give a checkpoint as the prediction, "
            "or --checkpoint CHECKPOINT with a mesh file."
        )
    config = FitConfig.from_dict(meshes.fitted.config)
    train = load_fit_data(config.data, background=list(config.background), device=device).train
    pred, gt = meshes.pred, meshes.gt
    if meshes.frame == "world":
        to_normalised = meshes.fitted.data_frame
        pred, gt = to_normalised.mesh_to_normalised(pred), to_normalised.mesh_to_normalised(gt)
    scores: Dict[str, Any] = dict(
        evaluate_observed(
            pred.to(device),
            gt.to(device),
            train.cameras,
            tuple(int(v) for v in train.image_size),
            n_points=n_points,
            seed=seed,
        )
    )
    scores["observed_cameras"] = len(train)
    return scores


def _check_watertight_ground_truth(gt) -> None:
    if not bool(is_watertight(gt).all()):
        raise ValueError(
            "The ground-truth mesh is not watertight, so IoU is undefined; "
            "pass --no-iou (n_iou_points=0) to score the surface metrics only."
        )


def evaluate_held_out_views(
    checkpoint: str,
    *,
    device: str = "cpu",
    n_steps: Optional[int] = None,
    n_secant_steps: Optional[int] = None,
    figure_path: Optional[str] = None,
) -> Dict[str, Any]:
    """
    Re-render the held-out views of a ``dvr fit`` checkpoint (its config names the data) and
    score them: PSNR (whole image and inside the mask), SSIM, mask IoU and, when the data has
    depth, the mean absolute z-depth error on pixels both hit. With ``figure_path``, writes a
    grid (rows: truth, render, |error|) of up to four views.

    Args:
        n_steps, n_secant_steps: marching and secant steps; by default the fit's own
            (``eval.n_steps``, ``train.n_secant_steps``), so the numbers reproduce the
            ``held_out`` entry of the fit's ``metrics.json``.

    Returns:
        the metrics, with ``views`` (their number) and ``settings`` (the steps used).
    """
    field_module, config_dict = field_from_checkpoint(checkpoint, device=device)
    config = FitConfig.from_dict(config_dict)
    settings = {
        "n_steps": int(config.eval.n_steps if n_steps is None else n_steps),
        "n_secant_steps": int(
            config.train.n_secant_steps if n_secant_steps is None else n_secant_steps
        ),
        "source": "the fit's eval.n_steps and train.n_secant_steps"
        if n_steps is None and n_secant_steps is None
        else "given",
    }
    data = load_fit_data(config.data, background=list(config.background), device=device)
    views = data.val
    if views is None or len(views) == 0:
        raise ValueError(f"The data of {checkpoint} has no held-out views.")
    rendered = render_views(
        field_module,
        views.cameras,
        views.image_size,
        n_steps=settings["n_steps"],
        n_secant_steps=settings["n_secant_steps"],
        background=config.background,
    )
    metrics = image_metrics(rendered, views.images, views.masks)
    if views.depths is not None:
        gt_depth = views.depths.detach().cpu().float()
        errors = depth_error(
            rendered.depths, gt_depth, pred_mask=rendered.masks > 0.5, gt_mask=gt_depth > 0
        )
        metrics["depth_error"] = float(errors[torch.isfinite(errors)].mean())
    metrics["views"] = len(views)
    metrics["settings"] = settings
    if figure_path is not None:
        truth = views.images.detach().cpu().float()
        shown = range(min(4, len(views)))
        error = (rendered.images - truth).abs().mean(-1, keepdim=True).expand(-1, -1, -1, 3)
        save_png(
            image_grid(
                [
                    [truth[i] for i in shown],
                    [rendered.images[i] for i in shown],
                    [(3.0 * error[i]).clamp(0, 1) for i in shown],
                ]
            ),
            figure_path,
        )
    return metrics
