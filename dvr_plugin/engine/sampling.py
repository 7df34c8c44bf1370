"""
Pixel sampling for training.

Every sampler returns a :class:`PixelSample`: the integer pixel indices ``(rows, cols)`` that pick
ground truth out of images (see :func:`gather`) and the NDC coordinates ``xys`` of the sampled
positions, ready for a raysampler (``RayBundle.xys`` convention, built with
:func:`dvr_plugin.renderer.rays.pixels_to_ndc`).

Positions inside a pixel
------------------------
With ``continuous=False`` (the default, as in the reference DVR trainer) every sample sits at the
centre of its pixel, so ``xys[b, r] == ndc_grid(image_size)[rows[b, r], cols[b, r]]``. With
``continuous=True`` the position is uniform inside the pixel, i.e. ``(u, v) = (col + a, row + b)``
with ``a, b ~ U[0, 1)``; ``rows`` / ``cols`` still name the pixel that contains the position,
so :func:`gather` returns its ground truth (nearest-neighbour lookup).

Sampling modes (:func:`sample_pixels`)
--------------------------------------
- ``"uniform"``: ``R`` distinct random pixels per image (with ``replacement=True``, independent
  draws that may repeat).
- ``"patch"``: ``R / 4`` random 2x2 patches per image. Rays come in consecutive groups of four,
  in the order given by :data:`PATCH_OFFSETS`: top-left, top-right, bottom-left, bottom-right
  (row-major). :func:`dvr_plugin.engine.losses.image_gradient_loss` relies on that order.
- ``"foreground_balanced"``: ``round(foreground_fraction * R)`` pixels from inside each image's
  mask and the rest from outside it. The foreground rays come first. When an image's mask is
  empty all ``R`` rays come from the background; when it is full, all from the foreground. When
  a region holds fewer pixels than asked for, its pixels are used in turn (a random permutation,
  repeated), so every pixel is used before any is used twice.
- ``"foreground_balanced_patch"``: ``R / 4`` 2x2 patches as ``"patch"``, drawn as
  ``"foreground_balanced"`` draws pixels: ``round(foreground_fraction * R / 4)`` patches that
  touch the mask (at least one of their four pixels inside it) first, the rest wholly outside
  it, with the same fallbacks. The image-gradient term sees the silhouette and the object's
  texture as often as the background.

Both balanced modes take an optional share of silhouette rays (``boundary_fraction``): that
share of the pixels (patches) comes from the band of positions within ``boundary_width`` pixels
of the mask's edge, on either side, and is placed after the balanced ones; the foreground /
background split applies to the rest. A silhouette off by a pixel is then trained on directly
rather than at the band's share of the image.

Every function takes an optional ``torch.Generator`` for reproducible draws; it must live on the
device the samples are made on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..renderer.rays import ImageSize, image_size_hw, pixels_to_ndc

SAMPLING_MODES = ("uniform", "patch", "foreground_balanced", "foreground_balanced_patch")
# the modes that sample 2x2 patches (rays in groups of four, in PATCH_OFFSETS order)
PATCH_MODES = ("patch", "foreground_balanced_patch")
# the modes that draw a share of the rays inside the masks (they reuse pixels when a region is
# small, so they accept any number of rays per image)
BALANCED_MODES = ("foreground_balanced", "foreground_balanced_patch")

PATCH_SIZE = 2
# (row, column) offsets of the four rays of a 2x2 patch from its top-left pixel, in ray order.
PATCH_OFFSETS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))
PATCH_TOP_LEFT, PATCH_TOP_RIGHT, PATCH_BOTTOM_LEFT, PATCH_BOTTOM_RIGHT = 0, 1, 2, 3
RAYS_PER_PATCH = len(PATCH_OFFSETS)


class PixelSample(NamedTuple):
    """
    Sampled pixels of a batch of images.

    Members:
        rows: `(B, R)` long, the row index ``i`` of the pixel of each ray.
        cols: `(B, R)` long, the column index ``j`` of the pixel of each ray.
        xys: `(B, R, 2)` NDC ``(x, y)`` of each sampled position (PyTorch3D convention: +X left,
            +Y up, the shorter image side spans [-1, 1]).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    xys: torch.Tensor


def _resolve_device(
    device: torch.device | str | None, generator: torch.Generator | None
) -> torch.device:
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"The generator lives on {generator.device} but the samples are made on {device}; "
            "create the generator on the same device (torch.Generator(device=...))."
        )
    return device


