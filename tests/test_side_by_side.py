"""The side-by-side table of two revisions' target runs (integration/benchmarks/side_by_side.py)."""

import json

import pytest

from integration.benchmarks.side_by_side import load_runs, side_by_side


def _report(train_ms: float, render_ms: float) -> dict:
    return {
        "device": "test card",
        "summary": {
            "render_256_128_ms": {"grid tf32": render_ms},
            "train_4096_128": {"grid tf32 graphs": {"ms": train_ms, "peak_mib": 255.0}},
            "accuracy_failures": [],
        },
        "profile": [{"mode": "grid tf32 graphs", "ms": {"total (synchronised stages)": 2.0}}],
    }


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_medians_per_label_and_ratio_of_the_second_to_the_first():
    runs = [
        ("base", _report(10.0, 30.0)),
        ("head", _report(12.0, 33.0)),
        ("base", _report(14.0, 36.0)),
        ("head", _report(13.0, 30.0)),
    ]
    text = side_by_side(runs)
    train = _row(text, "train 4096 rays, 128 steps, grid + TF32 + graphs")
    # 4 runs, base median (10, 14) -> 12, head median (12, 13) -> 12.5, ratio 12.5 / 12
    assert train[1:5] == ["10.0", "12.0", "14.0", "13.0"]
    assert train[5:7] == ["12.0", "12.5"]
    assert float(train[7]) == pytest.approx(12.5 / 12, abs=1e-3)
    render = _row(text, "render 256x256, 128 steps, grid + TF32 secant")
    assert float(render[7]) == pytest.approx(31.5 / 33.0, abs=1e-3)
    # a case no run measured stays empty instead of failing
    assert _row(text, "render 256x256, dense")[1:] == ["-"] * 7
    assert "test card" in text


def test_load_runs_names_a_missing_report(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bench_core.json").write_text(json.dumps(_report(1.0, 2.0)))
    assert load_runs([f"base={tmp_path / 'a'}"])[0][0] == "base"
    with pytest.raises(ValueError, match="No bench_core.json"):
        load_runs([f"head={tmp_path / 'missing'}"])
    with pytest.raises(ValueError, match="LABEL=FOLDER"):
        load_runs([str(tmp_path / "a")])
