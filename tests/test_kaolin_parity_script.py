"""The Kaolin parity script (integration/kaolin_parity.py) in its CPU self-reference mode."""

from __future__ import annotations

import json

import pytest
import torch

from integration import kaolin_parity as kp


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("kaolin_parity")
    rows = kp.main(["--device", "cpu", "--reference", "self", "--tiny", "--out", str(out)])
    return out, rows


def test_table_columns_and_files(report):
    out, rows = report
    md = (out / "kaolin_parity.md").read_text()
    assert "| function | case | max abs diff | max rel diff | notes |" in md
    assert "- device: cpu (CPU); torch " + torch.__version__ in md
    doc = json.loads((out / "kaolin_parity.json").read_text())
    assert doc["columns"] == list(kp.COLUMNS)
    assert doc["meta"]["reference"] == "self (native float64)"
    assert len(doc["rows"]) == len(rows)
    main_table, summary = md.split("## Per function")
    table_rows = [line for line in main_table.splitlines() if line.startswith("| ")]
    assert len(table_rows) == len(rows) + 1  # the header
    assert all(line.count(" | ") == len(kp.COLUMNS) - 1 for line in table_rows[1:])
    # One summary line per function, in the order the functions first appear.
    functions = list(dict.fromkeys(row.function for row in rows))
    summary_rows = [line for line in summary.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0][2:] for line in summary_rows] == functions


def test_every_function_is_compared(report):
    _, rows = report
    functions = {row.function for row in rows}
    for name in (
        "chamfer_distance",
        "chamfer_distance grad",
        "f_score",
        "point_to_mesh_distance",
        "point_to_mesh_distance grad",
        "check_sign",
        "index_vertices_by_faces",
    ):
        assert name in functions


def test_float32_native_against_float64_native(report):
    _, rows = report
    numeric = [r for r in rows if r.max_abs is not None]
    assert numeric
    # Float32 against float64 on unit-sized inputs: differences at rounding level.
    assert max(r.max_abs for r in numeric) < 1e-5
    regions = next(r for r in rows if "7 regions" in r.case)
    assert regions.stats["type_expected_ours"] == 1.0
    assert regions.stats["type_expected_reference"] == 1.0
    near = next(r for r in rows if r.function == "check_sign" and "off the faces" in r.case)
    assert near.stats["truth_ours"] == 1.0 and near.stats["sign_agree"] == 1.0
    # Empty clouds: both sides raise the same error, and the row says so.
    empty = next(r for r in rows if r.function == "chamfer_distance" and "empty (1, 0)" in r.case)
    assert empty.max_abs is None and "ValueError" in empty.notes


def test_differences_and_rows():
    a = torch.tensor([1.0, 2.0, float("nan")])
    b = torch.tensor([1.5, 2.0, float("nan")])
    assert kp.differences(a, b) == (0.5, pytest.approx(0.5 / 1.5))
    assert kp.differences(torch.zeros(0), torch.zeros(0)) == (0.0, 0.0)
    # One side NaN, the other a number: an infinite difference, not a silent zero.
    assert kp.differences(torch.tensor([float("nan")]), torch.tensor([1.0]))[0] == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        kp.differences(torch.zeros(2), torch.zeros(3))
    row = kp.Row("f", "a|b", 1e-3, None, "n")
    assert kp.format_row(row) == "| f | a/b | 0.001 | - | n |"
