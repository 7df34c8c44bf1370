"""
PyTorch3D's NeRF-style volume renderer on DVR's network: the third column of the core benchmark.

``ImplicitRenderer`` with ``NDCMultinomialRaysampler`` (full images) or ``MonteCarloRaysampler``
(random rays, for training) and ``EmissionAbsorptionRaymarcher``, ``n`` samples per ray spread
evenly over the z-depths at which the camera can see the bounding box (the cube's circumscribed
sphere: ``distance -+ 0.55 sqrt(3)``). The network is the same field DVR renders; each sample's
occupancy probability ``sigmoid(logit)`` is used as its opacity (alpha), which is what
``EmissionAbsorptionRaymarcher`` composites (``w_i = a_i prod_{j<i} (1 - a_j)``; the
occupancy-as-alpha reading of UNISURF). The features are RGB and the sample's depth, so one
composite gives the image and the expected depth (for a depth loss like DVR's). Every sample is
evaluated with autograd in training, so memory grows with the sample count: the cost this
comparison shows.

    python -m integration.benchmarks.bench_volume --device cuda     # this column alone
"""

from __future__ import annotations

import math

import torch
from pytorch3d.renderer import (
    EmissionAbsorptionRaymarcher,
    ImplicitRenderer,
    MonteCarloRaysampler,
    NDCMultinomialRaysampler,
)
from torch import nn

from dvr_plugin.fields.field import evaluate_field
from integration.benchmarks.common import (
    adam,
    benchmark_parser,
    cameras,
    device_name,
    fitted_reference_field,
    fmt_bytes,
    fmt_seconds,
    measure,
)

BOX_HALF_SIZE = 0.55


def volume_depth_range(distance: float = 1.5) -> tuple[float, float]:
    """The z-depths between which a camera ``distance`` from the origin can see the box."""
    radius = BOX_HALF_SIZE * math.sqrt(3.0)
    return max(distance - radius, 1e-3), distance + radius


class OccupancyAlphaFunction(nn.Module):
    """
    A DVR field as a PyTorch3D volumetric function for emission-absorption compositing.

    Returns ``densities`` `(B, ..., n, 1)` = ``sigmoid(occupancy logit)`` (used as per-sample
    opacity) and ``features`` `(B, ..., n, 4)` = RGB and the sample's length along the ray.

    Args (keyword-only):
        field: an occupancy field following :mod:`dvr_plugin.fields.field`'s protocol.
    """

    def __init__(self, *, field) -> None:
        super().__init__()
        self.field = field

    def forward(self, ray_bundle, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = ray_bundle.lengths
        points = ray_bundle.origins[..., None, :] + (
            lengths[..., None] * ray_bundle.directions[..., None, :]
        )
        shape = points.shape[:-1]
        out = evaluate_field(self.field, points.reshape(shape[0], -1, 3))
        alpha = torch.sigmoid(out.values).reshape(*shape, 1)
        rgb = out.rgb if out.rgb is not None else torch.ones_like(points.reshape(shape[0], -1, 3))
        features = torch.cat([rgb.reshape(*shape, 3), lengths[..., None]], dim=-1)
        return alpha, features


def volume_renderer(
    *,
    n_pts_per_ray: int,
    image_size: int | None = None,
    n_rays: int | None = None,
    ray_extent: float = 0.6,
    distance: float = 1.5,
) -> ImplicitRenderer:
    """
    ``ImplicitRenderer`` + ``EmissionAbsorptionRaymarcher`` with ``n_pts_per_ray`` samples:
    a full ``image_size`` grid, or ``n_rays`` random rays with NDC ``|x|, |y| <= ray_extent``.
    """
    min_depth, max_depth = volume_depth_range(distance)
    if image_size is not None:
        raysampler = NDCMultinomialRaysampler(
            image_width=image_size,
            image_height=image_size,
            n_pts_per_ray=n_pts_per_ray,
            min_depth=min_depth,
            max_depth=max_depth,
        )
    elif n_rays is not None:
        raysampler = MonteCarloRaysampler(
            min_x=-ray_extent,
            max_x=ray_extent,
            min_y=-ray_extent,
            max_y=ray_extent,
            n_rays_per_image=n_rays,
            n_pts_per_ray=n_pts_per_ray,
            min_depth=min_depth,
            max_depth=max_depth,
        )
    else:
        raise ValueError("Give image_size or n_rays.")
    return ImplicitRenderer(raysampler=raysampler, raymarcher=EmissionAbsorptionRaymarcher())


def render_case(field, device: str, image_size: int, n_steps: int, **measure_kwargs) -> dict:
    """Time one no-grad render of ``image_size`` x ``image_size`` pixels."""
    renderer = volume_renderer(n_pts_per_ray=n_steps, image_size=image_size)
    function = OccupancyAlphaFunction(field=field)
    camera = cameras(1, device)

    def run():
        with torch.no_grad():
            return renderer(cameras=camera, volumetric_function=function)[0]

    result = measure(run, device=device, **measure_kwargs)
    result.pop("_output")
    return result


def train_case(field, device: str, n_rays: int, n_steps: int, **measure_kwargs) -> dict:
    """Time one training step (expected-depth L1 loss, backward, Adam) on ``n_rays`` rays."""
    renderer = volume_renderer(n_pts_per_ray=n_steps, n_rays=n_rays)
    function = OccupancyAlphaFunction(field=field)
    optimizer = adam(field, device)
    camera = cameras(1, device)

    def run():
        out = renderer(cameras=camera, volumetric_function=function)[0]
        depth, opacity = out[..., 3], out[..., 4]
        loss = (depth - 1.4 * opacity).abs().sum() / n_rays
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        result = measure(run, device=device, **measure_kwargs)
    finally:
        optimizer.zero_grad(set_to_none=True)
    result.pop("_output")
    return result


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run")
    args = parser.parse_args(argv)
    hidden, fit, size, rays = (64, 20, 32, 256) if args.quick else (512, 400, 256, 4096)
    field = fitted_reference_field(hidden_size=hidden, steps=fit, device=args.device)
    print(f"device: {device_name(args.device)}")
    print("| workload | samples | time | peak memory |\n|---|---|---|---|")
    for n_steps in (16, 64, 128):
        for name, case, arg in (("render", render_case, size), ("train", train_case, rays)):
            try:
                result = case(field, args.device, arg, n_steps, repeats=3)
                print(
                    f"| {name} {arg} | {n_steps} | {fmt_seconds(result['seconds'])} | "
                    f"{fmt_bytes(result['peak_bytes'])} |"
                )
            except torch.OutOfMemoryError:
                print(f"| {name} {arg} | {n_steps} | out of memory | |")
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
