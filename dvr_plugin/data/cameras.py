"""
Camera conversions between PyTorch3D and the conventions DVR data comes in.

Every converter goes through the OpenCV convention, ``x_pix ~ K (R X + t)``, and PyTorch3D's own
:func:`pytorch3d.utils.cameras_from_opencv_projection` / :func:`opencv_from_cameras_projection`.
``docs/cameras.md`` derives every formula; in short:

- Pixel coordinates ``(u, v)`` are continuous (column, row) positions with the image's
  top-left *corner* at ``(0, 0)``, so the centre of pixel (row ``i``, column ``j``) is
  ``(j + 0.5, i + 0.5)``.
  This is what PyTorch3D's screen space, ``cameras_from_opencv_projection`` and
  :mod:`dvr_plugin.renderer.rays` use. Matrices calibrated with pixel centres at *integer*
  coordinates (classic OpenCV, DTU) are read with ``integer_pixel_centers=True``, which adds ``0.5``
  to the principal point.
- OpenCV camera axes: +X right, +Y down, +Z forward. PyTorch3D: +X left, +Y up, +Z forward
  (row-vector convention ``X_view = X_world @ R + T``). OpenGL / Blender / Kaolin: +X right,
  +Y up, looking down -Z.
- DTU / IDR / NeuS: ``world_mat = K [R | t]`` (3x4 or 4x4, pixel units) and ``scale_mat`` with
  ``X_world = scale_mat @ X_sphere`` for points ``X_sphere`` of the unit sphere.
- Reference DVR: ``camera_mat @ world_mat @ scale_mat @ X = (x d, y d, d, 1)``, where ``(x, y)`` is
  the image position in [-1, 1] (``x = 2u/W - 1``, ``y = 2v/H - 1``, rows downwards) and ``d`` the
  z-depth.
- Depth everywhere is camera z-depth in the units of the frame the cameras live in (the same
  quantity as ``MeshRasterizer``'s ``zbuf``).

Precision: PyTorch3D's transforms run in float32, so cameras default to float32. All conversions are
computed in float64 internally; pass ``dtype=torch.float64`` to keep float64 parameters (for
:func:`project_points` and round trips) but not to render with PyTorch3D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from pytorch3d.renderer.cameras import CamerasBase, PerspectiveCameras
from pytorch3d.utils import (
    cameras_from_opencv_projection,
    opencv_from_cameras_projection,
)

from .._optional import importable
from ..renderer.rays import ndc_to_pixels

TensorLike = Union[torch.Tensor, np.ndarray, Sequence[Any], float]
ImageSizeLike = Union[int, Sequence[int], torch.Tensor, np.ndarray]
Device = Union[str, torch.device]

# OpenCV camera axes (x right, y down, z forward) <-> OpenGL / Blender / Kaolin camera axes
# (x right, y up, looking down -z): flip y and z.
OPENCV_TO_OPENGL = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))

__all__ = [
    "KaolinPinholeParameters",
    "OPENCV_TO_OPENGL",
    "blender_from_opencv",
    "cameras_from_blender",
    "cameras_from_dtu",
    "cameras_from_dvr",
    "cameras_from_kaolin",
    "cameras_from_opencv",
    "decompose_projection_matrix",
    "dtu_to_world",
    "dvr_from_opencv",
    "intrinsics_from_fov",
    "kaolin_available",
    "kaolin_from_cameras",
    "kaolin_from_opencv",
    "opencv_from_blender",
    "opencv_from_cameras",
    "opencv_from_dtu",
    "opencv_from_dvr",
    "opencv_from_kaolin",
    "project_kaolin",
    "project_opencv",
    "project_points",
    "rq_decomposition",
    "to_kaolin_camera",
]


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _to_tensor(
    value: TensorLike, name: str, *, dtype: torch.dtype = torch.float64, device: Device = None
) -> torch.Tensor:
    """A float tensor from a tensor / array / sequence, checked to be finite."""
    try:
        tensor = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} could not be converted to a tensor: {error}") from error
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}.")
    tensor = tensor.to(dtype)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf).")
    return tensor


def _batched(value: TensorLike, name: str, shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
    """A `(N, *shape)` tensor from a `(*shape)` or `(N, *shape)` input."""
    tensor = _to_tensor(value, name, **kwargs)
    if tuple(tensor.shape) == shape:
        return tensor[None]
    if tensor.dim() == len(shape) + 1 and tuple(tensor.shape[1:]) == shape:
        if tensor.shape[0] == 0:
            raise ValueError(f"{name} holds no cameras (batch size 0).")
        return tensor
    dims = ", ".join(str(s) for s in shape)
    raise ValueError(f"{name} must have shape ({dims}) or (N, {dims}), got {tuple(tensor.shape)}.")


def _broadcast(*tensors: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Broadcast batch dimensions of size 1 to the common batch size ``N``."""
    sizes = {t.shape[0] for t in tensors}
    batch = max(sizes)
    if not sizes <= {1, batch}:
        listing = ", ".join(f"{n}: {t.shape[0]}" for n, t in zip(names, tensors, strict=True))
        raise ValueError(f"Batch sizes must agree or be 1, got {listing}.")
    return tuple(t.expand(batch, *t.shape[1:]) for t in tensors)


