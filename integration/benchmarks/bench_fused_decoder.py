"""
Fused decoder benchmark: the no-grad field evaluations of the surface search, eager against one
Triton kernel (:mod:`dvr_plugin.accel.fused_decoder`).

What it measures. The march and the secant steps evaluate the field's values without gradients
at a few thousand to tens of thousands of points per call, and at those sizes the eager forward
pass (about ``3 + 3 n_blocks + 1`` kernels) is bound by its launches. For each hidden size H and
number of points N this script times one such evaluation, ``values`` `(1, N)` of points
`(1, N, 3)`, in these variants:

  eager            ``field(points).values`` under ``torch.no_grad()``, float32 matmuls
  eager tf32       the same with ``torch.backends.cuda.matmul.allow_tf32 = True``
  fused            ``fused_decoder_values(field, points, precision=P)`` for every P of
                   ``--precisions`` (``ieee``: float32 products, ``tf32x3``, ``tf32``), with the
                   launch configuration of ``--configs`` (``auto``: ``default_config``)

and, on CUDA, each of them again captured once in a ``torch.cuda.CUDAGraph`` and replayed
(``+ graph``: the launch cost gone, what is left is the GPU time). Per row: the median time of
the repeats (CUDA-synchronised; wall clock on CPU), the speed-up against the plain float32 eager
row of the same H and N, and the largest absolute difference of the values from the float32
eager values, also relative to their largest magnitude. A row that raises records the error.

Fields (seeded; ``fc1`` of every block re-initialised like ``fc0`` so that the blocks are not
the identity they start as): H = 256, 5 blocks, 6 Fourier bands (the packaged CUDA decoder);
H = 512, 5 blocks, no bands (the reference decoder). ``--quick``: H = 32, 2 blocks, 6 bands,
N = 256, for a smoke run on the CPU, where the kernel runs in the Triton interpreter (the script
sets ``TRITON_INTERPRET=1`` before Triton is imported) and no graph rows exist.

Frame and units: points uniform in ``UNIT_CUBE_BOUNDS`` of the normalised object frame, times
in ms.

    source .gpubundle/activate && python -m integration.benchmarks.bench_fused_decoder \\
        --device cuda --out DIR [--configs auto,64x64x64w8,32x32x32w4,16x64x64w4]
    python -m integration.benchmarks.bench_fused_decoder --quick --device cpu   # smoke run
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from dvr_plugin.accel.fused_decoder import (
    PRECISIONS,
    FusedDecoderConfig,
    default_config,
    fused_decoder_values,
    multiprocessors,
)
from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS, OccupancyTextureField
from integration.benchmarks.common import (
    RowTable,
    add_quick_and_out_arguments,
    add_row_budget_arguments,
    benchmark_parser,
    comma_list,
    error_row,
    measure,
    release_memory,
    report_files_writer,
    speedup_against_eager,
    synchronize,
    table_lines,
    timing_fields,
)

# (hidden size, Fourier bands) of the fields; every field has N_BLOCKS residual blocks
FIELDS = ((256, 6), (512, 0))
QUICK_FIELDS = ((32, 6),)
N_BLOCKS = 5
QUICK_N_BLOCKS = 2
SIZES = (4096, 16384, 65536)
QUICK_SIZES = (256,)


class Variant(NamedTuple):
    """One row's evaluation: ``"eager"`` or ``"fused"``, its precision (eager: ``"float32"`` or
    ``"tf32"``; fused: one of :data:`PRECISIONS`), the fused launch configuration (``None``:
    automatic) and whether it is replayed from a CUDA graph."""

    kind: str
    precision: str
    config: FusedDecoderConfig | None = None
    graph: bool = False

    @property
    def label(self) -> str:
        name = "eager" if self.kind == "eager" else "fused"
        if self.precision != "float32":
            name += f" {self.precision}"
        if self.config is not None:
            name += f" [{format_config(self.config)}]"
        return name + (" + graph" if self.graph else "")


def parse_config(text: str) -> FusedDecoderConfig | None:
    """
    ``"auto"`` -> ``None``; ``"MxNxK"`` with optional ``wW`` (warps) and ``sS`` (stages), e.g.
    ``"64x64x64w8s2"``, -> that :class:`FusedDecoderConfig`.

    Raises:
        ValueError: for text of another form.
    """
    text = text.strip()
    if text == "auto":
        return None
    stages = warps = None
    body = text
    if "s" in body:
        body, stages_text = body.split("s", 1)
        stages = int(stages_text)
    if "w" in body:
        body, warps_text = body.split("w", 1)
        warps = int(warps_text)
    parts = body.split("x")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"A configuration is 'auto' or 'MxNxK[wW][sS]', got {text!r}.")
    block_m, block_n, block_k = (int(part) for part in parts)
    config = FusedDecoderConfig(block_m=block_m, block_n=block_n, block_k=block_k)
    if warps is not None:
        config = config._replace(num_warps=warps)
    if stages is not None:
        config = config._replace(num_stages=stages)
    return config


def format_config(config: FusedDecoderConfig) -> str:
    """The ``MxNxKwWsS`` text of a (filled-in) configuration."""
    text = f"{config.block_m}x{config.block_n}x{config.block_k}"
    if config.num_warps is not None:
        text += f"w{config.num_warps}"
    return text + f"s{config.num_stages}"


def build_field(hidden_size: int, n_frequencies: int, *, n_blocks: int, device: str):
    """A seeded :class:`OccupancyTextureField` in float32 on ``device``, ``fc1`` of every block
    re-initialised like ``fc0``."""
    torch.manual_seed(0)
    field = OccupancyTextureField(
        hidden_size=hidden_size, n_blocks=n_blocks, n_frequencies=n_frequencies
    )
    for block in field.blocks:
        block.fc1.reset_parameters()
    return field.to(device).eval().requires_grad_(False)


def unit_cube_points(n_points: int, *, device: str, seed: int = 0) -> torch.Tensor:
    """`(1, N, 3)` points uniform in ``UNIT_CUBE_BOUNDS``, from a fixed seed."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    low, high = (torch.tensor(corner) for corner in UNIT_CUBE_BOUNDS)
    points = low + (high - low) * torch.rand(1, n_points, 3, generator=generator)
    return points.to(device)


