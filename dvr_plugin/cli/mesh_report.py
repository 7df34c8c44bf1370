"""
``dvr mesh`` and ``dvr eval``: a fitted field to a mesh file, and a mesh (or a checkpoint) scored
against a ground-truth mesh with the Occupancy Networks / DVR protocol, written as a JSON report,
a markdown table and a figure.

Frames. A field is fitted in the normalised object frame of its data (the object inside the
unit cube); every checkpoint records the data's frame (:class:`dvr_plugin.data.frame.WorldFrame`,
``X_world = to_world @ X_normalised``). Meshes leave in the data's world frame by default and
their header says so (:meth:`WorldFrame.file_comments`). ``dvr eval`` puts the prediction and
the ground truth in one frame before scoring (the world frame, or the normalised frame when
``--gt-longest-side`` moves the ground truth there) and stops when their bounding boxes do not
line up (:func:`check_bounding_boxes`). The scores themselves are in units of the ground
truth's bounding box (longest side 1), as the protocol prescribes.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..data.frame import FORMAT_UNITS, WorldFrame, check_frame_name, frame_from_comments
from ..io import make_dirs, open_path

# The largest ratio of the longest bounding-box sides of prediction and ground truth accepted.
MAX_BOX_RATIO = 2.0

# Surface samples per mesh drawn in the error figure (at most; a picture, not a metric).
FIGURE_POINTS = 10_000

# The first MISE level of ``dvr mesh`` / ``dvr eval`` (smaller resolutions are dense grids).
START_RESOLUTION = 32


@dataclass
class FittedCheckpoint:
    """
    A ``dvr fit`` checkpoint, rebuilt.

    Members:
        field: the fitted field, in ``eval()`` mode.
        config: the checkpoint's config dict.
        data_frame: the training data's frame (stored in the checkpoint; rebuilt from the data
            for checkpoints written before frames were stored, see :func:`rebuild_data_frame`).
        path: where it was read from.
    """

    field: torch.nn.Module
    config: Dict[str, Any]
    data_frame: WorldFrame
    path: str


def load_fitted_checkpoint(path: str, *, device: str = "cpu") -> FittedCheckpoint:
    """Rebuild the field and the data frame of a ``dvr fit`` checkpoint (field on ``device``)."""
    from ..engine.checkpoint import load_checkpoint
    from ..training.config import FitConfig
    from ..training.trainer import build_field

    state = load_checkpoint(path, map_location="cpu")
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a dvr fit checkpoint (no 'model' / 'config' entries).")
    config = FitConfig.from_dict(state["config"])
    field_module = build_field(config)
    field_module.load_state_dict(state["model"])
    data_frame = WorldFrame.from_dict(state.get("data_frame"))
    if data_frame is None:
        data_frame = rebuild_data_frame(state["config"], checkpoint=str(path))
    return FittedCheckpoint(
        field=field_module.to(device).eval(),
        config=state["config"],
        data_frame=data_frame,
        path=str(path),
    )


def field_from_checkpoint(path: str, *, device: str = "cpu") -> Tuple[torch.nn.Module, Dict]:
    """
    Rebuild the fitted field of a ``dvr fit`` checkpoint.

    Returns:
        the field (in ``eval()`` mode, on ``device``) and the checkpoint's config dict.
    """
    fitted = load_fitted_checkpoint(path, device=device)
    return fitted.field, fitted.config


def rebuild_data_frame(config: Dict[str, Any], *, checkpoint: str = "the checkpoint") -> WorldFrame:
    """
    The data frame of a checkpoint written before checkpoints stored it, rebuilt from the data
    its config names: ``"demo"`` is the identity, ``"mesh"`` the normalisation of the mesh
    file (read, not rendered), the other formats load their views with the fit's loader.
    Always warns; when the data cannot be read, warns that the normalised frame stands in for
    the world frame (scores and world-frame outputs may then be wrongly placed and scaled;
    ``dvr eval`` catches the gross cases with its bounding-box check).
    """
    from ..training.config import FitConfig

    fit_config = FitConfig.from_dict(config)
    data = fit_config.data
    if data.format == "demo":  # the built-in scene is fitted in its own frame
        return WorldFrame.identity("demo")
    try:
        if data.format == "mesh":
            frame = _mesh_data_frame(data)
        else:
            from ..training.data import load_views

            views, _ = load_views(data, background=list(fit_config.background))
            frame = WorldFrame.from_views(views, data.format)
    except (OSError, ValueError) as error:
        warnings.warn(
            f"{checkpoint} records no data frame and its data ({data.format} at {data.path}) "
            f"cannot be read ({error}); the normalised frame stands in for the world frame, so "
            "world-frame meshes and scores against world-frame ground truth may be wrongly "
            "placed and scaled.",
            stacklevel=2,
        )
        return WorldFrame(torch.eye(4, dtype=torch.float64), data.format,
                          "unknown (no data frame recorded: the normalised frame)")
    warnings.warn(
        f"{checkpoint} records no data frame (written by an older version); rebuilt it from "
        f"its data ({data.format} at {data.path}): {frame.describe()}.",
        stacklevel=2,
    )
    return frame


def _mesh_data_frame(data) -> WorldFrame:
    from ..data.synthetic import load_mesh, normalize_mesh

    if data.path is None or not os.path.exists(data.path):
        raise FileNotFoundError(f"no mesh file {data.path!r}")
    args = dict(data.loader_args)
    if not args.get("normalize", True):
        return WorldFrame.identity("mesh")
    _, normalization = normalize_mesh(
        load_mesh(data.path), longest_side=float(args.get("longest_side", data.longest_side))
    )
    return WorldFrame(normalization.to_world(), "mesh", FORMAT_UNITS["mesh"])


def check_mesh_resolution(resolution: int, *, start_resolution: int = START_RESOLUTION) -> None:
    """
    ``ValueError`` unless MISE can reach ``resolution`` from ``min(start_resolution,
    resolution)`` by doublings: ``2..start_resolution`` (a dense grid) or
    ``start_resolution * 2^k``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}.")
    start = min(start_resolution, resolution)
    level = start
    while level < resolution:
        level *= 2
    if level != resolution:
        raise ValueError(
            f"resolution must be at most {start_resolution} or {start_resolution} * 2^k "
            f"({start_resolution * 2}, {start_resolution * 4}, {start_resolution * 8}, ...), "
            f"got {resolution}."
        )


