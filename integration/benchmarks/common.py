"""Shared pieces of the benchmarks: a fitted reference-size network, cameras, timing, memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from dvr_plugin.demo import orbit_cameras
from dvr_plugin.field import OccupancyTextureField
from dvr_plugin.shapes import demo_scene


def fitted_reference_field(
    *, hidden_size: int = 512, steps: int = 400, batch: int = 32768, device: str = "cpu"
) -> OccupancyTextureField:
    """
    The reference decoder (H=512, 5 blocks, no latent) fitted with 3D supervision to the demo
    scene's occupancy and colour, so renders cover a realistic part of the image.
    """
    torch.manual_seed(0)
    target = demo_scene().to(device)
    field = OccupancyTextureField(hidden_size=hidden_size).to(device)
    optimizer = torch.optim.Adam(field.parameters(), lr=3e-4)
    for _ in range(steps):
        points = torch.rand(1, batch, 3, device=device) * 1.1 - 0.55
        with torch.no_grad():
            truth = target(points)
        out = field(points)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            out.values, (truth.values > 0).float()
        ) + (out.rgb - truth.rgb).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    field.eval()
    for parameter in field.parameters():
        parameter.requires_grad_(True)
    return field


def cameras(n: int, device: str):
    """``n`` cameras 1.5 from the origin (the setting of the reference figures)."""
    return orbit_cameras(n, distance=1.5, device=device)


def measure(fn: Callable[[], object], *, device: str, repeats: int = 5, warmup: int = 2) -> dict:
    """Median wall time (s) over ``repeats`` runs and the peak memory of one run (bytes)."""
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(value) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.0f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os

    return f"CPU ({os.cpu_count()} cores)"
