"""
The fitting configuration: nested dataclasses, read from YAML and ``key=value`` overrides.

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
lists and mappings work. Unknown keys and values of the wrong type raise ``ValueError`` naming
the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..engine.losses import LossWeights
from ..engine.sampling import SAMPLING_MODES
from ..engine.schedule import StepSchedule
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
        _positive("data.downscale", self.downscale)
        _positive("data.image_size", self.image_size)
        _positive("data.supersample", self.supersample)
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
class ModelConfig:
    """
    The field (:class:`dvr_plugin.fields.field.OccupancyTextureField`).

    Members:
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
    """

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

    def __post_init__(self) -> None:
        from ..fields.appearance import COLOUR_MODELS

        _positive("model.hidden_size", self.hidden_size)
        if self.n_blocks < 0 or self.n_frequencies < 0:
            raise ValueError("model.n_blocks and model.n_frequencies must be >= 0.")
        if self.field_type not in FIELD_TYPES:
            raise ValueError(
                f"model.field_type must be one of {FIELD_TYPES}, got {self.field_type!r}."
            )
        _check_geometry_model(self)
        if self.colour not in COLOUR_MODELS:
            raise ValueError(f"model.colour must be one of {COLOUR_MODELS}, got {self.colour!r}.")
        _positive("model.colour_hidden_size", self.colour_hidden_size)
        _positive("model.colour_n_layers", self.colour_n_layers)
        if self.colour_view_frequencies < 0 or self.colour_point_frequencies < 0:
            raise ValueError(
                "model.colour_view_frequencies and model.colour_point_frequencies must be >= 0."
            )


def _check_geometry_model(model: ModelConfig) -> None:
    """The annealing and sphere-initialisation options of ``model``."""
    if model.fourier_anneal_steps < 0:
        raise ValueError(
            f"model.fourier_anneal_steps must be >= 0, got {model.fourier_anneal_steps}."
        )
    if model.fourier_anneal_steps > 0 and model.n_frequencies == 0:
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
class OptimConfig:
    """
    Adam with a step-decay learning rate.

    Members:
        lr: initial learning rate.
        lr_milestones: iterations at which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: the decay factor.
        weight_decay: Adam's (L2) weight decay.
        grad_clip: clip the gradient norm to this value (0 = off).
    """

    lr: float = 5e-4
    lr_milestones: list = field(default_factory=list)
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optim.lr must be a positive number, got {self.lr}.")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"optim.lr_gamma must lie in (0, 1], got {self.lr_gamma}.")
        milestones = [int(m) for m in self.lr_milestones]
        if milestones != sorted(milestones) or any(m < 1 for m in milestones):
            raise ValueError(
                f"optim.lr_milestones must be increasing iterations >= 1, got {milestones}."
            )
        self.lr_milestones = milestones
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.weight_decay and optim.grad_clip must be >= 0.")


@dataclass
class TrainConfig:
    """
    The training loop.

    Members:
        iterations: total optimisation steps.
        images_per_batch: B, images drawn (without replacement) per step.
        rays_per_image: R, pixels sampled per image.
        sampling: pixel sampling mode (:data:`dvr_plugin.engine.sampling.SAMPLING_MODES`).
        foreground_fraction: foreground share for ``"foreground_balanced"``.
        continuous_pixels: uniform positions inside pixels instead of pixel centres.
        step_milestones: ``{iteration: n_steps}`` marching schedule
            (:class:`dvr_plugin.engine.schedule.StepSchedule`).
        n_secant_steps: secant refinement steps.
        time_budget_s: stop (and save) once training took this many seconds (``None`` = no
            limit). Used by the demo so it ends in time on slow machines; a run cut short this
            way is not reproducible step for step.
        cuda_graphs: replay the secant refinement (and, with ``occupancy_grid``, the march's
            rounds) as CUDA graphs on a GPU (``SecantRaysampler(cuda_graphs=True)``;
            docs/performance.md); ignored on a CPU.
        occupancy_grid: cells per side of an occupancy grid that skips empty space in the
            march (:class:`dvr_plugin.accel.occupancy_grid.OccupancyGrid`); 0 = no grid.
        grid_refresh_every: steps between refreshes of the grid from the field (the first
            step, also after a resume, refreshes every cell).
        grid_refresh_fraction: the share of cells each refresh re-evaluates (chosen at
            random), in (0, 1].
    """

    iterations: int = 2000
    images_per_batch: int = 4
    rays_per_image: int = 1024
    sampling: str = "uniform"
    foreground_fraction: float = 0.5
    continuous_pixels: bool = False
    step_milestones: dict = field(default_factory=lambda: {0: 16, 1000: 32})
    n_secant_steps: int = 8
    time_budget_s: Optional[float] = None
    cuda_graphs: bool = False
    occupancy_grid: int = 0
    grid_refresh_every: int = 16
    grid_refresh_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"train.iterations must be >= 0, got {self.iterations}.")
        if self.occupancy_grid < 0:
            raise ValueError(
                f"train.occupancy_grid must be >= 0 (0 = no grid), got {self.occupancy_grid}."
            )
        _positive("train.grid_refresh_every", self.grid_refresh_every)
        if not 0.0 < self.grid_refresh_fraction <= 1.0:
            raise ValueError(
                "train.grid_refresh_fraction must be in (0, 1], got "
                f"{self.grid_refresh_fraction}."
            )
        _positive("train.images_per_batch", self.images_per_batch)
        _positive("train.rays_per_image", self.rays_per_image)
        check_rays_and_marching(self)


def check_rays_and_marching(train: Any) -> None:
    """
    Check the pixel-sampling and marching fields a ``train`` section shares with
    :class:`TrainConfig`: ``sampling``, ``rays_per_image`` (patches of 4), ``foreground_fraction``,
    ``step_milestones`` (normalised in place), ``n_secant_steps`` and ``time_budget_s``.

    Raises:
        ValueError: naming the first invalid key.
    """
    if train.sampling not in SAMPLING_MODES:
        raise ValueError(
            f"train.sampling must be one of {SAMPLING_MODES}, got {train.sampling!r}."
        )
    if train.sampling == "patch" and train.rays_per_image % 4 != 0:
        raise ValueError(
            "train.sampling='patch' needs train.rays_per_image divisible by 4, got "
            f"{train.rays_per_image}."
        )
    if not 0.0 <= train.foreground_fraction <= 1.0:
        raise ValueError(
            f"train.foreground_fraction must lie in [0, 1], got {train.foreground_fraction}."
        )
    train.step_milestones = StepSchedule(train.step_milestones).milestones
    if train.n_secant_steps < 0:
        raise ValueError(f"train.n_secant_steps must be >= 0, got {train.n_secant_steps}.")
    if train.time_budget_s is not None and not train.time_budget_s > 0:
        raise ValueError(f"train.time_budget_s must be > 0, got {train.time_budget_s}.")


@dataclass
class LossConfig:
    """
    Loss weights (the terms of :class:`dvr_plugin.engine.losses.LossWeights`) and loss options.

    A term is computed only when its weight is > 0 and its inputs exist: ``depth`` and
    ``world_point`` need depth maps, ``image_gradient`` needs ``train.sampling: patch``.

    Members:
        rgb, depth, world_point, freespace, occupancy, normal, image_gradient: weights.
        eikonal: weight of the eikonal term (SDF fields only; 0 = off).
        mask: weight of the soft mask loss (0 = off).
        normal_jitter: side of the cube of offsets of the normal-smoothness neighbours.
        visual_hull_depth: with depth maps, place occupancy points at the true depth.
        sdf_beta: sharpness of the free-space / occupancy hinge for SDF fields.
        eikonal_box_points: uniform points per image in the box for the eikonal term, besides
            the surface points (0 = half of ``train.rays_per_image``, as IDR).
        mask_samples: depths per ray of the soft mask loss's search for the smallest value.
        mask_alpha_start: the soft mask's initial sharpness (``None`` = 50 for SDFs, as IDR,
            and 1 for occupancy logits).
        mask_alpha_factor, mask_alpha_every, mask_alpha_increases: the sharpness is multiplied
            by ``mask_alpha_factor`` every ``mask_alpha_every`` steps, ``mask_alpha_increases``
            times (IDR: 2, five times); ``mask_alpha_every: 0`` keeps it constant.
    """

    rgb: float = 1.0
    depth: float = 0.0
    world_point: float = 0.0
    freespace: float = 1.0
    occupancy: float = 1.0
    normal: float = 0.05
    image_gradient: float = 0.0
    normal_jitter: float = 1e-3
    visual_hull_depth: bool = True
    sdf_beta: float = 100.0
    eikonal: float = 0.0
    mask: float = 0.0
    eikonal_box_points: int = 0
    mask_samples: int = 64
    mask_alpha_start: Optional[float] = None
    mask_alpha_factor: float = 2.0
    mask_alpha_every: int = 1000
    mask_alpha_increases: int = 5

    def __post_init__(self) -> None:
        self.weights()  # validates the weights
        _check_geometry_loss(self)
        if not self.normal_jitter >= 0:
            raise ValueError(f"loss.normal_jitter must be >= 0, got {self.normal_jitter}.")

    def weights(self) -> LossWeights:
        """The weights as :class:`dvr_plugin.engine.losses.LossWeights`."""
        return LossWeights(**{name: getattr(self, name) for name in LossWeights.names()})


def _check_geometry_loss(loss: LossConfig) -> None:
    """The eikonal and soft-mask options of ``loss``."""
    if loss.eikonal_box_points < 0:
        raise ValueError(f"loss.eikonal_box_points must be >= 0, got {loss.eikonal_box_points}.")
    _positive("loss.mask_samples", loss.mask_samples)
    start = loss.mask_alpha_start
    if start is not None and not (math.isfinite(start) and start > 0):
        raise ValueError(f"loss.mask_alpha_start must be positive, got {start}.")
    if not (math.isfinite(loss.mask_alpha_factor) and loss.mask_alpha_factor >= 1):
        raise ValueError(f"loss.mask_alpha_factor must be >= 1, got {loss.mask_alpha_factor}.")
    if loss.mask_alpha_every < 0 or loss.mask_alpha_increases < 0:
        raise ValueError("loss.mask_alpha_every and loss.mask_alpha_increases must be >= 0.")


@dataclass
class EvalConfig:
    """
    Validation, logging, checkpoints and final outputs.

    Members:
        validate_every: render the held-out views every this many steps (0 = only at the end).
        checkpoint_every: save the checkpoint every this many steps (0 = only at the end).
        log_every: write a row of the training CSV every this many steps.
        n_steps: marching steps of validation and final renders.
        max_views: the most held-out views in a validation grid.
        tensorboard: also log to TensorBoard when ``torch.utils.tensorboard`` imports.
        turntable_frames: frames of the final turntable GIF (0 = none).
        turntable_size: its resolution (pixels per side; 0 = the data's image height).
        mesh_resolution: grid of the final mesh extraction (0 = no mesh, no 3D metrics).
        mesh_points: surface samples per mesh for Chamfer / F-score.
    """

    validate_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    n_steps: int = 64
    max_views: int = 4
    tensorboard: bool = True
    turntable_frames: int = 36
    turntable_size: int = 0
    mesh_resolution: int = 0
    mesh_points: int = 20000

    def __post_init__(self) -> None:
        for name in ("validate_every", "checkpoint_every", "turntable_frames", "turntable_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}.")
        _positive("eval.log_every", self.log_every)
        _positive("eval.max_views", self.max_views)
        _positive("eval.mesh_points", self.mesh_points)
        if self.n_steps < 2:
            raise ValueError(f"eval.n_steps must be >= 2, got {self.n_steps}.")
        if self.mesh_resolution < 0:
            raise ValueError(f"eval.mesh_resolution must be >= 0, got {self.mesh_resolution}.")


@dataclass
class FitConfig:
    """
    Everything a fit needs (see the module docstring for the YAML form).

    Members:
        data, model, optim, train, loss, eval: the sections.
        seed: seeds the model initialisation and every random draw of the training loop.
        device: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
        mixed_precision: run the network under ``torch.autocast`` in bfloat16 on CUDA (ignored
            on CPU).
        background: RGB behind the object in renders (and in rendered training data).
        device_overrides: ``{device type: {dotted key: value}}`` applied by
            :func:`resolve_config` when the device resolves to that type (e.g. larger settings
            on ``cuda``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = False
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    device_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_top_level(self)
        if self.loss.eikonal > 0 and self.model.field_type != "sdf":
            raise ValueError(
                "loss.eikonal > 0 needs model.field_type=sdf (the eikonal term asks for a "
                "unit-length gradient, which only signed distances have)."
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML / JSON / checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitConfig:
        """Build from a nested dict; unknown keys and wrong types raise ``ValueError``."""
        return build_config(cls, data)


def check_top_level(config: Any) -> None:
    """
    Check the top-level fields every configuration (:class:`FitConfig`, the single-view one)
    shares: ``background`` (an RGB triple, made floats in place), ``device`` (``"auto"`` or a
    torch device string) and ``device_overrides`` (mappings).

    Raises:
        ValueError: naming the invalid key.
    """
    if len(config.background) != 3:
        raise ValueError(f"background must be an RGB triple, got {config.background!r}.")
    config.background = [float(v) for v in config.background]
    if config.device != "auto":
        try:
            torch.device(config.device)
        except RuntimeError as error:
            raise ValueError(f"device {config.device!r} is not a torch device.") from error
    for kind, overrides in config.device_overrides.items():
        if not isinstance(overrides, Mapping):
            raise ValueError(
                f"device_overrides.{kind} must map dotted keys to values, got {overrides!r}."
            )


# ---------------------------------------------------------------------------------------------
# Loading, overrides, device


def load_config(
    path: Optional[str] = None, overrides: Iterable[str] = (), *, base: Optional[dict] = None
) -> FitConfig:
    """
    Read a YAML configuration and apply ``key=value`` overrides.

    Args:
        path: a YAML file (local path or iopath URI); ``None`` starts from ``base``.
        overrides: strings ``dotted.key=value``, values parsed as YAML, applied in order.
        base: a nested dict used instead of a file (e.g. the config stored in a checkpoint).

    Returns:
        FitConfig.
    """
    return FitConfig.from_dict(load_config_data(path, overrides, base=base))


def load_config_data(
    path: Optional[str] = None,
    overrides: Iterable[str] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
    root: type = FitConfig,
) -> dict:
    """
    The nested dict behind :func:`load_config`: ``base`` (or ``{}``), the YAML file merged in
    section by section, then the overrides (checked against ``root``); keys set by overrides win
    over the same keys in ``device_overrides``. ``root`` is the configuration dataclass the
    keys belong to (another task's configuration, e.g. single-view, shares this reader).
    """
    import yaml

    from ..io import open_path

    data: dict = {} if base is None else _deep_copy(base)
    if path is not None:
        with open_path(path, "r") as handle:
            loaded = yaml.safe_load(handle)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path} must hold a mapping of config sections, got {loaded!r}.")
        data = merge_config_data(data, loaded, root=root)
    overrides = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    data = apply_overrides(data, overrides, root=root)
    # What the user sets explicitly wins over the per-device defaults of the file.
    for parts, _ in overrides:
        if parts and parts[0] != "device_overrides":
            drop_device_override(data, list(parts), root=root)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.iterations=200"`` -> ``(["train", "iterations"], 200)`` (value parsed as YAML)."""
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"An override must look like section.key=value, got {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"An override needs a dotted key before '=', got {text!r}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"Cannot parse the value of override {text!r}: {error}") from error
    return key.split("."), value


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], *, root: type = FitConfig
) -> dict:
    """
    Apply ``dotted.key=value`` overrides to a nested config dict (a new dict is returned).

    Keys are checked against ``root`` (:class:`FitConfig`); a key that names no field raises
    ``ValueError`` with the known keys of that section. Mapping-valued fields (``loader_args``,
    ``step_milestones``, ``device_overrides``) accept deeper keys.
    """
    out = _deep_copy(dict(data))
    for text in overrides:
        parts, value = parse_override(text) if isinstance(text, str) else text
        check_key(parts, root=root)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ValueError(f"Override {'.'.join(parts)}: {part} is not a section.")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other strings as torch devices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available.")
    return resolved


