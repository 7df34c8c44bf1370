"""
Differentiable Volumetric Rendering (DVR) as a PyTorch3D renderer.

The core, in the order data flows through it::

    cameras -> rays -> root finding -> implicit gradient -> field -> raymarcher -> image

Main entry points: :class:`DVRRenderer`, :class:`SecantRaysampler`, :class:`SurfaceRaymarcher`,
:class:`OccupancyTextureField` and the field protocol of :mod:`dvr_plugin.fields.field`.
"""

from ._pytorch3d import require_pytorch3d

require_pytorch3d()  # before any submodule: a clear install hint when PyTorch3D is missing

from .accel import OccupancyGrid  # noqa: E402
from .fields import FieldOutput, OccupancyTextureField, evaluate_field  # noqa: E402
from .renderer import (  # noqa: E402
    DVRRenderer,
    DVRRenderOutput,
    FieldVolumetricFunction,
    GraphedTrainStep,
    SecantRaysampler,
    SurfaceRayBundle,
    SurfaceRaymarcher,
    attach_implicit_gradient,
)
from .surface import find_surface  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DVRRenderOutput",
    "DVRRenderer",
    "FieldOutput",
    "FieldVolumetricFunction",
    "GraphedTrainStep",
    "OccupancyGrid",
    "OccupancyTextureField",
    "SecantRaysampler",
    "SurfaceRayBundle",
    "SurfaceRaymarcher",
    "attach_implicit_gradient",
    "evaluate_field",
    "find_surface",
]
