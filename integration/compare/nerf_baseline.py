"""
The NeRF-style baseline of the comparison: PyTorch3D's volume renderer on DVR's network.

The renderer is ``pytorch3d.renderer.ImplicitRenderer`` with

- :class:`BoxStratifiedRaysampler`: rays through given NDC points (training pixels chosen by
  :func:`dvr_plugin.engine.sampling.sample_pixels`, as DVR's trainer chooses them) or through every
  pixel, with ``n_pts_per_ray`` stratified samples in the part of each ray inside the padded
  unit cube (NeRF's sampling, restricted to the object box);
- :class:`OccupancyVolumeFunction`: the volumetric function, DVR's
  :class:`~dvr_plugin.fields.field.OccupancyTextureField` read UNISURF's way: a sample's occupancy
  probability ``sigmoid(logit)`` is its opacity (alpha), its texture is its colour;
- ``pytorch3d.renderer.EmissionAbsorptionRaymarcher``: ``w_i = a_i prod_{j<i} (1 - a_j)``,
  colour ``sum_i w_i c_i`` over the background, opacity ``1 - prod_i (1 - a_i)`` and the
  expected z-depth ``sum_i w_i t_i / sum_i w_i``.

:class:`VolumeBaselineTrainer` fits it with the settings of a DVR :class:`FitConfig` (network,
optimiser, learning-rate schedule, iterations, images and rays per step, pixel sampling), so the
two methods differ only in how a ray is rendered and supervised. Losses: L1 colour inside the
object mask (DVR's ``rgb`` term, with the composited colour) and binary cross-entropy of the
opacity against the mask, weighted like DVR's free-space (outside) and occupancy (inside)
terms. Every sample is evaluated with autograd, so training memory grows with the samples per
ray (DVR keeps one point per ray).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from pytorch3d.renderer import EmissionAbsorptionRaymarcher, ImplicitRenderer
from pytorch3d.renderer.implicit.utils import RayBundle
from torch import nn

from dvr_plugin.data import MultiViewData
from dvr_plugin.engine.config import positive, resolve_device
from dvr_plugin.engine.evaluation import RenderedViews
from dvr_plugin.engine.losses import rgb_loss
from dvr_plugin.engine.trainer import build_optimizer, seed_everything
from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS, evaluate_field, field_type_of
from dvr_plugin.renderer.rays import intersect_box, ndc_grid, rays_from_cameras
from dvr_plugin.training import FitConfig, build_field
from dvr_plugin.training.trainer import draw_pixel_batch, gather_pixel_batch

Bounds = tuple[Sequence[float], Sequence[float]]


class BoxStratifiedRaysampler(nn.Module):
    """
    Rays with stratified samples inside an axis-aligned box (a PyTorch3D raysampler).

    Rays follow ``NDCMultinomialRaysampler``'s convention with ``unit_directions=False``
    (:func:`dvr_plugin.renderer.rays.rays_from_cameras`): origins on the camera's z = 0 plane,
    directions of one unit of camera z, so ``lengths`` are z-depths like ``MeshRasterizer``'s
    ``zbuf``, and the full-image grid lines up pixel for pixel with ``MeshRenderer`` output. Each
    ray's segment ``[near, far]`` inside ``bounds`` is cut into ``n_pts_per_ray`` equal bins; with
    ``stratified=True`` (training) each bin gets one uniformly random sample, else its centre.
    Rays that miss the box get all their samples at one length outside it (a volumetric
    function that is empty outside the box, like :class:`OccupancyVolumeFunction`, renders them
    transparent).

    Args (keyword-only):
        image_width, image_height: the pixel grid used when no ``xys`` are given.
        n_pts_per_ray: samples per ray (>= 1).
        bounds: ``((x0, y0, z0), (x1, y1, z1))`` the box sampled (default: the padded unit cube
            ``[-0.55, 0.55]^3`` DVR searches).
        min_depth: nothing nearer is sampled.
    """

    def __init__(
        self,
        *,
        image_width: Optional[int] = None,
        image_height: Optional[int] = None,
        n_pts_per_ray: int = 64,
        bounds: Bounds = UNIT_CUBE_BOUNDS,
        min_depth: float = 0.0,
    ) -> None:
        super().__init__()
        positive("n_pts_per_ray", n_pts_per_ray)
        if (image_width is None) != (image_height is None):
            raise ValueError("Give both image_width and image_height, or neither.")
        box = torch.tensor([list(bounds[0]), list(bounds[1])], dtype=torch.float32)
        if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
            raise ValueError(f"bounds must be ((x0, y0, z0), (x1, y1, z1)) with x0 < x1, ...; "
                             f"got {bounds!r}.")
        self.image_width = image_width
        self.image_height = image_height
        self.n_pts_per_ray = n_pts_per_ray
        self.min_depth = float(min_depth)
        self.register_buffer("box", box, persistent=False)

    def forward(
        self,
        cameras,
        *,
        xys: Optional[torch.Tensor] = None,
        n_pts_per_ray: Optional[int] = None,
        stratified: bool = False,
        generator: Optional[torch.Generator] = None,
        **kwargs: Any,
    ) -> RayBundle:
        """
        Args:
            cameras: ``B`` PyTorch3D cameras.
            xys: `(B, ..., 2)` NDC ray positions; ``None`` for every pixel of the
                ``(image_height, image_width)`` grid.
            n_pts_per_ray: samples per ray for this call.
            stratified: one random sample per bin instead of the bin centres.
            generator: random source of the stratified samples (on the cameras' device).

        Returns:
            RayBundle with ``origins``, ``directions`` `(B, ..., 3)`, ``lengths``
            `(B, ..., n)` and ``xys`` `(B, ..., 2)`.
        """
        n = self.n_pts_per_ray if n_pts_per_ray is None else int(n_pts_per_ray)
        positive("n_pts_per_ray", n)
        device = cameras.device
        if xys is None:
            if self.image_width is None:
                raise ValueError("Give xys, or construct the raysampler with an image size.")
            grid = ndc_grid((self.image_height, self.image_width), device=device)
            xys = grid[None].expand(len(cameras), -1, -1, -1)
        origins, directions = rays_from_cameras(cameras, xys)
        near, far, missed = intersect_box(
            origins, directions, self.box[0], self.box[1], min_depth=self.min_depth
        )
        outside = torch.full_like(near, self.min_depth + 1.0)
        near = torch.where(missed, outside, near)
        far = torch.where(missed, outside, far)
        bins = torch.arange(n, device=device, dtype=near.dtype)
        if stratified:
            offsets = torch.rand(
                (*near.shape, n), device=device, dtype=near.dtype, generator=generator
            )
        else:
            offsets = torch.full((*near.shape, n), 0.5, device=device, dtype=near.dtype)
        lengths = near[..., None] + (far - near)[..., None] * (bins + offsets) / n
        return RayBundle(origins=origins, directions=directions, lengths=lengths, xys=xys)


class OccupancyVolumeFunction(nn.Module):
    """
    An occupancy + texture field as a PyTorch3D volumetric function (occupancy as alpha).

    Each sample's opacity is ``sigmoid(occupancy logit)`` inside ``bounds`` and 0 outside (DVR
    searches the same box); its features are the texture colour and its length along the ray,
    so one emission-absorption composite gives the colour and the (unnormalised) expected depth.

    Args (keyword-only):
        field: an occupancy field following :mod:`dvr_plugin.fields.field`'s protocol.
        bounds: the box outside which the volume is empty.
        tolerance: slack of the inside-the-box test (samples on the faces count as inside).
    """

    def __init__(self, *, field, bounds: Bounds = UNIT_CUBE_BOUNDS, tolerance: float = 1e-4):
        super().__init__()
        if field_type_of(field) != "occupancy":
            raise ValueError("OccupancyVolumeFunction needs an occupancy field (logits).")
        self.field = field
        box = torch.tensor([list(bounds[0]), list(bounds[1])], dtype=torch.float32)
        self.register_buffer("box", box, persistent=False)
        self.tolerance = float(tolerance)

    def forward(self, ray_bundle: RayBundle, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            ray_bundle: rays with ``lengths`` `(B, ..., n)`.

        Returns:
            densities: `(B, ..., n, 1)` opacities in [0, 1].
            features: `(B, ..., n, 4)` RGB and the sample's length.
        """
        lengths = ray_bundle.lengths
        points = ray_bundle.origins[..., None, :] + (
            lengths[..., None] * ray_bundle.directions[..., None, :]
        )
        shape = points.shape[:-1]
        out = evaluate_field(self.field, points.reshape(shape[0], -1, 3))
        inside = (
            (points >= self.box[0] - self.tolerance) & (points <= self.box[1] + self.tolerance)
        ).all(dim=-1)
        alpha = torch.sigmoid(out.values.float()).reshape(shape) * inside
        if out.rgb is None:
            rgb = torch.ones_like(points)
        else:
            rgb = out.rgb.float().reshape(*shape, 3)
        features = torch.cat([rgb, lengths[..., None]], dim=-1)
        return alpha[..., None], features


