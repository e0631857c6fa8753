"""The plugin object, task options and their errors, the task's spec."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ticketx.task import MetricSpec, Plugin, Task, TaskError
from ticketx_vision.data import cache_root
from ticketx_vision.options import VisionOptions
from ticketx_vision.plugin import VisionPlugin

ROOT = Path("/nonexistent-data-root")  # options are checked without touching data


def make(name: str = "mnist", **options: object):
    return VisionPlugin().make_task(name, options, data_root=ROOT)


def test_entry_point_loads_the_plugin() -> None:
    eps = {ep.name: ep for ep in entry_points(group="ticketx.plugins")}
    assert "vision" in eps, "pip install -e plugins/vision registers the entry point"
    plugin = eps["vision"].load()()
    assert isinstance(plugin, VisionPlugin)
    assert isinstance(plugin, Plugin)
    assert set(plugin.tasks()) == {"mnist", "fashion_mnist", "cifar10", "imagefolder"}
    assert all(isinstance(d, str) and d for d in plugin.tasks().values())


def test_task_satisfies_the_protocol() -> None:
    task = make()
    assert isinstance(task, Task)
    assert task.metrics == MetricSpec()
    assert (task.metrics.primary, task.metrics.early_stop) == ("accuracy", "val_loss")


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(TaskError, match=r"task.name must be one of the vision tasks mnist, fashion_mnist, "
                       r"cifar10, imagefolder, got 'mnsit' \(did you mean 'mnist'\?\)"):
        make("mnsit")


def test_unknown_option_names_the_nearest() -> None:
    with pytest.raises(TaskError, match=r"unknown option\(s\) for vision task 'mnist': "
                       r"task.modle \(did you mean 'model'\?\)"):
        make(modle="conv2")
    with pytest.raises(TaskError, match=r"task.zzz; task.val_sise \(did you mean 'val_size'\?\)\. "
                       r"Valid options: model, dropout"):
        make(zzz=1, val_sise=10)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("val_size", "100", r"task.val_size must be an integer, got '100' \(str\)"),
        ("val_size", True, r"task.val_size must be an integer, got True \(bool\)"),
        ("train_subset", 10.0, r"task.train_subset must be an integer, got 10.0 \(float\)"),
        ("dropout", "0.5", r"task.dropout must be a number, got '0.5' \(str\)"),
        ("dropout", True, r"task.dropout must be a number, got True \(bool\)"),
        ("augment", 1, r"task.augment must be true, false or absent \(the task's default\), got 1 \(int\)"),
        ("download", "yes", r"task.download must be true or false, got 'yes' \(str\)"),
        ("model", 3, r"task.model must be a string, got 3 \(int\)"),
        ("path", 5, r"task.path must be a string \(a folder\), got 5 \(int\)"),
    ],
)
def test_wrong_types_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        make(**{field: value})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dropout": 1.0}, r"task.dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"task.dropout must be in \[0, 1\), got -0.1"),
        ({"val_size": 0}, r"task.val_size must be at least 1 .*got 0"),
        ({"split_seed": -1}, r"task.split_seed must be 0 or more, got -1"),
        ({"train_subset": -5}, r"task.train_subset must be 0 or more, got -5"),
        ({"test_subset": -1}, r"task.test_subset must be 0 or more, got -1"),
        ({"image_size": -28}, r"task.image_size must be 0 or more, got -28"),
        ({"model": "lenet"},
         r"task.model must be one of lenet300_100, conv2, conv4, conv6, vgg19, resnet20, got 'lenet'"),
        ({"model": "resnet18"}, r"got 'resnet18' \(did you mean 'resnet20'\?\)"),
        ({"model": "vgg19", "dropout": 0.5},
         r"task.dropout applies to lenet300_100, conv2, conv4, conv6 only, got 0.5 for task.model 'vgg19'"),
        ({"path": "some/folder"},
         r"task.path applies only to the imagefolder task, got 'some/folder' for task 'mnist'"),
    ],
)
def test_out_of_range_values_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        make(**options)


def test_imagefolder_needs_a_path() -> None:
    with pytest.raises(TaskError, match=r"task.path must name a folder with train/ and test/"):
        make("imagefolder")


def test_defaults_and_augment_per_task() -> None:
    assert VisionOptions() == VisionOptions(model="lenet300_100", dropout=0.0, val_size=5000)
    assert make().options.augment is False
    assert make("cifar10").options.augment is True
    assert make("cifar10", augment=False).options.augment is False
    assert make("mnist", augment=True).options.augment is True
    dropout = make(dropout=0).options.dropout
    assert dropout == 0.0 and isinstance(dropout, float)


def test_spec_has_every_option_and_round_trips() -> None:
    task = make("cifar10", model="resnet20", val_size=1000, train_subset=500)
    spec = task.spec()
    assert spec == {
        "plugin": "vision", "task": "cifar10",
        "options": {
            "model": "resnet20", "dropout": 0.0, "val_size": 1000, "split_seed": 0, "train_subset": 500,
            "test_subset": 0, "augment": True, "download": True, "path": "", "image_size": 0, "score_train": True,
        },
    }
    assert json.loads(json.dumps(spec)) == spec
    again = VisionPlugin().make_task(spec["task"], spec["options"], data_root=ROOT)
    assert again.spec() == spec


def test_data_root_none_means_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("TICKETX_CACHE", raising=False)
    task = VisionPlugin().make_task("mnist", {}, data_root=None)
    assert task.data_root == tmp_path / ".cache" / "ticketx" / "data"
    assert cache_root() == tmp_path / ".cache" / "ticketx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    xdg = VisionPlugin().make_task("mnist", {}, data_root=None)
    assert xdg.data_root == tmp_path / "xdg" / "ticketx" / "data"
    monkeypatch.setenv("TICKETX_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert make().data_root == ROOT


def test_models_build_without_loading_data() -> None:
    task = make("cifar10", model="conv2")  # the data root does not exist: nothing may read it
    model = task.build_model(0)
    assert model.fc3.out_features == 10 and model.features[0].in_channels == 3
    assert task.head(model) == {"fc3.weight", "fc3.bias"}
    assert "features.0.weight" in task.prunable(model)
    assert make("mnist", image_size=32).build_model(0).fc1.in_features == 32 * 32
