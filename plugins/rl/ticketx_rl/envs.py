"""gymnasium environments: checking an id and its spaces against an algorithm, and seeded evaluation.

Evaluation runs the deterministic policy on one environment per episode, episode i reset with seed
`base + i`, and steps the unfinished ones together so that the policy sees a batch per step. Same policy
and same seeds give the same returns.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ticketx.task import TaskError

if TYPE_CHECKING:
    from stable_baselines3.common.policies import BasePolicy

# Spaces of environments whose simulator is an optional package (box2d), so that a model of the right
# shape can be built (recipes checked, tickets shown) where the package is missing. Training and
# evaluation make the real environment and fail there, naming the package.
KNOWN_SPACES: dict[str, tuple[spaces.Space, spaces.Space]] = {
    "LunarLander-v3": (spaces.Box(-np.inf, np.inf, (8,), np.float32), spaces.Discrete(4)),
    "LunarLanderContinuous-v3": (spaces.Box(-np.inf, np.inf, (8,), np.float32),
                                 spaces.Box(-1.0, 1.0, (2,), np.float32)),
}
# the action spaces each algorithm's MlpPolicy handles in stable-baselines3
ACTION_SPACES: dict[str, tuple[type[spaces.Space], ...]] = {
    "ppo": (spaces.Discrete, spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary),
    "a2c": (spaces.Discrete, spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary),
    "dqn": (spaces.Discrete,),
}


@dataclass(frozen=True)
class EnvSpaces:
    """What a network needs to know of an environment."""

    observation: spaces.Space
    action: spaces.Space


def check_id(env_id: str) -> None:
    """Raise TaskError for an id gymnasium does not register, listing the close matches."""
    if env_id in gym.registry:
        return
    ids = sorted(gym.registry)
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    # a version typo (CartPole-v2) is close to every version of the same name: offer those first
    stem = env_id.rsplit("-v", 1)[0].lower()
    close = [i for i in ids if i.rsplit("-v", 1)[0].lower() == stem] + [c for c in close if c.rsplit("-v", 1)[0].lower() != stem]
    hint = f"; close matches: {', '.join(close[:5])}" if close else f"; registered ids include: {', '.join(ids[:12])}, ..."
    raise TaskError(f"task.env {env_id!r} is not a registered gymnasium environment{hint}")


def make(env_id: str) -> gym.Env:
    """`gym.make(env_id)`; an environment whose simulator is missing is a TaskError naming the package."""
    check_id(env_id)
    try:
        return gym.make(env_id)
    except gym.error.DependencyNotInstalled as e:
        # gymnasium says e.g. "Box2D is not installed, ..." or "pygame is not installed, ..."
        named = re.search(r"([\w.-]+) is not installed", str(e))
        package = named.group(1) if named else "a package"
        extra = re.search(r"gymnasium\[(\w+)\]", str(e))
        hint = f'pip install "gymnasium[{extra.group(1)}]"' if extra else "see below"
        raise TaskError(f"task.env {env_id!r} needs {package}, which is not installed (ticketx-rl does not "
                        f"depend on it; {hint}): {e}") from None


def env_spaces(env_id: str, *, real: bool = False) -> EnvSpaces:
    """Observation and action spaces of `env_id` (from KNOWN_SPACES where the simulator is missing,
    unless `real`)."""
    try:
        env = make(env_id)
    except TaskError:
        if real or env_id not in KNOWN_SPACES:
            raise
        return EnvSpaces(*KNOWN_SPACES[env_id])
    try:
        return EnvSpaces(env.observation_space, env.action_space)
    finally:
        env.close()


def check_spaces(env_id: str, algorithm: str, s: EnvSpaces) -> None:
    """Raise TaskError where `algorithm`'s MLP policy cannot take `env_id`'s spaces, saying what can."""
    if not isinstance(s.action, ACTION_SPACES[algorithm]):
        fits = [a for a, kinds in ACTION_SPACES.items() if isinstance(s.action, kinds)]
        raise TaskError(
            f"{algorithm} needs a {' or '.join(k.__name__ for k in ACTION_SPACES[algorithm])} action space; "
            f"task.env {env_id!r} has {s.action}" + (f" (use {' or '.join(fits)})" if fits else "")
        )
    obs = s.observation
    if not (isinstance(obs, spaces.Discrete) or (isinstance(obs, spaces.Box) and len(obs.shape) == 1)):
        raise TaskError(f"task.env {env_id!r} has observations {obs}; the MLP policies of ticketx-rl take a "
                        "flat Box (a vector) or a Discrete observation space")


class Evaluator:
    """The deterministic policy's mean and std return over episodes with fixed seeds."""

    def __init__(self, env_id: str, seeds: Sequence[int]) -> None:
        self.seeds = list(seeds)
        self.envs = [make(env_id) for _ in self.seeds]  # made once, reset with their seed every time

    def returns(self, policy: BasePolicy) -> np.ndarray:
        """Undiscounted return of one episode per seed, shape (episodes,)."""
        n = len(self.seeds)
        obs = [env.reset(seed=s)[0] for env, s in zip(self.envs, self.seeds)]
        totals = np.zeros(n)
        active = list(range(n))
        while active:
            batch = np.stack([np.asarray(obs[i]) for i in active])  # (active, *obs_shape)
            actions, _ = policy.predict(batch, deterministic=True)  # (active,) or (active, *action_shape)
            still = []
            for j, i in enumerate(active):
                obs[i], reward, terminated, truncated, _ = self.envs[i].step(actions[j])
                totals[i] += float(reward)
                if not (terminated or truncated):
                    still.append(i)
            active = still
        return totals

    def close(self) -> None:
        for env in self.envs:
            env.close()
