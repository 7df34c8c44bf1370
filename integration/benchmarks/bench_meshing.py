"""
Mesh extraction benchmark: MISE against the dense grid at the same final resolution.

Fields: the analytic demo scene (cheap to evaluate: the cost is the grid and marching cubes)
and the reference decoder fitted to it (H=512 by default: the cost is the network). For each
field and resolution both methods run with the same chunk size; the table gives points
evaluated, wall time, peak memory, the MISE / dense ratios, and whether the meshes agree.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the
call; on CPU every case runs in a fresh process and the peak resident set size (``VmHWM``,
reset through ``/proc/self/clear_refs`` after a warm-up) above the resident size before the
call, which includes allocator slack and the marching cubes kernel's own buffers.

    python -m integration.benchmarks.bench_meshing --device cuda --json bench_meshing.json
    python -m integration.benchmarks.bench_meshing --quick        # CPU: 64^3 and 128^3, H=128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch

from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.fields.shapes import demo_scene
from dvr_plugin.meshing import extract_mesh
from integration.benchmarks.common import (
    device_name,
    fit_to_demo_scene,
    fmt_bytes,
    reset_peak_memory,
    synchronize,
)

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = {
    "resolutions": (128, 256),
    "hidden_size": 512,
    "fit_steps": 500,
    "fit_batch": 16384,
    "fit_lr": 1e-3,
}
QUICK = {
    "resolutions": (64, 128),
    "hidden_size": 128,
    "fit_steps": 300,
    "fit_batch": 2048,
    "fit_lr": 3e-3,
}


def _read_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _scene_batch(n_points: int, device: str) -> torch.Tensor:
    """Half uniform points in the padded cube, half within ~0.02 of the demo scene's surface."""
    uniform = torch.rand(1, n_points // 2, 3, device=device) * 1.1 - 0.55
    points = torch.rand(1, n_points - n_points // 2, 3, device=device) * 1.1 - 0.55
    sdf = demo_scene(field_type="sdf").to(device)
    with torch.enable_grad():
        points.requires_grad_(True)
        distance = sdf(points).values
        (gradient,) = torch.autograd.grad(distance.sum(), points)
    normal = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    near = (points - distance[..., None] * normal).detach()
    near = near + 0.02 * torch.randn_like(near)
    return torch.cat([uniform, near], dim=1)


def fit_scene_network(
    *, hidden_size: int, steps: int, batch: int, lr: float, device: str
) -> OccupancyTextureField:
    """
    The reference decoder (5 blocks, no latent) fitted with 3D supervision to the demo scene's
    occupancy (BCE on logits) and colour (L1), on uniform and near-surface points; seeded.
    """
    torch.manual_seed(0)
    network = OccupancyTextureField(hidden_size=hidden_size).to(device)
    fit_to_demo_scene(
        network, steps=steps, lr=lr, points=lambda: _scene_batch(batch, device), device=device
    )
    return network.eval()


def build_field(kind: str, *, hidden_size: int, weights: Optional[str], device: str):
    """The analytic demo scene or the fitted network (weights from a ``state_dict`` file)."""
    if kind == "analytic":
        return demo_scene().to(device)
    field = OccupancyTextureField(hidden_size=hidden_size)
    if weights is not None:
        field.load_state_dict(torch.load(weights, map_location="cpu"))
    return field.to(device).eval()


def measure_case(
    field,
    *,
    resolution: int,
    start_resolution: int,
    chunk_size: int,
    device: str,
    mesh_out: Optional[str] = None,
    repeats: int = 3,
) -> Dict:
    """
    Extractions after a small warm-up: points, median seconds over ``repeats`` runs (one run
    when it takes over 10 s), peak memory, mesh size.

    Args:
        field: the field. resolution / start_resolution / chunk_size: extraction settings
            (``start_resolution == resolution`` is the dense grid).
        device: ``"cpu"`` or ``"cuda..."``.
        mesh_out: where to save ``(verts, faces)`` for comparison (``torch.save``), if given.
        repeats: timed runs.

    Returns:
        A dict of results (see the keys below).
    """
    warm_start = 8 if start_resolution < resolution else 16
    extract_mesh(field, resolution=16, start_resolution=warm_start, device=device)
    peak_note = None
    times = []
    if device.startswith("cuda"):
        reset_peak_memory(device)
        base = torch.cuda.memory_allocated()
    else:
        base = _read_status_kib("VmRSS")
        if not _reset_peak_rss():
            peak_note = "VmHWM could not be reset: peak includes start-up"
    cpu_times = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = extract_mesh(
            field,
            resolution=resolution,
            start_resolution=start_resolution,
            chunk_size=chunk_size,
            device=device,
        )
        synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if times[-1] > 10.0:  # slow cases are timed once
            break
    seconds = statistics.median(times)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        high = _read_status_kib("VmHWM")
        peak = None if high is None or base is None else max(high - base, 0) * 1024
    stats = result.stats
    if mesh_out is not None:
        torch.save((result.mesh.verts_packed().cpu(), result.mesh.faces_packed().cpu()), mesh_out)
    return {
        "resolution": resolution,
        "start_resolution": start_resolution,
        "method": "dense" if start_resolution == resolution else "mise",
        "points": stats.points_evaluated,
        "dense_points": stats.dense_points,
        "per_level": [(level.resolution, level.points_evaluated) for level in stats.levels],
        "seconds": seconds,
        "runs": len(times),
        "cpu_seconds": statistics.median(cpu_times),
        "timings": stats.timings,
        "peak_bytes": peak,
        "peak_note": peak_note,
        "n_verts": stats.n_verts,
        "n_faces": stats.n_faces,
        "mesh_file": mesh_out,
    }


def _run_isolated(spec: Dict) -> Dict:
    """Runs :func:`measure_case` in a fresh interpreter (clean CPU peak memory)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
        spec_file = handle.name
    try:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        subprocess.run(
            [sys.executable, "-m", "integration.benchmarks.bench_meshing", "--worker", spec_file],
            check=True,
            cwd=_ROOT,
            env=env,
        )
        with open(spec_file) as handle:
            return json.load(handle)["result"]
    finally:
        os.unlink(spec_file)


def _worker(spec_file: str) -> None:
    with open(spec_file) as handle:
        spec = json.load(handle)
    torch.set_num_threads(spec["threads"])
    field = build_field(
        spec["field"],
        hidden_size=spec["hidden_size"],
        weights=spec["weights"],
        device=spec["device"],
    )
    spec["result"] = measure_case(
        field,
        resolution=spec["resolution"],
        start_resolution=spec["start_resolution"],
        chunk_size=spec["chunk_size"],
        device=spec["device"],
        mesh_out=spec["mesh_out"],
    )
    with open(spec_file, "w") as handle:
        json.dump(spec, handle)


def _compare_meshes(dense_file: str, mise_file: str) -> str:
    verts_a, faces_a = torch.load(dense_file)
    verts_b, faces_b = torch.load(mise_file)
    if torch.equal(faces_a, faces_b):
        difference = float((verts_a - verts_b).abs().max()) if verts_a.numel() else 0.0
        return "identical" if difference == 0.0 else f"same faces, max dv {difference:.1e}"
    return f"differ: {faces_a.shape[0]} vs {faces_b.shape[0]} faces"


def run_benchmark(
    *,
    device: str = "cpu",
    resolutions: Sequence[int] = FULL["resolutions"],
    start_resolution: int = 32,
    hidden_size: int = FULL["hidden_size"],
    fit_steps: int = FULL["fit_steps"],
    fit_batch: int = FULL["fit_batch"],
    fit_lr: float = FULL["fit_lr"],
    chunk_size: int = 65536,
    fields: Sequence[str] = ("analytic", "network"),
    isolate: Optional[bool] = None,
) -> Dict:
    """
    Run every case and return the report (rows paired as dense / MISE per field and size).

    Args:
        device: where fields and grids live.
        resolutions: final cells per axis to compare at.
        start_resolution: MISE's start grid.
        hidden_size, fit_steps, fit_batch, fit_lr: the network and its fit to the demo scene
            (``fit_steps=0``: the network at its seeded initialisation).
        chunk_size: points per field call (both methods).
        fields: which of ``"analytic"`` and ``"network"`` to run.
        isolate: one process per case (default: on CPU only, for clean peak memory).
    """
    isolate = (not device.startswith("cuda")) if isolate is None else isolate
    report: Dict = {
        "device": device_name(device),
        "device_arg": device,
        "threads": torch.get_num_threads(),
        "chunk_size": chunk_size,
        "start_resolution": start_resolution,
        "hidden_size": hidden_size,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        weights = None
        if "network" in fields:
            tick = time.perf_counter()
            network = fit_scene_network(
                hidden_size=hidden_size, steps=fit_steps, batch=fit_batch, lr=fit_lr, device=device
            )
            report["fit_seconds"] = time.perf_counter() - tick
            with torch.no_grad():
                points = torch.rand(1, 100000, 3, device=device) * 1.1 - 0.55
                truth = demo_scene().to(device)(points).values > 0
                guess = network(points).values > 0
                report["fit_iou"] = float((truth & guess).sum() / (truth | guess).sum())
            weights = os.path.join(folder, "network.pt")
            torch.save(network.state_dict(), weights)
        for kind in fields:
            field = None
            for resolution in resolutions:
                pair = {}
                mise_start = start_resolution if start_resolution < resolution else resolution // 4
                for start in (resolution, max(mise_start, 1)):
                    method = "dense" if start == resolution else "mise"
                    spec = {
                        "field": kind,
                        "hidden_size": hidden_size,
                        "weights": weights,
                        "device": device,
                        "resolution": resolution,
                        "start_resolution": start,
                        "chunk_size": chunk_size,
                        "threads": torch.get_num_threads(),
                        "mesh_out": os.path.join(folder, f"{kind}_{resolution}_{method}.pt"),
                    }
                    if isolate:
                        pair[method] = _run_isolated(spec)
                    else:
                        if field is None:
                            field = build_field(
                                kind, hidden_size=hidden_size, weights=weights, device=device
                            )
                        pair[method] = measure_case(
                            field,
                            resolution=resolution,
                            start_resolution=start,
                            chunk_size=chunk_size,
                            device=device,
                            mesh_out=spec["mesh_out"],
                        )
                same = _compare_meshes(pair["dense"]["mesh_file"], pair["mise"]["mesh_file"])
                report["rows"].append(
                    {"field": kind, "resolution": resolution, "same_mesh": same, **pair}
                )
    for row in report["rows"]:
        for method in ("dense", "mise"):
            row[method].pop("mesh_file", None)
    return report


def _ratio(a, b) -> str:
    return "-" if a is None or b in (None, 0) else f"{a / b:.3f}"


def format_table(report: Dict) -> str:
    """The report as a markdown table, dense and MISE side by side."""
    lines = [
        f"Device: {report['device']} ({report['threads']} threads); chunk {report['chunk_size']} "
        f"points; MISE starts at {report['start_resolution']}^3; network H="
        f"{report['hidden_size']}"
        + (
            f", fitted in {report['fit_seconds']:.1f} s (IoU {report['fit_iou']:.3f})"
            if "fit_seconds" in report
            else ""
        ),
        "",
        "Times are medians of up to 3 runs (one run when a run takes over 10 s); peak memory "
        + (
            "is torch.cuda.max_memory_allocated above the allocation before the call."
            if report["device_arg"].startswith("cuda")
            else "is the peak RSS increase of a fresh process (VmHWM after reset minus VmRSS)."
        ),
        "",
        "| field | grid | points dense | points MISE | ratio | time dense | time MISE | ratio "
        "| peak mem dense | peak mem MISE | ratio | faces | mesh |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        dense, mise = row["dense"], row["mise"]
        lines.append(
            f"| {row['field']} | {row['resolution']}^3 | {dense['points']:,} | {mise['points']:,} "
            f"| {_ratio(mise['points'], dense['points'])} | {dense['seconds']:.2f} s "
            f"| {mise['seconds']:.2f} s | {_ratio(mise['seconds'], dense['seconds'])} "
            f"| {fmt_bytes(dense['peak_bytes'])} | {fmt_bytes(mise['peak_bytes'])} "
            f"| {_ratio(mise['peak_bytes'], dense['peak_bytes'])} | {mise['n_faces']:,} "
            f"| {row['same_mesh']} |"
        )
    lines += ["", "MISE points evaluated per level (cells per axis: points):", ""]
    for row in report["rows"]:
        levels = " / ".join(f"{res}: {points:,}" for res, points in row["mise"]["per_level"])
        lines.append(f"- {row['field']} {row['resolution']}^3: {levels}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="64^3 / 128^3 and H=128 (CPU)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--fit-steps", type=int, default=None)
    parser.add_argument("--start-resolution", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--fields", nargs="+", default=["analytic", "network"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = QUICK if args.quick else FULL
    report = run_benchmark(
        device=args.device,
        resolutions=args.resolutions or preset["resolutions"],
        start_resolution=args.start_resolution,
        hidden_size=args.hidden_size or preset["hidden_size"],
        fit_steps=preset["fit_steps"] if args.fit_steps is None else args.fit_steps,
        fit_batch=preset["fit_batch"],
        fit_lr=preset["fit_lr"],
        chunk_size=args.chunk_size,
        fields=args.fields,
    )
    table = format_table(report)
    report["table"] = table
    print(table)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
