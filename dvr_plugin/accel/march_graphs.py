"""
The occupancy-grid march in fixed shapes, and its CUDA graphs.

The grid march of :mod:`dvr_plugin.surface.root_finding` compacts the samples it still has to
evaluate after every round (``nonzero``), so each round's shapes depend on the data: it cannot be
recorded, and for a training batch its ~40 small kernels per round cost more launch time than
compute. :class:`FixedShapeGridMarch` does the same march with shapes that depend only on the
number of rays:

- **prepare**: look every sample up in the grid and list, per ray, the steps of its occupied
  samples in order (a `(B, n_steps)` table; the rest is padding);
- **round** (repeated until every ray is done): each ray that is not done offers its next
  occupied samples (at least ``block``, more when few rays are left: ``slots // active``); the
  offers are packed, in ray order, into a fixed number of slots (offers that do not fit wait
  for the next round), the field is evaluated at all slots in one call, and each ray keeps its
  first sample inside. A ray is done once it has found one or has no occupied sample left.
  A round comes in a few sizes (``slot_levels``: the largest, then quarters down to 256
  slots); after each round the host reads how many rays and samples are left and picks the
  smallest size that gives every active ray ``block`` samples (or all it has left, when that
  is little), so the last rounds, which serve a few rays, are cheap.

Every sample the round evaluates is one the compacting march would evaluate too, in the same
order per ray, so both find the same first sample inside (the bracket); the value before it is
known more often here (a round remembers each ray's last evaluated sample). The host reads
four numbers per round (one synchronisation) to know whether to go on and with what size.

:class:`MarchGraphs` records ``prepare`` and every round size as CUDA graphs per ray bucket
(the next power of two, capped at ``max_rays``; larger batches go through in pieces) and
replays them: one launch per round instead of ~40, with the same safety rules as
:mod:`dvr_plugin.accel.refine_graphs` (the cache of :mod:`dvr_plugin.accel.graph_cache`; static
input buffers; keyed by the storage of the field's parameters and of the grid; falls back to eager
on any recording error).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..surface.query import FieldQuery, InsideQuery
from .graph_cache import GraphCache, field_storage_key, fill_padded, side_stream

if TYPE_CHECKING:  # pragma: no cover
    from .occupancy_grid import OccupancyGrid

# The most samples looked up in the grid at once while preparing a march.
PREPARE_SAMPLE_BUDGET = 2**21
# The most points one round evaluates (per piece of at most ``max_rays`` rays).
MAX_POINTS_PER_ROUND = 2**16


# The most offers (rays x samples) a round considers: bounds the packing's memory.
MAX_OFFERS = 2**22
# A round with at most this many samples left takes them all (it is launch-bound anyway).
SMALL_ROUND = 2048


def points_per_round(n_rays: int) -> int:
    """The largest round: four samples per ray, at most :data:`MAX_POINTS_PER_ROUND`."""
    return max(1, min(4 * n_rays, MAX_POINTS_PER_ROUND))


def slot_levels(largest: int, smallest: int = 256) -> list[int]:
    """Round sizes: ``largest``, then quarters of it down to ``smallest`` (descending)."""
    levels = [largest]
    while levels[-1] // 4 >= smallest:
        levels.append(levels[-1] // 4)
    return levels


def choose_slots(levels: list[int], n_active: int, pending: int, block: int) -> int:
    """
    The next round's size: the smallest level that holds ``block`` samples of every active
    ray, or all ``pending`` samples when they are few (:data:`SMALL_ROUND`); the largest level
    when none does.
    """
    need = pending if pending <= SMALL_ROUND else min(pending, n_active * block)
    for level in reversed(levels):
        if level >= need:
            return level
    return levels[0]


class FixedShapeGridMarch:
    """
    The grid march for ``n_rays`` rays in fixed shapes (see the module docstring). The input
    buffers are filled by the caller; :meth:`prepare` then :meth:`advance` (until it returns
    False) leave the result in ``index``, ``value`` and ``previous``.

    Args (keyword-only):
        n_rays: ``B``, rays per march (padding rays have ``valid`` False).
        n_steps: samples per ray.
        block: the occupied samples a ray offers per round (more when few rays are left).
        slots: the points evaluated by the largest round (:func:`slot_levels` gives the
            others).
        device, dtype: of the rays.
        latent_size: width of per-ray latent codes, or ``None``.

    Input buffers:
        origins, directions: `(B, 3)`; near, spacing: `(B,)` (sample ``i`` at
        ``near + i * spacing``); valid: `(B,)` bool; ray_ids: `(B,)` long, the ids the query
        knows the rays by; latent: `(B, C)` or ``None``.

    Result buffers (as in :class:`dvr_plugin.surface.root_finding._FirstInside`):
        index: `(B,)` long, the first sample inside (``n_steps`` where there is none);
        value: `(B,)` its inside value; previous: `(B,)` the value at ``index - 1`` where it
        was evaluated, else NaN.
    """

    def __init__(
        self,
        *,
        n_rays: int,
        n_steps: int,
        block: int,
        slots: int,
        device: torch.device,
        dtype: torch.dtype,
        latent_size: int | None = None,
    ) -> None:
        if min(n_rays, n_steps, block, slots) < 1:
            raise ValueError(
                f"n_rays, n_steps, block and slots must be positive, got "
                f"{(n_rays, n_steps, block, slots)}."
            )
        self.n_rays, self.n_steps, self.block, self.slots = n_rays, n_steps, block, slots
        real = dict(device=device, dtype=dtype)
        whole = dict(device=device, dtype=torch.long)
        self.origins = torch.zeros(n_rays, 3, **real)
        self.directions = torch.zeros(n_rays, 3, **real)
        self.near = torch.zeros(n_rays, **real)
        self.spacing = torch.zeros(n_rays, **real)
        self.valid = torch.zeros(n_rays, dtype=torch.bool, device=device)
        self.ray_ids = torch.zeros(n_rays, **whole)
        self.latent = None if latent_size is None else torch.zeros(n_rays, latent_size, **real)
        # march state
        table_dtype = torch.int16 if 2 * n_steps < 2**15 else torch.int32
        self.table = torch.zeros(n_rays, n_steps, dtype=table_dtype, device=device)
        self.counts = torch.zeros(n_rays, **whole)
        self.progress = torch.zeros(n_rays, **whole)
        self.done = torch.ones(n_rays, dtype=torch.bool, device=device)
        self.last_step = torch.zeros(n_rays, **whole)
        self.last_value = torch.zeros(n_rays, **real)
        # result
        self.index = torch.zeros(n_rays, **whole)
        self.value = torch.zeros(n_rays, **real)
        self.previous = torch.zeros(n_rays, **real)
        # any ray not done (0/1), any non-finite value so far (0/1), active rays, samples left
        self.status = torch.zeros(4, **whole)
        self.levels = slot_levels(slots)
        # the most samples one ray offers in a round
        self.max_offer = min(n_steps, max(block, MAX_OFFERS // n_rays))
        self._columns = torch.arange(self.max_offer, **whole)
        self._slot_positions = torch.arange(slots, **whole)

    def fill(
        self,
        *,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        spacing: torch.Tensor,
        ray_ids: torch.Tensor | None,
        latent: torch.Tensor | None = None,
    ) -> None:
        """
        Copy ``m <= B`` rays into the input buffers; the rest become padding. ``ray_ids=None``
        keeps the ids buffer as it is.
        """
        m = origins.shape[0]
        if m > self.n_rays:
            raise ValueError(f"{m} rays do not fit a march for {self.n_rays}.")
        if self.latent is not None and latent is None:
            raise ValueError("This march was built for latent codes; none were given.")
        arrays = dict(origins=origins, directions=directions, near=near, spacing=spacing)
        if ray_ids is not None:
            arrays["ray_ids"] = ray_ids
        if self.latent is not None:
            arrays["latent"] = latent
        # padding: copies of the first ray, never marched
        fill_padded({name: getattr(self, name) for name in arrays}, arrays, m)
        self.valid[:m] = True
        self.valid[m:] = False

    def prepare(self, grid: OccupancyGrid) -> None:
        """List each ray's occupied samples in order and reset the march state."""
        n_steps = self.n_steps
        per_block = max(1, PREPARE_SAMPLE_BUDGET // self.n_rays)
        key_dtype = self.table.dtype
        for start in range(0, n_steps, per_block):
            stop = min(start + per_block, n_steps)
            steps = torch.arange(start, stop, device=self.near.device, dtype=self.near.dtype)
            depths = self.near[:, None] + self.spacing[:, None] * steps
            points = self.origins[:, None, :] + depths[..., None] * self.directions[:, None, :]
            occupied = grid.occupied_at(points)
            # occupied samples first, each group in step order (keys < 2 n_steps)
            whole = torch.arange(start, stop, device=self.near.device, dtype=key_dtype)
            self.table[:, start:stop] = torch.where(occupied, whole, whole + n_steps)
        keys = torch.sort(self.table, dim=1).values
        self.counts.copy_((keys < n_steps).sum(dim=1))
        self.table.copy_(keys)
        self.counts.masked_fill_(~self.valid, 0)
        self.progress.zero_()
        self.done.copy_(self.counts == 0)
        self.last_step.fill_(-2)
        self.last_value.fill_(math.nan)
        self.index.fill_(n_steps)
        self.value.zero_()
        self.previous.fill_(math.nan)
        self.status.zero_()
        self._update_status(torch.zeros((), dtype=torch.bool, device=self.near.device))

    def _update_status(self, nonfinite: torch.Tensor) -> None:
        active = ~self.done
        n_active = active.sum()
        self.status[0] = (n_active > 0).long()
        self.status[1] = torch.maximum(self.status[1], nonfinite.long())
        self.status[2] = n_active
        self.status[3] = torch.where(active, self.counts - self.progress, 0).sum()

    def choose_slots(self, n_active: int, pending: int) -> int:
        """The next round's size from the last status (see :func:`choose_slots`)."""
        return choose_slots(self.levels, n_active, pending, self.block)

    def advance(self, query: InsideQuery, slots: int | None = None) -> None:
        """One round of ``slots`` points (one of ``levels``; default the largest)."""
        n_rays = self.n_rays
        slots = self.slots if slots is None else slots
        width = self.max_offer
        pending = torch.where(self.done, 0, self.counts - self.progress)
        n_active = (~self.done).sum().clamp(min=1)
        offer = (slots // n_active).clamp(min=self.block, max=width)
        offered = self._columns[None, :] < torch.minimum(pending, offer)[:, None]  # (B, width)
        columns = (self.progress[:, None] + self._columns[None, :]).clamp(max=self.n_steps - 1)
        offered_steps = self.table.gather(1, columns).long()
        # pack the offers, in ray order, into the slots; those past the last slot wait
        flat = offered.reshape(-1)
        position = torch.cumsum(flat, dim=0) - 1
        taken = flat & (position < slots)
        target = torch.where(taken, position, slots)  # slot `slots` collects what is dropped
        owner = torch.arange(flat.shape[0], device=flat.device) // width
        rays = torch.zeros(slots + 1, dtype=torch.long, device=flat.device)
        rays.scatter_(0, target, owner)
        steps = torch.zeros_like(rays).scatter_(0, target, offered_steps.reshape(-1))
        used = torch.zeros_like(flat[: slots + 1]).scatter_(0, target, taken)
        rays, steps, used = rays[:slots], steps[:slots], used[:slots]

        depths = self.near[rays] + self.spacing[rays] * steps.to(self.near.dtype)
        values = query(
            self.ray_ids[rays], self.origins[rays], self.directions[rays], depths[:, None]
        )[:, 0].to(self.near.dtype)
        nonfinite = (~torch.isfinite(values) & used).any()

        # each ray's first slot inside
        inside = (values > 0) & used
        first = torch.full((n_rays,), slots, dtype=torch.long, device=flat.device)
        positions = self._slot_positions[:slots]
        first.scatter_reduce_(0, rays, torch.where(inside, positions, slots), reduce="amin")
        found = first < slots
        at = first.clamp(max=slots - 1)
        step_at = steps[at]
        before = (at - 1).clamp(min=0)
        same_round = (at > 0) & used[before] & (rays[before] == rays[at])
        same_round &= steps[before] == step_at - 1
        earlier = torch.where(self.last_step == step_at - 1, self.last_value, math.nan)
        previous = torch.where(same_round, values[before], earlier)
        self.index.copy_(torch.where(found, step_at, self.index))
        self.value.copy_(torch.where(found, values[at], self.value))
        self.previous.copy_(torch.where(found, previous, self.previous))

        # bookkeeping: samples consumed, the last one evaluated
        consumed = torch.zeros_like(self.progress).scatter_add_(0, rays, used.long())
        last = torch.full_like(self.progress, -1)
        last.scatter_reduce_(0, rays, torch.where(used, positions, -1), reduce="amax")
        seen = last >= 0
        last = last.clamp(min=0)
        self.last_step.copy_(torch.where(seen, steps[last], self.last_step))
        self.last_value.copy_(torch.where(seen, values[last], self.last_value))
        self.progress.add_(consumed)
        self.done.logical_or_(found | (self.progress >= self.counts))
        self._update_status(nonfinite)

    def run(self, query: InsideQuery, grid: OccupancyGrid, *, check_finite: bool) -> int:
        """Eagerly: prepare and advance until every ray is done; returns the rounds."""
        self.prepare(grid)
        rounds = 0
        going_on, _, n_active, pending = self.status.tolist()
        while going_on:
            self.advance(query, self.choose_slots(n_active, pending))
            rounds += 1
            going_on, nonfinite, n_active, pending = self.status.tolist()
            if nonfinite and check_finite:
                _raise_if_nonfinite(self.status, True)
        return rounds


def _raise_if_nonfinite(status: torch.Tensor, check_finite: bool) -> None:
    if check_finite and bool(status[1]):
        raise ValueError("The field returned non-finite values (NaN or inf) at marching points.")


class _RecordedMarch:
    """A march's buffers, its recorded ``prepare`` and one recorded round per size."""

    def __init__(self, *, march: FixedShapeGridMarch, prepare, rounds: dict) -> None:
        self.march = march
        self.prepare = prepare
        self.rounds = rounds


class MarchGraphs:
    """
    A cache of recorded grid marches, one per (field, grid, bucket, settings).

    Args (keyword-only):
        min_bucket: the fewest rays a march is recorded for.
        max_rays: the most rays one recorded march holds (larger batches go in pieces).
        max_graphs: the most recorded marches kept (least recently used dropped first).
    """

    def __init__(
        self, *, min_bucket: int = 256, max_rays: int = 2**14, max_graphs: int = 8
    ) -> None:
        if min(min_bucket, max_rays, max_graphs) < 1 or min_bucket > max_rays:
            raise ValueError(
                "min_bucket, max_rays and max_graphs must be positive with "
                f"min_bucket <= max_rays, got {min_bucket}, {max_rays}, {max_graphs}."
            )
        self.min_bucket = min_bucket
        self.max_rays = max_rays
        self.max_graphs = max_graphs
        self._cache = GraphCache(max_entries=max_graphs, what="the grid march")
        self.recordings = 0
        self.rounds = 0

    def supports(self, query: Any, device: torch.device) -> bool:
        """Whether :meth:`march` replays graphs for this query (else the caller marches)."""
        return (
            device.type == "cuda"
            and type(query) is FieldQuery
            and isinstance(query.field, torch.nn.Module)
        )

    def bucket(self, n_rays: int) -> int:
        size = self.min_bucket
        while size < min(n_rays, self.max_rays):
            size *= 2
        return size

    def march(
        self,
        query: FieldQuery,
        grid: OccupancyGrid,
        *,
        ray_ids: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        spacing: torch.Tensor,
        n_steps: int,
        block: int,
        precision: str,
        check_finite: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """
        March ``M`` rays through recorded graphs.

        Returns:
            `(M,)` index, value, previous (see :class:`FixedShapeGridMarch`), or ``None`` when
            recording failed (the caller then marches eagerly).
        """
        n_rays = origins.shape[0]
        parts = []
        for start in range(0, n_rays, self.max_rays):
            part = slice(start, start + self.max_rays)
            latent = query.ray_latent(ray_ids[part])
            recorded = self._recorded(
                query, grid, self.bucket(origins[part].shape[0]), n_steps, block, precision,
                origins.dtype, latent,
            )
            if recorded is None:
                return None
            march = recorded.march
            march.fill(
                origins=origins[part], directions=directions[part], near=near[part],
                spacing=spacing[part], ray_ids=None, latent=latent,
            )
            recorded.prepare.replay()
            going_on, _, n_active, pending = march.status.tolist()
            while going_on:
                recorded.rounds[march.choose_slots(n_active, pending)].replay()
                self.rounds += 1
                # the one host synchronisation per round
                going_on, nonfinite, n_active, pending = march.status.tolist()
                if nonfinite and check_finite:
                    _raise_if_nonfinite(march.status, True)
            m = origins[part].shape[0]
            parts.append(
                (march.index[:m].clone(), march.value[:m].clone(), march.previous[:m].clone())
            )
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(items) for items in zip(*parts, strict=True))  # type: ignore

    def _recorded(
        self, query, grid, bucket, n_steps, block, precision, dtype, latent
    ) -> _RecordedMarch | None:
        latent_size = None if latent is None else latent.shape[1]
        key = (
            field_storage_key(query.field), grid.occupied.data_ptr(), tuple(grid.resolution),
            bucket, n_steps, block, precision, dtype, latent_size, float(query.level),
            query.field_type,
        )
        return self._cache.get(
            key, lambda: self._record(query, grid, bucket, n_steps, block, dtype, latent_size)
        )

    def _record(self, query, grid, bucket, n_steps, block, dtype, latent_size) -> _RecordedMarch:
        device = grid.occupied.device
        march = FixedShapeGridMarch(
            n_rays=bucket, n_steps=n_steps, block=block, slots=points_per_round(bucket),
            device=device, dtype=dtype, latent_size=latent_size,
        )
        # a harmless batch for warm-up: rays along +z through the box's centre
        march.origins[:, 2] = -2.0
        march.directions[:, 2] = 1.0
        march.near.fill_(1.0)
        march.spacing.fill_(2.0 / n_steps)
        march.valid.fill_(True)
        march.ray_ids.copy_(torch.arange(bucket, device=device))
        # under a bfloat16 march, autocast must not cache cast weights across the recording:
        # a replay would read the cast of the parameters as they were then
        with torch.autocast(
            "cuda", enabled=torch.is_autocast_enabled("cuda"),
            dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False,
        ):
            return self._record_uncached(query, grid, march, device)

    def _record_uncached(self, query, grid, march, device) -> _RecordedMarch:
        inner = FieldQuery(
            field=query.field, level=query.level, field_type=query.field_type,
            latent=march.latent,
        )
        side = side_stream(device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                march.prepare(grid)
                for slots in march.levels:
                    march.advance(inner, slots)
        torch.cuda.current_stream().wait_stream(side)

        def record(fn) -> torch.cuda.CUDAGraph:
            # one pool for all: the graphs run one after another on one stream, and each
            # keeps only temporaries there (the state lives in the march's own buffers)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(
                graph, pool=self._cache.pool, stream=side, capture_error_mode="thread_local"
            ):
                fn()
            return graph

        prepare = record(lambda: march.prepare(grid))
        rounds = {
            slots: record(lambda slots=slots: march.advance(inner, slots))
            for slots in march.levels
        }
        self.recordings += 1
        return _RecordedMarch(march=march, prepare=prepare, rounds=rounds)
