"""
Shared pieces of the benchmarks: a fitted reference-size network, cameras, timing, memory, a
fit's network in words, and a count of matrix-product FLOPs split by the precision they ran in
(for achieved TFLOP/s against measured matmul ceilings).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dvr_plugin.cli.demo import orbit_cameras
from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.fields.shapes import demo_scene

# Matmul ceilings measured on the H100 of the reference figures (docs/performance.md), FLOP/s.
MATMUL_CEILINGS = {"fp32": 51e12, "tf32": 384e12, "bf16": 647e12}


def network_label(model: Any) -> str:
    """
    A fit's network in words, from its ``model`` config section: the hash grid and its decoder
    (``model.encoding: hash_grid``) or the residual decoder with its Fourier frequencies.
    """
    if model.encoding == "hash_grid":
        grid = model.hash_grid
        return (
            f"hash grid {grid.n_levels} levels x {grid.features_per_level} features, table "
            f"2^{grid.log2_table_size}, resolution {grid.base_resolution}-{grid.max_resolution}; "
            f"decoder hidden {grid.hidden_size} x {grid.n_layers} layers"
        )
    blocks = f"hidden {model.hidden_size} x {model.n_blocks} blocks"
    return f"{blocks}, {model.n_frequencies} frequencies"


def decoder_flops_per_point(*, hidden_size: int = 512, n_blocks: int = 5, n_out: int = 4) -> int:
    """
    Matrix-product FLOPs of one point through the reference decoder's forward pass (a
    multiply-add counts 2): ``Linear(3 -> H)``, ``n_blocks`` residual blocks of two
    ``Linear(H -> H)``, ``Linear(H -> 4)``. For H = 512 and 5 blocks: 5,250,048. Biases, ReLUs
    and residual additions add about ``6 H n_blocks`` element operations (0.3%), not counted.
    """
    h = hidden_size
    return 2 * (3 * h + n_blocks * 2 * h * h + h * n_out)


def fit_to_demo_scene(
    field: torch.nn.Module,
    *,
    steps: int,
    lr: float,
    points: Callable[[], torch.Tensor],
    device: str,
) -> None:
    """
    Fit ``field`` in place with 3D supervision by the demo scene: per step, the binary
    cross-entropy of its logits against the scene's occupancy plus the L1 error of its colours
    at ``points()`` `(1, N, 3)` (normalised object frame), with Adam at ``lr``.
    """
    target = demo_scene().to(device)
    optimizer = torch.optim.Adam(field.parameters(), lr=lr)
    for _ in range(steps):
        batch = points()
        with torch.no_grad():
            truth = target(batch)
        out = field(batch)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(
                out.values, (truth.values > 0).float()
            )
            + (out.rgb - truth.rgb).abs().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def fitted_reference_field(
    *, hidden_size: int = 512, steps: int = 400, batch: int = 32768, device: str = "cpu"
) -> OccupancyTextureField:
    """
    The reference decoder (H=512, 5 blocks, no latent) fitted with 3D supervision to the demo
    scene's occupancy and colour, so renders cover a realistic part of the image.
    """
    torch.manual_seed(0)
    field = OccupancyTextureField(hidden_size=hidden_size).to(device)
    fit_to_demo_scene(
        field,
        steps=steps,
        lr=3e-4,
        points=lambda: torch.rand(1, batch, 3, device=device) * 1.1 - 0.55,
        device=device,
    )
    field.eval()
    for parameter in field.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    return field


def adam(field: torch.nn.Module, device: str, *, capturable: bool = False) -> torch.optim.Adam:
    """The training steps' optimiser: Adam with learning rate 0 (the field stays fixed), fused
    on CUDA as in ``dvr fit``; the same for every row of a table (``capturable`` for a step
    recorded as a CUDA graph)."""
    return torch.optim.Adam(
        field.parameters(),
        lr=0.0,
        fused=device.startswith("cuda") or None,
        capturable=capturable and device.startswith("cuda"),
    )


def cameras(n: int, device: str):
    """``n`` cameras 1.5 from the origin (the setting of the reference figures)."""
    return orbit_cameras(n, distance=1.5, device=device)


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA), so that a clock can stop."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)


def release_memory(device: torch.device | str) -> None:
    """Collect garbage and, on CUDA, hand the allocator's cached blocks back to the driver."""
    gc.collect()
    if _is_cuda(device):
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window on CUDA, after the queued work (a no-op elsewhere)."""
    if _is_cuda(device):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> int | None:
    """Peak allocated GPU memory (bytes) since the last reset, after the queued work; ``None``
    off CUDA (not measured)."""
    if _is_cuda(device):
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return None


def graph_pool_bytes(device: torch.device | str) -> int | None:
    """
    Bytes the caching allocator holds in private pools (those of recorded CUDA graphs) on
    ``device``; ``None`` off CUDA. A graph's intermediate tensors live there between replays
    and are not counted by ``max_memory_allocated``, so a graphed step's footprint is its peak
    plus this.
    """
    if not _is_cuda(device):
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    total = 0
    for segment in torch.cuda.memory_snapshot():
        pool = tuple(segment.get("segment_pool_id", (0, 0)))
        if segment.get("device") == index and pool != (0, 0):
            total += int(segment["total_size"])
    return total


def measure(
    fn: Callable[[], object],
    *,
    device: str,
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float = 1.5,
    flops: bool = False,
) -> dict:
    """
    Median wall time (s) of up to ``repeats`` runs (fewer once ``max_seconds`` are spent, at
    least one) after ``warmup`` runs, the peak memory of the timed runs (bytes), the memory
    that CUDA graphs recorded by this call's runs keep in their private pools (bytes,
    ``"graph_pool_bytes"``; not part of the peak), the output of the last run (key
    ``"_output"``) and, with ``flops``, the matmul FLOPs of one warm-up run by precision (key
    ``"flops"``).
    """
    counted = None
    pools_before = graph_pool_bytes(device)
    for i in range(max(warmup, 1 if flops else 0)):
        if flops and i == 0:
            with MatmulFlops() as counter:
                fn()
            counted = counter.by_precision()
        else:
            fn()
    synchronize(device)
    reset_peak_memory(device)
    times: list[float] = []
    output = None
    spent = 0.0
    while len(times) < repeats and (not times or spent < max_seconds):
        output = None
        start = time.perf_counter()
        output = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    peak = peak_memory(device)
    pools_after = graph_pool_bytes(device)
    result = {
        "seconds": statistics.median(times),
        "min_seconds": min(times),
        "runs": len(times),
        "peak_bytes": peak,
        "graph_pool_bytes": None if pools_after is None else max(0, pools_after - pools_before),
    }
    if counted is not None:
        result["flops"] = counted
    result["_output"] = output
    return result


_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "_addmm_activation"}


class MatmulFlops(TorchDispatchMode):
    """
    Counts the FLOPs (2 per multiply-add) of matrix products run inside it, forward and
    backward, by the precision they ran in: ``bf16`` (bfloat16 or float16 operands), ``tf32``
    (float32 operands on CUDA while TF32 matmuls are allowed), ``fp32`` (otherwise).
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"fp32": 0, "tf32": 0, "bf16": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        if name in _MATMULS:
            a, b = (
                (args[1], args[2])
                if name in ("addmm", "baddbmm", "_addmm_activation")
                else (
                    args[0],
                    args[1],
                )
            )
            batch = a.shape[0] if a.dim() == 3 else 1
            m, k = a.shape[-2], a.shape[-1]
            n = b.shape[-1]
            if a.dtype in (torch.bfloat16, torch.float16):
                bucket = "bf16"
            elif a.is_cuda and torch.backends.cuda.matmul.allow_tf32:
                bucket = "tf32"
            else:
                bucket = "fp32"
            self.counts[bucket] += 2 * batch * m * n * k
        return func(*args, **kwargs)

    def by_precision(self) -> dict:
        return dict(self.counts)


