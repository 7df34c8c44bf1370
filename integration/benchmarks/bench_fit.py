"""
Time to quality: how good each method's reconstruction is after a given amount of training time.

Methods, trained one after another on the same training views with the same rays per step (the
scene config's ``train.images_per_batch`` x ``train.rays_per_image`` pixels, drawn by
``train.sampling``):

  dvr               ours, :class:`dvr_plugin.training.Trainer` with the packaged config's device
                    overrides (on CUDA: occupancy grid, CUDA graphs, TF32 march)
  dvr-dense         the same without them: the reference implementation's dense march
                    (``train.occupancy_grid=0``, ``train.cuda_graphs=false``, float32 march)
  pytorch3d-volume  PyTorch3D's ``ImplicitRenderer`` + ``EmissionAbsorptionRaymarcher`` on the
                    same network, occupancy as alpha (:mod:`integration.compare.nerf_baseline`)
  nerfacc           an Instant-NGP-style field (hash grid, density + colour networks) with
                    nerfacc 0.5's ``OccGridEstimator`` and ``nerfacc.rendering``
                    (:mod:`integration.compare.ngp_baseline`); where nerfacc cannot run, the
                    same model with a PyTorch stand-in for nerfacc, and the reason recorded

The clock counts training time only: the device is synchronised after every step, and at each
checkpoint (e.g. 5, 10, 20, 30, 60, 90 s) the clock stops, the method is evaluated, and the clock
restarts. A step that passes several checkpoints is evaluated once, for all of them. Metrics at
each checkpoint: held-out PSNR (whole image; inside the true mask, the headline where the
images show a real background), SSIM and mask IoU; and, with a ground-truth mesh, Chamfer-L1 /
F@1% / normal consistency of the extracted mesh in ``dvr eval``'s convention (Occupancy Networks
protocol, distances in units of the ground truth's bounding box, longest side 1; both meshes in
the fitting frame), plus the observed-region scores (``dvr eval --observed``) on the DTU-like
scene. Meshes: MISE + marching cubes at ``eval.mesh_resolution``; DVR at its level 0, the volume
baseline at the occupancy its renders show (:func:`rendered_surface_level`), the NGP baseline
where a voxel of the extraction grid absorbs half the light (``sigma = ln 2 / voxel``).

Scenes: ``cow`` (the packaged config ``cow``: 50 views 128x128 of the textured cow,
``$DVR_DATA_DIR/meshes/cow.obj``), ``lego`` (``nerf-synthetic``; no ground-truth mesh: image
metrics only), ``dtu-like`` (the cow rendered by ``dvr make-scene --front-axis=-z`` into a
temporary folder, config ``dtu``), ``demo`` (the built-in analytic scene; for tests).

Writes ``bench_fit_<scene>.json`` (every number, the card, the settings), ``.md`` (one table of
method x checkpoint with the time to F@1% >= 0.97 and to PSNR >= 33 dB, then a table per metric)
and ``.png`` (PSNR and F@1% against training seconds), rewritten after every checkpoint.

    python -m integration.benchmarks.bench_fit --scene cow --device cuda --out outputs/bench_fit
    python -m integration.benchmarks.bench_fit --scene cow --quick --device cpu --out /tmp/bf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from dvr_plugin.data.paths import shared_data_dir
from dvr_plugin.engine.evaluation import image_metrics
from dvr_plugin.meshing import extract_mesh
from dvr_plugin.metrics import EMPTY_VALUES, evaluate_meshes, evaluate_observed
from dvr_plugin.training import (
    FitConfig,
    Trainer,
    load_config,
    load_fit_data,
    packaged_config,
    resolve_config,
)
from integration.benchmarks.common import (
    peak_memory,
    release_memory,
    reset_peak_memory,
    synchronize,
)
from integration.compare.harness import MESH_SCORE_KEYS, volume_baseline_config
from integration.compare.nerf_baseline import VolumeBaselineTrainer, rendered_surface_level
from integration.compare.ngp_baseline import (
    NerfaccStatus,
    NGPBaselineTrainer,
    NGPSettings,
    probe_nerfacc,
)

METHODS = ("dvr", "dvr-hash", "dvr-dense", "pytorch3d-volume", "nerfacc")
METHOD_LABELS = {
    "dvr": "dvr (ours: grid + CUDA graphs + TF32 on CUDA)",
    "dvr-hash": "dvr-hash (ours with the hash-grid field, model.encoding: hash_grid)",
    "dvr-dense": "dvr-dense (reference-style dense march)",
    "pytorch3d-volume": "pytorch3d-volume (ImplicitRenderer, same network)",
    "nerfacc": "nerfacc (Instant-NGP-style hash grid + OccGridEstimator)",
}
SCENES = ("cow", "lego", "dtu-like", "demo")
SCENE_CONFIGS = {"cow": "cow", "lego": "nerf-synthetic", "dtu-like": "dtu", "demo": "demo"}
CHECKPOINTS = (5.0, 10.0, 20.0, 30.0, 60.0, 90.0)
QUICK_CHECKPOINTS = (2.0, 4.0, 6.0)
TARGET_F_SCORE = 0.97
TARGET_PSNR = 33.0
OBSERVED_KEYS = (
    "observed_chamfer_l1",
    "observed_normal_consistency",
    "observed_f_score",
    "pred_observed_fraction",
    "gt_observed_fraction",
)
IMAGE_KEYS = ("psnr", "psnr_masked", "ssim", "mask_iou")
# ``dvr-hash``: the packaged config with the hash-grid field in place of the Fourier decoder, its
# tables at Instant-NGP's learning rate (everything else, the rays per step included, unchanged)
HASH_GRID_OVERRIDES = ("model.encoding=hash_grid", "optim.encoding_lr=1e-2")

# Toy sizes for a CPU run of every path (not a measurement).
QUICK_OVERRIDES = (
    "model.hidden_size=32",
    "model.n_blocks=2",
    "model.n_frequencies=4",
    "train.images_per_batch=2",
    "train.rays_per_image=64",
    "train.step_milestones={0: 16}",
    "eval.n_steps=32",
    "eval.mesh_resolution=32",
    "eval.mesh_points=2000",
    # read by dvr-hash only
    "model.hash_grid.n_levels=4",
    "model.hash_grid.log2_table_size=12",
    "model.hash_grid.max_resolution=64",
)
QUICK_SCENE_OVERRIDES = {
    "cow": ("data.image_size=32", "data.n_views=8", "data.held_out_every=4"),
    "demo": ("data.image_size=32", "data.n_views=8", "data.held_out_every=4"),
    "lego": ("data.downscale=16",),
    "dtu-like": (
        "model.colour_hidden_size=16",
        "model.colour_n_layers=1",
        "loss.eikonal_box_points=32",
        "loss.mask_samples=8",
    ),
}
# The DTU-like scene: make-scene's image size (the one photographs.sh fits at full size).
DTU_LIKE_SIZE = (180, 240)
DTU_LIKE_QUICK_SIZE = (24, 32)


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Scene:
    """
    One benchmark scene, shared by every method.

    Members:
        name: the scene's name (:data:`SCENES`).
        overrides: ``key=value`` overrides of the packaged config, the same for every method.
        config: the resolved configuration of ``dvr`` (device overrides applied).
        device: the device.
        data: the training and held-out views (:class:`dvr_plugin.training.FitData`).
        gt_mesh: the ground truth in the fitting (normalised) frame, or ``None``.
        headline_psnr: ``"psnr"`` or ``"psnr_masked"`` (images with a real background).
        observed: also score the observed region (``dvr eval --observed``).
        notes: how the scene was made.
    """

    name: str
    overrides: list[str]
    config: FitConfig
    device: torch.device
    data: Any
    gt_mesh: Any
    headline_psnr: str
    observed: bool
    notes: list[str] = field(default_factory=list)

    @property
    def geometry_key(self) -> str:
        return "observed_f_score" if self.observed else "f_score"

    def method_config(self, method: str) -> FitConfig:
        """The resolved configuration a method trains with."""
        extra: list[str] = []
        if method == "dvr-dense":
            extra = ["train.occupancy_grid=0", "train.cuda_graphs=false"]
        elif method == "dvr-hash":
            extra = list(HASH_GRID_OVERRIDES)
        config = load_config(packaged_config(SCENE_CONFIGS[self.name]), [*self.overrides, *extra])
        config, _ = resolve_config(config)
        if method == "pytorch3d-volume":
            config = volume_baseline_config(config)
        return config


def prepare_scene(
    name: str,
    *,
    device: str,
    quick: bool,
    data: Optional[str],
    overrides: Sequence[str],
    workdir: str,
    progress: bool,
) -> Scene:
    """Load (or, for ``dtu-like``, generate and load) a scene's views and ground truth."""
    if name not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {name!r}.")
    items = [f"device={device}"]
    notes: list[str] = []
    if quick:
        items += [*QUICK_OVERRIDES, *QUICK_SCENE_OVERRIDES[name]]
    if name == "cow":
        path = data or str(shared_data_dir() / "meshes" / "cow.obj")
        items.append(f"data.path={json.dumps(path)}")
    elif name == "lego":
        path = data or str(shared_data_dir() / "nerf_synthetic_lego" / "lego")
        items.append(f"data.path={json.dumps(path)}")
    elif name == "dtu-like":
        path = _make_dtu_like(data, device=device, quick=quick, workdir=workdir, progress=progress)
        items += ["data.format=dtu", f"data.path={json.dumps(path)}", "data.downscale=1"]
        notes.append(
            f"generated by `dvr make-scene {data or 'meshes/cow.obj'} --front-axis=-z` "
            f"({'x'.join(map(str, DTU_LIKE_QUICK_SIZE if quick else DTU_LIKE_SIZE))} images, "
            "DTU lighting and photo backgrounds) into a temporary folder"
        )
    elif data is not None:
        raise ValueError("The demo scene is built in code; it takes no --data.")
    items += list(overrides)
    config, resolved = resolve_config(load_config(packaged_config(SCENE_CONFIGS[name]), items))
    fit_data = load_fit_data(config.data, background=list(config.background), device=resolved)
    gt_mesh = fit_data.mesh
    if name == "dtu-like":
        from dvr_plugin.data.frame import WorldFrame
        from dvr_plugin.meshing import load_mesh

        world = load_mesh(os.path.join(config.data.path, "gt_mesh.ply"), device=str(resolved))
        gt_mesh = WorldFrame(fit_data.train.to_world, "dtu").mesh_to_normalised(world)
        notes.append(
            "ground truth: gt_mesh.ply moved into the fitting frame with the data's "
            "to_world (as `dvr eval` does with a checkpoint's data frame)"
        )
    elif name == "cow":
        notes.append(
            "ground truth: cow.obj centred and scaled into the fitting frame (longest "
            f"side {config.data.longest_side:g}), as `dvr eval --gt-longest-side` does"
        )
    if gt_mesh is not None:
        gt_mesh = gt_mesh.to(resolved)
    return Scene(
        name=name,
        overrides=items,
        config=config,
        device=resolved,
        data=fit_data,
        gt_mesh=gt_mesh,
        headline_psnr="psnr_masked" if name == "dtu-like" else "psnr",
        observed=name == "dtu-like" and gt_mesh is not None,
        notes=notes,
    )


