"""
Training single-view reconstruction across many objects (DVR's single-view setting).

One iteration::

    pick B objects -> for each an input view (random; or a fixed index) and, independently, a
    supervision view (random)
    -> encoder(input images) = codes (B, C)
    -> sample R pixels in each supervision view (dvr_plugin.engine.sampling)
    -> DVRRenderer(cameras of the supervision views, xys, n_steps, latent=codes)
    -> losses (dvr_plugin.engine.losses): rgb and / or depth (train.supervision), free space,
    occupancy,
       normal smoothness; the field is evaluated with each object's code
    -> backward (the implicit depth gradient carries d(loss)/d(code) into the encoder)
    -> Adam step on encoder and field -> learning-rate step decay

Random draws come from the two ``torch.Generator`` objects of the trainer (objects and views on
the CPU; pixels, loss points and jitter on the training device); the checkpoint saves them with
the global states, so ``--resume`` continues where the run stopped. The loop, checkpoints and
resume are the engine's (:class:`dvr_plugin.engine.trainer.BaseTrainer`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.evaluation import RenderedViews, image_metrics, orbit_settings, render_views
from ..engine.losses import (
    depth_loss,
    freespace_loss,
    jitter_points,
    normal_smoothness_loss,
    occupancy_loss,
    rgb_loss,
    total_loss,
)
from ..engine.run_outputs import COMPARISON_NAME, VAL_DIR_NAME, write_json
from ..engine.sampling import gather, sample_pixels
from ..engine.schedule import StepSchedule
from ..engine.trainer import (
    BaseTrainer,
    build_optimizer,
    check_output_folder,
    training_renderer,
)
from ..fields.field import evaluate_field
from ..io import make_dirs, open_path, path_manager
from ..visualize import colorize_normals, image_grid, save_png
from .config import (
    TASK_NAME,
    SingleViewConfig,
    config_from_dict,
    resolve_single_view_config,
)
from .dataset import CategoryData, dataset_summary, load_category
from .model import SingleViewModel, build_model, describe_model

TERMS = ("rgb", "depth", "freespace", "occupancy", "normal")


@torch.no_grad()
def render_with_codes(
    field,
    cameras,
    codes: torch.Tensor,
    image_size: Sequence[int],
    *,
    n_steps: int = 64,
    n_secant_steps: int = 8,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    batch_size: int = 4,
) -> RenderedViews:
    """
    Render camera ``i`` of a batch with code ``codes[i]`` (full images, no gradients).

    Args:
        field: a conditioned field (``field(points, latent)``).
        cameras: ``N`` PyTorch3D cameras.
        codes: `(N, C)` latent codes.
        image_size: ``(H, W)``.
        n_steps, n_secant_steps: root finding.
        background: RGB behind the object.
        batch_size: cameras per call.

    Returns:
        :class:`dvr_plugin.engine.evaluation.RenderedViews` on the CPU.
    """
    if codes.dim() != 2 or codes.shape[0] != len(cameras):
        raise ValueError(
            f"codes must have shape ({len(cameras)}, C) for {len(cameras)} cameras, got "
            f"{tuple(codes.shape)}."
        )
    return render_views(
        field,
        cameras,
        image_size,
        n_steps=n_steps,
        n_secant_steps=n_secant_steps,
        background=background,
        batch_size=batch_size,
        latent=codes,
    )


@torch.no_grad()
def encode_views(
    model: SingleViewModel, data: CategoryData, views: torch.Tensor, *, batch_size: int = 64
) -> torch.Tensor:
    """`(N, C)` codes of the flat views `(N,)` of ``data``, ``batch_size`` images at a time."""
    codes = [
        model.encode(data.float_images(views[i : i + batch_size]))
        for i in range(0, len(views), batch_size)
    ]
    return torch.cat(codes)


def spread_objects(data: CategoryData, count: int) -> list[int]:
    """Up to ``count`` object indices taken in turn from each class (first objects first)."""
    per_class = [
        [i for i in range(len(data)) if int(data.object_class[i]) == c]
        for c in range(len(data.classes))
    ]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(count, len(data)):
        for members in per_class:
            if depth < len(members) and len(chosen) < count:
                chosen.append(members[depth])
        depth += 1
    return chosen


class SingleViewTrainer(BaseTrainer):
    """
    Trains an image encoder and a conditioned DVR field on a category of objects: the step
    (:meth:`train_step`), the validation and the checkpoint's single-view entries on the
    engine's loop, checkpoints and resume (:class:`dvr_plugin.engine.trainer.BaseTrainer`).

    Args (keyword-only):
        config: the :class:`SingleViewConfig` (``device`` may be ``"auto"``).
        train_data: the training objects (:class:`CategoryData`).
        val_data: validation objects (input view ``eval.input_view``, rendered from
            ``eval.target_view``) or ``None``.
        out_dir: folder for checkpoint, logs, grids and curves; ``None`` writes nothing.
        resume: continue from ``out_dir/checkpoint.pt`` (or ``resume_from``).
        resume_from: an explicit checkpoint to continue from.
        progress: show a tqdm progress bar.

    Raises:
        ValueError: inconsistent data or options (depth supervision without depth maps, image
            sizes that differ, too many rays), or an unreadable / mismatched checkpoint.
        FileNotFoundError: when resuming without a checkpoint.
    """

    terms = TERMS
    progress_label = "fit single-view"
    choice_generator_name = "objects"

    def __init__(
        self,
        *,
        config: SingleViewConfig,
        train_data: CategoryData,
        val_data: Optional[CategoryData] = None,
        out_dir: Optional[str] = None,
        resume: bool = False,
        resume_from: Optional[str] = None,
        progress: bool = True,
    ) -> None:
        config, device = resolve_single_view_config(config)
        self.weights = config.loss_weights()
        supervision = config.train.supervision
        if supervision in ("depth", "both") and not train_data.has_true_depth:
            raise ValueError(
                f"train.supervision={supervision} needs true depth maps (depth/ folders); the "
                f"training data has {train_data.depth_kind or 'no depth'}."
            )
        if val_data is not None and val_data.image_size != train_data.image_size:
            raise ValueError(
                f"Validation images are {val_data.image_size} but training images "
                f"{train_data.image_size}; use one image size."
            )
        height, width = train_data.image_size
        if config.train.sampling != "foreground_balanced" and (
            config.train.rays_per_image > height * width
        ):
            raise ValueError(
                f"train.rays_per_image={config.train.rays_per_image} exceeds the {height}x{width} "
                "pixels of an image."
            )
        if not bool(train_data.masks.any()):
            raise ValueError("Every training mask is empty: there is no object to learn.")
        resuming = resume or resume_from is not None
        super().__init__(
            config=config, device=device, out_dir=out_dir, resuming=resuming, progress=progress
        )
        self.train_data = train_data.to(self.device)
        self.val_data = None if val_data is None else val_data.to(self.device)
        self.use_depth = self.train_data.depths is not None
        self.model: SingleViewModel = build_model(config, load_weights=not resuming).to(self.device)
        self.renderer = training_renderer(self.model.field, config)
        self.schedule = StepSchedule(config.train.step_milestones)
        self.optimizer, self.scheduler = build_optimizer(
            config.optim,
            [
                {
                    "params": list(self.model.encoder.parameters()),
                    "lr": config.optim.lr * config.encoder.lr_scale,
                },
                {"params": list(self.model.field.parameters()), "lr": config.optim.lr},
            ],
        )
        self.encoder_info = describe_model(self.model)["encoder"]
        self.val_objects = (
            [] if self.val_data is None else spread_objects(self.val_data, config.eval.max_objects)
        )
        self._start_run(resume_from=resume_from)

    # -----------------------------------------------------------------------------------------
    # One step

    def _pick_objects(self) -> torch.Tensor:
        n = len(self.train_data)
        batch = self.config.train.objects_per_batch
        if n >= batch:
            return torch.randperm(n, generator=self.choice_generator)[:batch]
        return torch.randint(0, n, (batch,), generator=self.choice_generator)

    def _input_views(self, objects: torch.Tensor) -> torch.Tensor:
        choice = self.config.train.input_view
        if choice == "random":
            return self.train_data.random_views(objects, self.choice_generator)
        return self.train_data.view_index(objects, int(choice))

    def _values_at(
        self, points: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Field values at `(M, 3)` points, point ``m`` with the code of batch row ``rows[m]``."""
        return evaluate_field(self.model.field, points[:, None, :], codes[rows]).values[:, 0]

    def _normal_term(
        self, surface: torch.Tensor, hit: torch.Tensor, codes: torch.Tensor
    ) -> Optional[torch.Tensor]:
        rows, cols = hit.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return None
        points = surface.detach()[rows, cols]
        neighbours = jitter_points(points, self.config.loss.normal_jitter, self.generator)
        both = torch.cat([points, neighbours]).requires_grad_(True)
        values = self._values_at(both, codes, torch.cat([rows, rows]))
        (gradient,) = torch.autograd.grad(values.sum(), both, create_graph=True)
        count = rows.numel()
        zeros = torch.zeros(*hit.shape, 3, dtype=gradient.dtype, device=hit.device)
        normals = zeros.index_put((rows, cols), gradient[:count])
        normals_jittered = zeros.index_put((rows, cols), gradient[count:])
        return normal_smoothness_loss(normals, normals_jittered, hit)

    def train_step(self) -> dict[str, float]:
        """
        One optimisation step; advances ``step``.

        Returns:
            ``loss``, each computed term, ``lr``, ``n_steps``, ``hit_rate`` and
            ``train_mask_agreement`` (share of sampled rays whose hit agrees with the mask).
        """
        cfg = self.config
        data = self.train_data
        objects = self._pick_objects()
        input_views = self._input_views(objects)
        target_views = data.random_views(objects, self.choice_generator)
        target_device = target_views.to(self.device)
        inputs = data.float_images(input_views)
        images = data.float_images(target_views)
        masks = data.masks[target_device]
        sample = sample_pixels(masks, generator=self.generator, **cfg.train.sampling_options())
        gt_rgb = gather(images, sample)
        gt_mask = gather(masks, sample)
        gt_depth = gather(data.depths[target_device], sample) if self.use_depth else None
        cameras = data.view_cameras(target_views)
        n_steps = self.schedule.n_steps(self.schedule_step)

        self.model.train()
        codes = self.model.encode(inputs)
        out = self.renderer(cameras, xys=sample.xys, n_steps=n_steps, latent=codes)
        bundle = out.ray_bundle
        hit = out.hit
        terms: dict[str, Optional[torch.Tensor]] = {}
        if self.weights.rgb > 0:
            terms["rgb"] = rgb_loss(out.images, gt_rgb, hit, gt_mask)
        if self.weights.depth > 0 and gt_depth is not None:
            terms["depth"] = depth_loss(out.depths, gt_depth, gt_mask & (gt_depth > 0), hit)
        if self.weights.freespace > 0 or self.weights.occupancy > 0:
            points, chosen = self._mask_loss_points(
                bundle.origins, bundle.directions, out.depths, hit, gt_mask, gt_depth
            )
            values = evaluate_field(self.model.field, chosen, codes).values
            terms["freespace"] = freespace_loss(values, points.freespace_select)
            terms["occupancy"] = occupancy_loss(values, points.occupancy_select)
        if self.weights.normal > 0:
            terms["normal"] = self._normal_term(out.surface_points, hit, codes)

        loss = total_loss(terms, self.weights)
        if not bool(torch.isfinite(loss)):
            raise self._non_finite(terms)
        # the learning rate of the field's group (the encoder's is scaled)
        lr = self._optimizer_step(
            loss, backward=loss.requires_grad, parameters=self.model.parameters(), lr_group=1
        )
        return self._step_values(
            {"loss": loss.detach(), **terms},
            lr=lr,
            n_steps=n_steps,
            hit_rate=hit.float().mean(),
            agreement=(hit == gt_mask).float().mean(),
        )

    # -----------------------------------------------------------------------------------------
    # Validation

    @torch.no_grad()
    def encode_views(self, data: CategoryData, views: torch.Tensor, batch_size: int = 64):
        """`(N, C)` codes of flat views `(N,)` of ``data`` (model in eval mode)."""
        self.model.eval()
        return encode_views(self.model, data, views, batch_size=batch_size)

    @torch.no_grad()
    def validate(
        self, *, save_grid: bool = True, grid_path: Optional[str] = None, log: bool = True
    ):
        """
        Reconstruct the validation objects from view ``eval.input_view`` and render them from
        ``eval.target_view``: PSNR, SSIM, mask IoU against that view, and a grid (input | truth |
        render | normals) saved as ``val/step_NNNNNN.png`` (or ``grid_path``); ``log=False``
        keeps the metrics out of the logs (a repeat at the same step).

        Returns:
            The metrics, or ``None`` without validation data.
        """
        if self.val_data is None or not self.val_objects:
            return None
        start = time.perf_counter()
        data = self.val_data
        objects = torch.tensor(self.val_objects)
        inputs = data.view_index(objects, self.config.eval.input_view)
        target = self.config.eval.target_view
        counts = data.n_views[objects]
        targets = torch.where(
            counts > 1, data.view_index(objects, torch.remainder(target, counts)), inputs
        )
        codes = self.encode_views(data, inputs)
        rendered = render_with_codes(
            self.model.field,
            data.view_cameras(targets),
            codes,
            data.image_size,
            n_steps=self.config.eval.n_steps,
            n_secant_steps=self.config.train.n_secant_steps,
            background=self.config.background,
            batch_size=8 if self.device.type == "cuda" else 2,
        )
        truth = data.float_images(targets).cpu()
        metrics = image_metrics(rendered, truth, data.masks[targets.to(data.device)].cpu())
        metrics.pop("per_view", None)
        metrics["step"] = self.step
        metrics["seconds"] = time.perf_counter() - start
        if self.out_dir is not None and save_grid:
            grid = validation_grid(data.float_images(inputs).cpu(), truth, rendered)
            save_png(grid, grid_path or self._path(VAL_DIR_NAME, f"step_{self.step:06d}.png"))
        self._record_validation(metrics, log=log)
        self.model.train()
        return metrics

    # -----------------------------------------------------------------------------------------
    # Checkpoint entries, the loop's hooks

    def _task_state(self) -> dict[str, Any]:
        """The task, image size, orbit and classes, read by ``dvr reconstruct`` / evaluation."""
        return {
            "task": TASK_NAME,
            "image_size": list(self.train_data.image_size),
            "orbit": orbit_settings(self.train_data.cameras),
            "classes": list(self.train_data.classes),
            "encoder": self.encoder_info,
        }

    def _check_state(self, state: Mapping[str, Any], where: str) -> None:
        """Refuse a checkpoint of another task."""
        if state.get("task") != TASK_NAME:
            raise ValueError("The checkpoint is not a single-view checkpoint (dvr fit --task).")

    def _load_task_state(self, state: Mapping[str, Any]) -> None:
        """The encoder's description (pretrained weights or not)."""
        if state.get("encoder"):
            self.encoder_info = dict(state["encoder"])

    def _postfix(self, last: Mapping[str, float]) -> dict[str, Any]:
        """The engine's entries and the share of rays whose hit agrees with the mask."""
        return {**super()._postfix(last), "agree": f"{last['train_mask_agreement']:.2f}"}

    def _final_validation(self) -> None:
        """The last validation, also saved as ``comparison.png`` (logged unless just done)."""
        if self.out_dir is not None and self.val_data is not None:
            done = self.last_validation is not None and self.last_validation["step"] == self.step
            self.validate(grid_path=self._path(COMPARISON_NAME), log=not done)


