from pathlib import Path

import pytest

from ticketx import config as C
from ticketx.config import ConfigError

BASE = {"task": {"plugin": "toy", "name": "gauss"}}


def build(**extra):
    return C.from_dict({**BASE, **extra})


def test_defaults_and_task_options():
    cfg = C.from_dict({"task": {"plugin": "vision", "name": "mnist", "model": "conv2", "val_size": 100}})
    assert cfg.train.steps == 2000 and cfg.prune.rate == 0.2 and cfg.arms == C.ARMS
    assert cfg.task.options == {"model": "conv2", "val_size": 100}


def test_required_keys_exist_with_their_names(tmp_path: Path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[task]\nplugin = "toy"\nname = "gauss"\n')
    cfg = C.load(recipe, ["train.steps=10", "train.batch_size=8", "train.lr=0.5", "train.optimizer=sgd",
                          "prune.levels=3", "prune.rate=0.5", "prune.rewind_step=2", "seed=7"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.optimizer) == (10, 8, 0.5, "sgd")
    assert (cfg.prune.levels, cfg.prune.rate, cfg.prune.rewind_step, cfg.seed) == (3, 0.5, 2, 7)
    assert cfg.name == "r"  # default name: the recipe's file name


def test_load_takes_a_str_path_and_a_bare_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "r.toml").write_text('[task]\nplugin = "toy"\nname = "gauss"\n')
    monkeypatch.chdir(tmp_path)
    cfg = C.load("r.toml", "train.steps=12")  # as typed in a notebook
    assert (cfg.name, cfg.train.steps) == ("r", 12)


def test_override_creates_task_options_and_lists():
    data = C.apply_overrides(BASE, ["task.hidden=8", "train.milestones=[10, 20]", "arms=['ticket']"])
    cfg = C.from_dict(data)
    assert cfg.task.options == {"hidden": 8} and cfg.train.milestones == (10, 20) and cfg.arms == ("ticket",)


def test_seeds_are_apart_per_replicate():
    cfg = build(seed=3, data_seed=100, replicates=2)
    assert [cfg.init_seed(r) for r in (0, 1)] == [3, 4]
    assert [cfg.order_seed(r) for r in (0, 1)] == [100, 101]
    assert build(seed=3).order_seed(1) == 4


def test_hash_ignores_name_but_not_hyperparameters():
    a, b = build(name="x"), build(name="y", description="other words")
    assert C.config_hash(a) == C.config_hash(b)
    assert C.config_hash(a) != C.config_hash(build(name="x", seed=1))


@pytest.mark.parametrize("data, match", [
    ({"trian": {}}, r"unknown key\(s\): trian \(did you mean train\?\)"),
    ({"train": {"stpes": 5}}, r"train.stpes \(did you mean train.steps\?\)"),
    ({"train": {"steps": "many"}}, r"train.steps must be an integer, got 'many'"),
    ({"train": {"steps": True}}, r"train.steps must be an integer, got True"),
    ({"train": {"steps": 0}}, r"train.steps must be >= 1, got 0"),
    ({"train": {"lr": -1}}, r"train.lr must be > 0, got -1"),
    ({"train": {"optimizer": "rmsprop"}}, r"train.optimizer must be 'sgd' or 'adam' or 'adamw'"),
    ({"train": {"milestones": [5, 2]}}, r"train.milestones must be increasing"),
    ({"train": 5}, r"train must be a table"),
    ({"prune": {"rate": 1.0}}, r"prune.rate must be in \(0, 1\), got 1.0"),
    ({"prune": {"rate": 0}}, r"prune.rate must be in \(0, 1\), got 0"),
    ({"prune": {"layer_rates": {"fc3.weight": 1.5}}}, r"prune.layer_rates.fc3.weight must be in \[0, 1\)"),
    ({"prune": {"scope": "rows"}}, r"prune.scope must be 'layerwise' or 'global'"),
    ({"prune": {"mode": "once"}}, r"prune.mode must be 'iterative' or 'oneshot'"),
    ({"prune": {"levels": -1}}, r"prune.levels must be >= 0"),
    ({"prune": {"rewind_step": 5000}}, r"prune.rewind_step \(5000\) must be below train.steps \(2000\)"),
    ({"arms": ["ticket", "lucky"]}, r"arms must be a non-empty list of"),
    ({"arms": ["random_prune"]}, r"arms must include 'ticket'"),
    ({"replicates": 0}, r"replicates must be >= 1"),
    ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        build(**data)


@pytest.mark.parametrize("task, match", [
    ({"plugin": "toy"}, r"missing key\(s\): task.name"),
    ({"name": 3, "plugin": "toy"}, r"task.name must be a string, got 3"),
    ("vision", r"task must be a table"),
])
def test_bad_task_table(task, match):
    with pytest.raises(ConfigError, match=match):
        C.from_dict({"task": task})


def test_missing_task():
    with pytest.raises(ConfigError, match="missing key: task"):
        C.from_dict({"seed": 1})


@pytest.mark.parametrize("text, value", [
    ("train.lr=0.1", 0.1), ("train.optimizer=sgd", "sgd"), ("name='a b'", "a b"),
    ("train.milestones=[1,2]", [1, 2]), ("train.nesterov=true", True), ("task.path=/data/x-y", "/data/x-y"),
])
def test_override_values_are_toml_or_bare_words(text, value):
    assert C.parse_override(text)[1] == value


@pytest.mark.parametrize("text, match", [
    ("train.lr", r"--set takes KEY=VALUE"),
    ("=3", r"--set takes KEY=VALUE"),
    ("train.lr=[0.1,", r"--set train.lr: '\[0.1,' is not a valid TOML value"),
    ("name=a b", r"--set name: 'a b' is not a valid TOML value"),
])
def test_bad_overrides(text, match):
    with pytest.raises(ConfigError, match=match):
        C.parse_override(text)


def test_override_through_a_value_is_an_error():
    with pytest.raises(ConfigError, match="seed is not a table"):
        C.apply_overrides({"seed": 1}, ["seed.x=2"])


def test_recipe_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="recipe not found"):
        C.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[task\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        C.load(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read recipe"):
        C.load(latin)


def test_plan_carries_train_config_and_seeds():
    cfg = build(seed=2, train={"warmup_steps": 5, "milestones": [50]})
    plan = cfg.plan(1, start_step=3)
    assert (plan.start_step, plan.data_seed, plan.warmup_steps, plan.milestones) == (3, 3, 5, (50,))


def test_density_after():
    p = C.PruneConfig(rate=0.2, layer_rates={"out": 0.1})
    assert p.density_after(2) == pytest.approx(0.64) and p.density_after(2, "out") == pytest.approx(0.81)
