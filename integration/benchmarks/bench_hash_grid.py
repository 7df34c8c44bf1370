"""
Micro benchmark of the point encodings: the multi-resolution hash grid (``HashGridEncoding``,
alone and as ``HashGridField`` with its small heads) against the Fourier features and the MLP
of DVR's decoder (``OccupancyTextureField``), side by side in one run on one device.

Workloads, at every point count (2^16 and 2^18; ``--quick``: 2^10 and 2^12, a CPU smoke run):
  - forward: one evaluation without gradients;
  - forward + backward: the sum of the outputs back-propagated to the parameters (a training
    step's field cost at points whose position is fixed);
  - forward + backward with the normal: ``grad_x f`` with ``create_graph=True``, then
    ``sum |grad_x f|^2`` back-propagated to the parameters (the double backward of a normal or
    eikonal loss and of the view-dependent colour head).
Each column gives points per second (median time of up to 10 runs after a warm-up). Memory: the
parameters, the tensors autograd saves for the backward pass of "forward + backward" (any
device), and on CUDA the peak allocated during it above what was allocated before.

Rows (points uniform in ``UNIT_CUBE_BOUNDS``, the normalised object frame, float32):
  hash grid encoding   HashGridEncoding defaults: 16 levels x 2 features, T = 2^19, 16 .. 2048
  hash grid field      HashGridField defaults: that encoding + the point, 2 x 64 geometry layers,
                       value head, 2 x 64 texture head
  fourier features     FourierFeatures, 6 bands (the encoding alone)
  fourier mlp H=128    OccupancyTextureField(hidden_size=128, n_blocks=5, n_frequencies=6), the
                       fit configuration's default
  fourier mlp H=512    the same with H = 512 (the paper's size; CUDA only, slow on a CPU)

    python -m integration.benchmarks.bench_hash_grid --quick --threads 1  # CPU, a few seconds
    python -m integration.benchmarks.bench_hash_grid --device cuda --out docs/benchmarks
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS, FourierFeatures, OccupancyTextureField
from dvr_plugin.fields.hash_grid import HashGridEncoding, HashGridField
from integration.benchmarks.common import benchmark_parser, device_name, fmt_bytes, measure


def models(device: str) -> dict[str, nn.Module]:
    """The rows of the table (seeded, float32, on ``device``)."""
    torch.manual_seed(0)
    rows: dict[str, nn.Module] = {
        "hash grid encoding": HashGridEncoding(),
        "hash grid field": HashGridField(),
        "fourier features": FourierFeatures(n_frequencies=6),
        "fourier mlp H=128": OccupancyTextureField(hidden_size=128, n_blocks=5, n_frequencies=6),
    }
    if device.startswith("cuda"):
        rows["fourier mlp H=512"] = OccupancyTextureField(
            hidden_size=512, n_blocks=5, n_frequencies=6
        )
    return {name: model.to(device) for name, model in rows.items()}


def _value(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """`(1, P)` one scalar per point: the field's value, or the sum of an encoding's features."""
    out = model(points)
    if isinstance(out, torch.Tensor):
        return out.sum(-1)
    return out.values


def _outputs_sum(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """The sum of everything the model returns (values and colours, or the features)."""
    out = model(points)
    if isinstance(out, torch.Tensor):
        return out.sum()
    return out.values.sum() + (out.rgb.sum() if out.rgb is not None else 0.0)


def saved_bytes(fn: Callable[[], torch.Tensor], model: nn.Module) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``fn()`` (each storage
    counted once; the parameters themselves are not counted)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


def run_case(
    name: str, model: nn.Module, n_points: int, device: str, *, repeats: int, max_seconds: float
) -> dict:
    """One row: points/s of the three workloads and the memory figures."""
    generator = torch.Generator(device=device).manual_seed(0)
    lower = torch.tensor(UNIT_CUBE_BOUNDS[0], device=device)
    upper = torch.tensor(UNIT_CUBE_BOUNDS[1], device=device)
    points = lower + (upper - lower) * torch.rand(
        1, n_points, 3, device=device, generator=generator
    )
    has_parameters = any(True for _ in model.parameters())

    def forward():
        with torch.no_grad():
            return _value(model, points)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        loss = _outputs_sum(model, points)
        if has_parameters:
            loss.backward()
        return loss

    def with_normal():
        model.zero_grad(set_to_none=True)
        at = points.detach().requires_grad_(True)
        (normal,) = torch.autograd.grad(_value(model, at).sum(), at, create_graph=True)
        loss = normal.pow(2).sum()
        if has_parameters:
            loss.backward()
        return loss

    timing = dict(device=device, repeats=repeats, max_seconds=max_seconds)
    result = {"model": name, "points": n_points}
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["parameter_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    result["forward"] = measure(forward, **timing)["seconds"]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    measured = measure(forward_backward, **timing)
    result["forward_backward"] = measured["seconds"]
    result["peak_bytes"] = (
        measured["peak_bytes"] - before if measured["peak_bytes"] is not None else None
    )
    result["saved_bytes"] = saved_bytes(lambda: _outputs_sum(model, points), model)
    result["with_normal"] = measure(with_normal, **timing)["seconds"]
    model.zero_grad(set_to_none=True)
    return result


HEADER = (
    "| model | parameters | points | forward (pts/s) | fwd + bwd (pts/s) "
    "| fwd + bwd with normal (pts/s) | saved for backward | peak (fwd + bwd) |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _rate(n_points: int, seconds: float) -> str:
    rate = n_points / seconds
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


def row_markdown(result: dict) -> str:
    n = result["points"]
    return (
        f"| {result['model']} | {result['parameters'] / 1e6:.2f} M "
        f"({fmt_bytes(result['parameter_bytes'])}) | 2^{n.bit_length() - 1} | "
        f"{_rate(n, result['forward'])} | {_rate(n, result['forward_backward'])} | "
        f"{_rate(n, result['with_normal'])} | {fmt_bytes(result['saved_bytes'])} | "
        f"{fmt_bytes(result['peak_bytes'])} |"
    )


def run(*, device: str, sizes: list[int], repeats: int = 10, max_seconds: float = 1.5) -> dict:
    """Every row at every point count; prints the table as it goes."""
    started = time.perf_counter()
    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "rows": [],
    }
    print(
        f"Device: {report['device']} (torch {report['torch']}, "
        f"{report['cpu_threads']} CPU threads)",
        flush=True,
    )
    print(HEADER, flush=True)
    rows = models(device)
    for n_points in sizes:
        for name, model in rows.items():
            try:
                result = run_case(
                    name, model, n_points, device, repeats=repeats, max_seconds=max_seconds
                )
            except torch.OutOfMemoryError:
                print(f"| {name} | | 2^{n_points.bit_length() - 1} | out of memory | | | | |")
                continue
            finally:
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            report["rows"].append(result)
            print(row_markdown(result), flush=True)
    report["elapsed_seconds"] = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="2^10 and 2^12 points, 1 run")
    parser.add_argument(
        "--log2-points", type=int, nargs="+", default=None, help="point counts (default 16 18)"
    )
    parser.add_argument("--out", default=None, help="folder for bench_hash_grid.{json,md}")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    exponents = args.log2_points or ([10, 12] if args.quick else [16, 18])
    report = run(
        device=args.device,
        sizes=[2**k for k in exponents],
        repeats=1 if args.quick else 10,
        max_seconds=0.1 if args.quick else 1.5,
    )
    print(f"elapsed: {report['elapsed_seconds']:.1f} s", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_hash_grid.json"), "w") as handle:
            json.dump(report, handle, indent=2)
        lines = [
            f"Device: {report['device']} (torch {report['torch']}, "
            f"{report['cpu_threads']} CPU threads)",
            "",
            HEADER,
        ]
        lines += [row_markdown(row) for row in report["rows"]]
        with open(os.path.join(args.out, "bench_hash_grid.md"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
