"""
Time to quality: how good each method's reconstruction is after a given amount of training time.

Methods, trained one after another on the same training views with the same rays per step (the
scene config's ``train.images_per_batch`` x ``train.rays_per_image`` pixels, drawn by
``train.sampling``):

  dvr               ours, :class:`dvr_plugin.training.Trainer` with the packaged config's device
                    overrides (on CUDA: occupancy grid, CUDA graphs, TF32 march)
  dvr-hash          the same with the hash-grid field (model.encoding: hash_grid)
  dvr-sdf           the same with the geometry of ``--config dtu``'s GPU recipe: a hash-grid
                    signed-distance field, the eikonal term, the soft mask loss and a short
                    volume-rendering warm-up (``fit_methods.SDF_RECIPE_OVERRIDES``)
  dvr-sdf-clock     dvr-sdf with its schedules (learning rate, marching steps, warm-up) spread
                    over the last checkpoint's seconds (``train.schedule_by_time``)
  dvr-dense         the same without grid and graphs: the reference implementation's dense march
                    (``train.occupancy_grid=0``, ``train.cuda_graphs=false``, float32 march)
  pytorch3d-volume  PyTorch3D's ``ImplicitRenderer`` + ``EmissionAbsorptionRaymarcher`` on the
                    same network, occupancy as alpha (:mod:`integration.compare.nerf_baseline`)
  nerfacc           an Instant-NGP-style field (hash grid, density + colour networks) with
                    nerfacc 0.5's ``OccGridEstimator`` and ``nerfacc.rendering``
                    (:mod:`integration.compare.ngp_baseline`); where nerfacc cannot run, the
                    same model with a PyTorch stand-in for nerfacc, and the reason recorded

The clock counts training time only: the device is synchronised after every step, and at each
checkpoint (e.g. 5, 10, 20, 30, 60, 90 s) the clock stops, the method is evaluated, and the clock
restarts. A step that passes several checkpoints is evaluated once, for all of them. Metrics at
each checkpoint: held-out PSNR (whole image; inside the true mask, the headline where the
images show a real background), SSIM and mask IoU; and, with a ground-truth mesh, Chamfer-L1 /
F@1% / normal consistency of the extracted mesh in ``dvr eval``'s convention (Occupancy Networks
protocol, distances in units of the ground truth's bounding box, longest side 1; both meshes in
the fitting frame), plus the observed-region scores (``dvr eval --observed``) on the DTU-like
scene. Meshes: MISE + marching cubes at ``eval.mesh_resolution``; DVR at its level 0, the volume
baseline at the occupancy its renders show (:func:`rendered_surface_level`), the NGP baseline
where a voxel of the extraction grid absorbs half the light (``sigma = ln 2 / voxel``).

Scenes: ``cow`` (the packaged config ``cow``: 50 views 128x128 of the textured cow,
``$DVR_DATA_DIR/meshes/cow.obj``), ``lego`` (``nerf-synthetic``; no ground-truth mesh: image
metrics only), ``dtu-like`` (the cow rendered by ``dvr make-scene --front-axis=-z`` into a
temporary folder, config ``dtu``), ``demo`` (the built-in analytic scene; for tests).

Writes ``bench_fit_<scene>.json`` (every number, the card, the settings), ``.md`` (one table of
method x checkpoint with the time to F@1% >= 0.97 and to PSNR >= 33 dB, then a table per metric)
and ``.png`` (PSNR and F@1% against training seconds), rewritten after every checkpoint.

This module holds the clock (:func:`run_method`), the run (:func:`run_benchmark`) and the
command line; the scenes and their scoring are in :mod:`.fit_scenes`, the methods in
:mod:`.fit_methods`, the report (header, JSON/markdown/figure) in :mod:`.fit_report`.

    python -m integration.benchmarks.bench_fit --scene cow --device cuda --out outputs/bench_fit
    python -m integration.benchmarks.bench_fit --scene cow --quick --device cpu --out /tmp/bf
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from integration.benchmarks.common import (
    peak_memory,
    release_memory,
    reset_peak_memory,
    synchronize,
)
from integration.benchmarks.fit_methods import (
    METHOD_LABELS,
    METHODS,
    DVRMethod,
    NGPMethod,
    VolumeMethod,
)
from integration.benchmarks.fit_report import (
    TARGET_F_SCORE,
    TARGET_PSNR,
    is_finite_number,
    markdown_report,
    report_header,
    report_writer,
)
from integration.benchmarks.fit_scenes import SCENES, Scene, prepare_scene
from integration.compare.ngp_baseline import NerfaccStatus, NGPSettings, probe_nerfacc

CHECKPOINTS = (5.0, 10.0, 20.0, 30.0, 60.0, 90.0)
QUICK_CHECKPOINTS = (2.0, 4.0, 6.0)


# ---------------------------------------------------------------------------------------------
# The clock


def run_method(
    name: str,
    build: Callable[[], Any],
    scene: Scene,
    *,
    checkpoints: Sequence[float],
    progress: bool,
    deadline: Optional[float],
    on_checkpoint: Callable[[], None],
    entry: dict[str, Any],
) -> None:
    """
    Train one method until the last checkpoint of training time, evaluating at each checkpoint
    with the clock stopped; fills ``entry`` (``checkpoints``, ``steps``, ``train_seconds``,
    ``error``, ...) and calls ``on_checkpoint`` after each evaluation.
    """
    from tqdm.auto import tqdm

    device = scene.device
    release_memory(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # every method starts from the default
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    method = build()
    synchronize(device)
    entry["construct_seconds"] = time.perf_counter() - start
    entry["settings"] = method.settings
    entry["checkpoints"] = []
    total = float(checkpoints[-1])
    pending = [float(c) for c in checkpoints]
    clock = 0.0
    last: dict[str, float] = {}
    peaks = {"train": 0, "eval": 0}
    bar = tqdm(
        total=total,
        desc=name,
        unit="s",
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} s train{postfix}",
    )
    try:
        while pending:
            step_start = time.perf_counter()
            last = method.step()
            synchronize(device)
            seconds = time.perf_counter() - step_start
            clock += seconds
            bar.update(min(seconds, total - bar.n))
            if clock < pending[0]:
                continue
            passed = [c for c in pending if clock >= c]
            if device.type == "cuda":  # training and evaluation peaks apart
                peaks["train"] = max(peaks["train"], peak_memory(device))
                reset_peak_memory(device)
            eval_start = time.perf_counter()
            scores = method.evaluate(scene)
            synchronize(device)
            eval_seconds = time.perf_counter() - eval_start
            if device.type == "cuda":
                peaks["eval"] = max(peaks["eval"], peak_memory(device))
                reset_peak_memory(device)
            for checkpoint in passed:
                entry["checkpoints"].append(
                    {
                        "checkpoint_s": checkpoint,
                        "train_seconds": clock,
                        "step": method.steps,
                        "loss": last.get("loss"),
                        "eval_seconds": eval_seconds,
                        **scores,
                    }
                )
            pending = pending[len(passed) :]
            entry["steps"] = method.steps
            entry["train_seconds"] = clock
            entry["seconds_per_step"] = clock / max(method.steps, 1)
            if device.type == "cuda":
                entry["train_peak_bytes"] = int(peaks["train"])
                entry["eval_peak_bytes"] = int(peaks["eval"])
            headline = scores.get(scene.headline_psnr)
            geometry = scores.get(scene.geometry_key)
            postfix = f"step {method.steps}"
            if is_finite_number(headline):
                postfix += f", {headline:.2f} dB"
            if is_finite_number(geometry):
                postfix += f", F@1% {geometry:.3f}"
            bar.set_postfix_str(postfix, refresh=True)
            on_checkpoint()
            if pending and deadline is not None and time.perf_counter() > deadline:
                entry["stopped"] = (
                    f"the wall-clock limit (--max-seconds) after {clock:.1f} s of training"
                )
                break
    finally:
        bar.close()
        entry["last_step"] = last
        del method
        release_memory(device)


def _warm_up(
    builders: dict[str, Callable[[], Any]], methods: Sequence[str], device: torch.device
) -> float:
    """
    A few untimed steps of every method in a throw-away instance, so that no method's clock
    pays the process's one-time costs (lazy imports, kernel and allocator warm-up) for the
    others. Each timed method is then built anew (its own first steps, CUDA-graph captures and
    grid builds included). Failures are left to the timed run to report.

    Returns:
        the seconds it took.
    """
    start = time.perf_counter()
    for name in methods:
        try:
            method = builders[name]()
            for _ in range(3):
                method.step()
            del method
        except Exception:  # the timed run reports it
            pass
        release_memory(device)
    synchronize(device)
    return time.perf_counter() - start


def time_to(entry: dict[str, Any], key: str, target: float) -> Optional[float]:
    """The first checkpoint (seconds) whose ``key`` reaches ``target``, or ``None``."""
    for row in entry.get("checkpoints", []):
        value = row.get(key)
        if is_finite_number(value) and value >= target:
            return row["checkpoint_s"]
    return None


# ---------------------------------------------------------------------------------------------
# The run


def run_benchmark(
    *,
    scene_name: str,
    methods: Sequence[str],
    device: str,
    checkpoints: Sequence[float],
    quick: bool,
    data: Optional[str] = None,
    overrides: Sequence[str] = (),
    samples: Optional[int] = None,
    ngp_backend: str = "auto",
    max_seconds: Optional[float] = None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    nerfacc_status: Optional[NerfaccStatus] = None,
) -> dict[str, Any]:
    """
    Run the methods on one scene and (with ``out_dir``) write the JSON, markdown and figure.

    ``nerfacc_status``: the result of an earlier :func:`probe_nerfacc` (e.g. the build step of
    ``fit_speed.sh``); when it failed, nerfacc is not touched again and its reason is reported.

    Returns:
        The report (also ``bench_fit_<scene>.json``).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {METHODS}.")
    if not checkpoints or any(not c > 0 for c in checkpoints):
        raise ValueError(f"checkpoints must be positive seconds, got {list(checkpoints)}.")
    checkpoints = sorted(float(c) for c in checkpoints)
    wall_start = time.perf_counter()
    deadline = None if max_seconds is None else wall_start + max_seconds
    resolved = "cuda" if device == "auto" and torch.cuda.is_available() else device
    resolved = "cpu" if resolved == "auto" else resolved
    if resolved.startswith("cuda"):  # CUDA context and cuBLAS before any clock runs
        warm = torch.ones(512, 512, device=resolved)
        (warm @ warm).sum().item()
    status = NerfaccStatus(False, "not run", "the nerfacc row was not asked for")
    if ngp_backend == "torch":
        status = NerfaccStatus(False, "not run", "--ngp-backend torch: the stand-in was asked for")
    elif nerfacc_status is not None and not nerfacc_status.available:
        status = nerfacc_status  # a failed build is not retried (it could hang on its lock)
    elif "nerfacc" in methods:
        status = probe_nerfacc(resolved)
        if nerfacc_status is not None:
            status.seconds += nerfacc_status.seconds  # the build, then this load
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as workdir:
        prep_start = time.perf_counter()
        scene = prepare_scene(
            scene_name,
            device=resolved,
            quick=quick,
            data=data,
            overrides=overrides,
            workdir=workdir,
            progress=progress,
        )
        prep_seconds = time.perf_counter() - prep_start
        report = report_header(scene, checkpoints, quick, status, prep_seconds)
        write = report_writer(out_dir, scene_name)
        cuda = scene.device.type == "cuda"
        samples = samples or (16 if quick else 64)
        chunk = 16384 if cuda else 4096
        ngp_settings = NGPSettings.quick() if quick else NGPSettings()
        builders: dict[str, Callable[[], Any]] = {
            "dvr": lambda: DVRMethod(scene, method="dvr"),
            "dvr-hash": lambda: DVRMethod(scene, method="dvr-hash"),
            "dvr-sdf": lambda: DVRMethod(scene, method="dvr-sdf"),
            "dvr-sdf-clock": lambda: DVRMethod(
                scene, method="dvr-sdf-clock", budget=float(checkpoints[-1])
            ),
            "dvr-dense": lambda: DVRMethod(scene, method="dvr-dense"),
            "pytorch3d-volume": lambda: VolumeMethod(scene, samples=samples, chunk=chunk),
            "nerfacc": lambda: NGPMethod(
                scene, settings=ngp_settings, backend=ngp_backend, status=status, chunk=chunk
            ),
        }
        # the warm-up runs the NGP model on the stand-in: nerfacc's kernels ran in the probe,
        # and a kernel fault there would poison the CUDA context of every method after it
        warm = dict(builders)
        warm["nerfacc"] = lambda: NGPMethod(
            scene, settings=ngp_settings, backend="torch", status=status, chunk=chunk
        )
        report["settings"]["warmup_seconds"] = _warm_up(warm, methods, scene.device)

        def timed(name: str, build: Callable[[], Any], entry: dict[str, Any]) -> None:
            run_method(
                name,
                build,
                scene,
                checkpoints=checkpoints,
                progress=progress,
                deadline=deadline,
                on_checkpoint=lambda: write(report, draw=False),
                entry=entry,
            )

        for name in methods:
            entry: dict[str, Any] = {"label": METHOD_LABELS[name], "error": None}
            report["methods"][name] = entry
            # a method needs its budget plus its evaluations (about a quarter more on a GPU)
            needed = 1.25 * checkpoints[-1] + 10.0
            if deadline is not None and time.perf_counter() + needed > deadline:
                entry["skipped"] = "not started: the wall-clock limit (--max-seconds) is near"
                write(report)
                continue
            try:
                timed(name, builders[name], entry)
            except Exception as error:  # one failing method must not stop the others
                entry["error"] = _error_tail(error)
                print(f"{name} failed: {entry['error']}", flush=True)
                used = entry.get("settings", {}).get("backend")
                if name == "nerfacc" and used != "torch":
                    # nerfacc ran but broke: the row is rerun on the stand-in, the reason kept
                    status = NerfaccStatus(False, "training", entry["error"], 0.0, status.version)
                    report["nerfacc"] = status.to_dict()
                    entry = {
                        "label": METHOD_LABELS[name],
                        "error": None,
                        "nerfacc_failure": status.to_dict(),
                    }
                    report["methods"][name] = entry
                    try:
                        timed(
                            name,
                            lambda failed=status: NGPMethod(
                                scene,
                                settings=ngp_settings,
                                backend="torch",
                                status=failed,
                                chunk=chunk,
                            ),
                            entry,
                        )
                    except Exception as second:
                        entry["error"] = _error_tail(second)
            entry["time_to"] = {
                "f_score": time_to(entry, scene.geometry_key, TARGET_F_SCORE),
                "psnr": time_to(entry, scene.headline_psnr, TARGET_PSNR),
            }
            report["wall_seconds"] = time.perf_counter() - wall_start
            write(report)
    report["wall_seconds"] = time.perf_counter() - wall_start
    write(report)
    return report


