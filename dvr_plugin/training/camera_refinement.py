"""
Per-view camera refinement: a small rigid correction of each training camera, learnt with the
field through the camera gradients the renderer already gives (the rays carry the implicit
gradient back to ``R`` and ``T``).

Frames and units: the corrections act in each camera's view space of the fitting frame
(the normalised object frame of the fit, where the training cameras live): with PyTorch3D's
row-vector convention ``X_view = X R + T``, the refined camera sees

    X_view' = X_view R_d + t_d,    i.e.  R' = R R_d,  T' = T R_d + t_d,

where ``R_d = exp(w)`` (axis-angle ``w`` in radians) and ``t_d`` is in the fitting frame's units.
``summary`` reports the sizes in degrees and in the data's world units (times the frame's
scale). Held-out views are never refined: their cameras are the data's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pytorch3d.renderer import PerspectiveCameras
from pytorch3d.transforms import so3_exp_map
from torch import nn


class CameraRefinement(nn.Module):
    """
    Learnable rigid corrections of ``n_views`` cameras, zero at the start.

    Args (keyword-only):
        n_views: N, the number of training cameras.

    Members:
        deltas: `(N, 6)` parameters: axis-angle rotation (radians) then translation.
    """

    def __init__(self, *, n_views: int) -> None:
        super().__init__()
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}.")
        self.deltas = nn.Parameter(torch.zeros(n_views, 6))

    def forward(self, cameras: PerspectiveCameras, index: torch.Tensor) -> PerspectiveCameras:
        """
        Args:
            cameras: `B` cameras (``R`` `(B, 3, 3)`, ``T`` `(B, 3)`), the views ``index`` of the
                training set, in the fitting frame.
            index: `(B,)` long, which training view each camera is.

        Returns:
            The `B` refined cameras (same intrinsics and image size), differentiable in
            ``deltas``.
        """
        if index.ndim != 1 or index.shape[0] != len(cameras):
            raise ValueError(
                f"index must be (B,) with B = {len(cameras)} cameras, got {tuple(index.shape)}."
            )
        delta = self.deltas[index.to(self.deltas.device)].to(cameras.R.dtype)
        rotation = so3_exp_map(delta[:, :3])
        R = cameras.R @ rotation
        T = (cameras.T[:, None, :] @ rotation)[:, 0] + delta[:, 3:]
        return PerspectiveCameras(
            R=R,
            T=T,
            focal_length=cameras.focal_length,
            principal_point=cameras.principal_point,
            image_size=cameras.image_size,
            in_ndc=cameras.in_ndc(),
            device=cameras.device,
        )

    @torch.no_grad()
    def summary(self, *, world_scale: float = 1.0) -> dict[str, Any]:
        """
        The corrections' sizes: ``rotation_deg`` and ``translation`` (the data's world units,
        fitting-frame units times ``world_scale``), mean and max over the views.
        """
        angles = self.deltas[:, :3].norm(dim=-1) * (180.0 / math.pi)
        shifts = self.deltas[:, 3:].norm(dim=-1) * world_scale
        return {
            "views": int(self.deltas.shape[0]),
            "rotation_deg_mean": float(angles.mean()),
            "rotation_deg_max": float(angles.max()),
            "translation_mean": float(shifts.mean()),
            "translation_max": float(shifts.max()),
        }
