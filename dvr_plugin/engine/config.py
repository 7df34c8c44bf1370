"""
What the configurations of every task share: typed dataclass bases (the optimiser, the common
``train`` / ``loss`` / ``eval`` keys, the top-level keys) and one loader built on OmegaConf
structured configs.

A task's configuration is a dataclass whose dataclass-typed fields are its sections::

    @dataclass
    class MyConfig(BaseConfig):
        optim: OptimConfig = field(default_factory=OptimConfig)
        train: MyTrainConfig = field(default_factory=MyTrainConfig)

    config = load_config(MyConfig, "my.yaml", ["train.iterations=200", "optim.lr=1e-3"])

Layers are applied in order: the defaults of the dataclasses, ``base`` (a nested dict, e.g. the
configuration stored in a checkpoint), the file (a YAML path or a nested dict), then the
``dotted.key=value`` overrides (values parsed as YAML). A section merges key by key; any other
value replaces what was there, mappings included (``train.step_milestones={0: 8}`` leaves one
milestone). OmegaConf checks and converts each value to the annotated type of its key (the
YAML string ``1e-4`` becomes a float); the dataclasses' ``__post_init__`` then check the values
together. Every problem is one ``ValueError`` naming the key.

``device_overrides: {cuda: {model.hidden_size: 256}}`` (dotted or nested keys) holds settings
applied by :func:`resolve_config` once the device is known; their keys are checked on load,
whatever the machine. A key given as an override wins over the same key there.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar, Union

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .sampling import BALANCED_MODES, PATCH_MODES, SAMPLING_MODES
from .schedule import StepSchedule

C = TypeVar("C", bound="BaseConfig")
Override = Union[str, tuple[Sequence[str], Any]]


# ---------------------------------------------------------------------------------------------
# The shared dataclasses


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
        encoding_lr: learning rate of the hash-grid tables (``None``: ``lr``). Instant-NGP
            trains its tables at about 1e-2 without weight decay: a table entry only sees the
            points of its cells, so it learns slowly at a decoder's rate.
    """

    lr: float = 5e-4
    lr_milestones: list = field(default_factory=list)
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    encoding_lr: Optional[float] = None

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optim.lr must be a positive number, got {self.lr}.")
        if self.encoding_lr is not None and not (
            self.encoding_lr > 0 and math.isfinite(self.encoding_lr)
        ):
            raise ValueError(
                f"optim.encoding_lr must be a positive number or null, got {self.encoding_lr}."
            )
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
class BaseTrainConfig:
    """
    The keys of the ``train`` section every task has.

    Members:
        iterations: total optimisation steps.
        rays_per_image: R, pixels sampled per image.
        sampling: pixel sampling mode (:data:`dvr_plugin.engine.sampling.SAMPLING_MODES`);
            the patch modes need ``rays_per_image`` divisible by 4.
        foreground_fraction: foreground share of the balanced modes (of the rays for
            ``"foreground_balanced"``, of the patches for ``"foreground_balanced_patch"``).
        foreground_at_least: make ``foreground_fraction`` a floor: images whose mask covers
            more of the frame keep their own share.
        boundary_fraction: the balanced modes' share of rays (patches) drawn from the band
            within ``boundary_width`` pixels of the masks' edges (0 = none).
        boundary_width: that band's half-width in pixels.
        step_milestones: ``{iteration: n_steps}`` marching schedule
            (:class:`dvr_plugin.engine.schedule.StepSchedule`; normalised on load).
        n_secant_steps: secant refinement steps.
        time_budget_s: stop (and save) once training took this many seconds (``None`` = no
            limit); a run cut short this way is not reproducible step for step.
        schedule_by_time: run the step-indexed schedules (learning-rate milestones, marching
            steps, coarse-to-fine annealing, warm-ups, the soft mask's sharpness, camera
            refinement's start) on the clock: they read the larger of the step and
            ``iterations x seconds / time_budget_s``, so the planned schedule reaches its end
            within the budget however fast the machine steps (needs ``time_budget_s``).
        lr_by_time: the same for the learning-rate milestones alone: the rate decays at the
            planned share of ``time_budget_s`` (milestone / ``iterations``), while the other
            schedules follow the steps (needs ``time_budget_s``).
    """

    iterations: int = 2000
    rays_per_image: int = 1024
    sampling: str = "uniform"
    foreground_fraction: float = 0.5
    foreground_at_least: bool = False
    boundary_fraction: float = 0.0
    boundary_width: int = 2
    step_milestones: dict = field(default_factory=lambda: {0: 16, 1000: 32})
    n_secant_steps: int = 8
    time_budget_s: Optional[float] = None
    schedule_by_time: bool = False
    lr_by_time: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"train.iterations must be >= 0, got {self.iterations}.")
        positive("train.rays_per_image", self.rays_per_image)
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(
                f"train.sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}."
            )
        if self.sampling in PATCH_MODES and self.rays_per_image % 4 != 0:
            raise ValueError(
                f"train.sampling={self.sampling!r} needs train.rays_per_image divisible by 4, "
                f"got {self.rays_per_image}."
            )
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(
                f"train.foreground_fraction must lie in [0, 1], got {self.foreground_fraction}."
            )
        if not 0.0 <= self.boundary_fraction <= 1.0:
            raise ValueError(
                f"train.boundary_fraction must lie in [0, 1], got {self.boundary_fraction}."
            )
        if self.boundary_fraction > 0 and self.sampling not in BALANCED_MODES:
            raise ValueError(
                f"train.boundary_fraction needs a balanced train.sampling {BALANCED_MODES}, "
                f"got {self.sampling!r}."
            )
        if self.boundary_width < 1:
            raise ValueError(f"train.boundary_width must be >= 1, got {self.boundary_width}.")
        self.step_milestones = StepSchedule(self.step_milestones).milestones
        if self.n_secant_steps < 0:
            raise ValueError(f"train.n_secant_steps must be >= 0, got {self.n_secant_steps}.")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"train.time_budget_s must be > 0, got {self.time_budget_s}.")
        for key in ("schedule_by_time", "lr_by_time"):
            if getattr(self, key) and self.time_budget_s is None:
                raise ValueError(
                    f"train.{key} needs train.time_budget_s (the seconds the schedule is "
                    f"spread over); set one, or train.{key}=false."
                )

    def sampling_options(self) -> dict[str, Any]:
        """
        The keyword arguments of :func:`dvr_plugin.engine.sampling.sample_pixels` that this
        section sets (``n_rays``, ``mode``, ``foreground_fraction``, ``foreground_at_least``,
        ``boundary_fraction``, ``boundary_width``).
        """
        return {
            "n_rays": self.rays_per_image,
            "mode": self.sampling,
            "foreground_fraction": self.foreground_fraction,
            "foreground_at_least": self.foreground_at_least,
            "boundary_fraction": self.boundary_fraction,
            "boundary_width": self.boundary_width,
        }


