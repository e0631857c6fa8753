"""Where rl tasks train: the algorithm's policy on plan.device, the CPU by default, RNGs isolated."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from rl_helpers import TINY, Recorder, plan

from ticketx_rl import agents
from ticketx_rl.plugin import RLPlugin
from ticketx_rl.task import RLTask


def make(name: str = "ppo", **over):
    return RLPlugin().make_task(name, {**TINY[name], **over}, data_root=None)


def test_rl_tasks_default_to_the_cpu() -> None:
    assert RLTask.default_device == "cpu"
    assert make().default_device == "cpu" and make("dqn").default_device == "cpu"


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_the_algorithm_gets_the_plan_device(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    task = make(name)
    seen: list[object] = []
    real = agents.ALGORITHM_CLASSES[name]

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        return real(*args, **kwargs)

    monkeypatch.setitem(agents.ALGORITHM_CLASSES, name, spy)
    algo = agents.build_algorithm(name, task.options, replace(plan(128), device="cpu"))
    try:
        assert seen == ["cpu"] and algo.device == torch.device("cpu")
    finally:
        algo.env.close()
    task.train(task.build_model(0), {}, replace(plan(128), device="cpu"), Recorder())
    assert seen == ["cpu", "cpu"]


def test_a_cuda_plan_reaches_stable_baselines3(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the device string is checked where it is handed over, not trained on."""
    task = make()
    seen: list[object] = []

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        raise Stop

    monkeypatch.setitem(agents.ALGORITHM_CLASSES, "ppo", spy)
    with pytest.raises(Stop):
        agents.build_algorithm("ppo", task.options, replace(plan(128), device="cuda:1"))
    assert seen == ["cuda:1"]


def test_isolated_rng_restores_every_state_on_the_cpu() -> None:
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    with agents.isolated_rng("cpu"):
        torch.manual_seed(123)
        torch.rand(5)
    assert torch.equal(torch.rand(2), expected)
