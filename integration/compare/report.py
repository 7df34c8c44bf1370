"""
The markdown report of a comparison: the settings, one table row per method, and notes.
"""

from __future__ import annotations

import math
from typing import Any

COLUMNS = (
    "method",
    "PSNR (dB)",
    "PSNR in mask (dB)",
    "SSIM",
    "mask IoU",
    "depth L1",
    "Chamfer-L1",
    "F@1%",
    "normal cons.",
    "render / view",
    "render peak mem",
    "train time",
    "train peak mem",
    "iterations",
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_number(value: Any, spec: str = ".3f") -> str:
    """A number, or ``n/a`` when it is missing or not finite."""
    return "n/a" if _missing(value) else format(value, spec)


def fmt_seconds(seconds: Any) -> str:
    """``12.3 ms`` / ``4.56 s`` / ``n/a``."""
    if _missing(seconds):
        return "n/a"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(value: Any, device_type: str = "cuda") -> str:
    """``512 MiB`` / ``1.25 GiB``; ``n/a (CPU)`` where memory is not measured (the CPU)."""
    if _missing(value):
        return "n/a (CPU)" if device_type == "cpu" else "n/a"
    return f"{value / 2**20:.0f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def _train_time(entry: dict[str, Any]) -> str:
    seconds = entry.get("train_seconds")
    if _missing(seconds):
        return "none"
    if entry.get("train_plus_meshing") and not _missing(entry.get("extraction_seconds")):
        return f"{seconds:.1f} s + {entry['extraction_seconds']:.1f} s meshing"
    per_step = entry.get("seconds_per_iteration")
    if _missing(per_step):
        return f"{seconds:.1f} s"
    return f"{seconds:.1f} s ({per_step * 1000:.0f} ms/it)"


def _iterations(entry: dict[str, Any]) -> str:
    iterations = entry.get("iterations")
    if iterations is None:
        return "n/a"
    if entry.get("stopped_early"):
        return f"{iterations} (time budget)"
    return str(iterations)


def table_row(entry: dict[str, Any], *, device_type: str = "cuda") -> list[str]:
    """The cells of one method's row (``n/a`` everywhere for an unavailable method)."""
    label = entry.get("label", "?")
    if not entry.get("available"):
        return [label] + ["n/a"] * (len(COLUMNS) - 1)
    ref = bool(entry.get("reference"))
    trained = not _missing(entry.get("train_seconds"))
    return [
        label,
        fmt_number(entry.get("psnr"), ".2f"),
        fmt_number(entry.get("psnr_masked"), ".2f"),
        fmt_number(entry.get("ssim"), ".3f"),
        fmt_number(entry.get("mask_iou"), ".3f"),
        "ref." if ref else fmt_number(entry.get("depth_l1"), ".4f"),
        "ref." if ref else fmt_number(entry.get("chamfer_l1"), ".4f"),
        "ref." if ref else fmt_number(entry.get("f_score"), ".3f"),
        "ref." if ref else fmt_number(entry.get("normal_consistency"), ".3f"),
        fmt_seconds(entry.get("render_seconds_per_view")),
        fmt_bytes(entry.get("render_peak_bytes"), device_type),
        _train_time(entry),
        fmt_bytes(entry.get("train_peak_bytes"), device_type) if trained else "none",
        _iterations(entry),
    ]


def markdown_table(results: dict[str, Any]) -> str:
    """The table of a comparison's ``results``: one row per method, in order."""
    device_type = results.get("machine", {}).get("device_type", "cuda")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * len(COLUMNS)) + "|"]
    for entry in results["methods"].values():
        lines.append("| " + " | ".join(table_row(entry, device_type=device_type)) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(results: dict[str, Any]) -> str:
    """``table.md``: a heading, the machine and settings, the table, and per-row notes."""
    machine = results["machine"]
    settings = results["settings"]
    net = settings["network"]
    height, width = settings["image_size"]
    milestones = ", ".join(f"{k}: {v}" for k, v in settings["dvr_step_milestones"].items())
    lines = [
        f"# Renderer comparison: {results['scene']}",
        "",
        f"Machine: {machine['device']}; torch {machine['torch']}, "
        f"PyTorch3D {machine['pytorch3d']}, Python {machine['python']}.",
        "",
        f"Data: {settings['data_format']}, {settings['train_views']} training and "
        f"{settings['held_out_views']} held-out views at {height}x{width}; ground-truth images "
        f"{settings['ground_truth_images']}. Network of (b) and (c): "
        f"{net['label']} ({net['parameters']:,} parameters in (b)). Both trained for up to "
        f"{settings['iterations']} iterations of {settings['images_per_batch']} images x "
        f"{settings['rays_per_image']} rays ({settings['sampling']} pixels), Adam lr "
        f"{settings['lr']:g} halved at {settings['lr_milestones']}. DVR: marching steps "
        f"{{{milestones}}} in training, {settings['dvr_render_steps']} to render. Volume: "
        f"{settings['volume_samples_per_ray']} samples per ray in training and rendering. "
        f"Meshes: MISE at {settings['mesh_resolution']}^3; 3D metrics on "
        f"{settings['mesh_points']:,} surface samples in the ground truth's unit frame.",
        "",
        markdown_table(results).rstrip(),
        "",
        "Depth L1: mean |z - z_ref| (normalised scene units) over pixels both call object, "
        "against "
        + (
            "the rasteriser's depth of the ground-truth mesh."
            if settings.get("depth_reference")
            else "nothing: there is no ground-truth depth here (n/a)."
        )
        + " Render time: one held-out view at full resolution, mean over the views after a "
        "warm-up. Peak memory: the largest allocated GPU memory during training / rendering.",
        "",
    ]
    for entry in results["methods"].values():
        if entry.get("note"):
            lines.append(f"- {entry['label']}: {entry['note']}.")
    return "\n".join(lines) + "\n"
