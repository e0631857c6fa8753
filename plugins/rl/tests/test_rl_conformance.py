"""The rl plugin passes the conformance kit (ticketx.testing) with tiny agents on CartPole."""

from __future__ import annotations

from pathlib import Path

import pytest
from rl_helpers import TINY

from ticketx.testing import check_task
from ticketx_rl.plugin import RLPlugin


@pytest.mark.parametrize("algorithm, plan", [
    ("ppo", {}),  # one rollout of 32 x 2 env steps: the kit's 4 steps round up to it
    ("a2c", {}),
    ("dqn", {"steps": 64}),  # dqn refuses a plan ending before learning_starts (32): the kit takes overrides
])
def test_cartpole_agents_pass_the_conformance_kit(algorithm: str, plan: dict, tmp_path: Path) -> None:
    task = RLPlugin().make_task(algorithm, TINY[algorithm], data_root=None)
    check_task(task, plugin="rl", name=algorithm, plan=plan, tmp_dir=tmp_path)
