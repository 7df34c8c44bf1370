"""
The PyTorch3D-facing renderer: cameras in, images out, with exact gradients.

Data flow of a render::

    cameras -> rays (rays.py) -> SecantRaysampler (finds the surface; builds and hands in the
    accelerators) -> attach_implicit_gradient (implicit_gradient.py) -> SurfaceRaymarcher
    (raymarcher.py) -> DVRRenderer (renderer.py, an ImplicitRenderer-style module)

A training step with the differentiable half replayed as one CUDA graph: GraphedTrainStep
(step_graph.py).
"""

from .implicit_gradient import SurfaceGeometry, attach_implicit_gradient
from .raymarcher import SurfaceRaymarcher
from .rays import intersect_box, ndc_grid, rays_from_cameras
from .raysampler import FoundSurfaces, SecantRaysampler, SurfaceRayBundle
from .renderer import DVRRenderer, DVRRenderOutput, FieldVolumetricFunction
from .step_graph import GraphedTrainStep

__all__ = [
    "DVRRenderOutput",
    "DVRRenderer",
    "FieldVolumetricFunction",
    "FoundSurfaces",
    "GraphedTrainStep",
    "SecantRaysampler",
    "SurfaceGeometry",
    "SurfaceRayBundle",
    "SurfaceRaymarcher",
    "attach_implicit_gradient",
    "intersect_box",
    "ndc_grid",
    "rays_from_cameras",
]