def _check_counts(batch_size: int, n_rays: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if n_rays < 1:
        raise ValueError(f"n_rays must be >= 1, got {n_rays}.")


def _pick_indices(
    batch_size: int,
    n_choices: int,
    n_picks: int,
    *,
    replacement: bool,
    generator: torch.Generator | None,
    device: torch.device,
    what: str,
) -> torch.Tensor:
    """`(B, n_picks)` indices in ``[0, n_choices)``, distinct per row unless ``replacement``."""
    if replacement:
        return torch.randint(
            0, n_choices, (batch_size, n_picks), generator=generator, device=device
        )
    if n_picks > n_choices:
        raise ValueError(
            f"Cannot sample {n_picks} distinct {what} out of {n_choices}; ask for fewer rays "
            "or pass replacement=True."
        )
    keys = torch.rand(batch_size, n_choices, generator=generator, device=device)
    return keys.topk(n_picks, dim=1, sorted=False).indices


def _make_sample(
    rows: torch.Tensor,
    cols: torch.Tensor,
    image_size: tuple[int, int],
    *,
    continuous: bool,
    offsets: torch.Tensor | None = None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> PixelSample:
    """Positions inside the pixels (centre, or ``offsets`` / uniform when continuous) to NDC."""
    if continuous:
        if offsets is None:
            offsets = torch.rand(
                *rows.shape, 2, generator=generator, device=rows.device, dtype=dtype
            )
    else:
        offsets = torch.full((*rows.shape, 2), 0.5, device=rows.device, dtype=dtype)
    pixels = torch.stack([cols.to(dtype), rows.to(dtype)], dim=-1) + offsets
    return PixelSample(rows, cols, pixels_to_ndc(pixels, image_size))


def sample_uniform(
    batch_size: int,
    image_size: ImageSize,
    n_rays: int,
    *,
    patches: bool = False,
    continuous: bool = False,
    replacement: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PixelSample:
    """
    Random pixels, or random 2x2 pixel patches, independently for every image of the batch.

    With ``patches=True`` rays ``4k .. 4k + 3`` form patch ``k`` in the order of
    :data:`PATCH_OFFSETS` (top-left, top-right, bottom-left, bottom-right), and with
    ``continuous=True`` the four positions of a patch share one random offset inside their
    pixels, so they stay exactly one pixel apart.

    Args:
        batch_size: B.
        image_size: ``(H, W)`` or an int; both sides at least 2 for patches.
        n_rays: R, rays per image; a multiple of 4 for patches.
        patches: draw ``R / 4`` 2x2 patches (the ``"patch"`` mode) instead of ``R`` pixels.
        continuous: uniform positions inside the pixels instead of pixel centres.
        replacement: draw pixels (patch positions) independently, so that they may repeat;
            otherwise the R pixels of an image are distinct and ``R <= H * W`` is required
            (with patches, the top-left corners of an image's patches are distinct; the
            patches may still overlap).
        generator: optional ``torch.Generator`` on ``device``.
        device: where to make the samples (default: the generator's device, else CPU).
        dtype: floating type of ``xys``.

    Returns:
        PixelSample with ``rows``, ``cols`` `(B, R)` and ``xys`` `(B, R, 2)`.
    """
    _check_counts(batch_size, n_rays)
    height, width = image_size_hw(image_size)
    n_positions, n_picks = _positions(height, width, n_rays, patches=patches)
    device = _resolve_device(device, generator)
    flat = _pick_indices(
        batch_size,
        n_positions,
        n_picks,
        replacement=replacement,
        generator=generator,
        device=device,
        what="2x2 patch positions" if patches else "pixels",
    )
    return _sample_at(
        flat, (height, width), patches, continuous=continuous, generator=generator, dtype=dtype
    )


def _check_patch_request(n_rays: int, height: int, width: int) -> None:
    if n_rays % RAYS_PER_PATCH != 0:
        raise ValueError(f"Patch sampling needs n_rays divisible by 4, got {n_rays}.")
    if height < PATCH_SIZE or width < PATCH_SIZE:
        raise ValueError(
            f"Patch sampling needs images of at least 2x2 pixels, got {(height, width)}."
        )


def _positions(height: int, width: int, n_rays: int, *, patches: bool) -> tuple[int, int]:
    """
    How many positions an image offers and how many of them ``n_rays`` rays take: its pixels,
    or (``patches``) the top-left corners of its 2x2 patches, one per four rays.
    """
    if not patches:
        return height * width, n_rays
    _check_patch_request(n_rays, height, width)
    return (height - 1) * (width - 1), n_rays // RAYS_PER_PATCH


def _sample_at(
    flat: torch.Tensor,
    image_size: tuple[int, int],
    patches: bool,
    *,
    continuous: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> PixelSample:
    """
    The sample of `(B, P)` flat positions (:func:`_positions`): pixel indices ``row * W + col``
    (`(B, P)` rays), or with ``patches`` the top-left corners ``row * (W - 1) + col`` of 2x2
    patches (`(B, 4 P)` rays in :data:`PATCH_OFFSETS` order, the four of a patch sharing one
    sub-pixel offset when ``continuous``).
    """
    sub_pixel = None
    if patches:
        batch_size, n_patches = flat.shape
        n_rays = n_patches * RAYS_PER_PATCH
        corner_width = image_size[1] - 1
        offsets = torch.tensor(PATCH_OFFSETS, device=flat.device, dtype=torch.long)  # (4, 2)
        rows = ((flat // corner_width)[..., None] + offsets[:, 0]).reshape(batch_size, n_rays)
        cols = ((flat % corner_width)[..., None] + offsets[:, 1]).reshape(batch_size, n_rays)
        if continuous:
            sub_pixel = torch.rand(
                batch_size, n_patches, 1, 2, generator=generator, device=flat.device, dtype=dtype
            )
            sub_pixel = sub_pixel.expand(-1, -1, RAYS_PER_PATCH, -1).reshape(batch_size, n_rays, 2)
    else:
        rows, cols = flat // image_size[1], flat % image_size[1]
    return _make_sample(
        rows,
        cols,
        image_size,
        continuous=continuous,
        offsets=sub_pixel,
        generator=generator,
        dtype=dtype,
    )


def _as_bool_masks(masks: torch.Tensor) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a tensor of shape (B, H, W), got {shape}.")
    if masks.dtype == torch.bool:
        return masks
    return masks > 0.5


def sample_foreground_balanced(
    masks: torch.Tensor,
    n_rays: int,
    *,
    patches: bool = False,
    foreground_fraction: float = 0.5,
    at_least: bool = False,
    boundary_fraction: float = 0.0,
    boundary_width: int = 2,
    continuous: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> PixelSample:
    """
    A fixed share of pixels (or 2x2 patches) from inside each image's mask, the rest from
    outside.

    Image ``b`` gets ``n_fg = round(foreground_fraction * R)`` foreground rays (rays
    ``0 .. n_fg - 1``) and ``R - n_fg`` background rays. Fallbacks: an image whose mask is empty
    gets ``R`` background rays; an image whose mask is full gets ``R`` foreground rays. Within a
    region the pixels are distinct while the region is large enough; otherwise its pixels are used
    in turn in a random order (every pixel once before any twice).

    With ``patches=True`` image ``b`` gets ``P = R / 4`` patches as :func:`sample_uniform` draws
    them (rays ``4k .. 4k + 3`` form patch ``k`` in :data:`PATCH_OFFSETS` order):
    ``round(foreground_fraction * P)`` with at least one of their four pixels inside the mask
    (rays ``0 .. 4 n_fg - 1``), the rest wholly outside it, with the fallbacks and the order
    above applied to the patch positions.

    Args:
        masks: `(B, H, W)` object masks; bool, or numbers where ``> 0.5`` means object. Both
            sides at least 2 for patches.
        n_rays: R, rays per image; a multiple of 4 for patches.
        patches: draw 2x2 patches (the ``"foreground_balanced_patch"`` mode) instead of pixels.
        foreground_fraction: the share of rays (patches) from inside the mask, in [0, 1].
        at_least: make ``foreground_fraction`` a floor: an image whose mask covers a larger
            share of it (of its patch positions) keeps that share (only small objects are
            sampled more often).
        boundary_fraction: the share of rays (patches) drawn from the silhouette band, in
            [0, 1]: the last ``round(boundary_fraction * P)`` of the image's ``P`` pixels
            (patches) come from the positions within ``boundary_width`` pixels of the mask's
            edge, inside or outside (any positions when an image's mask is empty or full).
        boundary_width: the band's half-width in pixels (>= 1).
        continuous: uniform positions inside the pixels instead of pixel centres (one offset
            per patch).
        generator: optional ``torch.Generator`` on ``masks.device``.
        dtype: floating type of ``xys``.

    Returns:
        PixelSample with ``rows``, ``cols`` `(B, R)` and ``xys`` `(B, R, 2)`.
    """
    masks = _as_bool_masks(masks)
    batch_size, height, width = masks.shape
    _check_counts(batch_size, n_rays)
    n_positions, n_picks = _positions(height, width, n_rays, patches=patches)
    _check_fraction(foreground_fraction)
    device = _resolve_device(masks.device, generator)
    inside = masks
    if patches:  # a patch position touches the mask when any of its four pixels is inside it
        inside = masks[:, :-1, :-1] | masks[:, :-1, 1:] | masks[:, 1:, :-1] | masks[:, 1:, 1:]
    _check_boundary(boundary_fraction, boundary_width)
    n_band = int(round(float(boundary_fraction) * n_picks))
    flat = _balanced_picks(
        inside.reshape(batch_size, n_positions),
        n_picks - n_band,
        foreground_fraction=foreground_fraction,
        at_least=at_least,
        generator=generator,
        device=device,
    )
    if n_band > 0:
        band = silhouette_band(inside, boundary_width).reshape(batch_size, n_positions)
        on_band = _balanced_picks(
            band, n_band, foreground_fraction=1.0, generator=generator, device=device
        )
        flat = torch.cat([flat, on_band], dim=1)
    return _sample_at(
        flat, (height, width), patches, continuous=continuous, generator=generator, dtype=dtype
    )


def silhouette_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """
    The positions within ``width`` pixels (Chebyshev distance) of a mask's edge, on either side.

    Args:
        masks: `(B, H, W)` bool masks.
        width: the band's half-width in pixels (>= 1).

    Returns:
        `(B, H, W)` bool: positions whose `(2 width + 1)` square holds both object and
        background (positions beyond the image's border do not count).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}.")
    kernel = 2 * width + 1
    grid = masks[:, None].float()
    has_object = torch.nn.functional.max_pool2d(grid, kernel, stride=1, padding=width) > 0
    has_background = torch.nn.functional.max_pool2d(1 - grid, kernel, stride=1, padding=width) > 0
    return (has_object & has_background)[:, 0]


def _check_boundary(boundary_fraction: float, boundary_width: int) -> None:
    if not 0.0 <= float(boundary_fraction) <= 1.0:
        raise ValueError(f"boundary_fraction must lie in [0, 1], got {boundary_fraction}.")
    if int(boundary_width) < 1:
        raise ValueError(f"boundary_width must be >= 1, got {boundary_width}.")


def _check_fraction(foreground_fraction: float) -> None:
    if not 0.0 <= float(foreground_fraction) <= 1.0:
        raise ValueError(f"foreground_fraction must lie in [0, 1], got {foreground_fraction}.")


def _balanced_picks(
    inside: torch.Tensor,
    n_picks: int,
    *,
    foreground_fraction: float,
    at_least: bool = False,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """
    `(B, n_picks)` indices into the `N` candidates of `(B, N)` bool ``inside``:
    ``round(foreground_fraction * n_picks)`` from the inside ones first (with ``at_least``, the
    inside share of the candidates where that is more), then the outside ones; all from one
    side when the other is empty; a side's candidates in a random order, repeated when it
    holds fewer than asked for.
    """
    batch_size, n_candidates = inside.shape
    n_inside = inside.sum(dim=1)  # (B,)
    n_outside = n_candidates - n_inside

    n_fg_wanted = int(round(float(foreground_fraction) * n_picks))
    n_fg = torch.full((batch_size,), n_fg_wanted, device=device, dtype=torch.long)
    if at_least:
        own_share = torch.round(n_picks * n_inside.double() / n_candidates).long()
        n_fg = torch.maximum(n_fg, own_share)
    n_fg = torch.where(n_inside == 0, torch.zeros_like(n_fg), n_fg)
    n_fg = torch.where(n_outside == 0, torch.full_like(n_fg, n_picks), n_fg)

    # One random key per candidate; lifting a side's keys by 2 puts that side first (in random
    # order) when taking the largest keys.
    keys = torch.rand(batch_size, n_candidates, generator=generator, device=device)
    n_top = min(n_picks, n_candidates)
    fg_order = (keys + 2.0 * inside).topk(n_top, dim=1).indices
    bg_order = (keys + 2.0 * (~inside)).topk(n_top, dim=1).indices

    pick = torch.arange(n_picks, device=device)[None, :]  # (1, n_picks)
    fg_index = pick % n_inside.clamp(min=1)[:, None]
    bg_index = (pick - n_fg[:, None]).clamp(min=0) % n_outside.clamp(min=1)[:, None]
    return torch.where(
        pick < n_fg[:, None], fg_order.gather(1, fg_index), bg_order.gather(1, bg_index)
    )


def sample_pixels(
    masks: torch.Tensor,
    n_rays: int,
    *,
    mode: str = "uniform",
    foreground_fraction: float = 0.5,
    foreground_at_least: bool = False,
    boundary_fraction: float = 0.0,
    boundary_width: int = 2,
    continuous: bool = False,
    replacement: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> PixelSample:
    """
    Sample training pixels for a batch of images, by mode (see the module docstring).

    Args:
        masks: `(B, H, W)` object masks (bool, or numbers where ``> 0.5`` means object). They
            give the batch size, the image size and the device; only the balanced modes read
            their values.
        n_rays: R, rays per image (a multiple of 4 for the patch modes).
        mode: one of :data:`SAMPLING_MODES`.
        foreground_fraction: the share of foreground rays (patches) of the balanced modes.
        foreground_at_least: the balanced modes' ``at_least``: ``foreground_fraction`` is a
            floor, not the share.
        boundary_fraction, boundary_width: the balanced modes' share of rays from the
            silhouette band and its half-width (:func:`sample_foreground_balanced`); the other
            modes refuse a positive share.
        continuous: uniform positions inside the pixels instead of pixel centres.
        replacement: for ``"uniform"`` and ``"patch"``, allow repeated pixels / patches.
        generator: optional ``torch.Generator`` on ``masks.device``.
        dtype: floating type of ``xys``.

    Returns:
        PixelSample with ``rows``, ``cols`` `(B, R)` and ``xys`` `(B, R, 2)`.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}.")
    patches = mode in PATCH_MODES
    if boundary_fraction and mode not in BALANCED_MODES:
        raise ValueError(
            f"boundary_fraction needs a balanced mode {BALANCED_MODES}, got mode {mode!r}."
        )
    if mode in BALANCED_MODES:
        return sample_foreground_balanced(
            masks,
            n_rays,
            patches=patches,
            foreground_fraction=foreground_fraction,
            at_least=foreground_at_least,
            boundary_fraction=boundary_fraction,
            boundary_width=boundary_width,
            continuous=continuous,
            generator=generator,
            dtype=dtype,
        )
    masks = _as_bool_masks(masks)
    batch_size, height, width = masks.shape
    return sample_uniform(
        batch_size,
        (height, width),
        n_rays,
        patches=patches,
        continuous=continuous,
        replacement=replacement,
        generator=generator,
        device=masks.device,
        dtype=dtype,
    )


def gather(images: torch.Tensor, sample: PixelSample) -> torch.Tensor:
    """
    The values of images at sampled pixels (nearest neighbour: the pixel containing each ray).

    Args:
        images: `(B, H, W)` or `(B, H, W, C)`, any dtype (colours, masks, depths).
        sample: a :class:`PixelSample` with ``rows``, ``cols`` `(B, R)` for images of this size.

    Returns:
        `(B, R)` or `(B, R, C)`, matching ``images``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape (B, H, W) or (B, H, W, C), got {shape}.")
    rows, cols = sample.rows, sample.cols
    if rows.shape != cols.shape or rows.dim() != 2:
        raise ValueError(
            f"sample.rows and sample.cols must both be (B, R), got {tuple(rows.shape)} and "
            f"{tuple(cols.shape)}."
        )
    batch_size, height, width = images.shape[:3]
    if rows.shape[0] != batch_size:
        raise ValueError(f"Got {batch_size} images for a sample of {rows.shape[0]} images.")
    channels = images.shape[3] if images.dim() == 4 else 1
    flat_images = images.reshape(batch_size, height * width, channels)
    index = (rows * width + cols).to(images.device)
    values = flat_images.gather(1, index[..., None].expand(-1, -1, channels))
    return values if images.dim() == 4 else values[..., 0]