@dataclass
class CheckpointMesh:
    """
    The surface of a checkpoint's field.

    Members:
        mesh: ``Meshes`` of one, in ``frame`` (empty when the field has no surface).
        frame: ``"world"`` (the data's frame) or ``"normalised"`` (the fitting frame).
        data_frame: the training data's frame.
        extraction: the extraction (its mesh and statistics in the normalised frame).
        config: the checkpoint's config dict.
    """

    mesh: Any
    frame: str
    data_frame: WorldFrame
    extraction: Any
    config: Dict[str, Any]

    @property
    def is_empty(self) -> bool:
        return self.extraction.is_empty

    def comments(self) -> List[str]:
        """The header lines stating the mesh's frame (see :meth:`WorldFrame.file_comments`)."""
        return self.data_frame.file_comments(self.frame)

    def describe(self) -> str:
        """One line naming the mesh's frame."""
        if self.frame == "world":
            return self.data_frame.describe()
        return (
            "frame: normalised (the fitting frame: the object inside the unit cube); "
            f"to_world for the {self.data_frame.format} data in the file header"
        )


def mesh_from_checkpoint(
    checkpoint: str,
    *,
    resolution: int = 256,
    start_resolution: int = START_RESOLUTION,
    refine_steps: int = 0,
    frame: str = "world",
    device: str = "cpu",
    fitted: Optional[FittedCheckpoint] = None,
) -> CheckpointMesh:
    """
    Extract the surface of a checkpoint's field (MISE + marching cubes in the normalised frame)
    and move it to ``frame``: ``"world"`` (default, the data's own frame: DTU millimetres,
    Blender units, the mesh file's units, ...) or ``"normalised"``.

    Args:
        checkpoint: a ``dvr fit`` checkpoint.
        resolution, start_resolution, refine_steps: as in
            :func:`dvr_plugin.meshing.extract_mesh`.
        frame: the frame of the returned mesh.
        device: where the field is evaluated.
        fitted: the checkpoint already loaded (else it is read from ``checkpoint``).
    """
    from ..meshing import extract_mesh

    check_frame_name(frame)
    if fitted is None:
        fitted = load_fitted_checkpoint(checkpoint, device=device)
    extraction = extract_mesh(
        fitted.field,
        resolution=resolution,
        start_resolution=min(start_resolution, resolution),
        refine_steps=refine_steps,
        device=device,
    )
    mesh = extraction.mesh
    if frame == "world":
        mesh = fitted.data_frame.mesh_to_world(mesh)
    return CheckpointMesh(
        mesh=mesh,
        frame=frame,
        data_frame=fitted.data_frame,
        extraction=extraction,
        config=fitted.config,
    )


