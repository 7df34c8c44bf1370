"""
Decoder benchmark: the surface evaluation of a training step, eager against ``torch.compile``.

What it measures. A training step evaluates the field once at the surface points of the rays
that hit (about 2,000 to 8,000 points for the packaged cow scene on CUDA: 8 x 1024 rays), with
the directional derivative along the ray in the same pass, and runs backward through it
(:mod:`dvr_plugin.renderer.implicit_gradient`). This script times exactly that stage:

  1. ``points`` `(N, 3)` requiring grad and unit ``directions`` `(N, 3)`;
  2. the field's values, colours and their derivatives along ``directions`` through
     :meth:`dvr_plugin.surface.query.FieldQuery.evaluate_with_tangent`, the renderer's own path
     (the field's ``forward_with_tangent`` where it has one, else PyTorch's forward-mode AD),
     with the points laid out as the renderer does, `(N, 1, 3)`;
  3. the renderer's composition of the implicit depth and the colour (the points are the ray
     origins at depth 0: ``depth = -(s - stopgrad(s)) / stopgrad(grad_p s . w)`` and
     ``colour = rgb + stopgrad(J_rgb w) depth``) and an L1 loss against fixed targets;
  4. backward to the field's parameters and the points.

Variants: ``eager``; ``compile``, step 2 through ``torch.compile(dynamic=False)`` (one
compilation per field and N; ``torch._functorch.config.donated_buffer`` is turned off, as the
renderer's implicit gradient may keep the graph for a second backward); with ``--autotune``,
``max-autotune-no-cudagraphs``, the same in that mode. Named with ``--variants`` only:
``eager-jvp`` and ``compile-jvp``, step 2 with the derivative from ``torch.func.jvp`` of the
plain forward pass instead (Dynamo cannot trace ``torch.autograd.forward_ad``, the renderer's
route for a field without ``forward_with_tangent`` such as the hash grid). Steps 1, 3 and 4 are
the same eager code in every variant. For each (field, N, variant): the first call (for a
compiled variant: compilation plus one step) apart from the steady state, the median per-call
time of the repeats (CUDA-synchronised; plain wall clock on CPU), the peak allocated GPU memory
of the timed calls (parameters, gradients and inputs included; not measured on CPU), the number
of graphs and graph breaks Dynamo produced, and the largest absolute difference from an eager
reference step (renderer's route) of the outputs (values, colours, both derivatives) and of the
gradients (parameters and points); for the ``eager`` row itself that is the run-to-run
difference (zero on CPU). A row that raises records the error instead.

Fields:
  decoder     the packaged cow CUDA decoder, OccupancyTextureField(hidden_size=256, n_blocks=5,
              n_frequencies=6): its own ``forward_with_tangent``
  hash grid   HashGridField with its defaults (16 levels, 2^19 table): forward-mode AD

Frame and units: points uniform in the unit cube ``[-0.5, 0.5]^3`` of the normalised object
frame, times in ms, memory in MiB. Inductor's on-disk caches make a repeated run's compilation
faster; set ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` for cold compile times.

    source .gpubundle/activate && python -m integration.benchmarks.bench_decoder \\
        --device cuda --out DIR [--autotune]
    python -m integration.benchmarks.bench_decoder --quick --device cpu   # smoke run
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from dvr_plugin.fields.field import OccupancyTextureField, evaluate_field, field_type_of
from dvr_plugin.fields.hash_grid import HashGridField
from dvr_plugin.renderer.implicit_gradient import guard_denominator
from dvr_plugin.surface.query import FieldQuery, inside_sign
from integration.benchmarks.common import (
    RowTable,
    add_quick_and_out_arguments,
    add_row_budget_arguments,
    benchmark_parser,
    comma_list,
    error_row,
    fmt_bytes,
    measure,
    release_memory,
    report_files_writer,
    speedup_against_eager,
    synchronize,
    table_lines,
    timing_fields,
)

FIELDS = ("decoder", "hash grid")


class Variant(NamedTuple):
    """How a row evaluates the field: the tangent route (``"query"``: the renderer's,
    ``"jvp"``: ``torch.func.jvp``), whether it is compiled and in which mode (``None``: the
    default mode)."""

    route: str
    compiled: bool
    mode: str | None = None


VARIANTS = {
    "eager": Variant("query", False),
    "compile": Variant("query", True),
    "max-autotune-no-cudagraphs": Variant("query", True, "max-autotune-no-cudagraphs"),
    "eager-jvp": Variant("jvp", False),
    "compile-jvp": Variant("jvp", True),
}
# what runs without --variants (plus max-autotune-no-cudagraphs with --autotune)
DEFAULT_VARIANTS = ("eager", "compile")
SIZES = (2048, 8192)
QUICK_SIZES = (64,)
# the renderer's floor of |grad_p s . w| (attach_implicit_gradient's default eps)
DENOMINATOR_EPS = 1e-4
# targets of the loss: any depth and colour the untrained field does not already have
DEPTH_TARGET = 0.01
COLOUR_TARGET = 0.5


class SurfaceEvaluation(NamedTuple):
    """
    The field at the surface points and its derivatives along the rays.

    Members:
        values: `(N,)` occupancy logits or signed distances.
        rgb: `(N, 3)` colours in [0, 1], or ``None`` for a geometry-only field.
        values_tangent: `(N,)` the derivative of ``values`` along the ray direction.
        rgb_tangent: `(N, 3)` the derivative of ``rgb`` along the ray, or ``None``.
    """

    values: torch.Tensor
    rgb: torch.Tensor | None
    values_tangent: torch.Tensor
    rgb_tangent: torch.Tensor | None


class StepResult(NamedTuple):
    """One step's outputs (a :class:`SurfaceEvaluation`, detached) and its gradients (the
    field's parameters in order, then the points' `(N, 3)`)."""

    outputs: SurfaceEvaluation
    gradients: list[torch.Tensor | None]


def build_field(name: str, *, quick: bool, device: str) -> nn.Module:
    """
    One of :data:`FIELDS` (seeded, in float32 on ``device``); ``quick`` gives a tiny version of
    the same architecture for a CPU smoke run.

    Raises:
        ValueError: for a name not in :data:`FIELDS`.
    """
    torch.manual_seed(0)
    if name == "decoder":
        if quick:
            field = OccupancyTextureField(hidden_size=16, n_blocks=1, n_frequencies=2)
        else:
            field = OccupancyTextureField(hidden_size=256, n_blocks=5, n_frequencies=6)
    elif name == "hash grid":
        if quick:
            field = HashGridField(
                hidden_size=16,
                n_layers=1,
                rgb_hidden_size=16,
                rgb_n_layers=1,
                n_levels=4,
                log2_table_size=10,
                max_resolution=64,
            )
        else:
            field = HashGridField()
    else:
        raise ValueError(f"Unknown field {name!r}; choose from {FIELDS}.")
    return field.to(device)


def describe_field(name: str, field: nn.Module) -> str:
    """A short label of a built field for the table (architecture and how its tangent comes)."""
    if isinstance(field, OccupancyTextureField):
        label = (
            f"OccupancyTextureField H={field.hidden_size} x{len(field.blocks)} "
            f"F={field.encoding.n_frequencies}"
        )
    elif isinstance(field, HashGridField):
        encoding = field.encoding
        label = (
            f"HashGridField H={field.hidden_size} L={encoding.n_levels} "
            f"T=2^{int(math.log2(encoding.table_size))}"
        )
    else:
        label = type(field).__name__
    return f"{name}: {label}"


def tangent_method(field: nn.Module) -> str:
    """How :class:`FieldQuery` gets the field's directional derivative."""
    return "forward_with_tangent" if hasattr(field, "forward_with_tangent") else "forward-mode AD"


