"""
Training logs: CSV files (always), TensorBoard (when importable) and the final curves plot.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ..io import atomic_write, open_path, path_manager


class CsvLog:
    """
    Rows of numbers keyed by ``step``, appended to a CSV file (iopath paths accepted).

    Opening with ``resume_step`` keeps the rows of an earlier run up to that step and drops the
    later ones (they belong to iterations that will be run again after a resume), so the log of
    an interrupted and resumed run reads like that of an uninterrupted one.

    Args (keyword-only):
        path: the CSV file.
        columns: the column names; ``step`` comes first.
        resume_step: keep existing rows with ``step <= resume_step``; ``None`` starts afresh.
    """

    def __init__(
        self, *, path: str, columns: Sequence[str], resume_step: Optional[int] = None
    ) -> None:
        self.path = str(path)
        self.columns = ["step", *[c for c in columns if c != "step"]]
        kept: list[dict[str, str]] = []
        if resume_step is not None and path_manager.exists(self.path):
            with open_path(self.path, "r") as handle:
                reader = csv.DictReader(handle)
                for row in reader:
                    try:
                        if int(float(row.get("step", "nan"))) <= resume_step:
                            kept.append(row)
                    except ValueError:
                        continue
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in kept:
            writer.writerow({key: row.get(key, "") for key in self.columns})
        with atomic_write(self.path, "w") as handle:
            handle.write(buffer.getvalue())

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row (missing columns stay empty; floats written with 6 significant digits)."""
        values = {key: _format(row.get(key)) for key in self.columns}
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.columns).writerow(values)
        with open_path(self.path, "a") as handle:
            handle.write(buffer.getvalue())


def read_csv(path: str) -> dict[str, list[float]]:
    """A CSV log as ``{column: [float or nan, ...]}``."""
    columns: dict[str, list[float]] = {}
    if not path_manager.exists(str(path)):
        return columns
    with open_path(str(path), "r") as handle:
        reader = csv.DictReader(handle)
        for name in reader.fieldnames or []:
            columns[name] = []
        for row in reader:
            for name in columns:
                try:
                    columns[name].append(float(row.get(name) or "nan"))
                except ValueError:
                    columns[name].append(math.nan)
    return columns


class TensorBoardLog:
    """Scalars to TensorBoard when ``torch.utils.tensorboard`` imports; a no-op otherwise."""

    def __init__(self, *, log_dir: str, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except Exception as error:  # logging must never stop training
            warnings.warn(f"TensorBoard logging disabled: {error}", stacklevel=2)

    def add(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(
    train_csv: str, val_csv: str, out_png: str, *, terms: Sequence[str] = ()
) -> Optional[str]:
    """
    Plot the training losses (log scale) and the validation metrics to a PNG (matplotlib Agg).

    Args:
        train_csv: the training log (``step``, ``loss`` and one column per loss term).
        val_csv: the validation log (``step``, ``psnr``, ``mask_iou`` ...).
        out_png: the image to write.
        terms: the loss-term columns to draw next to ``loss``.

    Returns:
        ``out_png``, or ``None`` when there was nothing to plot.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    train = read_csv(train_csv)
    val = read_csv(val_csv)
    if not train.get("step") and not val.get("step"):
        return None
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    steps = train.get("step", [])
    for name in ["loss", *terms]:
        values = train.get(name)
        if not values:
            continue
        pairs = [(s, v) for s, v in zip(steps, values, strict=False) if math.isfinite(v) and v > 0]
        if pairs:
            xs, ys = zip(*pairs, strict=False)
            axes[0].plot(xs, ys, label=name, linewidth=1.5 if name == "loss" else 1.0)
    axes[0].set_yscale("log")
    axes[0].set_title("training losses")
    axes[0].set_xlabel("iteration")
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    val_steps = val.get("step", [])
    for axis, names, title in (
        (axes[1], ("psnr", "psnr_masked"), "held-out PSNR (dB)"),
        (axes[2], ("mask_iou", "train_mask_agreement"), "mask IoU / agreement"),
    ):
        for name in names:
            source, xs_all = (val, val_steps) if name in val else (train, steps)
            values = source.get(name)
            if not values:
                continue
            pairs = [(s, v) for s, v in zip(xs_all, values, strict=False) if math.isfinite(v)]
            if pairs:
                xs, ys = zip(*pairs, strict=False)
                axis.plot(xs, ys, marker="o" if source is val else None, markersize=3, label=name)
        axis.set_title(title)
        axis.set_xlabel("iteration")
        if axis.lines:
            axis.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(str(out_png), "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    return str(out_png)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
