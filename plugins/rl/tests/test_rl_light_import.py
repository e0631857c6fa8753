"""Listing the rl tasks and their options and refusing an unknown or ill-typed option import neither
stable-baselines3 nor gymnasium, so that `ticketx tasks` and a recipe's errors answer without them. Each
check runs in a fresh interpreter: this test session has imported both already."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("stable_baselines3", "gymnasium", "ticketx_rl.task", "ticketx_rl.agents", "ticketx_rl.envs")

SCRIPT = """
import json, sys
from ticketx.task import TaskError
from ticketx_rl.plugin import RLPlugin

def loaded():
    return sorted(m for m in sys.modules if m in HEAVY)

plugin = RLPlugin()
assert "ppo" in plugin.tasks() and "n_steps" in plugin.task_options("ppo")
stages = {"tasks": loaded()}
for name, options in (("ppo", {"bogus": 1}), ("ppo", {"n_envs": 0}), ("dqn", {"net_arch": "64"}),
                      ("a2c", {"schedule": "cosine"})):
    try:
        plugin.make_task(name, options, data_root=None)
    except TaskError:
        pass
    else:
        raise SystemExit(f"{name} options {options} were not refused")
stages["refused"] = loaded()
plugin.make_task("ppo", {}, data_root=None)  # reads stable-baselines3's defaults and CartPole's spaces
stages["built"] = loaded()
print(json.dumps(stages))
"""


def test_tasks_and_refused_options_import_no_sb3_nor_gymnasium() -> None:
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{SCRIPT}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    stages = json.loads(done.stdout.splitlines()[-1])
    assert stages["tasks"] == [], "importing the plugin and listing its tasks imported these"
    assert stages["refused"] == [], "refusing an unknown option or a bad value imported these"
    assert {"stable_baselines3", "gymnasium"} <= set(stages["built"])  # the check sees imports where there are some
