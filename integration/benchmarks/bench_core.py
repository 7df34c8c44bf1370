"""
Core renderer benchmark: DVR's root finder in its accelerated modes against the dense mode that
evaluates every marching point at once (what the reference implementation does) and against
PyTorch3D's NeRF-style volume renderer on the same network, in one run.

Workloads (the reference decoder, H=512, fitted to the demo scene; cameras 1.5 from the origin):
  - render 256x256 and 512x512, no grad, 8 secant steps;
  - a training step on 4096 and 65536 random rays with a depth L1 loss (forward, backward,
    Adam step);
at 16 ... 1024 marching steps (samples per ray for the volume renderer). For each case: median
time, peak GPU memory, speed-up against the dense mode and the volume renderer, matmul TFLOP/s
against the measured ceilings (fp32 51, tf32 384, bf16 647 TFLOP/s on an H100) and, for
renders, the accuracy check against the float32 march without any acceleration at the same
step count, on every second pixel in both directions: the share of rays with the same hit flag
(>= 99.9% required) and the median |depth difference| over the depth range (<= 1e-4 required).

Modes (``SecantRaysampler`` settings; see docs/performance.md):
  dense          every point at once, float32 (the reference implementation's march)
  chunked fp32   chunks of 2^16 points, float32, no early exit (this project's earlier default)
  default        the defaults: TF32 march on CUDA, early exit, float32 secant steps, chunks
                 of 2^16 points when rendering and 2^15 when training
  grid           default + a 64^3 occupancy grid refreshed from the field
  grid tf32      grid + TF32 secant steps (final bracket ends in float32)
  grid bf16      grid + bfloat16 march + TF32 secant steps
  volume         PyTorch3D ImplicitRenderer + EmissionAbsorptionRaymarcher (bench_volume.py)

Prints markdown as it goes; ``--out`` writes bench_core.json / bench_core.md (rewritten after
every case, so a run cut short keeps what it measured).

    python -m integration.benchmarks.bench_core --device cuda --out docs/benchmarks
    python -m integration.benchmarks.bench_core --quick          # CPU smoke run (analytic scene)
"""

from __future__ import annotations

import json
import time
from typing import Dict, List, Optional

import torch

from dvr_plugin.accel.occupancy_grid import OccupancyGrid
from dvr_plugin.fields.shapes import demo_scene
from dvr_plugin.renderer.rays import ndc_grid
from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.renderer.step_graph import GraphedTrainStep
from integration.benchmarks import bench_volume
from integration.benchmarks.common import (
    MATMUL_CEILINGS,
    adam,
    add_quick_and_out_arguments,
    benchmark_parser,
    cameras,
    decoder_flops_per_point,
    device_name,
    fitted_reference_field,
    fmt_bytes,
    fmt_seconds,
    measure,
    new_report,
    report_files_writer,
    roofline,
    skip_over_budget,
)

MODES: Dict[str, dict] = {
    "dense": dict(chunk_size=None, early_exit=False, march_precision="float32"),
    "chunked fp32": dict(chunk_size=2**16, early_exit=False, march_precision="float32"),
    "default": dict(),
    "grid": dict(grid=True),
    "grid tf32": dict(grid=True, refine_precision="tf32"),
    "grid bf16": dict(grid=True, march_precision="bfloat16", refine_precision="tf32"),
    # the secant steps replayed as CUDA graphs (dvr_plugin.accel.refine_graphs)
    "graphs": dict(cuda_graphs=True),
    "grid graphs": dict(grid=True, cuda_graphs=True),
    "grid tf32 graphs": dict(grid=True, refine_precision="tf32", cuda_graphs=True),
    "grid bf16 graphs": dict(
        grid=True, march_precision="bfloat16", refine_precision="tf32", cuda_graphs=True
    ),
    # training only: the differentiable half evaluated at every ray (hits and misses, misses
    # masked) eagerly, and recorded with the loss, backward and Adam as one CUDA graph
    # (dvr_plugin.renderer.step_graph.GraphedTrainStep)
    "grid tf32 graphs dense": dict(
        grid=True, refine_precision="tf32", cuda_graphs=True, step="dense"
    ),
    "grid tf32 graphs step graph": dict(
        grid=True, refine_precision="tf32", cuda_graphs=True, step="graph"
    ),
}
GRAPH_MODES = ["graphs", "grid graphs", "grid tf32 graphs", "grid bf16 graphs"]
STEP_MODES = ["grid tf32 graphs dense", "grid tf32 graphs step graph"]
REFERENCE = dict(chunk_size=2**16, early_exit=True, march_precision="float32")


