"""
Fitting DVR to posed images with masks: configuration, trainer, checkpoints, the fitting
pipeline behind ``dvr fit`` / ``dvr render`` / ``dvr demo``. See ``docs/training.md``.

Example::

    from dvr_plugin.training import Trainer, load_config, load_fit_data

    config = load_config("dvr_plugin/configs/cow.yaml", ["train.iterations=2000"])
    data = load_fit_data(config.data, background=config.background)
    trainer = Trainer(config=config, train_data=data.train, val_data=data.val, out_dir="out")
    trainer.fit()
"""

from ..engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import (
    DATA_FORMATS,
    DataConfig,
    EvalConfig,
    FitConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    config_keys,
    load_config,
    parse_override,
    resolve_config,
    resolve_device,
)
from .data import FitData, check_training_views, demo_mesh, load_fit_data, load_views
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
from .fit import finish_fit, fit, packaged_config, render_checkpoint, run_fit_demo
from .trainer import (
    AutocastField,
    FitInterrupted,
    Trainer,
    build_field,
    build_optimizer,
    seed_everything,
)

__all__ = [
    "AutocastField",
    "DATA_FORMATS",
    "DataConfig",
    "EvalConfig",
    "FitConfig",
    "FitData",
    "FitInterrupted",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RenderedViews",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "build_field",
    "build_optimizer",
    "capture_rng_state",
    "check_training_views",
    "comparison_grid",
    "config_keys",
    "demo_mesh",
    "finish_fit",
    "fit",
    "image_metrics",
    "load_checkpoint",
    "load_config",
    "load_fit_data",
    "load_views",
    "mesh_metrics",
    "orbit_cameras",
    "orbit_settings",
    "packaged_config",
    "parse_override",
    "render_checkpoint",
    "render_views",
    "resolve_config",
    "resolve_device",
    "restore_rng_state",
    "run_fit_demo",
    "save_checkpoint",
    "seed_everything",
    "turntable_frames",
]
