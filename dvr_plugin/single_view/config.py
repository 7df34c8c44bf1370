"""
The configuration of single-view training: nested dataclasses read from YAML plus
``key=value`` overrides (values parsed as YAML), like ``dvr fit``'s multi-view configuration.

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

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from ..engine.losses import LossWeights
from ..training.config import (
    OptimConfig,
    apply_device_overrides,
    build_config,
    check_rays_and_marching,
    check_top_level,
    load_config_data,
    resolve_device,
)
from .dataset import DEPTH_MODES
from .encoder import BACKBONES

TASK_NAME = "single-view"
SUPERVISIONS = ("rgb", "depth", "both")
# Depth weight of the reference's single-view variants when loss.depth is null.
REFERENCE_DEPTH_WEIGHT = {"rgb": 0.0, "depth": 1.0, "both": 10.0}


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
        if self.workers < 1:
            raise ValueError(f"data.workers must be >= 1, got {self.workers}.")


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
        if self.latent_size < 1:
            raise ValueError(f"encoder.latent_size must be >= 1, got {self.latent_size}.")
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
class SingleViewTrainConfig:
    """
    Members:
        iterations: optimisation steps.
        objects_per_batch: B objects per step (>= 2: the encoder has batch normalisation).
        rays_per_image: R pixels sampled in each object's supervision view.
        sampling: pixel sampling (``uniform``, ``foreground_balanced``; ``patch`` works too).
        foreground_fraction: foreground share for ``foreground_balanced``.
        supervision: ``rgb``, ``depth`` or ``both`` (the reference's three variants): which of
            the colour and depth losses train the model (masks always do, through the
            free-space and occupancy losses).
        input_view: ``random`` (the reference: any view of the object is the input) or a view
            index used for every object.
        step_milestones: ``{iteration: marching steps}``.
        n_secant_steps: secant refinement steps.
        time_budget_s: stop after this many seconds of training (``null``: no limit).
    """

    iterations: int = 20000
    objects_per_batch: int = 32
    rays_per_image: int = 1024
    sampling: str = "foreground_balanced"
    foreground_fraction: float = 0.5
    supervision: str = "rgb"
    input_view: Union[str, int] = "random"
    step_milestones: dict = field(default_factory=lambda: {0: 16, 10000: 32})
    n_secant_steps: int = 8
    time_budget_s: Optional[float] = None

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"train.iterations must be >= 0, got {self.iterations}.")
        if self.objects_per_batch < 2:
            raise ValueError(
                "train.objects_per_batch must be >= 2 (the ResNet encoder uses batch "
                f"normalisation), got {self.objects_per_batch}."
            )
        if self.rays_per_image < 1:
            raise ValueError(f"train.rays_per_image must be >= 1, got {self.rays_per_image}.")
        check_rays_and_marching(self)
        if self.supervision not in SUPERVISIONS:
            raise ValueError(
                f"train.supervision must be one of {SUPERVISIONS}, got {self.supervision!r}."
            )
        if isinstance(self.input_view, str) and self.input_view != "random":
            raise ValueError(
                f"train.input_view must be 'random' or a view index, got {self.input_view!r}."
            )


@dataclass
class SingleViewLossConfig:
    """
    Loss weights (summed over rays, divided by the batch size, as in the reference).

    Members:
        rgb: colour L1 (used with ``train.supervision`` ``rgb`` / ``both``).
        depth: z-depth L1 (``depth`` / ``both``); ``null`` takes the reference's weight of the
            variant: 1 for ``depth``, 10 for ``both``.
        freespace, occupancy: mask terms.
        normal: normal smoothness.
        normal_jitter: neighbour offset of the normal term.
        visual_hull_depth: place occupancy points at the known depth (true or visual hull).
    """

    rgb: float = 1.0
    depth: Optional[float] = None
    freespace: float = 1.0
    occupancy: float = 1.0
    normal: float = 0.05
    normal_jitter: float = 1e-3
    visual_hull_depth: bool = True

    def __post_init__(self) -> None:
        for name in ("rgb", "depth", "freespace", "occupancy", "normal", "normal_jitter"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value}.")

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
class SingleViewEvalConfig:
    """
    Members:
        validate_every: validation renders every this many steps (0 = at the end only).
        checkpoint_every: checkpoint every this many steps (0 = at the end only).
        log_every: a CSV row every this many steps.
        input_view: the input view at test time (0, as in the reference).
        target_view: the view rendered for validation metrics (a different view of the
            object; negative counts from the last).
        max_objects: validation objects rendered (spread over the classes).
        n_steps: marching steps of validation renders.
        mesh_resolution: MISE resolution of evaluation meshes.
        mesh_points: surface samples per shape for the metrics.
        tensorboard: also log to TensorBoard when it imports.
    """

    validate_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 10
    input_view: int = 0
    target_view: int = 1
    max_objects: int = 8
    n_steps: int = 64
    mesh_resolution: int = 64
    mesh_points: int = 20000
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("validate_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("log_every", "max_objects", "mesh_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_steps < 2:
            raise ValueError(f"eval.n_steps must be >= 2, got {self.n_steps}.")
        if self.mesh_resolution < 32 or self.mesh_resolution & (self.mesh_resolution - 1):
            raise ValueError(
                f"eval.mesh_resolution must be a power of two >= 32, got {self.mesh_resolution}."
            )


@dataclass
class SingleViewConfig:
    """
    Everything single-view training needs (module docstring for the YAML form).

    Members:
        task: always ``single-view`` (marks the file for ``dvr fit``).
        data, encoder, model, optim, train, loss, eval: the sections; ``optim`` is the
            multi-view :class:`dvr_plugin.training.config.OptimConfig` (its ``lr`` is the
            decoder's, the encoder's is ``lr * encoder.lr_scale``).
        seed: seeds initialisation and every draw of the training loop.
        device: ``auto`` (CUDA when available) or a torch device string.
        background: RGB behind objects in renders (must match the data's background).
        device_overrides: ``{device type: {dotted key: value}}`` applied when the device
            resolves to that type.
    """

    task: str = TASK_NAME
    data: SingleViewDataConfig = field(default_factory=SingleViewDataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: SingleViewModelConfig = field(default_factory=SingleViewModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: SingleViewTrainConfig = field(default_factory=SingleViewTrainConfig)
    loss: SingleViewLossConfig = field(default_factory=SingleViewLossConfig)
    eval: SingleViewEvalConfig = field(default_factory=SingleViewEvalConfig)
    seed: int = 0
    device: str = "auto"
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    device_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task != TASK_NAME:
            raise ValueError(
                f"task must be {TASK_NAME!r} in a single-view config, got {self.task!r}."
            )
        check_top_level(self)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML / JSON / checkpoint friendly)."""
        return dataclasses.asdict(self)

    def loss_weights(self) -> LossWeights:
        """The weights of the configured supervision variant."""
        return self.loss.weights(self.train.supervision)


# ---------------------------------------------------------------------------------------------
# Reading, overrides and device resolution are those of the multi-view configuration
# (:mod:`dvr_plugin.training.config`), with keys checked against :class:`SingleViewConfig`.


def config_from_dict(data: Mapping[str, Any]) -> SingleViewConfig:
    """Build a :class:`SingleViewConfig` from a nested dict (checked)."""
    return build_config(SingleViewConfig, dict(data))


def load_single_view_config(
    path: Optional[str] = None,
    overrides: Iterable[str] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> SingleViewConfig:
    """
    Read a YAML file (or start from ``base``, e.g. a checkpoint's config) and apply overrides.

    Keys given as overrides win over the file's ``device_overrides`` for the same key.
    """
    return config_from_dict(load_config_data(path, overrides, base=base, root=SingleViewConfig))


def resolve_single_view_config(config: SingleViewConfig) -> tuple[SingleViewConfig, torch.device]:
    """Resolve ``device`` (``auto``) and apply its ``device_overrides``."""
    device = resolve_device(config.device)
    data = apply_device_overrides(config.to_dict(), device, root=SingleViewConfig)
    return config_from_dict(data), device


def is_single_view_config(path: str) -> bool:
    """Whether a YAML file is a single-view config (``task: single-view`` at the top)."""
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, Mapping) and data.get("task") == TASK_NAME
