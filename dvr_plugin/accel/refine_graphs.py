"""
CUDA graphs for the secant refinement of the root finder.

The refinement (:func:`dvr_plugin.surface.secant.refine_brackets`) is a short sequential loop: per
step one field evaluation on one point per ray and a dozen element-wise kernels. On a GPU a training
step spends most of that time launching kernels, not computing (docs/performance.md). A CUDA graph
records the whole loop once for a fixed number of rays and replays it with a single launch.

How it stays correct (the same computation up to floating-point rounding: the padded batch
may select another matmul kernel) and safe:

- Shapes are static in a graph, so the rays are padded to a *bucket* (the next power of two, at
  least ``min_bucket``); the padding repeats the first ray and its result is dropped.
- A graph reads its inputs from fixed buffers: the rays, brackets and (for a conditioned field)
  the rays' latent codes are copied in before each replay. The field's parameters and buffers
  are read in place, which is what ``optimizer.step()`` and ``load_state_dict`` keep; a graph is
  keyed by their storage addresses, so replacing a parameter tensor (``.to()``, re-assignment)
  records a new graph instead of reading stale memory.
- Only :class:`dvr_plugin.surface.query.FieldQuery` on an ``nn.Module`` field, on CUDA, in
  float32 or TF32, is graphed: everything else runs eagerly. The field must be a pure function
  of its inputs, parameters and buffers (no random numbers, no host synchronisation, no Python
  side effects). Any error while recording turns graphs off for that configuration and falls
  back to the eager loop.
"""

from __future__ import annotations

from typing import Any

import torch

from ..surface.precision import reduced_precision
from ..surface.query import FieldQuery
from ..surface.secant import refine_brackets
from .graph_cache import GraphCache, RecordedGraph, field_storage_key, fill_padded, side_stream


class RefinementGraphs:
    """
    A cache of CUDA graphs of the secant refinement, one per (field, bucket, settings).

    Args (keyword-only):
        min_bucket: the smallest number of rays a graph is recorded for.
        max_graphs: the most graphs kept (least recently used dropped first).
    """

    def __init__(self, *, min_bucket: int = 256, max_graphs: int = 16) -> None:
        if min_bucket < 1 or max_graphs < 1:
            raise ValueError(
                f"min_bucket and max_graphs must be positive, got {min_bucket}, {max_graphs}."
            )
        self.min_bucket = min_bucket
        self.max_graphs = max_graphs
        self._cache = GraphCache(max_entries=max_graphs, what="the secant refinement")
        self.replays = 0
        self.recordings = 0

    def supports(self, query: Any, device: torch.device, precision: str) -> bool:
        """Whether :meth:`refine` would replay a graph for this query (else: run eagerly)."""
        return (
            device.type == "cuda"
            and precision in ("float32", "tf32")
            and type(query) is FieldQuery
            and isinstance(query.field, torch.nn.Module)
        )

    def bucket(self, n_rays: int) -> int:
        """
        The padded ray count a graph is recorded for: the next power of two (at least
        ``min_bucket``), except between 1024 and 8192 rays, where it is the next multiple of
        1024 (less padding where a training batch's hit count lies).
        """
        size = self.min_bucket
        while size < n_rays:
            size *= 2
        if 1024 < n_rays < 8192 and size > 1024:
            size = min(size, -(-n_rays // 1024) * 1024)
        return size

    def refine(
        self,
        query: FieldQuery,
        *,
        ray_ids: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        ends_d: torch.Tensor,
        ends_s: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        n_secant_steps: int,
        precision: str,
    ) -> torch.Tensor:
        """
        :func:`dvr_plugin.surface.secant.refine_brackets` (the eager refinement) through a graph.

        Args:
            query: the field query (its ``latent`` rows are looked up by ``ray_ids``).
            ray_ids: `(h,)` ids of the rays in ``query``.
            origins, directions: `(h, 3)`.
            ends_d, ends_s: `(h, 2)` bracket depths and inside values (outside end first); an
                outside value may be NaN (not evaluated by the march): it is evaluated here.
            low, high: `(h,)` the interval the result is kept in.

        Returns:
            `(h,)` refined depths.
        """
        n_rays = origins.shape[0]
        latent = query.ray_latent(ray_ids)
        bucket = self.bucket(n_rays)
        key = self._key(query, bucket, origins.dtype, latent, n_secant_steps, precision)
        arrays = dict(
            origins=origins, directions=directions, ends_d=ends_d, ends_s=ends_s.to(ends_d.dtype),
            low=low, high=high,
        )
        if latent is not None:
            arrays["latent"] = latent
        recorded = self._cache.get(
            key, lambda: self._record(query, arrays, bucket, n_secant_steps, precision)
        )
        if recorded is None:
            return self._run(query, arrays, n_secant_steps, precision)
        fill_padded(recorded.inputs, arrays, n_rays)
        recorded.graph.replay()
        self.replays += 1
        return recorded.output[:n_rays].clone()

    # -----------------------------------------------------------------------------------------

    def _key(self, query, bucket, dtype, latent, n_secant_steps, precision) -> tuple:
        latent_key = None if latent is None else (latent.shape[1], latent.dtype)
        return (
            field_storage_key(query.field), bucket, dtype, latent_key, n_secant_steps, precision,
            float(query.level), query.field_type,
        )

    @staticmethod
    def _run(query, buffers, n_secant_steps, precision) -> torch.Tensor:
        n_rays = buffers["origins"].shape[0]
        inner = FieldQuery(
            field=query.field, level=query.level, field_type=query.field_type,
            latent=buffers.get("latent"),
        )
        ids = torch.arange(n_rays, device=buffers["origins"].device)
        ends_d, ends_s = buffers["ends_d"], buffers["ends_s"]
        origins, directions = buffers["origins"], buffers["directions"]
        # an outside end the march skipped (an empty grid cell) is NaN: evaluate it here
        with reduced_precision(precision, origins.device):
            at_out = inner(ids, origins, directions, ends_d[:, :1])[:, 0].to(ends_s.dtype)
        s_out = torch.where(torch.isnan(ends_s[:, 0]), at_out, ends_s[:, 0])
        return refine_brackets(
            inner, ids, origins, directions, ends_d[:, 0], s_out,
            ends_d[:, 1], ends_s[:, 1], n_secant_steps, False, precision,
            low=buffers["low"], high=buffers["high"],
        )

    def _record(self, query, arrays, bucket, n_secant_steps, precision) -> RecordedGraph:
        n_rays = arrays["origins"].shape[0]
        inputs = {
            name: value.new_empty((bucket, *value.shape[1:])) for name, value in arrays.items()
        }
        fill_padded(inputs, arrays, n_rays)
        # warm up on a side stream (allocator and library handles), as CUDA graphs require
        side = side_stream(arrays["origins"].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(query, inputs, n_secant_steps, precision)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # record on the warm-up stream too: each stream holds its own cuBLAS workspace
        # thread_local: other threads (data loading, a process group's watchdog) may keep
        # using CUDA while this one records
        with torch.cuda.graph(
            graph, pool=self._cache.pool, stream=side, capture_error_mode="thread_local"
        ):
            output = self._run(query, inputs, n_secant_steps, precision)
        self.recordings += 1
        return RecordedGraph(graph=graph, inputs=inputs, output=output)
