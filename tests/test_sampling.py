"""Tests of dvr_plugin.engine.sampling: pixel positions, NDC, patches, foreground share."""

from __future__ import annotations

import pytest
import torch

from dvr_plugin.engine.sampling import (
    PATCH_OFFSETS,
    SAMPLING_MODES,
    PixelSample,
    gather,
    sample_foreground_balanced,
    sample_pixels,
    sample_uniform,
    silhouette_band,
)
from dvr_plugin.renderer.rays import ndc_grid, ndc_to_pixels


def make_masks(
    batch_size: int = 3, height: int = 12, width: int = 17, seed: int = 0
) -> torch.Tensor:
    """`(B, H, W)` bool masks: a filled rectangle per image (a static factory for the tests)."""
    masks = torch.zeros(batch_size, height, width, dtype=torch.bool)
    for b in range(batch_size):
        masks[b, 2 + b : height - 3, 3 : width - 4 - b] = True
    return masks


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_in_image(sample: PixelSample, height: int, width: int) -> None:
    assert sample.rows.dtype == torch.long and sample.cols.dtype == torch.long
    assert bool((sample.rows >= 0).all() and (sample.rows < height).all())
    assert bool((sample.cols >= 0).all() and (sample.cols < width).all())
    # The continuous position lies inside the named pixel.
    pixels = ndc_to_pixels(sample.xys, (height, width))
    u, v = pixels[..., 0], pixels[..., 1]
    tol = 1e-4
    assert bool(((u >= sample.cols - tol) & (u <= sample.cols + 1 + tol)).all())
    assert bool(((v >= sample.rows - tol) & (v <= sample.rows + 1 + tol)).all())


@pytest.mark.parametrize("image_size", [(12, 17), (17, 12), 9])
def test_uniform_centres_match_ndc_grid(image_size):
    sample = sample_uniform(2, image_size, 40, generator=_generator())
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    assert sample.rows.shape == (2, 40) and sample.xys.shape == (2, 40, 2)
    _check_in_image(sample, height, width)
    grid = ndc_grid((height, width))
    assert torch.equal(sample.xys, grid[sample.rows, sample.cols])
    # Without replacement the pixels of one image are distinct.
    for b in range(2):
        flat = sample.rows[b] * width + sample.cols[b]
        assert flat.unique().numel() == 40


def test_uniform_continuous_inside_pixels_and_not_centres():
    sample = sample_uniform(2, (8, 10), 50, continuous=True, generator=_generator())
    _check_in_image(sample, 8, 10)
    grid = ndc_grid((8, 10))
    assert not torch.allclose(sample.xys, grid[sample.rows, sample.cols])
    # Within half a pixel of the centre, in NDC units (2 / min(H, W) per pixel).
    assert float((sample.xys - grid[sample.rows, sample.cols]).abs().max()) <= 1.0 / 8 + 1e-6


def test_uniform_whole_image_and_replacement():
    sample = sample_uniform(1, (3, 4), 12, generator=_generator())
    assert sorted((sample.rows[0] * 4 + sample.cols[0]).tolist()) == list(range(12))
    with pytest.raises(ValueError, match="replacement=True"):
        sample_uniform(1, (3, 4), 13)
    many = sample_uniform(2, (3, 4), 100, replacement=True, generator=_generator())
    _check_in_image(many, 3, 4)


def test_reproducible_with_generator():
    for mode in ("uniform", "patch", "foreground_balanced"):
        masks = make_masks()
        a = sample_pixels(masks, 32, mode=mode, continuous=True, generator=_generator(7))
        b = sample_pixels(masks, 32, mode=mode, continuous=True, generator=_generator(7))
        c = sample_pixels(masks, 32, mode=mode, continuous=True, generator=_generator(8))
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
        assert not torch.equal(a.xys, c.xys)


def test_patches_are_2x2_in_documented_order():
    assert PATCH_OFFSETS == ((0, 0), (0, 1), (1, 0), (1, 1))
    height, width = 7, 9
    sample = sample_uniform(2, (height, width), 48, patches=True, generator=_generator())
    _check_in_image(sample, height, width)
    rows = sample.rows.reshape(2, 12, 4)
    cols = sample.cols.reshape(2, 12, 4)
    # top-left, top-right, bottom-left, bottom-right
    assert torch.equal(rows[..., 1], rows[..., 0]) and torch.equal(cols[..., 1], cols[..., 0] + 1)
    assert torch.equal(rows[..., 2], rows[..., 0] + 1) and torch.equal(cols[..., 2], cols[..., 0])
    assert torch.equal(rows[..., 3], rows[..., 0] + 1)
    assert torch.equal(cols[..., 3], cols[..., 0] + 1)
    assert torch.equal(sample.xys, ndc_grid((height, width))[sample.rows, sample.cols])
    # In NDC, +X points left and +Y up: the right neighbour has the smaller x, the lower one the
    # smaller y.
    xys = sample.xys.reshape(2, 12, 4, 2)
    assert bool((xys[..., 1, 0] < xys[..., 0, 0]).all())
    assert bool((xys[..., 2, 1] < xys[..., 0, 1]).all())
    # Distinct top-left corners (no replacement).
    corners = rows[..., 0] * width + cols[..., 0]
    assert all(corners[b].unique().numel() == 12 for b in range(2))