def surface_inputs(n_points: int, *, device: str, seed: int = 0):
    """
    ``(points, directions)``: `(N, 3)` points uniform in ``[-0.5, 0.5]^3`` requiring grad and
    `(N, 3)` unit directions, from a fixed seed.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = torch.rand(n_points, 3, generator=generator) - 0.5
    directions = torch.nn.functional.normalize(
        torch.randn(n_points, 3, generator=generator), dim=-1
    )
    return points.to(device).requires_grad_(True), directions.to(device)


def evaluate_surface(
    field: nn.Module, points: torch.Tensor, directions: torch.Tensor
) -> SurfaceEvaluation:
    """
    The field and its derivative along ``directions`` at ``points``, as the renderer's
    implicit gradient evaluates them (:meth:`FieldQuery.evaluate_with_tangent`).

    Args:
        field: a field of the protocol of :mod:`dvr_plugin.fields.field`.
        points: `(N, 3)` surface points.
        directions: `(N, 3)` ray directions (the tangents).

    Returns:
        SurfaceEvaluation of `(N,)` values and `(N, 3)` colours with their derivatives.
    """
    query = FieldQuery(field=field)
    ray_ids = torch.arange(points.shape[0], device=points.device)
    values, rgb, values_tangent, rgb_tangent = query.evaluate_with_tangent(
        ray_ids, points[:, None, :], directions[:, None, :]
    )
    return SurfaceEvaluation(
        values[:, 0],
        None if rgb is None else rgb[:, 0],
        values_tangent[:, 0],
        None if rgb_tangent is None else rgb_tangent[:, 0],
    )


def evaluate_surface_jvp(
    field: nn.Module, points: torch.Tensor, directions: torch.Tensor
) -> SurfaceEvaluation:
    """
    :func:`evaluate_surface` with the derivative along ``directions`` from ``torch.func.jvp``
    of the field's plain forward pass (a route that ``torch.compile`` can trace whole, unlike
    the forward-mode AD of ``torch.autograd.forward_ad``).

    Args and returns: as :func:`evaluate_surface`.
    """

    def outputs(at: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = evaluate_field(field, at[:, None, :])
        values = out.values[:, 0]
        return (values,) if out.rgb is None else (values, out.rgb[:, 0])

    primals, tangents = torch.func.jvp(outputs, (points,), (directions,))
    if len(primals) == 1:
        return SurfaceEvaluation(primals[0], None, tangents[0], None)
    return SurfaceEvaluation(primals[0], primals[1], tangents[0], tangents[1])


EVALUATIONS = {"query": evaluate_surface, "jvp": evaluate_surface_jvp}


def surface_loss(evaluation: SurfaceEvaluation, *, field_type: str) -> torch.Tensor:
    """
    The renderer's implicit depth and colour at the points (taken as ray origins at depth 0)
    and an L1 loss of both against fixed targets (module docstring, step 3).

    Returns:
        A 0-d tensor.
    """
    sign = inside_sign(field_type)
    inside = sign * evaluation.values
    denominator = guard_denominator(sign * evaluation.values_tangent.detach(), DENOMINATOR_EPS)
    depth = -(inside - inside.detach()) / denominator  # value 0, the implicit gradient
    loss = (depth - DEPTH_TARGET).abs().mean()
    if evaluation.rgb is not None:
        colour = evaluation.rgb + evaluation.rgb_tangent.detach() * depth[:, None]
        loss = loss + (colour - COLOUR_TARGET).abs().mean()
    return loss


def make_step(
    field: nn.Module,
    evaluate: Callable[[torch.Tensor, torch.Tensor], SurfaceEvaluation],
    points: torch.Tensor,
    directions: torch.Tensor,
) -> Callable[[], SurfaceEvaluation]:
    """
    One surface stage of a training step: clear the gradients, ``evaluate(points,
    directions)``, the loss, backward. The returned callable returns the evaluation.
    """
    field_type = field_type_of(field)

    def step() -> SurfaceEvaluation:
        field.zero_grad(set_to_none=True)
        points.grad = None
        evaluation = evaluate(points, directions)
        surface_loss(evaluation, field_type=field_type).backward()
        return evaluation

    return step


def run_and_collect(step: Callable[[], SurfaceEvaluation], field: nn.Module, points) -> StepResult:
    """Run ``step`` once and keep detached copies of its outputs and gradients."""
    evaluation = step()
    outputs = SurfaceEvaluation(*(None if t is None else t.detach().clone() for t in evaluation))
    gradients = [
        p.grad.detach().clone() if p.grad is not None else None for p in field.parameters()
    ]
    gradients.append(points.grad.detach().clone())
    return StepResult(outputs, gradients)


def max_abs_difference(
    first: Sequence[torch.Tensor | None], second: Sequence[torch.Tensor | None]
) -> float:
    """
    The largest absolute element difference between matching tensors of two sequences (0 for
    none). A tensor against ``None`` counts as its largest magnitude; two ``None`` as 0.

    Raises:
        ValueError: for sequences of different lengths or tensors of different shapes.
    """
    if len(first) != len(second):
        raise ValueError(f"Cannot compare {len(first)} tensors with {len(second)}.")
    largest = 0.0
    for a, b in zip(first, second, strict=True):
        if a is None and b is None:
            continue
        if a is None or b is None:
            present = a if a is not None else b
            largest = max(largest, float(present.abs().max()) if present.numel() else 0.0)
            continue
        if a.shape != b.shape:
            raise ValueError(f"Cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}.")
        if a.numel():
            largest = max(largest, float((a.double() - b.double()).abs().max()))
    return largest


def _dynamo_counts() -> dict:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def _evaluator(field: nn.Module, variant: str):
    """The evaluation of ``variant``: the plain function of its route, or a fresh
    ``torch.compile`` of it (Dynamo's caches and counters reset, so that its first call
    compiles from scratch)."""
    settings = VARIANTS[variant]
    route = EVALUATIONS[settings.route]

    def evaluate(points: torch.Tensor, directions: torch.Tensor) -> SurfaceEvaluation:
        return route(field, points, directions)

    if not settings.compiled:
        return evaluate
    import torch._dynamo
    import torch._functorch.config
    from torch._dynamo.utils import counters

    # the renderer's implicit gradient may backpropagate twice through the same graph
    torch._functorch.config.donated_buffer = False
    torch._dynamo.reset()
    counters.clear()
    return torch.compile(evaluate, dynamic=False, mode=settings.mode)


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_case(
    field: nn.Module,
    variant: str,
    n_points: int,
    reference: StepResult,
    *,
    device: str,
    repeats: int,
) -> dict:
    """
    Time one (field, N, variant) row against the eager ``reference`` step; the row's error
    text (``"error"``) instead of the numbers when it raises.
    """
    points, directions = surface_inputs(n_points, device=device)
    row: dict = {}
    try:
        evaluate = _evaluator(field, variant)
        step = make_step(field, evaluate, points, directions)
        synchronize(device)
        start = time.perf_counter()
        first = run_and_collect(step, field, points)
        synchronize(device)
        row["first_call_ms"] = 1000 * (time.perf_counter() - start)
        if VARIANTS[variant].compiled:
            row.update(_dynamo_counts())
        row["output_diff"] = max_abs_difference(first.outputs, reference.outputs)
        row["gradient_diff"] = max_abs_difference(first.gradients, reference.gradients)
        timing = measure(step, device=device, repeats=repeats, warmup=1, max_seconds=2.0)
        row.update(timing_fields(timing))
        row["peak_mib"] = None if timing["peak_bytes"] is None else timing["peak_bytes"] / 2**20
    except Exception as error:  # a failing variant fails its row, not the run
        row["error"] = _first_line(error)
    finally:
        field.zero_grad(set_to_none=True)
        release_memory(device)
    return row


def _checked(names: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """``names`` in the order of ``allowed``; ``ValueError`` for an unknown or empty list."""
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"Unknown {what}(s) {unknown}; choose from {list(allowed)}.")
    if not names:
        raise ValueError(f"At least one {what} is needed.")
    return [n for n in allowed if n in names]


def check_variants(variants: Sequence[str]) -> list[str]:
    """
    The variants in the order of :data:`VARIANTS`, checked.

    Raises:
        ValueError: for an unknown or empty list of variants.
    """
    return _checked(variants, list(VARIANTS), "variant")


def tangent_label(field: nn.Module, variant: str) -> str:
    """How a row of ``variant`` gets the field's directional derivative."""
    if VARIANTS[variant].route == "jvp":
        return "torch.func.jvp"
    return tangent_method(field)


