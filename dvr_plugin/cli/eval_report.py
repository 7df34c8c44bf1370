"""
The report of ``dvr eval``: ``metrics.json`` (the scores as they are), ``metrics.md`` (a
markdown table: the full scores, or the full and the observed-region scores side by side, the
held-out view metrics, and the frame the meshes were scored in) and ``errors.png`` (a figure
of the distances between the two surfaces).

Frames and units. The scores come from :mod:`dvr_plugin.training.mesh_evaluation`: distances in
units of the ground truth's bounding box (longest side 1). The figure draws both meshes
normalised by that box too, so its axes and colour scale are in the same units.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..io import make_dirs, open_path

# Surface samples per mesh drawn in the error figure (at most; a picture, not a metric).
FIGURE_POINTS = 10_000

# (key, name, format) of the table of the full scores.
MARKDOWN_ROWS = (
    ("chamfer_l1", "Chamfer-L1 (unit bounding box)", "{:.5f}"),
    ("chamfer_l1_x10", "Chamfer-L1 x10 (paper units)", "{:.4f}"),
    ("accuracy", "accuracy (pred -> gt)", "{:.5f}"),
    ("completeness", "completeness (gt -> pred)", "{:.5f}"),
    ("chamfer_l2", "Chamfer-L2", "{:.3e}"),
    ("normal_consistency", "normal consistency", "{:.4f}"),
    ("iou", "volumetric IoU", "{:.4f}"),
)

# (full key, observed key, name, format) of the side-by-side table; a full key "name@0" is a
# list over the thresholds, read at the threshold 0.01.
SIDE_BY_SIDE_ROWS = (
    ("chamfer_l1", "observed_chamfer_l1", "Chamfer-L1 (unit bounding box)", "{:.5f}"),
    ("accuracy", "observed_accuracy", "accuracy (pred -> gt)", "{:.5f}"),
    ("completeness", "observed_completeness", "completeness (gt -> pred)", "{:.5f}"),
    ("normal_consistency", "observed_normal_consistency", "normal consistency", "{:.4f}"),
    ("f_score@0", "observed_f_score", "F-score @ 0.01", "{:.4f}"),
    ("precision@0", "observed_precision", "precision @ 0.01", "{:.4f}"),
    ("recall@0", "observed_recall", "recall @ 0.01", "{:.4f}"),
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
            p[:, 0],
            p[:, 2],
            p[:, 1],
            c=dist.cpu().numpy(),
            s=0.5,
            cmap="magma",
            vmin=0,
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
        image,
        ax=list(axes),
        shrink=0.6,
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
