"""Helpers shared by the rl plugin's tests (a module name no other test folder uses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ticketx.task import Plan

# tiny agents on CartPole-v1: a few hundred env steps train in well under a second
TINY: dict[str, dict[str, Any]] = {
    "ppo": {"env": "CartPole-v1", "net_arch": [16, 16], "n_envs": 2, "n_steps": 32, "n_epochs": 2,
            "eval_episodes": 2},
    "a2c": {"env": "CartPole-v1", "net_arch": [16, 16], "n_envs": 2, "n_steps": 8, "eval_episodes": 2},
    # tau < 1: the target network is a soft (polyak) mixture, which must stay masked too
    "dqn": {"env": "CartPole-v1", "net_arch": [16, 16], "buffer_size": 1000, "learning_starts": 32,
            "train_freq": 16, "gradient_steps": 4, "target_update_interval": 16, "tau": 0.5,
            "eval_episodes": 2},
}


def plan(steps: int = 128, *, start_step: int = 0, eval_every: int = 64, batch_size: int = 32,
         optimizer: str = "adam", lr: float = 1e-3, data_seed: int = 0) -> Plan:
    return Plan(steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr, eval_every=eval_every,
                start_step=start_step, data_seed=data_seed)


class Recorder:
    """An Observer that records what training reports and captures the weights at one step."""

    def __init__(self, capture_at: int | None = None) -> None:
        self.steps: list[int] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.capture_at = capture_at
        self.captured: dict[str, torch.Tensor] | None = None

    def on_step(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)
        if step == self.capture_at:
            self.captured = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.evals.append((step, dict(metrics)))
