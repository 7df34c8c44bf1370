"""
DVR surface rendering inside PyTorch3D's Implicitron (``pytorch3d.implicitron``).

Importing this module registers :class:`DVRSurfaceRenderer` in Implicitron's registry, so a
``GenericModel`` selects it by name::

    import dvr_plugin.implicitron  # registers DVRSurfaceRenderer
    from pytorch3d.implicitron.models.generic_model import GenericModel

    cfg = dvr_plugin.implicitron.generic_model_args()  # the example config, see below
    model = GenericModel(**cfg)

The renderer must be registered *before* Implicitron first expands ``GenericModel``'s config
(the first ``get_default_args(GenericModel)`` or ``GenericModel(...)``): that is when the
``renderer_<name>_args`` members are created for every registered renderer.

How a ray is rendered: the ray bundle from Implicitron's raysampler gives the origins, the
directions and, through its ``lengths`` (or ``bins``), the part of each ray to search
``[min(lengths), max(lengths)]``, optionally clipped to a box. The implicit function is sampled
there at ``n_steps`` equally spaced lengths without gradients, the first free -> occupied
crossing is refined by bracketing secant steps
(:func:`dvr_plugin.surface.root_finding.find_surface`), and one more evaluation at the surface
attaches DVR's implicit gradient of the length
(:func:`dvr_plugin.renderer.implicit_gradient.attach_implicit_gradient`). The features (colours) are
then evaluated at ``origin + length * direction``, so colour losses reach the geometry.

Which value of the implicit function is the surface (``field_type``; ``"auto"`` decides from
what the function returns):

- ``"sdf"``: the first output channel is a signed distance, inside below ``level``. The default
  for functions that return one tensor ``[sdf, features...]``, like ``IdrFeatureField`` (which
  is called with flat ``rays_points_world``, exactly as ``SignedDistanceFunctionRenderer`` calls
  it; every other function is called with ``ray_bundle=``). Their features are raw network
  outputs, so ``feature_activation="auto"`` applies a sigmoid to them.
- ``"occupancy"``: the density channel is an occupancy *logit*, inside above ``level`` (DVR's
  convention, tau = 0.5 at logit 0). The default for every function that returns
  ``(rays_densities, rays_features, aux)`` (e.g. ``NeuralRadianceFieldImplicitFunction``,
  whose ``rays_densities`` are the raw, unbounded output of its density layer: they are read
  as occupancy logits, as UNISURF does; its colours are used as they are).

Lengths are in the units of the bundle's directions: Implicitron's raysamplers emit unit
directions, so depths are Euclidean distances from the camera centre, as for Implicitron's
other renderers (unnormalised, z-stepping directions give z-depth, as in the rest of
``dvr_plugin``). The implicit gradient is correct for either.
"""

from .surface_renderer import (
    DEFAULT_CONFIG_PATH,
    DVRSurfaceRenderer,
    ImplicitronFunctionQuery,
    generic_model_args,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DVRSurfaceRenderer",
    "ImplicitronFunctionQuery",
    "generic_model_args",
]