def resolve_config(config: FitConfig) -> tuple[FitConfig, torch.device]:
    """
    Resolve the device and apply the ``device_overrides`` of its type.

    Returns:
        ``(config, device)``: a new config (``device`` set to the resolved device string and
        its overrides applied) and the device.
    """
    device = resolve_device(config.device)
    return FitConfig.from_dict(apply_device_overrides(config.to_dict(), device)), device


def apply_device_overrides(
    data: Mapping[str, Any], device: torch.device, *, root: type = FitConfig
) -> dict:
    """
    A config dict with the ``device_overrides`` of ``device``'s type applied (keys checked
    against ``root``) and ``device`` set to the device string (a new dict is returned).
    """
    extra = data.get("device_overrides", {}).get(device.type, {})
    out = apply_overrides(data, flatten_overrides(extra, root=root), root=root)
    out["device"] = str(device)
    return out


def config_keys() -> list[str]:
    """Every dotted key a config accepts (for help texts)."""
    keys = []
    for section in dataclasses.fields(FitConfig):
        sub = _dataclass_of(section)
        if sub is None:
            keys.append(section.name)
        else:
            keys.extend(f"{section.name}.{f.name}" for f in dataclasses.fields(sub))
    return keys


# ---------------------------------------------------------------------------------------------
# Helpers