def test_patches_continuous_share_one_offset():
    sample = sample_uniform(1, (6, 6), 16, patches=True, continuous=True, generator=_generator(3))
    _check_in_image(sample, 6, 6)
    pixels = ndc_to_pixels(sample.xys, (6, 6)).reshape(1, 4, 4, 2)
    offsets = pixels - torch.stack([sample.cols, sample.rows], dim=-1).reshape(1, 4, 4, 2)
    assert torch.allclose(offsets, offsets[:, :, :1].expand_as(offsets), atol=1e-5)


def test_patch_validation():
    with pytest.raises(ValueError, match="divisible by 4"):
        sample_uniform(1, 8, 10, patches=True)
    with pytest.raises(ValueError, match="at least 2x2"):
        sample_uniform(1, (1, 8), 4, patches=True)


def test_foreground_share():
    masks = make_masks()
    n_rays, fraction = 40, 0.25
    sample = sample_foreground_balanced(
        masks, n_rays, foreground_fraction=fraction, generator=_generator()
    )
    _check_in_image(sample, 12, 17)
    inside = gather(masks, sample)
    n_fg = round(fraction * n_rays)
    assert torch.equal(inside.sum(dim=1), torch.full((3,), n_fg))
    assert bool(inside[:, :n_fg].all()) and not bool(inside[:, n_fg:].any())
    for b in range(3):  # distinct pixels in both regions (both are large enough)
        flat = sample.rows[b] * 17 + sample.cols[b]
        assert flat.unique().numel() == n_rays


def test_foreground_empty_full_and_small_masks():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[1] = True  # full
    masks[2, 1, 2] = True  # a single foreground pixel
    sample = sample_foreground_balanced(masks, 10, foreground_fraction=0.5, generator=_generator())
    inside = gather(masks, sample)
    assert not bool(inside[0].any())  # empty mask: all background
    assert bool(inside[1].all())  # full mask: all foreground
    assert inside[2].tolist() == [True] * 5 + [False] * 5  # the lone pixel, used five times
    assert sample.rows[2, :5].tolist() == [1] * 5 and sample.cols[2, :5].tolist() == [2] * 5
    # A region smaller than asked for: every pixel once before any twice.
    tiny = torch.zeros(1, 2, 2, dtype=torch.bool)
    tiny[0, 0, :] = True
    s = sample_foreground_balanced(tiny, 8, foreground_fraction=0.5, generator=_generator())
    fg = (s.rows[0, :4] * 2 + s.cols[0, :4]).tolist()
    assert sorted(fg[:2]) == [0, 1] and sorted(fg[2:]) == [0, 1]
    assert float(gather(tiny.float(), s)[0, 4:].sum()) == 0.0


def _patch_touches(masks: torch.Tensor, sample: PixelSample) -> torch.Tensor:
    """`(B, P)` whether each sampled 2x2 patch has a pixel inside the mask, checked pixel by
    pixel through :func:`gather` (independently of the sampler's own test)."""
    inside = gather(masks, sample)
    return inside.reshape(inside.shape[0], -1, 4).any(dim=-1)


def test_foreground_balanced_patches_share_order_and_distinct_corners():
    masks = make_masks()
    n_rays, fraction = 48, 0.25  # 12 patches, 3 touching the mask
    sample = sample_foreground_balanced(
        masks, n_rays, patches=True, foreground_fraction=fraction, generator=_generator()
    )
    _check_in_image(sample, 12, 17)
    rows = sample.rows.reshape(3, 12, 4)
    cols = sample.cols.reshape(3, 12, 4)
    # 2x2 patches in PATCH_OFFSETS order, as sample_uniform gives them
    for k, (dr, dc) in enumerate(PATCH_OFFSETS):
        assert torch.equal(rows[..., k], rows[..., 0] + dr)
        assert torch.equal(cols[..., k], cols[..., 0] + dc)
    touches = _patch_touches(masks, sample)
    assert touches[:, :3].all() and not touches[:, 3:].any()
    for b in range(3):  # distinct corners (both sides are large enough)
        assert (rows[b, :, 0] * 17 + cols[b, :, 0]).unique().numel() == 12
    # a patch on the silhouette counts as touching: every foreground patch of a mask that is
    # one pixel wide holds that pixel
    line = torch.zeros(1, 8, 8, dtype=torch.bool)
    line[0, :, 5] = True
    s = sample_foreground_balanced(
        line, 16, patches=True, foreground_fraction=1.0, generator=_generator()
    )
    assert set(s.cols.reshape(4, 4)[:, 0].tolist()) <= {4, 5}
    assert bool(_patch_touches(line, s).all())


