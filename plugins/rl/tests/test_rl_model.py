"""The networks a ticket covers: built from the seed alone, what is pruned, and the head rule."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.dqn.policies import DQNPolicy

from ticketx_rl.plugin import RLPlugin

PPO_PRUNABLE = ["mlp_extractor.policy_net.0.weight", "mlp_extractor.policy_net.2.weight",
                "mlp_extractor.value_net.0.weight", "mlp_extractor.value_net.2.weight",
                "action_net.weight", "value_net.weight"]


def make(name: str = "ppo", **options):
    return RLPlugin().make_task(name, options, data_root=None)


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn"])
def test_build_model_is_a_function_of_the_seed(name):
    task = make(name, net_arch=[32, 32])
    a, b, c = task.build_model(3).state_dict(), task.build_model(3).state_dict(), task.build_model(4).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    # the same seed gives the same network in another task object too
    other = make(name, net_arch=[32, 32]).build_model(3).state_dict()
    assert all(torch.equal(a[k], other[k]) for k in a)


def test_build_model_leaves_global_rngs_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make("ppo").build_model(0)
    assert torch.equal(torch.rand(3), expected)


def test_policy_modules_and_prunable_weights():
    ppo = make("ppo", net_arch=[32, 32])
    model = ppo.build_model(0)
    assert isinstance(model, ActorCriticPolicy)
    assert list(ppo.prunable(model)) == PPO_PRUNABLE  # never biases, never log_std
    dqn = make("dqn", net_arch=[32, 32])
    qmodel = dqn.build_model(0)
    assert isinstance(qmodel, DQNPolicy)
    assert list(dqn.prunable(qmodel)) == ["q_net.q_net.0.weight", "q_net.q_net.2.weight", "q_net.q_net.4.weight"]
    state = qmodel.state_dict()  # the target starts as a copy of q_net
    assert all(torch.equal(state[k], state[k.replace("q_net.", "q_net_target.", 1)])
               for k in state if k.startswith("q_net.q_net"))


def test_a2c_and_ppo_share_parameter_names_and_shapes():
    a2c, ppo = make("a2c", net_arch=[32, 32]).build_model(0), make("ppo", net_arch=[32, 32]).build_model(0)
    assert {k: v.shape for k, v in a2c.state_dict().items()} == {k: v.shape for k, v in ppo.state_dict().items()}
    # and the same initialisation from the same seed: only the training algorithm differs
    assert all(torch.equal(v, ppo.state_dict()[k]) for k, v in a2c.state_dict().items())


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_head_is_exactly_what_changes_shape_between_cartpole_and_acrobot(name):
    cart, acro = make(name, env="CartPole-v1"), make(name, env="Acrobot-v1")  # obs 4 -> 6, actions 2 -> 3
    m_cart, m_acro = cart.build_model(0), acro.build_model(0)
    s_cart, s_acro = m_cart.state_dict(), m_acro.state_dict()
    differ = {k for k in s_cart if s_cart[k].shape != s_acro[k].shape}
    head = acro.head(m_acro)
    assert head == cart.head(m_cart)
    assert differ <= head  # every tensor of another shape is re-initialised on transfer
    hidden = {k for k in s_cart if k not in head}
    assert hidden and all(s_cart[k].shape == s_acro[k].shape for k in hidden)
    if name == "ppo":
        assert head == {f"{p}.{w}" for p in ("mlp_extractor.policy_net.0", "mlp_extractor.value_net.0",
                                             "action_net", "value_net") for w in ("weight", "bias")}
        assert s_acro["mlp_extractor.policy_net.0.weight"].shape == (64, 6)
        assert s_acro["action_net.weight"].shape == (3, 64)
    else:
        assert head == {f"{net}.q_net.{i}.{w}" for net in ("q_net", "q_net_target") for i in (0, 4)
                        for w in ("weight", "bias")}
        assert s_acro["q_net.q_net.4.weight"].shape == (3, 64)


def test_continuous_actions_put_log_std_in_the_head():
    task = make("ppo", env="Pendulum-v1", net_arch=[8])
    model = task.build_model(0)
    assert "log_std" in task.head(model) and "log_std" not in task.prunable(model)
    assert model.state_dict()["action_net.weight"].shape == (1, 8)


def test_empty_net_arch_is_a_linear_policy():
    task = make("ppo", net_arch=[])
    model = task.build_model(0)
    assert list(task.prunable(model)) == ["action_net.weight", "value_net.weight"]
    assert task.head(model) == {"action_net.weight", "action_net.bias", "value_net.weight", "value_net.bias"}


def test_evaluation_is_seeded_and_separate_from_global_rngs():
    task = make("ppo", net_arch=[16], eval_episodes=3)
    model = task.build_model(0)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = task.evaluate(model)
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    assert task.evaluate(model) == first  # same seeds, same returns, whatever the global RNGs
    assert set(first) == {"val_return", "val_return_std", "test_return", "test_return_std"}
    other = make("ppo", net_arch=[16], eval_episodes=3, val_seed=500, test_seed=600).evaluate(model)
    assert other != first  # other seeds, other episodes