def _make_dtu_like(
    mesh: Optional[str], *, device: str, quick: bool, workdir: str, progress: bool
) -> str:
    from dvr_plugin.data.dtu_like import make_dtu_like_scene

    mesh = mesh or str(shared_data_dir() / "meshes" / "cow.obj")
    out = os.path.join(workdir, "dtu_like")
    make_dtu_like_scene(
        mesh,
        out,
        image_size=DTU_LIKE_QUICK_SIZE if quick else DTU_LIKE_SIZE,
        front_axis="-z",
        views=list(range(0, 49, 8)) if quick else None,
        device=device,
        force=True,
        progress=progress,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Methods


def score_geometry(field_module, scene: Scene, *, level: Optional[float] = None) -> dict[str, Any]:
    """
    Extract a field's surface (MISE + marching cubes at ``eval.mesh_resolution``, at ``level``)
    and score it against the scene's ground truth (nothing but the face count without one).
    """
    config = scene.config
    resolution = config.eval.mesh_resolution or 128
    start = time.perf_counter()
    extraction = extract_mesh(
        field_module, resolution=resolution, start_resolution=min(32, resolution), level=level
    )
    scores: dict[str, Any] = {
        "mesh_faces": 0 if extraction.is_empty else int(extraction.mesh.num_faces_per_mesh()[0]),
        "mesh_seconds": time.perf_counter() - start,
    }
    gt = scene.gt_mesh
    if gt is None:
        return scores
    mesh = extraction.mesh.to(gt.device)
    n_points = config.eval.mesh_points
    if extraction.is_empty:
        scores.update({key: EMPTY_VALUES[key] for key in MESH_SCORE_KEYS})
    else:
        values = evaluate_meshes(mesh, gt, n_points=n_points, n_iou_points=0, seed=config.seed)
        scores.update({key: float(values[key].reshape(-1)[0]) for key in MESH_SCORE_KEYS})
    if scene.observed:
        train = scene.data.train
        observed = evaluate_observed(
            mesh,
            gt,
            train.cameras,
            tuple(int(v) for v in train.image_size),
            n_points=n_points,
            seed=config.seed,
        )
        scores.update({key: float(observed[key]) for key in OBSERVED_KEYS})
    return scores


def _held_out_scores(rendered, scene: Scene) -> dict[str, Any]:
    val = scene.data.val
    return image_metrics(rendered, val.images, val.masks)


class _TrainerMethod:
    """A method whose ``trainer`` counts its steps (``trainer.step``) and takes one with
    ``trainer.train_step()``; subclasses build the trainer and score it (``evaluate``)."""

    trainer: Any

    @property
    def steps(self) -> int:
        return int(self.trainer.step)

    def step(self) -> dict[str, float]:
        return self.trainer.train_step()


def _network_label(config: FitConfig) -> str:
    model = config.model
    if model.encoding == "hash_grid":
        grid = model.hash_grid
        return (
            f"hash grid {grid.n_levels} levels x {grid.features_per_level} features, table "
            f"2^{grid.log2_table_size}, resolution {grid.base_resolution}-{grid.max_resolution}; "
            f"decoder hidden {grid.hidden_size} x {grid.n_layers} layers"
        )
    blocks = f"hidden {model.hidden_size} x {model.n_blocks} blocks"
    return f"{blocks}, {model.n_frequencies} frequencies"


class DVRMethod(_TrainerMethod):
    """
    ``dvr`` / ``dvr-hash`` / ``dvr-dense``: :class:`Trainer` stepped by hand, scored with its
    validation.
    """

    def __init__(self, scene: Scene, *, method: str) -> None:
        if method not in ("dvr", "dvr-hash", "dvr-dense"):
            raise ValueError(f"DVRMethod runs dvr, dvr-hash or dvr-dense, got {method!r}.")
        dense = method == "dvr-dense"
        self.config = scene.method_config(method)
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
            "network": _network_label(self.config),
            "field_type": self.config.model.field_type,
            "encoding": self.config.model.encoding,
            "step_milestones": {str(k): v for k, v in train.step_milestones.items()},
        }
        if dense:  # the march in float32 (the default lets it use TF32 on CUDA)
            sampler = getattr(getattr(self.trainer, "renderer", None), "raysampler", None)
            if sampler is not None and hasattr(sampler, "march_precision"):
                sampler.march_precision = "float32"
                self.settings["march_precision"] = "float32"
            else:
                self.settings["march_precision"] = "auto (could not be set: no renderer found)"

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
        self.config = scene.method_config("pytorch3d-volume")
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
            scores = _held_out_scores(rendered, scene)
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
        scores = _held_out_scores(rendered, scene)
        resolution = scene.config.eval.mesh_resolution or 128
        level_field, sigma = self.trainer.mesh_field(resolution)
        try:
            scores.update(score_geometry(level_field, scene))
        finally:
            self.trainer.field.train()
        scores["mesh_level_density"] = sigma
        scores["grid_occupied_fraction"] = self.trainer.grid_occupied_fraction()
        return scores


