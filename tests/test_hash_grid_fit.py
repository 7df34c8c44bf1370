"""The hash-grid field in a fit: ``model.encoding: hash_grid``, the table learning rate, training
on an analytic sphere, a checkpoint that reloads into the same field."""

from __future__ import annotations

import pytest
import torch

from dvr_plugin.engine.run_outputs import CHECKPOINT_NAME
from dvr_plugin.fields.appearance import ViewDependentField
from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.fields.hash_grid import HashGridEncoding, HashGridField
from dvr_plugin.training.trainer import Trainer, build_field, parameter_groups
from tests.training_factories import TrainingFactory

SMALL_GRID = {
    "model.encoding": "hash_grid",
    "model.hash_grid.n_levels": 4,
    "model.hash_grid.log2_table_size": 12,
    "model.hash_grid.max_resolution": 64,
    "model.hash_grid.hidden_size": 32,
}


def test_encoding_picks_the_field():
    assert isinstance(build_field(TrainingFactory.config()), OccupancyTextureField)
    field = build_field(TrainingFactory.config(**SMALL_GRID))
    assert isinstance(field, HashGridField)
    assert field.encoding.n_levels == 4
    viewdep = build_field(
        TrainingFactory.config(**SMALL_GRID, **{"model.colour": "view_dependent"})
    )
    assert isinstance(viewdep, ViewDependentField)
    assert isinstance(viewdep.geometry, HashGridField)


def test_bad_encoding_keys_are_refused():
    with pytest.raises(ValueError, match="model.encoding must be one of"):
        TrainingFactory.config(**{"model.encoding": "triplane"})
    with pytest.raises(ValueError, match="log2_table_size"):
        TrainingFactory.config(**{**SMALL_GRID, "model.hash_grid.log2_table_size": 40})
    with pytest.raises(ValueError, match="optim.encoding_lr"):
        TrainingFactory.config(**{"optim.encoding_lr": -1.0})


def test_tables_get_their_own_learning_rate():
    config = TrainingFactory.config(**SMALL_GRID, **{"optim.encoding_lr": 1e-2})
    field = build_field(config)
    groups = parameter_groups(field, config.optim)
    tables = [m.embeddings for m in field.modules() if isinstance(m, HashGridEncoding)]
    assert len(groups) == 2 and groups[1]["lr"] == 1e-2 and groups[1]["weight_decay"] == 0.0
    assert [id(t) for t in groups[1]["params"]] == [id(t) for t in tables]
    n_params = sum(1 for _ in field.parameters())
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_params
    # without encoding_lr (or without tables): one group at optim.lr
    assert len(parameter_groups(field, TrainingFactory.config(**SMALL_GRID).optim)) == 1


@pytest.mark.parametrize("encoding", ["fourier", "hash_grid"])
def test_annealing_follows_the_step(encoding):
    """Every step starts by setting the progress of the field's annealed encoding (inside the
    view-dependent field's geometry too) to ``step / fourier_anneal_steps``, capped at 1."""
    config = TrainingFactory.config(
        **(SMALL_GRID if encoding == "hash_grid" else {}),
        **{"model.fourier_anneal_steps": 4, "model.colour": "view_dependent"},
    )
    views = TrainingFactory.sphere_views(n_views=4, image_size=16)
    trainer = Trainer(config=config, train_data=views, progress=False)
    grid = trainer.field.geometry.encoding
    assert grid.anneal and float(grid.progress) == 0.0
    seen = []
    for _ in range(6):
        stats = trainer.train_step()
        seen.append(float(grid.progress))
        assert stats["fourier_progress"] == seen[-1]
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # the colour head's view encoding is not annealed
    assert not trainer.field.appearance.view_encoding.anneal


def test_hash_grid_fit_learns_and_reloads(tmp_path):
    views = TrainingFactory.sphere_views(n_views=8, image_size=24)
    config = TrainingFactory.config(
        **SMALL_GRID,
        **{"optim.lr": 1e-3, "optim.encoding_lr": 1e-2, "train.iterations": 30},
    )
    trainer = Trainer(config=config, train_data=views, out_dir=str(tmp_path), progress=False)
    first = trainer.train_step()["loss"]
    summary = trainer.fit()
    assert summary["step"] == 30
    # the optimiser kept the table group's learning rate through the steps
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(1e-2)
    points = torch.rand(1, 64, 3) - 0.5
    with torch.no_grad():
        reference = trainer.field(points).values
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    again = build_field(config)
    again.load_state_dict(state["model"])
    with torch.no_grad():
        torch.testing.assert_close(again(points).values, reference)
    last = trainer.train_step()["loss"]
    assert last < first, (first, last)