def _sampler(mode: str, n_steps: int, grid: Optional[OccupancyGrid], image_size=None):
    settings = dict(MODES[mode])
    use_grid = settings.pop("grid", False)
    settings.pop("step", None)
    return SecantRaysampler(
        image_width=image_size,
        image_height=image_size,
        n_steps=n_steps,
        compute_normals=False,
        check_finite=False,
        occupancy_grid=grid if use_grid else None,
        **settings,
    )


def _render_case(field, device, image_size, n_steps, mode, grid, flops):
    if mode == "volume":
        return bench_volume.render_case(field, device, image_size, n_steps, flops=flops)
    camera = cameras(1, device)
    renderer = DVRRenderer(field=field, raysampler=_sampler(mode, n_steps, grid, image_size))

    def run():
        with torch.no_grad():
            out = renderer(camera)
        return out.hit, out.depths

    return measure(run, device=device, flops=flops)


def _train_case(field, device, n_rays, n_steps, mode, grid, flops, repeats=10):
    if mode == "volume":
        return bench_volume.train_case(field, device, n_rays, n_steps, flops=flops)
    step_kind = MODES[mode].get("step")
    renderer = DVRRenderer(
        field=field, raysampler=_sampler(mode, n_steps, grid), check_finite=step_kind is None
    )
    # lr 0: the field stays fixed; a recorded step needs a capturable optimiser
    optimizer = adam(field, device, capturable=step_kind == "graph")
    camera = cameras(1, device)
    generator = torch.Generator(device=device).manual_seed(0)
    xys = (torch.rand(1, n_rays, 2, device=device, generator=generator) * 2 - 1) * 0.6
    with torch.no_grad():
        target = renderer(camera, xys=xys, n_steps=min(n_steps, 128)).depths + 0.01

    def depth_l1(out, target):
        return ((out.depths - target).abs() * out.masks).sum() / n_rays

    if step_kind is not None:
        step = GraphedTrainStep(
            renderer=renderer, optimizer=optimizer, loss_fn=depth_l1,
            cuda_graphs=step_kind == "graph",
        )

        def run():
            step(camera, xys=xys, target=target)
    else:

        def run():
            out = renderer(camera, xys=xys)
            loss = depth_l1(out, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    try:
        # warm-up: the graphed step runs two eager steps, then records on the third
        result = measure(
            run, device=device, flops=flops, repeats=repeats,
            max_seconds=max(1.5, 0.05 * repeats), warmup=4 if step_kind else 1,
        )
    finally:
        optimizer.zero_grad(set_to_none=True)
    result.pop("_output", None)
    return result


def _reference(field, device, image_size, n_steps, stride):
    """The float32 march without acceleration, on every ``stride``-th pixel of each axis."""
    sampler = SecantRaysampler(n_steps=n_steps, compute_normals=False, **REFERENCE)
    renderer = DVRRenderer(field=field, raysampler=sampler)
    xys = ndc_grid((image_size, image_size), device=device)[::stride, ::stride][None]
    with torch.no_grad():
        out = renderer(cameras(1, device), xys=xys)
    return out.hit, out.depths


def _agreement(result: Dict, reference, stride: int) -> None:
    hit, depth = result.pop("_output")
    hit, depth = hit[:, ::stride, ::stride], depth[:, ::stride, ::stride]
    ref_hit, ref_depth = reference
    result["hit_agreement"] = float((hit == ref_hit).float().mean())
    result["hit_disagreements"] = int((hit != ref_hit).sum())
    both = hit & ref_hit
    result["nonfinite_depths"] = int((~torch.isfinite(depth[hit])).sum())
    if bool(both.any()):
        depth_range = float(ref_depth[ref_hit].max() - ref_depth[ref_hit].min())
        diff = (depth - ref_depth)[both].abs()
        result["median_depth_diff_rel"] = float(diff.median()) / max(depth_range, 1e-12)
        result["p99_depth_diff_rel"] = float(torch.quantile(diff.float(), 0.99)) / max(
            depth_range, 1e-12
        )
    result["accuracy_ok"] = bool(
        result["hit_agreement"] >= 0.999
        and result.get("median_depth_diff_rel", 0.0) <= 1e-4
        and result["nonfinite_depths"] == 0
    )


def _plan(quick: bool, cuda: bool, targets: bool = False) -> List[dict]:
    """The cases: workload, size, step counts and which modes run at which step counts."""
    grid_modes = ["grid", "grid tf32", "grid bf16"] if cuda else ["grid"]
    if cuda:
        grid_modes += GRAPH_MODES
    if targets:  # only what the performance targets are about (a few minutes on a GPU)
        steps = [16, 128, 1024]
        fast = ["default", "grid", "grid tf32", *(GRAPH_MODES if cuda else [])]
        return [
            dict(workload="render", size=256, steps=[128], modes={
                "dense": [128], "volume": [128], **{m: [128] for m in fast},
                **({"grid bf16": [128]} if cuda else {})}),
            dict(workload="train", size=4096, steps=steps, modes={
                "dense": [16, 128], "volume": [128], **{m: steps for m in fast},
                **({m: steps for m in STEP_MODES} if cuda else {})}),
        ]
    if quick:
        steps = [16, 64]
        return [
            dict(workload="render", size=32, steps=steps, modes={
                "dense": steps, "volume": steps, "chunked fp32": steps, "default": steps,
                **{m: steps for m in grid_modes}}),
            dict(workload="train", size=128, steps=steps, modes={
                "dense": steps, "volume": steps, "default": steps,
                **{m: steps for m in grid_modes}, **{m: steps for m in STEP_MODES}}),
        ]
    all_steps = [16, 64, 128, 256, 512, 1024]
    low = [16, 64, 128]
    return [
        dict(workload="render", size=256, steps=all_steps, modes={
            "dense": low, "volume": low, "chunked fp32": [128], "default": all_steps,
            **{m: all_steps for m in grid_modes}}),
        dict(workload="render", size=512, steps=[16, 128], modes={
            "dense": [16], "volume": [16], "default": [16, 128],
            **{m: [16, 128] for m in grid_modes}}),
        dict(workload="train", size=4096, steps=all_steps, modes={
            "dense": all_steps, "volume": [16, 64, 128, 256], "chunked fp32": [16, 128],
            "default": all_steps, **{m: all_steps for m in grid_modes},
            **{m: all_steps for m in STEP_MODES}}),
        dict(workload="train", size=65536, steps=[16, 128, 1024], modes={
            "dense": [16], "volume": [16], "default": [16, 128],
            **{m: [16, 128, 1024] for m in grid_modes}}),
    ]


def build_grid(field, device: str, resolution: int) -> tuple[OccupancyGrid, Dict]:
    """A grid refreshed from ``field``, and the times of a full and a quarter refresh."""
    grid = OccupancyGrid(resolution=resolution).to(device)
    timings = {}
    for name, fraction in (("refresh_seconds", 1.0), ("refresh_quarter_seconds", 0.25)):
        result = measure(
            lambda f=fraction: grid.refresh(field, fraction=f), device=device, repeats=3
        )
        timings[name] = result["seconds"]
    grid.refresh(field)
    timings["occupied_fraction"] = grid.occupied_fraction
    timings["resolution"] = resolution
    return grid, timings


def run_benchmark(
    *,
    device: str,
    quick: bool,
    hidden_size: int,
    fit_steps: int,
    fit_batch: int,
    grid_resolution: int,
    max_seconds: Optional[float],
    profile: bool = False,
    write=None,
    targets: bool = False,
    workloads: Optional[List[str]] = None,
    modes: Optional[List[str]] = None,
) -> Dict:
    started = time.perf_counter()
    cuda = device.startswith("cuda")
    if quick:  # the analytic scene itself: exercises every path (hits included) in seconds
        field = demo_scene().to(device)
    else:
        field = fitted_reference_field(
            hidden_size=hidden_size, steps=fit_steps, batch=fit_batch, device=device
        )
    grid, grid_info = build_grid(field, device, grid_resolution)
    report = new_report(
        device,
        hidden_size=hidden_size,
        flops_per_point=decoder_flops_per_point(hidden_size=hidden_size),
        matmul_ceilings_tflops={k: v / 1e12 for k, v in MATMUL_CEILINGS.items()},
        grid=grid_info,
        fit_seconds=time.perf_counter() - started,
    )
    print(f"grid: {grid_info}", flush=True)
    print(HEADER, flush=True)
    for case in _plan(quick, cuda, targets):
        workload, size = case["workload"], case["size"]
        if workloads is not None and workload not in workloads:
            continue
        for n_steps in case["steps"]:
            chosen = [m for m, steps in case["modes"].items() if n_steps in steps]
            chosen = [m for m in chosen if modes is None or m in modes]
            if not chosen:
                continue
            label = f"{workload} {size} {n_steps}: {chosen}"
            if skip_over_budget(report, label, started=started, max_seconds=max_seconds):
                continue
            stride = 2
            reference = None
            if workload == "render":
                reference = _reference(field, device, size, n_steps, stride)
            results = {}
            for mode in chosen:
                try:
                    if workload == "render":
                        result = _render_case(field, device, size, n_steps, mode, grid, True)
                    else:
                        result = _train_case(
                            field, device, size, n_steps, mode, grid, True,
                            repeats=30 if targets else 10,
                        )
                except torch.OutOfMemoryError:
                    result = "out of memory"
                if cuda:
                    torch.cuda.empty_cache()
                if isinstance(result, dict):
                    if reference is not None and "_output" in result:
                        _agreement(result, reference, stride)
                    result.pop("_output", None)
                    result.update(roofline(result.get("flops"), result["seconds"]))
                results[mode] = result
            for mode, result in results.items():
                row = {
                    "workload": workload, "size": size, "n_steps": n_steps, "mode": mode,
                    "result": result, "dense": results.get("dense"),
                    "volume": results.get("volume"),
                }
                report["rows"].append(row)
                print(_row(row), flush=True)
            report["elapsed_seconds"] = time.perf_counter() - started
            if write is not None:
                write(report)
    report["summary"] = summarize(report)
    if profile:
        for mode in ("grid tf32", "grid tf32 graphs") if cuda else ("grid",):
            report.setdefault("profile", []).append(
                profile_train_step(field, device, grid, mode=mode)
            )
            print(json.dumps(report["profile"][-1], indent=2), flush=True)
    if write is not None:
        write(report)
    return report


HEADER = (
    "| workload | n_steps | mode | time | peak memory | graph pools | vs dense | vs volume "
    "| TFLOP/s | of roofline | hits agree | median depth diff / range |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _ratio(base, result) -> str:
    if isinstance(base, dict) and base is not result:
        return f"{base['seconds'] / result['seconds']:.1f}x"
    return "-"


def _row(row: Dict) -> str:
    result = row["result"]
    name = (
        f"render {row['size']}x{row['size']}"
        if row["workload"] == "render"
        else f"train step, {row['size']} rays"
    )
    if not isinstance(result, dict):
        return f"| {name} | {row['n_steps']} | {row['mode']} | {result} | | | | | | | | |"
    agree = f"{100 * result['hit_agreement']:.3f}%" if "hit_agreement" in result else "-"
    diff = (
        f"{result['median_depth_diff_rel']:.1e}" if "median_depth_diff_rel" in result else "-"
    )
    if result.get("accuracy_ok") is False:
        agree += " (fails)"
    tflops = f"{result['tflops_per_s']:.1f}" if "tflops_per_s" in result else "-"
    share = f"{100 * result['of_roofline']:.0f}%" if "of_roofline" in result else "-"
    pool_bytes = result.get("graph_pool_bytes")
    pools = fmt_bytes(pool_bytes) if pool_bytes else "-"
    return (
        f"| {name} | {row['n_steps']} | {row['mode']} | {fmt_seconds(result['seconds'])} | "
        f"{fmt_bytes(result['peak_bytes'])} | {pools} | {_ratio(row['dense'], result)} | "
        f"{_ratio(row['volume'], result)} | {tflops} | {share} | {agree} | {diff} |"
    )


def summarize(report: Dict) -> Dict:
    """Targets and memory flatness, computed from the rows."""
    rows = [r for r in report["rows"] if isinstance(r["result"], dict)]
    summary: Dict = {}

    def pick(workload, size, n_steps):
        return {
            r["mode"]: r["result"]
            for r in rows
            if (r["workload"], r["size"], r["n_steps"]) == (workload, size, n_steps)
        }

    render = pick("render", 256, 128)
    train = pick("train", 4096, 128)
    summary["render_256_128_ms"] = {m: 1000 * r["seconds"] for m, r in render.items()}
    summary["train_4096_128"] = {
        m: {
            "ms": 1000 * r["seconds"],
            "peak_mib": (r["peak_bytes"] or 0) / 2**20,
            "graph_pools_mib": (r.get("graph_pool_bytes") or 0) / 2**20,
        }
        for m, r in train.items()
    }
    flat = {}
    for mode in {r["mode"] for r in rows if r["workload"] == "train" and r["size"] == 4096}:
        peaks = [
            r["result"]["peak_bytes"]
            for r in rows
            if (r["workload"], r["size"], r["mode"]) == ("train", 4096, mode)
            and r["result"]["peak_bytes"]
        ]
        if len(peaks) > 1:
            flat[mode] = {
                "min_mib": min(peaks) / 2**20,
                "max_mib": max(peaks) / 2**20,
                "spread": max(peaks) / min(peaks) - 1.0,
            }
    summary["train_4096_peak_over_steps"] = flat
    failing = [
        f"{r['workload']} {r['size']} {r['n_steps']} {r['mode']}"
        for r in rows
        if r["result"].get("accuracy_ok") is False
    ]
    summary["accuracy_failures"] = failing
    return summary


def _markdown(report: Dict) -> str:
    lines = [
        f"Device: {report['device']} (torch {report['torch']})",
        "",
        f"Network: reference decoder, H = {report['hidden_size']}, "
        f"{report['flops_per_point']:,} matmul FLOPs per point. Matmul ceilings (TFLOP/s): "
        + ", ".join(f"{k} {v:g}" for k, v in report["matmul_ceilings_tflops"].items())
        + ".",
        "",
        f"Occupancy grid: {report['grid']}",
        "",
        HEADER,
        *(_row(row) for row in report["rows"]),
        "",
    ]
    if report.get("skipped"):
        lines += ["Skipped (time budget): " + "; ".join(report["skipped"]), ""]
    if "summary" in report:
        lines += ["Summary:", "", "```", json.dumps(report["summary"], indent=2), "```", ""]
    return "\n".join(lines)


def profile_train_step(
    field, device: str, grid: Optional[OccupancyGrid], *, n_rays=4096, n_steps=128,
    mode="grid tf32", repeats=10,
) -> Dict:
    """
    Diagnostic: where a training step spends its time. Each stage is timed with a device
    synchronisation around it (which itself costs a little), and its tensor operations are
    counted (every operation is at least one kernel launch from Python).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    import dvr_plugin.renderer.raysampler as raysampler_module
    import dvr_plugin.surface.root_finding as root_module
    from dvr_plugin.accel.march_graphs import MarchGraphs
    from dvr_plugin.accel.refine_graphs import RefinementGraphs

    stages = {"other": 0.0}
    operations = {"other": 0}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    stack = ["other"]

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            operations[stack[-1]] = operations.get(stack[-1], 0) + 1
            return func(*args, **(kwargs or {}))

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            stack.append(label)
            try:
                return original(*args, **kwargs)
            finally:
                stack.pop()
                sync()
                stages[label] = stages.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)
        return owner, name, original

    patches = [
        timed(raysampler_module, "rays_from_cameras", "rays from cameras"),
        timed(raysampler_module, "intersect_box", "box"),
        timed(root_module, "_march_chunk_grid", "march"),
        timed(MarchGraphs, "march", "march"),
        timed(root_module, "_march_chunk_dense", "march"),
        # a graph must not record the profiler's synchronisations: time its replay instead
        timed(RefinementGraphs, "refine", "bracket ends + secant")
        if "graphs" in mode
        else timed(root_module, "refine_brackets", "bracket ends + secant"),
        timed(raysampler_module, "attach_implicit_gradient", "implicit gradient"),
        timed(DVRRenderer, "_colour", "colour"),
    ]
    try:
        renderer = DVRRenderer(field=field, raysampler=_sampler(mode, n_steps, grid))
        optimizer = adam(field, device)
        camera = cameras(1, device)
        generator = torch.Generator(device=device).manual_seed(0)
        xys = (torch.rand(1, n_rays, 2, device=device, generator=generator) * 2 - 1) * 0.6

        def stage(label, fn):
            sync()
            start = time.perf_counter()
            stack.append(label)
            fn()
            stack.pop()
            sync()
            stages[label] = stages.get(label, 0.0) + time.perf_counter() - start

        def step():
            out = renderer(camera, xys=xys)
            loss = ((out.depths - 1.4).abs() * out.masks).sum() / n_rays
            optimizer.zero_grad(set_to_none=True)
            stage("backward", loss.backward)
            stage("adam", optimizer.step)

        step()
        with _Count():
            step()
        for key in list(stages):
            stages[key] = 0.0
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            stages["total (synchronised stages)"] = stages.get(
                "total (synchronised stages)", 0.0
            ) + time.perf_counter() - start
    finally:
        for owner, name, original in patches:
            setattr(owner, name, original)
        field.zero_grad(set_to_none=True)
    return {
        "mode": mode,
        "n_rays": n_rays,
        "n_steps": n_steps,
        "ms": {k: 1000 * v / repeats for k, v in stages.items()},
        "operations": operations,
    }


def compile_experiment(device: str, *, n_steps: int = 128) -> Dict:
    """
    Experiment: the same field through ``torch.compile(field, dynamic=True)`` (a user-side
    choice; nothing in the library compiles). Reports the first call (compilation) and the
    steady state, for the 4096-ray training step and the 256x256 render with the grid.
    """
    import torch._functorch.config

    # the implicit gradient keeps the field's graph for a second backward (retain_graph)
    torch._functorch.config.donated_buffer = False
    field = fitted_reference_field(device=device, steps=200)
    grid, _ = build_grid(field, device, 64)
    compiled = torch.compile(field, dynamic=True)
    results = {}
    for workload in ("train", "render"):
        start = time.perf_counter()
        if workload == "train":
            first = _train_case(compiled, device, 4096, n_steps, "grid tf32", grid, False)
        else:
            first = _render_case(compiled, device, 256, n_steps, "grid tf32", grid, False)
        results[workload] = {
            "first_call_and_measure_seconds": time.perf_counter() - start,
            "ms": 1000 * first["seconds"],
            "peak_mib": (first["peak_bytes"] or 0) / 2**20,
        }
        print(workload, results[workload], flush=True)
    return results


def _json_default(value):
    return str(value)  # anything json cannot write (e.g. tensors left in a result)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    add_quick_and_out_arguments(parser, "bench_core", quick="small sizes for a CPU smoke run")
    parser.add_argument("--grid-resolution", type=int, default=64)
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="skip the remaining cases after this"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also time the stages of a training step"
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only the cases of the performance targets (256x256 render, 4096-ray step)",
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=["render", "train"], default=None,
        help="only these workloads of the plan",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=sorted([*MODES, "volume"]), default=None,
        help="only these modes of the plan",
    )
    parser.add_argument(
        "--compile-experiment",
        action="store_true",
        help="only run the torch.compile experiment (compiles; minutes on first use)",
    )
    args = parser.parse_args(argv)
    if args.compile_experiment:
        print(json.dumps(compile_experiment(args.device), indent=2))
        return
    if args.quick:
        settings = dict(hidden_size=0, fit_steps=0, fit_batch=0)
    else:
        settings = dict(hidden_size=512, fit_steps=400, fit_batch=32768)
    print(f"device: {device_name(args.device)}", flush=True)
    report = run_benchmark(
        device=args.device,
        quick=args.quick,
        grid_resolution=args.grid_resolution,
        max_seconds=args.max_seconds,
        profile=args.profile,
        targets=args.targets,
        workloads=args.workloads,
        modes=args.modes,
        write=report_files_writer(args.out, "bench_core", _markdown, json_default=_json_default),
        **settings,
    )
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