# ---------------------------------------------------------------------------------------------
# The clock


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def run_method(
    name: str,
    build: Callable[[], Any],
    scene: Scene,
    *,
    checkpoints: Sequence[float],
    progress: bool,
    deadline: Optional[float],
    on_checkpoint: Callable[[], None],
    entry: dict[str, Any],
) -> None:
    """
    Train one method until the last checkpoint of training time, evaluating at each checkpoint
    with the clock stopped; fills ``entry`` (``checkpoints``, ``steps``, ``train_seconds``,
    ``error``, ...) and calls ``on_checkpoint`` after each evaluation.
    """
    from tqdm.auto import tqdm

    device = scene.device
    release_memory(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # every method starts from the default
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    method = build()
    synchronize(device)
    entry["construct_seconds"] = time.perf_counter() - start
    entry["settings"] = method.settings
    entry["checkpoints"] = []
    total = float(checkpoints[-1])
    pending = [float(c) for c in checkpoints]
    clock = 0.0
    last: dict[str, float] = {}
    peaks = {"train": 0, "eval": 0}
    bar = tqdm(
        total=total,
        desc=name,
        unit="s",
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} s train{postfix}",
    )
    try:
        while pending:
            step_start = time.perf_counter()
            last = method.step()
            synchronize(device)
            seconds = time.perf_counter() - step_start
            clock += seconds
            bar.update(min(seconds, total - bar.n))
            if clock < pending[0]:
                continue
            passed = [c for c in pending if clock >= c]
            if device.type == "cuda":  # training and evaluation peaks apart
                peaks["train"] = max(peaks["train"], peak_memory(device))
                reset_peak_memory(device)
            eval_start = time.perf_counter()
            scores = method.evaluate(scene)
            synchronize(device)
            eval_seconds = time.perf_counter() - eval_start
            if device.type == "cuda":
                peaks["eval"] = max(peaks["eval"], peak_memory(device))
                reset_peak_memory(device)
            for checkpoint in passed:
                entry["checkpoints"].append(
                    {
                        "checkpoint_s": checkpoint,
                        "train_seconds": clock,
                        "step": method.steps,
                        "loss": last.get("loss"),
                        "eval_seconds": eval_seconds,
                        **scores,
                    }
                )
            pending = pending[len(passed) :]
            entry["steps"] = method.steps
            entry["train_seconds"] = clock
            entry["seconds_per_step"] = clock / max(method.steps, 1)
            if device.type == "cuda":
                entry["train_peak_bytes"] = int(peaks["train"])
                entry["eval_peak_bytes"] = int(peaks["eval"])
            headline = scores.get(scene.headline_psnr)
            geometry = scores.get(scene.geometry_key)
            postfix = f"step {method.steps}"
            if _finite(headline):
                postfix += f", {headline:.2f} dB"
            if _finite(geometry):
                postfix += f", F@1% {geometry:.3f}"
            bar.set_postfix_str(postfix, refresh=True)
            on_checkpoint()
            if pending and deadline is not None and time.perf_counter() > deadline:
                entry["stopped"] = (
                    f"the wall-clock limit (--max-seconds) after {clock:.1f} s of training"
                )
                break
    finally:
        bar.close()
        entry["last_step"] = last
        del method
        release_memory(device)


