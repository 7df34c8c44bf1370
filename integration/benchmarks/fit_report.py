"""
The report of the time-to-quality benchmark (:mod:`integration.benchmarks.bench_fit`): its
header (the card, the machine, the settings), the writer of ``bench_fit_<scene>.json`` / ``.md``
/ ``.png``, the markdown tables (method x checkpoint, then one table per metric, then the notes)
and the figure (the headline PSNR and F@1% against training seconds).

The report is a plain dict: ``settings`` (checkpoints and budget in seconds of training time,
the targets, the scene's settings) and, under ``methods``, one entry per method with its rows
(``checkpoints``: one per checkpoint, with ``train_seconds``, ``step`` and the scores: PSNR in
dB, mesh distances in units of the ground truth's bounding box, longest side 1).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from integration.benchmarks.fit_scenes import SCENE_CONFIGS, Scene
from integration.compare.ngp_baseline import NerfaccStatus

# The targets of the report's "time to" columns.
TARGET_F_SCORE = 0.97
TARGET_PSNR = 33.0


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def report_header(
    scene: Scene,
    checkpoints: Sequence[float],
    quick: bool,
    status: NerfaccStatus,
    prep_seconds: float,
) -> dict[str, Any]:
    """
    The report before any method ran: the card, the machine, the nerfacc status and the
    settings (``checkpoints_s`` and ``budget_s`` in seconds of training time, the targets, the
    scene's views and rays per step, ``scene_seconds``: ``prep_seconds``, the scene's
    preparation); ``methods`` empty.
    """
    import pytorch3d

    config, device = scene.config, scene.device
    train = config.train
    data = scene.data
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {
        "benchmark": "bench_fit",
        "scene": scene.name,
        "device": card,
        "machine": {
            "device_type": device.type,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch3d": pytorch3d.__version__,
        },
        "nerfacc": status.to_dict(),
        "settings": {
            "quick": quick,
            "checkpoints_s": list(checkpoints),
            "budget_s": checkpoints[-1],
            "targets": {"f_score": TARGET_F_SCORE, "psnr_db": TARGET_PSNR},
            "headline_psnr": scene.headline_psnr,
            "geometry_metric": scene.geometry_key,
            "config": SCENE_CONFIGS[scene.name],
            "overrides": scene.overrides,
            "data_format": config.data.format,
            "data_path": config.data.path,
            "image_size": list(data.train.image_size),
            "train_views": len(data.train),
            "held_out_views": len(data.val),
            "images_per_batch": min(train.images_per_batch, len(data.train)),
            "rays_per_image": train.rays_per_image,
            "rays_per_step": min(train.images_per_batch, len(data.train)) * train.rays_per_image,
            "sampling": train.sampling,
            "dvr_render_steps": config.eval.n_steps,
            "mesh_resolution": config.eval.mesh_resolution,
            "mesh_points": config.eval.mesh_points,
            "ground_truth_mesh": scene.gt_mesh is not None,
            "scene_seconds": prep_seconds,
            "notes": scene.notes,
            "clock": "training time only: the device is synchronised after every step; "
            "evaluation runs with the clock stopped",
        },
        "methods": {},
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _json_safe(value.item())
    return str(value)


def report_writer(out_dir: Optional[str], scene: str) -> Callable[..., None]:
    """``write(report, draw=True)``: the JSON and markdown (and with ``draw`` the figure)."""
    if not out_dir:
        return lambda report, draw=True: None
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"bench_fit_{scene}")

    def write(report: dict[str, Any], draw: bool = True) -> None:
        with open(stem + ".json", "w") as handle:
            json.dump(_json_safe(report), handle, indent=2)
        with open(stem + ".md", "w") as handle:
            handle.write(markdown_report(report))
        if draw:  # the figure after each method (the tables after every checkpoint)
            figure(report, stem + ".png")

    return write


def _label(seconds: float) -> str:
    return f"{seconds:g} s"


def _cell(row: Optional[dict[str, Any]], key: str, fmt: str) -> str:
    if row is None:
        return "-"
    value = row.get(key)
    return fmt.format(value) if is_finite_number(value) else "-"


def _rows_by_checkpoint(entry: dict[str, Any]) -> dict[float, dict[str, Any]]:
    return {row["checkpoint_s"]: row for row in entry.get("checkpoints", [])}


def markdown_report(report: dict[str, Any]) -> str:
    """The report as markdown: the headline table, one table per metric, then the notes."""
    settings = report["settings"]
    checkpoints = settings["checkpoints_s"]
    headline = settings["headline_psnr"]
    geometry = settings["geometry_metric"] if settings["ground_truth_mesh"] else None
    psnr_name = "PSNR in mask" if headline == "psnr_masked" else "PSNR"
    f_name = "observed F@1%" if geometry == "observed_f_score" else "F@1%"
    lines = [
        f"# Time to quality: {report['scene']}",
        "",
        f"Device: {report['device']} (torch {report['machine']['torch']}, PyTorch3D "
        f"{report['machine']['pytorch3d']}); nerfacc: "
        + ("available" if report["nerfacc"]["available"] else "not used (see below)"),
        "",
        f"{settings['train_views']} training views ({settings['image_size'][0]}x"
        f"{settings['image_size'][1]}), {settings['held_out_views']} held out; every method "
        f"trains on {settings['rays_per_step']} rays per step ({settings['images_per_batch']} "
        f"images x {settings['rays_per_image']}, {settings['sampling']} sampling). "
        f"Clock: {settings['clock']}. Budget {settings['budget_s']:g} s per method, one method "
        "after another.",
        "",
    ]
    head = ["method", *(_label(c) for c in checkpoints), "steps (ms/step)"]
    if geometry:
        head.append(f"time to {f_name} >= {settings['targets']['f_score']:g}")
    head.append(f"time to {psnr_name} >= {settings['targets']['psnr_db']:g} dB")
    cell_name = f"{psnr_name} (dB)" + (f" / {f_name}" if geometry else "")
    sources = "the held-out views / the extracted mesh" if geometry else "the held-out views"
    lines += [f"Cells: {cell_name} of {sources}.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in report["methods"].items():
        rows = _rows_by_checkpoint(entry)
        stand_in = (entry.get("settings") or {}).get("backend") == "torch"
        cells = [f"{name} (PyTorch stand-in)" if stand_in else name]
        for checkpoint in checkpoints:
            row = rows.get(checkpoint)
            text = _cell(row, headline, "{:.2f}")
            if geometry:
                text += " / " + _cell(row, geometry, "{:.3f}")
            cells.append(text if row is not None else "-")
        if entry.get("steps"):
            cells.append(f"{entry['steps']} ({1000 * entry['seconds_per_step']:.1f})")
        else:
            cells.append("-")
        reached = entry.get("time_to", {})
        if geometry:
            cells.append(_reached(reached.get("f_score"), entry))
        cells.append(_reached(reached.get("psnr"), entry))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    metrics = [
        ("psnr", "PSNR (dB)", "{:.2f}"),
        ("psnr_masked", "PSNR inside the mask (dB)", "{:.2f}"),
        ("ssim", "SSIM", "{:.4f}"),
        ("mask_iou", "mask IoU", "{:.4f}"),
    ]
    if geometry:
        metrics += [
            ("chamfer_l1", "Chamfer-L1 (unit bounding box)", "{:.5f}"),
            ("f_score", "F@1%", "{:.4f}"),
            ("normal_consistency", "normal consistency", "{:.4f}"),
        ]
        if geometry == "observed_f_score":
            metrics += [
                ("observed_chamfer_l1", "observed Chamfer-L1", "{:.5f}"),
                ("observed_f_score", "observed F@1%", "{:.4f}"),
                ("observed_normal_consistency", "observed normal consistency", "{:.4f}"),
            ]
    for key, title, fmt in metrics:
        lines += [
            f"## {title}",
            "",
            "| method | " + " | ".join(map(_label, checkpoints)) + " |",
            "|" + "---|" * (len(checkpoints) + 1),
        ]
        for name, entry in report["methods"].items():
            rows = _rows_by_checkpoint(entry)
            lines.append(
                f"| {name} | "
                + " | ".join(_cell(rows.get(c), key, fmt) for c in checkpoints)
                + " |"
            )
        lines.append("")
    lines += ["## Notes", ""]
    for name, entry in report["methods"].items():
        text = f"- **{name}**: {entry['label']}"
        described = entry.get("settings") or {}
        if described:
            text += "; " + ", ".join(f"{k} {v}" for k, v in described.items())
        if entry.get("construct_seconds") is not None:
            text += f"; construction {entry['construct_seconds']:.1f} s (not counted)"
        if entry.get("train_peak_bytes"):
            text += f"; peak GPU memory in training {entry['train_peak_bytes'] / 2**30:.2f} GiB"
        for key in ("stopped", "skipped"):
            if entry.get(key):
                text += f"; {key}: {entry[key]}"
        if entry.get("error"):
            text += f"; **error**: `{entry['error'].splitlines()[-1][:300]}`"
        lines.append(text)
    nerfacc = report["nerfacc"]
    if nerfacc["available"]:
        lines.append(
            f"- nerfacc {nerfacc['version']} loaded (probe and JIT build "
            f"{nerfacc['seconds']:.1f} s, before any clock ran)."
        )
    else:
        lines.append(
            f"- nerfacc did not run (stage: {nerfacc['stage']}); the `nerfacc` row is "
            "the same model on the PyTorch stand-in. Where it stopped:"
        )
        lines += ["", "```", str(nerfacc["error"]).strip(), "```"]
    for note in settings["notes"]:
        lines.append(f"- {note}")
    lines.append(
        "- Meshes: DVR at its level 0; pytorch3d-volume at the occupancy its renders show "
        "(`rendered_surface_level`); nerfacc where a voxel of the extraction grid absorbs half "
        "the light (sigma = ln 2 / voxel). Scores in `dvr eval`'s convention (ground truth's "
        "bounding box, longest side 1)."
    )
    return "\n".join(lines) + "\n"


def _reached(seconds: Optional[float], entry: dict[str, Any]) -> str:
    if seconds is not None:
        return _label(seconds)
    if not entry.get("checkpoints"):
        return "-"
    return "not met"


def figure(report: dict[str, Any], path: str) -> None:
    """PSNR (and F@1% with a ground truth) against training seconds, one line per method."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    settings = report["settings"]
    panels = [
        (
            settings["headline_psnr"],
            "held-out "
            + ("PSNR inside the mask" if settings["headline_psnr"] == "psnr_masked" else "PSNR")
            + " (dB)",
            settings["targets"]["psnr_db"],
        )
    ]
    if settings["ground_truth_mesh"]:
        key = settings["geometry_metric"]
        panels.append(
            (
                key,
                ("observed " if key.startswith("observed") else "") + "F@1%",
                settings["targets"]["f_score"],
            )
        )
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for axis, (key, title, target) in zip(axes, panels, strict=True):
        for name, entry in report["methods"].items():
            points = [
                (row["train_seconds"], row[key])
                for row in entry.get("checkpoints", [])
                if is_finite_number(row.get(key))
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=name)
        axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("training seconds")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['scene']} - {report['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