def _image_sizes(image_size: ImageSizeLike, batch: int, *, device: Device = None) -> torch.Tensor:
    """`(N, 2)` float64 ``(H, W)`` rows from an int, an ``(H, W)`` pair or an `(N, 2)` tensor."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        sizes = torch.tensor([[int(image_size), int(image_size)]], dtype=torch.float64)
    else:
        sizes = _to_tensor(image_size, "image_size")
        if sizes.shape == (2,):
            sizes = sizes[None]
        if sizes.dim() != 2 or sizes.shape[1] != 2:
            raise ValueError(
                f"image_size must be an int, (H, W) or (N, 2), got shape {tuple(sizes.shape)}."
            )
    if bool((sizes < 1).any()) or bool((sizes != sizes.round()).any()):
        raise ValueError(f"image_size must hold positive integers, got {sizes.tolist()}.")
    if sizes.shape[0] not in (1, batch):
        raise ValueError(f"image_size has {sizes.shape[0]} rows for {batch} cameras.")
    return sizes.expand(batch, 2).to(device)


def _check_rotations(R: torch.Tensor, name: str = "R", *, atol: float = 1e-4) -> None:
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    err = (R @ R.transpose(-1, -2) - eye).abs().amax()
    if float(err) > atol:
        raise ValueError(
            f"{name} must hold rotation matrices (R R^T = I); off by {float(err):.3g}."
        )
    if bool((torch.linalg.det(R) < 0).any()):
        raise ValueError(f"{name} must hold proper rotations (det = +1); found det = -1.")


def _check_intrinsics(K: torch.Tensor, *, max_skew: float) -> torch.Tensor:
    """Validate `(N, 3, 3)` intrinsics and return them normalised so that ``K[2, 2] = 1``."""
    if bool((K[:, 2, 2].abs() < 1e-12).any()):
        raise ValueError("K[2, 2] must be non-zero.")
    K = K / K[:, 2:3, 2:3]
    lower = torch.stack([K[:, 1, 0], K[:, 2, 0], K[:, 2, 1]], dim=-1)
    if bool((lower.abs() > 1e-9 * K[:, :2, :2].abs().amax(dim=(1, 2), keepdim=True)[:, 0]).any()):
        raise ValueError("K must be upper triangular ([[fx, s, cx], [0, fy, cy], [0, 0, 1]]).")
    if bool((K[:, 0, 0] <= 0).any()) or bool((K[:, 1, 1] <= 0).any()):
        raise ValueError("K must have positive focal lengths fx = K[0, 0] and fy = K[1, 1].")
    skew = K[:, 0, 1].abs().amax()
    if float(skew) > max_skew:
        raise ValueError(
            f"K has a skew of {float(skew):.3g} px (K[0, 1]); PyTorch3D's PerspectiveCameras has "
            f"no skew parameter. Pass a larger max_skew (now {max_skew}) to drop it."
        )
    return K


def _homogeneous_4x4(matrix: torch.Tensor) -> torch.Tensor:
    """`(N, 4, 4)` from `(N, 3, 4)` (appending ``[0, 0, 0, 1]``) or `(N, 4, 4)`."""
    if matrix.shape[-2] == 4:
        return matrix
    bottom = torch.zeros_like(matrix[:, :1, :])
    bottom[:, 0, 3] = 1.0
    return torch.cat([matrix, bottom], dim=1)


def _matrices_3x4_or_4x4(value: TensorLike, name: str) -> torch.Tensor:
    tensor = _to_tensor(value, name)
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[-1] != 4 or tensor.shape[-2] not in (3, 4):
        raise ValueError(
            f"{name} must have shape (3, 4), (4, 4), (N, 3, 4) or (N, 4, 4), "
            f"got {tuple(torch.as_tensor(value).shape)}."
        )
    return tensor


# --------------------------------------------------------------------------------------------
# OpenCV <-> PyTorch3D
# --------------------------------------------------------------------------------------------


def cameras_from_opencv(
    R: TensorLike,
    tvec: TensorLike,
    K: TensorLike,
    image_size: ImageSizeLike,
    *,
    integer_pixel_centers: bool = False,
    max_skew: float = 1e-2,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> PerspectiveCameras:
    """
    OpenCV cameras (``x_pix ~ K (R X + tvec)``) to PyTorch3D ``PerspectiveCameras`` (in NDC).

    Wraps :func:`pytorch3d.utils.cameras_from_opencv_projection` with input checks, batching,
    the pixel-centre convention and the output dtype.

    Args:
        R: `(3, 3)` or `(N, 3, 3)` world-to-camera rotations (OpenCV axes).
        tvec: `(3,)` or `(N, 3)` translations.
        K: `(3, 3)` or `(N, 3, 3)` intrinsics in pixels (normalised to ``K[2, 2] = 1``); a skew
            ``K[0, 1]`` up to ``max_skew`` pixels is dropped.
        image_size: ``(H, W)``, an int, or `(N, 2)` rows of ``(H, W)``.
        integer_pixel_centers: ``True`` when ``K`` puts the centre of the top-left pixel at
            ``(0, 0)`` (classic OpenCV / DTU); ``False`` (default) when it is at ``(0.5, 0.5)``.
        max_skew: the largest ``|K[0, 1]|`` (pixels) accepted.
        dtype: dtype of the returned camera parameters (PyTorch3D renders in float32).
        device: device of the returned cameras (default: that of ``R``).

    Returns:
        A batch of ``N`` ``PerspectiveCameras`` with ``image_size`` set.
    """
    R_ = _batched(R, "R", (3, 3))
    t_ = _to_tensor(tvec, "tvec")
    if t_.dim() >= 1 and t_.shape[-1] == 1 and t_.dim() in (2, 3) and t_.shape[-2] == 3:
        t_ = t_[..., 0]
    t_ = _batched(t_, "tvec", (3,))
    K_ = _batched(K, "K", (3, 3))
    R_, t_, K_ = _broadcast(R_, t_, K_, names=("R", "tvec", "K"))
    _check_rotations(R_)
    K_ = _check_intrinsics(K_, max_skew=max_skew).clone()
    if integer_pixel_centers:
        K_[:, :2, 2] = K_[:, :2, 2] + 0.5
    sizes = _image_sizes(image_size, R_.shape[0], device=R_.device)
    cams = cameras_from_opencv_projection(R_, t_, K_, sizes)
    device = device if device is not None else R_.device
    return PerspectiveCameras(
        R=cams.R.to(dtype),
        T=cams.T.to(dtype),
        focal_length=cams.focal_length.to(dtype),
        principal_point=cams.principal_point.to(dtype),
        image_size=sizes.round().long(),
        device=device,
    )


def _camera_image_sizes(cameras: CamerasBase, image_size: Optional[ImageSizeLike]) -> torch.Tensor:
    if image_size is None:
        image_size = cameras.get_image_size()
        if image_size is None:
            raise ValueError("The cameras carry no image_size; pass image_size=(H, W).")
    return _image_sizes(image_size, len(cameras), device=cameras.device)


def opencv_from_cameras(
    cameras: CamerasBase,
    *,
    image_size: Optional[ImageSizeLike] = None,
    integer_pixel_centers: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    PyTorch3D perspective cameras to OpenCV ``R, tvec, K`` (float64).

    ``PerspectiveCameras`` in NDC go through :func:`pytorch3d.utils.opencv_from_cameras_projection`
    (exact). Any other perspective camera (``FoVPerspectiveCameras``, screen-space
    ``PerspectiveCameras``) is converted by decomposing its world-to-pixel projection matrix,
    which PyTorch3D computes in float32.

    Args:
        cameras: a batch of ``N`` perspective cameras.
        image_size: ``(H, W)``, an int or `(N, 2)`; defaults to ``cameras.image_size``.
        integer_pixel_centers: return ``K`` with pixel centres at integer coordinates.

    Returns:
        R: `(N, 3, 3)`, tvec: `(N, 3)`, K: `(N, 3, 3)`, all float64.
    """
    if not isinstance(cameras, CamerasBase):
        raise ValueError(f"cameras must be a pytorch3d CamerasBase, got {type(cameras).__name__}.")
    sizes = _camera_image_sizes(cameras, image_size)
    if isinstance(cameras, PerspectiveCameras) and cameras.in_ndc():
        n = len(cameras)
        focal = cameras.focal_length.to(torch.float64).expand(n, -1)
        if focal.shape[-1] == 1:
            focal = focal.expand(n, 2)
        proxy = PerspectiveCameras(
            R=_to_tensor(cameras.R, "cameras.R"),
            T=_to_tensor(cameras.T, "cameras.T"),
            focal_length=_to_tensor(focal, "cameras.focal_length"),
            principal_point=_to_tensor(cameras.principal_point, "cameras.principal_point"),
            device=cameras.device,
        )
        R, tvec, K = opencv_from_cameras_projection(proxy, sizes)
    else:
        to_ndc = cameras.get_full_projection_transform().compose(cameras.get_ndc_camera_transform())
        M = to_ndc.get_matrix().to(torch.float64).transpose(1, 2)  # column-vector convention
        if bool((M[:, 3, :3].abs().amax(dim=-1) < 1e-9).any()):
            raise ValueError("Only perspective cameras can be converted to OpenCV.")
        height, width = sizes[:, 0:1], sizes[:, 1:2]
        scale = torch.minimum(height, width)
        rows_x, rows_y, rows_w = M[:, 0], M[:, 1], M[:, 3]
        P = torch.stack(
            [
                0.5 * width * rows_w - 0.5 * scale * rows_x,
                0.5 * height * rows_w - 0.5 * scale * rows_y,
                rows_w,
            ],
            dim=1,
        )
        K, R, tvec, _ = decompose_projection_matrix(P)
    if integer_pixel_centers:
        K = K.clone()
        K[:, :2, 2] = K[:, :2, 2] - 0.5
    return R, tvec, K