def roofline(flops: dict | None, seconds: float) -> dict:
    """Achieved TFLOP/s and the time the same products need at the measured ceilings."""
    if not flops:
        return {}
    total = sum(flops.values())
    floor = sum(count / MATMUL_CEILINGS[bucket] for bucket, count in flops.items())
    return {
        "tflop": total / 1e12,
        "tflops_per_s": total / seconds / 1e12,
        "floor_seconds": floor,
        "of_roofline": floor / seconds if seconds > 0 else float("nan"),
    }


def fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(value) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.0f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"


def comma_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated command-line value."""
    return [name.strip() for name in text.split(",") if name.strip()]


def report_files_writer(
    folder: str | None, stem: str, markdown: Callable[[dict], str], json_default=None
) -> Callable[[dict], None] | None:
    """
    ``write(report)`` that saves ``<folder>/<stem>.json`` and ``<stem>.md`` (the report through
    ``markdown``), creating ``folder``; ``None`` without a folder.
    """
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)

    def write(report: dict) -> None:
        with open(os.path.join(folder, f"{stem}.json"), "w") as handle:
            json.dump(report, handle, indent=2, default=json_default)
        with open(os.path.join(folder, f"{stem}.md"), "w") as handle:
            handle.write(markdown(report))

    return write


def timing_fields(timing: dict) -> dict:
    """A table row's ``ms`` (median), ``min_ms`` and ``runs`` from a :func:`measure` result."""
    return {
        "ms": 1000 * timing["seconds"],
        "min_ms": 1000 * timing["min_seconds"],
        "runs": timing["runs"],
    }