@dataclass
class BaseLossConfig:
    """
    The keys of the ``loss`` section every task has (weights of
    :class:`dvr_plugin.engine.losses.LossWeights` terms and the options of those terms).

    Members:
        rgb, freespace, occupancy, normal: weights (finite, >= 0).
        normal_jitter: side of the cube of offsets of the normal-smoothness neighbours.
        visual_hull_depth: place occupancy points at the known depth (true or visual hull).
    """

    rgb: float = 1.0
    freespace: float = 1.0
    occupancy: float = 1.0
    normal: float = 0.05
    normal_jitter: float = 1e-3
    visual_hull_depth: bool = True

    def __post_init__(self) -> None:
        for name in ("rgb", "freespace", "occupancy", "normal", "normal_jitter"):
            non_negative(f"loss.{name}", getattr(self, name))


@dataclass
class BaseEvalConfig:
    """
    The keys of the ``eval`` section every task has.

    Members:
        validate_every: validate every this many steps (0 = only at the end).
        checkpoint_every: save the checkpoint every this many steps (0 = only at the end).
        log_every: write a row of the training CSV every this many steps.
        n_steps: marching steps of validation and final renders.
        mesh_resolution: grid of mesh extraction (0 = no mesh where the task allows it).
        mesh_points: surface samples per mesh for Chamfer / F-score.
        tensorboard: also log to TensorBoard when ``torch.utils.tensorboard`` imports.
    """

    validate_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    n_steps: int = 64
    mesh_resolution: int = 0
    mesh_points: int = 20000
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("validate_every", "checkpoint_every", "mesh_resolution"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}.")
        positive("eval.log_every", self.log_every)
        positive("eval.mesh_points", self.mesh_points)
        if self.n_steps < 2:
            raise ValueError(f"eval.n_steps must be >= 2, got {self.n_steps}.")


@dataclass
class BaseConfig:
    """
    The top-level keys of every task's configuration; a task adds its sections.

    Members:
        seed: seeds the model initialisation and every random draw of the training loop.
        device: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
        background: RGB behind the object in renders (made floats).
        device_overrides: ``{device type: {dotted key: value}}`` applied by
            :func:`resolve_config` when the device resolves to that type (e.g. larger settings
            on ``cuda``).
    """

    seed: int = 0
    device: str = "auto"
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    device_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.background) != 3:
            raise ValueError(f"background must be an RGB triple, got {self.background!r}.")
        self.background = [float(v) for v in self.background]
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(f"device {self.device!r} is not a torch device.") from error
        for kind, overrides in self.device_overrides.items():
            if not isinstance(overrides, Mapping):
                raise ValueError(
                    f"device_overrides.{kind} must map dotted keys to values, got {overrides!r}."
                )

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML / JSON / checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a nested dict; unknown keys and wrong types raise ``ValueError``."""
        return load_config(cls, data)


def positive(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value >= 1`` (``name``: the dotted key or argument)."""
    if not value >= 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")