def load_ground_truth(path: str, *, longest_side: Optional[float], device: str = "cpu"):
    """
    Load a ground-truth mesh (.obj / .ply); with ``longest_side``, move it into the normalised
    frame that ``dvr fit --format mesh`` trains in (centred, longest side = ``longest_side``).
    """
    if not os.path.exists(path) and "://" not in path:
        raise ValueError(f"Ground-truth mesh {path} does not exist.")
    if path.lower().endswith(".obj"):
        from ..data.synthetic import load_mesh
    else:
        from ..meshing import load_mesh
    mesh = load_mesh(path, device=device)
    if longest_side is not None:
        from ..data.synthetic import normalize_mesh

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
    from ..metrics import evaluate_meshes

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
    from ..meshing.io import read_mesh_comments

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
    from ..meshing import load_mesh

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
    from ..metrics.observed import evaluate_observed
    from ..training.config import FitConfig
    from ..training.data import load_fit_data

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


# (full key, observed key, name) of the side-by-side table; "@0" takes a list's first entry.
SIDE_BY_SIDE_ROWS = (
    ("chamfer_l1", "observed_chamfer_l1", "Chamfer-L1 (unit bounding box)", "{:.5f}"),
    ("accuracy", "observed_accuracy", "accuracy (pred -> gt)", "{:.5f}"),
    ("completeness", "observed_completeness", "completeness (gt -> pred)", "{:.5f}"),
    ("normal_consistency", "observed_normal_consistency", "normal consistency", "{:.4f}"),
    ("f_score@0", "observed_f_score", "F-score @ 0.01", "{:.4f}"),
    ("precision@0", "observed_precision", "precision @ 0.01", "{:.4f}"),
    ("recall@0", "observed_recall", "recall @ 0.01", "{:.4f}"),
)


def _check_watertight_ground_truth(gt) -> None:
    from ..metrics import is_watertight

    if not bool(is_watertight(gt).all()):
        raise ValueError(
            "The ground-truth mesh is not watertight, so IoU is undefined; "
            "pass --no-iou (n_iou_points=0) to score the surface metrics only."
        )


MARKDOWN_ROWS = (
    ("chamfer_l1", "Chamfer-L1 (unit bounding box)", "{:.5f}"),
    ("chamfer_l1_x10", "Chamfer-L1 x10 (paper units)", "{:.4f}"),
    ("accuracy", "accuracy (pred -> gt)", "{:.5f}"),
    ("completeness", "completeness (gt -> pred)", "{:.5f}"),
    ("chamfer_l2", "Chamfer-L2", "{:.3e}"),
    ("normal_consistency", "normal consistency", "{:.4f}"),
    ("iou", "volumetric IoU", "{:.4f}"),
)


