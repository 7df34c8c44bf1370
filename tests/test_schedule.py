"""Tests of dvr_plugin.engine.schedule: the progressive marching step schedule."""

from __future__ import annotations

import json

import pytest

from dvr_plugin.engine.schedule import DEFAULT_MILESTONES, StepSchedule


def test_default_boundaries():
    schedule = StepSchedule()
    assert schedule.milestones == DEFAULT_MILESTONES
    expected = {
        0: 16,
        1: 16,
        49_999: 16,
        50_000: 32,
        99_999: 32,
        100_000: 64,
        249_999: 64,
        250_000: 128,
        10**9: 128,
    }
    for iteration, n_steps in expected.items():
        assert schedule.n_steps(iteration) == n_steps, iteration
        assert schedule(iteration) == n_steps


def test_custom_and_unsorted_milestones():
    schedule = StepSchedule({"100": 8, 0: 4, 10.0: 4})
    assert schedule.milestones == {0: 4, 10: 4, 100: 8}
    assert [schedule.n_steps(i) for i in (0, 9, 10, 99, 100, 101)] == [4, 4, 4, 4, 8, 8]
    assert StepSchedule({0: 2}).n_steps(123) == 2


def test_round_trip_through_dict_and_json():
    schedule = StepSchedule({0: 16, 1000: 64})
    assert StepSchedule.from_dict(schedule.to_dict()) == schedule
    via_json = StepSchedule.from_dict(json.loads(json.dumps(schedule.to_dict())))
    assert via_json == schedule and via_json.n_steps(1000) == 64
    assert StepSchedule() != schedule
    assert "1000: 64" in repr(schedule)


@pytest.mark.parametrize(
    "milestones, message",
    [
        ({0: 32, 10: 16}, "must not decrease"),
        ({0: 1}, ">= 2"),
        ({5: 16}, "start at iteration 0"),
        ({0: 16, -5: 16}, ">= 0"),
        ({0: 16.5}, "integer"),
        ({0: True}, "integer"),
        ({"zero": 16}, "integer"),
        ({}, "non-empty"),
        ([(0, 16)], "non-empty mapping"),
        ({0: 16, "0": 16}, "twice"),
    ],
)
def test_validation(milestones, message):
    with pytest.raises(ValueError, match=message):
        StepSchedule(milestones)


def test_bad_iterations_and_dicts():
    schedule = StepSchedule()
    with pytest.raises(ValueError, match=">= 0"):
        schedule.n_steps(-1)
    with pytest.raises(ValueError, match="integer"):
        schedule.n_steps(1.5)
    with pytest.raises(ValueError, match="milestones"):
        StepSchedule.from_dict({"steps": {0: 16}})