def test_foreground_balanced_patches_fallbacks_and_validation():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[1] = True  # full: every patch touches
    masks[2, 0, 0] = True  # one pixel: a single patch position touches it
    sample = sample_foreground_balanced(
        masks, 16, patches=True, foreground_fraction=0.5, generator=_generator()
    )
    touches = _patch_touches(masks, sample)
    assert not touches[0].any()  # empty mask: all background
    assert touches[1].all()  # full mask: all foreground
    assert touches[2].tolist() == [True, True, False, False]  # the lone corner, twice
    assert sample.rows[2, :8].tolist() == [0, 0, 1, 1] * 2
    with pytest.raises(ValueError, match="divisible by 4"):
        sample_foreground_balanced(masks, 10, patches=True)
    with pytest.raises(ValueError, match="at least 2x2"):
        sample_foreground_balanced(torch.ones(1, 1, 8, dtype=torch.bool), 4, patches=True)
    with pytest.raises(ValueError, match="foreground_fraction"):
        sample_foreground_balanced(masks, 8, patches=True, foreground_fraction=-0.1)
    via = sample_pixels(
        masks, 16, mode="foreground_balanced_patch", foreground_fraction=0.5,
        generator=_generator(),
    )
    assert torch.equal(via.rows, sample.rows) and torch.equal(via.cols, sample.cols)


def test_foreground_fraction_as_a_floor():
    # image 0: a small object (a quarter of the pixels), image 1: a large one (three quarters)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, :, :6] = True
    sample = sample_foreground_balanced(
        masks, 16, foreground_fraction=0.5, at_least=True, generator=_generator()
    )
    # the small object is raised to the floor (8 of 16); the large one keeps its 12 of 16
    assert gather(masks, sample).sum(dim=1).tolist() == [8, 12]
    exact = sample_foreground_balanced(masks, 16, foreground_fraction=0.5, generator=_generator())
    assert gather(masks, exact).sum(dim=1).tolist() == [8, 8]
    # patches: 49 positions; 16 (small) and 42 (large) touch the mask
    patches = sample_pixels(
        masks, 28, mode="foreground_balanced_patch", foreground_fraction=0.5,
        foreground_at_least=True, generator=_generator(),
    )
    assert _patch_touches(masks, patches).sum(dim=1).tolist() == [4, round(7 * 42 / 49)]


def test_sample_pixels_dispatch_and_validation():
    masks = make_masks()
    uniform = sample_pixels(masks, 16, generator=_generator())
    assert torch.equal(uniform.rows, sample_uniform(3, (12, 17), 16, generator=_generator()).rows)
    with pytest.raises(ValueError, match="mode must be one of"):
        sample_pixels(masks, 16, mode="stratified")
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        sample_pixels(masks[0], 16)
    with pytest.raises(ValueError, match="foreground_fraction"):
        sample_pixels(masks, 16, mode="foreground_balanced", foreground_fraction=1.5)
    with pytest.raises(ValueError, match="n_rays"):
        sample_pixels(masks, 0)
    if torch.cuda.is_available():  # pragma: no cover - CPU-only machines
        with pytest.raises(ValueError, match="generator"):
            sample_pixels(masks.cuda(), 16, generator=_generator())


def test_gather_images_masks_and_depths():
    torch.manual_seed(0)
    images = torch.rand(2, 5, 6, 3)
    depths = torch.rand(2, 5, 6)
    sample = sample_uniform(2, (5, 6), 7, generator=_generator())
    rgb = gather(images, sample)
    depth = gather(depths, sample)
    assert rgb.shape == (2, 7, 3) and depth.shape == (2, 7)
    for b in range(2):
        for r in range(7):
            i, j = int(sample.rows[b, r]), int(sample.cols[b, r])
            assert torch.equal(rgb[b, r], images[b, i, j])
            assert depth[b, r] == depths[b, i, j]
    assert gather(depths > 0.5, sample).dtype == torch.bool
    with pytest.raises(ValueError, match="images"):
        gather(images[0, 0], sample)
    with pytest.raises(ValueError, match="3 images|images for a sample"):
        gather(torch.rand(3, 5, 6), sample)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda():  # pragma: no cover - CPU-only machines
    masks = make_masks().cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    for mode in SAMPLING_MODES:
        sample = sample_pixels(
            masks, 16, mode=mode, foreground_at_least=True, generator=generator
        )
        assert sample.xys.device.type == "cuda"
        assert torch.equal(sample.xys, ndc_grid((12, 17), device="cuda")[sample.rows, sample.cols])


