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

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn
from torch.profiler import record_function

from ..accel.occupancy_grid import OccupancyGrid
from ..data import MultiViewData, index_cameras
from ..data.frame import WorldFrame, data_fingerprint
from ..engine.config import resolve_device
from ..engine.evaluation import comparison_grid, image_metrics, orbit_settings, render_views
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
from ..engine.run_outputs import VAL_DIR_NAME, VAL_LOG_NAME
from ..engine.sampling import (
    BALANCED_MODES,
    PATCH_MODES,
    PixelSample,
    gather,
    sample_pixels,
)
from ..engine.schedule import StepSchedule
from ..engine.trainer import BaseTrainer, build_optimizer, training_renderer
from ..engine.volume_warmup import volume_loss, volume_render_rays, volume_schedule
from ..fields.appearance import RenderingNetwork, ViewDependentField, geometry_of
from ..fields.field import (
    FieldOutput,
    OccupancyTextureField,
    evaluate_field,
    field_type_of,
    set_annealing_progress,
)
from ..fields.hash_grid import HashGridEncoding, HashGridField
from ..renderer.rays import intersect_box
from ..visualize import save_png
from .camera_refinement import CameraRefinement
from .config import FitConfig, TrainConfig
from .data import check_training_views
from .distributed import BatchShard, StepForward, current_context, parameters_anchor

