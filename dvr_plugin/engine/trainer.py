"""
The training engine of every task. :class:`BaseTrainer` owns the loop and everything around it
once; a task (:class:`dvr_plugin.training.Trainer`, multi-view;
:class:`dvr_plugin.single_view.SingleViewTrainer`) adds what it trains and how.

The base owns:

- the loop (:meth:`BaseTrainer.fit`): the progress bar, ``train.iterations`` and
  ``train.time_budget_s``, a log row every ``eval.log_every`` steps, a validation every
  ``eval.validate_every`` and a checkpoint every ``eval.checkpoint_every``; at the end the
  checkpoint, a last validation and ``curves.png``. Ctrl-C stops at the end of the step, writes
  its checkpoint and raises :class:`FitInterrupted`;
- the schedules' position (:attr:`BaseTrainer.schedule_step`): the step, or with
  ``train.schedule_by_time`` the clock's share of ``train.time_budget_s`` in steps, and the
  learning rate at it (with ``train.lr_by_time`` the learning rate alone follows the clock;
  :meth:`BaseTrainer.update_schedule`);
- the run: the seeded random state, the refusal to overwrite a checkpoint, the resume (read,
  restore, refuse one that cannot train on) and the output folder (:mod:`.run_outputs`);
- checkpoints: model, optimiser, learning-rate schedule, step, training seconds and every
  random state (the global ones and the trainer's two generators), written atomically;
- several ranks: given a :class:`RankGroup`, rank 0 alone reads and writes files and shows
  progress, and the ranks agree on when to stop.

A task implements :meth:`~BaseTrainer.train_step`, :meth:`~BaseTrainer.validate` and the
checkpoint entries of its own (:meth:`~BaseTrainer._task_state`,
:meth:`~BaseTrainer._load_task_state`, :meth:`~BaseTrainer._check_state`); the other hooks
(``_resumed``, ``_after_step``, ``_validated``, ``_describe_validation``,
``_final_validation``, ``_postfix``, ``_summary``) have defaults. The parts of a step that
every DVR task shares are here too: the free-space / occupancy loss points, the optimiser step
and the values a step returns.

The configuration is read by attribute, whatever its class: ``seed``, ``to_dict()``,
``train.iterations``, ``train.time_budget_s``, ``train.schedule_by_time``, ``train.lr_by_time``,
``eval.log_every``, ``eval.validate_every``, ``eval.checkpoint_every``, ``eval.tensorboard``,
``optim.grad_clip``, ``optim.lr_milestones``, ``optim.lr_gamma`` and ``loss.visual_hull_depth``.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Protocol

import torch
from torch import nn

from ..fields.field import UNIT_CUBE_BOUNDS
from ..renderer.rays import intersect_box
from ..renderer.raysampler import SecantRaysampler
from ..renderer.renderer import DVRRenderer
from .checkpoint import (
    capture_rng_state,
    checkpoint_exists,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .logs import CsvLog, TensorBoardLog
from .losses import LossPoints, freespace_and_occupancy_points
from .run_outputs import (
    CHECKPOINT_NAME,
    log_train_row,
    open_run_outputs,
    plot_run_curves,
    progress_bar,
)

# Short names of the loss terms in the progress bar.
POSTFIX_NAMES = {"freespace": "fs", "occupancy": "occ", "image_gradient": "grad", "eikonal": "eik"}


class RankGroup(Protocol):
    """The ranks of a distributed fit, as the loop needs them (rank 0 writes and decides)."""

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""

    def from_main(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` run on rank 0, its result (or exception) on every rank."""

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""


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
        enabled and threading.current_thread() is threading.main_thread() and callable(previous)
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


