"""
Training on several processes (``torch.distributed``, gloo on the CPU).

Two worker processes train a tiny sphere scene; the tests check that the ranks hold identical
parameters after every step, that two ranks train the same model as one process with the same
global batch, that checkpoints resume across world sizes (2 -> 1 and 1 -> 2), that ranks with
different data stop with a clear error, and that nothing changes without a distributed
environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dvr_plugin.training.distributed import (
    BatchShard,
    compare_fingerprints,
    data_fingerprint,
    detect_environment,
    process_group_from_environment,
    shard_bounds,
)
from dvr_plugin.training.trainer import Trainer
from tests.training_factories import TrainingFactory, dvr

WORLD_SIZE = 2
STEPS = 4  # steps of every run
RESUME_AT = 2  # the step at which the interrupted runs stop
# The global batch: 3 images (2 on rank 0, 1 on rank 1: uneven shards), the normal term on (it
# draws jitter for a number of points that differs between the ranks), an LR milestone, and an
# occupancy grid refreshed every other step (every rank must keep the same grid), and the
# volume-rendering warm-up (its stratified offsets are drawn for the global batch), fading out
# before the last step.
OVERRIDES = {
    "train.iterations": STEPS,
    "train.occupancy_grid": 16,
    "train.grid_refresh_every": 2,
    "train.images_per_batch": 3,
    "loss.normal": 0.1,
    "loss.volume": 0.5,
    "loss.volume_until": 3,
    "loss.volume_rays": 32,
    "loss.volume_samples": 8,
    "optim.lr": 2e-3,
    "optim.lr_milestones": [3],
}


def _views():
    """The training and held-out views (the same in every process: analytic renders)."""
    return TrainingFactory.sphere_views(n_views=12, image_size=32).split(every=4)


def _trainer(train, val, *, overrides=(), **kwargs) -> Trainer:
    return Trainer(
        config=TrainingFactory.config(**{**OVERRIDES, **dict(overrides)}),
        train_data=train,
        val_data=val,
        progress=False,
        **kwargs,
    )


def _flat_parameters(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.field.parameters()])


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank: the scenarios of the ``two_ranks`` fixture, results saved into ``folder``."""
    torch.set_num_threads(1)
    environ = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
    }
    os.environ.update(environ)
    train, val = _views()
    with process_group_from_environment("cpu") as context:
        assert context is not None and context.world_size == world_size

        # 1. A fresh fit: identical parameters on every rank after every step; rank 0 writes a
        # checkpoint at RESUME_AT. Rank 1 is given a folder of its own, which must stay unused.
        out_dir = os.path.join(folder, "two_ranks" if rank == 0 else "rank_1")
        trainer = _trainer(train, val, out_dir=out_dir)
        assert trainer.dist is not None and (trainer.train_log is None) == (rank != 0)
        parameters, stats = [], []
        for _ in range(STEPS):
            stats.append(trainer.train_step())
            flat = _flat_parameters(trainer)
            gathered = [torch.zeros_like(flat) for _ in range(world_size)]
            dist.all_gather(gathered, flat)
            assert all(torch.equal(g, flat) for g in gathered), f"ranks differ at {trainer.step}"
            parameters.append(flat)
            if trainer.step == RESUME_AT:
                written = trainer.save_checkpoint(os.path.join(folder, "two_ranks_k.pt"))
                assert (written is None) == (rank != 0)
        summary = trainer.fit()  # at train.iterations already: the final checkpoint and plots
        assert summary["step"] == STEPS and (summary["validation"] is None) == (rank != 0)
        if rank == 0:
            torch.save({"parameters": parameters, "stats": stats}, os.path.join(folder, "a.pt"))

        # 2. Resume on two ranks from the one-process checkpoint (written by the test first).
        resumed = _trainer(train, val, resume_from=os.path.join(folder, "one_rank_k.pt"))
        assert resumed.step == RESUME_AT
        while resumed.step < STEPS:
            resumed.train_step()
        if rank == 0:
            torch.save(_flat_parameters(resumed), os.path.join(folder, "b.pt"))

        # 3. Ranks that disagree about the data: the same clear error on both.
        mine = train if rank == 0 else train.split(held_out=[0])[0]
        try:
            _trainer(mine, val)
        except ValueError as error:
            message = str(error)
        else:
            message = "no error"
        torch.save(message, os.path.join(folder, f"c{rank}.pt"))

        # 4. Schedules on the clock (train.schedule_by_time): rank 0's clock decides for all.
        clocked = _trainer(
            train,
            val,
            overrides={"train.time_budget_s": 10.0, "train.schedule_by_time": True},
        )
        clocked.train_seconds = 8.0 if rank == 0 else 1.0
        clocked.update_schedule()
        lr = clocked.optimizer.param_groups[0]["lr"]
        torch.save((clocked.schedule_step, lr), os.path.join(folder, f"d{rank}.pt"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(one_thread):
    """
    The reference (one process, the same seed and global batch: ``reference`` parameters and
    ``reference_stats`` after every step, a checkpoint at RESUME_AT), then the two workers of
    :func:`_worker`; their results lie in ``folder``. Also the ``train`` and ``val`` views.
    """
    with tempfile.TemporaryDirectory() as folder:
        train, val = _views()
        single = _trainer(train, val)
        reference, reference_stats = [], []
        for _ in range(STEPS):
            reference_stats.append(single.train_step())
            reference.append(_flat_parameters(single))
            if single.step == RESUME_AT:
                single.save_checkpoint(os.path.join(folder, "one_rank_k.pt"))
        mp.spawn(_worker, args=(WORLD_SIZE, _free_port(), folder), nprocs=WORLD_SIZE, join=True)
        yield SimpleNamespace(
            folder=folder,
            train=train,
            val=val,
            reference=reference,
            reference_stats=reference_stats,
        )


def _load(folder: str, name: str):
    return torch.load(os.path.join(folder, name), weights_only=False)


def assert_close(actual, expected, message):
    # the runs differ by float rounding only (about 3e-8 here; a step moves 1e-3)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=message)


def test_two_ranks_equal_one_process(two_ranks):
    result = _load(two_ranks.folder, "a.pt")
    pairs = zip(result["parameters"], two_ranks.reference, strict=True)
    for step, (two, one) in enumerate(pairs, start=1):
        assert_close(two, one, f"parameters after step {step}")
    for two, one in zip(result["stats"], two_ranks.reference_stats, strict=True):
        assert set(two) == set(one)
        for name in one:
            assert two[name] == pytest.approx(one[name], abs=5e-5), name


def test_resume_two_ranks_on_one(two_ranks):
    resumed = _trainer(
        two_ranks.train, two_ranks.val, resume_from=os.path.join(two_ranks.folder, "two_ranks_k.pt")
    )
    assert resumed.dist is None
    assert resumed.step == RESUME_AT
    while resumed.step < STEPS:
        resumed.train_step()
    assert_close(_flat_parameters(resumed), two_ranks.reference[-1], "2 ranks -> 1")


def test_resume_one_process_on_two_ranks(two_ranks):
    assert_close(_load(two_ranks.folder, "b.pt"), two_ranks.reference[-1], "1 rank -> 2")


def test_rank_zero_writes(two_ranks):
    folder = os.path.join(two_ranks.folder, "two_ranks")
    for name in ("checkpoint.pt", "config.yaml", "train_log.csv", "val_log.csv", "curves.png"):
        assert os.path.exists(os.path.join(folder, name)), name
    assert os.listdir(os.path.join(folder, "val")) == [f"step_{STEPS:06d}.png"]
    assert not os.path.exists(os.path.join(two_ranks.folder, "rank_1"))


def test_ranks_with_different_data_fail_clearly(two_ranks):
    for rank in range(WORLD_SIZE):
        message = _load(two_ranks.folder, f"c{rank}.pt")
        assert "ranks disagree about the data" in message
        assert "training views: rank 0 has 9, rank 1 has 8" in message


def test_rank_zero_clock_moves_every_ranks_schedules(two_ranks):
    # rank 0 has used 8 of 10 s: step 3 of STEPS = 4 on both ranks, at the milestone at 3
    # (rank 1's own clock, 1 s, would say step 0)
    for rank in range(WORLD_SIZE):
        position, lr = _load(two_ranks.folder, f"d{rank}.pt")
        assert position == int(STEPS * 0.8) == 3
        assert lr == pytest.approx(0.5 * OVERRIDES["optim.lr"])


# ``dvr fit`` under torchrun (2 gloo ranks), then resumed in one plain process.
TORCHRUN_SETTINGS = [
    "--format", "demo", "--device", "cpu", "--quiet",
    "data.image_size=16", "data.n_views=8", "data.supersample=1",
    "model.hidden_size=16", "model.n_blocks=1", "model.n_frequencies=2",
    "train.images_per_batch=2", "train.rays_per_image=64",
    "train.step_milestones={0: 8}", "eval.validate_every=2", "eval.checkpoint_every=2",
    "eval.log_every=1", "eval.n_steps=8", "eval.turntable_frames=0",
    "eval.mesh_resolution=0", "eval.tensorboard=false",
]  # fmt: skip


def test_fit_on_two_ranks_and_resume_on_one():
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "fit")
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env["OMP_NUM_THREADS"] = "1"
        completed = subprocess.run(
            [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "dvr_plugin.cli", "fit", "--out", out,
                *TORCHRUN_SETTINGS, "train.iterations=4",
            ],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert completed.stdout.count("outputs in") == 1  # rank 0 reports
        with open(os.path.join(out, "metrics.json")) as handle:
            train = json.load(handle)["train"]
        assert (train["iterations"], train["world_size"]) == (4, 2)
        with open(os.path.join(out, "train_log.csv")) as handle:
            assert len(handle.read().strip().splitlines()) == 5  # header + 4 steps
        code = dvr(["fit", "--out", out, "--resume", "--quiet", "train.iterations=6"])
        assert code == 0
        with open(os.path.join(out, "metrics.json")) as handle:
            train = json.load(handle)["train"]
        assert train["iterations"] == 6
        assert "world_size" not in train


def test_detect_environment():
    assert detect_environment({}) is None
    assert detect_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = detect_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    with pytest.raises(ValueError, match="RANK must lie in"):
        detect_environment({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="RANK is not"):
        detect_environment({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        detect_environment({"WORLD_SIZE": "two", "RANK": "0"})


@pytest.mark.usefixtures("one_thread")
def test_no_process_group_single_path():
    with process_group_from_environment("cpu", environ={}) as context:
        assert context is None
        assert not dist.is_initialized()
    train, val = _views()
    trainer = _trainer(train, val)
    assert trainer.dist is None
    assert trainer.shard is None
    assert trainer.is_main
    assert trainer.step_forward == trainer._forward_losses  # no DDP wrapper
    trainer.train_step()
    assert trainer.shard is None
    with pytest.raises(ValueError, match="distributed=True needs"):
        _trainer(train, val, distributed=True)


def test_shard_bounds():
    assert [shard_bounds(7, 3, r).rows for r in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [shard_bounds(4, 2, r).size for r in range(2)] == [2, 2]
    with pytest.raises(ValueError, match="images_per_batch"):
        shard_bounds(1, 2, 0)


def test_global_call_draws_like_the_global_batch():
    def noisy(x, generator=None):
        return x + torch.rand(x.shape, generator=generator)

    full = torch.arange(12.0).reshape(6, 2)
    expected = noisy(full, torch.Generator().manual_seed(3))
    parts = []
    for start, stop in ((0, 4), (4, 6)):
        shard = BatchShard(start=start, stop=stop, total=6)
        generator = torch.Generator().manual_seed(3)
        parts.append(shard.global_call(noisy)(shard.take(full), generator=generator))
    torch.testing.assert_close(torch.cat(parts), expected, atol=0, rtol=0)


def test_fingerprints():
    train, val = _views()
    same = data_fingerprint(train)
    assert compare_fingerprints(same, data_fingerprint(train)) == []
    assert compare_fingerprints(None, None) == []
    fewer = train.split(held_out=[0])[0]
    assert compare_fingerprints(same, data_fingerprint(fewer)) == [("views", 9, 8)]
    changed = train.split(held_out=[0])[0]
    changed.images[0, :4] = 0.5 * changed.images[0, :4]
    fewer_fp = data_fingerprint(fewer)
    differences = compare_fingerprints(fewer_fp, data_fingerprint(changed))
    assert [d[0] for d in differences] == ["images (checksum)"]

