"""Options and bad input: every error names the field, what it got and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import gymnasium as gym
import pytest
import torch
from click.testing import CliRunner
from rl_helpers import TINY, plan

from ticketx import plugins
from ticketx.cli import main
from ticketx.task import TaskError
from ticketx_rl import agents
from ticketx_rl.options import RLOptions, sb3_defaults
from ticketx_rl.plugin import RLPlugin


def make(name: str = "ppo", **options):
    return RLPlugin().make_task(name, options, data_root=None)


def test_plugin_is_discovered_through_its_entry_point():
    available = plugins.discover({})
    assert "rl" in available
    task = plugins.make_task("rl", "ppo", {"env": "Acrobot-v1"}, available=available, data_root=None)
    assert task.spec()["task"] == "ppo" and task.spec()["options"]["env"] == "Acrobot-v1"
    assert set(plugins.load("rl", available).tasks()) == {"ppo", "a2c", "dqn"}


def test_unset_hyperparameters_take_stable_baselines3_defaults_and_are_recorded():
    ppo = make("ppo").spec()["options"]
    assert ppo["n_steps"] == sb3_defaults("ppo")["n_steps"] == 2048
    assert ppo["activation"] == "tanh" and ppo["ortho_init"] is True and ppo["net_arch"] == [64, 64]
    assert "buffer_size" not in ppo  # dqn's options are not part of a ppo task
    a2c = make("a2c").spec()["options"]
    assert a2c["n_steps"] == 5 and "clip_range" not in a2c
    dqn = make("dqn", train_freq=256).spec()["options"]
    assert dqn["activation"] == "relu" and dqn["train_freq"] == 256 and "n_steps" not in dqn
    assert make("ppo", gamma=1).options.gamma == 1.0 and isinstance(make("ppo", gamma=1).options.gamma, float)


@pytest.mark.parametrize("name, options, match", [
    ("ppo", {"envv": "CartPole-v1"}, r"unknown option\(s\) for rl task 'ppo': task.envv \(did you mean 'env'\?\)"),
    ("ppo", {"net_arch": [64, 0]}, r"task.net_arch must be a list of positive integers .* got \[64, 0\]"),
    ("ppo", {"net_arch": 64}, r"task.net_arch must be a list of positive integers"),
    ("ppo", {"activation": "sigmoid"}, r"task.activation must be one of tanh, relu, elu, leaky_relu, got 'sigmoid'"),
    ("ppo", {"schedule": "lin"}, r"task.schedule must be one of constant, linear, got 'lin' \(did you mean 'linear'\?\)"),
    ("ppo", {"n_envs": 0}, r"task.n_envs must be in \[1, 1024\], got 0"),
    ("ppo", {"n_envs": True}, r"task.n_envs must be an integer, got True \(bool\)"),
    ("ppo", {"n_steps": 2.5}, r"task.n_steps must be an integer, got 2.5 \(float\)"),
    ("ppo", {"gamma": 0}, r"task.gamma must be in \(0, 1\], got 0.0"),
    ("ppo", {"gamma": "0.99"}, r"task.gamma must be a number, got '0.99' \(str\)"),
    ("ppo", {"clip_range": -0.1}, r"task.clip_range must be in \(0, inf\), got -0.1"),
    ("ppo", {"ortho_init": 1}, r"task.ortho_init must be true or false, got 1 \(int\)"),
    ("ppo", {"n_steps": 1, "n_envs": 1}, r"n_steps x task.n_envs must be at least 2 for ppo"),
    ("dqn", {"clip_range": 0.2}, r"task.clip_range applies to ppo only, got 0.2 for dqn"),
    ("a2c", {"n_epochs": 4}, r"task.n_epochs applies to ppo only, got 4 for a2c"),
    ("ppo", {"buffer_size": 10}, r"task.buffer_size applies to dqn only, got 10 for ppo"),
    ("dqn", {"gae_lambda": 0.9}, r"task.gae_lambda applies to ppo and a2c only"),
    ("dqn", {"exploration_final_eps": 1.5}, r"task.exploration_final_eps must be in \[0, 1\], got 1.5"),
    ("ppo", {"eval_episodes": 0}, r"task.eval_episodes must be in \[1, inf\), got 0"),
    ("ppo", {"val_seed": 5, "test_seed": 10, "eval_episodes": 10},
     r"task.val_seed \(5\) and task.test_seed \(10\) give overlapping episode seeds"),
    ("ppo", {"env": 3}, r"task.env must be a string \(a gymnasium environment id\), got 3 \(int\)"),
    ("ppo", {"env": "CartPole-v2"},
     r"task.env 'CartPole-v2' is not a registered gymnasium environment; close matches: CartPole-v0, CartPole-v1"),
    ("ppo", {"env": "Cartpol"}, r"not a registered gymnasium environment; close matches: .*CartPole-v1"),
    ("dqn", {"env": "Pendulum-v1"},
     r"dqn needs a Discrete action space; task.env 'Pendulum-v1' has Box\(-2.0, 2.0, \(1,\), float32\) \(use ppo or a2c\)"),
    ("dqn", {"env": "MountainCarContinuous-v0"}, r"dqn needs a Discrete action space; .* \(use ppo or a2c\)"),
    ("sac", {}, r"task.name must be one of the rl tasks ppo, a2c, dqn, got 'sac'"),
    ("dqm", {}, r"got 'dqm' \(did you mean 'dqn'\?\)"),
])
def test_bad_options_are_task_errors(name, options, match):
    with pytest.raises(TaskError, match=match):
        task = make(name, **options)
        task.prepare()


def test_observation_spaces_the_mlp_cannot_take():
    with pytest.raises(TaskError, match=r"'CarRacing-v3' (needs (Box2D|pygame)|has observations Box.*flat Box)"):
        make("ppo", env="CarRacing-v3").prepare()


def test_missing_simulator_names_the_package(monkeypatch):
    def missing(*args, **kwargs):
        raise gym.error.DependencyNotInstalled("Box2D is not installed, run `pip install \"gymnasium[box2d]\"`")

    task = make("ppo", env="LunarLander-v3")
    monkeypatch.setattr(gym, "make", missing)
    # a model of the right shape is still built (recipes checked, tickets shown) ...
    model = task.build_model(0)
    assert model.state_dict()["mlp_extractor.policy_net.0.weight"].shape == (64, 8)
    assert model.state_dict()["action_net.weight"].shape == (4, 64)
    # ... but preparing to train fails before any run is recorded, naming the package
    with pytest.raises(TaskError, match=r"task.env 'LunarLander-v3' needs Box2D, which is not installed "
                                        r"\(ticketx-rl does not depend on it; pip install \"gymnasium\[box2d\]\"\)"):
        task.prepare()


def test_lunar_lander_known_spaces_match_the_real_environment():
    pytest.importorskip("Box2D")
    env = gym.make("LunarLander-v3")
    task = make("ppo", env="LunarLander-v3")
    task.prepare()
    assert task.spaces().observation.shape == env.observation_space.shape == (8,)
    assert task.spaces().action.n == env.action_space.n == 4


def test_plan_errors_name_the_train_key():
    task = make("ppo", **TINY["ppo"])
    model = task.build_model(0)
    with pytest.raises(TaskError, match=r"train.batch_size is ppo's minibatch and must be in \[2, n_steps x "
                                        r"n_envs = 32 x 2 = 64\], got 65"):
        task.train(model, {}, plan(batch_size=65), None)
    with pytest.raises(TaskError, match=r"train.steps \(64\) must exceed the rewind step \(64\)"):
        task.train(model, {}, plan(steps=64, start_step=64), None)
    with pytest.raises(TaskError, match=r"train.optimizer must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"):
        task.train(model, {}, plan(optimizer="rmsprop"), None)
    with pytest.raises(TaskError, match="masks name parameters the policy does not have: fc.weight"):
        task.train(model, {"fc.weight": torch.ones(2, 2)}, plan(), None)


def test_options_are_frozen():
    o = RLOptions()
    with pytest.raises(AttributeError):
        o.env = "Acrobot-v1"  # type: ignore[misc]


def test_unfit_action_space_and_unknown_env_fail_when_the_task_is_made():
    # no prepare(), no model: the options alone are refused, as an unknown key would be
    with pytest.raises(TaskError, match=r"dqn needs a Discrete action space; task.env 'Pendulum-v1' has "
                                        r"Box\(-2.0, 2.0, \(1,\), float32\) \(use ppo or a2c\)"):
        make("dqn", env="Pendulum-v1")
    with pytest.raises(TaskError, match=r"task.env 'Acrobot-v2' is not a registered gymnasium environment; "
                                        r"close matches: Acrobot-v1"):
        make("a2c", env="Acrobot-v2")


@pytest.mark.parametrize("name, over, bad, match", [
    ("ppo", {}, {"batch_size": 65}, r"train.batch_size is ppo's minibatch and must be in \[2, n_steps x n_envs = "
                                    r"32 x 2 = 64\], got 65: lower train.batch_size or raise task.n_steps"),
    ("ppo", {}, {"batch_size": 1}, r"must be in \[2, n_steps x n_envs = 32 x 2 = 64\], got 1"),
    ("ppo", {}, {"clip_grad_norm": 1.0}, r"train.clip_grad_norm \(1\) is not used by rl tasks: stable-baselines3 "
                                         r"clips the gradient norm itself, at task.max_grad_norm \(0.5 here\)"),
    ("a2c", {}, {"optimizer": "sgd", "nesterov": True}, r"train.nesterov needs train.momentum > 0 \(torch's SGD\), "
                                                        r"got momentum 0"),
    ("dqn", {"learning_starts": 200}, {"steps": 200},
     r"dqn would make no update: it fills its replay buffer for task.learning_starts = 200 env steps from step 0"),
    ("dqn", {}, {"steps": 128, "start_step": 96},
     r"task.learning_starts = 32 env steps from step 96 \(the rewind step\) before the first, and trains to "
     r"train.steps = 128"),
    ("a2c", {}, {"steps": 64, "start_step": 64}, r"train.steps \(64\) must exceed the rewind step \(64\)"),
    ("dqn", {}, {"optimizer": "rmsprop"}, r"train.optimizer must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"),
])
def test_plans_the_algorithm_cannot_train_are_refused_before_training(name, over, bad, match, monkeypatch):
    task = make(name, **{**TINY[name], **over})
    p = replace(plan(), **bad)
    with pytest.raises(TaskError, match=match):
        task.check_plan(p)  # what the core can call before it records any run
    # train refuses the same plan before stable-baselines3 makes an environment
    monkeypatch.setattr(agents, "make_vec_env", lambda *a, **k: pytest.fail("an environment was made"))
    with pytest.raises(TaskError, match=match):
        task.train(task.build_model(0), {}, p, None)


def test_plans_that_fit_pass_the_check():
    make("a2c", **TINY["a2c"]).check_plan(replace(plan(), batch_size=10_000))  # a2c has no minibatch
    make("ppo", **TINY["ppo"]).check_plan(replace(plan(), batch_size=64, optimizer="sgd", momentum=0.9,
                                                  nesterov=True))
    make("dqn", **TINY["dqn"]).check_plan(replace(plan(), steps=128, start_step=64))


# the core calls the optional Task.check_plan for every plan of the job before it opens any MLflow run
def test_bad_plan_fails_before_any_mlflow_run(tmp_path):
    from ticketx import config as C
    from ticketx.findjob import run_find
    from ticketx.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    cfg = C.from_dict({"name": "bad-plan", "task": {"plugin": "rl", "name": "ppo", **TINY["ppo"]},
                       "train": {"steps": 128, "batch_size": 65, "eval_every": 64}, "prune": {"levels": 1}})
    with pytest.raises(TaskError, match=r"train.batch_size is ppo's minibatch"):
        run_find(cfg, make("ppo", **TINY["ppo"]), tracker, root=tmp_path, experiment="rl-bad-plan")
    assert tracker.client.get_experiment_by_name("rl-bad-plan") is None


@pytest.mark.parametrize("arm, missing", [
    ("snip", r"scoring data \(a class-balanced sample of training examples and a loss\) \(Task.scoring_batches\)"),
    ("grasp:inverted", r"scoring data .*\(Task.scoring_batches\)"),
    ("synflow", r"input shape for SynFlow's all-ones input \(Task.scoring_input_shape\)"),
])
def test_criteria_needing_data_or_an_input_are_refused_before_any_mlflow_run(tmp_path, arm, missing):
    """RL has no fixed dataset (and its policies no input SynFlow could feed): the arms that need one are
    refused in one line naming the task and what it lacks; the criteria of weights alone run."""
    from ticketx import config as C
    from ticketx.findjob import run_find
    from ticketx.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    cfg = C.from_dict({"name": "rl-snip", "task": {"plugin": "rl", "name": "ppo", **TINY["ppo"]},
                       "arms": ["ticket", "random_erk", arm], "train": {"steps": 128, "eval_every": 64},
                       "prune": {"levels": 1}})
    with pytest.raises(TaskError, match=rf"^rl/ppo offers no {missing}, which the arm\(s\) {arm} need"):
        run_find(cfg, make("ppo", **TINY["ppo"]), tracker, root=tmp_path, experiment="rl-snip")
    assert tracker.client.get_experiment_by_name("rl-snip") is None


# ------------------------------------------------------------------ the command line: clear error, exit 1

BAD_RECIPE = """
name = "rl-bad"
[task]
plugin = "rl"
name = "{name}"
env = "{env}"
[train]
steps = 128
[prune]
levels = 1
"""


@pytest.mark.parametrize("name, env, match", [
    ("ppo", "CartPole-v9", "task.env 'CartPole-v9' is not a registered gymnasium environment; close matches: "
                           "CartPole-v0, CartPole-v1"),
    ("dqn", "Pendulum-v1", "dqn needs a Discrete action space; task.env 'Pendulum-v1' has Box(-2.0, 2.0, (1,), "
                           "float32) (use ppo or a2c)"),
])
def test_cli_bad_environment_clear_error_nonzero_exit(tmp_path, monkeypatch, name, env, match):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    (tmp_path / "bad.toml").write_text(BAD_RECIPE.format(name=name, env=env))
    r = CliRunner().invoke(main, ["find", "bad.toml", "--workers", "1"])
    assert r.exit_code == 1 and match in r.output and "Traceback" not in r.output
    assert not (tmp_path / "ticketx-runs").exists()  # refused with the options: no job folder, no run


def test_cli_bad_environment_as_a_real_process(tmp_path):
    (tmp_path / "bad.toml").write_text(BAD_RECIPE.format(name="a2c", env="Acrobot-v0"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    done = subprocess.run([sys.executable, "-m", "ticketx", "find", "bad.toml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Error: task.env 'Acrobot-v0' is not a registered gymnasium environment; close matches: Acrobot-v1" \
        in done.stderr
