"""
``GraphedTrainStep``: a training step of :class:`~dvr_plugin.renderer.renderer.DVRRenderer` whose
differentiable half (implicit gradient, colour, the caller's loss, backward and the optimiser's
step) is replayed as one CUDA graph.

A DVR training step has two halves. The root finder (rays, march, secant steps) runs without
gradients and decides, ray by ray, whether there is a surface: its work depends on the data and
it reads a few numbers on the host (its rounds are recorded as graphs of their own,
``SecantRaysampler(cuda_graphs=True)``). Everything after it has fixed shapes once every ray is
evaluated, hit or not, with the misses masked (``DVRRenderer.render_surfaces(dense=True)``: the
same values and gradients as evaluating the hits alone). That half, a few hundred small kernels
launched one by one, is recorded once per batch shape and replayed with one launch::

    step = GraphedTrainStep(renderer=renderer, optimizer=optimizer, loss_fn=depth_l1)
    for cameras, xys, target in batches:
        loss = step(cameras, xys=xys, target=target)   # root finding, then one graph replay

What the recording needs (checked with a ``ValueError`` that names the problem):
- a renderer built with ``check_finite=False`` (its check reads a flag on the host);
- on CUDA, an optimiser built with ``capturable=True`` (e.g. ``torch.optim.Adam(...,
  fused=True, capturable=True)``), whose step then runs inside the graph;
- cameras whose parameters need no gradient and no latent codes: the rays are computed before
  the graph, so a camera or code gradient would be lost (use the renderer directly for those);
- a ``loss_fn(output, **targets)`` that returns a scalar tensor and neither synchronises with
  the host nor draws random numbers, and target tensors of the same shapes from call to call
  (a new shape records a new graph).

The optimiser's settings are part of the recording: a learning rate given as a number is
baked in, so changing it (a scheduler) records again after the warm-up calls; give it as a
CUDA tensor (``lr=torch.tensor(1e-3, device="cuda")``) and update it in place to change it at
every replay. Replacing the optimiser's state (``load_state_dict``) records again too
(:func:`optimizer_key`). The step owns the parameters' ``.grad`` while it replays (they live
in the graph's memory).
Off CUDA, or with ``cuda_graphs=False``, the same dense half runs eagerly, so the CPU runs the
code the graph records. The first ``warmup_steps`` calls of each batch shape run eagerly on a
side stream (as CUDA graph capture asks), then the graph is recorded and replayed; every call
makes exactly one optimiser step on its own batch. A failed recording warns once and that
shape stays eager. Nothing here has a frame or units of its own: cameras and depths are those
of the renderer (world units, z-depth).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pytorch3d.renderer.cameras import CamerasBase

from ..accel.graph_cache import GraphCache, field_storage_key, side_stream
from ..fields.appearance import geometry_of
from .raysampler import FoundSurfaces
from .renderer import DVRRenderer, DVRRenderOutput

LossFunction = Callable[..., torch.Tensor]

# the tensors of FoundSurfaces that a recorded step reads from its input buffers
_RAY_TENSORS = ("origins", "directions", "depths", "hit", "started_inside", "missed_box", "xys")


class _RecordedStep:
    """One recorded step: its input buffers, the graph and the loss it writes."""

    def __init__(self, *, found: FoundSurfaces, targets: dict, graph, loss: torch.Tensor):
        self.found = found
        self.targets = targets
        self.graph = graph
        self.loss = loss


class GraphedTrainStep:
    """
    One optimisation step per call: root finding, then the differentiable half as a CUDA
    graph (module docstring).

    Args (keyword-only):
        renderer: the :class:`DVRRenderer` (built with ``check_finite=False``); its field's
            parameters are what ``optimizer`` updates.
        optimizer: a ``torch.optim`` optimiser; on CUDA built with ``capturable=True``.
        loss_fn: ``loss_fn(output: DVRRenderOutput, **targets) -> scalar tensor``.
        cuda_graphs: record and replay on CUDA (``False``: always eager, e.g. to compare).
        warmup_steps: eager calls per batch shape before it is recorded (at least 1).
        max_graphs: recorded batch shapes kept (the least recently used is dropped).
    """

    def __init__(
        self,
        *,
        renderer: DVRRenderer,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFunction,
        cuda_graphs: bool = True,
        warmup_steps: int = 2,
        max_graphs: int = 4,
    ) -> None:
        if not isinstance(renderer, DVRRenderer):
            raise ValueError(
                f"GraphedTrainStep needs a DVRRenderer, got {type(renderer).__name__}."
            )
        if renderer.raymarcher.check_finite:
            raise ValueError(
                "GraphedTrainStep needs a DVRRenderer built with check_finite=False (the "
                "finiteness check synchronises with the host; check the loss instead)."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
            )
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable: loss_fn(output, **targets) -> tensor.")
        if int(warmup_steps) < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}.")
        if int(max_graphs) < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}.")
        self.renderer = renderer
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.cuda_graphs = cuda_graphs
        self.warmup_steps = int(warmup_steps)
        self.max_graphs = int(max_graphs)
        self._graphs = GraphCache(max_entries=self.max_graphs, what="the training step")
        self._seen: dict[tuple, int] = {}

    @property
    def recorded_shapes(self) -> int:
        """How many batch shapes are recorded now."""
        return len(self._graphs)

    def __call__(
        self,
        cameras: CamerasBase,
        *,
        xys: torch.Tensor | None = None,
        n_steps: int | None = None,
        n_rays_per_image: int | None = None,
        **targets: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            cameras: ``B`` PyTorch3D cameras (parameters without gradient).
            xys: `(B, ..., 2)` NDC ray positions (else the raysampler's random rays / grid).
            n_steps: marching samples for this step.
            n_rays_per_image: random rays per camera for this step.
            **targets: tensors passed on to ``loss_fn`` (e.g. `(B, ..., 3)` colours).

        Returns:
            The loss of this step, a detached scalar tensor (computed before the update).
        """
        for name, value in targets.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"GraphedTrainStep targets must be tensors; {name!r} is "
                    f"{type(value).__name__}."
                )
        if _needs_grad(cameras):
            raise ValueError(
                "GraphedTrainStep takes cameras without gradients (their rays are computed "
                "before the recorded half, so a camera gradient would be lost); refine cameras "
                "through DVRRenderer itself."
            )
        with torch.no_grad():
            found = self.renderer.raysampler.find_surfaces(
                cameras=cameras,
                field=geometry_of(self.renderer.field),
                xys=xys,
                n_steps=n_steps,
                n_rays_per_image=n_rays_per_image,
            )
        device = found.origins.device
        if not (self.cuda_graphs and device.type == "cuda"):
            return self._eager(found, targets)
        _check_capturable(self.optimizer)
        key = _shape_key(found, targets) + (
            field_storage_key(self.renderer),
            optimizer_key(self.optimizer),
        )
        seen = self._seen.get(key, 0)
        if seen < self.warmup_steps:
            self._seen[key] = seen + 1
            stream = side_stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                loss = self._eager(found, targets)
            torch.cuda.current_stream(device).wait_stream(stream)
            return loss
        # recorded on first use; None: its recording failed (said once), so it runs eagerly
        recorded = self._graphs.get(key, lambda: self._record(found, targets))
        if recorded is None:
            return self._eager(found, targets)
        _fill(recorded, found, targets)
        recorded.graph.replay()
        return recorded.loss.detach().clone()

    def _step(self, found: FoundSurfaces, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        output: DVRRenderOutput = self.renderer.render_surfaces(found, dense=True)
        loss = self.loss_fn(output, **targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                "loss_fn must return a scalar tensor, got "
                f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}."
            )
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _eager(self, found: FoundSurfaces, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(found, targets)

    def _record(self, found: FoundSurfaces, targets: Mapping[str, torch.Tensor]) -> _RecordedStep:
        static_found = found._replace(
            **{name: getattr(found, name).detach().clone() for name in _RAY_TENSORS}
        )
        static_targets = {name: value.detach().clone() for name, value in targets.items()}
        # the raymarcher's background colour is a buffer: on the device before recording (a
        # host-to-device copy cannot be recorded)
        self.renderer.raymarcher.to(found.origins.device)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                loss = self._step(static_found, static_targets)
        except Exception:  # the cache says why, and this shape runs eagerly from then on
            self.optimizer.zero_grad(set_to_none=True)
            raise
        return _RecordedStep(found=static_found, targets=static_targets, graph=graph, loss=loss)


def _needs_grad(cameras: CamerasBase) -> bool:
    return any(
        isinstance(value, torch.Tensor) and value.requires_grad
        for value in vars(cameras).values()
    )


def _check_capturable(optimizer: torch.optim.Optimizer) -> None:
    if not all(group.get("capturable", False) for group in optimizer.param_groups):
        raise ValueError(
            "GraphedTrainStep records the optimiser's step on CUDA: build it with "
            "capturable=True (e.g. torch.optim.Adam(params, fused=True, capturable=True)), or "
            "pass cuda_graphs=False."
        )


def optimizer_key(optimizer: torch.optim.Optimizer) -> tuple:
    """
    What a recorded optimiser step depends on besides the parameters: each group's settings
    (a number is baked into the graph as it was when recorded, so a changed one needs a new
    recording; a tensor, e.g. ``lr=torch.tensor(1e-3, device="cuda")``, is read at every
    replay and counts by its storage) and the storage of the optimiser's state tensors, which
    ``load_state_dict`` replaces.
    """
    groups = tuple(
        tuple(
            (name, ("tensor", value.data_ptr()) if isinstance(value, torch.Tensor) else repr(value))
            for name, value in sorted(group.items())
            if name != "params"
        )
        for group in optimizer.param_groups
    )
    state = tuple(
        value.data_ptr()
        for per_parameter in optimizer.state.values()
        for value in per_parameter.values()
        if isinstance(value, torch.Tensor)
    )
    return groups, state


def _shape_key(found: FoundSurfaces, targets: Mapping[str, torch.Tensor]) -> tuple:
    rays = (tuple(found.xys.shape), found.origins.dtype, found.origins.device)
    return rays + tuple(
        (name, tuple(value.shape), value.dtype, value.device)
        for name, value in sorted(targets.items())
    )


def _fill(
    recorded: _RecordedStep, found: FoundSurfaces, targets: Mapping[str, torch.Tensor]
) -> None:
    for name in _RAY_TENSORS:
        getattr(recorded.found, name).copy_(getattr(found, name).detach())
    for name, value in targets.items():
        recorded.targets[name].copy_(value)
