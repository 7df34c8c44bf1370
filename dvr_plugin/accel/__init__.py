"""
Accelerators of the surface search, handed in from above (the raysampler builds them):

- :class:`OccupancyGrid`: a coarse grid of cells that may hold surface, refreshed from the
  field; the march skips the others (an ``OccupancyTest`` and a ``GridMarch``).
- :class:`MarchGraphs` / :class:`RefinementGraphs`: the march rounds and the secant steps
  recorded once as CUDA graphs and replayed (a ``GridMarch`` and a ``BracketRefinement``).
- :func:`fused_decoder_values`: an ``OccupancyTextureField``'s values in one Triton kernel,
  the query's ``values_fn`` for the march and the secant steps
  (``SecantRaysampler(fused_decoder=True)``; Triton is imported on the first call).

They use the surface layer's query, precision and secant helpers (:mod:`dvr_plugin.surface`)
and nothing above it.
"""

from .fused_decoder import fused_decoder_values, supports_fused_decoder
from .march_graphs import MarchGraphs
from .occupancy_grid import OccupancyGrid
from .refine_graphs import RefinementGraphs

__all__ = [
    "MarchGraphs",
    "OccupancyGrid",
    "RefinementGraphs",
    "fused_decoder_values",
    "supports_fused_decoder",
]
