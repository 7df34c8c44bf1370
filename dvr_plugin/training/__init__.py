"""
Fitting DVR to posed images with masks: configuration, trainer, checkpoints, the fitting
pipeline behind ``dvr fit`` / ``dvr render`` / ``dvr demo``, and a fit's surface and scores
behind ``dvr mesh`` / ``dvr eval``. See ``docs/training.md``.

Example::

    from dvr_plugin.training import Trainer, load_config, load_fit_data

    config = load_config("dvr_plugin/configs/cow.yaml", ["train.iterations=2000"])
    data = load_fit_data(config.data, background=config.background)
    trainer = Trainer(config=config, train_data=data.train, val_data=data.val, out_dir="out")
    trainer.fit()
"""

from ..engine.config import resolve_config
from .config import (
    DATA_FORMATS,
    DataConfig,
    EvalConfig,
    FitConfig,
    HashGridConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    load_config,
)
from .data import FitData, demo_mesh, load_fit_data, load_views
from .export import mesh_from_checkpoint
from .fit import fit, packaged_config, render_checkpoint, run_fit_demo
from .mesh_evaluation import evaluate_mesh_against, prepare_evaluation_meshes
from .trainer import Trainer, build_field

__all__ = [
    "DATA_FORMATS",
    "DataConfig",
    "EvalConfig",
    "FitConfig",
    "FitData",
    "HashGridConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "Trainer",
    "build_field",
    "demo_mesh",
    "evaluate_mesh_against",
    "fit",
    "load_config",
    "load_fit_data",
    "load_views",
    "mesh_from_checkpoint",
    "packaged_config",
    "prepare_evaluation_meshes",
    "render_checkpoint",
    "resolve_config",
    "run_fit_demo",
]
