"""
The engine's training loop (``dvr_plugin.engine.trainer.BaseTrainer``) on a toy task: a line
fitted to noisy points, its draws from both generators of the trainer. Checked: the cadence of
logs, validations and checkpoints, an exact resume (also after a Ctrl-C inside a step), the
refusals (overwrite, a step beyond ``train.iterations``, another task's checkpoint), a resume
that has nothing to do, and schedules that follow the clock (``train.schedule_by_time``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import pytest
import torch
from torch import nn

from dvr_plugin.engine.checkpoint import load_checkpoint
from dvr_plugin.engine.logs import read_csv
from dvr_plugin.engine.run_outputs import CHECKPOINT_NAME, TRAIN_LOG_NAME, VAL_LOG_NAME
from dvr_plugin.engine.trainer import BaseTrainer, FitInterrupted, build_optimizer


@dataclasses.dataclass
class Train:
    iterations: int = 6
    time_budget_s: Optional[float] = None
    schedule_by_time: bool = False
    lr_by_time: bool = False


@dataclasses.dataclass
class Eval:
    log_every: int = 1
    validate_every: int = 3
    checkpoint_every: int = 2
    tensorboard: bool = False


@dataclasses.dataclass
class Optim:
    lr: float = 0.05
    weight_decay: float = 0.0
    lr_milestones: list = dataclasses.field(default_factory=lambda: [4])
    lr_gamma: float = 0.5
    grad_clip: float = 1.0


@dataclasses.dataclass
class ToyConfig:
    seed: int = 3
    train: Train = dataclasses.field(default_factory=Train)
    eval: Eval = dataclasses.field(default_factory=Eval)
    optim: Optim = dataclasses.field(default_factory=Optim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Weights:
    rgb: float = 1.0
    depth: float = 0.0


class LineTrainer(BaseTrainer):
    """Fits ``y = a x + b`` to points of ``y = 2 x - 1`` with noise."""

    terms = ("rgb", "depth")
    choice_generator_name = "points"

    def __init__(self, *, config: ToyConfig, out_dir=None, resume=False, interrupt_at=None):
        super().__init__(
            config=config, device="cpu", out_dir=out_dir, resuming=resume, progress=False
        )
        self.model = nn.Linear(1, 1)
        self.weights = Weights()
        self.optimizer, self.scheduler = build_optimizer(config.optim, self.model.parameters())
        self.points = torch.linspace(-1.0, 1.0, 32)[:, None]
        self.interrupt_at = interrupt_at
        self._start_run()

    def train_step(self) -> dict[str, float]:
        index = torch.randperm(32, generator=self.choice_generator)[:8]
        x = self.points[index]
        noise = 0.1 * torch.randn(x.shape, generator=self.generator)
        if self.step == self.interrupt_at:
            raise KeyboardInterrupt  # after both draws: the loop must rewind them
        loss = ((self.model(x) - (2.0 * x - 1.0 + noise)) ** 2).mean()
        lr = self._optimizer_step(loss, backward=True, parameters=self.model.parameters())
        return self._step_values(
            {"loss": loss.detach(), "rgb": loss.detach(), "depth": None},
            lr=lr,
            n_steps=2,
            hit_rate=1.0,
            agreement=1.0,
        )

    def validate(self) -> Optional[dict[str, Any]]:
        with torch.no_grad():
            error = float((self.model(self.points) - (2.0 * self.points - 1.0)).abs().mean())
        metrics = {"step": self.step, "psnr": -error, "mask_iou": 1.0, "seconds": 0.0}
        self._record_validation(metrics)
        return metrics

    def _task_state(self) -> dict[str, Any]:
        return {"task": "line"}

    def _check_state(self, state, where: str) -> None:
        if state.get("task") != "line":
            raise ValueError(f"{where} is not a line checkpoint.")


def _config(**train: Any) -> ToyConfig:
    return ToyConfig(train=Train(**train))


def _parameters(trainer: BaseTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_the_loop_logs_validates_and_checkpoints_on_its_cadence(tmp_path):
    trainer = LineTrainer(config=_config(), out_dir=str(tmp_path))
    summary = trainer.fit()
    assert summary["step"] == 6 and summary["nothing_to_do"] is None
    assert not summary["stopped_early"]
    assert summary["validation"]["step"] == 6
    assert read_csv(str(tmp_path / TRAIN_LOG_NAME))["step"] == [1, 2, 3, 4, 5, 6]
    assert read_csv(str(tmp_path / VAL_LOG_NAME))["step"] == [0, 3, 6]
    assert sorted(summary["last"]) == [
        "hit_rate",
        "loss",
        "lr",
        "n_steps",
        "rgb",
        "train_mask_agreement",
    ]
    assert summary["last"]["lr"] == pytest.approx(0.025)  # halved at step 4
    state = load_checkpoint(str(tmp_path / CHECKPOINT_NAME))
    assert state["step"] == 6 and state["task"] == "line"
    assert set(state["rng"]["generators"]) == {"points", "sampling"}
    assert (tmp_path / "config.yaml").is_file()


def test_a_resumed_fit_equals_the_uninterrupted_one(tmp_path):
    whole = LineTrainer(config=_config())
    whole.fit()
    LineTrainer(config=_config(iterations=3), out_dir=str(tmp_path)).fit()
    resumed = LineTrainer(config=_config(), out_dir=str(tmp_path), resume=True)
    assert resumed.step == 3
    resumed.fit()
    for a, b in zip(_parameters(whole), _parameters(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert read_csv(str(tmp_path / TRAIN_LOG_NAME))["step"] == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_inside_a_step_saves_it_and_the_resume_draws_it_again(tmp_path):
    whole = LineTrainer(config=_config())
    whole.fit()
    stopped = LineTrainer(config=_config(), out_dir=str(tmp_path), interrupt_at=4)
    with pytest.raises(FitInterrupted) as error:
        stopped.fit()
    assert error.value.step == 4
    assert error.value.path == str(tmp_path / CHECKPOINT_NAME)
    resumed = LineTrainer(config=_config(), out_dir=str(tmp_path), resume=True)
    assert resumed.step == 4
    resumed.fit()
    for a, b in zip(_parameters(whole), _parameters(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_refusals_come_before_anything_is_written(tmp_path):
    out = str(tmp_path)
    LineTrainer(config=_config(iterations=4), out_dir=out).fit()
    checkpoint = os.path.join(out, CHECKPOINT_NAME)
    written = os.stat(checkpoint).st_mtime_ns
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        LineTrainer(config=_config(), out_dir=out)
    with pytest.raises(ValueError, match="train.iterations=2 is below the step"):
        LineTrainer(config=_config(iterations=2), out_dir=out, resume=True)
    with pytest.raises(FileNotFoundError, match="Cannot resume"):
        LineTrainer(config=_config(), out_dir=str(tmp_path / "empty"), resume=True)
    state = load_checkpoint(checkpoint)
    state["task"] = "circle"
    other = LineTrainer(config=_config())
    with pytest.raises(ValueError, match="not a line checkpoint"):
        other.load_state(state, path="circle.pt")
    assert other.step == 0
    done = LineTrainer(config=_config(iterations=4), out_dir=out, resume=True)
    assert "nothing to do" in done.nothing_to_do
    assert done.fit()["nothing_to_do"] == done.nothing_to_do
    assert os.stat(checkpoint).st_mtime_ns == written


def test_the_time_budget_stops_the_loop(tmp_path):
    trainer = LineTrainer(config=_config(time_budget_s=0.0), out_dir=str(tmp_path))
    summary = trainer.fit()
    assert summary["stopped_early"] and summary["step"] == 0
    assert load_checkpoint(str(tmp_path / CHECKPOINT_NAME))["step"] == 0


class _FakeClock:
    """``perf_counter`` that advances ``tick`` seconds on every call: each step of the loop
    (timed by two calls) then takes ``tick`` seconds of training time."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def _clocked_fit(tmp_path, monkeypatch, **train) -> tuple[list[int], list[float]]:
    """A 5 s budget planned for 100 steps, at 0.5 s per step on a fake clock (10 steps, the
    clock at 10 x the step each time), milestones 4 and 55: the schedule position each step
    saw, and the learning rates of the log."""
    import dvr_plugin.engine.trainer as engine_trainer

    monkeypatch.setattr(engine_trainer, "time", _FakeClock(0.5))
    config = ToyConfig(
        train=Train(iterations=100, time_budget_s=5.0, **train),
        optim=Optim(lr_milestones=[4, 55]),
    )
    trainer = LineTrainer(config=config, out_dir=str(tmp_path))
    positions = []
    original = trainer.train_step

    def recording_step() -> dict[str, float]:
        positions.append(trainer.schedule_step)
        return original()

    trainer.train_step = recording_step
    summary = trainer.fit()
    assert summary["stopped_early"] and summary["step"] == 10
    return positions, read_csv(str(tmp_path / TRAIN_LOG_NAME))["lr"]


