"""
Where a training step's time goes, phase by phase, and how often it waits for the device.

:meth:`dvr_plugin.training.Trainer.train_step` marks its phases with
``torch.profiler.record_function``: ``train_step.sample`` (annealing, drawing pixels, gathering
the ground truth, cameras), ``train_step.grid_refresh`` (the occupancy grid, every
``train.grid_refresh_every`` steps), ``train_step.forward`` (the render and the loss terms),
``train_step.loss_check`` (the finiteness check of the loss: the step's planned host
synchronisation), ``train_step.optimizer`` (backward, clipping, the optimiser and the learning
rate schedule) and ``train_step.stats`` (the logged values). This script trains a benchmark scene
(:mod:`integration.benchmarks.fit_scenes`: the cow, the lego, the DTU-like cow or the demo)
with its packaged config for ``--warmup`` steps, then profiles ``--steps`` more and prints, per
step:

- each phase's host (CPU) time: on CUDA a phase that waits for the device (a host
  synchronisation) also holds the time the device needed to catch up;
- the wall time of a whole step (the device synchronised after the last one) and the share of it
  the phases do not cover (the Python between them);
- the CUDA runtime calls: kernel launches, CUDA-graph launches, synchronisations (stream, device
  and event) and copies, each per step. Copies to the host synchronise too.

The call counts are what the "fewer host syncs" and "a whole step as one CUDA graph" levers
change. Times are means over the profiled steps, in ms per step, on the device the config
resolves to; the step is also timed without the profiler (median), whose bookkeeping inflates
the phases.

    source .gpubundle/activate && python -m integration.benchmarks.profile_train_step \\
        --scene cow --device cuda --out DIR [KEY=VALUE ...]
    python -m integration.benchmarks.profile_train_step --scene demo --quick --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from dvr_plugin.training import Trainer
from integration.benchmarks.common import device_name, report_files_writer, synchronize
from integration.benchmarks.fit_scenes import SCENES, prepare_scene

PHASES = (
    "train_step.sample",
    "train_step.grid_refresh",
    "train_step.forward",
    "train_step.loss_check",
    "train_step.optimizer",
    "train_step.stats",
)
# CUDA runtime / driver calls, by what they do to the host
RUNTIME_CALLS = {
    "kernel launches": (
        "cudaLaunchKernel",
        "cuLaunchKernel",
        "cudaLaunchKernelExC",
        "cuLaunchKernelEx",
    ),
    "graph launches": ("cudaGraphLaunch", "cuGraphLaunch"),
    "synchronisations": (
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "cuStreamSynchronize",
        "cuCtxSynchronize",
    ),
    "copies": ("cudaMemcpyAsync", "cudaMemcpy", "cuMemcpyAsync", "cuMemcpyDtoHAsync_v2"),
}


def profile_steps(trainer: Trainer, *, steps: int, device: torch.device) -> dict[str, Any]:
    """
    Profile ``steps`` training steps of ``trainer``.

    Returns:
        ``phases_ms`` (phase -> host ms per step), ``step_ms`` (wall ms per step, the device
        synchronised at the end), ``uncovered_ms`` (wall minus the phases), ``calls_per_step``
        (kind -> CUDA runtime calls per step) and ``steps``.
    """
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with profile(activities=activities, acc_events=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        synchronize(device)
        wall = time.perf_counter() - start
    totals = {phase: 0.0 for phase in PHASES}
    calls = {kind: 0 for kind in RUNTIME_CALLS}
    for event in prof.events():
        if event.name in totals and event.device_type == torch.autograd.DeviceType.CPU:
            totals[event.name] += event.time_range.elapsed_us() / 1000.0
        for kind, names in RUNTIME_CALLS.items():
            if event.name in names:
                calls[kind] += 1
    phases_ms = {phase: total / steps for phase, total in totals.items()}
    step_ms = 1000.0 * wall / steps
    return {
        "steps": steps,
        "phases_ms": phases_ms,
        "step_ms": step_ms,
        "uncovered_ms": step_ms - sum(phases_ms.values()),
        "calls_per_step": {kind: count / steps for kind, count in calls.items()},
    }


def unprofiled_step_ms(trainer: Trainer, *, steps: int, device: torch.device) -> float:
    """The median wall time of ``steps`` more steps without the profiler (each synchronised)."""
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        trainer.train_step()
        synchronize(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def format_report(result: dict[str, Any]) -> str:
    """The markdown report of :func:`run`'s result."""
    lines = [
        f"# Training step phases: {result['scene']}",
        "",
        f"Device: {result['device']}. {result['warmup']} warm-up steps, then {result['steps']} "
        f"profiled steps from step {result['first_step']}; {result['rays_per_step']} rays and "
        f"{result['marching_steps']} marching steps per step. Overrides: "
        f"{' '.join(result['overrides']) or 'none'}.",
        "",
        "| phase | host ms per step | share of the step |",
        "|---|---|---|",
    ]
    step = result["profiled"]["step_ms"]
    for phase, ms in result["profiled"]["phases_ms"].items():
        lines.append(f"| {phase.split('.', 1)[1]} | {ms:.2f} | {100 * ms / step:.0f}% |")
    uncovered = result["profiled"]["uncovered_ms"]
    lines.append(f"| between the phases | {uncovered:.2f} | {100 * uncovered / step:.0f}% |")
    lines.append(f"| **step (profiled)** | **{step:.2f}** | 100% |")
    lines += [
        "",
        f"Without the profiler: {result['unprofiled_step_ms']:.2f} ms per step (median of "
        f"{result['steps']}, each synchronised). The profiler's own bookkeeping inflates the "
        "phases (most on a CPU, where it records every operator): read their shares.",
        "",
        "| CUDA runtime calls per step | count |",
        "|---|---|",
    ]
    for kind, count in result["profiled"]["calls_per_step"].items():
        lines.append(f"| {kind} | {count:.1f} |")
    return "\n".join(lines) + "\n"