TERMS = LossWeights.names()


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
    :class:`OccupancyTextureField` (``model.encoding="fourier"``) or a
    :class:`~dvr_plugin.fields.hash_grid.HashGridField` (``"hash_grid"``); with
    ``model.colour="view_dependent"`` a :class:`~dvr_plugin.fields.appearance.ViewDependentField`
    (that network without its texture head, as ``geometry``, and an IDR-style rendering network
    on its last hidden activation).

    Raises:
        ValueError: for ``model.colour="view_dependent"`` with ``mixed_precision``.
    """
    model = config.model
    view_dependent = model.colour == "view_dependent"
    shape = dict(
        field_type=model.field_type,
        geometric_init_radius=model.geometric_init_radius,
        geometric_init_sharpness=model.geometric_init_sharpness,
        rgb=not view_dependent,
    )
    if model.encoding == "hash_grid":
        grid = model.hash_grid
        geometry: nn.Module = HashGridField(
            **grid.encoding_options(),
            include_points=grid.include_points,
            hidden_size=grid.hidden_size,
            n_layers=grid.n_layers,
            rgb_hidden_size=grid.rgb_hidden_size,
            rgb_n_layers=grid.rgb_n_layers,
            anneal=model.fourier_anneal_steps > 0,
            **shape,
        )
    else:
        geometry = OccupancyTextureField(
            hidden_size=model.hidden_size,
            n_blocks=model.n_blocks,
            n_frequencies=model.n_frequencies,
            fourier_anneal=model.fourier_anneal_steps > 0,
            **shape,
        )
    if not view_dependent:
        return geometry
    if config.mixed_precision:
        raise ValueError(
            "model.colour=view_dependent does not run under mixed_precision (its normals need "
            "second derivatives in full precision); set mixed_precision: false."
        )
    appearance = RenderingNetwork(
        feature_size=geometry.hidden_size,
        hidden_size=model.colour_hidden_size,
        n_layers=model.colour_n_layers,
        n_view_frequencies=model.colour_view_frequencies,
        n_point_frequencies=model.colour_point_frequencies,
        point_grid=colour_point_grid(model) if model.colour_point_grid else None,
    )
    return ViewDependentField(geometry=geometry, appearance=appearance)


def colour_point_grid(model: Any) -> HashGridEncoding:
    """
    The colour head's own hash-grid encoding of the surface point (``model.colour_point_grid``):
    the level, table and resolution sizes of ``model.hash_grid`` over the unit cube (the finest
    level ``model.colour_grid_max_resolution`` where set), without coarse-to-fine annealing (the
    colour may be sharp from the start; the geometry's annealing is what keeps the surface
    smooth).
    """
    options = model.hash_grid.encoding_options()
    if model.colour_grid_max_resolution is not None:
        options["max_resolution"] = model.colour_grid_max_resolution
    return HashGridEncoding(**options)


def parameter_groups(
    field: nn.Module,
    optim: Any,
    *,
    camera_refinement: Optional[nn.Module] = None,
    camera_lr: Optional[float] = None,
) -> list[dict[str, Any]]:
    """
    Every parameter group of the optimiser, in this order:

    1. the parameters of ``field`` at ``optim.lr`` (all of them, or all but the hash-grid
       tables when the next group exists);
    2. the hash-grid tables (``embeddings`` of every
       :class:`~dvr_plugin.fields.hash_grid.HashGridEncoding` in ``field``) at
       ``optim.encoding_lr`` without weight decay, when ``optim.encoding_lr`` is set and the
       field has tables;
    3. the parameters of ``camera_refinement`` (the per-view corrections of
       :class:`~.camera_refinement.CameraRefinement`) at ``camera_lr`` without weight decay,
       when given.

    Raises:
        ValueError: for ``camera_refinement`` without a ``camera_lr``.
    """
    tables = [
        module.embeddings for module in field.modules() if isinstance(module, HashGridEncoding)
    ]
    if optim.encoding_lr is None or not tables:
        groups: list[dict[str, Any]] = [{"params": list(field.parameters())}]
    else:
        table_ids = {id(t) for t in tables}
        rest = [p for p in field.parameters() if id(p) not in table_ids]
        groups = [
            {"params": rest},
            {"params": tables, "lr": optim.encoding_lr, "weight_decay": 0.0},
        ]
    if camera_refinement is not None:
        if camera_lr is None:
            raise ValueError("parameter_groups needs camera_lr with camera_refinement.")
        groups.append(
            {"params": list(camera_refinement.parameters()), "lr": camera_lr, "weight_decay": 0.0}
        )
    return groups


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
    sample = sample_pixels(masks, generator=generator, **train.sampling_options())
    return index, masks, sample


def gather_pixel_batch(
    data: MultiViewData,
    index: torch.Tensor,
    masks: torch.Tensor,
    sample: PixelSample,
    *,
    with_depth: bool = False,
) -> tuple[Any, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """
    The cameras and the ground truth at the pixels of a batch of :func:`draw_pixel_batch`
    (or of a rank's block of it).

    Args:
        data: the views the batch was drawn from (on the training device).
        index: `(B,)` image indices (CPU).
        masks: `(B, H, W)` their masks.
        sample: the pixels (:class:`dvr_plugin.engine.sampling.PixelSample`, `(B, R)`).
        with_depth: also gather ``data.depths`` (otherwise ``gt_depth`` is ``None``).

    Returns:
        cameras: the B cameras of ``index``.
        gt_rgb: `(B, R, 3)` colours at the pixels.
        gt_mask: `(B, R)` bool, the masks at the pixels.
        gt_depth: `(B, R)` depths at the pixels, or ``None``.
    """
    index_device = index.to(data.images.device)
    gt_rgb = gather(data.images[index_device], sample)
    gt_mask = gather(masks, sample)
    gt_depth = gather(data.depths[index_device], sample) if with_depth else None
    return index_cameras(data.cameras, index), gt_rgb, gt_mask, gt_depth


class Trainer(BaseTrainer):
    """
    Fits a DVR field to multi-view images and masks: the step (:meth:`train_step`), the
    held-out validation and the checkpoint's multi-view entries on the engine's loop,
    checkpoints and resume (:class:`dvr_plugin.engine.trainer.BaseTrainer`; :meth:`fit`
    returns its summary with ``collapse``).

    Safety: after every validation (and when no sampled ray has hit a surface for
    :data:`ZERO_HIT_STEPS` steps) the fit is checked for a collapse (:func:`collapse_reason`),
    which is warned about at once. A resume is refused when the checkpoint was trained on other
    data (its data fingerprint).

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

    terms = TERMS
    progress_label = "fit"
    choice_generator_name = "images"

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
        dist = None if distributed is False else current_context()
        if distributed and dist is None:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group with "
                "several ranks (start with torchrun)."
            )
        device = resolve_device(config.device)
        if dist is not None:
            device = dist.device_for(device)
        check_training_views(train_data, empty_masks=config.data.empty_masks, what="training")
        if val_data is not None:
            check_training_views(val_data, empty_masks="ignore", what="held-out")
            if val_data.image_size != train_data.image_size:
                raise ValueError(
                    f"Held-out views are {val_data.image_size} but training views "
                    f"{train_data.image_size}; use one image size."
                )
        self.weights = config.loss.weights()
        if self.weights.image_gradient > 0 and config.train.sampling not in PATCH_MODES:
            raise ValueError(
                "loss.image_gradient > 0 needs 2x2 pixel patches: train.sampling one of "
                f"{PATCH_MODES}, got {config.train.sampling!r}."
            )
        height, width = train_data.image_size
        if config.train.sampling not in BALANCED_MODES:
            if config.train.rays_per_image > height * width:
                raise ValueError(
                    f"train.rays_per_image={config.train.rays_per_image} exceeds the "
                    f"{height}x{width} pixels of an image."
                )
        super().__init__(
            config=config,
            device=device,
            out_dir=out_dir,
            resuming=resume or resume_from is not None,
            progress=progress,
            dist=dist,
        )
        self.train_data = train_data.to(self.device)
        self.val_data = None if val_data is None else val_data.to(self.device)
        if self.dist is not None:
            self.dist.check_same_data({"training": self.train_data, "held-out": self.val_data})
            self.dist.shard(min(config.train.images_per_batch, len(train_data)))  # >= 1 each
        self.has_depth = self.train_data.depths is not None
        self.amp = bool(config.mixed_precision) and self.device.type == "cuda"

        self.field = build_field(config).to(self.device)
        # per-view rigid corrections of the training cameras, learnt with the field
        self.camera_refinement: Optional[CameraRefinement] = None
        if config.train.refine_cameras:
            if self.dist is not None:
                raise ValueError(
                    "train.refine_cameras does not run on several ranks yet (the corrections "
                    "are not synchronised by DistributedDataParallel); train on one device."
                )
            self.camera_refinement = CameraRefinement(n_views=len(train_data)).to(self.device)
        # The network as the renderer and the losses call it (under autocast with AMP).
        self.network: nn.Module = self.field
        if self.amp:
            self.network = AutocastField(field=self.field, device_type=self.device.type)
        # empty-space skipping, refreshed from the field as it trains (train_step)
        self.grid: Optional[OccupancyGrid] = None
        if config.train.occupancy_grid > 0:
            self.grid = OccupancyGrid(resolution=config.train.occupancy_grid).to(self.device)
        self._grid_fresh = False
        self.renderer = training_renderer(
            self.network,
            config,
            # a non-finite colour makes the loss non-finite, which train_step reports: no second
            # host synchronisation per step for the same check
            check_finite=False,
            cuda_graphs=config.train.cuda_graphs,
            occupancy_grid=self.grid,
        )
        self.schedule = StepSchedule(config.train.step_milestones)
        groups = parameter_groups(
            self.field,
            config.optim,
            camera_refinement=self.camera_refinement,
            camera_lr=config.train.camera_lr,
        )
        self.optimizer, self.scheduler = build_optimizer(config.optim, groups)

        # Which PSNR leads reports: inside the mask when the images show a real background.
        self.background_modelled = background_is_modelled(
            config.data.format,
            self.train_data if self.val_data is None else self.val_data,
            config.background,
        )
        self.headline_psnr, _ = headline_psnr(self.background_modelled)
        self.untrained_validation: Optional[dict[str, Any]] = None
        self.collapse: Optional[str] = None
        # Consecutive steps in which no sampled ray hit a surface.
        self._zero_hits = 0

        self._start_run(resume_from=resume_from)

        # The forward pass of a step; on several ranks it runs inside DistributedDataParallel.
        self.step_forward: Callable[..., Any] = self._forward_losses
        self.shard: Optional[BatchShard] = None
        if self.dist is not None:
            self.step_forward = self.dist.wrap(
                StepForward(field=self.field, forward=self._forward_losses)
            )

    @property
    def model(self) -> nn.Module:
        """The trained module (the field), as the checkpoint saves it."""
        return self.field

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

    def _box_ranges(
        self, origins: torch.Tensor, directions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(B, R)` depths where the `(B, R, 3)` rays enter and leave the marching box, and
        whether a ray has a finite, non-empty range there (the rays a search along them takes)."""
        near, far, missed = intersect_box(origins, directions, self.box_min, self.box_max)
        return near, far, ~missed & torch.isfinite(near) & torch.isfinite(far) & (far > near)

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
        near, far, has_range = self._box_ranges(origins, directions)
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
        alpha = self._mask_alpha(self.schedule_step)
        return soft_mask_loss(minimum.values, gt_mask, alpha, select=select)

    def _volume_term(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        gt_rgb: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> Optional[torch.Tensor]:
        """
        The volume-rendering warm-up (:mod:`dvr_plugin.engine.volume_warmup`) on
        ``loss.volume_rays`` rays of each image, evenly spaced through its batch (the sampler
        may order foreground patches first), already scaled by its fade-out; ``None`` once it
        has faded out or where no ray crosses the box.
        """
        loss = self.config.loss
        fade, sharpness = volume_schedule(
            self.schedule_step,
            until=loss.volume_until,
            sharpness_start=loss.volume_sharpness_start,
            sharpness_end=loss.volume_sharpness_end,
            floor=loss.volume_floor,
        )
        if fade <= 0:  # the same on every rank: no draw is skipped on one rank alone
            return None
        total = gt_mask.shape[0] if self.shard is None else self.shard.total
        n_rays = gt_mask.shape[1]
        count = min(loss.volume_rays, n_rays)
        rays = torch.arange(count, device=gt_mask.device) * (n_rays // count)
        offsets = torch.rand((total, count), generator=self.generator, device=self.device)
        if self.shard is not None:
            offsets = self.shard.take(offsets)
        origins, directions = origins[:, rays].detach(), directions[:, rays].detach()
        near, far, select = self._box_ranges(origins, directions)
        if not bool(select.any()):
            return None
        render = volume_render_rays(
            self.network,
            origins,
            directions,
            near,
            far,
            select,
            n_samples=loss.volume_samples,
            sharpness=sharpness,
            offsets=offsets,
        )
        return fade * volume_loss(render, gt_rgb[:, rays], gt_mask[:, rays], select)

    def _update_annealing(self) -> None:
        """Set the coarse-to-fine progress of the field's annealed encodings (Fourier bands,
        hash-grid levels: :func:`~dvr_plugin.fields.field.set_annealing_progress`) to
        ``schedule_step / fourier_anneal_steps``, capped at 1; the progress is a buffer of the
        field, saved with the model."""
        steps = self.config.model.fourier_anneal_steps
        if steps <= 0:
            return
        set_annealing_progress(self.field, min(1.0, self.schedule_step / steps))

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
            draw = freespace_and_occupancy_points
            if self.shard is not None:
                # Drawn for the global batch (generators in step); this rank's rows kept.
                draw = self.shard.global_call(draw)
            points, chosen = self._mask_loss_points(
                bundle.origins, bundle.directions, pred_depth, hit, gt_mask, gt_depth, draw=draw
            )
            values = self._field_values(chosen, points.freespace_select | points.occupancy_select)
            options = {"field_type": field_type, "sdf_beta": cfg.loss.sdf_beta}
            terms["freespace"] = freespace_loss(values, points.freespace_select, **options)
            terms["occupancy"] = occupancy_loss(values, points.occupancy_select, **options)
        if self.weights.normal > 0 or self.weights.eikonal > 0:
            terms.update(self._gradient_terms(out.surface_points, hit))
        if self.weights.image_gradient > 0:
            terms["image_gradient"] = image_gradient_loss(pred_rgb, gt_rgb, hit & gt_mask)
        if self.weights.mask > 0:
            terms["mask"] = self._mask_term(bundle.origins, bundle.directions, hit, gt_mask)
        if self.weights.volume > 0:
            terms["volume"] = self._volume_term(bundle.origins, bundle.directions, gt_rgb, gt_mask)
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
        position = self.schedule_step  # where this step stands in the schedules
        with record_function("train_step.sample"):
            self._update_annealing()
            cameras, sample, gt_rgb, gt_mask, gt_depth = self._draw_batch()
            n_steps = self.schedule.n_steps(position)
        with record_function("train_step.grid_refresh"):
            self._refresh_grid()

        self.field.train()
        with record_function("train_step.forward"):
            terms, hit = self.step_forward(cameras, sample.xys, n_steps, gt_rgb, gt_mask, gt_depth)
            loss = total_loss(terms, self.weights)
        with record_function("train_step.loss_check"):
            values, hit_rate, agreement, finite, backward, loss = self._checked_loss(
                loss, terms, hit, gt_mask
            )
        if not finite:
            raise self._non_finite({name: values[name] for name in terms})
        with record_function("train_step.optimizer"):
            lr = self._optimizer_step(loss, backward=backward, parameters=self.field.parameters())
            self._anchor_cameras(position)
        with record_function("train_step.stats"):
            stats = self._step_values(
                values, lr=lr, n_steps=n_steps, hit_rate=hit_rate, agreement=agreement
            )
        if self.weights.mask > 0:
            stats["mask_alpha"] = self._mask_alpha(position)
        if cfg.model.fourier_anneal_steps > 0:
            stats["fourier_progress"] = min(1.0, position / cfg.model.fourier_anneal_steps)
        return stats

    def _anchor_cameras(self, position: int) -> None:
        """Take the common rigid motion out of the camera corrections (``train.camera_anchor``)
        once they are being learnt (``position``: the schedule step of the step just taken)."""
        train = self.config.train
        if self.camera_refinement is None or not train.camera_anchor:
            return
        if position >= train.camera_refine_after:  # the step just taken learnt them
            cameras = self.train_data.cameras
            self.camera_refinement.remove_common_motion(cameras.R, cameras.T)

    def _draw_batch(
        self,
    ) -> tuple[Any, PixelSample, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """This step's cameras (refined where asked), the pixel sample and the ground truth at
        it (colours, masks, depths or ``None``); on several ranks, this rank's block of the
        global batch."""
        cfg = self.config
        data = self.train_data
        index, masks, sample = draw_pixel_batch(
            data, cfg.train, image_generator=self.choice_generator, generator=self.generator
        )
        if self.dist is not None:
            # Every rank drew the whole global batch (generators in step); it keeps its images.
            self.shard = self.dist.shard(index.shape[0])
            index, masks, sample = (self.shard.take(value) for value in (index, masks, sample))
        cameras, gt_rgb, gt_mask, gt_depth = gather_pixel_batch(
            data, index, masks, sample, with_depth=self.has_depth
        )
        if (
            self.camera_refinement is not None
            and self.schedule_step >= cfg.train.camera_refine_after
        ):
            cameras = self.camera_refinement(cameras, index.to(self.device))
        return cameras, sample, gt_rgb, gt_mask, gt_depth

    def _checked_loss(
        self,
        loss: torch.Tensor,
        terms: dict[str, Any],
        hit: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> tuple[dict[str, Any], Any, Any, bool, bool, torch.Tensor]:
        """
        The step's logged values and whether to step: ``(values, hit_rate, agreement, finite,
        backward, loss)``. On one rank the finiteness check is this step's host
        synchronisation; on several, the global batch's values (the same on every rank) decide,
        and ``loss`` is scaled for DistributedDataParallel's averaging.
        """
        if self.dist is None:
            finite, backward = bool(torch.isfinite(loss)), loss.requires_grad
            values: dict[str, Any] = {"loss": loss.detach(), **terms}
            hit_rate, agreement = hit.float().mean(), (hit == gt_mask).float().mean()
            return values, hit_rate, agreement, finite, backward, loss
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
        values = {"loss": reduced["loss"], **{name: reduced[name] for name in terms}}
        return (
            values, reduced["hit_rate"], reduced["train_mask_agreement"], finite, backward, loss
        )

    # -----------------------------------------------------------------------------------------
    # Validation, checkpoint entries

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
        self._record_validation(metrics)
        self.field.train()
        return metrics

    def _task_state(self) -> dict[str, Any]:
        """The checkpoint's multi-view entries: image size, orbit, world frame, data, grid."""
        return {
            "image_size": list(self.train_data.image_size),
            "orbit": orbit_settings(self.train_data.cameras, self.config.data),
            "data_frame": WorldFrame.from_views(self.train_data, self.config.data.format).to_dict(),
            "data_fingerprint": {
                "format": self.config.data.format,
                "train": data_fingerprint(self.train_data),
                "val": None if self.val_data is None else data_fingerprint(self.val_data),
            },
            **({"occupancy_grid": self.grid.state_dict()} if self.grid is not None else {}),
            **(
                {"camera_refinement": self.camera_refinement.state_dict()}
                if self.camera_refinement is not None
                else {}
            ),
        }

    def _check_state(self, state: Mapping[str, Any], where: str) -> None:
        """
        The checkpoint's data fingerprint must match the trainer's data (format, views, image
        size, cameras, colours); a checkpoint without one (older) is loaded with a warning.

        Raises:
            ValueError: the checkpoint was trained on other data (one line saying what
                differs).
        """
        if "data_fingerprint" not in state:
            import warnings

            warnings.warn(
                f"{where} holds no data fingerprint (an older checkpoint): cannot check that "
                "it was trained on this data; resuming anyway.",
                stacklevel=3,
            )
            return
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

    def _load_task_state(self, state: Mapping[str, Any]) -> None:
        """
        The occupancy grid (a checkpoint without one gets it refreshed on the next step) and
        the camera corrections (a checkpoint without them starts them at zero).
        """
        if self.camera_refinement is not None and "camera_refinement" in state:
            self.camera_refinement.load_state_dict(state["camera_refinement"])
        saved_grid = state.get("occupancy_grid")
        self._grid_fresh = False
        if self.grid is not None and saved_grid is not None:
            if tuple(saved_grid["occupied"].shape) == tuple(self.grid.resolution):
                self.grid.load_state_dict(saved_grid)
                self._grid_fresh = True

    def _resumed(self, path: str) -> None:
        """Keep the untrained model's held-out metrics of the run (collapse detection)."""
        if self.out_dir is not None and self.is_main:
            self.untrained_validation = untrained_row(self._path(VAL_LOG_NAME))

    # -----------------------------------------------------------------------------------------
    # The loop's hooks: collapse detection, the headline PSNR

    def _summary(self, last: Mapping[str, float]) -> dict[str, Any]:
        """The engine's summary and ``collapse`` (the reason, or ``None``)."""
        summary = {**super()._summary(last), "collapse": self.collapse}
        if self.camera_refinement is not None:
            frame = WorldFrame.from_views(self.train_data, self.config.data.format)
            summary["camera_refinement"] = self.camera_refinement.summary(world_scale=frame.scale)
        return summary

    def _after_step(self, last: Mapping[str, float], bar: Any) -> None:
        """Warn once no sampled ray has hit a surface for :data:`ZERO_HIT_STEPS` steps."""
        self._zero_hits = self._zero_hits + 1 if last["hit_rate"] == 0.0 else 0
        if self._zero_hits == ZERO_HIT_STEPS:
            self._warn_collapse(
                f"no sampled training ray has hit a surface for {self._zero_hits} steps", bar
            )

    def _validated(self, bar: Any) -> None:
        """Check the validation for a collapse."""
        self._check_collapse(bar)

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
        # stacklevel 4: a frame of the loop rather than these helpers.
        warnings.warn(message, RuntimeWarning, stacklevel=4)


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


# ---------------------------------------------------------------------------------------------
# Safety: collapse detection, the resumed data, the headline PSNR


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
