"""
``dvr mesh`` and ``dvr eval``: a fitted field to a mesh file, and a mesh (or a checkpoint) scored
against a ground-truth mesh with the Occupancy Networks / DVR protocol, written as a JSON report,
a markdown table and a figure.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import torch

from .io import make_dirs, open_path


def field_from_checkpoint(path: str, *, device: str = "cpu") -> Tuple[torch.nn.Module, Dict]:
    """
    Rebuild the fitted field of a ``dvr fit`` checkpoint.

    Returns:
        the field (in ``eval()`` mode, on ``device``) and the checkpoint's config dict.
    """
    from .training.checkpoint import load_checkpoint
    from .training.config import FitConfig
    from .training.trainer import build_field

    state = load_checkpoint(path, map_location="cpu")
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a dvr fit checkpoint (no 'model' / 'config' entries).")
    config = FitConfig.from_dict(state["config"])
    field = build_field(config)
    field.load_state_dict(state["model"])
    return field.to(device).eval(), state["config"]


def mesh_from_checkpoint(
    checkpoint: str,
    *,
    resolution: int = 256,
    start_resolution: int = 32,
    refine_steps: int = 0,
    device: str = "cpu",
):
    """Extract the mesh of a checkpoint's field: returns ``(MeshExtraction, config dict)``."""
    from .meshing import extract_mesh

    field, config = field_from_checkpoint(checkpoint, device=device)
    extraction = extract_mesh(
        field,
        resolution=resolution,
        start_resolution=min(start_resolution, resolution),
        refine_steps=refine_steps,
        device=device,
    )
    return extraction, config


def load_ground_truth(path: str, *, longest_side: Optional[float], device: str = "cpu"):
    """
    Load a ground-truth mesh (.obj / .ply); with ``longest_side``, move it into the normalised
    frame that ``dvr fit --format mesh`` trains in (centred, longest side = ``longest_side``).
    """
    if not os.path.exists(path) and "://" not in path:
        raise ValueError(f"Ground-truth mesh {path} does not exist.")
    if path.lower().endswith(".obj"):
        from .data.synthetic import load_mesh
    else:
        from .meshing import load_mesh
    mesh = load_mesh(path, device=device)
    if longest_side is not None:
        from .data.synthetic import normalize_mesh

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
    from .metrics import evaluate_meshes

    if pred.device != gt.device:
        raise ValueError(
            f"The predicted mesh is on {pred.device} and the ground truth on {gt.device}."
        )
    check = n_iou_points > 0
    if check:
        from .metrics import is_watertight

        if not bool(is_watertight(gt).all()):
            raise ValueError(
                "The ground-truth mesh is not watertight, so IoU is undefined; "
                "pass --no-iou (n_iou_points=0) to score the surface metrics only."
            )
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
    """The report as a two-column markdown table."""
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
            lines.append(f"| {name} | {held_out[key]:.4f} |")
    return "\n".join(lines) + "\n"


def error_figure(pred, gt, path: str, *, n_points: int = 20000, seed: int = 0) -> None:
    """
    Two views of the predicted surface samples coloured by their distance to the ground truth
    (accuracy) and of the true samples coloured by their distance to the prediction
    (completeness), in the ground truth's unit-bounding-box frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch3d.ops import knn_points, sample_points_from_meshes

    from .metrics import normalize_meshes

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    pred_n, gt_n = normalize_meshes(pred, gt, mode="gt")
    pred_points = sample_points_from_meshes(pred_n, n_points)
    gt_points = sample_points_from_meshes(gt_n, n_points)
    torch.random.set_rng_state(generator_state)
    to_gt = knn_points(pred_points, gt_points).dists[0, :, 0].sqrt()
    to_pred = knn_points(gt_points, pred_points).dists[0, :, 0].sqrt()
    figure, axes = plt.subplots(1, 2, figsize=(10, 5), subplot_kw={"projection": "3d"})
    limit = max(float(to_gt.quantile(0.99)), float(to_pred.quantile(0.99)), 1e-6)
    for axis, points, dist, title in (
        (axes[0], pred_points[0], to_gt, "prediction: distance to ground truth"),
        (axes[1], gt_points[0], to_pred, "ground truth: distance to prediction"),
    ):
        p = points.cpu().numpy()
        image = axis.scatter(
            p[:, 0], p[:, 2], p[:, 1], c=dist.cpu().numpy(), s=0.5, cmap="magma", vmin=0,
            vmax=limit,
        )
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("x")
        axis.set_ylabel("z")
        axis.set_zlabel("y")
    figure.colorbar(image, ax=list(axes), shrink=0.6, label="distance (unit bounding box)")
    with open_path(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def write_report(report: Dict[str, Any], out_dir: str, *, pred=None, gt=None) -> Dict[str, str]:
    """Write ``metrics.json``, ``metrics.md`` and (given meshes) ``errors.png`` into ``out_dir``."""
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
        error_figure(pred, gt, paths["figure"])
    return paths


def evaluate_held_out_views(
    checkpoint: str, *, device: str = "cpu", n_steps: int = 128, figure_path: Optional[str] = None
) -> Dict[str, Any]:
    """
    Re-render the held-out views of a ``dvr fit`` checkpoint (its config names the data) and
    score them: PSNR (whole image and inside the mask), SSIM, mask IoU and, when the data has
    depth, the mean absolute z-depth error on pixels both hit. With ``figure_path``, writes a
    grid (rows: truth, render, |error|) of up to four views.
    """
    from .metrics import depth_error
    from .training.config import FitConfig
    from .training.data import load_fit_data
    from .training.evaluation import image_metrics, render_views
    from .visualize import image_grid, save_png

    field, config_dict = field_from_checkpoint(checkpoint, device=device)
    config = FitConfig.from_dict(config_dict)
    data = load_fit_data(config.data, background=list(config.background), device=device)
    views = data.val
    if views is None or len(views) == 0:
        raise ValueError(f"The data of {checkpoint} has no held-out views.")
    rendered = render_views(
        field, views.cameras, views.image_size, n_steps=n_steps, background=config.background
    )
    metrics = image_metrics(rendered, views.images, views.masks)
    if views.depths is not None:
        gt_depth = views.depths.detach().cpu().float()
        errors = depth_error(
            rendered.depths, gt_depth, pred_mask=rendered.masks > 0.5, gt_mask=gt_depth > 0
        )
        metrics["depth_error"] = float(errors[torch.isfinite(errors)].mean())
    metrics["views"] = len(views)
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
