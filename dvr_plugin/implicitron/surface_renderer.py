"""
The Implicitron renderer :class:`DVRSurfaceRenderer` (registered in Implicitron's registry when
this module is imported), the surface query over an Implicitron implicit function, and the
example ``GenericModel`` config. The conventions (field types, lengths, units) are described in
:mod:`dvr_plugin.implicitron`.
"""

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..renderer.implicit_gradient import attach_implicit_gradient
from ..renderer.rays import intersect_box
from ..surface.precision import check_precision
from ..surface.query import inside_sign, inside_values
from ..surface.root_finding import find_surface_of_rays

_INSTALL_HINT = (
    "The Implicitron integration needs pytorch3d.implicitron and its imports omegaconf, "
    "hydra-core and torchvision (`pip install 'dvr-plugin[implicitron]'`; all are pinned in "
    "requirements.txt)."
)

try:
    from omegaconf import DictConfig, OmegaConf
    from pytorch3d.implicitron.models.generic_model import GenericModel
    from pytorch3d.implicitron.models.implicit_function.idr_feature_field import IdrFeatureField
    from pytorch3d.implicitron.models.renderer.base import (
        BaseRenderer,
        EvaluationMode,
        ImplicitFunctionWrapper,
        ImplicitronRayBundle,
        RendererOutput,
    )
    from pytorch3d.implicitron.tools.config import get_default_args, registry
except ImportError as error:  # pragma: no cover - exercised only without Implicitron's imports
    raise ImportError(f"{_INSTALL_HINT} (import failed: {error})") from error

FIELD_TYPES = ("auto", "occupancy", "sdf")
FEATURE_ACTIVATIONS = ("auto", "identity", "sigmoid")
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "generic_model.yaml"

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DVRSurfaceRenderer",
    "ImplicitronFunctionQuery",
    "generic_model_args",
]


def _underlying_function(implicit_function: torch.nn.Module) -> torch.nn.Module:
    """The module inside an ``ImplicitFunctionWrapper`` (or the function itself)."""
    if isinstance(implicit_function, ImplicitFunctionWrapper):
        children = list(implicit_function.children())
        if len(children) == 1:
            return children[0]
    return implicit_function


def _is_conditioned(implicit_function: torch.nn.Module) -> bool:
    """Whether GenericModel bound per-image inputs (``global_code``, ``fun_viewpool``)."""
    bound = getattr(implicit_function, "bound_args", None) or {}
    return any(value is not None for value in bound.values())


