"""
Observed-region evaluation, after the DTU MVS benchmark's protocol: a camera rig that sees one
side of an object is not blamed for the other side.

- :func:`visible_points`: which points some camera sees, found by rasterising the mesh they
  lie on with PyTorch3D's ``MeshRasterizer`` and depth-testing them against its ``zbuf``;
  :func:`visibility_counts` gives the counts per point and per camera.
- :func:`evaluate_observed`: the Occupancy Networks distances and scores of
  :func:`dvr_plugin.metrics.mesh.evaluate_meshes`, with accuracy and precision taken over the
  predicted surface samples that some camera sees in the predicted mesh, and completeness and
  recall over the ground-truth samples that some camera sees in the ground-truth mesh.

Frames and units. Points, meshes and cameras given to these functions share one frame (e.g.
the data's world frame, in its units); visibility and the depth tolerance are computed there.
The distances returned by :func:`evaluate_observed` are in the evaluation frame of the
protocol: the ground truth's bounding box centred at the origin with longest side 1.

The visibility test. A point is seen by a camera when it projects inside the image, lies in
front of the camera (camera-space depth > 0), and its depth is within a tolerance of the
rasterised depth (``zbuf``, one face per pixel, back faces kept) of the pixel it falls in.
The pixel is the nearest one (the pixel containing the projection). Bilinear interpolation of
the ``zbuf`` would mix depths across silhouettes (background ``-1``) and occlusion boundaries
(front and back surfaces), producing depths that belong to no surface; the nearest pixel holds
a true surface depth, and the error of reading it at the pixel centre instead of at the exact
projection is covered by the slope term of the tolerance below.

The tolerance at a pixel is ``max(tolerance, slope)``:

- ``tolerance``: by default 0.5% of the longest side of the mesh's bounding box
  (:data:`DEFAULT_RELATIVE_TOLERANCE`), covering rasterisation round-off and thin features;
- ``slope = |dz/dx| + |dz/dy|``: the depth change across one pixel, each derivative the
  smaller one-sided difference to the two neighbouring pixels that hit a face. A surface point
  is at most half a pixel from its pixel's centre in each axis, where the planar depth differs
  by at most ``(|dz/dx| + |dz/dy|) / 2``; the slope term is twice that bound, for curvature.
  Taking the smaller one-sided difference keeps a depth jump at an occlusion boundary out of
  the estimate (one side of the pixel lies on its own surface), so occluded surfaces do not
  leak through it; at grazing angles the slope grows and the test stays true to the surface.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence

import torch
from pytorch3d.renderer import MeshRasterizer
from pytorch3d.renderer.cameras import CamerasBase
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
from pytorch3d.structures import Meshes

from .mesh import _seeded, meshes_unit_cube_transform, normalize_meshes, sample_surface
from .pointcloud import (
    EMPTY_VALUES,
    _normal_dots,
    harmonic_f_score,
    nearest_neighbor_distances,
    share_within,
)

#: Default depth tolerance as a share of the longest side of the mesh's bounding box (0.5%).
DEFAULT_RELATIVE_TOLERANCE = 0.005

#: Default number of cameras rasterised together.
DEFAULT_CAMERA_CHUNK = 8

#: Below this share of ground-truth samples seen, :func:`evaluate_observed` warns.
LOW_OBSERVED_FRACTION = 0.05

#: Faces crossing a perspective camera's plane are clipped at this share of the scene size.
_NEAR_CLIP_RELATIVE = 1e-4

#: The keys of :func:`evaluate_observed`, in order.
OBSERVED_KEYS: tuple[str, ...] = (
    "observed_accuracy",
    "observed_completeness",
    "observed_chamfer_l1",
    "observed_normal_consistency",
    "observed_f_score",
    "observed_precision",
    "observed_recall",
    "pred_observed_fraction",
    "gt_observed_fraction",
    "tolerance",
)


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in image_size)
        or min(image_size) < 1
    ):
        raise ValueError(
            f"image_size must be (height, width) with two positive integers, got {image_size!r}."
        )
    return int(image_size[0]), int(image_size[1])


def _check_single_mesh(name: str, meshes: Meshes) -> None:
    if not isinstance(meshes, Meshes):
        raise ValueError(f"{name} must be a pytorch3d.structures.Meshes, got {type(meshes)}.")
    if len(meshes) != 1:
        raise ValueError(f"{name} must hold exactly one mesh, got {len(meshes)}.")


def _same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two devices are one ("cuda" and "cuda:0" are)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _check_cameras(cameras: CamerasBase, device: torch.device) -> None:
    if not isinstance(cameras, CamerasBase):
        raise ValueError(
            f"cameras must be a pytorch3d.renderer.cameras.CamerasBase, got {type(cameras)}."
        )
    if len(cameras) < 1:
        raise ValueError("cameras is an empty batch; at least one camera is needed.")
    if not _same_device(cameras.device, device):
        raise ValueError(
            f"cameras and meshes must be on the same device, got cameras on {cameras.device} "
            f"and meshes on {device}."
        )


def _check_tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a finite number > 0 or None, got {tolerance!r}.")


def _check_points(points: torch.Tensor, device: torch.device) -> None:
    if not torch.is_tensor(points) or points.dim() != 2 or points.shape[-1] != 3:
        shape = tuple(points.shape) if torch.is_tensor(points) else type(points)
        raise ValueError(f"points must be a tensor of shape (P, 3), got {shape}.")
    if not points.is_floating_point():
        raise ValueError(f"points must be a floating-point tensor, got {points.dtype}.")
    if not _same_device(points.device, device):
        raise ValueError(
            f"points and meshes must be on the same device, got points on {points.device} and "
            f"meshes on {device}."
        )


def _num_faces(meshes: Meshes) -> int:
    """Face count of the first mesh (0 for an empty batch or a mesh without faces)."""
    faces = meshes.faces_list()
    return int(faces[0].shape[0]) if faces else 0


def _as_float32(meshes: Meshes) -> Meshes:
    """The mesh with float32 vertices (PyTorch3D samples and rasterises in float32)."""
    if meshes.verts_packed().dtype == torch.float32:
        return meshes
    return Meshes(verts=[v.float() for v in meshes.verts_list()], faces=meshes.faces_list())


def longest_side(meshes: Meshes) -> float:
    """Longest side of the vertex bounding box of a single mesh (1 for a mesh without extent)."""
    _, scale = meshes_unit_cube_transform(meshes)
    return float(1.0 / scale[0])


def coarse_bin_size(image_size: tuple[int, int]) -> int:
    """The bin size PyTorch3D's coarse-to-fine rasteriser picks for `image_size` `(H, W)`."""
    longest = max(image_size)
    return 8 if longest <= 64 else int(2 ** max(math.ceil(math.log2(longest)) - 4, 4))


