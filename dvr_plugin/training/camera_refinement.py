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

A rigid motion of every camera together, with the object moved the same way, leaves every image
unchanged, so the images alone cannot fix it and the corrections may drift along it (the field
following them). :meth:`CameraRefinement.remove_common_motion` takes that motion out after each
optimiser step: it fits the rigid motion that carries the data's camera centres to the refined
ones (least squares, Kabsch) and moves the refined cameras back by its inverse, so that the
corrections keep only what differs between the views.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pytorch3d.renderer import PerspectiveCameras
from pytorch3d.transforms import so3_exp_map, so3_log_map
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

    @torch.no_grad()
    def remove_common_motion(self, R: torch.Tensor, T: torch.Tensor) -> dict[str, float]:
        """
        Take the common rigid motion out of the corrections of all ``N`` views.

        With the data's cameras ``R`` `(N, 3, 3)` and ``T`` `(N, 3)` (row-vector convention,
        fitting frame) and the refined ``R'``, ``T'``: the camera centres ``C = -T R^T`` and
        ``C'`` give, by least squares, the world motion ``X -> X A + a`` (``A`` a rotation) with
        ``C' ~ C A + a``; the refined cameras moved back by its inverse are ``R'' = A R'``,
        ``T'' = T' + a R'`` (their centres ``(C' - a) A^T ~ C``), and the corrections become
        the ones that give ``R''``, ``T''``. Needs at least 3 views whose centres are not on one
        line; with fewer nothing changes.

        Returns:
            ``rotation_deg`` and ``translation`` (fitting-frame units) of the motion removed.
        """
        n_views = self.deltas.shape[0]
        if R.shape != (n_views, 3, 3) or T.shape != (n_views, 3):
            raise ValueError(
                f"R and T must be ({n_views}, 3, 3) and ({n_views}, 3), got "
                f"{tuple(R.shape)} and {tuple(T.shape)}."
            )
        # in float64: the corrections are fractions of a degree, where a float32 log map
        # (an arccos near 1) would add noise of a few hundredths of a degree at every step
        deltas = self.deltas.double()
        R = R.to(deltas)
        T = T.to(deltas)
        rotation = so3_exp_map(deltas[:, :3])
        R_refined = R @ rotation
        T_refined = (T[:, None, :] @ rotation)[:, 0] + deltas[:, 3:]
        centres = -(T[:, None, :] @ R.transpose(1, 2))[:, 0]
        refined_centres = -(T_refined[:, None, :] @ R_refined.transpose(1, 2))[:, 0]
        mean, refined_mean = centres.mean(0), refined_centres.mean(0)
        cross = (centres - mean).T @ (refined_centres - refined_mean)  # (3, 3)
        if n_views < 3 or torch.linalg.matrix_rank(cross) < 2:
            return {"rotation_deg": 0.0, "translation": 0.0}
        U, _, Vh = torch.linalg.svd(cross)
        sign = torch.sign(torch.linalg.det(U @ Vh))
        D = torch.diag(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign]))
        A = U @ D @ Vh  # row-vector rotation: C A ~ C' (centred)
        a = refined_mean - mean @ A
        R_anchored = A @ R_refined
        T_anchored = T_refined + (a[None, None, :] @ R_refined)[:, 0]
        correction = R.transpose(1, 2) @ R_anchored
        anchored = torch.cat(
            [so3_log_map(correction), T_anchored - (T[:, None, :] @ correction)[:, 0]], dim=1
        )
        self.deltas.copy_(anchored.to(self.deltas))
        angle = float(so3_log_map(A[None].transpose(1, 2))[0].norm()) * (180.0 / math.pi)
        return {"rotation_deg": angle, "translation": float(a.norm())}

