"""
``Trainer``: fits one DVR field to posed images with masks (DVR's multi-view setting).

One iteration::

    pick B training images -> sample R pixels each (dvr_plugin.sampling)
    -> render those rays with DVRRenderer(xys=..., n_steps=StepSchedule(step))
    -> losses (dvr_plugin.losses): rgb (hit & mask), depth / world points (with depth maps),
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

import functools
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..acceleration import OccupancyGrid
from ..data import MultiViewData, index_cameras
from ..data.frame import WorldFrame, data_fingerprint
from ..field import FieldOutput, OccupancyTextureField, evaluate_field, field_type_of
from ..io import atomic_write, make_dirs
from ..losses import (
    LossWeights,
    depth_loss,
    freespace_and_occupancy_points,
    freespace_loss,
    image_gradient_loss,
    jitter_points,
    normal_smoothness_loss,
    occupancy_loss,
    rgb_loss,
    total_loss,
    world_point_loss,
)
from ..rays import intersect_box
from ..raysampler import UNIT_CUBE_BOUNDS, SecantRaysampler
from ..renderer import DVRRenderer
from ..sampling import PixelSample, gather, sample_pixels
from ..schedule import StepSchedule
from ..visualize import save_png
from .checkpoint import (
    capture_rng_state,
    checkpoint_exists,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import FitConfig, OptimConfig, TrainConfig, resolve_device
from .data import check_training_views
from .distributed import BatchShard, StepForward, current_context, parameters_anchor
from .evaluation import comparison_grid, image_metrics, orbit_settings, render_views
from .logs import CsvLog, TensorBoardLog, plot_curves

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_LOG_NAME = "train_log.csv"
VAL_LOG_NAME = "val_log.csv"
CURVES_NAME = "curves.png"
VAL_DIR_NAME = "val"
TERMS = LossWeights.names()


class AutocastField(nn.Module):
    """
    Runs a field under ``torch.autocast`` (bfloat16 by default) and hands back float32 values
    and colours, so that only the network runs in low precision: rays, root-finding brackets,
    depths and losses stay in float32.

    Args (keyword-only):
        field: a field following :mod:`dvr_plugin.field`'s protocol.
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


def build_field(config: FitConfig) -> OccupancyTextureField:
    """The field of ``config.model`` (initialised from the global torch RNG)."""
    model = config.model
    return OccupancyTextureField(
        hidden_size=model.hidden_size,
        n_blocks=model.n_blocks,
        n_frequencies=model.n_frequencies,
        field_type=model.field_type,
    )


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
        sample: the pixels (:class:`dvr_plugin.sampling.PixelSample`, `(B, R)`).
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
    except Exception as error:  # noqa: BLE001 - a plot must not fail a finished fit
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
            self.load_state(state)
            resumed = True
        elif self.out_dir is not None and self._on_main(
            checkpoint_exists, self._path(CHECKPOINT_NAME)
        ):
            raise ValueError(
                f"{self.out_dir} already holds a checkpoint; resume from it (--resume) or choose "
                "another output folder. Nothing was overwritten."
            )

        self.train_log = self.val_log = None
        self.tensorboard = None
        if self.out_dir is not None and self.is_main:
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
        values = evaluate_field(self.network, points[rows, cols][None]).values[0]
        return full.index_put((rows, cols), values.float())

    def _normal_term(self, surface: torch.Tensor, hit: torch.Tensor) -> Optional[torch.Tensor]:
        """Normal smoothness at the (detached) surface points and jittered neighbours."""
        rows, cols = hit.nonzero(as_tuple=True)
        jitter = jitter_points
        if self.dist is not None:
            # Every rank draws the offsets of all ranks' hit points (in rank order) and keeps
            # its own, so that the generators stay in step; a rank without hits draws too.
            hits = self.dist.ragged_shard(rows.numel())
            jitter = hits.global_call(jitter_points)
            if rows.numel() == 0 and hits.total > 0:
                jitter(surface.detach()[rows, cols], self.config.loss.normal_jitter, self.generator)
        if rows.numel() == 0:
            return None
        points = surface.detach()[rows, cols]
        neighbours = jitter(points, self.config.loss.normal_jitter, self.generator)
        both = torch.cat([points, neighbours]).requires_grad_(True)
        values = evaluate_field(self.network, both[None]).values[0]
        (gradient,) = torch.autograd.grad(values.sum(), both, create_graph=True)
        gradient = gradient.float()
        count = rows.numel()
        zeros = torch.zeros(*hit.shape, 3, dtype=torch.float32, device=hit.device)
        normals = zeros.index_put((rows, cols), gradient[:count])
        normals_jittered = zeros.index_put((rows, cols), gradient[count:])
        return normal_smoothness_loss(normals, normals_jittered, hit)

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
        if self.weights.normal > 0:
            terms["normal"] = self._normal_term(out.surface_points, hit)
        if self.weights.image_gradient > 0:
            terms["image_gradient"] = image_gradient_loss(pred_rgb, gt_rgb, hit & gt_mask)
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
        self.grid.refresh(self.field, fraction=fraction, generator=generator)
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

    def load_state(self, state: Mapping[str, Any]) -> None:
        """
        Restore what :meth:`state_dict` saved (model, optimiser, schedule, step, RNG and the
        occupancy grid; a checkpoint without a grid gets one refreshed on the next step).
        """
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

        Returns:
            ``step``, ``train_seconds``, ``stopped_early``, ``last`` (the last step's losses)
            and ``validation`` (the last validation metrics or ``None``).
        """
        cfg = self.config
        total = cfg.train.iterations
        budget = cfg.train.time_budget_s
        if self.step == 0 and cfg.eval.validate_every > 0:
            self.validate()
        last: dict[str, float] = {}
        bar = progress_bar(total=total, initial=self.step, enabled=self.progress, desc="fit")
        try:
            while self.step < total:
                if budget is not None and self._agree(self.train_seconds >= budget):
                    self.stopped_early = True
                    break
                start = time.perf_counter()
                last = self.train_step()
                self.train_seconds += time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(
                    loss=f"{last['loss']:.4g}",
                    rgb=f"{last.get('rgb', 0.0):.3g}",
                    fs=f"{last.get('freespace', 0.0):.3g}",
                    occ=f"{last.get('occupancy', 0.0):.3g}",
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
                if cfg.eval.validate_every and self.step % cfg.eval.validate_every == 0:
                    self.validate()
                    if self.last_validation is not None:
                        bar.write(
                            f"step {self.step}: held-out PSNR "
                            f"{self.last_validation['psnr']:.2f} dB, mask IoU "
                            f"{self.last_validation['mask_iou']:.3f}"
                        )
                if cfg.eval.checkpoint_every and self.step % cfg.eval.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        self.save_checkpoint()
        if self.last_validation is None or self.last_validation["step"] != self.step:
            self.validate()
        if self.out_dir is not None and self.is_main:
            plot_run_curves(self.out_dir, [t for t in TERMS if getattr(self.weights, t) > 0])
        if self.tensorboard is not None:
            self.tensorboard.close()
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "stopped_early": self.stopped_early,
            "last": last,
            "validation": self.last_validation,
        }

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


def _read_for_resume(path: str, *, map_location: Any) -> dict[str, Any]:
    """The checkpoint to resume from, with a clear error when there is none."""
    if not checkpoint_exists(path):
        raise FileNotFoundError(f"Cannot resume: no checkpoint at {path}.")
    return load_checkpoint(path, map_location=map_location)
