"""
What every training task shares: the losses of DVR and of the real-capture recipe, pixel
sampling, the step schedule of the march, checkpoints (written atomically, with the RNG
state) and the CSV / TensorBoard logs. The tasks (:mod:`dvr_plugin.training`, multi-view;
:mod:`dvr_plugin.single_view`) build on it; it imports no task.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .losses import LossWeights, total_loss
from .sampling import PixelSample, sample_pixels
from .schedule import StepSchedule

__all__ = [
    "LossWeights",
    "PixelSample",
    "StepSchedule",
    "load_checkpoint",
    "sample_pixels",
    "save_checkpoint",
    "total_loss",
]