def check_fields(fields: Sequence[str]) -> list[str]:
    """
    The fields in the order of :data:`FIELDS`, checked.

    Raises:
        ValueError: for an unknown or empty list of fields.
    """
    return _checked(fields, list(FIELDS), "field")


def _inductor_caches() -> str:
    """Whether Inductor may reuse compilations from disk (a warm cache shortens first calls)."""
    import torch._inductor.config as inductor_config

    if inductor_config.force_disable_caches:
        return "disabled"
    return "on" if inductor_config.fx_graph_cache else "off"


def run_benchmark(
    *,
    device: str,
    quick: bool,
    variants: Sequence[str],
    fields: Sequence[str] = FIELDS,
    sizes: Sequence[int] | None = None,
    repeats: int | None = None,
    max_seconds: float | None = None,
    write: Callable[[dict], None] | None = None,
) -> dict:
    """
    The surface stage of a training step, timed for every (field, N, variant) row (module
    docstring) into a :class:`~integration.benchmarks.common.RowTable` (each row printed as it
    comes and the report so far passed to ``write``).

    Args:
        device: ``"cuda"``, ``"cpu"``, ...
        quick: tiny fields, N in :data:`QUICK_SIZES`, 3 repeats.
        variants: a subset of :data:`VARIANTS`.
        fields: a subset of :data:`FIELDS`.
        sizes: the numbers of points N (default :data:`SIZES`, or :data:`QUICK_SIZES`).
        repeats: timed calls per row (default 20, or 3 with ``quick``).
        max_seconds: skip the remaining rows once this much time is spent.

    Returns:
        The report: ``rows`` (dicts with ``field``, ``n_points``, ``variant``, ``tangent``
        and the numbers of :func:`run_case`), ``skipped`` and the settings.
    """
    variants = check_variants(variants)
    fields = check_fields(fields)
    sizes = tuple(sizes) if sizes is not None else (QUICK_SIZES if quick else SIZES)
    repeats = repeats if repeats is not None else (3 if quick else 20)
    table = RowTable(
        device,
        header=HEADER,
        format_row=format_row,
        max_seconds=max_seconds,
        write=write,
        quick=quick,
        variants=variants,
        sizes=list(sizes),
        repeats=repeats,
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
        inductor_caches=_inductor_caches(),
        fields={},
    )
    for name in fields:
        field = build_field(name, quick=quick, device=device)
        table.report["fields"][name] = {
            "label": describe_field(name, field),
            "tangent": tangent_method(field),
            "parameters": sum(p.numel() for p in field.parameters()),
        }
        for n_points in sizes:
            reference = None
            for variant in variants:
                if table.skip(f"{name} N={n_points} {variant}"):
                    continue
                if reference is None:
                    points, directions = surface_inputs(n_points, device=device)
                    eager_step = make_step(field, _evaluator(field, "eager"), points, directions)
                    reference = run_and_collect(eager_step, field, points)
                row = {
                    "field": name,
                    "n_points": n_points,
                    "variant": variant,
                    "tangent": tangent_label(field, variant),
                }
                row.update(
                    run_case(field, variant, n_points, reference, device=device, repeats=repeats)
                )
                table.record(row)
        del field
        release_memory(device)
    return table.finish()