def faces_per_bin_bound(meshes_ndc: Meshes, image_size: tuple[int, int], bin_size: int) -> int:
    """
    An upper bound on the number of faces any bin of the coarse rasteriser receives: one more
    than the largest number of faces whose pixel bounding box, widened by one pixel, overlaps a
    bin. Counted with a 2D difference array, so it costs `O(C F + C bins)`.

    Args:
        meshes_ndc: `C` copies of one mesh with vertices in NDC (x, y) and view depth (z), as
            ``MeshRasterizer.transform`` returns them.
        image_size: `(H, W)`.
        bin_size: bin side in pixels.
    """
    height, width = image_size
    faces = meshes_ndc.faces_list()[0]
    corners = meshes_ndc.verts_padded()[:, faces]  # (C, F, 3, 3)
    half = 0.5 * min(height, width)
    # PyTorch3D's kernels index pixels from the bottom right (NDC +x left, +y up).
    u = 0.5 * width + half * corners[..., 0]
    v = 0.5 * height + half * corners[..., 1]
    u0, u1 = u.amin(-1) - 1.0, u.amax(-1) + 1.0
    v0, v1 = v.amin(-1) - 1.0, v.amax(-1) + 1.0
    on_image = (u1 >= 0) & (u0 <= width) & (v1 >= 0) & (v0 <= height)
    bins_x, bins_y = 1 + (width - 1) // bin_size, 1 + (height - 1) // bin_size

    def bin_index(x: torch.Tensor, count: int) -> torch.Tensor:
        return torch.floor(x / bin_size).clamp(0, count - 1).long()

    cam = torch.arange(len(u), device=u.device)[:, None].expand_as(u0)[on_image]
    bx0, bx1 = bin_index(u0, bins_x)[on_image], bin_index(u1, bins_x)[on_image] + 1
    by0, by1 = bin_index(v0, bins_y)[on_image], bin_index(v1, bins_y)[on_image] + 1
    diff = torch.zeros(len(u), bins_y + 1, bins_x + 1, dtype=torch.int64, device=u.device)
    ones = torch.ones_like(cam)
    for rows, cols, sign in ((by0, bx0, 1), (by0, bx1, -1), (by1, bx0, -1), (by1, bx1, 1)):
        diff.index_put_((cam, rows, cols), sign * ones, accumulate=True)
    counts = diff.cumsum(1).cumsum(2)
    return int(counts.max()) + 1


