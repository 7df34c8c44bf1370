"""
The decoder benchmark (``integration.benchmarks.bench_decoder``) in its quick mode on CPU: the
eager rows give finite times and the same gradients as the eager reference, the command line
refuses unknown names, and, where this machine can compile, ``torch.compile`` of the surface
evaluation gives the eager gradients.

Frame and units: points in the unit cube of the normalised object frame, times in ms.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from integration.benchmarks import bench_decoder

QUICK_CPU = ["--quick", "--device", "cpu"]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("bench_decoder")
    report = bench_decoder.main([*QUICK_CPU, "--variants", "eager", "--out", str(out)])
    return report, out


def test_quick_eager_rows_have_finite_times_and_zero_gradient_difference(eager_run):
    report, _ = eager_run
    rows = report["rows"]
    assert [(r["field"], r["n_points"], r["variant"]) for r in rows] == [
        ("decoder", 64, "eager"),
        ("hash grid", 64, "eager"),
    ]
    for row in rows:
        assert "error" not in row, row
        assert math.isfinite(row["ms"]) and row["ms"] > 0
        assert math.isfinite(row["first_call_ms"]) and row["first_call_ms"] > 0
        assert row["runs"] == 3
        assert row["peak_mib"] is None  # not measured on CPU
        assert row["gradient_diff"] == 0.0
        assert row["output_diff"] == 0.0
    assert rows[0]["tangent"] == "forward_with_tangent"
    assert rows[1]["tangent"] == "forward-mode AD"


def test_quick_run_writes_the_table_and_the_json(eager_run):
    report, out = eager_run
    table = (out / "bench_decoder.md").read_text()
    assert bench_decoder.HEADER in table
    eager_lines = [line for line in table.splitlines() if "| eager |" in line]
    assert len(eager_lines) == 2
    for line in eager_lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[6].endswith(" ms") and math.isfinite(float(cells[6].split()[0]))
        assert cells[10] == "0.0e+00"  # max abs diff of the gradients
    written = json.loads((out / "bench_decoder.json").read_text())
    assert [r["ms"] for r in written["rows"]] == [r["ms"] for r in report["rows"]]


def test_unknown_names_raise_value_error():
    with pytest.raises(ValueError, match="Unknown variant"):
        bench_decoder.main([*QUICK_CPU, "--variants", "eager,fused"])
    with pytest.raises(ValueError, match="Unknown field"):
        bench_decoder.main([*QUICK_CPU, "--fields", "mesh"])


def test_max_seconds_skips_the_remaining_rows():
    report = bench_decoder.main([*QUICK_CPU, "--variants", "eager", "--max-seconds", "0"])
    assert report["rows"] == []
    assert report["skipped"] == ["decoder N=64 eager", "hash grid N=64 eager"]


def test_max_abs_difference_sees_a_changed_element():
    a = [torch.zeros(2, 3), None]
    b = [torch.zeros(2, 3), None]
    b[0][1, 2] = -0.25
    assert bench_decoder.max_abs_difference(a, b) == 0.25
    assert bench_decoder.max_abs_difference(a, [a[0], torch.full((1,), 2.0)]) == 2.0
    with pytest.raises(ValueError, match="shapes"):
        bench_decoder.max_abs_difference([torch.zeros(2)], [torch.zeros(3)])


def _cannot_compile_reason() -> str | None:
    """Why Inductor cannot build CPU kernels here (no usable C++ compiler), or ``None``."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:
        return f"torch.compile cannot build CPU kernels here: {type(error).__name__}: {error}"
    return None


def test_compiled_surface_evaluation_matches_eager_gradients(one_thread):
    reason = _cannot_compile_reason()
    if reason is not None:
        pytest.skip(reason)
    report = bench_decoder.main([*QUICK_CPU, "--variants", "compile", "--fields", "decoder"])
    (row,) = report["rows"]
    error = row.get("error", "")
    if error.startswith(("CppCompileError", "InvalidCxxCompiler")):
        pytest.skip(f"torch.compile cannot build CPU kernels here: {error}")
    assert "error" not in row, row
    assert row["graph_breaks"] == 0 and row["graphs"] >= 1
    assert math.isfinite(row["ms"])
    assert row["gradient_diff"] <= 1e-5
    assert row["output_diff"] <= 1e-5