def _error_tail(error: BaseException, limit: int = 4000) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text if len(text) <= limit else text[:300] + "\n...\n" + text[-(limit - 300) :]


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scene", choices=SCENES, default="cow")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    parser.add_argument(
        "--checkpoints",
        type=float,
        nargs="+",
        default=None,
        help="seconds of training time at which to evaluate; the last is each method's budget "
        f"(default {' '.join(f'{c:g}' for c in CHECKPOINTS)}; with --quick "
        f"{' '.join(f'{c:g}' for c in QUICK_CHECKPOINTS)})",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes for a CPU check")
    parser.add_argument("--out", default="outputs/bench_fit", help="folder of the outputs")
    parser.add_argument("--data", default=None, help="the scene's data (cow / dtu-like: a mesh)")
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples per ray of pytorch3d-volume (default 64; --quick 16)",
    )
    parser.add_argument(
        "--ngp-backend",
        choices=("auto", "nerfacc", "torch"),
        default="auto",
        help="the nerfacc row's back-end (auto: nerfacc when it runs)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="wall-clock limit of the run: no method starts that would pass it, "
        "and a running one stops at the next checkpoint after it",
    )
    parser.add_argument(
        "--nerfacc-status",
        default=None,
        help="a JSON of an earlier nerfacc probe (its build step); a failed one "
        "is reported and nerfacc is not touched again",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (all methods)")
    args = parser.parse_args(argv)
    checkpoints = args.checkpoints or list(QUICK_CHECKPOINTS if args.quick else CHECKPOINTS)
    status = None
    if args.nerfacc_status:
        with open(args.nerfacc_status) as handle:
            status = NerfaccStatus(**json.load(handle))
    report = run_benchmark(
        scene_name=args.scene,
        methods=args.methods,
        device=args.device,
        checkpoints=checkpoints,
        quick=args.quick,
        data=args.data,
        overrides=args.overrides,
        samples=args.samples,
        ngp_backend=args.ngp_backend,
        max_seconds=args.max_seconds,
        out_dir=args.out,
        progress=not args.quiet,
        nerfacc_status=status,
    )
    print(markdown_report(report).split("\n## ")[0])
    return report


if __name__ == "__main__":
    main()
