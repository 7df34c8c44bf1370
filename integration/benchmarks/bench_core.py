"""
Core renderer benchmark: ours (chunked march, optionally with a TF32 / bfloat16 march) against
the dense mode that evaluates every marching point at once (what the reference implementation
does), in one run.

Workloads (the reference decoder, H=512, fitted to the demo scene; cameras 1.5 from the origin):
  - render 256x256 (and 512x512), no grad, 8 secant steps;
  - a training step on 4096 random rays with a depth L1 loss (forward, backward, Adam step);
at n_steps 16 / 64 / 128 / 256 / 512. For each case: median time, peak GPU memory, speed-up and
memory ratio against the dense mode, and for reduced-precision marches the agreement with the
float32 march (share of rays with the same hit flag; median |depth difference| relative to the
depth range). Prints markdown; writes JSON + markdown with ``--out``.

    python -m integration.benchmarks.bench_core --device cuda --out docs/benchmarks
    python -m integration.benchmarks.bench_core --quick          # small CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional

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

MODES = {
    "dense": dict(chunk_size=None, march_precision="float32"),
    "ours": dict(chunk_size=2**16, march_precision="float32"),
    "ours tf32": dict(chunk_size=2**16, march_precision="tf32"),
    "ours bf16": dict(chunk_size=2**16, march_precision="bfloat16"),
}


def _sampler(n_steps: int, mode: str, image_size: Optional[int] = None) -> SecantRaysampler:
    return SecantRaysampler(
        image_width=image_size,
        image_height=image_size,
        n_steps=n_steps,
        compute_normals=False,
        check_finite=False,
        **MODES[mode],
    )


def _render_case(field, device, image_size, n_steps, mode, repeats):
    renderer = DVRRenderer(field=field, raysampler=_sampler(n_steps, mode, image_size))
    camera = cameras(1, device)

    def run():
        with torch.no_grad():
            return renderer(camera)

    result = measure(run, device=device, repeats=repeats, warmup=1)
    out = run()
    result["_depths"], result["_hit"] = out.depths, out.hit
    return result


def _train_case(field, device, n_rays, n_steps, mode, repeats):
    renderer = DVRRenderer(field=field, raysampler=_sampler(n_steps, mode))
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


def _agreement(result: Dict, reference: Dict) -> None:
    hit, ref_hit = result.pop("_hit"), reference["_hit"]
    depth, ref_depth = result.pop("_depths"), reference["_depths"]
    result["hit_agreement"] = float((hit == ref_hit).float().mean())
    both = hit & ref_hit
    if bool(both.any()):
        depth_range = float(ref_depth[ref_hit].max() - ref_depth[ref_hit].min())
        diff = (depth - ref_depth)[both].abs()
        result["median_depth_diff_rel"] = float(diff.median()) / max(depth_range, 1e-12)


def run_benchmark(
    *,
    device: str,
    image_sizes: List[int],
    step_counts: List[int],
    n_rays: int,
    hidden_size: int,
    fit_steps: int,
    repeats: int,
    dense_limit_points: Optional[int],
    modes: List[str],
) -> Dict:
    field = fitted_reference_field(hidden_size=hidden_size, steps=fit_steps, device=device)
    rows = []
    cases = [("render", s) for s in image_sizes] + [("train", n_rays)]
    for workload, size in cases:
        for n_steps in step_counts:
            if workload == "render" and size > 256 and n_steps > 128:
                continue
            n_points = (size * size if workload == "render" else size) * n_steps
            results = {}
            for mode in modes:
                if mode == "dense" and dense_limit_points and n_points > dense_limit_points:
                    results[mode] = "skipped"
                    continue
                try:
                    case = _render_case if workload == "render" else _train_case
                    results[mode] = case(field, device, size, n_steps, mode, repeats)
                except torch.OutOfMemoryError:
                    results[mode] = "out of memory"
                    torch.cuda.empty_cache()
            reference = results.get("ours")
            for mode, result in results.items():
                if isinstance(result, dict) and "_hit" in result and mode != "ours":
                    _agreement(result, reference)
            if isinstance(reference, dict):
                reference.pop("_hit", None)
                reference.pop("_depths", None)
            for mode, result in results.items():
                row = {"workload": workload, "size": size, "n_steps": n_steps, "mode": mode}
                row["result"] = result
                row["dense"] = results.get("dense")
                rows.append(row)
                print(_row(row), flush=True)
    return {"device": device_name(device), "hidden_size": hidden_size, "rows": rows}


HEADER = (
    "| workload | n_steps | mode | time | peak memory | speed-up vs dense | memory vs dense "
    "| hits agree | median depth diff / range |\n|---|---|---|---|---|---|---|---|---|"
)


def _row(row: Dict) -> str:
    result, dense = row["result"], row["dense"]
    name = (
        f"render {row['size']}x{row['size']}"
        if row["workload"] == "render"
        else f"train step, {row['size']} rays"
    )
    if not isinstance(result, dict):
        return f"| {name} | {row['n_steps']} | {row['mode']} | {result} | | | | | |"
    speed = memory = "-"
    if isinstance(dense, dict) and row["mode"] != "dense":
        speed = f"{dense['seconds'] / result['seconds']:.2f}x"
        if result["peak_bytes"] and dense["peak_bytes"]:
            memory = f"{result['peak_bytes'] / dense['peak_bytes']:.3f}x"
    agree = f"{100 * result['hit_agreement']:.3f}%" if "hit_agreement" in result else "-"
    diff = (
        f"{result['median_depth_diff_rel']:.1e}" if "median_depth_diff_rel" in result else "-"
    )
    return (
        f"| {name} | {row['n_steps']} | {row['mode']} | {fmt_seconds(result['seconds'])} | "
        f"{fmt_bytes(result['peak_bytes'])} | {speed} | {memory} | {agree} | {diff} |"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run")
    parser.add_argument("--out", default=None, help="folder for bench_core.json / .md")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    modes = ["dense", "ours"] + (["ours tf32", "ours bf16"] if cuda else [])
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
    report = run_benchmark(device=args.device, modes=modes, **settings)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_core.json"), "w") as handle:
            json.dump(report, handle, indent=2)
        with open(os.path.join(args.out, "bench_core.md"), "w") as handle:
            handle.write(f"Device: {report['device']}\n\n{HEADER}\n")
            handle.write("\n".join(_row(row) for row in report["rows"]) + "\n")


if __name__ == "__main__":
    main()
