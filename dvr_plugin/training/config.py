"""
The multi-view fitting configuration: nested dataclasses, read from YAML and ``key=value``
overrides by the loader of :mod:`dvr_plugin.engine.config` (OmegaConf structured configs).

A configuration file mirrors the dataclasses below; every section and key is optional and takes
the default when absent::

    seed: 0
    device: auto                 # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    data:   {format: mesh, path: ../shared/data/meshes/cow.obj, image_size: 128, n_views: 50}
    model:  {hidden_size: 128, n_frequencies: 6}
    optim:  {lr: 5.0e-4, lr_milestones: [3000, 4000]}
    train:  {iterations: 5000, images_per_batch: 4, rays_per_image: 1024,
             step_milestones: {0: 16, 1000: 32}}
    loss:   {rgb: 1.0, freespace: 1.0, occupancy: 1.0, normal: 0.05}
    eval:   {validate_every: 500, checkpoint_every: 500}
    device_overrides:            # applied when the resolved device is of that type
      cuda: {model.hidden_size: 256, train.iterations: 20000}

Overrides are ``section.key=value`` strings (``train.iterations=200``, ``loss.depth=0``,
``train.step_milestones={0: 16, 500: 32}``); values are parsed as YAML, so numbers, booleans,
lists and mappings work, and a mapping replaces the old one. Unknown keys and values of the
wrong type raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..engine import config as engine_config
from ..engine.config import (
    BaseConfig,
    BaseEvalConfig,
    BaseLossConfig,
    BaseTrainConfig,
    OptimConfig,
    Override,
    positive,
)
from ..engine.losses import LossWeights
from ..fields.field import FIELD_TYPES

DATA_FORMATS = ("demo", "mesh", "dtu", "monosdf", "nerf-synthetic", "dvr")
EMPTY_MASK_POLICIES = ("error", "warn", "ignore")


@dataclass
class DataConfig:
    """
    Where the posed images come from.

    Members:
        format: one of :data:`DATA_FORMATS`: ``"demo"`` (the built-in analytic scene, meshed and
            rendered with PyTorch3D's ``MeshRenderer``; no files), ``"mesh"`` (any mesh file
            rendered the same way), ``"dtu"`` (IDR / NeuS layout), ``"monosdf"`` (the MonoSDF
            DTU crop), ``"nerf-synthetic"`` or ``"dvr"`` (the reference DVR layout).
        path: the data folder, or the mesh file for ``"mesh"``.
        loader_args: extra keyword arguments of the loader (e.g. ``{views: [0, 4, 8]}``).
        downscale: integer factor applied on load (area averaging).
        held_out_every: hold out every n-th view for validation.
        held_out: explicit held-out view positions (instead of ``held_out_every``).
        empty_masks: what a training view with an empty mask does: ``"error"``, ``"warn"``,
            ``"ignore"``.
        image_size: rendering resolution for ``"demo"`` / ``"mesh"`` (pixels per side).
        n_views: number of rendered views for ``"demo"`` / ``"mesh"``.
        layout: camera layout of rendered views: ``"fibonacci"`` (even over the sphere),
            ``"turntable"`` or ``"random"`` (see :func:`dvr_plugin.data.render_mesh_views`).
        camera_distance: distance of the rendering cameras from the origin.
        fov: their field of view in degrees.
        elevation: the elevation of the ``"turntable"`` layout (degrees).
        elevation_range: ``[min, max]`` elevation of the ``"random"`` layout (degrees).
        longest_side: the mesh is centred and scaled so its longest side is this long.
        shading: ``"albedo"`` (pixel = texture colour, view independent, what DVR's texture
            field models) or ``"phong"`` (a light at each camera).
        supersample: render at this factor and average down (anti-aliased edges).
    """

    format: str = "demo"
    path: Optional[str] = None
    loader_args: dict = field(default_factory=dict)
    downscale: int = 1
    held_out_every: int = 8
    held_out: Optional[list] = None
    empty_masks: str = "error"
    image_size: int = 64
    n_views: int = 32
    layout: str = "fibonacci"
    camera_distance: float = 2.0
    fov: float = 40.0
    elevation: float = 30.0
    elevation_range: list = field(default_factory=lambda: [-30.0, 60.0])
    longest_side: float = 0.8
    shading: str = "albedo"
    supersample: int = 2

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data.format must be one of {DATA_FORMATS}, got {self.format!r}.")
        if self.format != "demo" and not self.path:
            raise ValueError(f"data.path is required for data.format={self.format!r}.")
        if self.format == "demo" and self.path:
            # A path with the default format would silently train the built-in scene.
            raise ValueError(
                f"data.format=demo is the built-in scene and reads no files, but data.path="
                f"{self.path!r} is set; set data.format to the data's format "
                f"({', '.join(f for f in DATA_FORMATS if f != 'demo')}) or drop data.path."
            )
        if self.empty_masks not in EMPTY_MASK_POLICIES:
            raise ValueError(
                f"data.empty_masks must be one of {EMPTY_MASK_POLICIES}, got {self.empty_masks!r}."
            )
        positive("data.downscale", self.downscale)
        positive("data.image_size", self.image_size)
        positive("data.supersample", self.supersample)
        if self.n_views < 2:
            raise ValueError(f"data.n_views must be >= 2, got {self.n_views}.")
        if self.held_out_every < 2:
            raise ValueError(f"data.held_out_every must be >= 2, got {self.held_out_every}.")
        if len(self.elevation_range) != 2:
            raise ValueError(
                f"data.elevation_range must be [min, max], got {self.elevation_range!r}."
            )
        if not 0.0 < self.longest_side <= 1.0:
            raise ValueError(f"data.longest_side must lie in (0, 1], got {self.longest_side}.")


@dataclass
class HashGridConfig:
    """
    The multi-resolution hash-grid field (``model.encoding: hash_grid``,
    :class:`dvr_plugin.fields.hash_grid.HashGridField`).

    Members:
        n_levels: L, resolution levels.
        features_per_level: F, features stored per table entry.
        log2_table_size: log2 of T, the entries of each level's table.
        base_resolution: cells per axis of the coarsest level.
        max_resolution: cells per axis of the finest level (the growth factor follows).
        include_points: feed the point itself to the decoder beside its features.
        hidden_size: width of the decoder's hidden layers.
        n_layers: number of its hidden layers.
        rgb_hidden_size: width of the texture head's hidden layers.
        rgb_n_layers: number of the texture head's hidden layers.
    """

    n_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    include_points: bool = True
    hidden_size: int = 64
    n_layers: int = 2
    rgb_hidden_size: int = 64
    rgb_n_layers: int = 2

    def encoding_options(self) -> dict[str, int]:
        """The keyword arguments of a :class:`~dvr_plugin.fields.hash_grid.HashGridEncoding`."""
        return {
            "n_levels": self.n_levels,
            "features_per_level": self.features_per_level,
            "log2_table_size": self.log2_table_size,
            "base_resolution": self.base_resolution,
            "max_resolution": self.max_resolution,
        }

    def __post_init__(self) -> None:
        for name in ("n_levels", "features_per_level", "base_resolution", "hidden_size"):
            positive(f"model.hash_grid.{name}", getattr(self, name))
        positive("model.hash_grid.n_layers", self.n_layers)
        positive("model.hash_grid.rgb_hidden_size", self.rgb_hidden_size)
        positive("model.hash_grid.rgb_n_layers", self.rgb_n_layers)
        if not 10 <= self.log2_table_size <= 24:
            raise ValueError(
                f"model.hash_grid.log2_table_size must lie in [10, 24], got {self.log2_table_size}."
            )
        if self.max_resolution < self.base_resolution:
            raise ValueError(
                "model.hash_grid.max_resolution must be >= model.hash_grid.base_resolution, got "
                f"{self.max_resolution} < {self.base_resolution}."
            )


ENCODINGS = ("fourier", "hash_grid")


@dataclass
class ModelConfig:
    """
    The field: :class:`dvr_plugin.fields.field.OccupancyTextureField` (Fourier features and
    residual blocks, the default) or :class:`dvr_plugin.fields.hash_grid.HashGridField`
    (``encoding: hash_grid``).

    Members:
        encoding: ``"fourier"`` (DVR's decoder on Fourier features) or ``"hash_grid"`` (a
            multi-resolution hash grid with small occupancy / texture heads, ``hash_grid``).
        hidden_size: H, width of the residual blocks.
        n_blocks: number of residual blocks.
        n_frequencies: Fourier feature frequencies of the input (0 = the reference decoder).
        field_type: ``"occupancy"`` (DVR) or ``"sdf"``.
        fourier_anneal_steps: fade the Fourier bands in from coarse to fine over this many
            steps (Nerfies / BARF window; 0 = all bands from the start).
        geometric_init_radius: start the field as a sphere of this radius (scene units) around
            the origin (``None`` = the reference initialisation for occupancy, radius 0.3 for
            SDFs); see ``docs/losses.md``.
        geometric_init_sharpness: logit slope per scene unit of the occupancy sphere.
        colour: ``"texture"`` (DVR's view-independent texture head, the default) or
            ``"view_dependent"`` (an IDR-style rendering network of the surface point, its
            normal, the viewing direction and the geometry network's last hidden activation;
            :mod:`dvr_plugin.fields.appearance`).
        colour_hidden_size: width of the view-dependent head's hidden layers.
        colour_n_layers: number of its hidden layers.
        colour_view_frequencies: Fourier bands of the viewing direction (IDR: 4).
        colour_point_frequencies: Fourier bands of the surface point fed to the head (IDR: 0).
        colour_point_grid: also feed the head a hash-grid encoding of the surface point, a
            table of its own with the level / table / resolution sizes of ``hash_grid``
            (fine texture without more geometric capacity; its tables train at
            ``optim.encoding_lr`` when set). Needs ``colour: view_dependent``.
        colour_grid_max_resolution: cells per axis of the finest level of the colour head's
            grid (``None``: ``hash_grid.max_resolution``, the geometry's). A colour grid finer
            than the geometry's carries texture the capped geometry grid cannot, without
            letting the surface follow it (on DTU scan 24 it fits the training views' texture
            before the surface is right and lowers held-out PSNR: docs/real_data.md). Needs
            ``colour_point_grid``.
        hash_grid: the sizes of the hash-grid field (:class:`HashGridConfig`); with
            ``colour_point_grid`` its level, table and resolution sizes also shape the colour
            head's grid.
    """

    encoding: str = "fourier"
    hidden_size: int = 128
    n_blocks: int = 5
    n_frequencies: int = 6
    field_type: str = "occupancy"
    fourier_anneal_steps: int = 0
    geometric_init_radius: Optional[float] = None
    geometric_init_sharpness: float = 10.0
    colour: str = "texture"
    colour_hidden_size: int = 128
    colour_n_layers: int = 4
    colour_view_frequencies: int = 4
    colour_point_frequencies: int = 0
    colour_point_grid: bool = False
    colour_grid_max_resolution: Optional[int] = None
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)

    def __post_init__(self) -> None:
        from ..fields.appearance import COLOUR_MODELS

        if self.encoding not in ENCODINGS:
            raise ValueError(f"model.encoding must be one of {ENCODINGS}, got {self.encoding!r}.")

        positive("model.hidden_size", self.hidden_size)
        if self.n_blocks < 0 or self.n_frequencies < 0:
            raise ValueError("model.n_blocks and model.n_frequencies must be >= 0.")
        if self.field_type not in FIELD_TYPES:
            raise ValueError(
                f"model.field_type must be one of {FIELD_TYPES}, got {self.field_type!r}."
            )
        _check_geometry_model(self)
        if self.colour not in COLOUR_MODELS:
            raise ValueError(f"model.colour must be one of {COLOUR_MODELS}, got {self.colour!r}.")
        positive("model.colour_hidden_size", self.colour_hidden_size)
        positive("model.colour_n_layers", self.colour_n_layers)
        if self.colour_view_frequencies < 0 or self.colour_point_frequencies < 0:
            raise ValueError(
                "model.colour_view_frequencies and model.colour_point_frequencies must be >= 0."
            )
        if self.colour_point_grid and self.colour != "view_dependent":
            raise ValueError(
                "model.colour_point_grid needs model.colour: view_dependent (the texture head "
                f"takes no grid), got model.colour={self.colour!r}."
            )
        if self.colour_grid_max_resolution is not None:
            if not self.colour_point_grid:
                raise ValueError(
                    "model.colour_grid_max_resolution needs model.colour_point_grid: true (it "
                    "sizes the colour head's grid)."
                )
            if self.colour_grid_max_resolution < self.hash_grid.base_resolution:
                raise ValueError(
                    "model.colour_grid_max_resolution must be >= model.hash_grid.base_resolution "
                    f"({self.hash_grid.base_resolution}), got {self.colour_grid_max_resolution}."
                )


def _check_geometry_model(model: ModelConfig) -> None:
    """The annealing and sphere-initialisation options of ``model``."""
    if model.fourier_anneal_steps < 0:
        raise ValueError(
            f"model.fourier_anneal_steps must be >= 0, got {model.fourier_anneal_steps}."
        )
    if model.fourier_anneal_steps > 0 and model.encoding == "fourier" and model.n_frequencies == 0:
        raise ValueError("model.fourier_anneal_steps > 0 needs model.n_frequencies > 0.")
    radius = model.geometric_init_radius
    if radius is not None and not (math.isfinite(radius) and 0 < radius < 0.5):
        raise ValueError(
            f"model.geometric_init_radius must lie in (0, 0.5) (the unit cube), got {radius}."
        )
    if not (math.isfinite(model.geometric_init_sharpness) and model.geometric_init_sharpness > 0):
        raise ValueError(
            "model.geometric_init_sharpness must be positive, got "
            f"{model.geometric_init_sharpness}."
        )


@dataclass
class TrainConfig(BaseTrainConfig):
    """
    The training loop: the keys of :class:`dvr_plugin.engine.config.BaseTrainConfig`
    (``iterations`` 2000, ``rays_per_image``, ``sampling``, ``foreground_fraction``,
    ``step_milestones`` {0: 16, 1000: 32}, ``n_secant_steps``, ``time_budget_s``) and:

    Members:
        images_per_batch: B, images drawn (without replacement) per step.
        continuous_pixels: uniform positions inside pixels instead of pixel centres.
        cuda_graphs: replay the secant refinement (and, with ``occupancy_grid``, the march's
            rounds) as CUDA graphs on a GPU (``SecantRaysampler(cuda_graphs=True)``;
            docs/performance.md); ignored on a CPU.
        occupancy_grid: cells per side of an occupancy grid that skips empty space in the
            march (:class:`dvr_plugin.accel.occupancy_grid.OccupancyGrid`); 0 = no grid.
        grid_refresh_every: steps between refreshes of the grid from the field (the first
            step, also after a resume, refreshes every cell).
        grid_refresh_fraction: the share of cells each refresh re-evaluates (chosen at
            random), in (0, 1].
        refine_cameras: learn a rigid correction of each training camera with the field
            (:class:`dvr_plugin.training.camera_refinement.CameraRefinement`), through the
            renderer's camera gradients.
        camera_lr: the learning rate of those corrections (radians and fitting-frame units).
        camera_refine_after: the step from which the corrections are learnt and applied
            (before it the data's cameras are used as they are, while the coarse shape forms).
        camera_anchor: after every step, take the common rigid motion of all corrections out
            (:meth:`~dvr_plugin.training.camera_refinement.CameraRefinement.remove_common_motion`):
            the images cannot tell it from a motion of the object, so without the anchor the
            cameras and the field may drift together (on by default; docs/real_data.md).
    """

    images_per_batch: int = 4
    continuous_pixels: bool = False
    cuda_graphs: bool = False
    occupancy_grid: int = 0
    grid_refresh_every: int = 16
    grid_refresh_fraction: float = 0.25
    refine_cameras: bool = False
    camera_lr: float = 1e-4
    camera_refine_after: int = 0
    camera_anchor: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.camera_refine_after < 0:
            raise ValueError(
                f"train.camera_refine_after must be >= 0, got {self.camera_refine_after}."
            )
        if not (self.camera_lr > 0 and math.isfinite(self.camera_lr)):
            raise ValueError(f"train.camera_lr must be a positive number, got {self.camera_lr}.")
        if self.occupancy_grid < 0:
            raise ValueError(
                f"train.occupancy_grid must be >= 0 (0 = no grid), got {self.occupancy_grid}."
            )
        positive("train.grid_refresh_every", self.grid_refresh_every)
        if not 0.0 < self.grid_refresh_fraction <= 1.0:
            raise ValueError(
                f"train.grid_refresh_fraction must be in (0, 1], got {self.grid_refresh_fraction}."
            )
        positive("train.images_per_batch", self.images_per_batch)

    def sampling_options(self) -> dict[str, Any]:
        """:meth:`BaseTrainConfig.sampling_options` and ``continuous`` (``continuous_pixels``)."""
        return {**super().sampling_options(), "continuous": self.continuous_pixels}


@dataclass
class LossConfig(BaseLossConfig):
    """
    Loss weights (the terms of :class:`dvr_plugin.engine.losses.LossWeights`) and loss options:
    the keys of :class:`dvr_plugin.engine.config.BaseLossConfig` (``rgb``, ``freespace``,
    ``occupancy``, ``normal``, ``normal_jitter``, ``visual_hull_depth``) and:

    A term is computed only when its weight is > 0 and its inputs exist: ``depth`` and
    ``world_point`` need depth maps, ``image_gradient`` needs ``train.sampling: patch``.

    Members:
        depth, world_point, image_gradient: weights.
        eikonal: weight of the eikonal term (SDF fields only; 0 = off).
        mask: weight of the soft mask loss (0 = off).
        sdf_beta: sharpness of the free-space / occupancy hinge for SDF fields.
        eikonal_box_points: uniform points per image in the box for the eikonal term, besides
            the surface points (0 = half of ``train.rays_per_image``, as IDR).
        mask_samples: depths per ray of the soft mask loss's search for the smallest value.
        mask_alpha_start: the soft mask's initial sharpness (``None`` = 50 for SDFs, as IDR,
            and 1 for occupancy logits).
        mask_alpha_factor, mask_alpha_every, mask_alpha_increases: the sharpness is multiplied
            by ``mask_alpha_factor`` every ``mask_alpha_every`` steps, ``mask_alpha_increases``
            times (IDR: 2, five times); ``mask_alpha_every: 0`` keeps it constant.
        volume: weight of the volume-rendering warm-up (:mod:`dvr_plugin.engine.volume_warmup`;
            0 = off): UNISURF / NeuS-style volume rendering of the same field on a few rays per
            image, which lets the photographs carve surfaces that surface rendering alone
            cannot move (concavities closed by the initial sphere).
        volume_until: the step at which the warm-up has faded out (its weight falls linearly
            from ``volume`` to ``volume * volume_floor``; 0 = constant weight, no fading).
        volume_floor: the fraction of ``volume`` kept from ``volume_until`` on, at the end
            sharpness (0 = the term is off after the warm-up).
        volume_rays: rays per image rendered as a volume (the first of each image's batch).
        volume_samples: sections per ray (N; N + 1 field evaluations with normals).
        volume_sharpness_start, volume_sharpness_end: the SDF sharpness ``s`` (1 / scene
            units), raised geometrically from start to end over the warm-up (unused for
            occupancy fields).
    """

    depth: float = 0.0
    world_point: float = 0.0
    image_gradient: float = 0.0
    sdf_beta: float = 100.0
    eikonal: float = 0.0
    mask: float = 0.0
    eikonal_box_points: int = 0
    mask_samples: int = 64
    mask_alpha_start: Optional[float] = None
    mask_alpha_factor: float = 2.0
    mask_alpha_every: int = 1000
    mask_alpha_increases: int = 5
    volume: float = 0.0
    volume_until: int = 0
    volume_floor: float = 0.0
    volume_rays: int = 512
    volume_samples: int = 64
    volume_sharpness_start: float = 20.0
    volume_sharpness_end: float = 200.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.weights()  # validates the weights
        _check_geometry_loss(self)

    def weights(self) -> LossWeights:
        """The weights as :class:`dvr_plugin.engine.losses.LossWeights`."""
        return LossWeights(**{name: getattr(self, name) for name in LossWeights.names()})


def _check_geometry_loss(loss: LossConfig) -> None:
    """The eikonal and soft-mask options of ``loss``."""
    if loss.eikonal_box_points < 0:
        raise ValueError(f"loss.eikonal_box_points must be >= 0, got {loss.eikonal_box_points}.")
    positive("loss.mask_samples", loss.mask_samples)
    start = loss.mask_alpha_start
    if start is not None and not (math.isfinite(start) and start > 0):
        raise ValueError(f"loss.mask_alpha_start must be positive, got {start}.")
    if not (math.isfinite(loss.mask_alpha_factor) and loss.mask_alpha_factor >= 1):
        raise ValueError(f"loss.mask_alpha_factor must be >= 1, got {loss.mask_alpha_factor}.")
    if loss.mask_alpha_every < 0 or loss.mask_alpha_increases < 0:
        raise ValueError("loss.mask_alpha_every and loss.mask_alpha_increases must be >= 0.")
    if loss.volume_until < 0:
        raise ValueError(f"loss.volume_until must be >= 0, got {loss.volume_until}.")
    if not (math.isfinite(loss.volume_floor) and 0.0 <= loss.volume_floor <= 1.0):
        raise ValueError(f"loss.volume_floor must lie in [0, 1], got {loss.volume_floor}.")
    positive("loss.volume_rays", loss.volume_rays)
    positive("loss.volume_samples", loss.volume_samples)
    for name in ("volume_sharpness_start", "volume_sharpness_end"):
        value = getattr(loss, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"loss.{name} must be positive, got {value}.")


@dataclass
class EvalConfig(BaseEvalConfig):
    """
    Validation, logging, checkpoints and final outputs: the keys of
    :class:`dvr_plugin.engine.config.BaseEvalConfig` (``validate_every`` 500,
    ``checkpoint_every`` 500, ``log_every``, ``n_steps``, ``mesh_resolution`` 0 = no mesh and
    no 3D metrics, ``mesh_points``, ``tensorboard``) and:

    Members:
        max_views: the most held-out views in a validation grid.
        turntable_frames: frames of the final turntable GIF (0 = none).
        turntable_size: its resolution (pixels per side; 0 = the data's image height).
    """

    max_views: int = 4
    turntable_frames: int = 36
    turntable_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("turntable_frames", "turntable_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}.")
        positive("eval.max_views", self.max_views)


@dataclass
class FitConfig(BaseConfig):
    """
    Everything a fit needs (see the module docstring for the YAML form): the top-level keys of
    :class:`dvr_plugin.engine.config.BaseConfig` (``seed``, ``device``, ``background``,
    ``device_overrides``) and:

    Members:
        data, model, optim, train, loss, eval: the sections.
        mixed_precision: run the network under ``torch.autocast`` in bfloat16 on CUDA (ignored
            on CPU).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss.eikonal > 0 and self.model.field_type != "sdf":
            raise ValueError(
                "loss.eikonal > 0 needs model.field_type=sdf (the eikonal term asks for a "
                "unit-length gradient, which only signed distances have)."
            )


# ---------------------------------------------------------------------------------------------
# The loader of dvr_plugin.engine.config with the keys of FitConfig


def load_config(
    path: Optional[str] = None,
    overrides: Iterable[Override] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> FitConfig:
    """
    Read a YAML configuration and apply ``key=value`` overrides
    (:func:`dvr_plugin.engine.config.load_config`).

    Args:
        path: a YAML file (local path or iopath URI); ``None`` starts from ``base``.
        overrides: strings ``dotted.key=value``, values parsed as YAML, applied in order.
        base: a nested dict applied before the file (e.g. the config stored in a checkpoint).

    Returns:
        FitConfig.
    """
    return engine_config.load_config(FitConfig, path, overrides, base=base)


def load_config_data(
    path: Optional[str] = None,
    overrides: Iterable[Override] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> dict:
    """The nested dict behind :func:`load_config`, keys and types checked, values not."""
    return engine_config.config_data(FitConfig, path, overrides, base=base)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[Override]) -> dict:
    """A nested config dict with ``dotted.key=value`` overrides applied (a new dict)."""
    return engine_config.config_data(FitConfig, data, overrides)


def apply_device_overrides(data: Mapping[str, Any], device: torch.device) -> dict:
    """A config dict with the ``device_overrides`` of ``device``'s type applied."""
    return engine_config.apply_device_overrides(FitConfig, data, device)


def config_keys() -> list[str]:
    """Every dotted key a :class:`FitConfig` accepts (for help texts)."""
    return engine_config.config_keys(FitConfig)
