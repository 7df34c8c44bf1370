"""
What every training task shares: the training loop (:class:`BaseTrainer`: progress, time
budget, validation and checkpoint cadence, Ctrl-C, resume), the losses of DVR and of the
real-capture recipe, pixel sampling, the step schedule of the march, checkpoints (written
atomically, with the RNG state), the run's output folder with its CSV / TensorBoard logs, and
the rendering evaluation of a fitted field (renders, image metrics, grids, orbits, turntables,
mesh metrics). The tasks (:mod:`dvr_plugin.training`, multi-view; :mod:`dvr_plugin.single_view`)
build on it; it imports no task.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluation import (
    RenderedViews,
    comparison_grid,
    image_metrics,
    mesh_metrics,
    orbit_cameras,
    orbit_settings,
    render_views,
    turntable_frames,
)
from .losses import LossWeights, total_loss
from .sampling import PixelSample, sample_pixels
from .schedule import StepSchedule
from .trainer import BaseTrainer, FitInterrupted

__all__ = [
    "BaseTrainer",
    "FitInterrupted",
    "LossWeights",
    "PixelSample",
    "RenderedViews",
    "StepSchedule",
    "comparison_grid",
    "image_metrics",
    "load_checkpoint",
    "mesh_metrics",
    "orbit_cameras",
    "orbit_settings",
    "render_views",
    "sample_pixels",
    "save_checkpoint",
    "total_loss",
    "turntable_frames",
]