def markdown_table(report: Dict[str, Any]) -> str:
    """
    The report as a markdown table: ``| metric | value |``, or ``| metric | full | observed |``
    side by side when the report holds observed-region scores; then the frame it was scored in.
    """
    observed = any(key.startswith("observed_") for key in report)
    if observed:
        lines = _side_by_side_rows(report)
    else:
        lines = ["| metric | value |", "|---|---|"]
        for key, name, fmt in MARKDOWN_ROWS:
            if key in report:
                lines.append(f"| {name} | {fmt.format(report[key])} |")
        for t, f in zip(report.get("thresholds", []), report.get("f_score", []), strict=False):
            lines.append(f"| F-score @ {t:g} | {f:.4f} |")
    if report.get("empty"):
        lines.append("| note | the predicted mesh is empty: worst-case values |")
    held_out = report.get("held_out", {})
    for key, name in (
        ("psnr", "held-out PSNR (dB)"),
        ("psnr_masked", "held-out PSNR inside the mask (dB)"),
        ("ssim", "held-out SSIM"),
        ("mask_iou", "held-out mask IoU"),
        ("depth_error", "held-out mean |depth error|"),
    ):
        if key in held_out:
            value = f"{held_out[key]:.4f}"
            lines.append(f"| {name} | {value} |" + (" |" if observed else ""))
    text = "\n".join(lines) + "\n"
    frame = report.get("frame")
    if isinstance(frame, dict):
        text += "\n" + "\n".join(f"- {key}: {value}" for key, value in frame.items()) + "\n"
    settings = held_out.get("settings") if isinstance(held_out, dict) else None
    if settings:
        text += (
            f"- held-out renders: n_steps={settings['n_steps']}, "
            f"n_secant_steps={settings['n_secant_steps']} ({settings['source']})\n"
        )
    return text


def _value_at_one_percent(report: Dict[str, Any], key: str) -> Optional[float]:
    values = report.get(key)
    if not isinstance(values, list):
        return values
    thresholds = report.get("thresholds", [])
    for threshold, value in zip(thresholds, values, strict=False):
        if math.isclose(threshold, 0.01, rel_tol=1e-5):
            return value
    return None