def project_opencv(
    points: TensorLike, R: TensorLike, tvec: TensorLike, K: TensorLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Project world points with OpenCV cameras (float64, no distortion).

    Args:
        points: `(P, 3)` or `(N, P, 3)` world points.
        R, tvec, K: `(N, 3, 3)`, `(N, 3)`, `(N, 3, 3)` (or unbatched).

    Returns:
        pixels: `(N, P, 2)` in ``K``'s pixel convention.
        depth: `(N, P)` camera z-depth.
    """
    R_ = _batched(R, "R", (3, 3))
    t_ = _batched(tvec, "tvec", (3,))
    K_ = _batched(K, "K", (3, 3))
    R_, t_, K_ = _broadcast(R_, t_, K_, names=("R", "tvec", "K"))
    X = _to_tensor(points, "points")
    if X.dim() == 2:
        X = X[None].expand(R_.shape[0], -1, -1)
    if X.dim() != 3 or X.shape[-1] != 3 or X.shape[0] != R_.shape[0]:
        raise ValueError(f"points must have shape (P, 3) or (N, P, 3), got {tuple(X.shape)}.")
    cam = X @ R_.transpose(1, 2) + t_[:, None]
    proj = cam @ K_.transpose(1, 2)
    return proj[..., :2] / proj[..., 2:3], cam[..., 2]


def project_points(
    cameras: CamerasBase,
    points: torch.Tensor,
    *,
    image_size: Optional[ImageSizeLike] = None,
    integer_pixel_centers: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Project world points to continuous pixel coordinates with PyTorch3D cameras.

    For NDC ``PerspectiveCameras`` the projection is evaluated explicitly, in the dtype of the
    camera parameters (so float64 cameras give float64 pixels), with PyTorch3D's formula
    ``X_view = X @ R + T``, ``x_ndc = fx X_view.x / z + px``, ``y_ndc = fy X_view.y / z + py``;
    other cameras use ``cameras.transform_points_ndc``. NDC goes to pixels with
    :func:`dvr_plugin.renderer.rays.ndc_to_pixels`, i.e. the same pixels as
    ``transform_points_screen``.

    Args:
        cameras: ``N`` cameras.
        points: `(P, 3)` or `(N, P, 3)` world points.
        image_size: ``(H, W)``; defaults to ``cameras.image_size``.
        integer_pixel_centers: return coordinates with pixel centres at integers.

    Returns:
        pixels: `(N, P, 2)` ``(u, v)``.
        depth: `(N, P)` camera z-depth.
    """
    if not isinstance(cameras, CamerasBase):
        raise ValueError(f"cameras must be a pytorch3d CamerasBase, got {type(cameras).__name__}.")
    n = len(cameras)
    if not isinstance(points, torch.Tensor):
        points = torch.as_tensor(points)
    if points.dim() == 2:
        points = points[None].expand(n, -1, -1)
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != n:
        raise ValueError(f"points must have shape (P, 3) or (N, P, 3), got {tuple(points.shape)}.")
    sizes = _camera_image_sizes(cameras, image_size)
    if isinstance(cameras, PerspectiveCameras) and cameras.in_ndc():
        dtype = cameras.R.dtype
        X = points.to(dtype)
        view = X @ cameras.R + cameras.T[:, None]
        focal = cameras.focal_length.to(dtype).expand(n, -1)
        principal = cameras.principal_point.to(dtype).expand(n, -1)
        ndc = view[..., :2] / view[..., 2:3] * focal[:, None] + principal[:, None]
        depth = view[..., 2]
    else:
        dtype = torch.float32
        X = points.to(dtype)
        ndc = cameras.transform_points_ndc(X)[..., :2]
        depth = cameras.get_world_to_view_transform().transform_points(X)[..., 2]
    pixels = torch.stack(
        [ndc_to_pixels(ndc[i], tuple(int(s) for s in sizes[i].tolist())) for i in range(n)]
    )
    if integer_pixel_centers:
        pixels = pixels - 0.5
    return pixels, depth


# --------------------------------------------------------------------------------------------
# Projection matrices: RQ decomposition, DTU / IDR / NeuS
# --------------------------------------------------------------------------------------------


def rq_decomposition(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    RQ decomposition ``matrix = upper @ orthogonal`` with a positive diagonal in ``upper``.

    Computed from the QR decomposition of the row-reversed transpose: with ``J`` the reversal
    permutation, ``(J M)^T = Q R`` gives ``M = (J R^T J) (J Q^T)``, where ``J R^T J`` is upper
    triangular. Column / row signs are then flipped in pairs so that the diagonal is positive.

    Args:
        matrix: `(..., 3, 3)` (any square size works).

    Returns:
        upper: `(..., 3, 3)` upper triangular with positive diagonal.
        orthogonal: `(..., 3, 3)` orthogonal (``det = sign(det(matrix))``).
    """
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"matrix must have shape (..., n, n), got {tuple(matrix.shape)}.")
    flipped = torch.flip(matrix, dims=(-2,)).transpose(-1, -2)
    q, r = torch.linalg.qr(flipped)
    upper = torch.flip(r.transpose(-1, -2), dims=(-2, -1))
    orthogonal = torch.flip(q.transpose(-1, -2), dims=(-2,))
    signs = torch.sign(torch.diagonal(upper, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    upper = upper * signs[..., None, :]
    orthogonal = orthogonal * signs[..., :, None]
    return upper, orthogonal


def decompose_projection_matrix(
    P: TensorLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Split projection matrices into ``P = scale * K [R | t]``.

    ``K`` is upper triangular with ``K[2, 2] = 1`` and a positive diagonal, ``R`` a proper
    rotation (``det = +1``); ``scale`` carries the projective scale and sign, so the third row of
    ``P`` applied to a point gives ``scale * z`` with ``z`` the camera z-depth.

    Args:
        P: `(3, 4)`, `(4, 4)`, `(N, 3, 4)` or `(N, 4, 4)`; only the first three rows are used.

    Returns:
        K: `(N, 3, 3)`, R: `(N, 3, 3)`, t: `(N, 3)`, scale: `(N,)`, all float64.
    """
    P_ = _matrices_3x4_or_4x4(P, "P")[:, :3]
    M, p4 = P_[:, :, :3], P_[:, :, 3]
    det = torch.linalg.det(M)
    norm = M.abs().amax(dim=(1, 2)) ** 3
    if bool((det.abs() <= 1e-12 * norm).any()) or bool((norm == 0).any()):
        raise ValueError("The 3x3 part of P is singular; it is not a perspective projection.")
    sign = torch.sign(det)
    M = M * sign[:, None, None]
    p4 = p4 * sign[:, None]
    K, R = rq_decomposition(M)
    t = torch.linalg.solve(K, p4[..., None])[..., 0]
    scale = K[:, 2, 2].clone()
    K = K / scale[:, None, None]
    return K, R, t, scale * sign


def dtu_to_world(scale_mat: TensorLike, *, object_radius: float = 0.5) -> torch.Tensor:
    """
    The `(4, 4)` map from the normalised object frame to DTU world coordinates.

    ``scale_mat`` maps the unit sphere to the object in world coordinates; the normalised frame puts
    that sphere at radius ``object_radius`` (0.5 by default, i.e. inside DVR's unit cube):
    ``X_world = scale_mat @ diag(1/r, 1/r, 1/r, 1) @ X_normalised``.

    Args:
        scale_mat: `(4, 4)`.
        object_radius: radius of the scale_mat sphere in the normalised frame.

    Returns:
        `(4, 4)` float64.
    """
    S = _to_tensor(scale_mat, "scale_mat")
    if S.shape != (4, 4):
        raise ValueError(f"scale_mat must have shape (4, 4), got {tuple(S.shape)}.")
    if not object_radius > 0:
        raise ValueError(f"object_radius must be positive, got {object_radius}.")
    shrink = torch.diag(S.new_tensor([1.0 / object_radius] * 3 + [1.0]))
    return S @ shrink


def opencv_from_dtu(
    world_mat: TensorLike,
    scale_mat: Optional[TensorLike] = None,
    *,
    object_radius: float = 0.5,
    max_skew: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    DTU / IDR / NeuS ``world_mat`` (``K [R | t]`` in pixels) + ``scale_mat`` to OpenCV cameras
    acting on the normalised object frame (see :func:`dtu_to_world`).

    Args:
        world_mat: `(3, 4)`, `(4, 4)` or batched `(N, 3|4, 4)` projection matrices.
        scale_mat: `(4, 4)` shared by all views (identity when ``None``, then
            ``object_radius`` still rescales world coordinates).
        object_radius: radius of the scale_mat sphere in the normalised frame.
        max_skew: the largest ``|K[0, 1]|`` (pixels) accepted; DTU has about 1e-4.

    Returns:
        K: `(N, 3, 3)`, R: `(N, 3, 3)`, t: `(N, 3)` (float64), with ``K[R|t] X_normalised`` equal
        (projectively) to ``world_mat @ X_world``; pixels in ``world_mat``'s own convention.
    """
    P = _matrices_3x4_or_4x4(world_mat, "world_mat")[:, :3]
    to_world = dtu_to_world(
        torch.eye(4, dtype=torch.float64) if scale_mat is None else scale_mat,
        object_radius=object_radius,
    ).to(P.device)
    K, R, t, _ = decompose_projection_matrix(P @ to_world)
    _check_intrinsics(K, max_skew=max_skew)
    K = K.clone()
    K[:, 0, 1] = 0.0
    return K, R, t


def cameras_from_dtu(
    world_mat: TensorLike,
    scale_mat: Optional[TensorLike],
    image_size: ImageSizeLike,
    *,
    object_radius: float = 0.5,
    integer_pixel_centers: bool = True,
    max_skew: float = 1e-2,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> PerspectiveCameras:
    """
    DTU ``world_mat`` / ``scale_mat`` to ``PerspectiveCameras`` in the normalised object frame.

    DTU's calibration puts pixel centres at integer coordinates, hence
    ``integer_pixel_centers=True`` by default. Arguments as in :func:`opencv_from_dtu` and
    :func:`cameras_from_opencv`.
    """
    K, R, t = opencv_from_dtu(world_mat, scale_mat, object_radius=object_radius, max_skew=max_skew)
    return cameras_from_opencv(
        R,
        t,
        K,
        image_size,
        integer_pixel_centers=integer_pixel_centers,
        dtype=dtype,
        device=device,
    )


# --------------------------------------------------------------------------------------------
# Blender / NeRF-synthetic (camera-to-world, OpenGL axes)
# --------------------------------------------------------------------------------------------


def opencv_from_blender(
    c2w: TensorLike, *, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Blender / NeRF camera-to-world matrices (OpenGL camera axes) to OpenCV ``R, t``.

    The world is uniformly scaled by ``scale`` first (``X_new = scale * X_blender``), e.g.
    ``1/3`` maps NeRF-synthetic's ``[-1.5, 1.5]^3`` scene box onto the unit cube.
    ``R = (R_c2w diag(1, -1, -1))^T`` and ``t = -R (scale * c)`` with ``c`` the camera centre.

    Args:
        c2w: `(3, 4)`, `(4, 4)` or `(N, 3|4, 4)`.
        scale: world scale factor (positive).

    Returns:
        R: `(N, 3, 3)`, t: `(N, 3)` (float64).
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    M = _matrices_3x4_or_4x4(c2w, "c2w")
    rot = M[:, :3, :3]
    _check_rotations(rot, "the rotation part of c2w")
    flip = torch.tensor(OPENCV_TO_OPENGL, dtype=M.dtype, device=M.device)
    R = (rot @ flip).transpose(1, 2)
    centre = M[:, :3, 3] * scale
    t = -(R @ centre[..., None])[..., 0]
    return R, t


def blender_from_opencv(R: TensorLike, tvec: TensorLike, *, scale: float = 1.0) -> torch.Tensor:
    """
    The inverse of :func:`opencv_from_blender`.

    Args:
        R: `(N, 3, 3)`; tvec: `(N, 3)`.
        scale: the world scale that :func:`opencv_from_blender` applied.

    Returns:
        `(N, 4, 4)` camera-to-world matrices in Blender / OpenGL camera axes (float64).
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    R_ = _batched(R, "R", (3, 3))
    t_ = _batched(tvec, "tvec", (3,))
    R_, t_ = _broadcast(R_, t_, names=("R", "tvec"))
    _check_rotations(R_)
    flip = torch.tensor(OPENCV_TO_OPENGL, dtype=R_.dtype, device=R_.device)
    c2w = torch.zeros(R_.shape[0], 4, 4, dtype=R_.dtype, device=R_.device)
    c2w[:, :3, :3] = R_.transpose(1, 2) @ flip
    c2w[:, :3, 3] = -(R_.transpose(1, 2) @ t_[..., None])[..., 0] / scale
    c2w[:, 3, 3] = 1.0
    return c2w


def intrinsics_from_fov(
    fov_x: float, image_size: ImageSizeLike, *, fov_y: Optional[float] = None
) -> torch.Tensor:
    """
    Pinhole intrinsics from a horizontal field of view (NeRF's ``camera_angle_x``), in radians.

    ``fx = W / (2 tan(fov_x / 2))``, ``fy = fx`` unless ``fov_y`` is given, and the principal
    point at the image centre ``(W/2, H/2)`` (pixel-corner convention).

    Returns:
        `(3, 3)` float64.
    """
    if not 0 < fov_x < math.pi:
        raise ValueError(f"fov_x must be in (0, pi) radians, got {fov_x}.")
    height, width = (int(s) for s in _image_sizes(image_size, 1)[0].tolist())
    fx = 0.5 * width / math.tan(0.5 * fov_x)
    if fov_y is None:
        fy = fx
    else:
        if not 0 < fov_y < math.pi:
            raise ValueError(f"fov_y must be in (0, pi) radians, got {fov_y}.")
        fy = 0.5 * height / math.tan(0.5 * fov_y)
    return torch.tensor(
        [[fx, 0.0, 0.5 * width], [0.0, fy, 0.5 * height], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def cameras_from_blender(
    c2w: TensorLike,
    image_size: ImageSizeLike,
    *,
    fov_x: Optional[float] = None,
    K: Optional[TensorLike] = None,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> PerspectiveCameras:
    """
    Blender / NeRF-synthetic cameras to ``PerspectiveCameras`` in the frame scaled by ``scale``.

    Args:
        c2w: `(N, 4, 4)` camera-to-world (OpenGL camera axes).
        image_size: ``(H, W)``.
        fov_x: horizontal field of view in radians (``camera_angle_x``), or
        K: `(3, 3)` / `(N, 3, 3)` pixel intrinsics (pixel-corner convention).
        scale: world scale factor, see :func:`opencv_from_blender`.
    """
    if (fov_x is None) == (K is None):
        raise ValueError("Pass exactly one of fov_x and K.")
    R, t = opencv_from_blender(c2w, scale=scale)
    intrinsics = intrinsics_from_fov(fov_x, image_size) if K is None else K
    return cameras_from_opencv(R, t, intrinsics, image_size, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Reference DVR (camera_mat, world_mat, scale_mat)
# --------------------------------------------------------------------------------------------


def _dvr_to_pixels(sizes: torch.Tensor) -> torch.Tensor:
    """`(N, 3, 3)` map from DVR image coordinates in [-1, 1] to corner-convention pixels."""
    n = sizes.shape[0]
    A = torch.zeros(n, 3, 3, dtype=torch.float64, device=sizes.device)
    A[:, 0, 0] = A[:, 0, 2] = 0.5 * sizes[:, 1]
    A[:, 1, 1] = A[:, 1, 2] = 0.5 * sizes[:, 0]
    A[:, 2, 2] = 1.0
    return A


def opencv_from_dvr(
    camera_mat: TensorLike,
    world_mat: TensorLike,
    image_size: ImageSizeLike,
    *,
    scale_mat: Optional[TensorLike] = None,
    max_skew: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Reference-DVR cameras to OpenCV cameras acting on DVR's object frame.

    The reference maps an object-frame point ``X`` by
    ``camera_mat @ world_mat @ scale_mat @ X = (x d, y d, d, 1)``, where ``d`` is the depth stored
    in its depth maps and ``(x, y)`` the image position in [-1, 1] with ``x = 2u/W - 1``,
    ``y = 2v/H - 1`` (``(u, v)`` corner-convention pixels, rows downwards, as ``grid_sample``
    reads images). ``world_mat`` may be ``[R | t]`` (ShapeNet renderings) or a full pixel
    projection ``K [R | t]`` with ``camera_mat`` the pixel-to-[-1, 1] map (DTU); both are
    handled by decomposing ``diag-map @ camera_mat @ world_mat @ scale_mat``.

    Args:
        camera_mat: `(4, 4)` or `(N, 4, 4)`.
        world_mat: `(4, 4)` / `(3, 4)` or batched.
        image_size: ``(H, W)`` or `(N, 2)`.
        scale_mat: `(4, 4)` or `(N, 4, 4)`, identity when ``None``.
        max_skew: the largest ``|K[0, 1]|`` (pixels) accepted.

    Returns:
        K: `(N, 3, 3)` (pixel-corner convention), R: `(N, 3, 3)`, t: `(N, 3)`,
        depth_scale: `(N,)` with ``z = d / depth_scale`` converting reference depth ``d`` to
        z-depth in the object frame (all float64).
    """
    C = _batched(camera_mat, "camera_mat", (4, 4))
    W = _homogeneous_4x4(_matrices_3x4_or_4x4(world_mat, "world_mat"))
    S = (
        torch.eye(4, dtype=torch.float64)[None]
        if scale_mat is None
        else _batched(scale_mat, "scale_mat", (4, 4))
    )
    C, W, S = _broadcast(C, W, S, names=("camera_mat", "world_mat", "scale_mat"))
    M = C @ W @ S
    last = M[:, 3] / M[:, 3, 3:4].clamp_min(1e-300)
    if bool((M[:, 3, 3].abs() < 1e-12).any()) or float((last[:, :3]).abs().amax()) > 1e-6:
        raise ValueError(
            "camera_mat @ world_mat @ scale_mat must keep w = 1 (last row [0, 0, 0, 1])."
        )
    M = M / M[:, 3:4, 3:4]
    sizes = _image_sizes(image_size, M.shape[0], device=M.device)
    P = _dvr_to_pixels(sizes) @ M[:, :3]
    K, R, t, scale = decompose_projection_matrix(P)
    _check_intrinsics(K, max_skew=max_skew)
    K = K.clone()
    K[:, 0, 1] = 0.0
    return K, R, t, scale


def cameras_from_dvr(
    camera_mat: TensorLike,
    world_mat: TensorLike,
    image_size: ImageSizeLike,
    *,
    scale_mat: Optional[TensorLike] = None,
    max_skew: float = 1e-2,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> PerspectiveCameras:
    """Reference-DVR cameras to ``PerspectiveCameras`` in DVR's object frame (see
    :func:`opencv_from_dvr`)."""
    K, R, t, _ = opencv_from_dvr(
        camera_mat, world_mat, image_size, scale_mat=scale_mat, max_skew=max_skew
    )
    return cameras_from_opencv(R, t, K, image_size, dtype=dtype, device=device)


def dvr_from_opencv(
    R: TensorLike,
    tvec: TensorLike,
    K: TensorLike,
    image_size: ImageSizeLike,
    *,
    scale_mat: Optional[TensorLike] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    OpenCV cameras (pixel-corner ``K``) to reference-DVR ``camera_mat`` and ``world_mat``.

    ``camera_mat`` is the intrinsics in DVR's [-1, 1] image units and ``world_mat = [R | t]``
    (4x4). With a ``scale_mat`` (object frame to world), ``world_mat = [R | t] @ scale_mat^-1`` so
    that ``camera_mat @ world_mat @ scale_mat`` acts on the object frame as ``K [R | t]`` does.

    Returns:
        camera_mat: `(N, 4, 4)`, world_mat: `(N, 4, 4)` (float64).
    """
    R_ = _batched(R, "R", (3, 3))
    t_ = _batched(tvec, "tvec", (3,))
    K_ = _batched(K, "K", (3, 3))
    R_, t_, K_ = _broadcast(R_, t_, K_, names=("R", "tvec", "K"))
    _check_rotations(R_)
    K_ = K_ / K_[:, 2:3, 2:3]
    n = R_.shape[0]
    sizes = _image_sizes(image_size, n, device=R_.device)
    camera_mat = torch.eye(4, dtype=torch.float64, device=R_.device).repeat(n, 1, 1)
    camera_mat[:, :3, :3] = torch.linalg.inv(_dvr_to_pixels(sizes)) @ K_
    world_mat = torch.eye(4, dtype=torch.float64, device=R_.device).repeat(n, 1, 1)
    world_mat[:, :3, :3] = R_
    world_mat[:, :3, 3] = t_
    if scale_mat is not None:
        S = _batched(scale_mat, "scale_mat", (4, 4)).to(R_.device)
        world_mat = world_mat @ torch.linalg.inv(S)
    return camera_mat, world_mat


# --------------------------------------------------------------------------------------------
# Kaolin
# --------------------------------------------------------------------------------------------


@dataclass
class KaolinPinholeParameters:
    """
    The parameters of a batch of Kaolin pinhole cameras (``kaolin.render.camera.Camera``).

    Kaolin's view matrix maps world points to camera space with OpenGL axes (+X right, +Y up,
    looking down -Z); its intrinsics are focal lengths in pixels and the principal point as an
    offset ``(x0, y0)`` from the image centre, with ``y0`` measured upwards. In pixel-corner
    coordinates (rows downwards): ``cx = W/2 + x0`` and ``cy = H/2 - y0``.

    Attributes:
        view_matrix: `(N, 4, 4)` world-to-camera.
        width, height: image size in pixels.
        focal_x, focal_y, x0, y0: `(N,)`.
    """

    view_matrix: torch.Tensor
    width: int
    height: int
    focal_x: torch.Tensor
    focal_y: torch.Tensor
    x0: torch.Tensor
    y0: torch.Tensor

    def __len__(self) -> int:
        return int(self.view_matrix.shape[0])


def kaolin_available() -> bool:
    """Whether ``kaolin.render.camera`` can be imported."""
    return importable("kaolin.render.camera")


def kaolin_from_opencv(
    R: TensorLike,
    tvec: TensorLike,
    K: TensorLike,
    image_size: ImageSizeLike,
    *,
    max_skew: float = 1e-2,
) -> KaolinPinholeParameters:
    """
    OpenCV cameras (pixel-corner ``K``) to Kaolin pinhole parameters.

    ``view_matrix = diag(1, -1, -1, 1) [R | t]``, ``x0 = cx - W/2``, ``y0 = H/2 - cy``.
    """
    R_ = _batched(R, "R", (3, 3))
    t_ = _batched(tvec, "tvec", (3,))
    K_ = _batched(K, "K", (3, 3))
    R_, t_, K_ = _broadcast(R_, t_, K_, names=("R", "tvec", "K"))
    _check_rotations(R_)
    K_ = _check_intrinsics(K_, max_skew=max_skew)
    sizes = _image_sizes(image_size, R_.shape[0])
    if bool((sizes != sizes[:1]).any()):
        raise ValueError("Kaolin cameras of one batch share one image size.")
    height, width = (int(s) for s in sizes[0].tolist())
    flip = torch.tensor(OPENCV_TO_OPENGL, dtype=R_.dtype, device=R_.device)
    view = torch.eye(4, dtype=torch.float64, device=R_.device).repeat(R_.shape[0], 1, 1)
    view[:, :3, :3] = flip @ R_
    view[:, :3, 3] = (flip @ t_[..., None])[..., 0]
    return KaolinPinholeParameters(
        view_matrix=view,
        width=width,
        height=height,
        focal_x=K_[:, 0, 0].clone(),
        focal_y=K_[:, 1, 1].clone(),
        x0=K_[:, 0, 2] - 0.5 * width,
        y0=0.5 * height - K_[:, 1, 2],
    )


def _kaolin_parameters(camera: Any) -> KaolinPinholeParameters:
    """Parameters from a ``KaolinPinholeParameters`` or a real Kaolin pinhole ``Camera``."""
    if isinstance(camera, KaolinPinholeParameters):
        return camera
    lens = getattr(camera, "lens_type", None)
    if lens is None or not callable(getattr(camera, "view_matrix", None)):
        raise ValueError(
            "camera must be KaolinPinholeParameters or a kaolin.render.camera.Camera, "
            f"got {type(camera).__name__}."
        )
    if lens != "pinhole":
        raise ValueError(f"Only Kaolin pinhole cameras can be converted, got lens {lens!r}.")
    n = len(camera)

    def per_camera(value: Any) -> torch.Tensor:
        return _to_tensor(value, "kaolin parameter").reshape(-1).expand(n)

    return KaolinPinholeParameters(
        view_matrix=_to_tensor(camera.view_matrix(), "view_matrix").reshape(n, 4, 4),
        width=int(camera.width),
        height=int(camera.height),
        focal_x=per_camera(camera.focal_x),
        focal_y=per_camera(camera.focal_y),
        x0=per_camera(camera.x0),
        y0=per_camera(camera.y0),
    )


def opencv_from_kaolin(
    camera: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """
    Kaolin pinhole cameras (``KaolinPinholeParameters`` or a real ``Camera``) to OpenCV.

    Returns:
        R: `(N, 3, 3)`, tvec: `(N, 3)`, K: `(N, 3, 3)` (pixel-corner, float64), ``(H, W)``.
    """
    params = _kaolin_parameters(camera)
    view = _batched(params.view_matrix, "view_matrix", (4, 4))
    flip = torch.tensor(OPENCV_TO_OPENGL, dtype=view.dtype, device=view.device)
    R = flip @ view[:, :3, :3]
    t = (flip @ view[:, :3, 3:4])[..., 0]
    _check_rotations(R, "the rotation part of view_matrix")
    n = view.shape[0]
    K = torch.zeros(n, 3, 3, dtype=torch.float64, device=view.device)
    K[:, 0, 0] = _to_tensor(params.focal_x, "focal_x").expand(n)
    K[:, 1, 1] = _to_tensor(params.focal_y, "focal_y").expand(n)
    K[:, 0, 2] = 0.5 * params.width + _to_tensor(params.x0, "x0").expand(n)
    K[:, 1, 2] = 0.5 * params.height - _to_tensor(params.y0, "y0").expand(n)
    K[:, 2, 2] = 1.0
    return R, t, K, (int(params.height), int(params.width))


def project_kaolin(camera: Any, points: TensorLike) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Kaolin's pinhole projection, written out (float64): view matrix, then Kaolin's perspective
    matrix ``[[fx, 0, -x0, 0], [0, fy, -y0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]`` and its default NDC
    matrix for a centred canvas (``w = -z``), then NDC (y up) to pixel-corner coordinates,
    ``u = (x_ndc + 1) W / 2``, ``v = (1 - y_ndc) H / 2``.

    Args:
        camera: ``KaolinPinholeParameters`` or a Kaolin pinhole ``Camera``.
        points: `(P, 3)` or `(N, P, 3)` world points.

    Returns:
        pixels: `(N, P, 2)`; depth: `(N, P)` positive distance along the viewing axis (``-z``).
    """
    params = _kaolin_parameters(camera)
    view = _batched(params.view_matrix, "view_matrix", (4, 4))
    n = view.shape[0]
    X = _to_tensor(points, "points", device=view.device)
    if X.dim() == 2:
        X = X[None].expand(n, -1, -1)
    if X.dim() != 3 or X.shape[-1] != 3 or X.shape[0] != n:
        raise ValueError(f"points must have shape (P, 3) or (N, P, 3), got {tuple(X.shape)}.")
    cam = X @ view[:, :3, :3].transpose(1, 2) + view[:, None, :3, 3]
    width, height = float(params.width), float(params.height)
    fx = _to_tensor(params.focal_x, "focal_x").expand(n)[:, None]
    fy = _to_tensor(params.focal_y, "focal_y").expand(n)[:, None]
    x0 = _to_tensor(params.x0, "x0").expand(n)[:, None]
    y0 = _to_tensor(params.y0, "y0").expand(n)[:, None]
    w = -cam[..., 2]
    x_ndc = (2.0 / width) * (fx * cam[..., 0] - x0 * cam[..., 2]) / w
    y_ndc = (2.0 / height) * (fy * cam[..., 1] - y0 * cam[..., 2]) / w
    pixels = torch.stack([(x_ndc + 1.0) * 0.5 * width, (1.0 - y_ndc) * 0.5 * height], dim=-1)
    return pixels, w


def kaolin_from_cameras(
    cameras: CamerasBase, *, image_size: Optional[ImageSizeLike] = None
) -> KaolinPinholeParameters:
    """PyTorch3D perspective cameras to Kaolin pinhole parameters (via OpenCV)."""
    R, t, K = opencv_from_cameras(cameras, image_size=image_size)
    sizes = _camera_image_sizes(cameras, image_size)
    return kaolin_from_opencv(R, t, K, sizes)


def cameras_from_kaolin(
    camera: Any, *, dtype: torch.dtype = torch.float32, device: Device = None
) -> PerspectiveCameras:
    """Kaolin pinhole cameras (parameters or a real ``Camera``) to ``PerspectiveCameras``."""
    R, t, K, size = opencv_from_kaolin(camera)
    return cameras_from_opencv(R, t, K, size, dtype=dtype, device=device)


def to_kaolin_camera(
    camera: Union[KaolinPinholeParameters, CamerasBase],
    *,
    near: float = 1e-2,
    far: float = 1e2,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Any:
    """
    Build a real ``kaolin.render.camera.Camera`` (imported lazily) from Kaolin parameters or
    PyTorch3D cameras; one Kaolin camera per view, concatenated with ``Camera.cat``.

    Raises:
        ImportError: when Kaolin is not installed (it only ships wheels for some torch versions);
            the conversion math itself is available without it (:func:`kaolin_from_opencv`,
            :func:`project_kaolin`).
    """
    try:
        from kaolin.render.camera import Camera
    except Exception as error:
        raise ImportError(
            "to_kaolin_camera needs Kaolin (kaolin.render.camera), which is not importable here "
            f"({error}). Use kaolin_from_opencv / project_kaolin for the same math without it."
        ) from error
    params = camera if isinstance(camera, KaolinPinholeParameters) else kaolin_from_cameras(camera)
    device = device if device is not None else params.view_matrix.device
    views = []
    for i in range(len(params)):
        views.append(
            Camera.from_args(
                view_matrix=params.view_matrix[i : i + 1].to(dtype),
                width=params.width,
                height=params.height,
                focal_x=float(params.focal_x[i]),
                focal_y=float(params.focal_y[i]),
                x0=float(params.x0[i]),
                y0=float(params.y0[i]),
                near=near,
                far=far,
                dtype=dtype,
                device=device,
            )
        )
    return views[0] if len(views) == 1 else Camera.cat(views)
