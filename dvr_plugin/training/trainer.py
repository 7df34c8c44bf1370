"""
``Trainer``: fits one DVR field to posed images with masks (DVR's multi-view setting).

One iteration::

    pick B training images -> sample R pixels each (dvr_plugin.engine.sampling)
    -> render those rays with DVRRenderer(xys=..., n_steps=StepSchedule(step))
    -> losses (dvr_plugin.engine.losses): rgb (hit & mask), depth / world points (with depth maps),
       free space (outside the mask), occupancy (inside the mask, no hit), normal smoothness,
       image gradients (patch sampling)
    -> backward -> Adam step -> learning-rate step decay

Everything random in the loop draws from two ``torch.Generator`` objects of the trainer
(image choice on the CPU, pixels / loss points / jitter on the training device), which the
checkpoint saves together with the global torch, CUDA, NumPy and Python states: resuming from a
checkpoint continues exactly as the uninterrupted run would have.

Under ``torchrun`` (a process group with several ranks) the same loop runs on every rank, each on
its share of the global batch, with DistributedDataParallel: see :mod:`.distributed` and
``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..accel.occupancy_grid import OccupancyGrid
from ..data import MultiViewData, index_cameras
from ..data.frame import WorldFrame, data_fingerprint
from ..engine.checkpoint import (
    capture_rng_state,
    checkpoint_exists,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ..engine.logs import CsvLog, TensorBoardLog, plot_curves
from ..engine.losses import (
    LossWeights,
    depth_loss,
    eikonal_penalty,
    freespace_and_occupancy_points,
    freespace_loss,
    image_gradient_loss,
    jitter_points,
    min_outside_along_rays,
    normal_smoothness_loss,
    occupancy_loss,
    rgb_loss,
    soft_mask_alpha,
    soft_mask_loss,
    total_loss,
    world_point_loss,
)
from ..engine.sampling import PixelSample, gather, sample_pixels
from ..engine.schedule import StepSchedule
from ..fields.appearance import RenderingNetwork, ViewDependentField, geometry_of
from ..fields.field import (
    UNIT_CUBE_BOUNDS,
    FieldOutput,
    OccupancyTextureField,
    evaluate_field,
    field_type_of,
)
from ..io import atomic_write, make_dirs
from ..renderer.rays import intersect_box
from ..renderer.raysampler import SecantRaysampler
from ..renderer.renderer import DVRRenderer
from ..visualize import save_png
from .config import FitConfig, OptimConfig, TrainConfig, resolve_device
from .data import check_training_views
from .distributed import BatchShard, StepForward, current_context, parameters_anchor
from .evaluation import comparison_grid, image_metrics, orbit_settings, render_views

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_LOG_NAME = "train_log.csv"
VAL_LOG_NAME = "val_log.csv"
CURVES_NAME = "curves.png"
VAL_DIR_NAME = "val"
TERMS = LossWeights.names()
# Short names of the loss terms in the progress bar.
POSTFIX_NAMES = {"freespace": "fs", "occupancy": "occ", "image_gradient": "grad", "eikonal": "eik"}


class AutocastField(nn.Module):
    """
    Runs a field under ``torch.autocast`` (bfloat16 by default) and hands back float32 values
    and colours, so that only the network runs in low precision: rays, root-finding brackets,
    depths and losses stay in float32.

    Args (keyword-only):
        field: a field following :mod:`dvr_plugin.fields.field`'s protocol.
        device_type: ``"cuda"`` (or ``"cpu"``).
        dtype: the autocast dtype.
    """

    def __init__(
        self, *, field: nn.Module, device_type: str = "cuda", dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        self.field = field
        self.field_type = field_type_of(field)
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, points: torch.Tensor, latent: Optional[torch.Tensor] = None) -> FieldOutput:
        """`(B, P, 3)` points -> float32 ``values`` `(B, P)` and ``rgb`` `(B, P, 3)` (or None)."""
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = evaluate_field(self.field, points, latent)
        rgb = None if out.rgb is None else out.rgb.float()
        return FieldOutput(out.values.float(), rgb)


def build_field(config: FitConfig) -> nn.Module:
    """
    The field of ``config.model`` (initialised from the global torch RNG): an
    :class:`OccupancyTextureField`, or with ``model.colour="view_dependent"`` a
    :class:`~dvr_plugin.fields.appearance.ViewDependentField` (that network without its texture
    head, as ``geometry``, and an IDR-style rendering network on its last hidden activation).

    Raises:
        ValueError: for ``model.colour="view_dependent"`` with ``mixed_precision``.
    """
    model = config.model
    view_dependent = model.colour == "view_dependent"
    geometry = OccupancyTextureField(
        hidden_size=model.hidden_size,
        n_blocks=model.n_blocks,
        n_frequencies=model.n_frequencies,
        field_type=model.field_type,
        fourier_anneal=model.fourier_anneal_steps > 0,
        geometric_init_radius=model.geometric_init_radius,
        geometric_init_sharpness=model.geometric_init_sharpness,
        rgb=not view_dependent,
    )
    if not view_dependent:
        return geometry
    if config.mixed_precision:
        raise ValueError(
            "model.colour=view_dependent does not run under mixed_precision (its normals need "
            "second derivatives in full precision); set mixed_precision: false."
        )
    appearance = RenderingNetwork(
        feature_size=model.hidden_size,
        hidden_size=model.colour_hidden_size,
        n_layers=model.colour_n_layers,
        n_view_frequencies=model.colour_view_frequencies,
        n_point_frequencies=model.colour_point_frequencies,
    )
    return ViewDependentField(geometry=geometry, appearance=appearance)


def draw_pixel_batch(
    data: MultiViewData,
    train: TrainConfig,
    *,
    image_generator: torch.Generator,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, PixelSample]:
    """
    One training batch: ``B = min(train.images_per_batch, len(data))`` images drawn without
    replacement (``image_generator``, on the CPU) and ``train.rays_per_image`` pixels in each
    (``train.sampling``, drawn with ``generator`` on the data's device).

    Returns:
        index: `(B,)` image indices (CPU).
        masks: `(B, H, W)` their masks.
        sample: the pixels (:class:`dvr_plugin.engine.sampling.PixelSample`, `(B, R)`).
    """
    batch = min(train.images_per_batch, len(data))
    index = torch.randperm(len(data), generator=image_generator)[:batch]
    masks = data.masks[index.to(data.masks.device)]
    sample = sample_pixels(
        masks,
        train.rays_per_image,
        mode=train.sampling,
        foreground_fraction=train.foreground_fraction,
        continuous=train.continuous_pixels,
        generator=generator,
    )
    return index, masks, sample


def build_optimizer(
    optim: OptimConfig, params: Any
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    """
    Adam over ``params`` (parameters or parameter groups) with ``optim``'s learning rate and
    weight decay, and its step decay (``lr_milestones``, ``lr_gamma``). On CUDA it is the
    fused implementation (the same update, one kernel).
    """
    params = list(params)
    tensors = [
        t for item in params for t in (item["params"] if isinstance(item, dict) else [item])
    ]
    # one fused kernel instead of a dozen per step where every parameter is on a GPU
    fused = bool(tensors) and all(t.is_cuda for t in tensors)
    optimizer = torch.optim.Adam(
        params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused or None
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=optim.lr_milestones, gamma=optim.lr_gamma
    )
    return optimizer, scheduler


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def open_run_outputs(
    out_dir: str,
    config: Mapping[str, Any],
    *,
    terms: Sequence[str],
    resume_step: Optional[int],
    tensorboard: bool,
) -> tuple[CsvLog, CsvLog, TensorBoardLog]:
    """
    Prepare the output folder of a training run: create ``out_dir`` and ``out_dir/val``, open
    the training and validation CSV logs (an earlier run's rows up to ``resume_step`` kept) and
    TensorBoard, and write ``config.yaml``.

    Args:
        out_dir: the output folder (local path or iopath URI).
        config: the run's configuration as a nested dict.
        terms: the loss-term columns of the training log.
        resume_step: the step a resumed run continues from (``None``: a new run).
        tensorboard: also log to TensorBoard when it imports.

    Returns:
        ``(train_log, val_log, tensorboard)``.
    """
    make_dirs(out_dir)
    make_dirs(os.path.join(out_dir, VAL_DIR_NAME))
    train_log = CsvLog(
        path=os.path.join(out_dir, TRAIN_LOG_NAME),
        columns=[
            "step", "loss", *terms, "lr", "n_steps", "hit_rate", "train_mask_agreement", "seconds",
        ],
        resume_step=resume_step,
    )
    val_log = CsvLog(
        path=os.path.join(out_dir, VAL_LOG_NAME),
        columns=["step", "psnr", "psnr_masked", "ssim", "mask_iou", "seconds"],
        resume_step=resume_step,
    )
    board = TensorBoardLog(log_dir=os.path.join(out_dir, "tensorboard"), enabled=tensorboard)
    import yaml

    with atomic_write(os.path.join(out_dir, "config.yaml"), "w") as handle:
        yaml.safe_dump(dict(config), handle, sort_keys=False)
    return train_log, val_log, board


def progress_bar(*, total: int, initial: int, enabled: bool, desc: str) -> Any:
    """
    The tqdm bar of a training loop (``initial`` steps done of ``total``): refreshed often in a
    terminal, every 30 seconds when stderr goes to a log file.
    """
    from tqdm.auto import tqdm

    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=desc,
        unit="it",
        dynamic_ncols=True,
        mininterval=0.2 if interactive else 30.0,
    )


def log_train_row(
    values: Mapping[str, Any],
    *,
    step: int,
    seconds: float,
    train_log: Optional[CsvLog],
    tensorboard: Optional[TensorBoardLog],
) -> None:
    """Log a step's losses with ``step`` and training ``seconds`` (CSV log and TensorBoard)."""
    row = {**values, "step": step, "seconds": seconds}
    if train_log is not None:
        train_log.append(row)
    if tensorboard is not None:
        tensorboard.add("train", row, step)


def plot_run_curves(out_dir: str, terms: Sequence[str]) -> Optional[str]:
    """
    Plot the CSV logs of ``out_dir`` to ``curves.png`` (:func:`.logs.plot_curves`); a failure
    only warns: a plot must not fail a finished fit.

    Returns:
        The PNG's path, or ``None`` when nothing was plotted.
    """
    try:
        return plot_curves(
            os.path.join(out_dir, TRAIN_LOG_NAME),
            os.path.join(out_dir, VAL_LOG_NAME),
            os.path.join(out_dir, CURVES_NAME),
            terms=list(terms),
        )
    except Exception as error:  # a plot must not fail a finished fit
        import warnings

        # stacklevel 3: the warning points at the caller of the trainer's fit().
        warnings.warn(f"Could not plot the training curves: {error}", stacklevel=3)
        return None


def restore_training_state(
    state: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generators: Mapping[str, torch.Generator],
) -> tuple[int, float]:
    """
    Load a checkpoint's model, optimiser, learning-rate schedule and random states.

    Returns:
        ``(step, train_seconds)`` of the checkpoint.

    Raises:
        ValueError: the model does not match, or the checkpoint lacks what a resume needs.
    """
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"The checkpoint's model does not match the configured one ({error}). Resume "
            "with the configuration stored in the checkpoint."
        ) from error
    for key in ("optimizer", "scheduler", "rng"):
        if key not in state:
            raise ValueError(f"The checkpoint lacks {key!r}; it cannot be resumed exactly.")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"], generators)
    return int(state["step"]), float(state.get("train_seconds", 0.0))


class Trainer:
    """
    Fits a DVR field to multi-view images and masks.

    Args (keyword-only):
        config: the :class:`FitConfig` (its ``device`` may be ``"auto"``).
        train_data: the training views (:class:`dvr_plugin.data.MultiViewData`).
        val_data: held-out views for validation renders and metrics, or ``None``.
        out_dir: folder (or iopath URI) for the checkpoint, logs, validation grids and curves;
            ``None`` writes nothing.
        resume: continue from ``out_dir/checkpoint.pt`` (or ``resume_from``).
        resume_from: an explicit checkpoint to continue from.
        progress: show a tqdm progress bar.
        distributed: train on the ranks of the initialised ``torch.distributed`` process group
            (``None``: when there is one with several ranks; ``False``: never). Rank 0 alone
            writes files and shows progress; see :mod:`dvr_plugin.training.distributed`.

    Raises:
        ValueError: for inconsistent data (image / mask / camera counts, non-finite cameras,
            empty masks), options that cannot work together, or an unreadable checkpoint.
        FileNotFoundError: when resuming without a checkpoint.
    """

    def __init__(
        self,
        *,
        config: FitConfig,
        train_data: MultiViewData,
        val_data: Optional[MultiViewData] = None,
        out_dir: Optional[str] = None,
        resume: bool = False,
        resume_from: Optional[str] = None,
        progress: bool = True,
        distributed: Optional[bool] = None,
    ) -> None:
        self.config = config
        self.dist = None if distributed is False else current_context()
        if distributed and self.dist is None:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group with "
                "several ranks (start with torchrun)."
            )
        self.is_main = self.dist is None or self.dist.is_main
        self.device = resolve_device(config.device)
        if self.dist is not None:
            self.device = self.dist.device_for(self.device)
        self.out_dir = None if out_dir is None else str(out_dir)
        self.progress = progress and self.is_main
        check_training_views(train_data, empty_masks=config.data.empty_masks, what="training")
        if val_data is not None:
            check_training_views(val_data, empty_masks="ignore", what="held-out")
            if val_data.image_size != train_data.image_size:
                raise ValueError(
                    f"Held-out views are {val_data.image_size} but training views "
                    f"{train_data.image_size}; use one image size."
                )
        self.train_data = train_data.to(self.device)
        self.val_data = None if val_data is None else val_data.to(self.device)
        if self.dist is not None:
            self.dist.check_same_data({"training": self.train_data, "held-out": self.val_data})
            self.dist.shard(min(config.train.images_per_batch, len(train_data)))  # >= 1 each
        self.weights = config.loss.weights()
        self.has_depth = self.train_data.depths is not None
        if self.weights.image_gradient > 0 and config.train.sampling != "patch":
            raise ValueError(
                "loss.image_gradient > 0 needs train.sampling=patch (2x2 pixel patches)."
            )
        height, width = self.train_data.image_size
        if config.train.sampling != "foreground_balanced":
            if config.train.rays_per_image > height * width:
                raise ValueError(
                    f"train.rays_per_image={config.train.rays_per_image} exceeds the "
                    f"{height}x{width} pixels of an image."
                )
        self.amp = bool(config.mixed_precision) and self.device.type == "cuda"

        seed_everything(config.seed)
        self.field = build_field(config).to(self.device)
        # The network as the renderer and the losses call it (under autocast with AMP).
        self.network: nn.Module = self.field
        if self.amp:
            self.network = AutocastField(field=self.field, device_type=self.device.type)
        # empty-space skipping, refreshed from the field as it trains (train_step)
        self.grid: Optional[OccupancyGrid] = None
        if config.train.occupancy_grid > 0:
            self.grid = OccupancyGrid(resolution=config.train.occupancy_grid).to(self.device)
        self._grid_fresh = False
        self.renderer = DVRRenderer(
            field=self.network,
            raysampler=SecantRaysampler(
                n_steps=config.train.step_milestones[0],
                n_secant_steps=config.train.n_secant_steps,
                compute_normals=False,
                cuda_graphs=config.train.cuda_graphs,
                occupancy_grid=self.grid,
            ),
            background_color=config.background,
            # a non-finite colour makes the loss non-finite, which train_step reports: no second
            # host synchronisation per step for the same check
            check_finite=False,
        )
        self.schedule = StepSchedule(config.train.step_milestones)
        self.optimizer, self.scheduler = build_optimizer(config.optim, self.field.parameters())
        self.image_generator = torch.Generator().manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        box = torch.tensor(UNIT_CUBE_BOUNDS, dtype=torch.float32, device=self.device)
        self.box_min, self.box_max = box[0], box[1]
        self.step = 0
        self.train_seconds = 0.0
        self.last_validation: Optional[dict[str, Any]] = None
        self.stopped_early = False

        # Which PSNR leads reports: inside the mask when the images show a real background.
        self.background_modelled = background_is_modelled(
            config.data.format,
            self.train_data if self.val_data is None else self.val_data,
            config.background,
        )
        self.headline_psnr, _ = headline_psnr(self.background_modelled)
        self.untrained_validation: Optional[dict[str, Any]] = None
        self.collapse: Optional[str] = None
        # A resumed checkpoint already at train.iterations: fit() trains nothing, writes nothing.
        self.nothing_to_do: Optional[str] = None

        resumed = False
        if resume or resume_from is not None:
            path = resume_from or self._path(CHECKPOINT_NAME)
            if path is None:
                raise ValueError("resume needs out_dir or resume_from.")
            read = functools.partial(_read_for_resume, path)
            if self.dist is None:
                state = read(map_location=self.device)
            else:  # rank 0 reads the file; every rank gets its contents
                state = self.dist.from_main(read, map_location="cpu")
            # Every refusal (other data first) comes before anything in out_dir is touched.
            self.load_state(state, path=path)
            self._check_resume_step(state, path)
            resumed = True
            if self.step == config.train.iterations:
                self.nothing_to_do = (
                    f"{path} is already at step {self.step} = train.iterations: nothing to do "
                    f"(nothing was written); pass train.iterations=N with N > {self.step} to "
                    "train longer."
                )
            if self.out_dir is not None and self.is_main:
                self.untrained_validation = untrained_row(self._path(VAL_LOG_NAME))
        elif self.out_dir is not None and self._on_main(
            checkpoint_exists, self._path(CHECKPOINT_NAME)
        ):
            raise ValueError(
                f"{self.out_dir} already holds a checkpoint; resume from it (--resume) or choose "
                "another output folder. Nothing was overwritten."
            )

        self.train_log = self.val_log = None
        self.tensorboard = None
        if self.out_dir is not None and self.is_main and self.nothing_to_do is None:
            self.train_log, self.val_log, self.tensorboard = open_run_outputs(
                self.out_dir,
                config.to_dict(),
                terms=TERMS,
                resume_step=self.step if resumed else None,
                tensorboard=config.eval.tensorboard,
            )

        # The forward pass of a step; on several ranks it runs inside DistributedDataParallel.
        self.step_forward: Callable[..., Any] = self._forward_losses
        self.shard: Optional[BatchShard] = None
        if self.dist is not None:
            self.step_forward = self.dist.wrap(
                StepForward(field=self.field, forward=self._forward_losses)
            )

    # -----------------------------------------------------------------------------------------
    # One step

    def _field_values(self, points: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """`(B, R)` field values at the selected `(B, R, 3)` points (0 elsewhere)."""
        rows, cols = select.nonzero(as_tuple=True)
        full = torch.zeros(select.shape, dtype=torch.float32, device=points.device)
        if rows.numel() == 0:
            return full
        values = evaluate_field(self._geometry_network(), points[rows, cols][None]).values[0]
        return full.index_put((rows, cols), values.float())

    def _geometry_network(self) -> nn.Module:
        """The network the field's values come from (a view-dependent field's geometry)."""
        return geometry_of(self.network)

    def _jittered_hits(self, points: torch.Tensor) -> torch.Tensor:
        """`(N, 3)` hit points moved by the normal term's jitter (drawn in step on all ranks)."""
        jitter = jitter_points
        total = points.shape[0]
        if self.dist is not None:
            # Every rank draws the offsets of all ranks' hit points (in rank order) and keeps
            # its own, so that the generators stay in step; a rank without hits draws too.
            hits = self.dist.ragged_shard(points.shape[0])
            jitter, total = hits.global_call(jitter_points), hits.total
        if total == 0:
            return points
        return jitter(points, self.config.loss.normal_jitter, self.generator)

    def _box_points(self, batch: int, n_rays: int) -> torch.Tensor:
        """`(B, N, 3)` uniform points in the marching box for the eikonal term, ``N`` from
        ``loss.eikonal_box_points`` (0: half the rays per image); drawn for the global batch."""
        count = self.config.loss.eikonal_box_points or max(1, n_rays // 2)
        total = batch if self.shard is None else self.shard.total
        u = torch.rand((total, count, 3), generator=self.generator, device=self.device)
        if self.shard is not None:
            u = self.shard.take(u)
        return self.box_min + u * (self.box_max - self.box_min)

    def _gradient_terms(
        self, surface: torch.Tensor, hit: torch.Tensor
    ) -> dict[str, Optional[torch.Tensor]]:
        """
        The terms on spatial gradients of the field, from one evaluation and one double
        backward: normal smoothness at the (detached) surface points of the hits and at
        jittered neighbours (``loss.normal``), and the eikonal term at the surface points and
        uniform points in the box (``loss.eikonal``). A term without points is ``None``.
        """
        with_normal, with_eikonal = self.weights.normal > 0, self.weights.eikonal > 0
        rows, cols = hit.nonzero(as_tuple=True)
        count = rows.numel()
        points = surface.detach()[rows, cols]
        parts = [points]
        if with_normal:
            parts.append(self._jittered_hits(points))
        if with_eikonal:
            box = self._box_points(*hit.shape)
            parts.append(box.reshape(-1, 3))
        terms: dict[str, Optional[torch.Tensor]] = {}
        if with_normal:
            terms["normal"] = None
        if with_eikonal:
            terms["eikonal"] = None
        every = torch.cat(parts).requires_grad_(True)
        if every.shape[0] == 0:
            return terms
        values = evaluate_field(self._geometry_network(), every[None]).values[0]
        (gradient,) = torch.autograd.grad(values.sum(), every, create_graph=True)
        gradient = gradient.float()
        zeros = torch.zeros(*hit.shape, 3, dtype=torch.float32, device=hit.device)
        at_hits = zeros.index_put((rows, cols), gradient[:count])
        if with_normal and count > 0:
            normals_jittered = zeros.index_put((rows, cols), gradient[count : 2 * count])
            terms["normal"] = normal_smoothness_loss(at_hits, normals_jittered, hit)
        if with_eikonal:
            at_box = gradient[gradient.shape[0] - box.shape[0] * box.shape[1] :]
            gradients = torch.cat([at_hits, at_box.reshape(box.shape)], dim=1)
            in_box = torch.ones(box.shape[:2], dtype=torch.bool, device=hit.device)
            select = torch.cat([hit, in_box], dim=1)
            terms["eikonal"] = eikonal_penalty(gradients, select)
        return terms

    def _mask_alpha(self, step: int) -> float:
        """The soft mask's sharpness at a training step (``loss.mask_alpha_*``)."""
        loss = self.config.loss
        start = loss.mask_alpha_start
        if start is None:
            start = 50.0 if self.config.model.field_type == "sdf" else 1.0
        return soft_mask_alpha(
            step,
            start=start,
            factor=loss.mask_alpha_factor,
            every=loss.mask_alpha_every,
            increases=loss.mask_alpha_increases,
        )

    def _mask_term(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        hit: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> Optional[torch.Tensor]:
        """
        IDR's soft mask loss on the rays outside the mask or without a hit (those crossing the
        box), with the smallest outside value along each ray from a stratified search of
        ``loss.mask_samples`` depths in the box.
        """
        origins, directions = origins.detach(), directions.detach()
        near, far, missed = intersect_box(origins, directions, self.box_min, self.box_max)
        has_range = ~missed & torch.isfinite(near) & torch.isfinite(far) & (far > near)
        select = has_range & ~(hit & gt_mask)
        total = hit.shape[0] if self.shard is None else self.shard.total
        offsets = torch.rand((total, hit.shape[1]), generator=self.generator, device=self.device)
        if self.shard is not None:
            offsets = self.shard.take(offsets)
        if not bool(select.any()):
            return None
        minimum = min_outside_along_rays(
            self._geometry_network(),
            origins,
            directions,
            near,
            far,
            select,
            n_samples=self.config.loss.mask_samples,
            offsets=offsets,
            field_type=self.config.model.field_type,
        )
        alpha = self._mask_alpha(self.step)
        return soft_mask_loss(minimum.values, gt_mask, alpha, select=select)

    def _update_annealing(self) -> None:
        """Set the Fourier features' coarse-to-fine progress to ``step / fourier_anneal_steps``
        (capped at 1); the progress is a buffer of the field, saved with the model."""
        steps = self.config.model.fourier_anneal_steps
        if steps <= 0:
            return
        progress = min(1.0, self.step / steps)
        for module in self.field.modules():
            if isinstance(module, OccupancyTextureField) and module.encoding.anneal:
                module.set_encoding_progress(progress)

    def _forward_losses(
        self,
        cameras: Any,
        xys: torch.Tensor,
        n_steps: int,
        gt_rgb: torch.Tensor,
        gt_mask: torch.Tensor,
        gt_depth: Optional[torch.Tensor],
    ) -> tuple[dict[str, Optional[torch.Tensor]], torch.Tensor]:
        """
        The forward pass of a step: render the `(B, R, 2)` rays ``xys`` of ``B`` cameras and
        compute the loss terms against `(B, R, 3)` colours, `(B, R)` mask values and depths.

        Returns:
            ``(terms, hit)``: the loss terms (``None`` where nothing was selected) and the
            `(B, R)` hit flags.
        """
        cfg = self.config
        field_type = cfg.model.field_type
        out = self.renderer(cameras, xys=xys, n_steps=n_steps)
        bundle = out.ray_bundle
        hit = out.hit
        pred_rgb = out.images.float()
        pred_depth = out.depths.float()
        terms: dict[str, Optional[torch.Tensor]] = {}
        if self.weights.rgb > 0:
            terms["rgb"] = rgb_loss(pred_rgb, gt_rgb, hit, gt_mask)
        if gt_depth is not None:
            valid = gt_mask & (gt_depth > 0)
            if self.weights.depth > 0:
                terms["depth"] = depth_loss(pred_depth, gt_depth, valid, hit)
            if self.weights.world_point > 0:
                gt_points = bundle.origins + gt_depth[..., None] * bundle.directions
                terms["world_point"] = world_point_loss(
                    out.surface_points.float(), gt_points, valid, pred_hit=hit
                )
        if self.weights.freespace > 0 or self.weights.occupancy > 0:
            origins, directions = bundle.origins.detach(), bundle.directions.detach()
            near, far, _ = intersect_box(origins, directions, self.box_min, self.box_max)
            hull = None
            if gt_depth is not None and cfg.loss.visual_hull_depth:
                hull = torch.where(gt_mask & (gt_depth > 0), gt_depth, torch.zeros_like(gt_depth))
            loss_points = freespace_and_occupancy_points
            if self.shard is not None:
                # Drawn for the global batch (generators in step); this rank's rows kept.
                loss_points = self.shard.global_call(loss_points)
            points = loss_points(
                origins,
                directions,
                pred_depth.detach(),
                hit,
                gt_mask,
                near,
                far,
                generator=self.generator,
                visual_hull_depth=hull,
            )
            chosen = torch.where(
                points.freespace_select[..., None],
                points.freespace_points,
                points.occupancy_points,
            )
            values = self._field_values(
                chosen, points.freespace_select | points.occupancy_select
            )
            options = {"field_type": field_type, "sdf_beta": cfg.loss.sdf_beta}
            terms["freespace"] = freespace_loss(values, points.freespace_select, **options)
            terms["occupancy"] = occupancy_loss(values, points.occupancy_select, **options)
        if self.weights.normal > 0 or self.weights.eikonal > 0:
            terms.update(self._gradient_terms(out.surface_points, hit))
        if self.weights.image_gradient > 0:
            terms["image_gradient"] = image_gradient_loss(pred_rgb, gt_rgb, hit & gt_mask)
        if self.weights.mask > 0:
            terms["mask"] = self._mask_term(bundle.origins, bundle.directions, hit, gt_mask)
        return terms, hit

    def train_step(self) -> dict[str, float]:
        """
        Run one optimisation step and advance ``step``.

        On several ranks every rank takes its block of the global batch, and the returned
        values are those of the global batch (the same on every rank).

        Returns:
            ``loss``, one entry per computed term, ``lr``, ``n_steps``, ``hit_rate`` (share of
            sampled rays that found a surface) and ``train_mask_agreement`` (share of sampled
            rays whose hit agrees with the mask).
        """
        cfg = self.config
        data = self.train_data
        self._update_annealing()
        index, masks, sample = draw_pixel_batch(
            data, cfg.train, image_generator=self.image_generator, generator=self.generator
        )
        batch = index.shape[0]
        index_device = index.to(self.device)
        if self.dist is not None:
            # Every rank drew the whole global batch (generators in step); it keeps its images.
            self.shard = self.dist.shard(batch)
            index, index_device, masks, sample = (
                self.shard.take(value) for value in (index, index_device, masks, sample)
            )
        images = data.images[index_device]
        gt_rgb = gather(images, sample)
        gt_mask = gather(masks, sample)
        gt_depth = gather(data.depths[index_device], sample) if self.has_depth else None
        cameras = index_cameras(data.cameras, index)
        n_steps = self.schedule.n_steps(self.step)
        self._refresh_grid()

        self.field.train()
        terms, hit = self.step_forward(cameras, sample.xys, n_steps, gt_rgb, gt_mask, gt_depth)
        loss = total_loss(terms, self.weights)
        reduced: Optional[dict[str, Optional[float]]] = None
        if self.dist is None:
            finite, backward = bool(torch.isfinite(loss)), loss.requires_grad
        else:
            # The global batch's values (the same on every rank): the finiteness check, the
            # decision to step and the logs agree across ranks.
            reduced = self.dist.global_means(
                {
                    "loss": loss.detach(),
                    **{k: None if v is None else v.detach() for k, v in terms.items()},
                    "hit_rate": hit.float().mean(),
                    "train_mask_agreement": (hit == gt_mask).float().mean(),
                    "requires_grad": float(loss.requires_grad),
                },
                self.shard,
            )
            finite, backward = math.isfinite(reduced["loss"]), reduced["requires_grad"] > 0
            # DDP averages the ranks' gradients: scale to the global batch, and let every
            # parameter take part on every rank (a rank may select no term at all).
            loss = loss * self.dist.loss_scale(self.shard) + parameters_anchor(
                list(self.field.parameters())
            )
        if not finite:
            if reduced is None:
                values = {k: float(v) for k, v in terms.items() if v is not None}
            else:
                values = {k: reduced[k] for k in terms if reduced[k] is not None}
            raise FloatingPointError(
                f"The loss became non-finite at step {self.step}: {values}. Try a lower "
                "optim.lr or optim.grad_clip."
            )
        self.optimizer.zero_grad(set_to_none=True)
        if backward:
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.field.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1

        if reduced is None:
            stats: dict[str, float] = {"loss": float(loss.detach())}
            for name, value in terms.items():
                if value is not None:
                    stats[name] = float(value.detach())
            hit_rate = float(hit.float().mean())
            agreement = float((hit == gt_mask).float().mean())
        else:
            stats = {"loss": reduced["loss"]}
            stats.update({name: reduced[name] for name in terms if reduced[name] is not None})
            hit_rate, agreement = reduced["hit_rate"], reduced["train_mask_agreement"]
        stats["lr"] = float(lr)
        stats["n_steps"] = float(n_steps)
        stats["hit_rate"] = hit_rate
        stats["train_mask_agreement"] = agreement
        if self.weights.mask > 0:
            stats["mask_alpha"] = self._mask_alpha(self.step - 1)  # the step just taken
        if cfg.model.fourier_anneal_steps > 0:
            stats["fourier_progress"] = min(1.0, (self.step - 1) / cfg.model.fourier_anneal_steps)
        return stats

    # -----------------------------------------------------------------------------------------
    # Validation, checkpoints

    @torch.no_grad()
    def _refresh_grid(self) -> None:
        """
        Refresh the occupancy grid from the field: every cell on the first step (also after
        a resume), then ``grid_refresh_fraction`` of them every ``grid_refresh_every`` steps.
        The random choice is seeded by the step, so every rank keeps the same grid.
        """
        train = self.config.train
        if self.grid is None:
            return
        if self._grid_fresh and self.step % train.grid_refresh_every != 0:
            return
        generator = torch.Generator(device=self.device).manual_seed(
            self.config.seed + 7919 * self.step
        )
        fraction = train.grid_refresh_fraction if self._grid_fresh else 1.0
        self.grid.refresh(geometry_of(self.field), fraction=fraction, generator=generator)
        self._grid_fresh = True

    def validate(self, *, save_grid: bool = True) -> Optional[dict[str, Any]]:
        """
        Render the held-out views; log PSNR, SSIM and mask IoU; save the comparison grid
        (ground truth | render | depth | normals) as ``val/step_XXXXXX.png``.

        Returns:
            The metrics (``None`` without held-out views, and on ranks other than 0).
        """
        if self.val_data is None or not self.is_main:
            return None
        self.field.eval()
        start = time.perf_counter()
        rendered = render_views(
            self.field,
            self.val_data.cameras,
            self.val_data.image_size,
            n_steps=self.config.eval.n_steps,
            n_secant_steps=self.config.train.n_secant_steps,
            background=self.config.background,
            batch_size=4 if self.device.type == "cuda" else 1,
        )
        metrics = image_metrics(rendered, self.val_data.images, self.val_data.masks)
        metrics["step"] = self.step
        metrics["seconds"] = time.perf_counter() - start
        if self.out_dir is not None and save_grid:
            grid = comparison_grid(
                rendered,
                self.val_data.images,
                self.val_data.masks,
                max_views=self.config.eval.max_views,
            )
            save_png(grid, self._path(VAL_DIR_NAME, f"step_{self.step:06d}.png"))
        if self.val_log is not None:
            self.val_log.append(metrics)
        if self.tensorboard is not None:
            self.tensorboard.add("val", metrics, self.step)
        self.last_validation = metrics
        self.field.train()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs."""
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.field.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(self._generators()),
            "train_seconds": self.train_seconds,
            "image_size": list(self.train_data.image_size),
            "orbit": orbit_settings(self.train_data.cameras, self.config.data),
            "data_frame": WorldFrame.from_views(self.train_data, self.config.data.format).to_dict(),
            "data_fingerprint": {
                "format": self.config.data.format,
                "train": data_fingerprint(self.train_data),
                "val": None if self.val_data is None else data_fingerprint(self.val_data),
            },
            **({"occupancy_grid": self.grid.state_dict()} if self.grid is not None else {}),
        }

    def load_state(self, state: Mapping[str, Any], *, path: Optional[str] = None) -> None:
        """
        Restore what :meth:`state_dict` saved (model, optimiser, schedule, step, RNG and the
        occupancy grid; a checkpoint without a grid gets one refreshed on the next step).

        The checkpoint's data fingerprint must match the trainer's data (format, views, image
        size, cameras, colours); a checkpoint without one (older) is loaded with a warning.
        ``path`` names the checkpoint in messages.

        Raises:
            ValueError: the checkpoint was trained on other data (one line saying what
                differs; nothing is changed), or its model does not match.
        """
        where = path or "the checkpoint"
        if "data_fingerprint" not in state:
            import warnings

            warnings.warn(
                f"{where} holds no data fingerprint (an older checkpoint): cannot check that "
                "it was trained on this data; resuming anyway.",
                stacklevel=2,
            )
        else:
            mismatch = resume_data_mismatch(
                state["data_fingerprint"],
                data_format=self.config.data.format,
                train_data=self.train_data,
                val_data=self.val_data,
            )
            if mismatch is not None:
                then = (state.get("config") or {}).get("data") or {}
                raise ValueError(
                    f"Cannot resume {where}: it was trained on other data ({mismatch}; "
                    f"checkpoint data: {then.get('format')} at {then.get('path')}). Nothing was "
                    "written; resume with the data it was started on, or fit into another folder."
                )
        self.step, self.train_seconds = restore_training_state(
            state,
            model=self.field,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            generators=self._generators(),
        )
        saved_grid = state.get("occupancy_grid")
        self._grid_fresh = False
        if self.grid is not None and saved_grid is not None:
            if tuple(saved_grid["occupied"].shape) == tuple(self.grid.resolution):
                self.grid.load_state_dict(saved_grid)
                self._grid_fresh = True

    def _check_resume_step(self, state: Mapping[str, Any], path: str) -> None:
        """
        Refuse a resume that cannot train: ``train.iterations`` below the checkpoint's step, or
        a ``train.time_budget_s`` the checkpoint has used up (``ValueError``, nothing written).
        """
        train = self.config.train
        step = int(state["step"])
        if train.iterations < step:
            raise ValueError(
                f"train.iterations={train.iterations} is below the step of {path} ({step}); "
                f"pass train.iterations=N with N > {step} to train longer. Nothing was written."
            )
        seconds = float(state.get("train_seconds", 0.0))
        budget = train.time_budget_s
        if budget is not None and seconds >= budget and step < train.iterations:
            raise ValueError(
                f"{path} has used its train.time_budget_s={budget:g} s ({seconds:.0f} s of "
                "training); pass a larger train.time_budget_s (or null) to continue. Nothing "
                "was written."
            )

    def save_checkpoint(self, path: Optional[str] = None) -> Optional[str]:
        """
        Write the checkpoint atomically (default ``out_dir/checkpoint.pt``); on several ranks
        rank 0 writes it (its contents do not depend on the number of ranks).
        """
        path = path or self._path(CHECKPOINT_NAME)
        if path is None or not self.is_main:
            return None
        save_checkpoint(path, self.state_dict())
        return path

    # -----------------------------------------------------------------------------------------
    # The loop

    def fit(self) -> dict[str, Any]:
        """
        Train until ``train.iterations`` (or ``train.time_budget_s``), validating, logging and
        checkpointing on the way; the checkpoint, a last validation and the curves plot are
        written at the end.

        Safety: after every validation (and when no sampled ray has hit a surface for
        :data:`ZERO_HIT_STEPS` steps) the fit is checked for a collapse
        (:func:`collapse_reason`), which is warned about at once. Ctrl-C stops at the end of the
        current step: the checkpoint of that step is written and :class:`FitInterrupted` raised
        (a second Ctrl-C stops at once; a ``KeyboardInterrupt`` raised inside a step rewinds the
        trainer's generators to the step's start, so the resumed run draws that step again). A
        resume already at ``train.iterations`` trains and writes nothing.

        Returns:
            ``step``, ``train_seconds``, ``stopped_early``, ``last`` (the last step's losses),
            ``validation`` (the last validation metrics or ``None``), ``collapse`` (the reason,
            or ``None``) and ``nothing_to_do`` (a message, or ``None``).
        """
        cfg = self.config
        total = cfg.train.iterations
        budget = cfg.train.time_budget_s
        if self.nothing_to_do is not None:
            return self._summary({})
        if self.step == 0 and cfg.eval.validate_every > 0:
            self.validate()
            self._check_collapse(None)  # keeps the untrained model's metrics
        last: dict[str, float] = {}
        zero_hits = 0
        # The step and generator states at the start of the running step (see the except).
        at_start: Optional[tuple[int, dict[str, torch.Tensor]]] = None
        bar = progress_bar(total=total, initial=self.step, enabled=self.progress, desc="fit")
        interrupts = deferred_interrupt(enabled=self.dist is None, notify=bar.write)
        try:
            with interrupts as interrupt:
                while self.step < total:
                    if budget is not None and self._agree(self.train_seconds >= budget):
                        self.stopped_early = True
                        break
                    at_start = (
                        self.step,
                        {name: g.get_state() for name, g in self._generators().items()},
                    )
                    start = time.perf_counter()
                    last = self.train_step()
                    self.train_seconds += time.perf_counter() - start
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{last['loss']:.4g}",
                        # the terms this fit trains with (a recipe may turn DVR's off)
                        **{
                            POSTFIX_NAMES.get(term, term): f"{last.get(term, 0.0):.3g}"
                            for term in TERMS
                            if getattr(self.weights, term) > 0
                        },
                        hit=f"{last['hit_rate']:.2f}",
                        n=int(last["n_steps"]),
                        refresh=False,
                    )
                    if self.step % cfg.eval.log_every == 0 or self.step == total:
                        log_train_row(
                            last,
                            step=self.step,
                            seconds=self.train_seconds,
                            train_log=self.train_log,
                            tensorboard=self.tensorboard,
                        )
                    zero_hits = zero_hits + 1 if last["hit_rate"] == 0.0 else 0
                    if zero_hits == ZERO_HIT_STEPS:
                        self._warn_collapse(
                            f"no sampled training ray has hit a surface for {zero_hits} steps",
                            bar,
                        )
                    if cfg.eval.validate_every and self.step % cfg.eval.validate_every == 0:
                        self.validate()
                        if self.last_validation is not None:
                            bar.write(f"step {self.step}: {self._describe_validation()}")
                            self._check_collapse(bar)
                    if cfg.eval.checkpoint_every and self.step % cfg.eval.checkpoint_every == 0:
                        self.save_checkpoint()
                    if interrupt.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if at_start is not None and at_start[0] == self.step:
                # Stopped inside a step: back to the random state of its start, so that the
                # resumed run draws what this step drew.
                for name, generator in self._generators().items():
                    generator.set_state(at_start[1][name])
            bar.close()
            raise FitInterrupted(step=self.step, path=self.save_checkpoint()) from None
        finally:
            bar.close()
        self.save_checkpoint()
        if self.last_validation is None or self.last_validation["step"] != self.step:
            self.validate()
            if self.last_validation is not None and self.is_main:
                self._check_collapse(None)
        if self.out_dir is not None and self.is_main:
            plot_run_curves(self.out_dir, [t for t in TERMS if getattr(self.weights, t) > 0])
        if self.tensorboard is not None:
            self.tensorboard.close()
        return self._summary(last)

    def _summary(self, last: Mapping[str, float]) -> dict[str, Any]:
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "stopped_early": self.stopped_early,
            "last": dict(last),
            "validation": self.last_validation,
            "collapse": self.collapse,
            "nothing_to_do": self.nothing_to_do,
        }

    def _describe_validation(self) -> str:
        """The last validation in words, the headline PSNR first."""
        metrics = self.last_validation or {}
        if self.headline_psnr == "psnr_masked":
            return (
                f"held-out PSNR inside the mask {metrics['psnr_masked']:.2f} dB (whole image "
                f"{metrics['psnr']:.2f} dB), mask IoU {metrics['mask_iou']:.3f}"
            )
        return f"held-out PSNR {metrics['psnr']:.2f} dB, mask IoU {metrics['mask_iou']:.3f}"

    def _check_collapse(self, bar: Any) -> None:
        """Warn when the last validation shows a collapsed fit (after the untrained one)."""
        metrics = self.last_validation
        if metrics is None:
            return
        if metrics["step"] == 0:
            self.untrained_validation = dict(metrics)
            return
        reason = collapse_reason(metrics, self.untrained_validation)
        self.collapse = None  # the latest validation decides (an early empty spell may recover)
        if reason is not None:
            self._warn_collapse(f"step {metrics['step']}: {reason}", bar)

    def _warn_collapse(self, reason: str, bar: Any) -> None:
        """Say loudly (progress bar line and a warning) that the fit is collapsing."""
        import warnings

        self.collapse = reason
        message = (
            f"WARNING: the fit is collapsing: {reason}. The object is vanishing from the field "
            "(if later validations do not recover, stop and see 'When a fit collapses' in "
            "docs/training.md)."
        )
        if not self.is_main:
            return
        if bar is not None:
            bar.write(message)
        # stacklevel 3: the warning points at the caller of the trainer's fit().
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -----------------------------------------------------------------------------------------

    def _on_main(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; on several ranks run by rank 0 and its result given to every rank."""
        return fn(*args) if self.dist is None else self.dist.from_main(fn, *args)

    def _agree(self, flag: bool) -> bool:
        """``flag``; on several ranks rank 0's (the ranks must stop at the same step)."""
        return flag if self.dist is None else self.dist.broadcast_flag(flag)

    def _generators(self) -> dict[str, torch.Generator]:
        return {"images": self.image_generator, "sampling": self.generator}

    def _path(self, *parts: str) -> Optional[str]:
        if self.out_dir is None:
            return None
        return os.path.join(self.out_dir, *parts)


def untrained_row(val_csv: Optional[str]) -> Optional[dict[str, float]]:
    """The step-0 row (the untrained model) of a validation log, if there is one."""
    from ..engine.logs import read_csv

    if val_csv is None:
        return None
    log = read_csv(val_csv)
    steps = log.get("step", [])
    if not steps or steps[0] != 0:
        return None
    return {
        key: values[0]
        for key, values in log.items()
        if key not in ("step", "seconds") and math.isfinite(values[0])
    }


def _read_for_resume(path: str, *, map_location: Any) -> dict[str, Any]:
    """The checkpoint to resume from, with a clear error when there is none."""
    if not checkpoint_exists(path):
        raise FileNotFoundError(f"Cannot resume: no checkpoint at {path}.")
    return load_checkpoint(path, map_location=map_location)


# ---------------------------------------------------------------------------------------------
# Safety: resume checks, collapse detection, the headline PSNR, Ctrl-C


class FitInterrupted(KeyboardInterrupt):
    """
    Training stopped by Ctrl-C (or a ``KeyboardInterrupt``) after the checkpoint of ``step``
    was written to ``path`` (``None`` when nothing is written: no output folder, or a rank other
    than 0). A ``KeyboardInterrupt``, so code that catches that still does.
    """

    def __init__(self, *, step: int, path: Optional[str]) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint: {path}")
        self.step = step
        self.path = path


# A held-out mask IoU below this means the object has vanished (or fills the view).
MASK_IOU_FLOOR = 0.05
# Consecutive training steps without a single hit before the loop warns that the object vanished
# (with uniform pixel sampling an early empty spell of a few dozen steps is common and recovers).
ZERO_HIT_STEPS = 100
# Formats whose images show a real background where the mask is 0 (photographs).
REAL_BACKGROUND_FORMATS = ("dtu", "monosdf")


def resume_data_mismatch(
    saved: Optional[Mapping[str, Any]],
    *,
    data_format: str,
    train_data: MultiViewData,
    val_data: Optional[MultiViewData],
) -> Optional[str]:
    """
    Why the data of a run differs from the data a checkpoint was trained on, or ``None`` when
    they agree.

    Args:
        saved: the checkpoint's ``data_fingerprint`` (``{"format", "train", "val"}``).
        data_format: the run's ``data.format``.
        train_data, val_data: the run's views.
    """
    from ..data.frame import data_fingerprint, fingerprint_mismatch

    if saved is None:
        return None
    if saved.get("format") != data_format:
        return f"data.format {saved.get('format')} then, {data_format} now"
    for what, views in (("training", train_data), ("held-out", val_data)):
        then = saved.get("train" if what == "training" else "val")
        if (then is None) != (views is None):
            before = "no" if then is None else then["n_views"]
            now = "none" if views is None else len(views)
            return f"{before} {what} views then, {now} now"
        if then is not None:
            reason = fingerprint_mismatch(then, data_fingerprint(views))
            if reason is not None:
                return f"{what} views: {reason}"
    return None


def collapse_reason(
    validation: Optional[Mapping[str, Any]],
    untrained: Optional[Mapping[str, Any]],
    *,
    hit_rates: Sequence[float] = (),
    floor: float = MASK_IOU_FLOOR,
) -> Optional[str]:
    """
    Why a fit has collapsed (its object vanished, or it lost the silhouette it had untrained),
    or ``None`` when it has not.

    Args:
        validation: held-out metrics with ``mask_iou`` (or ``None`` without held-out views).
        untrained: the same metrics of the untrained model (step 0), or ``None``.
        hit_rates: the share of sampled training rays that hit a surface, at recent logged
            steps; all zero means no ray finds the object any more.
        floor: the held-out mask IoU below which the object counts as vanished.

    Returns:
        The reasons in one line, or ``None``.
    """
    reasons = []
    rates = [float(r) for r in hit_rates if math.isfinite(float(r))]
    if rates and max(rates) == 0.0:
        reasons.append(
            f"no sampled training ray hit a surface in the last {len(rates)} logged steps"
        )
    if validation is not None and math.isfinite(float(validation.get("mask_iou", math.nan))):
        iou = float(validation["mask_iou"])
        before = None if untrained is None else untrained.get("mask_iou")
        if iou < floor:
            reasons.append(f"held-out mask IoU {iou:.3f} is below {floor}")
        elif before is not None and math.isfinite(float(before)) and iou < float(before):
            reasons.append(
                f"held-out mask IoU {iou:.3f} is below the untrained model's {float(before):.3f}"
            )
    return "; ".join(reasons) or None


def background_is_modelled(
    data_format: str,
    views: Optional[MultiViewData] = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    tolerance: float = 0.05,
) -> bool:
    """
    Whether the images show the configured ``background`` where the mask is 0, so that the
    renders (which show it there) can match the whole image.

    Photographs (``dtu``, ``monosdf``) show a real scene around the object: not modelled.
    Rendered formats and NeRF-synthetic composite on the background; they, and other formats
    (the reference DVR layout), are checked on ``views``: modelled when the pixels outside the
    masks differ from ``background`` by less than ``tolerance`` on average.
    """
    if data_format in REAL_BACKGROUND_FORMATS:
        return False
    if views is None:
        return data_format != "dvr"
    with torch.no_grad():
        outside = views.images[~views.masks]
        if outside.numel() == 0:
            return True
        colour = torch.as_tensor(background, dtype=outside.dtype, device=outside.device)
        return float((outside - colour).abs().mean()) < tolerance


def headline_psnr(background_modelled: bool) -> tuple[str, str]:
    """
    ``(metric key, words)`` of the headline PSNR: the whole image when the background is
    modelled, else inside the true object mask.
    """
    if background_modelled:
        return "psnr", "whole image"
    return "psnr_masked", "inside the object mask (the real background is not modelled)"


@contextlib.contextmanager
def deferred_interrupt(
    *, enabled: bool = True, notify: Optional[Callable[[str], None]] = None
) -> Any:
    """
    Within the block, the first Ctrl-C (SIGINT) only sets ``.requested`` on the yielded object
    (so the training loop stops at the end of the step, with a consistent state to save); a
    second one raises ``KeyboardInterrupt`` as usual. Outside the main thread, or when SIGINT is
    not handled by Python, nothing changes.
    """
    import signal
    import threading
    from types import SimpleNamespace

    state = SimpleNamespace(requested=False)
    previous = signal.getsignal(signal.SIGINT) if enabled else None
    install = (
        enabled
        and threading.current_thread() is threading.main_thread()
        and callable(previous)
    )
    if not install:
        yield state
        return

    def handler(signum: int, frame: Any) -> None:
        state.requested = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops at once
        if notify is not None:
            notify(
                "Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to "
                "stop at once)"
            )

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