class ImplicitronFunctionQuery:
    """
    An Implicitron implicit function seen as DVR's surface query
    ``query(ray_ids, origins, directions, lengths) -> inside`` (positive inside; see
    :mod:`dvr_plugin.surface.query`), plus the features at the same points.

    Rays are one flat list of ``M`` rays. Implicit functions conditioned on the image (a bound
    ``global_code`` or ``fun_viewpool``) need their inputs batched like the ``G`` target images;
    the flat list then interleaves the images (ray ``k`` belongs to image ``k % G``) so that any
    contiguous chunk holds about as many rays of each image, and every call is padded to
    `(G, r_max, n)` (pad rays repeat the chunk's first ray and are dropped). With ``G = 1``
    (unconditioned functions) all rays are one row and nothing is padded.

    Args (keyword-only):
        implicit_function: an Implicitron implicit function, usually wrapped in the
            ``ImplicitFunctionWrapper`` GenericModel passes to its renderer.
        n_groups: ``G``, the number of rows of each call.
        xys: `(M, 2)` NDC pixel positions of the rays (passed on in the ray bundles).
        field_type: ``"occupancy"``, ``"sdf"`` or ``"auto"`` (decided by the first output:
            ``"sdf"`` for one tensor ``[values, features...]``, ``"occupancy"`` for a tuple
            ``(rays_densities, rays_features, ...)``).
        level: the surface level of the value channel.
        feature_activation: ``"identity"``, ``"sigmoid"`` or ``"auto"`` (decided by the first
            output: ``"sigmoid"`` for one tensor, whose features are raw network outputs,
            ``"identity"`` for a tuple).
    """

    def __init__(
        self,
        *,
        implicit_function: torch.nn.Module,
        n_groups: int,
        xys: torch.Tensor,
        field_type: str,
        level: float,
        feature_activation: str,
    ) -> None:
        if field_type not in FIELD_TYPES:
            raise ValueError(f"field_type must be one of {FIELD_TYPES}, got {field_type!r}.")
        if feature_activation not in FEATURE_ACTIVATIONS:
            raise ValueError(
                f"feature_activation must be one of {FEATURE_ACTIVATIONS}, "
                f"got {feature_activation!r}."
            )
        if n_groups < 1:
            raise ValueError(f"n_groups must be positive, got {n_groups}.")
        self.implicit_function = implicit_function
        function = _underlying_function(implicit_function)
        self.points_input = isinstance(function, IdrFeatureField)
        self.value_channels = int(getattr(function, "d_out", 1)) if self.points_input else 1
        self.n_groups = n_groups
        self.xys = xys
        self.level = level
        self.field_type = field_type
        self.feature_activation = feature_activation

    @property
    def resolved(self) -> bool:
        """Whether ``field_type`` and ``feature_activation`` are known (not ``"auto"``)."""
        return self.field_type != "auto" and self.feature_activation != "auto"

    @property
    def sign(self) -> float:
        """+1 for occupancy (inside above the level), -1 for signed distances."""
        if self.field_type == "auto":
            raise ValueError("field_type is decided by the first evaluation; none happened yet.")
        return inside_sign(self.field_type)

    def _resolve(self, tensor_output: bool) -> None:
        if self.field_type == "auto":
            self.field_type = "sdf" if tensor_output else "occupancy"
        if self.feature_activation == "auto":
            self.feature_activation = "sigmoid" if tensor_output else "identity"

    def __call__(
        self,
        ray_ids: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            ray_ids: `(r,)` indices into the flat ray list.
            origins, directions: `(r, 3)`.
            lengths: `(r, n)` lengths along each ray.

        Returns:
            `(r, n)` inside values (positive inside, zero on the surface).
        """
        values, _ = self.evaluate(ray_ids, origins, directions, lengths)
        return self.inside(values)

    def inside(self, values: torch.Tensor) -> torch.Tensor:
        """Inside values (positive inside) from raw values of the value channel."""
        return inside_values(values, field_type=self.field_type, level=self.level)

    def evaluate(
        self,
        ray_ids: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Evaluate the implicit function at ``origins + lengths * directions``.

        Args:
            ray_ids: `(r,)` indices into the flat ray list.
            origins, directions: `(r, 3)`.
            lengths: `(r, n)`.

        Returns:
            values: `(r, n)` raw values of the value channel (density / signed distance).
            features: `(r, n, C)` features after ``feature_activation``.
        """
        n_rays, n_points = lengths.shape
        if n_rays == 0:  # no rays (e.g. none hit): one dummy ray keeps the shapes and graph
            dummy = lengths.new_zeros(1, 3)
            values, features = self.evaluate(
                ray_ids.new_zeros(1),
                dummy,
                dummy + 1.0,
                lengths.new_ones(1, n_points),
            )
            return values[:0], features[:0]
        xys = self.xys[ray_ids]
        if self.n_groups == 1:
            values, features = self._call(origins[None], directions[None], lengths[None], xys[None])
            values, features = values[0], features[0]
        else:
            index, group, slot, inverse = _group_rows(ray_ids % self.n_groups, self.n_groups)
            values, features = self._call(
                origins[index], directions[index], lengths[index], xys[index]
            )
            values = values[group, slot][inverse]
            features = features[group, slot][inverse]
        if self.feature_activation == "sigmoid":
            features = torch.sigmoid(features)
        return values, features

    def _call(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        lengths: torch.Tensor,
        xys: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One call on `(G, r, 3)` rays and `(G, r, n)` lengths -> `(G, r, n)`, `(G, r, n, C)`."""
        shape = lengths.shape
        if self.points_input:
            points = origins[..., None, :] + lengths[..., None] * directions[..., None, :]
            out = self.implicit_function(rays_points_world=points.reshape(-1, 3))
        else:
            bundle = ImplicitronRayBundle(
                origins=origins, directions=directions, lengths=lengths, xys=xys
            )
            out = self.implicit_function(ray_bundle=bundle)
        if not self.resolved:
            self._resolve(isinstance(out, torch.Tensor))
        if isinstance(out, torch.Tensor):
            # one tensor [value channels..., features...] (the IdrFeatureField layout)
            if out.numel() == 0 and math.prod(shape) > 0:
                raise ValueError(
                    "The implicit function returned an empty tensor (IdrFeatureField does "
                    "this when n_harmonic_functions_xyz < 0 and nothing conditions it; use "
                    "n_harmonic_functions_xyz >= 0)."
                )
            out = out.reshape(*shape, -1)
            if out.shape[-1] <= self.value_channels:
                raise ValueError(
                    f"The implicit function returned {out.shape[-1]} channels; expected "
                    f"{self.value_channels} value channel(s) followed by features."
                )
            return out[..., 0], out[..., self.value_channels :]
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise ValueError(
                "An implicit function must return a tensor [values, features...] or a tuple "
                f"(rays_densities, rays_features, ...); got {type(out).__name__}."
            )
        densities, features = out[0], out[1]
        if not isinstance(densities, torch.Tensor) or densities.numel() != math.prod(shape):
            raise ValueError(
                f"The implicit function returned rays_densities of shape "
                f"{tuple(getattr(densities, 'shape', ()))} for lengths of shape {tuple(shape)}; "
                f"expected {(*shape, 1)}."
            )
        if not isinstance(features, torch.Tensor) or features.shape[: len(shape)] != shape:
            raise ValueError(
                f"The implicit function returned rays_features of shape "
                f"{tuple(getattr(features, 'shape', ()))}; expected {(*shape, 'C')}."
            )
        return densities.reshape(shape), features.reshape(*shape, -1)


def _group_rows(
    group: torch.Tensor, n_groups: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Lay out `(r,)` rows by group into a padded `(G, r_max)` index.

    Returns:
        index: `(G, r_max)` row of each slot (pad slots repeat row 0).
        group_sorted, slot: `(r,)` where the rows are, in group order.
        inverse: `(r,)` undoes the group order.
    """
    order = torch.argsort(group, stable=True)
    group_sorted = group[order]
    counts = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(group.numel(), device=group.device) - starts[group_sorted]
    width = max(int(counts.max()), 1)
    index = torch.zeros(n_groups, width, dtype=torch.long, device=group.device)
    index[group_sorted, slot] = order
    return index, group_sorted, slot, torch.argsort(order)


class _MarchRecorder:
    """Passes queries through and keeps, per ray, the largest inside value seen and its length."""

    def __init__(self, query: ImplicitronFunctionQuery, n_rays: int, like: torch.Tensor) -> None:
        self.query = query
        self.best_value = torch.full((n_rays,), -math.inf, dtype=like.dtype, device=like.device)
        self.best_length = torch.zeros(n_rays, dtype=like.dtype, device=like.device)

    def __call__(self, ray_ids, origins, directions, lengths):
        inside = self.query(ray_ids, origins, directions, lengths)
        value, position = inside.detach().to(self.best_value.dtype).max(dim=1)
        better = value > self.best_value[ray_ids]
        self.best_value[ray_ids] = torch.where(better, value, self.best_value[ray_ids])
        self.best_length[ray_ids] = torch.where(
            better, lengths.gather(1, position[:, None])[:, 0], self.best_length[ray_ids]
        )
        return inside


@registry.register
class DVRSurfaceRenderer(BaseRenderer, torch.nn.Module):
    """
    Differentiable Volumetric Rendering (DVR) as an Implicitron renderer: the first surface
    along each ray by marching + bracketing secant steps, DVR's implicit depth gradient, and the
    implicit function's features at that surface (see the module docstring).

    Output (a ``RendererOutput``, spatial shape ``S`` of the ray bundle):

    - ``features`` `(B, *S, C)`: features at the surface where a ray hit it, else ``bg_color``;
    - ``depths`` `(B, *S, 1)`: length of the surface along the ray (in the units of the
      bundle's directions), carrying the implicit gradient; ``background_depth`` elsewhere;
    - ``masks`` `(B, *S, 1)`: 1 where a ray hit the surface; for rays that crossed the search
      interval without a hit, ``sigmoid(soft_mask_alpha * s_max)`` with ``s_max`` the most
      inside value met while marching, re-evaluated with gradients (the analogue of IDR's soft
      mask and of DVR's occupancy / free-space losses when a mask loss such as
      ``loss_mask_bce`` is weighted); 0 for rays that miss the search interval;
    - ``normals`` `(B, *S, 3)`: outward unit normals at the surface (zero elsewhere);
    - ``points`` `(B, *S, 3)`: surface points (the ray origin where there is none);
    - ``aux``: ``hit``, ``started_inside`` (the search interval began inside the object: no
      surface, flagged) and ``missed`` (empty search interval), each `(B, *S, 1)` bool; in
      training with an SDF, ``grad_theta`` `(2 * B * prod(S), 3)` (the SDF's gradient at the
      surface-or-best points and at random points on the rays) for Implicitron's
      ``loss_eikonal``.

    Settings:
        n_steps_training: marching samples per ray in training.
        n_steps_evaluation: marching samples per ray in evaluation.
        n_secant_steps: bracketing secant refinement steps.
        field_type: ``"auto"``, ``"occupancy"`` or ``"sdf"``: how the value channel is read
            (``"auto"``: ``"sdf"`` for functions returning one tensor ``[sdf, features...]``
            such as ``IdrFeatureField``, ``"occupancy"`` for ``(densities, features, aux)``).
        level: the surface level of the value channel (0: logit 0 = occupancy 0.5, or sdf 0).
        bounds: ``()`` to search the bundle's ``[min(lengths), max(lengths)]`` only, or six
            numbers ``(xmin, ymin, zmin, xmax, ymax, zmax)`` of a box that also clips it.
        feature_activation: ``"auto"``, ``"identity"`` or ``"sigmoid"`` applied to the
            features (``"auto"``: sigmoid for one-tensor outputs, whose features are raw, e.g.
            ``IdrFeatureField``; identity for tuples, whose colours are already in [0, 1]).
        bg_color: one value or one per feature channel, where no surface is hit.
        background_depth: depth where no surface is hit.
        soft_mask_alpha: slope of the soft mask; ``None`` = 1 for occupancy logits, 50 for
            signed distances; 0 gives hard (binary, gradient-free) masks.
        compute_eikonal: return ``aux["grad_theta"]`` in training for SDFs.
        chunk_size: the most points per implicit-function call while marching (and rays per
            call when evaluating without gradients).
        grad_eps: the smallest magnitude of the implicit-gradient denominator.
        check_finite: raise ``ValueError`` when the implicit function returns NaN / inf.
        march_precision: ``"float32"``, ``"tf32"`` or ``"bfloat16"`` (CUDA) for the march.
    """

    n_steps_training: int = 64
    n_steps_evaluation: int = 128
    n_secant_steps: int = 8
    field_type: str = "auto"
    level: float = 0.0
    bounds: Tuple[float, ...] = ()
    feature_activation: str = "auto"
    bg_color: Tuple[float, ...] = (0.0,)
    background_depth: float = 0.0
    soft_mask_alpha: Optional[float] = None
    compute_eikonal: bool = True
    chunk_size: int = 65536
    grad_eps: float = 1e-4
    check_finite: bool = True
    march_precision: str = "float32"

    def __post_init__(self) -> None:
        for name in ("n_steps_training", "n_steps_evaluation"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2, got {getattr(self, name)}.")
        if self.n_secant_steps < 0:
            raise ValueError(f"n_secant_steps must be >= 0, got {self.n_secant_steps}.")
        if self.field_type not in FIELD_TYPES:
            raise ValueError(f"field_type must be one of {FIELD_TYPES}, got {self.field_type!r}.")
        if self.feature_activation not in FEATURE_ACTIVATIONS:
            raise ValueError(
                f"feature_activation must be one of {FEATURE_ACTIVATIONS}, "
                f"got {self.feature_activation!r}."
            )
        check_precision(self.march_precision, name="march_precision")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}.")
        if len(self.bg_color) < 1:
            raise ValueError("bg_color needs at least one value.")
        if self.soft_mask_alpha is not None and self.soft_mask_alpha < 0:
            raise ValueError(f"soft_mask_alpha must be >= 0 or None, got {self.soft_mask_alpha}.")
        box = torch.tensor([float(b) for b in self.bounds], dtype=torch.float32)
        if box.numel() not in (0, 6) or (box.numel() == 6 and not bool((box[3:] > box[:3]).all())):
            raise ValueError(
                "bounds must be () or (xmin, ymin, zmin, xmax, ymax, zmax) with min < max, "
                f"got {tuple(self.bounds)}."
            )
        self.register_buffer("_bounds", box.reshape(-1, 3), persistent=False)
        self.register_buffer(
            "_bg_color", torch.tensor([float(c) for c in self.bg_color]), persistent=False
        )

    def requires_object_mask(self) -> bool:
        return False

    def forward(
        self,
        ray_bundle: ImplicitronRayBundle,
        implicit_functions: List[ImplicitFunctionWrapper],
        evaluation_mode: EvaluationMode = EvaluationMode.EVALUATION,
        **kwargs,
    ) -> RendererOutput:
        """
        Args:
            ray_bundle: an ``ImplicitronRayBundle`` with ``origins`` and ``directions``
                `(B, *S, 3)` and ``lengths`` `(B, *S, n)` (or ``bins`` `(B, *S, n + 1)`) whose
                range is the part of each ray searched.
            implicit_functions: a one-element list: the implicit function (wrapped with its
                bound ``global_code`` / ``fun_viewpool`` by GenericModel).
            evaluation_mode: ``EvaluationMode.TRAINING`` or ``EVALUATION`` (picks the number
                of marching steps; the eikonal term is only computed in training).
            kwargs: ignored (e.g. ``object_mask``).

        Returns:
            RendererOutput (see the class docstring).
        """
        if len(implicit_functions) != 1:
            raise ValueError(
                f"DVRSurfaceRenderer renders one implicit function, got {len(implicit_functions)}"
                " (set GenericModel.num_passes = 1)."
            )
        function = implicit_functions[0]
        mode = EvaluationMode(evaluation_mode)
        origins, directions = ray_bundle.origins, ray_bundle.directions
        if origins.dim() < 2 or origins.shape[-1] != 3 or directions.shape != origins.shape:
            raise ValueError(
                "ray_bundle.origins and directions must have the same shape (B, ..., 3), got "
                f"{tuple(origins.shape)} and {tuple(directions.shape)}."
            )
        ranges = ray_bundle.bins if ray_bundle.bins is not None else ray_bundle.lengths
        if ranges is None or ranges.shape[:-1] != origins.shape[:-1] or ranges.shape[-1] < 1:
            raise ValueError(
                "ray_bundle.lengths (or bins) must have shape (B, ..., n) matching the rays, got "
                f"{None if ranges is None else tuple(ranges.shape)} for rays "
                f"{tuple(origins.shape)}."
            )
        batch, spatial = origins.shape[0], origins.shape[1:-1]
        if origins.numel() == 0:
            raise ValueError(f"The ray bundle holds no rays (origins {tuple(origins.shape)}).")
        n_groups = batch if _is_conditioned(function) else 1
        if n_groups > 1 and ray_bundle.is_packed():
            raise ValueError(
                "A packed ray bundle (raysampler n_rays_total_training) cannot be rendered with "
                "an implicit function conditioned per image (global_code / fun_viewpool); use "
                "n_rays_per_image_sampled_from_mask."
            )
        layout = _RayLayout(batch, spatial, n_groups)
        query = ImplicitronFunctionQuery(
            implicit_function=function,
            n_groups=n_groups,
            xys=layout.flatten(ray_bundle.xys.detach()),
            field_type=self.field_type,
            level=self.level,
            feature_activation=self.feature_activation,
        )
        flat_origins = layout.flatten(origins)
        flat_directions = layout.flatten(directions)
        near_all = layout.flatten(ranges.detach().amin(-1, keepdim=True))[:, 0]
        far_all = layout.flatten(ranges.detach().amax(-1, keepdim=True))[:, 0]
        near, far = near_all, far_all
        if self._bounds.numel() > 0:
            box = self._bounds.to(flat_origins)
            box_near, box_far, box_missed = intersect_box(
                flat_origins.detach(), flat_directions.detach(), box[0], box[1]
            )
            near = torch.where(box_missed, near, torch.maximum(near, box_near))
            far = torch.where(box_missed, near, torch.minimum(far, box_far))
        missed = ~(far > near)

        n_rays = flat_origins.shape[0]
        recorder = _MarchRecorder(query, n_rays, flat_origins)
        n_steps = (
            self.n_steps_training if mode == EvaluationMode.TRAINING else self.n_steps_evaluation
        )
        length, hit, started_inside = find_surface_of_rays(
            recorder,
            flat_origins,
            flat_directions,
            near,
            far,
            missed,
            n_steps=n_steps,
            n_secant_steps=self.n_secant_steps,
            chunk_size=self.chunk_size,
            check_finite=self.check_finite,
            march_precision=self.march_precision,
        )
        # a searched ray without a crossing stops at the sample that came closest to inside
        length = torch.where(hit | missed, length, recorder.best_length)

        geometry = attach_implicit_gradient(
            query,
            flat_origins,
            flat_directions,
            length,
            hit,
            compute_normals=True,
            eps=self.grad_eps,
            chunk_size=self.chunk_size,
        )
        values, features = self._evaluate_at(query, flat_origins, flat_directions, geometry.depth)

        bg = self._bg_color.to(features)
        if bg.numel() not in (1, features.shape[-1]):
            raise ValueError(
                f"bg_color has {bg.numel()} values for {features.shape[-1]} feature channels; "
                "give one value or one per channel."
            )
        features = torch.where(hit[:, None], features, bg.expand_as(features))
        field_type = query.field_type  # resolved by now (attach_implicit_gradient evaluated it)
        masks = self._masks(query.inside(values), hit, missed, field_type)
        depths = torch.where(hit, geometry.depth, torch.full_like(length, self.background_depth))
        surface = flat_origins + geometry.depth[:, None] * flat_directions
        points = torch.where(hit[:, None], surface, flat_origins)

        aux: Dict[str, Any] = {
            "hit": layout.unflatten(hit[:, None]),
            "started_inside": layout.unflatten(started_inside[:, None]),
            "missed": layout.unflatten(missed[:, None]),
        }
        if field_type == "sdf" and self.compute_eikonal and mode == EvaluationMode.TRAINING:
            aux["grad_theta"] = self._sdf_gradients(
                query, flat_origins, flat_directions, length, near_all, far_all
            )
        return RendererOutput(
            features=layout.unflatten(features),
            depths=layout.unflatten(depths[:, None]),
            masks=layout.unflatten(masks[:, None]),
            normals=layout.unflatten(geometry.normals),
            points=layout.unflatten(points),
            aux=aux,
        )

    def _evaluate_at(
        self,
        query: ImplicitronFunctionQuery,
        origins: torch.Tensor,
        directions: torch.Tensor,
        length: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Values `(M,)` and features `(M, C)` at one length per ray (chunked without grad)."""
        n_rays = origins.shape[0]
        ray_ids = torch.arange(n_rays, device=origins.device)
        step = n_rays if torch.is_grad_enabled() else max(1, self.chunk_size)
        parts = [
            query.evaluate(ray_ids[s], origins[s], directions[s], length[s, None])
            for s in (slice(i, i + step) for i in range(0, n_rays, step))
        ]
        values = torch.cat([p[0][:, 0] for p in parts])
        features = torch.cat([p[1][:, 0] for p in parts])
        return values, features

    def _masks(
        self, inside: torch.Tensor, hit: torch.Tensor, missed: torch.Tensor, field_type: str
    ) -> torch.Tensor:
        """`(M,)` masks: 1 on hits, the soft mask on searched rays without a hit, 0 on misses."""
        alpha = self.soft_mask_alpha
        if alpha is None:
            alpha = 1.0 if field_type == "occupancy" else 50.0
        ones = torch.ones_like(inside)
        if alpha == 0:
            return torch.where(hit, ones, torch.zeros_like(inside))
        soft = torch.where(missed, torch.zeros_like(inside), torch.sigmoid(alpha * inside))
        return torch.where(hit, ones, soft)

    def _sdf_gradients(
        self,
        query: ImplicitronFunctionQuery,
        origins: torch.Tensor,
        directions: torch.Tensor,
        length: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
    ) -> torch.Tensor:
        """`(2M, 3)` SDF gradients at the surface (or best) points and random ray points."""
        n_rays = origins.shape[0]
        ray_ids = torch.arange(n_rays, device=origins.device).repeat(2)
        random = near + torch.rand_like(near) * (far - near)
        lengths = torch.cat([length, random]).detach()[:, None]
        base = origins.detach()[ray_ids]
        offset = torch.zeros_like(base).requires_grad_(True)
        with torch.enable_grad():
            inside = query(ray_ids, base + offset, directions.detach()[ray_ids], lengths)
            (grad_inside,) = torch.autograd.grad(inside.sum(), offset, create_graph=True)
        return query.sign * grad_inside  # d(value)/dp: the SDF's gradient


class _RayLayout:
    """
    Between Implicitron's `(B, *S, k)` ray tensors and the flat `(M, k)` list (``M = B
    prod(S)``): image-major for one group, interleaved by image for ``G = B`` groups.
    """

    def __init__(self, batch: int, spatial: Tuple[int, ...], n_groups: int) -> None:
        self.batch = batch
        self.spatial = tuple(spatial)
        self.n_rays = math.prod(self.spatial)
        self.interleaved = n_groups > 1

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(self.batch, self.n_rays, -1)
        if self.interleaved:
            x = x.transpose(0, 1)
        return x.reshape(self.batch * self.n_rays, -1)

    def unflatten(self, y: torch.Tensor) -> torch.Tensor:
        if self.interleaved:
            y = y.reshape(self.n_rays, self.batch, -1).transpose(0, 1)
        return y.reshape(self.batch, *self.spatial, -1)


def generic_model_args(
    config_path: Optional[Path] = DEFAULT_CONFIG_PATH, **overrides: Any
) -> DictConfig:
    """
    ``GenericModel``'s default config merged with a YAML file of GenericModel settings (the
    example ``dvr_plugin/implicitron/generic_model.yaml`` by default) and keyword overrides.

    Args:
        config_path: a YAML file of GenericModel settings, or ``None`` for the defaults only.
        overrides: GenericModel settings (e.g. ``render_image_width=64``); nested settings as
            dicts.

    Returns:
        A DictConfig to build the model with ``GenericModel(**cfg)``.

    Raises:
        ValueError: if GenericModel's config was expanded before this module registered the
            renderer (import this module first).
    """
    defaults = get_default_args(GenericModel)
    if "renderer_DVRSurfaceRenderer_args" not in defaults:
        raise ValueError(
            "GenericModel's config was built before DVRSurfaceRenderer was registered: import "
            "dvr_plugin.implicitron before the first get_default_args(GenericModel) / "
            "GenericModel(...) of the process."
        )
    configs = [defaults]
    if config_path is not None:
        configs.append(OmegaConf.load(str(config_path)))
    if overrides:
        configs.append(OmegaConf.create(overrides))
    return OmegaConf.merge(*configs)