def rasterize_depth(
    meshes: Meshes, cameras: CamerasBase, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Camera-space depth of the nearest face at every pixel, rasterised by PyTorch3D (the
    projection of ``MeshRasterizer``, then ``rasterize_meshes`` with one face per pixel, no
    blur, back faces kept, perspective-correct for perspective cameras, no near plane).

    On CUDA the coarse-to-fine rasteriser runs with PyTorch3D's bin size and a bin capacity
    from :func:`faces_per_bin_bound`, so no bin overflows (PyTorch3D's own default capacity can
    overflow on dense meshes, and then only prints a message and drops faces). On CPU, and where
    faces cross the plane of a perspective camera (they are then clipped just in front of it),
    rasterisation is naive.

    Args:
        meshes: one mesh.
        cameras: `C` cameras.
        image_size: `(H, W)` in pixels.

    Returns:
        zbuf: `(C, H, W)` depth of the nearest face (-1 where no face).
        hit: `(C, H, W)` bool, True where a face covers the pixel centre.
    """
    meshes = _as_float32(meshes)
    batch = meshes.extend(len(cameras))
    projected = MeshRasterizer(cameras=cameras).transform(batch)
    perspective = cameras.is_perspective()
    near = _NEAR_CLIP_RELATIVE * longest_side(meshes)
    clip = perspective and bool((projected.verts_padded()[..., 2] <= near).any())
    bin_size, max_faces_per_bin = 0, None
    if batch.device.type == "cuda" and not clip:
        bin_size = coarse_bin_size(image_size)
        max_faces_per_bin = faces_per_bin_bound(projected, image_size, bin_size)
    pix_to_face, zbuf, _, _ = rasterize_meshes(
        projected,
        image_size=image_size,
        blur_radius=0.0,
        faces_per_pixel=1,
        bin_size=bin_size,
        max_faces_per_bin=max_faces_per_bin,
        perspective_correct=perspective,
        clip_barycentric_coords=False,
        cull_backfaces=False,
        z_clip_value=near if clip else None,
        cull_to_frustum=False,
    )
    return zbuf[..., 0], pix_to_face[..., 0] >= 0


def depth_slope(zbuf: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """
    Depth change across one pixel, ``|dz/dx| + |dz/dy|``, each derivative the smaller absolute
    one-sided difference to the neighbouring pixels that hit a face (0 without such neighbour).

    Args:
        zbuf: `(C, H, W)` depth.
        hit: `(C, H, W)` bool, pixels that hold a depth.

    Returns:
        `(C, H, W)` non-negative slope, in the units of `zbuf`.
    """
    z = torch.where(hit, zbuf, torch.full_like(zbuf, math.nan))

    def along(dim: int) -> torch.Tensor:
        step = torch.nan_to_num(z.diff(dim=dim).abs(), nan=math.inf)
        pad_shape = list(z.shape)
        pad_shape[dim] = 1
        pad = z.new_full(pad_shape, math.inf)
        forward = torch.cat([step, pad], dim=dim)  # z[j + 1] - z[j] at j
        backward = torch.cat([pad, step], dim=dim)  # z[j] - z[j - 1] at j
        smaller = torch.minimum(forward, backward)
        return torch.where(torch.isinf(smaller), torch.zeros_like(smaller), smaller)

    return along(2) + along(1)


def project_points(
    points: torch.Tensor, cameras: CamerasBase, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Pixel and camera-space depth of every point in every camera, with the pixel conventions of
    PyTorch3D's rasteriser (row 0 at the top, column 0 at the left; the shorter image side
    spans NDC ``[-1, 1]``).

    Args:
        points: `(P, 3)` points in the cameras' world frame.
        cameras: `C` cameras.
        image_size: `(H, W)`.

    Returns:
        pixel: `(C, P)` int64 flat pixel index ``row * W + col`` (0 where not inside).
        depth: `(C, P)` camera-space depth (the quantity of PyTorch3D's ``zbuf``).
        inside: `(C, P)` bool, True where the point is in front of the camera and its
            projection falls inside the image.
    """
    height, width = image_size
    batch = points.float()[None].expand(len(cameras), -1, -1)
    depth = cameras.get_world_to_view_transform().transform_points(batch)[..., 2]
    ndc = cameras.transform_points_ndc(batch)
    half = 0.5 * min(height, width)
    col = torch.floor(0.5 * width - half * ndc[..., 0])
    row = torch.floor(0.5 * height - half * ndc[..., 1])
    inside = (
        (depth > 0)
        & torch.isfinite(col)
        & torch.isfinite(row)
        & (col >= 0)
        & (col <= width - 1)
        & (row >= 0)
        & (row <= height - 1)
    )
    zero = torch.zeros_like(col)
    pixel = torch.where(inside, row, zero).long() * width + torch.where(inside, col, zero).long()
    return pixel, depth, inside


def _visibility_chunks(
    points: torch.Tensor,
    meshes: Meshes,
    cameras: CamerasBase,
    image_size: tuple[int, int],
    *,
    tolerance: float,
    slope_tolerance: bool,
    camera_chunk: int,
) -> Iterator[torch.Tensor]:
    """Yield `(C, P)` bool visibility for consecutive chunks of at most `camera_chunk` cameras."""
    for start in range(0, len(cameras), camera_chunk):
        stop = min(start + camera_chunk, len(cameras))
        chunk = cameras if (start, stop) == (0, len(cameras)) else cameras[list(range(start, stop))]
        zbuf, hit = rasterize_depth(meshes, chunk, image_size)
        pixel, depth, inside = project_points(points, chunk, image_size)
        flat = zbuf.flatten(1)
        surface = flat.gather(1, pixel)
        allowed = torch.full_like(surface, tolerance)
        if slope_tolerance:
            slope = depth_slope(zbuf, hit).flatten(1).gather(1, pixel)
            allowed = torch.maximum(allowed, slope)
        seen = inside & hit.flatten(1).gather(1, pixel) & ((depth - surface).abs() <= allowed)
        yield seen


def visibility_counts(
    points: torch.Tensor,
    meshes: Meshes,
    cameras: CamerasBase,
    image_size: tuple[int, int],
    *,
    tolerance: float | None = None,
    slope_tolerance: bool = True,
    camera_chunk: int = DEFAULT_CAMERA_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    How many cameras see each point, and how many points each camera sees; see
    :func:`visible_points` for the test and the arguments.

    Returns:
        cameras_per_point: `(P,)` int64.
        points_per_camera: `(N,)` int64.
    """
    _check_single_mesh("meshes", meshes)
    _check_points(points, meshes.device)
    _check_cameras(cameras, meshes.device)
    image_size = _check_image_size(image_size)
    _check_tolerance(tolerance)
    if camera_chunk < 1:
        raise ValueError(f"camera_chunk must be >= 1, got {camera_chunk}.")
    num_points = points.shape[0]
    per_point = torch.zeros(num_points, dtype=torch.int64, device=points.device)
    if _num_faces(meshes) == 0 or num_points == 0:
        per_camera = torch.zeros(len(cameras), dtype=torch.int64, device=points.device)
        return per_point, per_camera
    if tolerance is None:
        tolerance = DEFAULT_RELATIVE_TOLERANCE * longest_side(meshes)
    per_camera = []
    for seen in _visibility_chunks(
        points,
        meshes,
        cameras,
        image_size,
        tolerance=tolerance,
        slope_tolerance=slope_tolerance,
        camera_chunk=camera_chunk,
    ):
        per_point += seen.sum(dim=0)
        per_camera.append(seen.sum(dim=1))
    return per_point, torch.cat(per_camera)


def visible_points(
    points: torch.Tensor,
    meshes: Meshes,
    cameras: CamerasBase,
    image_size: tuple[int, int],
    *,
    tolerance: float | None = None,
    slope_tolerance: bool = True,
    camera_chunk: int = DEFAULT_CAMERA_CHUNK,
) -> torch.Tensor:
    """
    Which points at least one camera sees, with `meshes` as the only occluder.

    A point is seen by a camera when it lies in front of it, projects inside the image, and its
    camera-space depth is within ``max(tolerance, slope)`` of the depth rasterised by PyTorch3D's
    ``MeshRasterizer`` at the pixel it falls in (see the module docstring). Pixels without a face
    see nothing. The points are meant to lie on the mesh (e.g. its surface samples): a point off
    the surface counts as seen only when it is within the tolerance of the visible surface.

    Args:
        points: `(P, 3)` points, in the frame of `meshes` and `cameras`.
        meshes: one mesh, on the device of `points`; a mesh without faces sees nothing.
        cameras: `N` PyTorch3D cameras (NDC or screen-space) on the same device.
        image_size: `(H, W)` of the images the cameras took, in pixels.
        tolerance: depth tolerance in the frame's units; None: 0.5% of the longest side of the
            mesh's bounding box (:data:`DEFAULT_RELATIVE_TOLERANCE`).
        slope_tolerance: widen the tolerance at each pixel to the depth change across one pixel
            (recommended; off, grazing surfaces are missed by a nearest-pixel lookup).
        camera_chunk: cameras rasterised together; memory is about ``camera_chunk * H * W * 36``
            bytes plus ``camera_chunk * P * 40``.

    Returns:
        `(P,)` bool, True where some camera sees the point.
    """
    per_point, _ = visibility_counts(
        points,
        meshes,
        cameras,
        image_size,
        tolerance=tolerance,
        slope_tolerance=slope_tolerance,
        camera_chunk=camera_chunk,
    )
    return per_point > 0


def _empty_observed_scores(pred_fraction: float, gt_fraction: float, tolerance: float) -> dict:
    return {
        "observed_accuracy": EMPTY_VALUES["accuracy"],
        "observed_completeness": EMPTY_VALUES["completeness"],
        "observed_chamfer_l1": EMPTY_VALUES["chamfer_l1"],
        "observed_normal_consistency": EMPTY_VALUES["normal_consistency"],
        "observed_f_score": EMPTY_VALUES["f_score"],
        "observed_precision": EMPTY_VALUES["precision"],
        "observed_recall": EMPTY_VALUES["recall"],
        "pred_observed_fraction": pred_fraction,
        "gt_observed_fraction": gt_fraction,
        "tolerance": tolerance,
    }


def _one_sided_scores(
    src: torch.Tensor,
    src_normals: torch.Tensor,
    tgt: torch.Tensor,
    tgt_normals: torch.Tensor,
    threshold: torch.Tensor,
) -> tuple[float, float, float]:
    """
    From `src` `(S, 3)` to `tgt` `(T, 3)`: the mean nearest distance, the mean normal agreement
    ``|n . n_nearest|`` and the share of distances within `threshold` `(1,)`.
    """
    dists, idx = nearest_neighbor_distances(src[None], tgt[None])
    normal = _normal_dots(src_normals[None], tgt_normals[None], idx)
    lengths = torch.tensor([src.shape[0]], device=src.device)
    share = share_within(dists, lengths, threshold)
    return float(dists.mean()), float(normal.mean()), float(share[0, 0])


def evaluate_observed(
    pred: Meshes,
    gt: Meshes,
    cameras: CamerasBase,
    image_size: tuple[int, int],
    *,
    n_points: int = 100_000,
    tolerance: float | None = None,
    seed: int = 0,
    threshold: float = 0.01,
    camera_chunk: int = DEFAULT_CAMERA_CHUNK,
) -> dict[str, float]:
    """
    Occupancy Networks distances over the observed region (DTU's observation-mask idea).

    Both meshes are normalised with the ground truth's bounding box (longest side 1) and
    sampled exactly as :func:`dvr_plugin.metrics.mesh.evaluate_meshes` does (the same `seed`
    gives the same samples); visibility is then decided in the cameras' frame:

    - a predicted sample is observed when some camera sees it in the predicted mesh's
      rasterisation, a ground-truth sample when some camera sees it in the ground truth's
      (:func:`visible_points`);
    - ``observed_accuracy`` = mean over observed predicted samples of the distance to the
      nearest ground-truth sample (all of them, as DTU measures to the whole reference);
      ``observed_completeness`` = mean over observed ground-truth samples of the distance to the
      nearest predicted sample (all of them); ``observed_chamfer_l1`` = their mean;
    - ``observed_precision`` / ``observed_recall`` = the shares of those distances within
      `threshold`, ``observed_f_score`` their harmonic mean (F@1% by default);
      ``observed_normal_consistency`` = the mean of the two sides' mean ``|n . n_nearest|``.

    Empty prediction (no faces): worst-case values (:data:`EMPTY_VALUES`). A prediction with
    faces of which no sample is observed gets the worst-case accuracy-side values (accuracy
    ``sqrt(3)``, precision 0, normal agreement 0) with a warning. No observed ground-truth sample
    raises ``ValueError`` (the cameras and the ground truth do not look at each other: a frame
    mismatch); fewer than :data:`LOW_OBSERVED_FRACTION` observed warns.

    Args:
        pred: one predicted mesh, in the frame of `gt` and `cameras`.
        gt: one ground-truth mesh with faces.
        cameras: `N` cameras (e.g. the training cameras) on the meshes' device.
        image_size: `(H, W)` of the training images, in pixels.
        n_points: surface samples per mesh before the visibility test.
        tolerance: the depth tolerance in evaluation-frame units (a share of the ground truth's
            longest side), used for both meshes; None: :data:`DEFAULT_RELATIVE_TOLERANCE`. The
            per-pixel slope term of :func:`visible_points` is always added.
        seed: seeds the surface samples (the global RNG state is restored afterwards).
        threshold: the F-score threshold in evaluation-frame units.
        camera_chunk: cameras rasterised together.

    Returns:
        A dict of floats with the keys of :data:`OBSERVED_KEYS`: the seven ``observed_*``
        scores (distances in evaluation-frame units), ``pred_observed_fraction`` and
        ``gt_observed_fraction`` (shares of each mesh's samples observed) and ``tolerance``
        (the tolerance used, in evaluation-frame units).
    """
    _check_single_mesh("pred", pred)
    _check_single_mesh("gt", gt)
    if not _same_device(pred.device, gt.device):
        raise ValueError(
            f"pred and gt must be on the same device, got pred on {pred.device} and gt on "
            f"{gt.device}."
        )
    _check_cameras(cameras, gt.device)
    image_size = _check_image_size(image_size)
    _check_tolerance(tolerance)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}.")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be finite and >= 0, got {threshold!r}.")
    if _num_faces(gt) == 0:
        raise ValueError("The ground-truth mesh needs at least one face.")
    tolerance = DEFAULT_RELATIVE_TOLERANCE if tolerance is None else float(tolerance)
    pred, gt = _as_float32(pred), _as_float32(gt)

    centre, scale = meshes_unit_cube_transform(gt)
    pred_eval, gt_eval = normalize_meshes(pred, gt, mode="gt")
    with _seeded(seed, gt.device):
        pred_points, pred_normals = sample_surface(pred_eval, n_points)
        gt_points, gt_normals = sample_surface(gt_eval, n_points)
    pred_points, pred_normals = pred_points[0], pred_normals[0]
    gt_points, gt_normals = gt_points[0], gt_normals[0]

    def to_world(points: torch.Tensor) -> torch.Tensor:
        return points / scale[0] + centre[0]

    visibility = dict(tolerance=tolerance / float(scale[0]), camera_chunk=camera_chunk)
    gt_seen = visible_points(to_world(gt_points), gt, cameras, image_size, **visibility)
    gt_fraction = float(gt_seen.float().mean())
    if not bool(gt_seen.any()):
        raise ValueError(
            f"No camera sees any of the {n_points} ground-truth surface samples: the cameras "
            "and the ground truth do not share a frame, or image_size is wrong."
        )
    if gt_fraction < LOW_OBSERVED_FRACTION:
        warnings.warn(
            f"Only {100 * gt_fraction:.2f}% of the ground-truth surface is seen by the cameras; "
            "check that the cameras and the meshes share one frame.",
            stacklevel=2,
        )
    if _num_faces(pred) == 0:
        return _empty_observed_scores(0.0, gt_fraction, tolerance)
    pred_seen = visible_points(to_world(pred_points), pred, cameras, image_size, **visibility)
    pred_fraction = float(pred_seen.float().mean())

    t = torch.tensor([threshold], dtype=gt_points.dtype, device=gt_points.device)
    completeness, normal_completeness, recall = _one_sided_scores(
        gt_points[gt_seen], gt_normals[gt_seen], pred_points, pred_normals, t
    )
    if bool(pred_seen.any()):
        accuracy, normal_accuracy, precision = _one_sided_scores(
            pred_points[pred_seen], pred_normals[pred_seen], gt_points, gt_normals, t
        )
    else:
        warnings.warn(
            "No camera sees any sample of the predicted surface: its accuracy, precision and "
            "normal accuracy take their worst-case values.",
            stacklevel=2,
        )
        accuracy = EMPTY_VALUES["accuracy"]
        normal_accuracy = EMPTY_VALUES["normal_accuracy"]
        precision = EMPTY_VALUES["precision"]
    f = harmonic_f_score(torch.tensor(precision), torch.tensor(recall))
    return {
        "observed_accuracy": accuracy,
        "observed_completeness": completeness,
        "observed_chamfer_l1": 0.5 * (accuracy + completeness),
        "observed_normal_consistency": 0.5 * (normal_accuracy + normal_completeness),
        "observed_f_score": float(f),
        "observed_precision": precision,
        "observed_recall": recall,
        "pred_observed_fraction": pred_fraction,
        "gt_observed_fraction": gt_fraction,
        "tolerance": tolerance,
    }