def _scalar(value: Any) -> float:
    """A float of a number or a one-element tensor (read without its graph)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def build_optimizer(
    optim: Any, params: Any
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    """
    Adam over ``params`` (parameters or parameter groups) with ``optim``'s learning rate and
    weight decay (``optim.lr``, ``optim.weight_decay``), and its step decay
    (``optim.lr_milestones``, ``optim.lr_gamma``). On CUDA it is the fused implementation (the
    same update, one kernel).
    """
    params = list(params)
    tensors = [t for item in params for t in (item["params"] if isinstance(item, dict) else [item])]
    # one fused kernel instead of a dozen per step where every parameter is on a GPU
    fused = bool(tensors) and all(t.is_cuda for t in tensors)
    optimizer = torch.optim.Adam(
        params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused or None
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=optim.lr_milestones, gamma=optim.lr_gamma
    )
    return optimizer, scheduler


def training_renderer(
    field, config: Any, *, check_finite: bool = True, **sampler_options: Any
) -> DVRRenderer:
    """
    The renderer of a task's training rays: ``config.train.n_secant_steps`` secant steps, no
    normals, ``config.background`` behind the object. It marches the first step count of
    ``config.train.step_milestones``; a training step passes the scheduled count.

    Args:
        field: what the renderer calls (the model's field, or a wrapper of it).
        config: a task configuration (:class:`dvr_plugin.engine.config.BaseConfig` with a
            :class:`dvr_plugin.engine.config.BaseTrainConfig` ``train`` section).
        check_finite: the renderer's check of the colours (see
            :class:`dvr_plugin.renderer.renderer.DVRRenderer`).
        **sampler_options: more keyword arguments of
            :class:`dvr_plugin.renderer.raysampler.SecantRaysampler` (``occupancy_grid``, ...).
    """
    return DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(
            n_steps=config.train.step_milestones[0],
            n_secant_steps=config.train.n_secant_steps,
            compute_normals=False,
            **sampler_options,
        ),
        background_color=config.background,
        check_finite=check_finite,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _no_checkpoint_error(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"Cannot resume: no checkpoint at {path}.")


def _checkpoint_present_error(out_dir: str) -> ValueError:
    return ValueError(
        f"{out_dir} already holds a checkpoint; resume from it (--resume) or choose "
        "another output folder. Nothing was overwritten."
    )


def check_output_folder(out_dir: str, *, resume: bool) -> None:
    """
    Before any work: a resume needs ``out_dir/checkpoint.pt``; a new run must not find one
    (the same errors as :class:`BaseTrainer`, raised before the data is loaded).

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint.
        ValueError: not ``resume`` and ``out_dir`` already holds a checkpoint.
    """
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    exists = checkpoint_exists(path)
    if resume and not exists:
        raise _no_checkpoint_error(path)
    if not resume and exists:
        raise _checkpoint_present_error(out_dir)


def read_for_resume(path: str, *, map_location: Any) -> dict[str, Any]:
    """The checkpoint to resume from, with a clear error when there is none."""
    if not checkpoint_exists(path):
        raise _no_checkpoint_error(path)
    return load_checkpoint(path, map_location=map_location)


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


class BaseTrainer(abc.ABC):
    """
    The loop, checkpoints, resume and outputs of a training task (see the module docstring).

    A task's constructor checks its inputs, calls ``super().__init__`` (which refuses to
    overwrite a checkpoint, seeds every random state and makes the two generators), builds its
    model, optimiser (``self.optimizer``, ``self.scheduler``) and loss weights
    (``self.weights``), then calls :meth:`_start_run` (resume, output folder).

    Args (keyword-only):
        config: the task's configuration (read by attribute; see the module docstring).
        device: the training device.
        out_dir: folder (or iopath URI) for the checkpoint, logs, validation grids and curves;
            ``None`` writes nothing.
        resuming: the run continues from a checkpoint (:meth:`_start_run` reads it).
        progress: show a tqdm progress bar (on rank 0).
        dist: the ranks of a distributed fit, or ``None``.

    Members (besides the arguments):
        step, train_seconds: the steps taken and their training time (seconds).
        generator: the training device's generator (pixels, loss points, jitter); seeded with
            ``config.seed + 1``.
        choice_generator: the CPU generator of what each step trains on (images, objects,
            views); seeded with ``config.seed``. The checkpoint saves it as
            :attr:`choice_generator_name`.
        box_min, box_max: `(3,)` the corners of the marching box (``UNIT_CUBE_BOUNDS``).
        last_validation: the metrics of the last validation, or ``None``.
        stopped_early: ``train.time_budget_s`` ended the last fit.
        nothing_to_do: a message when a resumed checkpoint is already at ``train.iterations``
            (then :meth:`fit` trains and writes nothing), else ``None``.

    Raises:
        ValueError: ``out_dir`` already holds a checkpoint and the run does not resume.
    """

    # The loss terms of the task: columns of the training log, curves, progress bar entries.
    terms: tuple[str, ...] = ()
    # The label of the progress bar.
    progress_label = "fit"
    # The name of the CPU generator in the checkpoint.
    choice_generator_name = "choices"

    # Set by the task.
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    weights: Any

    def __init__(
        self,
        *,
        config: Any,
        device: torch.device | str,
        out_dir: Optional[str],
        resuming: bool,
        progress: bool,
        dist: Optional[RankGroup] = None,
    ) -> None:
        self.config = config
        self.dist = dist
        self.is_main = dist is None or dist.is_main
        self.device = torch.device(device)
        self.out_dir = None if out_dir is None else str(out_dir)
        self.progress = progress and self.is_main
        self.resuming = resuming
        if (
            not resuming
            and self.out_dir is not None
            and self._on_main(checkpoint_exists, self._path(CHECKPOINT_NAME))
        ):
            raise _checkpoint_present_error(self.out_dir)
        self.step = 0
        self.train_seconds = 0.0
        # the clock's position in the schedules (train.schedule_by_time; see update_schedule)
        self._clock_step = 0
        self.stopped_early = False
        self.last_validation: Optional[dict[str, Any]] = None
        self.nothing_to_do: Optional[str] = None
        self.train_log: Optional[CsvLog] = None
        self.val_log: Optional[CsvLog] = None
        self.tensorboard: Optional[TensorBoardLog] = None
        seed_everything(config.seed)
        self.choice_generator = torch.Generator().manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        # The marching box (the normalised object frame), where the loss points are drawn.
        box = torch.tensor(UNIT_CUBE_BOUNDS, dtype=torch.float32, device=self.device)
        self.box_min, self.box_max = box[0], box[1]

    # -----------------------------------------------------------------------------------------
    # What a task implements

    @abc.abstractmethod
    def train_step(self) -> dict[str, float]:
        """
        One optimisation step; advances ``step``.

        Returns:
            ``loss``, each computed term, ``lr``, ``n_steps``, ``hit_rate`` and
            ``train_mask_agreement`` (floats; the same on every rank).
        """

    @abc.abstractmethod
    def validate(self) -> Optional[dict[str, Any]]:
        """
        Render and score the validation views, log the metrics and set ``last_validation``.

        Returns:
            The metrics (with ``step``, ``psnr`` and ``mask_iou``), or ``None`` when nothing
            was validated (no validation data, a rank other than 0).
        """

    # -----------------------------------------------------------------------------------------
    # Parts of a step that every task shares

    def _mask_loss_points(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        depths: torch.Tensor,
        hit: torch.Tensor,
        gt_mask: torch.Tensor,
        gt_depth: Optional[torch.Tensor],
        *,
        draw: Callable[..., LossPoints] = freespace_and_occupancy_points,
    ) -> tuple[LossPoints, torch.Tensor]:
        """
        DVR's free-space and occupancy points of `(B, R)` rays inside the marching box (drawn
        with :attr:`generator`; with ``loss.visual_hull_depth``, bounded by the true depth).

        Args:
            origins, directions: `(B, R, 3)` the rays (detached here).
            depths: `(B, R)` rendered depths (detached here).
            hit: `(B, R)` rays that found a surface.
            gt_mask: `(B, R)` true mask values.
            gt_depth: `(B, R)` true depths (0: none), or ``None``.
            draw: :func:`dvr_plugin.engine.losses.freespace_and_occupancy_points`, or a wrapper
                of it with the same arguments (e.g. one drawing for every rank).

        Returns:
            ``(points, chosen)``: the :class:`~dvr_plugin.engine.losses.LossPoints` and `(B, R,
            3)` each ray's free-space point where it has one, else its occupancy point.
        """
        origins, directions = origins.detach(), directions.detach()
        near, far, _ = intersect_box(origins, directions, self.box_min, self.box_max)
        hull = None
        if gt_depth is not None and self.config.loss.visual_hull_depth:
            hull = torch.where(gt_mask & (gt_depth > 0), gt_depth, torch.zeros_like(gt_depth))
        points = draw(
            origins,
            directions,
            depths.detach(),
            hit,
            gt_mask,
            near,
            far,
            generator=self.generator,
            visual_hull_depth=hull,
        )
        chosen = torch.where(
            points.freespace_select[..., None], points.freespace_points, points.occupancy_points
        )
        return points, chosen

    def _non_finite(self, values: Mapping[str, Any]) -> FloatingPointError:
        """The error of a step whose loss is not finite (``values``: its terms)."""
        values = {name: _scalar(value) for name, value in values.items() if value is not None}
        return FloatingPointError(
            f"The loss became non-finite at step {self.step}: {values}. Try a lower "
            "optim.lr or optim.grad_clip."
        )

    def _optimizer_step(
        self,
        loss: torch.Tensor,
        *,
        backward: bool,
        parameters: Iterable[torch.Tensor],
        lr_group: int = 0,
    ) -> float:
        """
        The end of a step: when ``backward``, the gradients of ``loss`` (their norm over
        ``parameters`` clipped to ``optim.grad_clip`` when positive) and the optimiser's step;
        then the learning-rate schedule's step, and ``step`` advances.

        Returns:
            The learning rate of the step (of parameter group ``lr_group``).
        """
        self.optimizer.zero_grad(set_to_none=True)
        if backward:
            loss.backward()
            grad_clip = self.config.optim.grad_clip
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            self.optimizer.step()
        lr = float(self.optimizer.param_groups[lr_group]["lr"])
        train = self.config.train
        if not (train.schedule_by_time or train.lr_by_time):  # else update_schedule sets it
            self.scheduler.step()
        self.step += 1
        return lr

    @property
    def schedule_step(self) -> int:
        """
        The step the step-indexed schedules read (learning rate, marching steps, annealing,
        warm-ups): ``step``, or with ``train.schedule_by_time`` the larger of ``step`` and the
        clock's position set by :meth:`update_schedule`.
        """
        return max(self.step, self._clock_step)

    def update_schedule(self) -> None:
        """
        With ``train.schedule_by_time``: move the schedules to the clock's position,
        ``iterations x train_seconds / time_budget_s`` (whole steps, at most ``iterations``;
        rank 0's clock on several ranks), and set the learning rate of :attr:`schedule_step`
        (each ``optim.lr_milestones`` at or before it multiplies the groups' initial rates by
        ``optim.lr_gamma``). With ``train.lr_by_time`` only the learning rate is set, from the
        larger of ``step`` and the clock's position; the other schedules follow ``step``.
        :meth:`timed_step` calls it before every step. Without either option it does nothing,
        and the schedules follow ``step``.
        """
        train = self.config.train
        if not (train.schedule_by_time or train.lr_by_time):
            return
        share = self.train_seconds / train.time_budget_s
        position = min(train.iterations, int(train.iterations * share))
        if self.dist is not None:
            position = self.dist.broadcast_int(position)
        if train.schedule_by_time:
            self._clock_step = position
        optim = self.config.optim
        lr_step = max(self.schedule_step, position)
        factor = optim.lr_gamma ** bisect.bisect_right(optim.lr_milestones, lr_step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def timed_step(self) -> dict[str, float]:
        """
        One step as :meth:`fit` takes it: :meth:`update_schedule`, :meth:`train_step`, and the
        step's wall time added to ``train_seconds``. A loop that steps by hand calls this to
        keep the clock (and the schedules on it) as :meth:`fit` does.

        Returns:
            :meth:`train_step`'s values.
        """
        self.update_schedule()
        start = time.perf_counter()
        values = self.train_step()
        self.train_seconds += time.perf_counter() - start
        return values

    @staticmethod
    def _step_values(
        values: Mapping[str, Any],
        *,
        lr: float,
        n_steps: int,
        hit_rate: Any,
        agreement: Any,
    ) -> dict[str, float]:
        """
        What a step returns: ``values`` (the loss and the terms, floats or one-element
        tensors; ``None`` is left out), ``lr``, ``n_steps``, ``hit_rate`` and
        ``train_mask_agreement``.
        """
        out = {name: _scalar(value) for name, value in values.items() if value is not None}
        out["lr"] = float(lr)
        out["n_steps"] = float(n_steps)
        out["hit_rate"] = _scalar(hit_rate)
        out["train_mask_agreement"] = _scalar(agreement)
        return out

    def _record_validation(self, metrics: dict[str, Any], *, log: bool = True) -> None:
        """Keep ``metrics`` as :attr:`last_validation`; ``log``: also in the logs."""
        if self.val_log is not None and log:
            self.val_log.append(metrics)
        if self.tensorboard is not None and log:
            self.tensorboard.add("val", metrics, self.step)
        self.last_validation = metrics

    # -----------------------------------------------------------------------------------------
    # Checkpoint entries of the task

    def _task_state(self) -> dict[str, Any]:
        """The checkpoint's entries of the task (besides those of :meth:`state_dict`)."""
        return {}

    def _check_state(self, state: Mapping[str, Any], where: str) -> None:
        """Refuse (``ValueError``) a checkpoint ``state`` this trainer cannot load."""
        return None  # a hook: nothing by default

    def _load_task_state(self, state: Mapping[str, Any]) -> None:
        """Restore the task's entries of a checkpoint (after model, optimiser and RNG)."""
        return None  # a hook: nothing by default

    # -----------------------------------------------------------------------------------------
    # The run: resume and outputs

    def _start_run(self, *, resume_from: Optional[str] = None) -> None:
        """
        The end of a task's constructor: when resuming, read ``resume_from`` (default
        ``out_dir/checkpoint.pt``; on several ranks rank 0 reads it), restore it and check that
        it can train on; then open the output folder (rank 0, unless there is nothing to do).
        Every refusal comes before anything in ``out_dir`` is touched.

        Raises:
            ValueError: a resume without ``out_dir`` or ``resume_from``, a checkpoint that does
                not load (:meth:`load_state`) or cannot train on (:meth:`_check_resume_step`).
            FileNotFoundError: no checkpoint to resume from.
        """
        config = self.config
        if self.resuming:
            path = resume_from or self._path(CHECKPOINT_NAME)
            if path is None:
                raise ValueError("resume needs out_dir or resume_from.")
            if self.dist is None:
                state = read_for_resume(path, map_location=self.device)
            else:  # rank 0 reads the file; every rank gets its contents
                state = self.dist.from_main(read_for_resume, path, map_location="cpu")
            self.load_state(state, path=path)
            self._check_resume_step(state, path)
            if self.step == config.train.iterations:
                self.nothing_to_do = (
                    f"{path} is already at step {self.step} = train.iterations: nothing to do "
                    f"(nothing was written); pass train.iterations=N with N > {self.step} to "
                    "train longer."
                )
            self._resumed(path)
        if self.out_dir is not None and self.is_main and self.nothing_to_do is None:
            self.train_log, self.val_log, self.tensorboard = open_run_outputs(
                self.out_dir,
                config.to_dict(),
                terms=self.terms,
                resume_step=self.step if self.resuming else None,
                tensorboard=config.eval.tensorboard,
            )

    def _resumed(self, path: str) -> None:
        """Called once a resumed checkpoint (at ``path``) is loaded and accepted."""
        return None  # a hook: nothing by default

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

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, with the task's own entries (:meth:`_task_state`)."""
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(self._generators()),
            "train_seconds": self.train_seconds,
            **self._task_state(),
        }

    def load_state(self, state: Mapping[str, Any], *, path: Optional[str] = None) -> None:
        """
        Restore what :meth:`state_dict` saved: model, optimiser, schedule, step, training
        seconds, random states and the task's entries. ``path`` names the checkpoint in
        messages.

        Raises:
            ValueError: a checkpoint the task refuses (:meth:`_check_state`; nothing is
                changed), or whose model does not match.
        """
        self._check_state(state, path or "the checkpoint")
        self.step, self.train_seconds = restore_training_state(
            state,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            generators=self._generators(),
        )
        self._load_task_state(state)

    def save_checkpoint(self, path: Optional[str] = None) -> Optional[str]:
        """
        Write the checkpoint atomically (default ``out_dir/checkpoint.pt``); on several ranks
        rank 0 writes it.

        Returns:
            The path written, or ``None`` (no output folder, a rank other than 0).
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

        Ctrl-C stops at the end of the current step: the checkpoint of that step is written and
        :class:`FitInterrupted` raised (a second Ctrl-C stops at once; a ``KeyboardInterrupt``
        raised inside a step rewinds the trainer's generators to the step's start, so the
        resumed run draws that step again). On several ranks Ctrl-C is not deferred. A resume
        already at ``train.iterations`` trains and writes nothing.

        Returns:
            :meth:`_summary`: ``step``, ``train_seconds``, ``stopped_early``, ``last`` (the last
            step's losses), ``validation`` (the last validation metrics or ``None``),
            ``nothing_to_do`` (a message, or ``None``) and the task's entries.
        """
        cfg = self.config
        total = cfg.train.iterations
        budget = cfg.train.time_budget_s
        if self.nothing_to_do is not None:
            return self._summary({})
        if self.step == 0 and cfg.eval.validate_every > 0:
            self.validate()
            self._validated(None)
        last: dict[str, float] = {}
        # The step and generator states at the start of the running step (see the except).
        at_start: Optional[tuple[int, dict[str, torch.Tensor]]] = None
        bar = progress_bar(
            total=total, initial=self.step, enabled=self.progress, desc=self.progress_label
        )
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
                    last = self.timed_step()
                    bar.update(1)
                    bar.set_postfix(**self._postfix(last), refresh=False)
                    if self.step % cfg.eval.log_every == 0 or self.step == total:
                        log_train_row(
                            last,
                            step=self.step,
                            seconds=self.train_seconds,
                            train_log=self.train_log,
                            tensorboard=self.tensorboard,
                        )
                    self._after_step(last, bar)
                    if cfg.eval.validate_every and self.step % cfg.eval.validate_every == 0:
                        if self.validate() is not None:
                            bar.write(f"step {self.step}: {self._describe_validation()}")
                            self._validated(bar)
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
        self._final_validation()
        if self.out_dir is not None and self.is_main:
            plot_run_curves(self.out_dir, self._active_terms())
        if self.tensorboard is not None:
            self.tensorboard.close()
        return self._summary(last)

    def _active_terms(self) -> list[str]:
        """The loss terms this fit trains with (a positive weight)."""
        return [term for term in self.terms if getattr(self.weights, term) > 0]

    def _postfix(self, last: Mapping[str, float]) -> dict[str, Any]:
        """The progress bar's entries after a step with the values ``last``."""
        return {
            "loss": f"{last['loss']:.4g}",
            **{
                POSTFIX_NAMES.get(term, term): f"{last.get(term, 0.0):.3g}"
                for term in self._active_terms()
            },
            "hit": f"{last['hit_rate']:.2f}",
            "n": int(last["n_steps"]),
        }

    def _after_step(self, last: Mapping[str, float], bar: Any) -> None:
        """Called after every step with its values (``bar``: the progress bar, for messages)."""
        return None  # a hook: nothing by default

    def _validated(self, bar: Any) -> None:
        """
        Called after a validation of the loop (``bar`` ``None`` before the first step and after
        the last one).
        """
        return None  # a hook: nothing by default

    def _describe_validation(self) -> str:
        """The last validation in words (the progress bar's line after a validation)."""
        metrics = self.last_validation or {}
        return f"validation PSNR {metrics['psnr']:.2f} dB, mask IoU {metrics['mask_iou']:.3f}"

    def _final_validation(self) -> None:
        """After the loop: validate the last step, unless the loop just did."""
        if self.last_validation is None or self.last_validation["step"] != self.step:
            if self.validate() is not None:
                self._validated(None)

    def _summary(self, last: Mapping[str, float]) -> dict[str, Any]:
        """What :meth:`fit` returns, given the last step's values."""
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "stopped_early": self.stopped_early,
            "last": dict(last),
            "validation": self.last_validation,
            "nothing_to_do": self.nothing_to_do,
        }

    # -----------------------------------------------------------------------------------------
    # Ranks, generators, paths

    def _on_main(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; on several ranks run by rank 0 and its result given to every rank."""
        return fn(*args) if self.dist is None else self.dist.from_main(fn, *args)

    def _agree(self, flag: bool) -> bool:
        """``flag``; on several ranks rank 0's (the ranks must stop at the same step)."""
        return flag if self.dist is None else self.dist.broadcast_flag(flag)

    def _generators(self) -> dict[str, torch.Generator]:
        """The trainer's generators by their names in the checkpoint."""
        return {self.choice_generator_name: self.choice_generator, "sampling": self.generator}

    def _path(self, *parts: str) -> Optional[str]:
        """A path inside ``out_dir`` (``None`` without one)."""
        if self.out_dir is None:
            return None
        return os.path.join(self.out_dir, *parts)