HEADER = (
    "| field | N | variant | tangent | graphs / breaks | first call | time | vs eager "
    "| peak memory | max abs diff outputs | max abs diff gradients | error |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def format_row(row: dict, rows: Sequence[dict]) -> str:
    """One markdown row; ``rows`` supplies the eager row of the same field and N."""
    start = f"| {row['field']} | {row['n_points']} | {row['variant']} | {row['tangent']} |"
    if "error" in row:
        return error_row(start, 7, row["error"])
    ratio = speedup_against_eager(row, rows, ("field", "n_points"))
    graphs = f"{row['graphs']} / {row['graph_breaks']}" if "graphs" in row else "-"
    first = _ms(row["first_call_ms"]) if "graphs" in row else "-"
    peak = "-" if row["peak_mib"] is None else fmt_bytes(row["peak_mib"] * 2**20)
    return (
        f"{start} {graphs} | {first} | {_ms(row['ms'])} | {ratio} | {peak} | "
        f"{row['output_diff']:.1e} | {row['gradient_diff']:.1e} | |"
    )


def markdown(report: dict) -> str:
    """The report as markdown: the settings, the fields and the table."""
    lines = [
        f"Device: {report['device']} (torch {report['torch']}); TF32 matmuls: "
        f"{report['tf32_matmul']}; {report['repeats']} repeats (median); Inductor's disk "
        f"caches: {report['inductor_caches']}.",
        "",
        "Fields: "
        + "; ".join(
            f"{info['label']} ({info['parameters']:,} parameters, tangent by {info['tangent']})"
            for info in report["fields"].values()
        )
        + ".",
        "",
        *table_lines(HEADER, format_row, report),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """
    The command line (``--help``). Returns the report.

    Raises:
        ValueError: for an unknown variant or field.
    """
    parser = benchmark_parser(__doc__)
    add_quick_and_out_arguments(
        parser, "bench_decoder", quick="tiny fields, N=64, 3 repeats (CPU smoke run)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: "
        f"{', '.join(DEFAULT_VARIANTS)}, and max-autotune-no-cudagraphs with --autotune)",
    )
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="add the max-autotune-no-cudagraphs variant (long compilations)",
    )
    parser.add_argument(
        "--fields", default=",".join(FIELDS), help=f"comma-separated subset of {FIELDS}"
    )
    add_row_budget_arguments(parser)
    args = parser.parse_args(argv)
    variants = comma_list(args.variants) if args.variants is not None else list(DEFAULT_VARIANTS)
    if args.autotune and "max-autotune-no-cudagraphs" not in variants:
        variants.append("max-autotune-no-cudagraphs")
    return run_benchmark(
        device=args.device,
        quick=args.quick,
        variants=variants,
        fields=comma_list(args.fields),
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        write=report_files_writer(args.out, "bench_decoder", markdown),
    )


if __name__ == "__main__":
    main()
