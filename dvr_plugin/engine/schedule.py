"""
The progressive schedule of ray-marching steps used during training.

DVR marches every ray with few steps early in training and more later: 16 steps until iteration
50 000, then 32, 64 from 100 000 and 128 from 250 000 on (evaluation renders use 128 steps,
high-quality renders 1024). A milestone ``{iteration: n_steps}`` applies from that iteration on,
inclusive, until the next milestone.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Mapping
from typing import Any

DEFAULT_MILESTONES: dict[int, int] = {0: 16, 50_000: 32, 100_000: 64, 250_000: 128}


class StepSchedule:
    """
    Number of marching steps as a step function of the training iteration.

    Args:
        milestones: ``{iteration: n_steps}``. It must hold iteration 0; iterations are integers
            >= 0, step counts integers >= 2 that never decrease with the iteration. Keys may be
            strings of integers (as after a JSON round trip). Default: :data:`DEFAULT_MILESTONES`.

    Example:
        ``StepSchedule().n_steps(49_999) == 16`` and ``StepSchedule().n_steps(50_000) == 32``.
    """

    def __init__(self, milestones: Mapping[Any, Any] | None = None) -> None:
        if milestones is None:
            milestones = DEFAULT_MILESTONES
        if not isinstance(milestones, Mapping) or len(milestones) == 0:
            raise ValueError(
                "milestones must be a non-empty mapping {iteration: n_steps}, "
                f"got {milestones!r}."
            )
        parsed = {}
        for key, value in milestones.items():
            iteration = _as_int(key, what="milestone iteration")
            n_steps = _as_int(value, what=f"step count at iteration {key!r}")
            if iteration < 0:
                raise ValueError(f"Milestone iterations must be >= 0, got {iteration}.")
            if n_steps < 2:
                raise ValueError(
                    f"Step counts must be >= 2 (a bracket needs two samples), got {n_steps} at "
                    f"iteration {iteration}."
                )
            if iteration in parsed:
                raise ValueError(f"Milestone iteration {iteration} is given twice.")
            parsed[iteration] = n_steps
        if 0 not in parsed:
            raise ValueError(
                f"milestones must start at iteration 0, got first milestone {min(parsed)}."
            )
        self._iterations = sorted(parsed)
        self._steps = [parsed[i] for i in self._iterations]
        for i in range(1, len(self._steps)):
            if self._steps[i] < self._steps[i - 1]:
                raise ValueError(
                    "Step counts must not decrease with the iteration: "
                    f"{self._steps[i - 1]} at iteration {self._iterations[i - 1]} is followed by "
                    f"{self._steps[i]} at iteration {self._iterations[i]}."
                )

    @property
    def milestones(self) -> dict[int, int]:
        """A copy of the milestones, ``{iteration: n_steps}`` sorted by iteration."""
        return dict(zip(self._iterations, self._steps, strict=True))

    def n_steps(self, iteration: int) -> int:
        """The number of marching steps at a training iteration (>= 0)."""
        iteration = _as_int(iteration, what="iteration")
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}.")
        return self._steps[bisect.bisect_right(self._iterations, iteration) - 1]

    __call__ = n_steps

    def to_dict(self) -> dict[str, dict[int, int]]:
        """``{"milestones": {iteration: n_steps}}``; :meth:`from_dict` reads it back."""
        return {"milestones": self.milestones}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepSchedule:
        """Build from :meth:`to_dict` output (integer or string keys)."""
        if not isinstance(data, Mapping) or set(data) != {"milestones"}:
            keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"Expected a dict with the single key 'milestones', got {keys}.")
        return cls(data["milestones"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepSchedule):
            return NotImplemented
        return self.milestones == other.milestones

    def __hash__(self) -> int:
        return hash(tuple(self.milestones.items()))

    def __repr__(self) -> str:
        return f"StepSchedule(milestones={self.milestones})"


def _as_int(value: Any, *, what: str) -> int:
    """An int from an int, an integral float or a string of an integer (bools refused)."""
    if isinstance(value, bool):
        raise ValueError(f"The {what} must be an integer, got {value!r}.")
    try:
        return operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"The {what} must be an integer, got {value!r}.")
