"""
Accelerators of the surface search, handed in from above (the raysampler builds them):

- :class:`OccupancyGrid`: a coarse grid of cells that may hold surface, refreshed from the
  field; the march skips the others (an ``OccupancyTest`` and a ``GridMarch``).
- :class:`MarchGraphs` / :class:`RefinementGraphs`: the march rounds and the secant steps
  recorded once as CUDA graphs and replayed (a ``GridMarch`` and a ``BracketRefinement``).

They use the surface layer's query, precision and secant helpers (:mod:`dvr_plugin.surface`)
and nothing above it.
"""

from .march_graphs import MarchGraphs
from .occupancy_grid import OccupancyGrid
from .refine_graphs import RefinementGraphs

__all__ = ["MarchGraphs", "OccupancyGrid", "RefinementGraphs"]