def _band_brute_force(masks: torch.Tensor, width: int) -> torch.Tensor:
    """The silhouette band by its definition: object and background both within ``width``
    pixels (Chebyshev distance) of a position, inside the image."""
    batch, height, width_px = masks.shape
    band = torch.zeros_like(masks)
    for b in range(batch):
        for r in range(height):
            for c in range(width_px):
                window = masks[
                    b, max(0, r - width) : r + width + 1, max(0, c - width) : c + width + 1
                ]
                band[b, r, c] = bool(window.any()) and not bool(window.all())
    return band


@pytest.mark.parametrize("width", [1, 2, 3])
def test_silhouette_band_matches_its_definition(width):
    generator = torch.Generator().manual_seed(width)
    masks = torch.rand(3, 13, 17, generator=generator) > 0.7
    masks[0] = False  # an empty mask has no band
    masks[1, 3:10, 4:12] = True
    assert torch.equal(silhouette_band(masks, width), _band_brute_force(masks, width))
    assert not silhouette_band(masks, width)[0].any()
    with pytest.raises(ValueError, match="width must be >= 1"):
        silhouette_band(masks, 0)


@pytest.mark.parametrize("mode", ["foreground_balanced", "foreground_balanced_patch"])
def test_boundary_share_comes_from_the_band_after_the_balanced_rays(mode):
    masks = torch.zeros(2, 24, 28, dtype=torch.bool)
    masks[0, 6:18, 5:20] = True
    masks[1, 10:14, 10:13] = True
    patches = mode == "foreground_balanced_patch"
    n_rays, fraction = 64, 0.25
    sample = sample_pixels(
        masks,
        n_rays,
        mode=mode,
        boundary_fraction=fraction,
        boundary_width=2,
        generator=torch.Generator().manual_seed(0),
    )
    unit = 4 if patches else 1
    n_band = round(fraction * n_rays / unit) * unit
    # the band of the positions drawn: pixels, or the top-left corners of patches that touch
    # the mask
    if patches:
        touch = masks[:, :-1, :-1] | masks[:, :-1, 1:] | masks[:, 1:, :-1] | masks[:, 1:, 1:]
        band = _band_brute_force(touch, 2)
        rows, cols = sample.rows[:, -n_band::4], sample.cols[:, -n_band::4]
    else:
        band = _band_brute_force(masks, 2)
        rows, cols = sample.rows[:, -n_band:], sample.cols[:, -n_band:]
    for b in range(2):
        assert band[b, rows[b], cols[b]].all()
    # the balanced part is the sample without the band share, over fewer rays
    plain = sample_pixels(
        masks, n_rays - n_band, mode=mode, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(sample.rows[:, : n_rays - n_band], plain.rows)
    assert torch.equal(sample.cols[:, : n_rays - n_band], plain.cols)


def test_boundary_share_fallbacks_and_validation():
    empty = torch.zeros(1, 8, 8, dtype=torch.bool)
    sample = sample_pixels(empty, 16, mode="foreground_balanced", boundary_fraction=0.5)
    assert sample.rows.shape == (1, 16)  # no band: any positions
    masks = torch.ones(1, 8, 8, dtype=torch.bool)
    unchanged = sample_pixels(
        masks, 16, mode="foreground_balanced", generator=torch.Generator().manual_seed(3)
    )
    zero = sample_pixels(
        masks,
        16,
        mode="foreground_balanced",
        boundary_fraction=0.0,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(unchanged.rows, zero.rows) and torch.equal(unchanged.cols, zero.cols)
    with pytest.raises(ValueError, match="boundary_fraction needs a balanced mode"):
        sample_pixels(masks, 16, mode="uniform", boundary_fraction=0.1)
    with pytest.raises(ValueError, match="boundary_fraction must lie in"):
        sample_pixels(masks, 16, mode="foreground_balanced", boundary_fraction=1.5)
    with pytest.raises(ValueError, match="boundary_width must be >= 1"):
        sample_pixels(
            masks, 16, mode="foreground_balanced", boundary_fraction=0.1, boundary_width=0
        )
