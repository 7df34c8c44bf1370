"""
Single-view reconstruction with DVR: an image encoder (ResNet-18) and an occupancy + texture
field conditioned on its code, trained across the objects of a category; a generator of such
categories; evaluation against retrieval baselines. See ``docs/single_view.md``.

Example::

    from dvr_plugin.single_view import (
        CategorySettings, make_category, load_single_view_config, fit_single_view,
        evaluate_category, reconstruct_image,
    )

    make_category("/data/shapes", CategorySettings(n_train=50, n_test=10), device="cuda")
    config = load_single_view_config(None, ["data.path=/data/shapes", "train.iterations=2000"])
    fit_single_view(config, "outputs/sv")
    evaluate_category("outputs/sv/checkpoint.pt", "outputs/sv/eval")
"""

from .category import (
    SHAPE_CLASSES,
    CategorySettings,
    make_category,
    make_object,
    render_object,
)
from .config import (
    SingleViewConfig,
    config_from_dict,
    load_single_view_config,
    resolve_single_view_config,
)
from .dataset import CategoryData, GroundTruth, load_category, load_ground_truth, read_split
from .encoder import ResNet18Trunk, ResNetEncoder, build_resnet18_trunk
from .evaluate import evaluate_category
from .model import SingleViewModel, build_model
from .reconstruct import reconstruct_image
from .trainer import (
    SingleViewTrainer,
    fit_single_view,
    model_from_checkpoint,
    render_with_codes,
)

__all__ = [
    "SHAPE_CLASSES",
    "CategoryData",
    "CategorySettings",
    "GroundTruth",
    "ResNet18Trunk",
    "ResNetEncoder",
    "SingleViewConfig",
    "SingleViewModel",
    "SingleViewTrainer",
    "build_model",
    "build_resnet18_trunk",
    "config_from_dict",
    "evaluate_category",
    "fit_single_view",
    "load_category",
    "load_ground_truth",
    "load_single_view_config",
    "make_category",
    "make_object",
    "model_from_checkpoint",
    "read_split",
    "reconstruct_image",
    "render_object",
    "render_with_codes",
    "resolve_single_view_config",
]
