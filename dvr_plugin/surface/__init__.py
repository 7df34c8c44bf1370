"""
The surface-finding algorithm: where does a ray first enter the surface?

A field is asked through a query (:mod:`.query`: signs of ``inside_values`` along rays), marched
at fixed steps (:mod:`.root_finding`: :func:`find_surface`) and the sign change refined by the
secant method (:mod:`.secant`) in a working precision chosen by :mod:`.precision`. This layer
imports nothing from the accelerators (:mod:`dvr_plugin.accel`) or the renderer: faster marches
and refinements are handed in through the small interfaces ``OccupancyTest``, ``GridMarch`` and
``BracketRefinement``.
"""

from .precision import check_precision, reduced_precision, resolve_precision
from .query import FieldQuery, VolumetricFunctionQuery, inside_sign, inside_values
from .root_finding import (
    BracketRefinement,
    GridMarch,
    OccupancyTest,
    SurfaceSearch,
    find_surface,
)

__all__ = [
    "BracketRefinement",
    "FieldQuery",
    "GridMarch",
    "OccupancyTest",
    "SurfaceSearch",
    "VolumetricFunctionQuery",
    "check_precision",
    "find_surface",
    "inside_sign",
    "inside_values",
    "reduced_precision",
    "resolve_precision",
]
