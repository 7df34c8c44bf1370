"""
Training on several processes with ``torch.distributed``: one process per GPU (or per CPU
worker), started by ``torchrun``. See ``docs/distributed.md``.

Conventions
-----------
- ``train.images_per_batch`` is the **global** batch: the ``B`` images of one step are split
  across the ``W`` ranks in contiguous blocks (the first ``B mod W`` ranks take one image more),
  and every rank renders ``train.rays_per_image`` rays of each of its images. The learning rate,
  its milestones and the iteration count mean the same as on one process, so a configuration
  trains the same model on any number of ranks; more ranks only make a step faster.
- Every rank draws the whole global batch from the trainer's generators (the images, the pixels,
  the free-space / occupancy depths and the normal jitter) and keeps its own part
  (:class:`BatchShard`). The generators therefore stay in the same state on every rank, the
  union of the shards is exactly the batch one process would train on with the same seed, and a
  checkpoint does not depend on the number of ranks.
- Each rank's loss is scaled by ``W * B_r / B`` (``B_r`` its images), so DDP's average of the
  ranks' gradients is the gradient of the global batch's loss (the reference reduction: summed
  over rays, divided by ``B``).
- One step is one forward of :class:`StepForward` (rendering and every loss evaluation of the
  field) wrapped in ``DistributedDataParallel``; see that class for why.
- Rank 0 alone writes: checkpoints, logs, validation, figures, progress bars and the final
  outputs. Checkpoints are read by rank 0 and broadcast, so resuming needs the file on rank 0
  only.

Nothing here is used without a distributed environment (``WORLD_SIZE`` > 1 from ``torchrun``,
or a process group initialised by the caller): the single-process path stays as it is.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedEnvironment:
    """
    What ``torchrun`` (or a cluster launcher) tells a worker through its environment.

    Members:
        rank: the global rank (``RANK``).
        world_size: the number of processes (``WORLD_SIZE``).
        local_rank: the rank on this node (``LOCAL_RANK``), i.e. the GPU index to use.
    """

    rank: int
    world_size: int
    local_rank: int


def detect_environment(
    environ: Optional[Mapping[str, str]] = None,
) -> Optional[DistributedEnvironment]:
    """
    Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``).

    Args:
        environ: the environment (default ``os.environ``).

    Returns:
        The environment, or ``None`` when ``WORLD_SIZE`` is unset or 1 (one process: the
        ordinary single-process path).

    Raises:
        ValueError: for values that are not integers or are inconsistent.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    values: dict[str, int] = {}
    for key in ENV_KEYS:
        raw = environ.get(key, "0" if key == "LOCAL_RANK" else None)
        if raw is None:
            raise ValueError(
                f"WORLD_SIZE is set but {key} is not; start the workers with torchrun."
            )
        try:
            values[key] = int(raw)
        except ValueError as error:
            raise ValueError(f"{key} must be an integer, got {raw!r}.") from error
    rank, world_size, local_rank = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must lie in [0, {world_size}), got {rank}.")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}.")
    if world_size == 1:
        return None
    return DistributedEnvironment(rank=rank, world_size=world_size, local_rank=local_rank)


def environment_rank(environ: Optional[Mapping[str, str]] = None) -> int:
    """This process's rank: of the process group when initialised, else ``RANK`` (0 if unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = detect_environment(environ)
    return 0 if env is None else env.rank


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for CUDA training, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: torch.device | str, local_rank: int) -> torch.device:
    """
    The device of the worker with ``local_rank``: ``cuda:LOCAL_RANK`` for CUDA (whatever index
    was asked for), the CPU otherwise.

    Raises:
        ValueError: when the node has fewer GPUs than workers.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this node has {count} GPU(s): start at most {count} "
            "processes per node (torchrun --nproc_per_node)."
        )
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group_from_environment(
    device: torch.device | str,
    *,
    environ: Optional[Mapping[str, str]] = None,
    timeout: Optional[timedelta] = None,
) -> Iterator[Optional[DistributedContext]]:
    """
    Join the process group described by ``torchrun``'s environment for the duration of the
    block, and leave it afterwards.

    ``nccl`` when ``device`` is CUDA (this worker uses ``cuda:LOCAL_RANK``, made the current
    device), ``gloo`` otherwise; ``MASTER_ADDR`` / ``MASTER_PORT`` come from the environment
    (``init_method="env://"``). A process group initialised by the caller is used as it is and
    left alone.

    Args:
        device: the training device (``"cpu"``, ``"cuda"``, ...).
        environ: the environment (default ``os.environ``).
        timeout: the collectives' timeout (default: torch's).

    Yields:
        The :class:`DistributedContext`, or ``None`` without a distributed environment.
    """
    if dist.is_available() and dist.is_initialized():
        yield current_context()
        return
    env = detect_environment(environ)
    if env is None:
        yield None
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    worker_device = local_device(device, env.local_rank)
    if worker_device.type == "cuda":
        torch.cuda.set_device(worker_device)
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if worker_device.type == "cuda":
        options["device_id"] = worker_device  # binds the communicator to this rank's GPU
    dist.init_process_group(
        backend=backend_for(worker_device),
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        **options,
    )
    try:
        yield current_context()
    finally:
        dist.destroy_process_group()