def _positive(name: str, value: int) -> None:
    if not value >= 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data


def merge_config_data(base: dict, update: Mapping, *, root: type = FitConfig) -> dict:
    """
    ``base`` updated with ``update`` (a new dict): the sections of ``root`` (the dataclass
    fields of :class:`FitConfig`) are merged key by key, any other key is replaced.
    """
    out = dict(base)
    sections = {f.name for f in dataclasses.fields(root) if _dataclass_of(f, root) is not None}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key in sections:
            out[key] = merge_config_data(dict(out[key]), value, root=root)
        else:
            out[key] = _deep_copy(value)
    return out


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(f: dataclasses.Field, root: type = FitConfig) -> Optional[type]:
    hint = _type_hints(root).get(f.name)
    return hint if dataclasses.is_dataclass(hint) else None


def flatten_overrides(
    overrides: Mapping[str, Any], *, root: type = FitConfig
) -> list[tuple[list[str], Any]]:
    """
    ``{"model.hidden_size": 256}`` or ``{"model": {"hidden_size": 256}}`` (or a mix) as a list
    of ``(key parts, value)``; nesting is followed only through the sections of ``root``, so
    mapping values such as ``train.step_milestones`` stay whole.
    """
    out: list[tuple[list[str], Any]] = []

    def walk(prefix: list[str], value: Any) -> None:
        cls: Any = root
        for part in prefix:
            hint = _type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
            cls = hint if dataclasses.is_dataclass(hint) else None
        if isinstance(value, Mapping) and (not prefix or cls is not None):
            for key, sub in value.items():
                walk(prefix + str(key).split("."), sub)
        else:
            out.append((prefix, value))

    walk([], overrides)
    return out