def non_negative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and ``>= 0`` (``name``: the dotted key)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}.")


# ---------------------------------------------------------------------------------------------
# Loading and overrides


def load_config(
    cls: type[C],
    source: Union[str, Mapping[str, Any], None] = None,
    overrides: Iterable[Override] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> C:
    """
    The configuration ``cls`` from its defaults, ``base``, ``source`` and ``overrides``.

    Args:
        cls: the configuration dataclass (a :class:`BaseConfig`).
        source: a YAML file (local path or iopath URI) or a nested dict; ``None``: none.
        overrides: ``"dotted.key=value"`` strings (values parsed as YAML) or
            ``(key parts, value)`` pairs, applied in order. Each removes the same key from every
            ``device_overrides`` entry: what is set explicitly wins over per-device values.
        base: a nested dict applied before ``source`` (e.g. a checkpoint's configuration).

    Returns:
        An instance of ``cls`` (plain dataclasses, checked by their ``__post_init__``).

    Raises:
        ValueError: one line naming the key (unknown keys also list the valid ones).
    """
    return _export(_compose(cls, source, overrides, base=base), instantiate=True)


def config_data(
    cls: type,
    source: Union[str, Mapping[str, Any], None] = None,
    overrides: Iterable[Override] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> dict:
    """
    The nested dict behind :func:`load_config` (every key, defaults included): keys and types
    are checked, but not the ``__post_init__`` consistency checks (e.g. to read ``data.path``
    of a file whose ``data.format`` is still to be decided).
    """
    return _export(_compose(cls, source, overrides, base=base), instantiate=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """
    ``"train.iterations=200"`` -> ``(["train", "iterations"], 200)``. The value is parsed as
    YAML (numbers, ``true``, lists, mappings); ``null``, ``None`` and nothing are ``None``.
    """
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"An override must look like section.key=value, got {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"An override needs a dotted key before '=', got {text!r}.")
    if raw.strip() in ("", "None"):
        return key.split("."), None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"Cannot parse the value of override {text!r}: {reason}") from error
    return key.split("."), value


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other strings as torch devices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available.")
    return resolved


def resolve_config(config: C) -> tuple[C, torch.device]:
    """
    Resolve the device and apply the ``device_overrides`` of its type.

    Returns:
        ``(config, device)``: a new config of the same class (``device`` set to the resolved
        device string, its overrides applied) and the device.
    """
    cls = type(config)
    device = resolve_device(config.device)
    return cls.from_dict(apply_device_overrides(cls, config.to_dict(), device)), device


def apply_device_overrides(cls: type, data: Mapping[str, Any], device: torch.device) -> dict:
    """
    ``data`` with the ``device_overrides`` of ``device``'s type applied (keys checked against
    ``cls``) and ``device`` set to the device string (a new dict).
    """
    extra = (data.get("device_overrides") or {}).get(device.type) or {}
    config = _compose(cls, data, [], base=None)
    for parts, value in [*_flatten(cls, extra), (["device"], str(device))]:
        _set(config, cls, parts, value)
    return _export(config, instantiate=False)


def config_keys(cls: type) -> list[str]:
    """Every dotted key ``cls`` accepts, sections one level deep (for help texts)."""
    keys = []
    for name, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys.extend(f"{name}.{sub}" for sub in _hints(hint))
        else:
            keys.append(name)
    return keys


# ---------------------------------------------------------------------------------------------
# Helpers: the dataclass tree decides what a key is; OmegaConf checks and converts the values.


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """``{field name: type}`` of a dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _defaults(cls: type) -> DictConfig:
    """The structured config of ``cls``'s defaults (built once: copies are much cheaper)."""
    return OmegaConf.structured(cls)


def _compose(
    cls: type,
    source: Union[str, Mapping[str, Any], None],
    overrides: Iterable[Override],
    *,
    base: Optional[Mapping[str, Any]],
) -> DictConfig:
    """The structured config of ``cls`` with ``base``, ``source`` and ``overrides`` applied."""
    config = copy.deepcopy(_defaults(cls))
    for layer in (base, _read(source) if isinstance(source, str) else source):
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ValueError(f"A configuration must be a mapping of sections, got {layer!r}.")
        for parts, value in _flatten(cls, layer):
            _set(config, cls, parts, value)
    parsed = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    explicit = []
    for parts, value in parsed:
        for leaf, leaf_value in _flatten(cls, {".".join(parts): value}):
            _set(config, cls, leaf, leaf_value)
            if leaf[0] != "device_overrides":
                explicit.append(leaf)
    _check_device_overrides(config, cls, explicit)
    return config


def _read(path: str) -> Mapping[str, Any]:
    """A YAML file as a mapping (an empty file is ``{}``)."""
    import yaml

    from ..io import open_path

    with open_path(path, "r") as handle:
        loaded = yaml.safe_load(handle)
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} must hold a mapping of config sections, got {loaded!r}.")
    return loaded


def _flatten(
    cls: type, data: Mapping[str, Any], prefix: Sequence[str] = ()
) -> list[tuple[list[str], Any]]:
    """
    ``{"model": {"hidden_size": 256}}``, ``{"model.hidden_size": 256}`` or a mix as a list of
    ``(key parts, value)``. Nesting is followed through the sections of ``cls`` only, so
    mapping values (``train.step_milestones``, ``device_overrides``) stay whole.
    """
    out = []
    for key, value in data.items():
        parts = [*prefix, *str(key).split(".")]
        if dataclasses.is_dataclass(_key_type(cls, parts)) and isinstance(value, Mapping):
            out.extend(_flatten(cls, value, parts))
        else:
            out.append((parts, value))
    return out


def _key_type(cls: type, parts: Sequence[str]) -> Any:
    """
    The annotated type at ``parts`` (``None`` inside a mapping-valued key, where any key goes).

    Raises:
        ValueError: ``parts`` names no key of ``cls``, or goes below a value.
    """
    node: Any = cls
    for depth, part in enumerate(parts):
        hints = _hints(node)
        if part not in hints:
            where = ".".join(parts[:depth]) or "the top level"
            raise ValueError(
                f"Unknown config key {'.'.join(parts)!r}: {where} has keys {list(hints)}."
            )
        node = hints[part]
        if depth < len(parts) - 1 and not dataclasses.is_dataclass(node):
            if (typing.get_origin(node) or node) is not dict:
                raise ValueError(
                    f"Unknown config key {'.'.join(parts)!r}: {'.'.join(parts[: depth + 1])} "
                    "is a value, not a section."
                )
            return None
    return node


def _set(config: DictConfig, cls: type, parts: Sequence[str], value: Any) -> None:
    """Set the value of one key of :func:`_flatten`'s output (it replaces the old value)."""
    hint = _key_type(cls, parts)
    key = ".".join(parts)
    if dataclasses.is_dataclass(hint):  # a section given something else than a mapping
        if value is not None:  # (an empty section in YAML keeps the defaults)
            raise ValueError(f"Config section {key} must be a mapping, got {value!r}.")
        return
    try:
        OmegaConf.update(config, key, value, merge=False)
    except OmegaConfBaseException as error:
        if hint is None:  # inside a mapping-valued key
            raise ValueError(f"Config key {key}: {_first_line(error)}") from None
        raise ValueError(f"Config key {key} must be {_describe(hint)}, got {value!r}.") from None


def _check_device_overrides(config: DictConfig, cls: type, explicit: list[list[str]]) -> None:
    """
    Check the keys and values of every ``device_overrides`` entry against ``cls`` (on a copy),
    and drop from them the keys set explicitly (``explicit``).
    """
    entries = OmegaConf.to_container(config.device_overrides)
    scratch = copy.deepcopy(config) if entries else config
    for kind, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"device_overrides.{kind} must map dotted keys to values, got {entry!r}."
            )
        try:
            flat = _flatten(cls, entry)
            for parts, value in flat:
                _set(scratch, cls, parts, value)
        except ValueError as error:
            raise ValueError(f"device_overrides.{kind}: {error}") from None
        kept = [(p, v) for p, v in flat if not any(p[: len(e)] == e for e in explicit)]
        if len(kept) < len(flat):
            entries[kind] = {".".join(parts): value for parts, value in kept}
            OmegaConf.update(config, "device_overrides", entries, merge=False)


def _export(config: DictConfig, *, instantiate: bool) -> Any:
    """
    The dataclasses of ``config`` (their ``__post_init__`` check the values), or a plain nested
    dict; interpolations are resolved.
    """
    try:
        if instantiate:
            return OmegaConf.to_object(config)
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ValueError(f"Config key {key}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _describe(hint: Any) -> str:
    """What a value of the annotated type ``hint`` is, in words ("an integer", ...)."""
    if typing.get_origin(hint) is Union:
        args = typing.get_args(hint)
        words = " or ".join(_describe(a) for a in args if a is not type(None))
        return words + (" or null" if type(None) in args else "")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping"})
    return names.get(typing.get_origin(hint) or hint, str(hint))
