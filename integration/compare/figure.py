"""
The comparison figure: rows = methods (after a ground-truth row), columns = held-out views,
each as colour | z-depth | normals | colour error.

Depth uses one colour scale per view for every row (the reference depth's range when there is
one, else the range of all methods' depths), near = bright; normals are world-space unit
normals shown as ``(n + 1) / 2``; the error is the per-pixel mean absolute RGB difference from
the ground-truth image, from 0 (black) to 0.5 or more (bright).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Optional

import torch

from dvr_plugin.engine.evaluation import RenderedViews
from dvr_plugin.visualize import colorize_depth, colorize_normals

PANELS = ("colour", "depth", "normals", "|error|")
ERROR_RANGE = 0.5


def error_map(pred: torch.Tensor, target: torch.Tensor, *, cmap: str = "inferno") -> torch.Tensor:
    """`(H, W, 3)` colours of the mean absolute RGB error of `(H, W, 3)` images (0 .. 0.5)."""
    import matplotlib

    error = (pred.float().clamp(0, 1) - target.float()).abs().mean(dim=-1)
    scaled = (error / ERROR_RANGE).clamp(0, 1).numpy()
    return torch.from_numpy(matplotlib.colormaps[cmap](scaled)[..., :3]).float()


def _depth_range(
    view: int,
    rows: Sequence[tuple[str, Optional[RenderedViews], Optional[str]]],
    reference_depths: Optional[torch.Tensor],
) -> tuple[Optional[float], Optional[float]]:
    if reference_depths is not None:
        depth = reference_depths[view]
        values = depth[depth > 0]
    else:
        parts = [
            r.depths[view][(r.masks[view] > 0.5) & (r.depths[view] > 0)]
            for _, r, _ in rows
            if r is not None
        ]
        values = torch.cat(parts) if parts else torch.zeros(0)
    if values.numel() == 0:
        return None, None
    if reference_depths is None:
        low, high = torch.quantile(values.float(), torch.tensor([0.01, 0.99])).tolist()
        return low, high
    return float(values.min()), float(values.max())


def comparison_figure(
    rows: Sequence[tuple[str, Optional[RenderedViews], Optional[str]]],
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    views: Sequence[int],
    view_names: Optional[Sequence[str]] = None,
    reference_depths: Optional[torch.Tensor] = None,
    title: str = "",
    path: str,
) -> None:
    """
    Draw and save the figure.

    Args:
        rows: ``(label, renders or None, note)`` per method; a method without renders gets an
            empty row showing its note.
        images: `(N, H, W, 3)` ground-truth images of the held-out views.
        masks: `(N, H, W)` their object masks.
        views: the view indices shown.
        view_names: names of those views (column titles).
        reference_depths: `(N, H, W)` depth reference (fixes the depth colour scale), or None.
        title: figure title.
        path: the PNG written.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    if not views:
        raise ValueError("comparison_figure needs at least one view.")
    height, width = images.shape[1:3]
    n_rows, n_cols = len(rows) + 1, len(PANELS) * len(views)
    panel = 1.5
    dpi = max(100, int(round(max(height, width) / panel)))
    fig = Figure(figsize=(n_cols * panel + 1.2, n_rows * panel + 0.6))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    blank = torch.ones(height, width, 3)
    names = list(view_names) if view_names is not None else [str(v) for v in views]

    for j, view in enumerate(views):
        near, far = _depth_range(view, rows, reference_depths)
        truth = images[view].float()
        cells = [truth, blank, blank, masks[view].float()[..., None].expand(-1, -1, 3)]
        for k, image in enumerate(cells):
            axes[0][j * len(PANELS) + k].imshow(image.clamp(0, 1).numpy())
        mask_axis = axes[0][(j + 1) * len(PANELS) - 1]
        mask_axis.text(
            0.03, 0.97, "true mask", transform=mask_axis.transAxes, fontsize=6, va="top",
            color="tab:red",
        )
        for i, (_, rendered, note) in enumerate(rows, start=1):
            columns = axes[i][j * len(PANELS) : (j + 1) * len(PANELS)]
            if rendered is None:
                for ax in columns:
                    ax.imshow(blank.numpy())
                columns[0].text(
                    0.5, 0.5, textwrap.fill(note or "n/a", 22), transform=columns[0].transAxes,
                    fontsize=5, ha="center", va="center", wrap=True,
                )
                continue
            alpha = rendered.masks[view] > 0.5
            cells = [
                rendered.images[view].clamp(0, 1),
                colorize_depth(
                    torch.where(alpha, rendered.depths[view], torch.zeros(())),
                    alpha & (rendered.depths[view] > 0),
                    near=near,
                    far=far,
                ),
                colorize_normals(rendered.normals[view], alpha),
                error_map(rendered.images[view], truth),
            ]
            for ax, image in zip(columns, cells, strict=True):
                ax.imshow(image.numpy())
        for k, name in enumerate(PANELS):
            heading = f"{names[j]}\n{name}" if k == 0 else name
            axes[0][j * len(PANELS) + k].set_title(heading, fontsize=7)

    labels = ["ground truth (held out)"] + [label for label, _, _ in rows]
    for i, ax_row in enumerate(axes):
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        ax_row[0].set_ylabel(textwrap.fill(labels[i], 18), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.995, top=0.9, bottom=0.01, wspace=0.03, hspace=0.05)
    fig.savefig(path, dpi=dpi)