def _warm_up(
    builders: dict[str, Callable[[], Any]], methods: Sequence[str], device: torch.device
) -> float:
    """
    A few untimed steps of every method in a throw-away instance, so that no method's clock
    pays the process's one-time costs (lazy imports, kernel and allocator warm-up) for the
    others. Each timed method is then built anew (its own first steps, CUDA-graph captures and
    grid builds included). Failures are left to the timed run to report.

    Returns:
        the seconds it took.
    """
    start = time.perf_counter()
    for name in methods:
        try:
            method = builders[name]()
            for _ in range(3):
                method.step()
            del method
        except Exception:  # the timed run reports it
            pass
        release_memory(device)
    synchronize(device)
    return time.perf_counter() - start


def time_to(entry: dict[str, Any], key: str, target: float) -> Optional[float]:
    """The first checkpoint (seconds) whose ``key`` reaches ``target``, or ``None``."""
    for row in entry.get("checkpoints", []):
        value = row.get(key)
        if _finite(value) and value >= target:
            return row["checkpoint_s"]
    return None


# ---------------------------------------------------------------------------------------------
# The run


def run_benchmark(
    *,
    scene_name: str,
    methods: Sequence[str],
    device: str,
    checkpoints: Sequence[float],
    quick: bool,
    data: Optional[str] = None,
    overrides: Sequence[str] = (),
    samples: Optional[int] = None,
    ngp_backend: str = "auto",
    max_seconds: Optional[float] = None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    nerfacc_status: Optional[NerfaccStatus] = None,
) -> dict[str, Any]:
    """
    Run the methods on one scene and (with ``out_dir``) write the JSON, markdown and figure.

    ``nerfacc_status``: the result of an earlier :func:`probe_nerfacc` (e.g. the build step of
    ``fit_speed.sh``); when it failed, nerfacc is not touched again and its reason is reported.

    Returns:
        The report (also ``bench_fit_<scene>.json``).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {METHODS}.")
    if not checkpoints or any(not c > 0 for c in checkpoints):
        raise ValueError(f"checkpoints must be positive seconds, got {list(checkpoints)}.")
    checkpoints = sorted(float(c) for c in checkpoints)
    wall_start = time.perf_counter()
    deadline = None if max_seconds is None else wall_start + max_seconds
    resolved = "cuda" if device == "auto" and torch.cuda.is_available() else device
    resolved = "cpu" if resolved == "auto" else resolved
    if resolved.startswith("cuda"):  # CUDA context and cuBLAS before any clock runs
        warm = torch.ones(512, 512, device=resolved)
        (warm @ warm).sum().item()
    status = NerfaccStatus(False, "not run", "the nerfacc row was not asked for")
    if ngp_backend == "torch":
        status = NerfaccStatus(False, "not run", "--ngp-backend torch: the stand-in was asked for")
    elif nerfacc_status is not None and not nerfacc_status.available:
        status = nerfacc_status  # a failed build is not retried (it could hang on its lock)
    elif "nerfacc" in methods:
        status = probe_nerfacc(resolved)
        if nerfacc_status is not None:
            status.seconds += nerfacc_status.seconds  # the build, then this load
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as workdir:
        prep_start = time.perf_counter()
        scene = prepare_scene(
            scene_name,
            device=resolved,
            quick=quick,
            data=data,
            overrides=overrides,
            workdir=workdir,
            progress=progress,
        )
        prep_seconds = time.perf_counter() - prep_start
        report = _report_header(scene, checkpoints, quick, status, prep_seconds)
        write = _writer(out_dir, scene_name)
        cuda = scene.device.type == "cuda"
        samples = samples or (16 if quick else 64)
        chunk = 16384 if cuda else 4096
        ngp_settings = NGPSettings.quick() if quick else NGPSettings()
        builders: dict[str, Callable[[], Any]] = {
            "dvr": lambda: DVRMethod(scene, method="dvr"),
            "dvr-hash": lambda: DVRMethod(scene, method="dvr-hash"),
            "dvr-dense": lambda: DVRMethod(scene, method="dvr-dense"),
            "pytorch3d-volume": lambda: VolumeMethod(scene, samples=samples, chunk=chunk),
            "nerfacc": lambda: NGPMethod(
                scene, settings=ngp_settings, backend=ngp_backend, status=status, chunk=chunk
            ),
        }
        # the warm-up runs the NGP model on the stand-in: nerfacc's kernels ran in the probe,
        # and a kernel fault there would poison the CUDA context of every method after it
        warm = dict(builders)
        warm["nerfacc"] = lambda: NGPMethod(
            scene, settings=ngp_settings, backend="torch", status=status, chunk=chunk
        )
        report["settings"]["warmup_seconds"] = _warm_up(warm, methods, scene.device)

        def timed(name: str, build: Callable[[], Any], entry: dict[str, Any]) -> None:
            run_method(
                name,
                build,
                scene,
                checkpoints=checkpoints,
                progress=progress,
                deadline=deadline,
                on_checkpoint=lambda: write(report, draw=False),
                entry=entry,
            )

        for name in methods:
            entry: dict[str, Any] = {"label": METHOD_LABELS[name], "error": None}
            report["methods"][name] = entry
            # a method needs its budget plus its evaluations (about a quarter more on a GPU)
            needed = 1.25 * checkpoints[-1] + 10.0
            if deadline is not None and time.perf_counter() + needed > deadline:
                entry["skipped"] = "not started: the wall-clock limit (--max-seconds) is near"
                write(report)
                continue
            try:
                timed(name, builders[name], entry)
            except Exception as error:  # one failing method must not stop the others
                entry["error"] = _error_tail(error)
                print(f"{name} failed: {entry['error']}", flush=True)
                used = entry.get("settings", {}).get("backend")
                if name == "nerfacc" and used != "torch":
                    # nerfacc ran but broke: the row is rerun on the stand-in, the reason kept
                    status = NerfaccStatus(False, "training", entry["error"], 0.0, status.version)
                    report["nerfacc"] = status.to_dict()
                    entry = {
                        "label": METHOD_LABELS[name],
                        "error": None,
                        "nerfacc_failure": status.to_dict(),
                    }
                    report["methods"][name] = entry
                    try:
                        timed(
                            name,
                            lambda failed=status: NGPMethod(
                                scene,
                                settings=ngp_settings,
                                backend="torch",
                                status=failed,
                                chunk=chunk,
                            ),
                            entry,
                        )
                    except Exception as second:
                        entry["error"] = _error_tail(second)
            entry["time_to"] = {
                "f_score": time_to(entry, scene.geometry_key, TARGET_F_SCORE),
                "psnr": time_to(entry, scene.headline_psnr, TARGET_PSNR),
            }
            report["wall_seconds"] = time.perf_counter() - wall_start
            write(report)
    report["wall_seconds"] = time.perf_counter() - wall_start
    write(report)
    return report


def _error_tail(error: BaseException, limit: int = 4000) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text if len(text) <= limit else text[:300] + "\n...\n" + text[-(limit - 300) :]


def _report_header(
    scene: Scene,
    checkpoints: Sequence[float],
    quick: bool,
    status: NerfaccStatus,
    prep_seconds: float,
) -> dict[str, Any]:
    import pytorch3d

    config, device = scene.config, scene.device
    train = config.train
    data = scene.data
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {
        "benchmark": "bench_fit",
        "scene": scene.name,
        "device": card,
        "machine": {
            "device_type": device.type,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch3d": pytorch3d.__version__,
        },
        "nerfacc": status.to_dict(),
        "settings": {
            "quick": quick,
            "checkpoints_s": list(checkpoints),
            "budget_s": checkpoints[-1],
            "targets": {"f_score": TARGET_F_SCORE, "psnr_db": TARGET_PSNR},
            "headline_psnr": scene.headline_psnr,
            "geometry_metric": scene.geometry_key,
            "config": SCENE_CONFIGS[scene.name],
            "overrides": scene.overrides,
            "data_format": config.data.format,
            "data_path": config.data.path,
            "image_size": list(data.train.image_size),
            "train_views": len(data.train),
            "held_out_views": len(data.val),
            "images_per_batch": min(train.images_per_batch, len(data.train)),
            "rays_per_image": train.rays_per_image,
            "rays_per_step": min(train.images_per_batch, len(data.train)) * train.rays_per_image,
            "sampling": train.sampling,
            "dvr_render_steps": config.eval.n_steps,
            "mesh_resolution": config.eval.mesh_resolution,
            "mesh_points": config.eval.mesh_points,
            "ground_truth_mesh": scene.gt_mesh is not None,
            "scene_seconds": prep_seconds,
            "notes": scene.notes,
            "clock": "training time only: the device is synchronised after every step; "
            "evaluation runs with the clock stopped",
        },
        "methods": {},
    }


# ---------------------------------------------------------------------------------------------
# Outputs


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _json_safe(value.item())
    return str(value)


def _writer(out_dir: Optional[str], scene: str) -> Callable[..., None]:
    """``write(report, draw=True)``: the JSON and markdown (and with ``draw`` the figure)."""
    if not out_dir:
        return lambda report, draw=True: None
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"bench_fit_{scene}")

    def write(report: dict[str, Any], draw: bool = True) -> None:
        with open(stem + ".json", "w") as handle:
            json.dump(_json_safe(report), handle, indent=2)
        with open(stem + ".md", "w") as handle:
            handle.write(markdown_report(report))
        if draw:  # the figure after each method (the tables after every checkpoint)
            figure(report, stem + ".png")

    return write


def _label(seconds: float) -> str:
    return f"{seconds:g} s"


def _cell(row: Optional[dict[str, Any]], key: str, fmt: str) -> str:
    if row is None:
        return "-"
    value = row.get(key)
    return fmt.format(value) if _finite(value) else "-"


def _rows_by_checkpoint(entry: dict[str, Any]) -> dict[float, dict[str, Any]]:
    return {row["checkpoint_s"]: row for row in entry.get("checkpoints", [])}


def markdown_report(report: dict[str, Any]) -> str:
    """The report as markdown: the headline table, one table per metric, then the notes."""
    settings = report["settings"]
    checkpoints = settings["checkpoints_s"]
    headline = settings["headline_psnr"]
    geometry = settings["geometry_metric"] if settings["ground_truth_mesh"] else None
    psnr_name = "PSNR in mask" if headline == "psnr_masked" else "PSNR"
    f_name = "observed F@1%" if geometry == "observed_f_score" else "F@1%"
    lines = [
        f"# Time to quality: {report['scene']}",
        "",
        f"Device: {report['device']} (torch {report['machine']['torch']}, PyTorch3D "
        f"{report['machine']['pytorch3d']}); nerfacc: "
        + ("available" if report["nerfacc"]["available"] else "not used (see below)"),
        "",
        f"{settings['train_views']} training views ({settings['image_size'][0]}x"
        f"{settings['image_size'][1]}), {settings['held_out_views']} held out; every method "
        f"trains on {settings['rays_per_step']} rays per step ({settings['images_per_batch']} "
        f"images x {settings['rays_per_image']}, {settings['sampling']} sampling). "
        f"Clock: {settings['clock']}. Budget {settings['budget_s']:g} s per method, one method "
        "after another.",
        "",
    ]
    head = ["method", *(_label(c) for c in checkpoints), "steps (ms/step)"]
    if geometry:
        head.append(f"time to {f_name} >= {settings['targets']['f_score']:g}")
    head.append(f"time to {psnr_name} >= {settings['targets']['psnr_db']:g} dB")
    cell_name = f"{psnr_name} (dB)" + (f" / {f_name}" if geometry else "")
    sources = "the held-out views / the extracted mesh" if geometry else "the held-out views"
    lines += [f"Cells: {cell_name} of {sources}.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in report["methods"].items():
        rows = _rows_by_checkpoint(entry)
        stand_in = (entry.get("settings") or {}).get("backend") == "torch"
        cells = [f"{name} (PyTorch stand-in)" if stand_in else name]
        for checkpoint in checkpoints:
            row = rows.get(checkpoint)
            text = _cell(row, headline, "{:.2f}")
            if geometry:
                text += " / " + _cell(row, geometry, "{:.3f}")
            cells.append(text if row is not None else "-")
        if entry.get("steps"):
            cells.append(f"{entry['steps']} ({1000 * entry['seconds_per_step']:.1f})")
        else:
            cells.append("-")
        reached = entry.get("time_to", {})
        if geometry:
            cells.append(_reached(reached.get("f_score"), entry))
        cells.append(_reached(reached.get("psnr"), entry))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    metrics = [
        ("psnr", "PSNR (dB)", "{:.2f}"),
        ("psnr_masked", "PSNR inside the mask (dB)", "{:.2f}"),
        ("ssim", "SSIM", "{:.4f}"),
        ("mask_iou", "mask IoU", "{:.4f}"),
    ]
    if geometry:
        metrics += [
            ("chamfer_l1", "Chamfer-L1 (unit bounding box)", "{:.5f}"),
            ("f_score", "F@1%", "{:.4f}"),
            ("normal_consistency", "normal consistency", "{:.4f}"),
        ]
        if geometry == "observed_f_score":
            metrics += [
                ("observed_chamfer_l1", "observed Chamfer-L1", "{:.5f}"),
                ("observed_f_score", "observed F@1%", "{:.4f}"),
                ("observed_normal_consistency", "observed normal consistency", "{:.4f}"),
            ]
    for key, title, fmt in metrics:
        lines += [
            f"## {title}",
            "",
            "| method | " + " | ".join(map(_label, checkpoints)) + " |",
            "|" + "---|" * (len(checkpoints) + 1),
        ]
        for name, entry in report["methods"].items():
            rows = _rows_by_checkpoint(entry)
            lines.append(
                f"| {name} | "
                + " | ".join(_cell(rows.get(c), key, fmt) for c in checkpoints)
                + " |"
            )
        lines.append("")
    lines += ["## Notes", ""]
    for name, entry in report["methods"].items():
        text = f"- **{name}**: {entry['label']}"
        described = entry.get("settings") or {}
        if described:
            text += "; " + ", ".join(f"{k} {v}" for k, v in described.items())
        if entry.get("construct_seconds") is not None:
            text += f"; construction {entry['construct_seconds']:.1f} s (not counted)"
        if entry.get("train_peak_bytes"):
            text += f"; peak GPU memory in training {entry['train_peak_bytes'] / 2**30:.2f} GiB"
        for key in ("stopped", "skipped"):
            if entry.get(key):
                text += f"; {key}: {entry[key]}"
        if entry.get("error"):
            text += f"; **error**: `{entry['error'].splitlines()[-1][:300]}`"
        lines.append(text)
    nerfacc = report["nerfacc"]
    if nerfacc["available"]:
        lines.append(
            f"- nerfacc {nerfacc['version']} loaded (probe and JIT build "
            f"{nerfacc['seconds']:.1f} s, before any clock ran)."
        )
    else:
        lines.append(
            f"- nerfacc did not run (stage: {nerfacc['stage']}); the `nerfacc` row is "
            "the same model on the PyTorch stand-in. Where it stopped:"
        )
        lines += ["", "```", str(nerfacc["error"]).strip(), "```"]
    for note in settings["notes"]:
        lines.append(f"- {note}")
    lines.append(
        "- Meshes: DVR at its level 0; pytorch3d-volume at the occupancy its renders show "
        "(`rendered_surface_level`); nerfacc where a voxel of the extraction grid absorbs half "
        "the light (sigma = ln 2 / voxel). Scores in `dvr eval`'s convention (ground truth's "
        "bounding box, longest side 1)."
    )
    return "\n".join(lines) + "\n"


def _reached(seconds: Optional[float], entry: dict[str, Any]) -> str:
    if seconds is not None:
        return _label(seconds)
    if not entry.get("checkpoints"):
        return "-"
    return "not met"


def figure(report: dict[str, Any], path: str) -> None:
    """PSNR (and F@1% with a ground truth) against training seconds, one line per method."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    settings = report["settings"]
    panels = [
        (
            settings["headline_psnr"],
            "held-out "
            + ("PSNR inside the mask" if settings["headline_psnr"] == "psnr_masked" else "PSNR")
            + " (dB)",
            settings["targets"]["psnr_db"],
        )
    ]
    if settings["ground_truth_mesh"]:
        key = settings["geometry_metric"]
        panels.append(
            (
                key,
                ("observed " if key.startswith("observed") else "") + "F@1%",
                settings["targets"]["f_score"],
            )
        )
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for axis, (key, title, target) in zip(axes, panels, strict=True):
        for name, entry in report["methods"].items():
            points = [
                (row["train_seconds"], row[key])
                for row in entry.get("checkpoints", [])
                if _finite(row.get(key))
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=name)
        axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("training seconds")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['scene']} - {report['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scene", choices=SCENES, default="cow")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    parser.add_argument(
        "--checkpoints",
        type=float,
        nargs="+",
        default=None,
        help="seconds of training time at which to evaluate; the last is each method's budget "
        f"(default {' '.join(f'{c:g}' for c in CHECKPOINTS)}; with --quick "
        f"{' '.join(f'{c:g}' for c in QUICK_CHECKPOINTS)})",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes for a CPU check")
    parser.add_argument("--out", default="outputs/bench_fit", help="folder of the outputs")
    parser.add_argument("--data", default=None, help="the scene's data (cow / dtu-like: a mesh)")
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples per ray of pytorch3d-volume (default 64; --quick 16)",
    )
    parser.add_argument(
        "--ngp-backend",
        choices=("auto", "nerfacc", "torch"),
        default="auto",
        help="the nerfacc row's back-end (auto: nerfacc when it runs)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="wall-clock limit of the run: no method starts that would pass it, "
        "and a running one stops at the next checkpoint after it",
    )
    parser.add_argument(
        "--nerfacc-status",
        default=None,
        help="a JSON of an earlier nerfacc probe (its build step); a failed one "
        "is reported and nerfacc is not touched again",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (all methods)")
    args = parser.parse_args(argv)
    checkpoints = args.checkpoints or list(QUICK_CHECKPOINTS if args.quick else CHECKPOINTS)
    status = None
    if args.nerfacc_status:
        with open(args.nerfacc_status) as handle:
            status = NerfaccStatus(**json.load(handle))
    report = run_benchmark(
        scene_name=args.scene,
        methods=args.methods,
        device=args.device,
        checkpoints=checkpoints,
        quick=args.quick,
        data=args.data,
        overrides=args.overrides,
        samples=args.samples,
        ngp_backend=args.ngp_backend,
        max_seconds=args.max_seconds,
        out_dir=args.out,
        progress=not args.quiet,
        nerfacc_status=status,
    )
    print(markdown_report(report).split("\n## ")[0])
    return report


if __name__ == "__main__":
    main()
