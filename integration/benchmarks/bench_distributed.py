"""
Distributed fitting benchmark: training throughput of ``Trainer`` on 1 GPU against N GPUs
(DistributedDataParallel through ``torchrun``), at the same global batch (strong scaling) and at
the same batch per GPU (weak scaling).

The data is the demo scene built in code (a box with two spheres, rendered with PyTorch3D's
``MeshRenderer``: 48 views at 128x128 on the GPU, as ``dvr demo`` on CUDA); the network is the
GPU-sized decoder (hidden 256, 5 blocks, 6 Fourier frequencies); a step draws
``images x rays`` foreground-balanced pixels, marches ``--n-steps`` steps and runs the demo's
losses (RGB, free space, occupancy, normals). ``train.images_per_batch`` is the global batch,
split across the ranks (docs/distributed.md), so 1 and N GPUs train the same model at equal
global batch: the table shows the loss after the last measured step for both.

Each world size runs in a fresh process group: 1 GPU as a plain process, N GPUs as
``python -m torch.distributed.run --standalone --nproc_per_node N``, started by this script
(which is also the worker, with ``--worker``). For every global batch in ``--batches`` a fresh
trainer runs ``--warmup`` steps, then ``--iterations`` timed steps (fewer when ``--max-seconds``
run out); rank 0 reports. Prints a markdown table; ``--out`` writes bench_distributed.json and
bench_distributed.md.

    python -m integration.benchmarks.bench_distributed --device cuda --out docs/benchmarks
    python -m integration.benchmarks.bench_distributed --device cpu --tiny --out /tmp/b  # gloo
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = "integration.benchmarks.bench_distributed"


def _config_overrides(args: argparse.Namespace, images_per_batch: int) -> list[str]:
    """The demo config, sized for the benchmark (GPU-sized, or tiny for a CPU check)."""
    if args.tiny:
        size = [
            "data.image_size=32",
            "data.n_views=16",
            "data.supersample=1",
            "model.hidden_size=32",
            "model.n_blocks=2",
            "model.n_frequencies=2",
        ]
    else:
        size = [
            "data.image_size=128",
            "data.n_views=48",
            "model.hidden_size=256",
            "model.n_blocks=5",
            "model.n_frequencies=6",
        ]
    return [
        f"device={args.device}",
        *size,
        f"train.images_per_batch={images_per_batch}",
        f"train.rays_per_image={args.rays}",
        f"train.step_milestones={{0: {args.n_steps}}}",
        "train.time_budget_s=null",
        "optim.lr_milestones=[]",
        "eval.tensorboard=false",
    ]


# ---------------------------------------------------------------------------------------------
# The worker (one process, or one rank under torchrun)


def run_worker(args: argparse.Namespace) -> None:
    """Time the trainer for every global batch; rank 0 writes ``args.result`` (JSON)."""
    from dvr_plugin.engine.config import resolve_config
    from dvr_plugin.training import Trainer, load_config, load_fit_data, packaged_config
    from dvr_plugin.training.distributed import process_group_from_environment

    from .common import device_name

    base = load_config(packaged_config("demo"), _config_overrides(args, args.batches[0]))
    _, device = resolve_config(base)
    with process_group_from_environment(device) as context:
        if context is not None:
            device = context.device_for(device)
        rank = 0 if context is None else context.rank
        world_size = 1 if context is None else context.world_size
        start = time.perf_counter()
        data = load_fit_data(base.data, background=base.background, device=device)
        data_seconds = time.perf_counter() - start
        runs = []
        for images in args.batches:
            config, _ = resolve_config(
                load_config(packaged_config("demo"), _config_overrides(args, images))
            )
            trainer = Trainer(
                config=config, train_data=data.train, val_data=None, progress=False
            )
            runs.append(_time_trainer(trainer, args, device, world_size))
            if rank == 0:
                print(f"  {world_size} rank(s), {images} images: {runs[-1]}", flush=True)
        if rank == 0:
            result = {
                "world_size": world_size,
                "backend": None if context is None else context.backend,
                "device": str(device),
                "device_name": device_name(str(device)),
                "train_views": len(data.train),
                "image_size": list(data.train.image_size),
                "data_seconds": data_seconds,
                "runs": runs,
            }
            with open(args.result, "w") as handle:
                json.dump(result, handle, indent=2)


def _time_trainer(
    trainer: Any, args: argparse.Namespace, device: torch.device, world_size: int
) -> dict[str, Any]:
    """Warm up, then time steps; every rank runs this (the steps are collective)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        trainer.train_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, start = 0, time.perf_counter()
    stats: dict[str, float] = {}
    while steps < args.iterations:
        stats = trainer.train_step()
        steps += 1
        over = time.perf_counter() - start > args.max_seconds
        if trainer.dist is not None:  # the ranks stop together: rank 0's clock decides
            over = trainer.dist.broadcast_flag(over)
        if over:
            break
    sync()
    seconds = time.perf_counter() - start
    images = trainer.config.train.images_per_batch
    rays = images * trainer.config.train.rays_per_image
    return {
        "images_per_batch": images,
        "images_per_rank": images / world_size,
        "rays_per_step": rays,
        "iterations": steps,
        "seconds": seconds,
        "ms_per_iteration": 1000 * seconds / steps,
        "iterations_per_second": steps / seconds,
        "rays_per_second": rays * steps / seconds,
        "loss": stats.get("loss"),
        "hit_rate": stats.get("hit_rate"),
        "peak_memory_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
    }


