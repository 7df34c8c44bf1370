"""
Differentiable Volumetric Rendering (DVR) as a PyTorch3D renderer.

The core, in the order data flows through it::

    cameras -> rays -> root finding -> implicit gradient -> field -> raymarcher -> image

Main entry points: :class:`DVRRenderer`, :class:`SecantRaysampler`, :class:`SurfaceRaymarcher`,
:class:`OccupancyTextureField` and the field protocol of :mod:`dvr_plugin.field`.
"""

from ._pytorch3d import require_pytorch3d

require_pytorch3d()  # before any submodule: a clear install hint when PyTorch3D is missing

from .field import FieldOutput, OccupancyTextureField, evaluate_field  # noqa: E402
from .raymarcher import SurfaceRaymarcher  # noqa: E402
from .raysampler import SecantRaysampler, SurfaceRayBundle  # noqa: E402
from .renderer import DVRRenderer, DVRRenderOutput, FieldVolumetricFunction  # noqa: E402

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
