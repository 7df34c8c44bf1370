"""
A cache of recorded CUDA graphs, and the helpers every graphed part of the root finder shares.

The secant refinement (:mod:`dvr_plugin.accel.refine_graphs`) and the grid march
(:mod:`dvr_plugin.accel.march_graphs`) record their work as CUDA graphs for fixed ray counts
(buckets) and replay them. They share the cache (least recently used entries dropped, failed
recordings remembered so that the work runs eagerly), the key of a field's storage, the warm-up
stream and the copy of a batch into padded input buffers. Nothing here has a frame or units: the
buffers hold whatever the caller records (rays in world units, depths along the rays).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch


class RecordedGraph:
    """One recorded graph: its input buffers (`(bucket, ...)` each), its output and the graph."""

    def __init__(self, *, graph: torch.cuda.CUDAGraph, inputs: dict, output: torch.Tensor):
        self.graph = graph
        self.inputs = inputs
        self.output = output


class GraphCache:
    """
    Recorded CUDA graphs by key, shared by :class:`dvr_plugin.accel.refine_graphs.RefinementGraphs`,
    :class:`dvr_plugin.accel.march_graphs.MarchGraphs` and
    :class:`dvr_plugin.renderer.step_graph.GraphedTrainStep`: the least recently used entry is
    dropped past ``max_entries``, and a key whose recording failed is remembered (with one
    warning) so that its work runs eagerly from then on. Entries that record into :attr:`pool`
    share that one memory pool.
    """

    def __init__(self, *, max_entries: int, what: str) -> None:
        self.max_entries = max_entries
        self.what = what
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._failed: set[tuple] = set()
        self._pool: Any = None

    def __len__(self) -> int:
        """How many entries are recorded now."""
        return len(self._entries)

    @property
    def pool(self) -> Any:
        """The graphs' memory pool (created on first use)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def get(self, key: tuple, record: Callable[[], Any]) -> Any | None:
        """The entry of ``key``, recorded by ``record()`` if new; ``None``: run eagerly."""
        if key in self._failed:
            return None
        entry = self._entries.get(key)
        if entry is None:
            try:
                entry = record()
            except Exception as error:  # any failure: fall back, say why once
                self._failed.add(key)
                warnings.warn(
                    f"Recording a CUDA graph of {self.what} failed ({error}); running it "
                    "eagerly for this field and batch size.",
                    stacklevel=4,
                )
                return None
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry


def field_storage_key(field: torch.nn.Module) -> tuple:
    """
    What a recorded graph of ``field`` depends on: the module and the storage (address, shape,
    dtype) of its parameters and buffers, which in-place updates keep and replacements change.
    """
    tensors = list(field.parameters()) + list(field.buffers())
    return (id(field), tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors))


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per device (each new stream would hold its own cuBLAS workspace)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def fill_padded(buffers: dict, arrays: dict, n_rays: int) -> None:
    """Copy ``arrays`` into the first rows of ``buffers``; repeat the first row after them."""
    for name, value in arrays.items():
        buffer = buffers[name]
        buffer[:n_rays].copy_(value)
        if buffer.shape[0] > n_rays:
            buffer[n_rays:].copy_(value[:1].expand(buffer.shape[0] - n_rays, *value.shape[1:]))
