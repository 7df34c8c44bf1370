"""
Core renderer benchmark: ours (chunked march) against the dense mode that evaluates every
marching point at once (what the reference implementation does), in one run.

Workloads (the reference decoder, H=512, fitted to the demo scene; cameras 1.5 from the origin):
  - render 256x256 (and 512x512), no grad, 8 secant steps;
  - a training step on 4096 random rays with a depth L1 loss (forward, backward, Adam step);
at n_steps 16 / 64 / 128 / 256 / 512. Prints a markdown table (time, peak memory, ratios) and
writes JSON + markdown when ``--out`` is given.

    python -m integration.benchmarks.bench_core --device cuda --out docs/benchmarks
    python -m integration.benchmarks.bench_core --quick          # small CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import torch

from dvr_plugin.raysampler import SecantRaysampler
from dvr_plugin.renderer import DVRRenderer
from integration.benchmarks.common import (
    cameras,
    device_name,
    fitted_reference_field,
    fmt_bytes,
    fmt_seconds,
    measure,
)


def _render_case(field, device, image_size, n_steps, chunk_size, repeats):
    renderer = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(
            image_width=image_size,
            image_height=image_size,
            n_steps=n_steps,
            chunk_size=chunk_size,
            compute_normals=False,
            check_finite=False,
        ),
    )
    camera = cameras(1, device)

    def run():
        with torch.no_grad():
            return renderer(camera)

    return measure(run, device=device, repeats=repeats, warmup=1)


def _train_case(field, device, n_rays, n_steps, chunk_size, repeats):
    renderer = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(
            n_steps=n_steps, chunk_size=chunk_size, compute_normals=False, check_finite=False
        ),
    )
    optimizer = torch.optim.Adam(field.parameters(), lr=0.0)  # lr 0: the field stays fixed
    camera = cameras(1, device)
    generator = torch.Generator(device=device).manual_seed(0)
    xys = (torch.rand(1, n_rays, 2, device=device, generator=generator) * 2 - 1) * 0.6
    with torch.no_grad():
        target = renderer(camera, xys=xys, n_steps=128).depths + 0.01

    def run():
        out = renderer(camera, xys=xys)
        loss = ((out.depths - target).abs() * out.masks).sum() / n_rays
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return measure(run, device=device, repeats=repeats)


def run_benchmark(
    *,
    device: str,
    image_sizes: list[int],
    step_counts: list[int],
    n_rays: int,
    hidden_size: int,
    fit_steps: int,
    repeats: int,
    dense_limit_points: Optional[int],
) -> dict:
    field = fitted_reference_field(hidden_size=hidden_size, steps=fit_steps, device=device)
    rows = []
    cases = [("render", s) for s in image_sizes] + [("train", n_rays)]
    for workload, size in cases:
        for n_steps in step_counts:
            if workload == "render" and size > 256 and n_steps > 128:
                continue
            n_points = (size * size if workload == "render" else size) * n_steps
            result = {"workload": workload, "size": size, "n_steps": n_steps}
            for mode, chunk in (("ours", 2**16), ("dense", None)):
                if mode == "dense" and dense_limit_points and n_points > dense_limit_points:
                    result[mode] = None
                    continue
                try:
                    if workload == "render":
                        result[mode] = _render_case(field, device, size, n_steps, chunk, repeats)
                    else:
                        result[mode] = _train_case(field, device, size, n_steps, chunk, repeats)
                except torch.OutOfMemoryError:
                    result[mode] = "out of memory"
                    torch.cuda.empty_cache()
            rows.append(result)
            print(_row(result), flush=True)
    return {"device": device_name(device), "hidden_size": hidden_size, "rows": rows}


HEADER = (
    "| workload | n_steps | ours: time | dense: time | speed-up | ours: peak | dense: peak "
    "| memory ratio |\n|---|---|---|---|---|---|---|---|"
)


def _row(result: dict) -> str:
    ours, dense = result["ours"], result["dense"]
    name = (
        f"render {result['size']}x{result['size']}"
        if result["workload"] == "render"
        else f"train step, {result['size']} rays"
    )

    def cell(entry, key, fmt):
        if entry is None:
            return "skipped"
        if isinstance(entry, str):
            return entry
        return fmt(entry[key])

    speed = memory = "-"
    if isinstance(ours, dict) and isinstance(dense, dict):
        speed = f"{dense['seconds'] / ours['seconds']:.2f}x"
        if ours["peak_bytes"] and dense["peak_bytes"]:
            memory = f"{dense['peak_bytes'] / ours['peak_bytes']:.1f}x"
    return (
        f"| {name} | {result['n_steps']} | {cell(ours, 'seconds', fmt_seconds)} | "
        f"{cell(dense, 'seconds', fmt_seconds)} | {speed} | {cell(ours, 'peak_bytes', fmt_bytes)}"
        f" | {cell(dense, 'peak_bytes', fmt_bytes)} | {memory} |"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run")
    parser.add_argument("--out", default=None, help="folder for bench_core.json / .md")
    args = parser.parse_args(argv)
    if args.quick:
        settings = dict(
            image_sizes=[32], step_counts=[16, 64], n_rays=256, hidden_size=64, fit_steps=50,
            repeats=2, dense_limit_points=None,
        )
    else:
        settings = dict(
            image_sizes=[256, 512], step_counts=[16, 64, 128, 256, 512], n_rays=4096,
            hidden_size=512, fit_steps=400, repeats=3, dense_limit_points=2**27,
        )
    print(f"device: {device_name(args.device)}")
    print(HEADER)
    report = run_benchmark(device=args.device, **settings)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_core.json"), "w") as handle:
            json.dump(report, handle, indent=2)
        with open(os.path.join(args.out, "bench_core.md"), "w") as handle:
            handle.write(f"Device: {report['device']}\n\n{HEADER}\n")
            handle.write("\n".join(_row(row) for row in report["rows"]) + "\n")


if __name__ == "__main__":
    main()
