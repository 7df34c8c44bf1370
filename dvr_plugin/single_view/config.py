"""
The configuration of single-view training: nested dataclasses read from YAML plus
``key=value`` overrides (values parsed as YAML) by the loader of
:mod:`dvr_plugin.engine.config`, like ``dvr fit``'s multi-view configuration.

::

    task: single-view
    seed: 0
    device: auto
    data:    {path: /data/category, classes: null, depth: auto}
    encoder: {latent_size: 256, weights: null}
    model:   {hidden_size: 256, n_blocks: 5, n_frequencies: 4}
    optim:   {lr: 5.0e-4, lr_milestones: [], lr_gamma: 0.5}
    train:   {iterations: 20000, objects_per_batch: 32, rays_per_image: 1024,
              supervision: rgb, input_view: random}
    loss:    {rgb: 1.0, depth: null, freespace: 1.0, occupancy: 1.0, normal: 0.05}
    eval:    {validate_every: 1000, input_view: 0, mesh_resolution: 64}
    device_overrides: {cuda: {train.objects_per_batch: 64}}

Unknown keys and values of the wrong type raise ``ValueError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..engine import config as engine_config
from ..engine.config import (
    BaseConfig,
    BaseEvalConfig,
    BaseLossConfig,
    BaseTrainConfig,
    OptimConfig,
    Override,
    non_negative,
    positive,
    resolve_config,
)
from ..engine.losses import LossWeights
from .dataset import DEPTH_MODES
from .encoder import BACKBONES

TASK_NAME = "single-view"
SUPERVISIONS = ("rgb", "depth", "both")
# Depth weight of the reference's single-view variants when loss.depth is null.
REFERENCE_DEPTH_WEIGHT = {"rgb": 0.0, "depth": 1.0, "both": 10.0}
# The members of the data section that are keyword arguments of ``load_category``.
LOADER_OPTIONS = (
    "classes",
    "depth",
    "max_objects_per_class",
    "max_views",
    "empty_masks",
    "workers",
)


@dataclass
class SingleViewDataConfig:
    """
    Members:
        path: the category root (reference DVR / ShapeNet layout; ``dvr make-category`` output).
        classes: class folders to use (``null``: every folder with split lists).
        train_split, val_split, test_split: split list names (``<class>/<split>.lst``); the
            validation split is optional (no validation when no class has it).
        depth: ``auto``, ``depth``, ``visual_hull`` or ``none`` (see
            :mod:`dvr_plugin.single_view.dataset`).
        max_objects_per_class: use the first objects of each class only.
        max_views: use the first views of each object only.
        empty_masks: views with an empty mask: ``error``, ``warn`` or ``ignore``.
        workers: threads reading objects.
    """

    path: Optional[str] = None
    classes: Optional[list] = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    depth: str = "auto"
    max_objects_per_class: Optional[int] = None
    max_views: Optional[int] = None
    empty_masks: str = "warn"
    workers: int = 4

    def __post_init__(self) -> None:
        if self.depth not in DEPTH_MODES:
            raise ValueError(f"data.depth must be one of {DEPTH_MODES}, got {self.depth!r}.")
        if self.empty_masks not in ("error", "warn", "ignore"):
            raise ValueError(
                f"data.empty_masks must be error, warn or ignore, got {self.empty_masks!r}."
            )
        for name in ("max_objects_per_class", "max_views"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1 or null, got {value}.")
        positive("data.workers", self.workers)

    def loader_options(self, **changes: Any) -> dict[str, Any]:
        """
        The keyword arguments of :func:`dvr_plugin.single_view.dataset.load_category` that this
        section sets (``classes``, ``depth``, ``max_objects_per_class``, ``max_views``,
        ``empty_masks``, ``workers``), with ``changes`` applied.
        """
        options = {name: getattr(self, name) for name in LOADER_OPTIONS}
        options.update(changes)
        return options


@dataclass
class EncoderConfig:
    """
    Members:
        latent_size: size of the code that conditions the field (256 in the paper).
        weights: a local torchvision ResNet-18 state dict (pretrained ImageNet weights) or
            ``null`` for random initialisation (nothing is downloaded).
        backbone: ``auto`` (torchvision when it imports), ``torchvision`` or ``builtin``.
        normalize: ImageNet normalisation of the input.
        input_size: resize inputs to this many pixels per side (0: keep; the reference uses 224
            with pretrained weights).
        lr_scale: the encoder's learning rate is ``optim.lr * lr_scale``.
    """

    latent_size: int = 256
    weights: Optional[str] = None
    backbone: str = "auto"
    normalize: bool = True
    input_size: int = 0
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        positive("encoder.latent_size", self.latent_size)
        if self.backbone not in BACKBONES:
            raise ValueError(f"encoder.backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        if self.input_size < 0:
            raise ValueError(f"encoder.input_size must be >= 0, got {self.input_size}.")
        if not self.lr_scale > 0:
            raise ValueError(f"encoder.lr_scale must be > 0, got {self.lr_scale}.")


@dataclass
class SingleViewModelConfig:
    """
    The conditioned decoder (:class:`dvr_plugin.fields.field.OccupancyTextureField`).

    Members:
        hidden_size: width of the residual blocks (512 in the paper, 256 here by default).
        n_blocks: residual blocks (5 in the paper); the latent is added before each.
        n_frequencies: Fourier features of the input point (0 = the reference decoder; 4 by
            default: training finds a surface several times sooner with them).
    """

    hidden_size: int = 256
    n_blocks: int = 5
    n_frequencies: int = 4

    def __post_init__(self) -> None:
        if self.hidden_size < 1 or self.n_blocks < 1 or self.n_frequencies < 0:
            raise ValueError(
                "model.hidden_size and model.n_blocks must be >= 1 (the latent enters before a "
                "block) and model.n_frequencies >= 0."
            )


@dataclass
class SingleViewTrainConfig(BaseTrainConfig):
    """
    The keys of :class:`dvr_plugin.engine.config.BaseTrainConfig` (``iterations`` 20000,
    ``rays_per_image`` R pixels of each object's supervision view, ``sampling``
    ``foreground_balanced``, ``foreground_fraction``, ``step_milestones`` {0: 16, 10000: 32},
    ``n_secant_steps``, ``time_budget_s``) and:

    Members:
        objects_per_batch: B objects per step (>= 2: the encoder has batch normalisation).
        supervision: ``rgb``, ``depth`` or ``both`` (the reference's three variants): which of
            the colour and depth losses train the model (masks always do, through the
            free-space and occupancy losses).
        input_view: ``random`` (the reference: any view of the object is the input) or a view
            index used for every object.
    """

    iterations: int = 20000
    sampling: str = "foreground_balanced"
    step_milestones: dict = field(default_factory=lambda: {0: 16, 10000: 32})
    objects_per_batch: int = 32
    supervision: str = "rgb"
    input_view: Union[str, int] = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objects_per_batch < 2:
            raise ValueError(
                "train.objects_per_batch must be >= 2 (the ResNet encoder uses batch "
                f"normalisation), got {self.objects_per_batch}."
            )
        if self.supervision not in SUPERVISIONS:
            raise ValueError(
                f"train.supervision must be one of {SUPERVISIONS}, got {self.supervision!r}."
            )
        if isinstance(self.input_view, str) and self.input_view != "random":
            raise ValueError(
                f"train.input_view must be 'random' or a view index, got {self.input_view!r}."
            )


@dataclass
class SingleViewLossConfig(BaseLossConfig):
    """
    Loss weights (summed over rays, divided by the batch size, as in the reference): the keys
    of :class:`dvr_plugin.engine.config.BaseLossConfig` (``rgb``, used with
    ``train.supervision`` ``rgb`` / ``both``; ``freespace``, ``occupancy``: mask terms;
    ``normal``, ``normal_jitter``, ``visual_hull_depth``) and:

    Members:
        depth: z-depth L1 (``depth`` / ``both``); ``null`` takes the reference's weight of the
            variant: 1 for ``depth``, 10 for ``both``.
    """

    depth: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth is not None:
            non_negative("loss.depth", self.depth)

    def weights(self, supervision: str) -> LossWeights:
        """The :class:`LossWeights` of a supervision variant (unused terms weigh 0)."""
        depth = REFERENCE_DEPTH_WEIGHT[supervision] if self.depth is None else self.depth
        return LossWeights(
            rgb=self.rgb if supervision in ("rgb", "both") else 0.0,
            depth=depth if supervision in ("depth", "both") else 0.0,
            world_point=0.0,
            freespace=self.freespace,
            occupancy=self.occupancy,
            normal=self.normal,
            image_gradient=0.0,
        )


@dataclass
class SingleViewEvalConfig(BaseEvalConfig):
    """
    The keys of :class:`dvr_plugin.engine.config.BaseEvalConfig` (``validate_every`` 1000,
    ``checkpoint_every`` 1000, ``log_every``, ``n_steps``, ``mesh_resolution`` 64: MISE
    resolution of evaluation meshes, a power of two >= 32; ``mesh_points``, ``tensorboard``)
    and:

    Members:
        input_view: the input view at test time (0, as in the reference).
        target_view: the view rendered for validation metrics (a different view of the
            object; negative counts from the last).
        max_objects: validation objects rendered (spread over the classes).
    """

    validate_every: int = 1000
    checkpoint_every: int = 1000
    mesh_resolution: int = 64
    input_view: int = 0
    target_view: int = 1
    max_objects: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("eval.max_objects", self.max_objects)
        if self.mesh_resolution < 32 or self.mesh_resolution & (self.mesh_resolution - 1):
            raise ValueError(
                f"eval.mesh_resolution must be a power of two >= 32, got {self.mesh_resolution}."
            )


@dataclass
class SingleViewConfig(BaseConfig):
    """
    Everything single-view training needs (module docstring for the YAML form): the top-level
    keys of :class:`dvr_plugin.engine.config.BaseConfig` (``seed``, ``device``, ``background``
    (must match the data's), ``device_overrides``) and:

    Members:
        task: always ``single-view`` (marks the file for ``dvr fit``).
        data, encoder, model, optim, train, loss, eval: the sections; ``optim`` is
            :class:`dvr_plugin.engine.config.OptimConfig` (its ``lr`` is the decoder's, the
            encoder's is ``lr * encoder.lr_scale``).
    """

    task: str = TASK_NAME
    data: SingleViewDataConfig = field(default_factory=SingleViewDataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: SingleViewModelConfig = field(default_factory=SingleViewModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: SingleViewTrainConfig = field(default_factory=SingleViewTrainConfig)
    loss: SingleViewLossConfig = field(default_factory=SingleViewLossConfig)
    eval: SingleViewEvalConfig = field(default_factory=SingleViewEvalConfig)

    def __post_init__(self) -> None:
        if self.task != TASK_NAME:
            raise ValueError(
                f"task must be {TASK_NAME!r} in a single-view config, got {self.task!r}."
            )
        super().__post_init__()

    def loss_weights(self) -> LossWeights:
        """The weights of the configured supervision variant."""
        return self.loss.weights(self.train.supervision)


# ---------------------------------------------------------------------------------------------
# The loader of dvr_plugin.engine.config with the keys of SingleViewConfig

config_from_dict = SingleViewConfig.from_dict
# (config) -> (config with its device's overrides applied, device)
resolve_single_view_config = resolve_config


def load_single_view_config(
    path: Optional[str] = None,
    overrides: Iterable[Override] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> SingleViewConfig:
    """
    Read a YAML file (or start from ``base``, e.g. a checkpoint's config) and apply overrides
    (:func:`dvr_plugin.engine.config.load_config`). Keys given as overrides win over the
    file's ``device_overrides`` for the same key.
    """
    return engine_config.load_config(SingleViewConfig, path, overrides, base=base)


def is_single_view_config(path: str) -> bool:
    """Whether a YAML file is a single-view config (``task: single-view`` at the top)."""
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, Mapping) and data.get("task") == TASK_NAME
