"""
The output folder of a training run, the same for every task::

    out_dir/
      checkpoint.pt       model, optimiser, schedule, step, RNG states, config
      config.yaml         the resolved configuration
      train_log.csv       the losses of the logged steps (and TensorBoard, when it imports)
      val_log.csv         the metrics of every validation
      val/step_*.png      validation grids
      curves.png          the curves of both logs
      comparison.png      the last validation grid

and the helpers that write it: the logs, the progress bar of the loop, the curves plot and
JSON reports.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ..io import atomic_write, make_dirs
from .logs import CsvLog, TensorBoardLog, plot_curves

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_LOG_NAME = "train_log.csv"
VAL_LOG_NAME = "val_log.csv"
CURVES_NAME = "curves.png"
VAL_DIR_NAME = "val"
CONFIG_NAME = "config.yaml"
COMPARISON_NAME = "comparison.png"
# The files that a finished training run of either task leaves in its output folder (the
# comparison grid where it has validation views).
RUN_OUTPUTS = (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    TRAIN_LOG_NAME,
    VAL_LOG_NAME,
    CURVES_NAME,
    COMPARISON_NAME,
)


def open_run_outputs(
    out_dir: str,
    config: Mapping[str, Any],
    *,
    terms: Sequence[str],
    resume_step: Optional[int],
    tensorboard: bool,
) -> tuple[CsvLog, CsvLog, TensorBoardLog]:
    """
    Prepare the output folder of a training run: create ``out_dir`` and ``out_dir/val``, open
    the training and validation CSV logs (an earlier run's rows up to ``resume_step`` kept) and
    TensorBoard, and write ``config.yaml``.

    Args:
        out_dir: the output folder (local path or iopath URI).
        config: the run's configuration as a nested dict.
        terms: the loss-term columns of the training log.
        resume_step: the step a resumed run continues from (``None``: a new run).
        tensorboard: also log to TensorBoard when it imports.

    Returns:
        ``(train_log, val_log, tensorboard)``.
    """
    make_dirs(out_dir)
    make_dirs(os.path.join(out_dir, VAL_DIR_NAME))
    train_log = CsvLog(
        path=os.path.join(out_dir, TRAIN_LOG_NAME),
        columns=[
            "step",
            "loss",
            *terms,
            "lr",
            "n_steps",
            "hit_rate",
            "train_mask_agreement",
            "seconds",
        ],
        resume_step=resume_step,
    )
    val_log = CsvLog(
        path=os.path.join(out_dir, VAL_LOG_NAME),
        columns=["step", "psnr", "psnr_masked", "ssim", "mask_iou", "seconds"],
        resume_step=resume_step,
    )
    board = TensorBoardLog(log_dir=os.path.join(out_dir, "tensorboard"), enabled=tensorboard)
    import yaml

    with atomic_write(os.path.join(out_dir, CONFIG_NAME), "w") as handle:
        yaml.safe_dump(dict(config), handle, sort_keys=False)
    return train_log, val_log, board


def progress_bar(*, total: int, initial: int = 0, enabled: bool, desc: str) -> Any:
    """
    The tqdm bar of a training loop (``initial`` steps done of ``total``): refreshed often in a
    terminal, every 30 seconds when stderr goes to a log file.
    """
    from tqdm.auto import tqdm

    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=desc,
        unit="it",
        dynamic_ncols=True,
        mininterval=0.2 if interactive else 30.0,
    )


def log_train_row(
    values: Mapping[str, Any],
    *,
    step: int,
    seconds: float,
    train_log: Optional[CsvLog],
    tensorboard: Optional[TensorBoardLog],
) -> None:
    """Log a step's losses with ``step`` and training ``seconds`` (CSV log and TensorBoard)."""
    row = {**values, "step": step, "seconds": seconds}
    if train_log is not None:
        train_log.append(row)
    if tensorboard is not None:
        tensorboard.add("train", row, step)


def plot_run_curves(out_dir: str, terms: Sequence[str]) -> Optional[str]:
    """
    Plot the CSV logs of ``out_dir`` to ``curves.png`` (:func:`.logs.plot_curves`); a failure
    only warns: a plot must not fail a finished fit.

    Returns:
        The PNG's path, or ``None`` when nothing was plotted.
    """
    try:
        return plot_curves(
            os.path.join(out_dir, TRAIN_LOG_NAME),
            os.path.join(out_dir, VAL_LOG_NAME),
            os.path.join(out_dir, CURVES_NAME),
            terms=list(terms),
        )
    except Exception as error:  # a plot must not fail a finished fit
        import warnings

        # stacklevel 3: the warning points at the caller of the trainer's fit().
        warnings.warn(f"Could not plot the training curves: {error}", stacklevel=3)
        return None


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically (NaN / inf become ``null``; tensors become lists)."""
    with atomic_write(path, "w") as handle:
        json.dump(_json_safe(data), handle, indent=2)
        handle.write("\n")


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    return value
