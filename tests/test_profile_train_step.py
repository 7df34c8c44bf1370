"""
The training-step profile (:mod:`integration.benchmarks.profile_train_step`) on the CPU: every
phase that ``Trainer.train_step`` marks is found and timed, the phases fit inside the step, and
the report and its JSON are written.
"""

from __future__ import annotations

import json

import pytest

from integration.benchmarks.profile_train_step import PHASES, main, run


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    argv = "--scene demo --quick --device cpu --steps 2 --warmup 1".split()
    return main([*argv, "--out", str(out)]), out


def test_every_phase_is_timed_and_fits_inside_the_step(result):
    report, _ = result
    profiled = report["profiled"]
    assert set(profiled["phases_ms"]) == set(PHASES)
    # the render and the backward are the bulk of a step; every phase ran in every step
    assert profiled["phases_ms"]["train_step.forward"] > 0
    assert profiled["phases_ms"]["train_step.optimizer"] > 0
    assert all(ms > 0 for ms in profiled["phases_ms"].values())
    assert sum(profiled["phases_ms"].values()) <= profiled["step_ms"] * 1.01
    assert report["first_step"] == 1 and report["steps"] == 2
    assert report["unprofiled_step_ms"] > 0
    # no CUDA on this machine: no runtime calls
    assert all(count == 0 for count in profiled["calls_per_step"].values())


def test_report_and_json_are_written(result):
    report, out = result
    text = (out / "profile_train_step.md").read_text()
    for phase in PHASES:
        assert f"| {phase.split('.', 1)[1]} |" in text
    saved = json.loads((out / "profile_train_step.json").read_text())
    assert saved["profiled"]["phases_ms"] == pytest.approx(report["profiled"]["phases_ms"])


def test_bad_step_counts_are_refused():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        run(scene="demo", device="cpu", steps=0, warmup=0, quick=True)
