"""
``SurfaceRaymarcher``: turns one surface sample per ray into an image (PyTorch3D raymarcher
protocol).

With DVR there is nothing to integrate along a ray: the colour of a pixel is the feature at the
surface point where its ray first enters the object, and the pixel's alpha is whether it has
one. This raymarcher composites the features over a background with that alpha and appends the
alpha channel, like PyTorch3D's ``EmissionAbsorptionRaymarcher`` (features, then opacity), and
optionally the depth and the normal of the surface.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SurfaceRaymarcher(nn.Module):
    """
    Output channels, in order: the ``F`` feature channels composited over ``background_color``;
    alpha (1 where the ray hit the surface, else 0); then, on request, depth (z-depth, or
    ``background_depth`` where nothing was hit) and the three components of the world-space
    outward unit normal (zero where nothing was hit).

    It needs the per-ray ``hit`` flags that :class:`dvr_plugin.renderer.raysampler.SecantRaysampler`
    puts in its :class:`~dvr_plugin.renderer.raysampler.SurfaceRayBundle`.

    Args (keyword-only):
        background_color: one value per feature channel, or one value for all (default 0).
        return_depth: append the depth channel.
        return_normals: append the three normal channels (the bundle must carry normals).
        background_depth: depth written where no surface was hit.
        check_finite: raise ``ValueError`` when a ray that hit the surface has a non-finite
            feature (a field returning NaN / inf colour), as the raysampler does for NaN / inf
            field values; one check per call.
    """

    def __init__(
        self,
        *,
        background_color: float | Sequence[float] = 0.0,
        return_depth: bool = False,
        return_normals: bool = False,
        background_depth: float = 0.0,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        background = torch.as_tensor(background_color, dtype=torch.float32).reshape(-1)
        if background.numel() == 0 or not bool(torch.isfinite(background).all()):
            raise ValueError(f"background_color must be finite numbers, got {background_color}.")
        self.register_buffer("background_color", background, persistent=False)
        self.return_depth = return_depth
        self.return_normals = return_normals
        self.background_depth = background_depth
        self.check_finite = check_finite

    def forward(
        self,
        rays_densities: torch.Tensor,
        rays_features: torch.Tensor,
        ray_bundle,
        background_color: float | Sequence[float] | torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """
        Args:
            rays_densities: `(B, ..., 1, D)` values at the surface samples (checked, not used).
            rays_features: `(B, ..., 1, F)` features (e.g. RGB) at the surface samples.
            ray_bundle: a ``SurfaceRayBundle`` with ``hit`` `(B, ...)`, ``lengths``
                `(B, ..., 1)` and, for normals, ``normals`` `(B, ..., 3)`.
            background_color: overrides the constructor's background for this call.

        Returns:
            `(B, ..., F + 1 [+ 1] [+ 3])` tensor: features, alpha, [depth], [normals].
        """
        hit = getattr(ray_bundle, "hit", None)
        if hit is None:
            raise ValueError(
                "SurfaceRaymarcher needs a ray bundle with per-ray `hit` flags, as returned by "
                "SecantRaysampler."
            )
        spatial = tuple(hit.shape)
        if rays_features.dim() < 2 or tuple(rays_features.shape[:-2]) != spatial or (
            rays_features.shape[-2] != 1
        ):
            raise ValueError(
                f"rays_features must have shape {spatial + (1, 'F')}, one sample per ray; got "
                f"{tuple(rays_features.shape)}."
            )
        if tuple(rays_densities.shape[:-1]) != spatial + (1,):
            raise ValueError(
                f"rays_densities must have shape {spatial + (1, 'D')}, got "
                f"{tuple(rays_densities.shape)}."
            )
        features = rays_features[..., 0, :]
        if background_color is None:
            background = self.background_color
        else:
            background = torch.as_tensor(background_color, dtype=features.dtype).reshape(-1)
        background = background.to(device=features.device, dtype=features.dtype)
        if background.numel() not in (1, features.shape[-1]):
            raise ValueError(
                f"background_color has {background.numel()} values for {features.shape[-1]} "
                "feature channels."
            )
        if self.check_finite:
            _check_finite_features(features, hit)
        alpha = hit.to(features.dtype)[..., None]
        # where nothing was hit the background alone (a feature there never reaches the image)
        channels = [torch.where(hit[..., None], features, background), alpha]
        if self.return_depth:
            depth = ray_bundle.lengths[..., :1]
            channels.append(torch.where(hit[..., None], depth, self.background_depth))
        if self.return_normals:
            normals = getattr(ray_bundle, "normals", None)
            if normals is None:
                raise ValueError(
                    "return_normals=True needs a ray bundle with normals "
                    "(SecantRaysampler(compute_normals=True))."
                )
            channels.append(torch.where(hit[..., None], normals, 0.0))
        return torch.cat(channels, dim=-1)


def _check_finite_features(features: torch.Tensor, hit: torch.Tensor) -> None:
    """``ValueError`` when a hit ray's `(B, ..., F)` feature is NaN / inf (one host sync)."""
    finite = torch.isfinite(features).all(dim=-1) | ~hit
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    raise ValueError(
        f"The field returned non-finite colours (NaN or inf) at {bad} of {int(hit.sum())} "
        "surface points."
    )