def validation_grid(
    inputs: torch.Tensor, truth: torch.Tensor, rendered: RenderedViews, *, zoom: int = 0
) -> torch.Tensor:
    """
    One row per object: input view | true target view | DVR render | normals.

    Args:
        inputs: `(N, H, W, 3)` input images.
        truth: `(N, H, W, 3)` true target views.
        rendered: renders of the target views.
        zoom: nearest-neighbour enlargement (0: up to about 128 pixels).

    Returns:
        `(H', W', 3)` image.
    """
    rows = []
    for i in range(inputs.shape[0]):
        rows.append(
            [
                inputs[i],
                truth[i],
                rendered.images[i].clamp(0, 1),
                colorize_normals(rendered.normals[i], rendered.masks[i]),
            ]
        )
    grid = image_grid(rows)
    zoom = zoom or max(1, 128 // max(inputs.shape[1:3]))
    return grid.repeat_interleave(zoom, dim=0).repeat_interleave(zoom, dim=1)


# ---------------------------------------------------------------------------------------------


def load_training_data(config: SingleViewConfig, device: torch.device):
    """The training split and the (optional) validation split of ``config.data``."""
    data_cfg = config.data
    if not data_cfg.path:
        raise ValueError("data.path is required: the category root (dvr make-category output).")
    options = data_cfg.loader_options()
    train = load_category(data_cfg.path, data_cfg.train_split, device=device, **options)
    val = load_category(
        data_cfg.path,
        data_cfg.val_split,
        device=device,
        required=False,
        image_size=train.image_size,
        **options,
    )
    return train, val


def fit_single_view(
    config: SingleViewConfig,
    out_dir: str,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """
    Load the category of ``config.data``, train, and write checkpoint, logs, ``curves.png``,
    ``comparison.png`` (validation objects) and ``summary.json`` into ``out_dir``.

    Returns:
        The summary written to ``summary.json``. A resume already at ``train.iterations``
        writes nothing and returns the summary of ``summary.json`` with ``nothing_to_do`` (the
        message).
    """
    wall = time.perf_counter()
    config, device = resolve_single_view_config(config)
    check_output_folder(out_dir, resume=resume)
    start = time.perf_counter()
    train, val = load_training_data(config, device)
    data_seconds = time.perf_counter() - start
    make_dirs(out_dir)
    trainer = SingleViewTrainer(
        config=config,
        train_data=train,
        val_data=val,
        out_dir=out_dir,
        resume=resume,
        progress=progress,
    )
    result = trainer.fit()
    summary_path = os.path.join(out_dir, "summary.json")
    if result["nothing_to_do"] is not None and path_manager.exists(summary_path):
        with open_path(summary_path) as handle:
            return {**json.load(handle), "nothing_to_do": result["nothing_to_do"]}
    summary = {
        "task": TASK_NAME,
        "data": {
            "train": dataset_summary(train),
            "val": None if val is None else dataset_summary(val),
        },
        "model": {**describe_model(trainer.model), "encoder": trainer.encoder_info},
        "supervision": config.train.supervision,
        "loss_weights": trainer.weights.to_dict(),
        "train": {
            "iterations": result["step"],
            "seconds": result["train_seconds"],
            "seconds_per_iteration": result["train_seconds"] / max(result["step"], 1),
            "stopped_early": result["stopped_early"],
            "device": str(device),
            "last": result["last"],
        },
        "validation": result["validation"],
        "timing": {"data_seconds": data_seconds, "wall_seconds": time.perf_counter() - wall},
    }
    write_json(summary_path, summary)
    return summary


def model_from_checkpoint(
    path: str, *, device: torch.device | str = "cpu"
) -> tuple[SingleViewModel, SingleViewConfig, dict[str, Any]]:
    """
    The model of a single-view checkpoint, in eval mode.

    Returns:
        ``(model, config, state)``.

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable checkpoint, or one of another task.
    """
    state = load_checkpoint(path, map_location=device)
    if state.get("task") != TASK_NAME:
        raise ValueError(
            f"{path} is not a single-view checkpoint (train one with dvr fit --task single-view)."
        )
    config = config_from_dict(state["config"])
    model = build_model(config, load_weights=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"The checkpoint {path} does not fit its configuration: {error}"
        ) from error
    return model.to(device).eval(), config, state