def drop_device_override(data: dict, parts: list[str], *, root: type = FitConfig) -> None:
    """Remove the key ``parts`` (and anything below it) from every ``device_overrides`` entry."""
    for kind, overrides in list((data.get("device_overrides") or {}).items()):
        if not isinstance(overrides, Mapping):
            continue
        flat = flatten_overrides(overrides, root=root)
        kept = [(key, value) for key, value in flat if key[: len(parts)] != parts]
        if len(kept) != len(flat):
            data["device_overrides"][kind] = {".".join(key): value for key, value in kept}


def check_key(parts: Sequence[str], *, root: type = FitConfig) -> None:
    """
    Raise ``ValueError`` unless ``parts`` names a field of ``root`` (or lies inside a
    mapping-valued field).
    """
    cls: Any = root
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return  # inside a mapping-valued field: free keys
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ValueError(
                f"Unknown config key {'.'.join(parts)!r}: {where} has keys {names}."
            )
        hint = _type_hints(cls)[part]
        cls = hint if dataclasses.is_dataclass(hint) else None
        if cls is None and depth < len(parts) - 1:
            origin = typing.get_origin(hint) or hint
            if origin is not dict:
                raise ValueError(
                    f"Unknown config key {'.'.join(parts)!r}: {'.'.join(parts[: depth + 1])} "
                    "is a value, not a section."
                )
            return


