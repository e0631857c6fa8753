"""Every shipped rl recipe's training plan is one its algorithm can train (checked without training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketx import config as C
from ticketx_rl.plugin import RLPlugin

ROOT = Path(__file__).parents[3]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.toml")
                 if C.read_recipe(p).get("task", {}).get("plugin") == "rl")


def test_rl_recipes_are_found():
    names = {p.name for p in RECIPES}
    assert {"quickstart_rl.toml", "ppo_cartpole.toml", "transfer_cartpole_to_acrobot.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_rl_recipe_plans_pass_the_task_check(path: Path):
    transfer = "transfer" in C.read_recipe(path)
    cfg = C.load(path, cls=C.TransferConfig if transfer else C.FindConfig)
    task = RLPlugin().make_task(cfg.task.name, cfg.task.options, data_root=None)
    plans = ([cfg.plan(0, lr=lr) for lr in cfg.lrs] if transfer
             else [cfg.plan(0), cfg.plan(0, start_step=cfg.prune.rewind_step)])
    for plan in plans:
        task.check_plan(plan)