def _side_by_side_rows(report: Dict[str, Any]) -> List[str]:
    lines = ["| metric | full | observed |", "|---|---|---|"]
    for key, observed_key, name, fmt in SIDE_BY_SIDE_ROWS:
        full = _value_at_one_percent(report, key.split("@")[0])
        seen = report.get(observed_key)
        if full is None and seen is None:
            continue
        cells = [fmt.format(v) if v is not None else "-" for v in (full, seen)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    for key, name in (
        ("chamfer_l1_x10", "Chamfer-L1 x10 (paper units)"),
        ("chamfer_l2", "Chamfer-L2"),
        ("iou", "volumetric IoU"),
    ):
        if key in report:
            lines.append(f"| {name} | {report[key]:.4g} | - |")
    for key, name in (
        ("pred_observed_fraction", "share of predicted samples observed"),
        ("gt_observed_fraction", "share of ground-truth samples observed"),
    ):
        if key in report:
            lines.append(f"| {name} | 1 | {report[key]:.4f} |")
    return lines


def equal_axis_limits(
    points: torch.Tensor, *, margin: float = 0.02
) -> Tuple[float, float, float, float]:
    """
    The smallest cube holding `(N, 3)` points, widened by ``margin`` of its side on each end:
    ``(cx, cy, cz, half_side)`` (one scale on all three axes of a 3D plot).
    """
    lower = points.min(dim=0).values
    upper = points.max(dim=0).values
    centre = 0.5 * (lower + upper)
    half = 0.5 * float((upper - lower).max()) * (1.0 + 2.0 * margin)
    return float(centre[0]), float(centre[1]), float(centre[2]), max(half, 1e-6)


def error_figure(
    pred, gt, path: str, *, n_points: int = FIGURE_POINTS, seed: int = 0
) -> List[Dict[str, Tuple[float, float]]]:
    """
    Two views of the predicted surface samples coloured by their distance to the ground truth
    (accuracy) and of the true samples coloured by their distance to the prediction
    (completeness), in the ground truth's unit-bounding-box frame. Both panels share one cube
    of limits and a ``(1, 1, 1)`` box aspect, so the shapes appear at their true relative
    scale.

    Returns:
        per panel, the axis limits drawn: ``{"x": (lo, hi), "y": ..., "z": ...}`` (plot axes:
        data x, z, y).
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    from pytorch3d.ops import knn_points, sample_points_from_meshes

    from ..metrics import normalize_meshes

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    pred_n, gt_n = normalize_meshes(pred, gt, mode="gt")
    pred_points = sample_points_from_meshes(pred_n, n_points)
    gt_points = sample_points_from_meshes(gt_n, n_points)
    torch.random.set_rng_state(generator_state)
    to_gt = knn_points(pred_points, gt_points).dists[0, :, 0].sqrt()
    to_pred = knn_points(gt_points, pred_points).dists[0, :, 0].sqrt()
    cx, cy, cz, half = equal_axis_limits(torch.cat([pred_points[0], gt_points[0]]).cpu())
    figure = Figure(figsize=(10, 5))
    axes = figure.subplots(1, 2, subplot_kw={"projection": "3d"})
    limit = max(float(to_gt.quantile(0.99)), float(to_pred.quantile(0.99)), 1e-6)
    drawn = []
    for axis, points, dist, title in (
        (axes[0], pred_points[0], to_gt, "prediction: distance to ground truth"),
        (axes[1], gt_points[0], to_pred, "ground truth: distance to prediction"),
    ):
        p = points.cpu().numpy()
        image = axis.scatter(
            p[:, 0], p[:, 2], p[:, 1], c=dist.cpu().numpy(), s=0.5, cmap="magma", vmin=0,
            vmax=limit,
        )
        axis.set_xlim(cx - half, cx + half)  # plot x, y, z = data x, z, y
        axis.set_ylim(cz - half, cz + half)
        axis.set_zlim(cy - half, cy + half)
        axis.set_box_aspect((1.0, 1.0, 1.0))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("x")
        axis.set_ylabel("z")
        axis.set_zlabel("y")
        drawn.append(
            {
                "x": tuple(float(v) for v in axis.get_xlim()),
                "y": tuple(float(v) for v in axis.get_ylim()),
                "z": tuple(float(v) for v in axis.get_zlim()),
            }
        )
    figure.colorbar(
        image, ax=list(axes), shrink=0.6,
        label="distance (ground truth's bounding box, longest side 1)",
    )
    with open_path(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return drawn


def write_report(
    report: Dict[str, Any],
    out_dir: str,
    *,
    pred=None,
    gt=None,
    figure_points: int = FIGURE_POINTS,
) -> Dict[str, str]:
    """
    Write ``metrics.json``, ``metrics.md`` and (given meshes, in one frame) ``errors.png``
    (``figure_points`` samples per surface) into ``out_dir``.
    """
    make_dirs(out_dir)
    paths = {
        "json": os.path.join(out_dir, "metrics.json"),
        "markdown": os.path.join(out_dir, "metrics.md"),
    }
    with open_path(paths["json"], "w") as handle:
        json.dump(report, handle, indent=2)
    with open_path(paths["markdown"], "w") as handle:
        handle.write(markdown_table(report))
    if pred is not None and gt is not None and not report.get("empty"):
        paths["figure"] = os.path.join(out_dir, "errors.png")
        error_figure(pred, gt, paths["figure"], n_points=figure_points)
    return paths


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
    from ..engine.evaluation import image_metrics, render_views
    from ..metrics import depth_error
    from ..training.config import FitConfig
    from ..training.data import load_fit_data
    from ..visualize import image_grid, save_png

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