class VolumeRenderOutput(NamedTuple):
    """
    Members:
        images: `(B, ..., 3)` colour composited over the background.
        opacities: `(B, ..., )` accumulated opacity in [0, 1].
        depths: `(B, ...)` expected z-depth ``sum w t / sum w`` (0 where the opacity is 0).
        ray_bundle: the rays that were rendered.
    """

    images: torch.Tensor
    opacities: torch.Tensor
    depths: torch.Tensor
    ray_bundle: RayBundle


class VolumeBaseline(nn.Module):
    """
    NeRF-style rendering of an occupancy field with PyTorch3D's ``ImplicitRenderer``.

    Example::

        model = VolumeBaseline(field=OccupancyTextureField(hidden_size=256), n_pts_per_ray=64)
        out = model(cameras, xys, stratified=True)          # training rays
        views = model.render_views(cameras, (128, 128))     # full images, RenderedViews

    Args (keyword-only):
        field: an occupancy field following :mod:`dvr_plugin.fields.field`'s protocol.
        n_pts_per_ray: samples per ray (training and rendering use the same number: opacity
            as alpha depends on the sample spacing).
        background_color: RGB behind the object.
        bounds: the box sampled and outside which the volume is empty.
    """

    def __init__(
        self,
        *,
        field,
        n_pts_per_ray: int = 64,
        background_color: Sequence[float] = (1.0, 1.0, 1.0),
        bounds: Bounds = UNIT_CUBE_BOUNDS,
    ) -> None:
        super().__init__()
        self.field = field
        self.function = OccupancyVolumeFunction(field=field, bounds=bounds)
        self.renderer = ImplicitRenderer(
            raysampler=BoxStratifiedRaysampler(n_pts_per_ray=n_pts_per_ray, bounds=bounds),
            raymarcher=EmissionAbsorptionRaymarcher(),
        )
        background = torch.as_tensor(background_color, dtype=torch.float32).reshape(-1)
        if background.numel() == 1:
            background = background.expand(3).clone()
        if background.numel() != 3:
            raise ValueError(f"background_color must be 1 or 3 values, got {background_color!r}.")
        self.register_buffer("background", background, persistent=False)

    def forward(
        self,
        cameras,
        xys: torch.Tensor,
        *,
        stratified: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> VolumeRenderOutput:
        """
        Render the rays through ``xys`` `(B, ..., 2)` (NDC) of ``B`` cameras.

        Returns:
            VolumeRenderOutput with images `(B, ..., 3)`, opacities and depths `(B, ...)`.
        """
        channels, bundle = self.renderer(
            cameras=cameras,
            volumetric_function=self.function,
            xys=xys,
            stratified=stratified,
            generator=generator,
        )
        rgb, weighted_depth, opacity = channels[..., :3], channels[..., 3], channels[..., 4]
        images = rgb + (1.0 - opacity[..., None]) * self.background
        depths = torch.where(
            opacity > 1e-6, weighted_depth / opacity.clamp_min(1e-6), torch.zeros_like(opacity)
        )
        return VolumeRenderOutput(images, opacity, depths, bundle)

    @torch.no_grad()
    def render_views(
        self,
        cameras,
        image_size: tuple[int, int],
        *,
        chunk_size: int = 8192,
        compute_normals: bool = True,
    ) -> RenderedViews:
        """
        Render every pixel of every camera (bin centres, no gradients), ``chunk_size`` rays at
        a time.

        Normals are the field's outward unit normals ``-grad(logit) / |grad(logit)|`` at the
        expected-depth point of pixels whose opacity exceeds 0.5.

        Returns:
            RenderedViews on the CPU: ``images`` `(N, H, W, 3)`, ``masks`` (the opacity)
            `(N, H, W)`, ``depths`` `(N, H, W)` (0 where the opacity is <= 0.5), ``normals``
            `(N, H, W, 3)`.
        """
        positive("chunk_size", chunk_size)
        height, width = int(image_size[0]), int(image_size[1])
        grid = ndc_grid((height, width), device=self.background.device).reshape(-1, 2)
        parts: list[tuple[torch.Tensor, ...]] = []
        for i in range(len(cameras)):
            camera = cameras[[i]]
            pieces = []
            for start in range(0, grid.shape[0], chunk_size):
                xys = grid[None, start : start + chunk_size]
                out = self(camera, xys)
                normals = torch.zeros_like(out.images)
                if compute_normals:
                    normals = self._normals(out)
                pieces.append((out.images, out.opacities, out.depths, normals))
            image, opacity, depth, normal = (torch.cat(p, dim=1) for p in zip(*pieces, strict=True))
            depth = torch.where(opacity > 0.5, depth, torch.zeros_like(depth))
            parts.append(
                (
                    image.reshape(1, height, width, 3).cpu(),
                    opacity.reshape(1, height, width).cpu(),
                    depth.reshape(1, height, width).cpu(),
                    normal.reshape(1, height, width, 3).cpu(),
                )
            )
        images, masks, depths, normals = (torch.cat(p) for p in zip(*parts, strict=True))
        return RenderedViews(images=images, masks=masks, depths=depths, normals=normals)

    def _normals(self, out: VolumeRenderOutput) -> torch.Tensor:
        """`(1, R, 3)` outward unit normals at the expected-depth points (0 where transparent)."""
        bundle = out.ray_bundle
        select = out.opacities[0] > 0.5
        normals = torch.zeros_like(out.images)
        if not bool(select.any()):
            return normals
        points = bundle.origins[0, select] + out.depths[0, select, None] * (
            bundle.directions[0, select]
        )
        with torch.enable_grad():
            points = points.detach().requires_grad_(True)
            values = evaluate_field(self.field, points[None]).values
            (gradient,) = torch.autograd.grad(values.sum(), points)
        outward = -gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        normals[0, select] = outward.to(normals.dtype)
        return normals


@torch.no_grad()
def rendered_surface_level(
    field, cameras, depths: torch.Tensor, opacities: torch.Tensor
) -> Optional[float]:
    """
    The median occupancy logit of ``field`` at the points its renders show: for every pixel
    whose opacity exceeds 0.5, the point at the rendered (expected) depth on its ray.

    A volume model trained with occupancy as alpha has no reason to pass occupancy 0.5 at the
    surface it renders (many samples of alpha 0.1 make an opaque ray too), so its mesh is
    extracted at this level: the level set running through its own rendered depth, found
    without ground truth.

    Args:
        field: the occupancy field.
        cameras: ``N`` cameras on the field's device.
        depths: `(N, H, W)` rendered z-depths (CPU or the field's device).
        opacities: `(N, H, W)` rendered opacities.

    Returns:
        The median logit, or ``None`` when no pixel is opaque.
    """
    values = []
    height, width = depths.shape[1:3]
    device = cameras.device
    grid = ndc_grid((height, width), device=device)
    for i in range(len(cameras)):
        select = ((opacities[i] > 0.5) & (depths[i] > 0)).to(device)
        if not bool(select.any()):
            continue
        origins, directions = rays_from_cameras(cameras[[i]], grid[None])
        points = origins[0][select] + depths[i].to(device)[select, None] * directions[0][select]
        values.append(evaluate_field(field, points[None]).values[0].float())
    if not values:
        return None
    return float(torch.cat(values).median())


class VolumeBaselineTrainer:
    """
    Fits :class:`VolumeBaseline` with the settings of a DVR :class:`FitConfig`.

    Taken from the config, as DVR's :class:`~dvr_plugin.training.Trainer` takes them: the seed
    (so both networks start from the same weights), the network (``model.*``), Adam with
    ``optim.lr`` / ``weight_decay`` / ``grad_clip`` and the step decay, ``train.iterations``,
    ``train.images_per_batch`` images x ``train.rays_per_image`` pixels per step chosen by
    ``train.sampling``, the background, and the loss weights ``loss.rgb`` (colour inside the
    mask), ``loss.freespace`` (opacity -> 0 outside the mask) and ``loss.occupancy``
    (opacity -> 1 inside). Sums over rays are divided by the number of images, as in DVR.

    Args (keyword-only):
        config: the fit configuration (its device may be ``"auto"``).
        train_data: the training views.
        n_pts_per_ray: samples per ray.
    """

    def __init__(
        self, *, config: FitConfig, train_data: MultiViewData, n_pts_per_ray: int = 64
    ) -> None:
        if config.model.field_type != "occupancy":
            raise ValueError("The volume baseline reads occupancy as alpha: model.field_type "
                             f"must be 'occupancy', got {config.model.field_type!r}.")
        self.config = config
        self.device = resolve_device(config.device)
        self.train_data = train_data.to(self.device)
        seed_everything(config.seed)
        self.field = build_field(config).to(self.device)
        self.model = VolumeBaseline(
            field=self.field, n_pts_per_ray=n_pts_per_ray, background_color=config.background
        ).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(config.optim, self.field.parameters())
        self.image_generator = torch.Generator().manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.step = 0
        self.train_seconds = 0.0

    def train_step(self) -> dict[str, float]:
        """
        One optimisation step.

        Returns:
            ``loss``, ``rgb``, ``mask``, ``lr`` and ``opacity_agreement`` (share of sampled
            rays whose opacity > 0.5 agrees with the mask).
        """
        cfg = self.config
        data = self.train_data
        index, masks, sample = draw_pixel_batch(
            data, cfg.train, image_generator=self.image_generator, generator=self.generator
        )
        batch = index.shape[0]
        cameras, gt_rgb, gt_mask, _ = gather_pixel_batch(data, index, masks, sample)

        self.field.train()
        out = self.model(cameras, sample.xys, stratified=True, generator=self.generator)
        weights = cfg.loss
        rgb = rgb_loss(out.images, gt_rgb, torch.ones_like(gt_mask), gt_mask)
        opacity = out.opacities.clamp(1e-5, 1.0 - 1e-5)
        per_ray = F.binary_cross_entropy(opacity, gt_mask.float(), reduction="none")
        per_ray_weight = torch.where(
            gt_mask,
            torch.full_like(per_ray, weights.occupancy),
            torch.full_like(per_ray, weights.freespace),
        )
        mask = (per_ray * per_ray_weight).sum() / batch
        loss = weights.rgb * rgb + mask
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"The volume baseline's loss became non-finite at step {self.step} "
                f"(rgb {float(rgb)}, mask {float(mask)})."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.field.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        agreement = ((out.opacities > 0.5) == gt_mask).float().mean()
        return {
            "loss": float(loss.detach()),
            "rgb": float(rgb.detach()),
            "mask": float(mask.detach()),
            "lr": float(lr),
            "opacity_agreement": float(agreement),
        }

    def state_dict(self) -> dict[str, Any]:
        """The fitted network, the step and the training time."""
        return {
            "model": self.field.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "n_pts_per_ray": self.model.renderer.raysampler.n_pts_per_ray,
            "config": self.config.to_dict(),
        }
