"""
The PyTorch3D-facing renderer: cameras in, images out, with exact gradients.

Data flow of a render::

    cameras -> rays (rays.py) -> SecantRaysampler (finds the surface; builds and hands in the
    accelerators) -> attach_implicit_gradient (implicit_gradient.py) -> SurfaceRaymarcher
    (raymarcher.py) -> DVRRenderer (renderer.py, an ImplicitRenderer-style module)
"""

from .implicit_gradient import SurfaceGeometry, attach_implicit_gradient
from .raymarcher import SurfaceRaymarcher
from .rays import intersect_box, ndc_grid, rays_from_cameras
from .raysampler import SecantRaysampler, SurfaceRayBundle
from .renderer import DVRRenderer, DVRRenderOutput, FieldVolumetricFunction

__all__ = [
    "DVRRenderOutput",
    "DVRRenderer",
    "FieldVolumetricFunction",
    "SecantRaysampler",
    "SurfaceGeometry",
    "SurfaceRayBundle",
    "SurfaceRaymarcher",
    "attach_implicit_gradient",
    "intersect_box",
    "ndc_grid",
    "rays_from_cameras",
]
