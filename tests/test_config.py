"""
The configuration loader (:mod:`dvr_plugin.engine.config`) with the keys of both tasks: unknown
keys, wrong types, nested and mapping-valued overrides, ``device_overrides``, the round trip
through the dict stored in checkpoints, and the packaged configs (CPU, milliseconds each).
"""

from __future__ import annotations

import ast
import glob
import os
from pathlib import Path

import pytest
import torch
import yaml

from dvr_plugin.engine.config import (
    OptimConfig,
    apply_device_overrides,
    config_data,
    config_keys,
    load_config,
    parse_override,
    resolve_config,
)
from dvr_plugin.single_view.config import (
    SingleViewConfig,
    is_single_view_config,
    load_single_view_config,
)
from dvr_plugin.training.config import FitConfig
from dvr_plugin.training.config import load_config as load_fit_config

REPO = Path(__file__).resolve().parents[1]
PACKAGED = sorted(glob.glob(str(REPO / "dvr_plugin" / "configs" / "*.yaml")))
TASKS = [FitConfig, SingleViewConfig]


def write_yaml(folder: Path, data: dict) -> str:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def one_line_error(call, *needles: str) -> str:
    """The message of the ``ValueError`` that ``call()`` raises; one line holding ``needles``."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------------------------------------
# Unknown keys and wrong types


@pytest.mark.parametrize("cls", TASKS)
def test_unknown_key_names_it_and_lists_the_valid_ones(cls, tmp_path):
    message = one_line_error(
        lambda: load_config(cls, None, ["train.iteration=3"]),
        "Unknown config key 'train.iteration'",
        "train has keys",
        "'iterations'",
        "'step_milestones'",
    )
    assert "'rays_per_image'" in message
    one_line_error(
        lambda: load_config(cls, None, ["nosuch=1"]),
        "Unknown config key 'nosuch'",
        "the top level has keys",
        "'device_overrides'",
        "'seed'",
    )
    # The same from a file, nested or dotted.
    path = write_yaml(tmp_path, {"model": {"hidden_size": 8, "hiden": 2}})
    one_line_error(lambda: load_config(cls, path), "Unknown config key 'model.hiden'")
    one_line_error(
        lambda: load_config(cls, {"eval.validate_everyy": 1}),
        "Unknown config key 'eval.validate_everyy'",
    )
    # Below a value.
    one_line_error(lambda: load_config(cls, None, ["train.iterations.x=3"]), "value, not a section")


def test_task_keys_are_their_own():
    one_line_error(
        lambda: load_config(FitConfig, None, ["encoder.latent_size=8"]),
        "Unknown config key 'encoder.latent_size'",
    )
    one_line_error(
        lambda: load_config(SingleViewConfig, None, ["train.images_per_batch=8"]),
        "Unknown config key 'train.images_per_batch'",
        "'objects_per_batch'",
    )
    one_line_error(
        lambda: load_config(SingleViewConfig, None, ["mixed_precision=true"]),
        "Unknown config key 'mixed_precision'",
    )


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.iterations=many", "train.iterations must be an integer, got 'many'"),
        ("model.hidden_size=1.5", "model.hidden_size must be an integer, got 1.5"),
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("optim.lr=true", "optim.lr must be a number, got True"),
        ("eval.tensorboard=maybe", "eval.tensorboard must be true or false, got 'maybe'"),
        ("optim.lr_milestones=3", "optim.lr_milestones must be a list, got 3"),
        ("train.step_milestones=[0, 16]", "train.step_milestones must be a mapping"),
        ("train.time_budget_s=soon", "train.time_budget_s must be a number or null"),
        ("seed=null", "seed must be an integer, got None"),
        ("model=3", "Config section model must be a mapping, got 3"),
    ],
)
def test_wrong_type_names_the_key(override, needle):
    one_line_error(lambda: load_config(FitConfig, None, [override]), needle)


def test_values_are_converted_to_the_annotated_type(tmp_path):
    # YAML reads 1e-4 (no dot) as a string; integers given for floats become floats.
    path = write_yaml(tmp_path, {"optim": {"lr": "1e-4", "grad_clip": 1}})
    config = load_config(FitConfig, path, ["eval.tensorboard=no", "train.iterations='12'"])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.optim.grad_clip == 1.0 and isinstance(config.optim.grad_clip, float)
    assert config.eval.tensorboard is False
    assert config.train.iterations == 12
    # The single-view input view is a view index or "random".
    assert load_config(SingleViewConfig, None, ["train.input_view=2"]).train.input_view == 2
    one_line_error(
        lambda: load_config(SingleViewConfig, None, ["train.input_view=[1]"]),
        "train.input_view must be a string or an integer",
    )


def test_checks_across_keys_run_on_load():
    one_line_error(lambda: load_config(FitConfig, None, ["data.format=dtu"]), "data.path")
    one_line_error(
        lambda: load_config(FitConfig, None, ["loss.eikonal=0.1"]), "model.field_type=sdf"
    )
    one_line_error(
        lambda: load_config(SingleViewConfig, None, ["eval.mesh_resolution=48"]),
        "eval.mesh_resolution must be a power of two",
    )
    one_line_error(lambda: load_config(SingleViewConfig, None, ["task=multi-view"]), "task must be")


def test_interpolation_errors_are_one_line(monkeypatch):
    monkeypatch.setenv("DVR_CONFIG_TEST_ROOT", "/data/scenes")
    config = load_config(
        FitConfig, None, ["data.format=dtu", "data.path=${oc.env:DVR_CONFIG_TEST_ROOT}/scan24"]
    )
    assert config.data.path == "/data/scenes/scan24"
    config = load_config(
        FitConfig, None, ["train.iterations=40", "eval.log_every=${train.iterations}"]
    )
    assert config.eval.log_every == 40
    one_line_error(
        lambda: load_config(FitConfig, None, ["data.format=dtu", "data.path=${nowhere}/x"]),
        "data.path",
        "nowhere",
    )


# ---------------------------------------------------------------------------------------------
# Overrides


def test_parse_override_values():
    assert parse_override("train.iterations=200") == (["train", "iterations"], 200)
    assert parse_override("a=1.5e-3") == (["a"], 1.5e-3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a={0: 16, 400: 32}") == (["a"], {0: 16, 400: 32})
    assert parse_override("p=a=b") == (["p"], "a=b")
    for empty in ("a=null", "a=None", "a=", "a=~"):
        assert parse_override(empty) == (["a"], None), empty
    for bad in ("no_equals", "=3", "a..b=1", "a={unclosed"):
        with pytest.raises(ValueError, match="override"):
            parse_override(bad)


def test_nested_overrides(tmp_path):
    path = write_yaml(
        tmp_path,
        {"model": {"hidden_size": 64, "n_blocks": 3}, "data": {"loader_args": {"views": [0]}}},
    )
    config = load_config(
        FitConfig,
        path,
        [
            "data.loader_args.scale=2",  # a key inside a mapping-valued key
            "model={n_frequencies: 2}",  # a section merges key by key
            "train.time_budget_s=None",
            "loss.depth=0.5",
        ],
    )
    assert config.data.loader_args == {"views": [0], "scale": 2}
    assert (config.model.hidden_size, config.model.n_blocks, config.model.n_frequencies) == (
        64,
        3,
        2,
    )
    assert config.train.time_budget_s is None
    assert config.loss.depth == 0.5
    # An empty section in a file keeps the defaults.
    assert load_config(FitConfig, {"eval": None}).eval == FitConfig().eval
    # Pairs of key parts and values work as well as strings.
    config = load_config(FitConfig, None, [(["train", "iterations"], 7)])
    assert config.train.iterations == 7


def test_a_mapping_value_replaces_the_old_one(tmp_path):
    # The default {0: 16, 1000: 32} is replaced by the file's, which the override replaces.
    path = write_yaml(tmp_path, {"train": {"step_milestones": {0: 16, 400: 32}}})
    assert load_config(FitConfig, path).train.step_milestones == {0: 16, 400: 32}
    config = load_config(FitConfig, path, ["train.step_milestones={0: 8}"])
    assert config.train.step_milestones == {0: 8}
    config = load_config(FitConfig, path, ["train.step_milestones={0: 8, 50: 24}"])
    assert config.train.step_milestones == {0: 8, 50: 24}
    # Lists too, and loader arguments.
    path = write_yaml(tmp_path, {"data": {"loader_args": {"views": [0, 4], "scale": 2}}})
    config = load_config(FitConfig, path, ["data.loader_args={views: [1]}"])
    assert config.data.loader_args == {"views": [1]}
    config = load_config(SingleViewConfig, None, ["data.classes=[chair]"])
    assert config.data.classes == ["chair"]


# ---------------------------------------------------------------------------------------------
# device_overrides


@pytest.mark.parametrize("cls", TASKS)
def test_device_overrides_apply_after_the_file_and_lose_to_explicit_keys(cls, tmp_path):
    data = {
        "train": {"iterations": 10, "step_milestones": {0: 16, 5: 32}},
        "device_overrides": {
            "cpu": {
                "train.iterations": 20,
                "model": {"hidden_size": 16},
                "train.step_milestones": {0: 8},
            },
            "cuda": {"train.iterations": 30},
        },
    }
    path = write_yaml(tmp_path, data)
    loaded = load_config(cls, path, ["device=cpu"])
    assert loaded.train.iterations == 10  # not applied before the device is known
    config, device = resolve_config(loaded)
    assert isinstance(config, cls) and device == torch.device("cpu")
    assert config.device == "cpu"
    assert (config.train.iterations, config.model.hidden_size) == (20, 16)
    assert config.train.step_milestones == {0: 8}  # replaced, not merged
    # A key given explicitly wins over the per-device value of the same key ...
    config, _ = resolve_config(load_config(cls, path, ["device=cpu", "train.iterations=5"]))
    assert (config.train.iterations, config.model.hidden_size) == (5, 16)
    # ... also when given as a section (only the keys it sets).
    config, _ = resolve_config(load_config(cls, path, ["device=cpu", "model={hidden_size: 8}"]))
    assert (config.train.iterations, config.model.hidden_size) == (20, 8)
    # The other device's block, applied without a GPU.
    cuda = cls.from_dict(apply_device_overrides(cls, loaded.to_dict(), torch.device("cuda")))
    assert (cuda.device, cuda.train.iterations) == ("cuda", 30)


@pytest.mark.parametrize("cls", TASKS)
def test_device_override_keys_are_checked_on_any_machine(cls):
    one_line_error(
        lambda: load_config(cls, {"device_overrides": {"cuda": {"model.hiden_size": 8}}}),
        "device_overrides.cuda",
        "Unknown config key 'model.hiden_size'",
    )
    one_line_error(
        lambda: load_config(cls, {"device_overrides": {"cuda": {"train.iterations": "many"}}}),
        "device_overrides.cuda",
        "train.iterations must be an integer",
    )
    one_line_error(
        lambda: load_config(cls, {"device_overrides": {"cuda": 3}}),
        "device_overrides.cuda must map dotted keys to values",
    )


def test_device_overrides_given_as_overrides_nest():
    config = load_config(FitConfig, None, ["device_overrides.cuda.model.hidden_size=256"])
    assert config.device_overrides == {"cuda": {"model": {"hidden_size": 256}}}
    cuda = FitConfig.from_dict(
        apply_device_overrides(FitConfig, config.to_dict(), torch.device("cuda"))
    )
    assert cuda.model.hidden_size == 256


# ---------------------------------------------------------------------------------------------
# Round trips, packaged configs, keys


@pytest.mark.parametrize("cls", TASKS)
def test_round_trip_through_the_checkpoint_dict(cls, tmp_path):
    overrides = [
        "seed=3",
        "train.step_milestones={0: 8, 5: 16}",
        "optim.lr_milestones=[3, 6]",
        "background=[0, 0, 0]",
        "device_overrides.cuda.train.iterations=9",
        "device_overrides.cpu={model.hidden_size: 8}",
    ]
    config = load_config(cls, None, overrides)
    assert config.background == [0.0, 0.0, 0.0]
    data = config.to_dict()
    assert cls.from_dict(data) == config
    assert load_config(cls, None, base=data) == config
    # Through YAML too (the run's config.yaml).
    assert load_config(cls, write_yaml(tmp_path, data)) == config
    # And through a torch checkpoint.
    torch.save({"config": data}, tmp_path / "checkpoint.pt")
    stored = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]
    assert cls.from_dict(stored) == config


@pytest.mark.parametrize("path", PACKAGED, ids=os.path.basename)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_packaged_config_loads_for_cpu_and_cuda(path, device):
    cls = SingleViewConfig if is_single_view_config(path) else FitConfig
    config = load_config(cls, path)
    applied = cls.from_dict(apply_device_overrides(cls, config.to_dict(), torch.device(device)))
    assert applied.device == device
    block = config.device_overrides.get(device) or {}
    if device == "cuda":
        assert block, f"{path} has no device_overrides.cuda"
    # Every key of the block took its value (mappings and lists whole).
    with open(path) as handle:
        raw = yaml.safe_load(handle)
    for key, value in (raw.get("device_overrides", {}).get(device) or {}).items():
        node = applied
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, (key, node, value)


def test_the_task_loaders_are_the_engine_loader(tmp_path):
    path = write_yaml(tmp_path, {"model": {"hidden_size": 8}})
    assert load_fit_config(path, ["seed=2"]) == load_config(FitConfig, path, ["seed=2"])
    root = str(tmp_path)
    assert load_single_view_config(None, [f"data.path={root}"]) == load_config(
        SingleViewConfig, None, [f"data.path={root}"]
    )
    # The unchecked dict of a file whose data.format is still to be decided.
    data = config_data(FitConfig, {"data": {"path": "scan24"}})
    assert (data["data"]["path"], data["data"]["format"]) == ("scan24", "demo")
    with pytest.raises(ValueError, match="data.format=demo"):
        load_config(FitConfig, {"data": {"path": "scan24"}})


def test_config_keys():
    keys = config_keys(FitConfig)
    for key in (
        "seed",
        "device_overrides",
        "mixed_precision",
        "train.step_milestones",
        "optim.lr",
        "data.loader_args",
        "eval.turntable_frames",
    ):
        assert key in keys
    assert "encoder.latent_size" in config_keys(SingleViewConfig)
    # Exactly the keys of the stored dict, sections one level deep.
    stored = FitConfig().to_dict()
    sections = {"data", "model", "optim", "train", "loss", "eval"}
    expected = [k for k in stored if k not in sections]
    expected += [f"{s}.{k}" for s in sections for k in stored[s]]
    assert sorted(keys) == sorted(expected)


def test_the_tasks_share_the_engine_bases():
    assert FitConfig().optim == SingleViewConfig().optim == OptimConfig()
    # single_view imports nothing of training (the tasks are siblings).
    source = (REPO / "dvr_plugin" / "single_view" / "config.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert "training" not in (node.module or ""), node.module
