"""The `rl` entry point: stable-baselines3 agents on gymnasium environments for ticketx.

Light on purpose: listing the tasks, their options and refusing an unknown or ill-typed option import
neither stable-baselines3 nor gymnasium; `make_task` imports them (through the task module) once the
options are checked, to read the algorithm's defaults and the environment's spaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketx.task import TaskError

from .options import ALGORITHMS, COMMON, ONLY, RLOptions, suggest

if TYPE_CHECKING:
    from .task import RLTask

TASKS = {
    "ppo": "PPO (actor-critic MLP) on a gymnasium environment (task.env; discrete or continuous actions)",
    "a2c": "A2C (actor-critic MLP, the same network as ppo) on a gymnasium environment (task.env)",
    "dqn": "DQN (Q-network MLP) on a gymnasium environment with discrete actions (task.env)",
}


class RLPlugin:
    """Builds RL tasks: the task name is the algorithm, `task.env` the environment."""

    def tasks(self) -> dict[str, str]:
        """Task name -> one-line description."""
        return dict(TASKS)

    def task_options(self, name: str) -> tuple[str, ...]:
        """The `[task]` keys (besides plugin and name) that task `name` takes: what `ticketx transfer
        --to rl/<name>` keeps of a source ticket's options (ppo's clip_range and n_epochs do not go to a2c)."""
        _check_name(name)
        return COMMON + ONLY[name]

    def make_task(self, name: str, options: Mapping[str, Any], *, data_root: Path | None) -> RLTask:
        """The named task with its options checked against the algorithm and the environment's id;
        `data_root` is unused (environments are simulated)."""
        _check_name(name)
        checked = RLOptions.from_mapping(options, algorithm=name)  # reads stable-baselines3's defaults
        from .task import RLTask  # stable-baselines3 and gymnasium: only once the options are good

        return RLTask(name, checked)


def _check_name(name: str) -> None:
    if name not in ALGORITHMS:
        raise TaskError(f"task.name must be one of the rl tasks {', '.join(ALGORITHMS)}, got {name!r}"
                        + suggest(name, ALGORITHMS))
