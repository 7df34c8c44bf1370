"""
Fields: what the renderer asks for a point's occupancy (or signed distance) and colour.

- :mod:`.field`: the field protocol (:class:`FieldOutput`, :func:`evaluate_field`) and DVR's
  :class:`OccupancyTextureField` with Fourier features;
- :mod:`.appearance`: the optional view-dependent colour head (:class:`ViewDependentField`);
- :mod:`.hash_grid`: the multi-resolution hash-grid encoding (:class:`HashGridEncoding`) and a
  field on it with DVR's occupancy and texture heads (:class:`HashGridField`);
- :mod:`.shapes`: analytic fields (sphere, box, union) for tests and demos.

Coordinates are the renderer's normalised object frame (the unit cube ``[-0.5, 0.5]^3``).
"""

from .appearance import RenderingNetwork, ViewDependentField, geometry_of
from .field import (
    UNIT_CUBE_BOUNDS,
    FieldOutput,
    FourierFeatures,
    OccupancyTextureField,
    evaluate_field,
)
from .hash_grid import HashGridEncoding, HashGridField
from .shapes import BoxField, SphereField, UnionField, demo_scene

__all__ = [
    "UNIT_CUBE_BOUNDS",
    "BoxField",
    "FieldOutput",
    "FourierFeatures",
    "HashGridEncoding",
    "HashGridField",
    "OccupancyTextureField",
    "RenderingNetwork",
    "SphereField",
    "UnionField",
    "ViewDependentField",
    "demo_scene",
    "evaluate_field",
    "geometry_of",
]