def run(
    *,
    scene: str,
    device: str,
    steps: int,
    warmup: int,
    quick: bool,
    overrides: Sequence[str] = (),
    data: Optional[str] = None,
) -> dict[str, Any]:
    """Train ``scene`` for ``warmup`` steps, profile ``steps`` more, time ``steps`` more."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}.")
    with tempfile.TemporaryDirectory() as workdir:
        prepared = prepare_scene(
            scene,
            device=device,
            quick=quick,
            data=data,
            overrides=overrides,
            workdir=workdir,
            progress=False,
        )
    trainer = Trainer(
        config=prepared.config, train_data=prepared.data.train, out_dir=None, progress=False
    )
    for _ in range(warmup):
        trainer.train_step()
    first_step = int(trainer.step)
    profiled = profile_steps(trainer, steps=steps, device=prepared.device)
    train = prepared.config.train
    return {
        "scene": scene,
        "device": device_name(str(prepared.device)),
        "overrides": list(overrides),
        "warmup": warmup,
        "steps": steps,
        "first_step": first_step,
        "rays_per_step": train.images_per_batch * train.rays_per_image,
        "marching_steps": trainer.schedule.n_steps(first_step),
        "profiled": profiled,
        "unprofiled_step_ms": unprofiled_step_ms(trainer, steps=steps, device=prepared.device),
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m integration.benchmarks.profile_train_step",
        description="Where a training step's time goes, phase by phase, and its CUDA calls.",
    )
    parser.add_argument("--scene", choices=SCENES, default="cow")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda ...")
    parser.add_argument("--data", default=None, help="the scene's data (default: shared data)")
    parser.add_argument("--steps", type=int, default=50, help="profiled steps (default 50)")
    parser.add_argument("--warmup", type=int, default=30, help="steps before (default 30)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a CPU check)")
    parser.add_argument("--out", default=None, help="folder for profile_train_step.{md,json}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    result = run(
        scene=args.scene,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        quick=args.quick,
        overrides=args.overrides,
        data=args.data,
    )
    print(format_report(result))
    write = report_files_writer(args.out, "profile_train_step", format_report)
    if write is not None:
        write(result)
    return result


if __name__ == "__main__":
    main()
