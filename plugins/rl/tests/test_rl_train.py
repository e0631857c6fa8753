"""Training inside stable-baselines3: masks held exactly, every step reported, rewinding exact."""

from __future__ import annotations

import tempfile

import pytest
import torch
from rl_helpers import TINY, Recorder, plan

from ticketx import masks as masklib
from ticketx.jobs import check_masked
from ticketx.task import TaskError
from ticketx_rl.plugin import RLPlugin


def make(name: str, **over):
    return RLPlugin().make_task(name, {**TINY[name], **over}, data_root=None)


def half_masks(task, model, seed: int = 0):
    """Random masks keeping half of every prunable weight."""
    weights = {n: p.detach() for n, p in task.prunable(model).items()}
    return masklib.random_like({n: (torch.rand_like(w) < 0.5).float() for n, w in weights.items()},
                               torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn"])
def test_masks_hold_through_training(name):
    task = make(name)
    model = task.build_model(0)
    masks = half_masks(task, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = Recorder()
    task.train(model, masks, plan(256), rec)
    check_masked(model, masks, name)  # the core's own check: every pruned entry exactly zero
    state = model.state_dict()
    for n, m in masks.items():
        assert bool((state[n][m == 0] == 0).all()) and bool((state[n][m == 1] != before[n][m == 1]).any())
        if name == "dqn":  # the target network follows q_net's masks, through soft (tau = 0.5) updates
            target = state[n.replace("q_net.", "q_net_target.", 1)]
            assert bool((target[m == 0] == 0).all()) and bool((target[m == 1] != 0).all())
    assert rec.steps == list(range(1, len(rec.steps) + 1)) and rec.steps[-1] >= 256
    assert rec.evals[-1][0] == rec.steps[-1]  # the last step is evaluated
    assert {"val_return", "test_return", "val_return_std", "test_return_std"} <= set(rec.evals[-1][1])


@pytest.mark.parametrize("name, env", [(n, e) for e in ("Acrobot-v1", "MountainCar-v0") for n in ("ppo", "a2c", "dqn")]
                         + [("ppo", "Pendulum-v1"), ("a2c", "Pendulum-v1")])
def test_other_environments_train_with_masks_held(name, env):
    task = make(name, env=env)
    task.prepare()
    model = task.build_model(0)
    masks = half_masks(task, model)
    rec = Recorder()
    task.train(model, masks, plan(128), rec)
    check_masked(model, masks, f"{name} on {env}")
    assert rec.evals and rec.evals[-1][1]["val_return"] < 0  # these environments pay -1 (or worse) per step


def test_eval_every_and_test_split_reporting():
    task = make("ppo")  # rollouts of 32 x 2 = 64 env steps
    rec = Recorder()
    task.train(task.build_model(0), {}, plan(320, eval_every=128), rec)
    assert [s for s, _ in rec.evals] == [128, 256, 320]
    best = max(m["val_return"] for _, m in rec.evals)
    first_best = next(m for _, m in rec.evals if m["val_return"] == best)
    assert "test_return" in first_best and "test_return" in rec.evals[-1][1]


def test_steps_round_up_to_whole_rollouts():
    task = make("ppo")
    rec = Recorder()
    task.train(task.build_model(0), {}, plan(100, eval_every=1000), rec)
    assert rec.steps[-1] == 128 and [s for s, _ in rec.evals] == [128]


@pytest.mark.parametrize("name, k", [("ppo", 128), ("a2c", 64), ("dqn", 96)])
def test_rewinding_captures_exactly_the_weights_of_a_run_that_stops_at_k(name, k):
    task = make(name)
    masks = half_masks(task, task.build_model(0))
    long = Recorder(capture_at=k)
    task.train(task.build_model(0), masks, plan(3 * k, eval_every=k), long)
    short_model = task.build_model(0)
    task.train(short_model, masks, plan(k, eval_every=k), Recorder())
    assert long.captured is not None
    short = short_model.state_dict()
    assert long.captured.keys() == short.keys()
    for key, value in short.items():
        assert torch.equal(long.captured[key], value), key
    # and training did move the weights between k and the end
    assert not torch.equal(long.captured["action_net.weight" if name != "dqn" else "q_net.q_net.4.weight"],
                           task.build_model(0).state_dict()["action_net.weight" if name != "dqn"
                                                            else "q_net.q_net.4.weight"])


def test_training_from_a_rewind_step_continues_the_count():
    task = make("ppo")
    rec = Recorder()
    task.train(task.build_model(0), {}, plan(256, start_step=128, eval_every=64), rec)
    assert rec.steps[0] == 129 and rec.steps[-1] == 256
    assert [s for s, _ in rec.evals] == [192, 256]


def test_same_plan_same_weights_other_data_seed_other_weights():
    task = make("ppo")
    a, b, c = task.build_model(0), task.build_model(0), task.build_model(0)
    task.train(a, {}, plan(128), Recorder())
    task.train(b, {}, plan(128), Recorder())
    task.train(c, {}, plan(128, data_seed=1), Recorder())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.state_dict()["action_net.weight"], c.state_dict()["action_net.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_optimizers_and_linear_schedule(optimizer):
    task = make("ppo", schedule="linear")
    model = task.build_model(0)
    masks = half_masks(task, model)
    task.train(model, masks, plan(128, optimizer=optimizer, lr=0.01), Recorder())
    check_masked(model, masks, optimizer)


def test_train_leaves_global_rngs_and_tmp_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where stable-baselines3 makes SB3-<time> folders
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    for name in ("ppo", "dqn"):
        task = make(name)
        task.train(task.build_model(0), {}, plan(128), Recorder())
    assert torch.equal(torch.rand(3), expected)
    assert not list(tmp_path.glob("SB3-*")), "stable-baselines3 left a log folder behind"


def test_diverging_training_is_a_task_error():
    task = make("ppo")
    model = task.build_model(0)
    with torch.no_grad():
        model.action_net.weight.fill_(float("nan"))
    with pytest.raises(TaskError, match=r"training diverged at env step 0: the policy's outputs became NaN "
                                        r"\(try a lower train.lr than 0.001\)"):
        task.train(model, {}, plan(64), Recorder())


def test_stop_training_from_the_observer_ends_at_that_rollout():
    """An early-bird level: the observer raises StopTraining at a step; training ends after that rollout's
    update, evaluated (test included) as at the last step, and the model holds the weights of that update."""
    from ticketx.task import StopTraining

    class StopAt(Recorder):
        def on_step(self, step, model):
            super().on_step(step, model)
            if step == 80:
                raise StopTraining

    task = RLPlugin().make_task("ppo", TINY["ppo"], data_root=None)
    model, rec = task.build_model(0), StopAt()
    task.train(model, {}, plan(256), rec)
    assert rec.steps[-1] == 80  # a rollout is 64 env steps: the second one's update is the last
    assert rec.evals[-1][0] == 128 and "test_return" in rec.evals[-1][1]
    whole = RLPlugin().make_task("ppo", TINY["ppo"], data_root=None)
    short = whole.build_model(0)
    whole.train(short, {}, plan(128), Recorder())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), short.state_dict().values()))
