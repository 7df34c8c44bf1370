"""
The methods the time-to-quality benchmark (:mod:`integration.benchmarks.bench_fit`) trains,
each behind the same small interface: built from a :class:`~.fit_scenes.Scene`, ``step()``
takes one training step (and returns its losses), ``steps`` counts them, ``evaluate(scene)``
scores the current state (held-out images, extracted mesh) and ``settings`` describes it for
the report.

  dvr / dvr-hash / dvr-sdf / dvr-sdf-clock / dvr-dense
                              :class:`DVRMethod`, :class:`dvr_plugin.training.Trainer`
  pytorch3d-volume            :class:`VolumeMethod`, PyTorch3D's volume renderer on the same
                              network (:mod:`integration.compare.nerf_baseline`)
  nerfacc                     :class:`NGPMethod`, an Instant-NGP-style field on nerfacc or its
                              PyTorch stand-in (:mod:`integration.compare.ngp_baseline`)

:func:`method_config` gives the configuration each one trains with: the scene's, plus the
overrides that make the method (:data:`DENSE_MARCH_OVERRIDES`, :data:`HASH_GRID_OVERRIDES`,
:data:`SDF_RECIPE_OVERRIDES`).
Scores are in the units of :mod:`.fit_scenes` (PSNR in dB; mesh distances in units of the
ground truth's bounding box, in the fitting frame).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from dvr_plugin.training import FitConfig, Trainer, load_config, packaged_config, resolve_config
from integration.benchmarks.common import network_label
from integration.benchmarks.fit_scenes import (
    SCENE_CONFIGS,
    Scene,
    held_out_scores,
    score_geometry,
)
from integration.compare.harness import volume_baseline_config
from integration.compare.nerf_baseline import VolumeBaselineTrainer, rendered_surface_level
from integration.compare.ngp_baseline import NerfaccStatus, NGPBaselineTrainer, NGPSettings

METHODS = (
    "dvr",
    "dvr-hash",
    "dvr-sdf",
    "dvr-sdf-clock",
    "dvr-dense",
    "pytorch3d-volume",
    "nerfacc",
)
METHOD_LABELS = {
    "dvr": "dvr (ours: grid + CUDA graphs + TF32 on CUDA)",
    "dvr-hash": "dvr-hash (ours with the hash-grid field, model.encoding: hash_grid)",
    "dvr-sdf": "dvr-sdf (ours: hash-grid SDF + soft mask + volume warm-up)",
    "dvr-sdf-clock": "dvr-sdf-clock (dvr-sdf, its schedules spread over the time budget)",
    "dvr-dense": "dvr-dense (reference-style dense march)",
    "pytorch3d-volume": "pytorch3d-volume (ImplicitRenderer, same network)",
    "nerfacc": "nerfacc (Instant-NGP-style hash grid + OccGridEstimator)",
}
# ``dvr-dense``: no occupancy grid and no CUDA graphs (its march also runs in float32)
DENSE_MARCH_OVERRIDES = ("train.occupancy_grid=0", "train.cuda_graphs=false")
# ``dvr-hash``: the packaged config with the hash-grid field in place of the Fourier decoder, its
# tables at Instant-NGP's learning rate (everything else, the rays per step included, unchanged)
HASH_GRID_OVERRIDES = ("model.encoding=hash_grid", "optim.encoding_lr=1e-2")
# ``dvr-sdf``: the geometry of ``--config dtu``'s GPU recipe on the scene's own colour head: a
# hash-grid signed-distance field (finest level 256 cells) that starts as a sphere, the eikonal
# term, IDR's soft mask loss in place of DVR's free-space / occupancy points, and the
# volume-rendering warm-up fading out over the first ``SDF_WARM_UP_STEPS`` steps (a
# time-to-quality run is short, so the warm-up is too)
SDF_WARM_UP_STEPS = 1000
SDF_RECIPE_OVERRIDES = (
    *HASH_GRID_OVERRIDES,
    "model.hash_grid.max_resolution=256",
    "model.field_type=sdf",
    "model.geometric_init_radius=0.3",
    "loss.eikonal=0.1",
    "loss.mask=100",
    "loss.freespace=0",
    "loss.occupancy=0",
    "loss.volume=4",
    f"loss.volume_until={SDF_WARM_UP_STEPS}",
)


def method_config(scene: Scene, method: str, *, budget: Optional[float] = None) -> FitConfig:
    """
    The resolved configuration a method trains with: the scene's packaged config and
    overrides, plus the method's own (``dvr-dense``, ``dvr-hash``, ``dvr-sdf``; ``dvr-sdf-clock``
    also sets ``train.time_budget_s`` to ``budget`` seconds with ``train.schedule_by_time``);
    ``pytorch3d-volume``'s converted by :func:`integration.compare.harness.volume_baseline_config`.
    """
    extra: list[str] = []
    if method == "dvr-dense":
        extra = list(DENSE_MARCH_OVERRIDES)
    elif method == "dvr-hash":
        extra = list(HASH_GRID_OVERRIDES)
    elif method == "dvr-sdf":
        extra = list(SDF_RECIPE_OVERRIDES)
    elif method == "dvr-sdf-clock":
        if budget is None or not budget > 0:
            raise ValueError(f"dvr-sdf-clock needs a positive budget in seconds, got {budget!r}.")
        extra = [
            *SDF_RECIPE_OVERRIDES,
            f"train.time_budget_s={float(budget)}",
            "train.schedule_by_time=true",
        ]
    config = load_config(packaged_config(SCENE_CONFIGS[scene.name]), [*scene.overrides, *extra])
    config, _ = resolve_config(config)
    if method == "pytorch3d-volume":
        config = volume_baseline_config(config)
    return config


class _TrainerMethod:
    """A method whose ``trainer`` counts its steps (``trainer.step``) and takes one with
    ``trainer.train_step()``; subclasses build the trainer and score it (``evaluate``)."""

    trainer: Any

    @property
    def steps(self) -> int:
        return int(self.trainer.step)

    def step(self) -> dict[str, float]:
        return self.trainer.train_step()


class DVRMethod(_TrainerMethod):
    """
    ``dvr`` / ``dvr-hash`` / ``dvr-sdf`` / ``dvr-sdf-clock`` / ``dvr-dense``: :class:`Trainer`
    stepped by hand, scored with its validation. ``budget``: the seconds of training the run
    has (``dvr-sdf-clock`` spreads its schedules over them; each step is
    :meth:`Trainer.timed_step`, which keeps the trainer's clock as ``dvr fit`` does).
    """

    def __init__(self, scene: Scene, *, method: str, budget: Optional[float] = None) -> None:
        names = ("dvr", "dvr-hash", "dvr-sdf", "dvr-sdf-clock", "dvr-dense")
        if method not in names:
            raise ValueError(f"DVRMethod runs one of {names}, got {method!r}.")
        dense = method == "dvr-dense"
        self.config = method_config(scene, method, budget=budget)
        self.trainer = Trainer(
            config=self.config,
            train_data=scene.data.train,
            val_data=scene.data.val,
            out_dir=None,
            progress=False,
        )
        train = self.config.train
        self.settings: dict[str, Any] = {
            "occupancy_grid": train.occupancy_grid,
            "cuda_graphs": train.cuda_graphs,
            "march_precision": "auto (TF32 on CUDA)",
            "network": network_label(self.config.model),
            "field_type": self.config.model.field_type,
            "encoding": self.config.model.encoding,
            "step_milestones": {str(k): v for k, v in train.step_milestones.items()},
            "schedule_by_time": train.schedule_by_time,
        }
        if dense:  # the march in float32 (the default lets it use TF32 on CUDA)
            sampler = getattr(getattr(self.trainer, "renderer", None), "raysampler", None)
            if sampler is not None and hasattr(sampler, "march_precision"):
                sampler.march_precision = "float32"
                self.settings["march_precision"] = "float32"
            else:
                self.settings["march_precision"] = "auto (could not be set: no renderer found)"

    def step(self) -> dict[str, float]:
        return self.trainer.timed_step()  # keeps the trainer's clock, as `dvr fit` does

    def evaluate(self, scene: Scene) -> dict[str, Any]:
        scores = dict(self.trainer.validate(save_grid=False) or {})
        for key in ("step", "seconds"):
            scores.pop(key, None)
        field_module = self.trainer.field
        field_module.eval()
        try:
            scores.update(score_geometry(field_module, scene))
        finally:
            field_module.train()
        return scores


class VolumeMethod(_TrainerMethod):
    """``pytorch3d-volume``: :class:`VolumeBaselineTrainer` (occupancy as alpha)."""

    def __init__(self, scene: Scene, *, samples: int, chunk: int) -> None:
        self.config = method_config(scene, "pytorch3d-volume")
        self.trainer = VolumeBaselineTrainer(
            config=self.config, train_data=scene.data.train, n_pts_per_ray=samples
        )
        self.chunk = chunk
        self.settings = {
            "samples_per_ray": samples,
            "network": f"hidden {self.config.model.hidden_size} x {self.config.model.n_blocks} "
            f"blocks, {self.config.model.n_frequencies} frequencies (occupancy field)",
        }

    def evaluate(self, scene: Scene) -> dict[str, Any]:
        val = scene.data.val
        field_module = self.trainer.field
        field_module.eval()
        try:
            rendered = self.trainer.model.render_views(
                val.cameras, val.image_size, chunk_size=self.chunk, compute_normals=False
            )
            scores = held_out_scores(rendered, scene)
            level = rendered_surface_level(
                field_module, val.cameras, rendered.depths, rendered.masks
            )
            scores.update(score_geometry(field_module, scene, level=level))
            scores["mesh_level_probability"] = (
                None if level is None else 1.0 / (1.0 + math.exp(-level))
            )
        finally:
            field_module.train()
        return scores


class NGPMethod(_TrainerMethod):
    """``nerfacc``: :class:`NGPBaselineTrainer` on nerfacc, or on its PyTorch stand-in."""

    def __init__(
        self,
        scene: Scene,
        *,
        settings: NGPSettings,
        backend: str,
        status: NerfaccStatus,
        chunk: int,
    ) -> None:
        self.config = scene.config
        self.trainer = NGPBaselineTrainer(
            config=self.config,
            train_data=scene.data.train,
            settings=settings,
            backend=backend,
            nerfacc_status=status,
        )
        self.chunk = chunk
        self.settings = {
            "backend": self.trainer.backend,
            "hash_grid": self.trainer.field.encoding_source,
            "render_step": self.trainer.step_size,
            **vars(settings),
        }

    def evaluate(self, scene: Scene) -> dict[str, Any]:
        val = scene.data.val
        rendered = self.trainer.render_views(val.cameras, val.image_size, chunk_size=self.chunk)
        scores = held_out_scores(rendered, scene)
        resolution = scene.config.eval.mesh_resolution or 128
        level_field, sigma = self.trainer.mesh_field(resolution)
        try:
            scores.update(score_geometry(level_field, scene))
        finally:
            self.trainer.field.train()
        scores["mesh_level_density"] = sigma
        scores["grid_occupied_fraction"] = self.trainer.grid_occupied_fraction()
        return scores