def build_config(cls: type, data: Any, *, prefix: str = "") -> Any:
    """
    The configuration dataclass ``cls`` from a nested dict: sections built recursively, values
    checked and converted to the annotated types (:func:`coerce_value`); unknown keys and
    wrong types raise ``ValueError`` naming the key (``prefix`` is the dotted path of ``cls``).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"Config section {prefix or 'top level'} must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ValueError(
            f"Unknown config key(s) {[prefix + str(k) for k in unknown]}: {where} has keys "
            f"{list(fields)}."
        )
    hints = _type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(hint, value, prefix=key + ".")
        else:
            kwargs[name] = coerce_value(value, hint, key)
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"Invalid config section {prefix or 'top level'}: {error}") from error


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """
    Check / convert a YAML value to the annotated type of a config field (``key`` names it in
    errors). A ``Union`` takes the first of its types that accepts the value.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:
            try:
                return coerce_value(value, option, key)
            except ValueError:
                continue
        return coerce_value(value, inner[-1], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"Config key {key} must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"Config key {key} must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"Config key {key} must be an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"Config key {key} must be a number, got {value!r}.")
        try:
            return float(value)  # YAML reads "1e-4" (no dot) as a string
        except ValueError as error:
            raise ValueError(f"Config key {key} must be a number, got {value!r}.") from error
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"Config key {key} must be a string, got {value!r}.")
    if hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ValueError(f"Config key {key} must be a list, got {value!r}.")
    if hint is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"Config key {key} must be a mapping, got {value!r}.")
    return value