# the rate on the clock: milestone 4 passed at the second step (clock 10), 55 at the seventh
RATES_ON_THE_CLOCK = [0.05] + [0.025] * 5 + [0.0125] * 4


@pytest.mark.parametrize("by_time", [False, True])
def test_schedules_follow_the_clock_with_schedule_by_time(tmp_path, monkeypatch, by_time):
    positions, lrs = _clocked_fit(tmp_path, monkeypatch, schedule_by_time=by_time)
    if by_time:
        assert positions == [10 * k for k in range(10)]
        assert lrs == pytest.approx(RATES_ON_THE_CLOCK)
    else:
        assert positions == list(range(10))
        assert lrs == pytest.approx([0.05] * 4 + [0.025] * 6)


def test_lr_by_time_moves_the_learning_rate_alone(tmp_path, monkeypatch):
    positions, lrs = _clocked_fit(tmp_path, monkeypatch, lr_by_time=True)
    assert positions == list(range(10))  # the other schedules keep to the steps
    assert lrs == pytest.approx(RATES_ON_THE_CLOCK)


def test_update_schedule_is_capped_and_does_nothing_without_the_option():
    config = ToyConfig(train=Train(iterations=20, time_budget_s=2.0, schedule_by_time=True))
    trainer = LineTrainer(config=config)
    trainer.train_seconds = 7.0  # past the budget: the clock stops at the planned end
    trainer.update_schedule()
    assert trainer.schedule_step == 20
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    plain = LineTrainer(config=_config(iterations=20, time_budget_s=2.0))
    plain.train_seconds = 1.0
    plain.update_schedule()
    assert plain.schedule_step == 0 and plain.optimizer.param_groups[0]["lr"] == 0.05
