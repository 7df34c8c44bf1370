"""
``MultiViewData``: the one container every loader returns.

Posed images, object masks and optional depth maps of one object, with a batch of PyTorch3D
``PerspectiveCameras`` expressed in a normalised object frame (the object inside the unit cube
``[-0.5, 0.5]^3``; each loader documents how it gets there) and the matrix ``to_world`` mapping that
frame back to the data set's original coordinates, so metrics can be reported in original units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from pytorch3d.renderer.cameras import CamerasBase, PerspectiveCameras

from .cameras import cameras_from_opencv, opencv_from_cameras, project_points

Indices = Union[Sequence[int], torch.Tensor, slice, range]
Device = Union[str, torch.device]


def index_cameras(cameras: PerspectiveCameras, index: torch.Tensor) -> PerspectiveCameras:
    """Select cameras by a `(M,)` long index, keeping dtype, device and ``image_size``."""
    n = len(cameras)
    fields: dict[str, Any] = {}
    for name in ("R", "T", "focal_length", "principal_point", "image_size"):
        value = getattr(cameras, name)
        fields[name] = value.expand(n, *value.shape[1:])[index.to(value.device)]
    return PerspectiveCameras(device=cameras.device, **fields)


def as_ndc_perspective(
    cameras: CamerasBase, image_size: tuple[int, int], *, dtype: torch.dtype = torch.float32
) -> PerspectiveCameras:
    """Any perspective ``CamerasBase`` as NDC ``PerspectiveCameras`` with ``image_size`` set."""
    if isinstance(cameras, PerspectiveCameras) and cameras.in_ndc():
        n = len(cameras)
        sizes = torch.tensor([list(image_size)] * n, device=cameras.device)
        focal = cameras.focal_length.expand(n, -1)
        if focal.shape[-1] == 1:
            focal = focal.expand(n, 2)
        return PerspectiveCameras(
            R=cameras.R.expand(n, 3, 3).to(dtype),
            T=cameras.T.expand(n, 3).to(dtype),
            focal_length=focal.to(dtype),
            principal_point=cameras.principal_point.expand(n, 2).to(dtype),
            image_size=sizes,
            device=cameras.device,
        )
    R, t, K = opencv_from_cameras(cameras, image_size=image_size)
    return cameras_from_opencv(R, t, K, image_size, dtype=dtype, device=cameras.device)


class ImageStack:
    """
    ``image_size`` and ``device`` of a container holding `(N, H, W, 3)` ``images``
    (:class:`MultiViewData`, :class:`dvr_plugin.single_view.CategoryData`).
    """

    images: torch.Tensor

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def device(self) -> torch.device:
        return self.images.device


class MultiViewData(ImageStack):
    """
    Posed multi-view images of one object in a normalised object frame.

    Args (keyword-only):
        images: `(N, H, W, 3)` float RGB in [0, 1].
        masks: `(N, H, W)` object masks (bool, or float thresholded at 0.5).
        cameras: ``N`` perspective cameras (converted to NDC ``PerspectiveCameras`` with
            ``image_size = (H, W)`` when they are anything else).
        depths: `(N, H, W)` camera z-depth in the normalised frame (the quantity of
            ``MeshRasterizer``'s ``zbuf``), ``0`` where unknown; or ``None``.
        names: ``N`` view names (default ``"0", "1", ...``).
        to_world: `(4, 4)` map from the normalised frame to the original coordinates,
            ``X_world = to_world @ X_normalised`` (homogeneous); identity by default.
        info: free-form facts about the source (format, paths, normalisation).

    Attributes:
        images, masks, depths, cameras, names, to_world, info: as above; ``masks`` is bool,
            ``images`` / ``depths`` float32.
    """

    def __init__(
        self,
        *,
        images: torch.Tensor,
        masks: torch.Tensor,
        cameras: CamerasBase,
        depths: Optional[torch.Tensor] = None,
        names: Optional[Sequence[str]] = None,
        to_world: Optional[torch.Tensor] = None,
        info: Optional[dict[str, Any]] = None,
    ) -> None:
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(images.shape)}.")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}.")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images hold non-finite values (NaN or inf).")
        if float(images.min()) < -1e-4 or float(images.max()) > 1 + 1e-4:
            raise ValueError(
                f"images must lie in [0, 1], got [{float(images.min())}, {float(images.max())}]."
            )
        n, height, width = images.shape[:3]
        masks = torch.as_tensor(masks, device=images.device)
        if tuple(masks.shape) != (n, height, width):
            raise ValueError(
                f"masks must have shape {(n, height, width)} to match images, "
                f"got {tuple(masks.shape)}."
            )
        if masks.dtype != torch.bool:
            if not bool(torch.isfinite(masks.float()).all()):
                raise ValueError("masks hold non-finite values.")
            masks = masks.float() > 0.5
        if depths is not None:
            depths = torch.as_tensor(depths, device=images.device)
            if tuple(depths.shape) != (n, height, width):
                raise ValueError(
                    f"depths must have shape {(n, height, width)} to match images, "
                    f"got {tuple(depths.shape)}."
                )
            if not bool(torch.isfinite(depths).all()):
                raise ValueError("depths hold non-finite values; use 0 for unknown depth.")
            if bool((depths < 0).any()):
                raise ValueError("depths must be >= 0 (0 = unknown).")
            depths = depths.float()
        if not isinstance(cameras, CamerasBase):
            raise ValueError(
                f"cameras must be a pytorch3d CamerasBase, got {type(cameras).__name__}."
            )
        if len(cameras) != n:
            raise ValueError(f"Got {len(cameras)} cameras for {n} images; they must match.")
        camera_sizes = cameras.get_image_size()
        if camera_sizes is not None:
            sizes = torch.as_tensor(camera_sizes).reshape(-1, 2)
            if bool((sizes.to(torch.int64).cpu() != torch.tensor([height, width])).any()):
                raise ValueError(
                    f"The cameras' image_size {sizes[0].tolist()} differs from the images' "
                    f"{[height, width]}."
                )
        if names is None:
            names = [str(i) for i in range(n)]
        names = [str(name) for name in names]
        if len(names) != n:
            raise ValueError(f"Got {len(names)} names for {n} images.")
        if to_world is None:
            to_world = torch.eye(4, dtype=torch.float64)
        to_world = torch.as_tensor(to_world, dtype=torch.float64)
        if tuple(to_world.shape) != (4, 4) or not bool(torch.isfinite(to_world).all()):
            raise ValueError("to_world must be a finite (4, 4) matrix.")

        self.images = images.float()
        self.masks = masks
        self.depths = depths
        self.cameras = as_ndc_perspective(cameras, (height, width), dtype=cameras.R.dtype).to(
            images.device
        )
        self.names = names
        self.to_world = to_world.cpu()
        self.info = dict(info or {})

    # ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        height, width = self.image_size
        depth = "with depth" if self.depths is not None else "no depth"
        return (
            f"MultiViewData({len(self)} views, {height}x{width}, {depth}, "
            f"device={self.device}, format={self.info.get('format', '?')})"
        )

    def _replace(self, **changes: Any) -> MultiViewData:
        fields = {
            "images": self.images,
            "masks": self.masks,
            "cameras": self.cameras,
            "depths": self.depths,
            "names": self.names,
            "to_world": self.to_world,
            "info": self.info,
        }
        fields.update(changes)
        return MultiViewData(**fields)

    def _index(self, indices: Indices) -> torch.Tensor:
        n = len(self)
        if isinstance(indices, slice):
            index = torch.arange(n)[indices]
        else:
            index = torch.as_tensor(list(indices) if isinstance(indices, range) else indices)
            if index.dtype == torch.bool:
                if index.shape != (n,):
                    raise ValueError(f"A boolean index must have shape ({n},).")
                index = index.nonzero()[:, 0]
            index = index.long().reshape(-1)
        if index.numel() == 0:
            raise ValueError("The selection holds no views.")
        if bool((index < -n).any()) or bool((index >= n).any()):
            raise ValueError(f"View indices must lie in [-{n}, {n}), got {index.tolist()}.")
        return index % n

    def subset(self, indices: Indices) -> MultiViewData:
        """
        The views at ``indices`` (a sequence / tensor of ints, a bool mask, a slice or a range).
        """
        index = self._index(indices)
        device_index = index.to(self.device)
        return self._replace(
            images=self.images[device_index],
            masks=self.masks[device_index],
            depths=None if self.depths is None else self.depths[device_index],
            cameras=index_cameras(self.cameras, index),
            names=[self.names[i] for i in index.tolist()],
        )

    def split(
        self, *, every: int = 8, offset: int = 0, held_out: Optional[Indices] = None
    ) -> tuple[MultiViewData, MultiViewData]:
        """
        Split into training and held-out views.

        Args:
            every: hold out every ``every``-th view (positions ``offset, offset + every, ...``),
                the usual "every 8th view" protocol; ignored when ``held_out`` is given.
            offset: the first held-out position.
            held_out: explicit held-out positions.

        Returns:
            ``(train, held_out)``.
        """
        n = len(self)
        if held_out is not None:
            test = self._index(held_out)
        else:
            if every < 2:
                raise ValueError(f"every must be >= 2, got {every}.")
            test = torch.arange(offset % n, n, every)
        is_test = torch.zeros(n, dtype=torch.bool)
        is_test[test] = True
        if bool(is_test.all()) or not bool(is_test.any()):
            raise ValueError("The split must leave at least one training and one held-out view.")
        return self.subset(~is_test), self.subset(is_test)

    def downscale(self, factor: int) -> MultiViewData:
        """
        Shrink images, masks and depths by an integer ``factor`` with area averaging.

        Rows / columns beyond a multiple of ``factor`` are cropped at the bottom / right. Pixel
        coordinates (corner convention) scale by ``1 / factor``, so the intrinsics become
        ``K' = diag(1/f, 1/f, 1) K`` and projections stay consistent. Masks keep pixels more than
        half covered; depth is the mean of the known depths in each block, kept where more than
        half of the block has depth (0 elsewhere), the same rule as the masks, so that a block
        exactly half covered is background in both.
        """
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}.")
        if factor == 1:
            return self._replace()
        height, width = self.image_size
        new_h, new_w = height // factor, width // factor
        if new_h < 1 or new_w < 1:
            raise ValueError(f"factor {factor} is larger than the image size {(height, width)}.")
        crop_h, crop_w = new_h * factor, new_w * factor

        def pool(x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, h, w)
            return F.avg_pool2d(x[:, :, :crop_h, :crop_w], factor)

        images = pool(self.images.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).clamp(0.0, 1.0)
        masks = pool(self.masks[:, None].float())[:, 0] > 0.5
        depths = None
        if self.depths is not None:
            valid = (self.depths > 0).float()[:, None]
            covered = pool(valid)[:, 0]
            total = pool(self.depths[:, None] * valid)[:, 0]
            depths = torch.where(
                covered > 0.5, total / covered.clamp_min(1e-12), torch.zeros_like(total)
            )
        R, t, K = opencv_from_cameras(self.cameras, image_size=(height, width))
        K = K.clone()
        K[:, :2] = K[:, :2] / factor
        cameras = cameras_from_opencv(
            R, t, K, (new_h, new_w), dtype=self.cameras.R.dtype, device=self.device
        )
        info = dict(self.info)
        info["downscale"] = info.get("downscale", 1) * factor
        return self._replace(
            images=images, masks=masks, depths=depths, cameras=cameras, info=info
        )

    def to(self, device: Device) -> MultiViewData:
        """A copy on ``device``."""
        cameras = index_cameras(self.cameras, torch.arange(len(self))).to(device)
        return self._replace(
            images=self.images.to(device),
            masks=self.masks.to(device),
            depths=None if self.depths is None else self.depths.to(device),
            cameras=cameras,
        )

    # ---------------------------------------------------------------------------------------

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Project normalised-frame points into every view.

        Args:
            points: `(P, 3)` or `(N, P, 3)`.

        Returns:
            pixels: `(N, P, 2)` continuous ``(u, v)`` (pixel centres at half-integers);
            depth: `(N, P)` camera z-depth.
        """
        return project_points(self.cameras, points.to(self.device))

    def lookup_masks(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Where normalised-frame points fall in every view.

        Args:
            points: `(P, 3)`.

        Returns:
            in_mask: `(N, P)` bool, the point projects (in front of the camera) onto an object
                pixel (nearest-pixel lookup).
            in_image: `(N, P)` bool, the point projects inside the image, in front of the camera.
        """
        pixels, depth = self.project(points)
        height, width = self.image_size
        cols = torch.floor(pixels[..., 0]).long()
        rows = torch.floor(pixels[..., 1]).long()
        in_image = (depth > 0) & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        views = torch.arange(len(self), device=self.device)[:, None].expand_as(rows)
        hit = self.masks[views, rows.clamp(0, height - 1), cols.clamp(0, width - 1)]
        return hit & in_image, in_image

    def visual_hull(self, points: torch.Tensor, *, min_views: int = 1) -> torch.Tensor:
        """
        `(P,)` bool: the point lands on the object mask in every view that sees it, and is seen
        by at least ``min_views`` views (the visual-hull test used to check cameras against
        masks, or to find depth bounds).
        """
        in_mask, in_image = self.lookup_masks(points)
        consistent = (in_mask | ~in_image).all(dim=0)
        return consistent & (in_image.sum(dim=0) >= min_views)

    def normalised_to_world(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` normalised-frame points to the original coordinates."""
        M = self.to_world.to(device=points.device, dtype=points.dtype)
        return points @ M[:3, :3].T + M[:3, 3]

    def world_to_normalised(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` original-frame points to the normalised frame."""
        M = torch.linalg.inv(self.to_world).to(device=points.device, dtype=points.dtype)
        return points @ M[:3, :3].T + M[:3, 3]

    @property
    def world_scale(self) -> float:
        """Original units per normalised unit (the cube root of ``|det(to_world[:3, :3])|``)."""
        return float(torch.linalg.det(self.to_world[:3, :3]).abs() ** (1.0 / 3.0))