def speedup_against_eager(row: dict, rows: Sequence[dict], keys: Sequence[str]) -> str:
    """``"1.23x"``: the time of the ``eager`` row with the same ``keys`` values over ``row``'s
    (``"-"`` for the eager row itself or when there is none)."""
    eager = next(
        (
            r
            for r in rows
            if r["variant"] == "eager"
            and all(r[key] == row[key] for key in keys)
            and "ms" in r
        ),
        None,
    )
    return f"{eager['ms'] / row['ms']:.2f}x" if eager is not None and row is not eager else "-"


def error_row(start: str, n_empty: int, error: str) -> str:
    """A markdown row that failed: ``start`` (its leading cells), ``n_empty`` empty cells, then
    ``error`` (its ``|`` escaped) in the last cell."""
    return start + " |" * n_empty + " " + error.replace("|", "\\|") + " |"


def new_report(device: str, **settings) -> dict:
    """The skeleton of a benchmark report: ``device`` (its name), the torch version, then
    ``settings`` in their order, then empty ``rows`` and ``skipped`` (rows over the budget)."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        **settings,
        "rows": [],
        "skipped": [],
    }


def over_budget(started: float, max_seconds: float | None) -> bool:
    """Whether more than ``max_seconds`` (``None``: no budget) have passed since ``started``
    (a ``time.perf_counter()`` reading)."""
    return max_seconds is not None and time.perf_counter() - started > max_seconds


def skip_over_budget(
    report: dict, label: str, *, started: float, max_seconds: float | None
) -> bool:
    """Whether the time budget is spent (:func:`over_budget`); if so, ``label`` (the row that
    is not run) joins ``report["skipped"]``."""
    if not over_budget(started, max_seconds):
        return False
    report["skipped"].append(label)
    return True


class RowTable:
    """
    A benchmark's report, filled row by row. The clock starts when the table is made, which
    prints the device line (its name and torch version) and the table header.
    :meth:`record` appends a row, prints it and saves the report so far (``write``), so a run
    cut short keeps its rows; :meth:`skip` tells whether the time budget is spent;
    :meth:`finish` stamps the elapsed seconds and saves the report.

    Args:
        device: the device the rows run on (its name goes into the report).
        header: the markdown header of the table.
        format_row: ``format_row(row, rows)``, one markdown row (``rows``: those so far).
        max_seconds: the time budget; ``None``: no budget.
        write: saves the report; ``None``: nothing is saved.
        settings: the report's settings, in their order (:func:`new_report`).
    """

    def __init__(
        self,
        device: str,
        *,
        header: str,
        format_row: Callable[[dict, Sequence[dict]], str],
        max_seconds: float | None = None,
        write: Callable[[dict], None] | None = None,
        **settings,
    ) -> None:
        self.started = time.perf_counter()
        self.report = new_report(device, **settings)
        self.format_row = format_row
        self.max_seconds = max_seconds
        self.write = write
        print(f"device: {self.report['device']} (torch {self.report['torch']})", flush=True)
        print(header, flush=True)

    def skip(self, label: str) -> bool:
        """Whether the time budget is spent; if so, ``label`` (the row that is not run) joins
        ``report["skipped"]``."""
        return skip_over_budget(
            self.report, label, started=self.started, max_seconds=self.max_seconds
        )

    def record(self, row: dict) -> None:
        """Append ``row`` to ``report["rows"]``, print it and save the report so far."""
        self.report["rows"].append(row)
        print(self.format_row(row, self.report["rows"]), flush=True)
        self.finish()

    def finish(self) -> dict:
        """Stamp ``report["elapsed_seconds"]``, save the report (``write``, where given) and
        return it."""
        self.report["elapsed_seconds"] = time.perf_counter() - self.started
        if self.write is not None:
            self.write(self.report)
        return self.report


def table_lines(
    header: str, format_row: Callable[[dict, Sequence[dict]], str], report: dict
) -> list[str]:
    """The markdown lines of ``report["rows"]``: ``header``, one ``format_row(row, rows)`` per
    row and a blank line, then the rows ``report["skipped"]`` for the time budget, if any."""
    rows = report["rows"]
    lines = [header, *(format_row(row, rows) for row in rows), ""]
    if report["skipped"]:
        lines += ["Skipped (time budget): " + "; ".join(report["skipped"]), ""]
    return lines


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line: described by the first paragraph of ``doc`` (its module
    docstring), with ``--device`` (default ``cuda`` where it is available, else ``cpu``)."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def add_quick_and_out_arguments(
    parser: argparse.ArgumentParser, stem: str, *, quick: str
) -> None:
    """Add ``--quick`` (a smoke run; ``quick`` says what it runs) and ``--out`` (the folder for
    ``<stem>.json`` and ``<stem>.md``; none by default)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", default=None, help=f"folder for {stem}.json / .md")


def add_row_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--repeats`` (timed calls per row) and ``--max-seconds`` (the time budget after
    which the remaining rows are skipped), both ``None`` by default."""
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row")
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="skip the remaining rows after this"
    )