class _Tf32:
    """``torch.backends.cuda.matmul.allow_tf32`` set to ``enabled`` inside, restored after."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.previous


def evaluation(field, points: torch.Tensor, variant: Variant) -> Callable[[], torch.Tensor]:
    """The plain (not recorded) evaluation of ``variant``: a callable returning `(1, N)`
    values."""
    if variant.kind == "eager":
        tf32 = variant.precision == "tf32"

        def eager() -> torch.Tensor:
            with torch.no_grad(), _Tf32(tf32):
                return field(points).values

        return eager

    def fused() -> torch.Tensor:
        with torch.no_grad():
            return fused_decoder_values(
                field, points, precision=variant.precision, config=variant.config
            )

    return fused


def recorded(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` captured once in a CUDA graph (after two warm-up calls on a side stream, which
    also compile a Triton kernel); the returned callable replays it and returns its output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


def variants(
    precisions: Sequence[str], configs: Sequence[FusedDecoderConfig | None], *, cuda: bool
) -> list[Variant]:
    """The rows of one (field, N): eager float32 first (the reference), then eager TF32 (CUDA
    only), then fused per configuration and precision; each followed by its graph row on
    CUDA."""
    plain = [Variant("eager", "float32")]
    if cuda:
        plain.append(Variant("eager", "tf32"))
    plain += [Variant("fused", p, c) for c in configs for p in precisions]
    rows: list[Variant] = []
    for variant in plain:
        rows.append(variant)
        if cuda:
            rows.append(variant._replace(graph=True))
    return rows


def run_case(
    field,
    points: torch.Tensor,
    variant: Variant,
    reference: torch.Tensor,
    *,
    device: str,
    repeats: int,
) -> dict:
    """Time one row and compare its values with the float32 eager ``reference``; the error
    text (``"error"``) instead of the numbers when it raises."""
    row: dict = {}
    try:
        fn = evaluation(field, points, variant)
        if variant.graph:
            fn = recorded(fn)
        else:
            fn()  # compiles a Triton kernel
        synchronize(device)
        timing = measure(fn, device=device, repeats=repeats, warmup=1, max_seconds=2.0)
        values = timing["_output"]
        row.update(timing_fields(timing))
        difference = float((values.double() - reference.double()).abs().max())
        row["max_abs_diff"] = difference
        row["relative_diff"] = difference / max(float(reference.abs().max()), 1e-30)
    except Exception as error:  # a failing variant fails its row, not the run
        row["error"] = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
    finally:
        release_memory(device)
    return row


def run_benchmark(
    *,
    device: str,
    quick: bool,
    precisions: Sequence[str],
    configs: Sequence[FusedDecoderConfig | None] = (None,),
    sizes: Sequence[int] | None = None,
    repeats: int | None = None,
    max_seconds: float | None = None,
    write: Callable[[dict], None] | None = None,
) -> dict:
    """
    The no-grad evaluations, eager and fused, timed and compared for every (field, N, variant)
    row (module docstring) into a :class:`~integration.benchmarks.common.RowTable` (each row
    printed as it comes and the report so far passed to ``write``).

    Args:
        device: ``"cuda"`` or ``"cpu"`` (the Triton interpreter).
        quick: the tiny field and N of :data:`QUICK_SIZES`, 3 repeats.
        precisions: fused precisions, a subset of :data:`PRECISIONS`.
        configs: fused launch configurations (``None``: automatic).
        sizes: the numbers of points N (default :data:`SIZES`, or :data:`QUICK_SIZES`).
        repeats: timed calls per row (default 20, or 3 with ``quick``).
        max_seconds: skip the remaining rows once this much time is spent.

    Returns:
        The report: ``rows`` (dicts with ``hidden_size``, ``n_points``, ``variant``, and the
        numbers of :func:`run_case`), ``fields``, ``skipped`` and the settings.

    Raises:
        ValueError: for a precision not in :data:`PRECISIONS`.
    """
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"precisions must be a non-empty subset of {PRECISIONS}, got {unknown}.")
    cuda = torch.device(device).type == "cuda"
    fields = QUICK_FIELDS if quick else FIELDS
    n_blocks = QUICK_N_BLOCKS if quick else N_BLOCKS
    sizes = tuple(sizes) if sizes is not None else (QUICK_SIZES if quick else SIZES)
    repeats = repeats if repeats is not None else (3 if quick else 20)
    table = RowTable(
        device,
        header=HEADER,
        format_row=format_row,
        max_seconds=max_seconds,
        write=write,
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
        quick=quick,
        precisions=list(precisions),
        configs=["auto" if c is None else format_config(c) for c in configs],
        sizes=list(sizes),
        repeats=repeats,
        fields={},
    )
    for hidden_size, n_frequencies in fields:
        field = build_field(hidden_size, n_frequencies, n_blocks=n_blocks, device=device)
        table.report["fields"][str(hidden_size)] = (
            f"OccupancyTextureField H={hidden_size} x{n_blocks} F={n_frequencies}"
        )
        for n_points in sizes:
            points = unit_cube_points(n_points, device=device)
            with torch.no_grad(), _Tf32(False):
                reference = field(points).values
            n_sms = multiprocessors(points.device) if cuda else 1
            for variant in variants(precisions, configs, cuda=cuda):
                label = variant.label
                if variant.kind == "fused":
                    # the configuration actually launched (the automatic one depends on N)
                    used = default_config(hidden_size, n_points, n_sms=n_sms, config=variant.config)
                    label += f" ({format_config(used)})" if variant.config is None else ""
                if table.skip(f"H={hidden_size} N={n_points} {label}"):
                    continue
                row = {"hidden_size": hidden_size, "n_points": n_points, "variant": label}
                row.update(
                    run_case(field, points, variant, reference, device=device, repeats=repeats)
                )
                table.record(row)
        del field
        release_memory(device)
    return table.finish()


HEADER = (
    "| H | N | variant | time | vs eager | max abs diff | relative diff | error |\n"
    "|---|---|---|---|---|---|---|---|"
)


def format_row(row: dict, rows: Sequence[dict]) -> str:
    """One markdown row; ``rows`` supplies the plain float32 eager row of the same H and N."""
    start = f"| {row['hidden_size']} | {row['n_points']} | {row['variant']} |"
    if "error" in row:
        return error_row(start, 4, row["error"])
    ratio = speedup_against_eager(row, rows, ("hidden_size", "n_points"))
    return (
        f"{start} {row['ms']:.3f} ms | {ratio} | {row['max_abs_diff']:.1e} | "
        f"{row['relative_diff']:.1e} | |"
    )


def markdown(report: dict) -> str:
    """The report as markdown: the settings, the fields and the table."""
    lines = [
        f"Device: {report['device']} (torch {report['torch']}); Triton interpreter: "
        f"{report['triton_interpret']}; {report['repeats']} repeats (median); fused "
        f"precisions: {', '.join(report['precisions'])}; configurations: "
        f"{', '.join(report['configs'])}.",
        "",
        "Fields: " + "; ".join(report["fields"].values()) + ".",
        "",
        *table_lines(HEADER, format_row, report),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """
    The command line (``--help``). Returns the report.

    Raises:
        ValueError: for an unknown precision or a malformed configuration.
    """
    parser = benchmark_parser(__doc__)
    add_quick_and_out_arguments(
        parser, "bench_fused_decoder", quick="tiny field, N=256, 3 repeats (CPU smoke run)"
    )
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help=f"comma-separated subset of {', '.join(PRECISIONS)}",
    )
    parser.add_argument(
        "--configs",
        default="auto",
        help="comma-separated fused launch configurations: auto or MxNxK[wW][sS]",
    )
    parser.add_argument("--sizes", default=None, help="comma-separated numbers of points")
    add_row_budget_arguments(parser)
    args = parser.parse_args(argv)
    if torch.device(args.device).type != "cuda":
        # the kernel runs in the Triton interpreter, which Triton reads when it is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    configs = [parse_config(text) for text in comma_list(args.configs)]
    sizes = None if args.sizes is None else [int(n) for n in comma_list(args.sizes)]
    return run_benchmark(
        device=args.device,
        quick=args.quick,
        precisions=comma_list(args.precisions),
        configs=configs,
        sizes=sizes,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        write=report_files_writer(args.out, "bench_fused_decoder", markdown),
    )


if __name__ == "__main__":
    main()