def current_context() -> Optional[DistributedContext]:
    """The :class:`DistributedContext` of the initialised process group (``None`` without one
    or with a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size()
    if world_size < 2:
        return None
    backend = str(dist.get_backend())
    if backend == "nccl":
        index = torch.cuda.current_device()
        comm_device = torch.device("cuda", index)
    else:
        index = int(os.environ.get("LOCAL_RANK", "0"))
        comm_device = torch.device("cpu")
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=world_size,
        local_rank=index,
        backend=backend,
        comm_device=comm_device,
    )


# ---------------------------------------------------------------------------------------------
# Batch shards


@dataclass(frozen=True)
class BatchShard:
    """
    The part ``[start, stop)`` of a global batch of ``total`` rows that one rank works on.

    Members:
        start, stop: this rank's rows.
        total: the rows of the global batch.
    """

    start: int
    stop: int
    total: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start

    def take(self, value: Any) -> Any:
        """This rank's rows of a `(total, ...)` tensor, or of every tensor of a NamedTuple."""
        if isinstance(value, torch.Tensor):
            return value[self.rows]
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(self.take(item) for item in value))
        return value

    def pad(self, value: torch.Tensor) -> torch.Tensor:
        """A `(size, ...)` tensor of this rank as `(total, ...)`, zeros in the other rows."""
        if value.shape[0] != self.size:
            raise ValueError(f"Expected {self.size} rows, got {tuple(value.shape)}.")
        full = value.new_zeros((self.total, *value.shape[1:]))
        full[self.rows] = value
        return full

    def global_call(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """
        ``fn`` applied to the global batch, seen from this rank: tensor arguments with this
        rank's ``size`` rows are padded to ``total`` rows (zeros elsewhere), ``fn`` runs once on
        them, and this rank's rows of its tensor outputs come back. For row-wise functions that
        draw random numbers per row (``torch.rand(rows, ...)``): every rank draws what the
        global batch draws, so generators shared by the ranks stay in step and each rank gets
        the numbers one process would have used for its rows.
        """

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(self._pad_argument(a) for a in args)
            kwargs = {k: self._pad_argument(v) for k, v in kwargs.items()}
            return self.take(fn(*args, **kwargs))

        return call

    def _pad_argument(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.size:
            return self.pad(value)
        return value


def shard_bounds(total: int, world_size: int, rank: int) -> BatchShard:
    """
    Contiguous, balanced blocks: rank ``r`` of ``W`` gets ``total // W`` rows, plus one for
    the first ``total % W`` ranks.

    Raises:
        ValueError: when there are fewer rows than ranks.
    """
    if total < world_size:
        raise ValueError(
            f"The global batch has {total} image(s) for {world_size} ranks; every rank needs at "
            "least one: raise train.images_per_batch (it is the global batch) or use fewer ranks."
        )
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return BatchShard(start=start, stop=stop, total=total)


# ---------------------------------------------------------------------------------------------
# The step as one module


class StepForward(nn.Module):
    """
    One training step's forward pass as a single module call, for ``DistributedDataParallel``.

    A DVR step calls the field many times: the march and the secant steps under ``no_grad``,
    the surface evaluation that carries the implicit gradient, the free-space / occupancy
    points, and the normal term (a double backward). Wrapping the field itself in DDP would run
    DDP's per-call logic at every one of those calls. Instead the trainer's whole loss
    computation runs inside this module's ``forward``, DDP wraps this module, and every call of
    the field inside it goes to the plain field: DDP sees one forward and one backward per step,
    its hooks on the parameters' gradient accumulators fire once per parameter in that backward
    (``torch.autograd.grad`` inside the forward, used for the implicit gradient and the normals,
    does not accumulate into ``.grad`` and so does not trigger them), and the averaged gradient
    is ready when ``backward`` returns.

    Args (keyword-only):
        field: the field (registered, so DDP finds its parameters).
        forward: the loss computation; it must use ``field``.
    """

    def __init__(self, *, field: nn.Module, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.field = field
        self._compute = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._compute(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# The context


@dataclass(frozen=True)
class DistributedContext:
    """
    The ranks of a fit and the few collective operations the trainer needs.

    Members:
        rank, world_size: of the default process group.
        local_rank: the rank on this node (the GPU index for NCCL).
        backend: ``"nccl"`` or ``"gloo"``.
        comm_device: where tensors for collectives live (the GPU for NCCL, else the CPU).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    comm_device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    def device_for(self, device: torch.device | str) -> torch.device:
        """The training device of this rank: the current CUDA device for CUDA, else as given."""
        device = torch.device(device)
        if device.type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def shard(self, total: int) -> BatchShard:
        """This rank's block of a global batch of ``total`` images."""
        return shard_bounds(total, self.world_size, self.rank)

    def ragged_shard(self, size: int) -> BatchShard:
        """
        This rank's ``size`` rows within the concatenation, in rank order, of every rank's rows
        (each rank may have a different number). Collective: every rank must call it.
        """
        sizes = self.all_gather_ints(size)
        start = sum(sizes[: self.rank])
        return BatchShard(start=start, stop=start + size, total=sum(sizes))

    def all_gather_ints(self, value: int) -> list[int]:
        """Every rank's ``value``, in rank order (collective)."""
        local = torch.tensor([int(value)], dtype=torch.int64, device=self.comm_device)
        gathered = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return [int(t.item()) for t in gathered]

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Every rank's picklable ``value``, in rank order (collective)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (collective)."""
        return bool(self.broadcast_int(1 if flag else 0))

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (collective)."""
        tensor = torch.tensor([int(value)], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def from_main(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Run ``fn`` on rank 0 and hand its result to every rank (collective). An exception on
        rank 0 is raised on every rank, with the same type (``ValueError``,
        ``FileNotFoundError``, else ``RuntimeError``) and message.
        """
        message: list[Any] = [None]
        if self.is_main:
            try:
                message[0] = ("ok", fn(*args, **kwargs))
            except Exception as error:  # re-raised on every rank below
                message[0] = ("error", type(error).__name__, str(error))
        dist.broadcast_object_list(message, src=0)
        outcome = message[0]
        if outcome[0] == "ok":
            return outcome[1]
        kind = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}
        raise kind.get(outcome[1], RuntimeError)(outcome[2])

    def global_means(
        self, values: Mapping[str, Optional[torch.Tensor | float]], shard: BatchShard
    ) -> dict[str, Optional[float]]:
        """
        Per-image means over the global batch from each rank's means over its own images:
        ``sum_r (B_r / B) value_r`` (collective). A value that is ``None`` on a rank counts as
        0 there; it comes back as ``None`` only when it is ``None`` on every rank.
        """
        weight = shard.size / shard.total
        zero = torch.zeros((), dtype=torch.float64, device=self.comm_device)
        parts = []
        for value in values.values():
            if value is None:
                parts.extend([zero, zero])
            else:
                value = torch.as_tensor(value).detach().to(self.comm_device, torch.float64)
                parts.extend([value.reshape(()) * weight, zero + 1.0])
        numbers = torch.stack(parts)
        dist.all_reduce(numbers, op=dist.ReduceOp.SUM)
        numbers = numbers.cpu().tolist()  # one synchronisation for every value
        return {
            name: numbers[2 * i] if numbers[2 * i + 1] > 0 else None
            for i, name in enumerate(values)
        }

    def loss_scale(self, shard: BatchShard) -> float:
        """``W * B_r / B``: DDP averages the ranks' gradients; this makes the average the global
        batch's gradient (1 for equal shards)."""
        return self.world_size * shard.size / shard.total

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` (parameters synchronised from rank 0)."""
        from torch.nn.parallel import DistributedDataParallel

        parameter = next(module.parameters())
        device_ids = [parameter.device.index] if parameter.device.type == "cuda" else None
        return DistributedDataParallel(
            module,
            device_ids=device_ids,
            # Every parameter gets a gradient in every step (see Trainer.train_step), and the
            # field has no buffers that change: no search for unused parameters, no broadcasts.
            find_unused_parameters=False,
            broadcast_buffers=False,
        )

    def check_same_data(self, views: Mapping[str, Any]) -> None:
        """
        Check that every rank holds the same data (collective): the number of views, the image
        size, whether there are depth maps, the view names and checksums of the images, masks,
        depths and cameras, per split.

        Args:
            views: ``{"training": MultiViewData, "held-out": MultiViewData or None}``.

        Raises:
            ValueError: naming the split, the difference and the ranks when they disagree.
        """
        local = {name: data_fingerprint(data) for name, data in views.items()}
        every = self.all_gather_objects(local)
        problems = []
        for rank, other in enumerate(every):
            if rank == 0:
                continue
            for split in local:
                problems.extend(
                    f"{split} {difference}: rank 0 has {a}, rank {rank} has {b}"
                    for difference, a, b in compare_fingerprints(every[0][split], other[split])
                )
        if problems:
            raise ValueError(
                "The ranks disagree about the data: "
                + "; ".join(problems[:6])
                + (" ..." if len(problems) > 6 else "")
                + ". Every rank must load the same views (same data.path, format, split and "
                "options)."
            )


# ---------------------------------------------------------------------------------------------
# Data fingerprints

_CAMERA_FIELDS = ("R", "T", "focal_length", "principal_point", "image_size", "fov", "K")
_EXACT_KEYS = ("views", "image_size", "depths", "cameras_type", "names")


def data_fingerprint(views: Any) -> Optional[dict[str, Any]]:
    """
    A small summary of a view set that differs when the views differ: counts and sizes
    (compared exactly) and float64 checksums of the images, masks, depth maps and camera
    parameters, weighted by position so that reordered views change them too (compared with a
    relative tolerance, so that data rendered on different GPUs, which may differ in the last
    bits, still agrees).

    Args:
        views: a :class:`dvr_plugin.data.MultiViewData` or ``None``.

    Returns:
        ``{"views", "image_size", "depths", "cameras_type", "names", "images", "masks",
        "depth_maps", "cameras"}``, or ``None`` for ``None``.
    """
    if views is None:
        return None
    images = views.images
    depths = getattr(views, "depths", None)
    cameras = views.cameras
    camera_sum = 0.0
    for name in _CAMERA_FIELDS:
        value = getattr(cameras, name, None)
        if isinstance(value, torch.Tensor):
            camera_sum += _checksum(value.expand(len(cameras), *value.shape[1:]))
    names = [str(n) for n in getattr(views, "names", [])]
    return {
        "views": int(images.shape[0]),
        "image_size": [int(images.shape[1]), int(images.shape[2])],
        "depths": depths is not None,
        "cameras_type": type(cameras).__name__,
        "names": names[:3] + ["..."] + names[-3:] if len(names) > 6 else names,
        "images": _checksum(images),
        "masks": _checksum(views.masks),
        "depth_maps": 0.0 if depths is None else _checksum(depths),
        "cameras": camera_sum,
    }


def compare_fingerprints(
    a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]], *, rtol: float = 1e-5
) -> list[tuple[str, Any, Any]]:
    """
    The differences between two :func:`data_fingerprint` results, as ``(what, a, b)``: the
    first differing count, size, type or name list, else every checksum whose relative
    difference exceeds ``rtol``.
    """
    if a is None or b is None:
        if (a is None) != (b is None):
            count_a = "no views" if a is None else a["views"]
            count_b = "no views" if b is None else b["views"]
            return [("views", count_a, count_b)]
        return []
    for key in _EXACT_KEYS:
        if a[key] != b[key]:
            return [(key.replace("_", " "), a[key], b[key])]
    differences = []
    for key in ("images", "masks", "depth_maps", "cameras"):
        x, y = float(a[key]), float(b[key])
        if not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-9):
            differences.append((f"{key.replace('_', ' ')} (checksum)", f"{x:.10g}", f"{y:.10g}"))
    return differences


def _checksum(value: torch.Tensor) -> float:
    """``sum_k x_k (1 + (k mod 997) / 997)`` over the flattened tensor, in float64."""
    flat = value.detach().reshape(-1).double()
    weights = 1.0 + (torch.arange(flat.numel(), device=flat.device) % 997).double() / 997.0
    return float((flat * weights).sum())


def parameters_anchor(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """
    ``0 * sum(p.sum())``: zero, but every parameter takes part in the graph. Added to a rank's
    loss so that DDP receives a gradient (zero where the loss does not reach) for every
    parameter on every rank, even when a rank's rays select no loss term at all.
    """
    return sum(p.sum() for p in parameters) * 0.0
