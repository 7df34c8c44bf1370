"""
Differentiable Volumetric Rendering (DVR) as a PyTorch3D renderer.

The core, in the order data flows through it::

    cameras -> rays -> root finding -> implicit gradient -> field -> raymarcher -> image

Main entry points: :class:`DVRRenderer`, :class:`SecantRaysampler`, :class:`SurfaceRaymarcher`,
:class:`OccupancyTextureField` and the field protocol of :mod:`dvr_plugin.field`.
"""

from .field import FieldOutput, OccupancyTextureField, evaluate_field
from .raymarcher import SurfaceRaymarcher
from .raysampler import SecantRaysampler, SurfaceRayBundle
from .renderer import DVRRenderer, DVRRenderOutput, FieldVolumetricFunction

__version__ = "0.1.0"

__all__ = [
    "DVRRenderOutput",
    "DVRRenderer",
    "FieldOutput",
    "FieldVolumetricFunction",
    "OccupancyTextureField",
    "SecantRaysampler",
    "SurfaceRayBundle",
    "SurfaceRaymarcher",
    "evaluate_field",
]