# ---------------------------------------------------------------------------------------------
# The launcher


def launch(world_size: int, args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Run the worker on ``world_size`` processes (torchrun for more than one)."""
    result = os.path.join(folder, f"world_{world_size}.json")
    worker = [
        "--worker",
        "--result", result,
        "--device", args.device,
        "--batches", ",".join(str(b) for b in args.batches),
        "--rays", str(args.rays),
        "--n-steps", str(args.n_steps),
        "--iterations", str(args.iterations),
        "--warmup", str(args.warmup),
        "--max-seconds", str(args.max_seconds),
    ] + (["--tiny"] if args.tiny else [])
    if world_size == 1:
        command = [sys.executable, "-m", MODULE, *worker]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={world_size}", "-m", MODULE, *worker,
        ]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # each launch starts its own group
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    # a session of its own, so that a timeout stops torchrun and its workers together
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=args.launch_timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"The {world_size}-process run took more than {args.launch_timeout:.0f} s."
        ) from None
    finally:
        if process.poll() is None:  # timed out, or this script was stopped: stop the workers
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if code != 0 or not os.path.exists(result):
        raise RuntimeError(f"The {world_size}-process run failed (exit code {code}).")
    with open(result) as handle:
        report = json.load(handle)
    report["launch_seconds"] = time.perf_counter() - start
    return report


def scaling_table(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (world size, global batch) with speed-ups against one process."""
    single = {
        run["images_per_batch"]: run
        for report in reports
        if report["world_size"] == 1
        for run in report["runs"]
    }
    rows = []
    for report in reports:
        n = report["world_size"]
        for run in report["runs"]:
            row = {"world_size": n, **run}
            same_global = single.get(run["images_per_batch"])
            if same_global is not None:
                speedup = same_global["ms_per_iteration"] / run["ms_per_iteration"]
                row["strong_speedup"] = speedup
                row["strong_efficiency"] = speedup / n
                if same_global.get("loss") and run.get("loss") is not None:
                    gap = (run["loss"] - same_global["loss"]) / abs(same_global["loss"])
                    row["loss_vs_one_process"] = gap
            # weak scaling: one process with this run's batch per rank
            per_rank = single.get(int(run["images_per_rank"]))
            if per_rank is not None and n > 1 and run["images_per_rank"].is_integer():
                row["weak_efficiency"] = per_rank["ms_per_iteration"] / run["ms_per_iteration"]
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], reports: list[dict[str, Any]], args) -> str:
    from .common import fmt_bytes

    first = reports[0]
    lines = [
        f"Device: {first['device_name']}; {first['train_views']} training views at "
        f"{first['image_size'][0]}x{first['image_size'][1]}; "
        f"{'tiny network' if args.tiny else 'hidden 256 x 5 blocks'}; "
        f"{args.rays} rays per image; {args.n_steps} marching steps; "
        f"{args.warmup} warm-up + up to {args.iterations} timed steps.",
        "",
        "| ranks | global batch (images x rays) | images per rank | ms / it | it / s | rays / s "
        "| speed-up (same global batch) | strong efficiency | weak efficiency "
        "| loss vs 1 rank (relative) | peak memory (rank 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for row in rows:
        loss_gap = row.get("loss_vs_one_process")
        lines.append(
            f"| {row['world_size']} | {row['images_per_batch']} x {args.rays} "
            f"| {row['images_per_rank']:g} | {row['ms_per_iteration']:.1f} "
            f"| {row['iterations_per_second']:.2f} | {row['rays_per_second'] / 1e3:.0f}k "
            f"| {fmt(row.get('strong_speedup'), '.2f')} "
            f"| {fmt(row.get('strong_efficiency'), '.0%')} "
            f"| {fmt(row.get('weak_efficiency'), '.0%')} "
            f"| {fmt(loss_gap, '+.1e')} "
            f"| {fmt_bytes(row.get('peak_memory_bytes'))} |"
        )
    lines += [
        "",
        "One rank per GPU. Strong efficiency: (time per step on 1 rank / time on N ranks) / N "
        "at the same global batch. Weak efficiency: time per step on 1 rank with the per-rank "
        "batch / time on N ranks (100% = perfect). The loss column compares the loss of the "
        "last timed step with the 1-rank run of the same global batch (same seed and data: the "
        "same model up to rounding and the non-determinism of CUDA kernels).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    from .common import benchmark_parser

    parser = benchmark_parser(__doc__)
    parser.add_argument("--tiny", action="store_true", help="small data and network (CPU check)")
    parser.add_argument(
        "--world-sizes", default="1,2", help="process counts to compare (default 1,2)"
    )
    parser.add_argument(
        "--batches", default=None, help="global images per batch, comma separated "
        "(default 8,16; tiny: 2,4)"
    )
    parser.add_argument("--rays", type=int, default=None, help="rays per image (2048; tiny 128)")
    parser.add_argument("--n-steps", type=int, default=32, help="marching steps")
    parser.add_argument("--iterations", type=int, default=None, help="timed steps (60; tiny 6)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (20; tiny 2)")
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="time limit of the timed steps per batch"
    )
    parser.add_argument("--launch-timeout", type=float, default=600.0)
    parser.add_argument("--out", default=None, help="folder for bench_distributed.json / .md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.batches = [int(b) for b in (args.batches or ("2,4" if tiny else "8,16")).split(",")]
    args.rays = args.rays or (128 if tiny else 2048)
    args.iterations = args.iterations or (6 if tiny else 60)
    args.warmup = args.warmup if args.warmup is not None else (2 if tiny else 20)
    if args.worker:
        run_worker(args)
        return

    # SIGTERM (e.g. from `timeout`) ends this script through SystemExit, so the launch's
    # clean-up stops the workers too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    world_sizes = [int(w) for w in args.world_sizes.split(",")]
    if 1 not in world_sizes:
        world_sizes.insert(0, 1)
    if args.device.startswith("cuda"):
        available = torch.cuda.device_count()
        skipped = [w for w in world_sizes if w > available]
        if skipped:
            print(f"only {available} GPU(s): skipping world sizes {skipped}", flush=True)
        world_sizes = [w for w in world_sizes if w <= available]
    reports, failures = [], []
    with tempfile.TemporaryDirectory() as folder:
        for world_size in world_sizes:
            try:
                reports.append(launch(world_size, args, folder))
            except RuntimeError as error:  # keep what the other world sizes measured
                print(f"FAILED: {error}", flush=True)
                failures.append({"world_size": world_size, "error": str(error)})
    rows = scaling_table(reports)
    text = markdown(rows, reports, args) if reports else "No run finished.\n"
    text += "".join(f"\n{f['world_size']} ranks: {f['error']}\n" for f in failures)
    print(text, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "result", "out")}
        with open(os.path.join(args.out, "bench_distributed.json"), "w") as handle:
            json.dump(
                {"settings": settings, "reports": reports, "rows": rows, "failures": failures},
                handle,
                indent=2,
            )
        with open(os.path.join(args.out, "bench_distributed.md"), "w") as handle:
            handle.write(text)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
