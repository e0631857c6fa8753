"""Options of an RL task: the recipe's `[task]` table as a frozen dataclass, checked when built.

An algorithm hyperparameter left out (None) takes stable-baselines3's own default for the task's algorithm,
read from the algorithm's signature when the options are resolved, so the value used is the value recorded
in the ticket's task spec even if a later stable-baselines3 changes its defaults.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ticketx.task import TaskError

ALGORITHMS = ("ppo", "a2c", "dqn")
ACTOR_CRITIC = ("ppo", "a2c")  # both build stable-baselines3's ActorCriticPolicy: tickets move between them
ACTIVATIONS = ("tanh", "relu", "elu", "leaky_relu")
SCHEDULES = ("constant", "linear")

# which options each algorithm takes, beyond those every task takes
COMMON = ("env", "net_arch", "activation", "n_envs", "gamma", "max_grad_norm", "schedule",
          "eval_episodes", "val_seed", "test_seed")
ONLY = {
    "ppo": ("ortho_init", "n_steps", "gae_lambda", "ent_coef", "vf_coef", "normalize_advantage",
            "clip_range", "n_epochs"),
    "a2c": ("ortho_init", "n_steps", "gae_lambda", "ent_coef", "vf_coef", "normalize_advantage"),
    "dqn": ("buffer_size", "learning_starts", "train_freq", "gradient_steps", "target_update_interval",
            "tau", "exploration_fraction", "exploration_initial_eps", "exploration_final_eps"),
}
# options passed to the stable-baselines3 algorithm under the same name (None: its default)
SB3_KWARGS = ("gamma", "max_grad_norm", "n_steps", "gae_lambda", "ent_coef", "vf_coef", "normalize_advantage",
              "clip_range", "n_epochs", "buffer_size", "learning_starts", "train_freq", "gradient_steps",
              "target_update_interval", "tau", "exploration_fraction", "exploration_initial_eps",
              "exploration_final_eps")

_INTS = ("n_envs", "n_steps", "n_epochs", "buffer_size", "learning_starts", "train_freq", "gradient_steps",
         "target_update_interval", "eval_episodes", "val_seed", "test_seed")
_FLOATS = ("gamma", "max_grad_norm", "gae_lambda", "ent_coef", "vf_coef", "clip_range", "tau",
           "exploration_fraction", "exploration_initial_eps", "exploration_final_eps")
_BOOLS = ("ortho_init", "normalize_advantage")
# (lowest, lowest included, highest, highest included) for numbers that have a range
_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "n_envs": (1, True, 1024, True), "n_steps": (1, True, float("inf"), False),
    "n_epochs": (1, True, float("inf"), False), "buffer_size": (1, True, float("inf"), False),
    "learning_starts": (0, True, float("inf"), False), "train_freq": (1, True, float("inf"), False),
    "gradient_steps": (-1, True, float("inf"), False),
    "target_update_interval": (1, True, float("inf"), False),
    "eval_episodes": (1, True, float("inf"), False), "val_seed": (0, True, 2**31 - 1, True),
    "test_seed": (0, True, 2**31 - 1, True), "gamma": (0.0, False, 1.0, True),
    "max_grad_norm": (0.0, False, float("inf"), False), "gae_lambda": (0.0, True, 1.0, True),
    "ent_coef": (0.0, True, float("inf"), False), "vf_coef": (0.0, True, float("inf"), False),
    "clip_range": (0.0, False, float("inf"), False), "tau": (0.0, False, 1.0, True),
    "exploration_fraction": (0.0, True, 1.0, True), "exploration_initial_eps": (0.0, True, 1.0, True),
    "exploration_final_eps": (0.0, True, 1.0, True),
}


@dataclass(frozen=True, kw_only=True)
class RLOptions:
    """What an RL task trains on and with; every field is settable from a recipe as `task.<field>`."""

    env: str = "CartPole-v1"  # a gymnasium id (CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1, ...)
    net_arch: tuple[int, ...] = (64, 64)  # hidden sizes of each network (actor and critic, or Q)
    activation: str | None = None  # None: tanh for ppo / a2c, relu for dqn (stable-baselines3's defaults)
    n_envs: int = 1  # environments stepped side by side while training
    gamma: float | None = None
    max_grad_norm: float | None = None
    schedule: str = "constant"  # "linear": lr (and ppo's clip_range) decay to 0, rl-zoo's `lin_` values
    # ppo and a2c
    ortho_init: bool | None = None  # None: true (stable-baselines3's orthogonal initialisation)
    n_steps: int | None = None  # env steps per environment per rollout
    gae_lambda: float | None = None
    ent_coef: float | None = None
    vf_coef: float | None = None
    normalize_advantage: bool | None = None
    # ppo
    clip_range: float | None = None
    n_epochs: int | None = None
    # dqn
    buffer_size: int | None = None
    learning_starts: int | None = None
    train_freq: int | None = None  # env steps per environment between updates
    gradient_steps: int | None = None
    target_update_interval: int | None = None
    tau: float | None = None
    exploration_fraction: float | None = None
    exploration_initial_eps: float | None = None
    exploration_final_eps: float | None = None
    # evaluation: the deterministic policy on eval_episodes episodes seeded val_seed + i (val) and
    # test_seed + i (test), apart from the training environments (seeded by the plan's data seed)
    eval_episodes: int = 10
    val_seed: int = 10_000
    test_seed: int = 20_000

    def __post_init__(self) -> None:
        _check_type("env", self.env, (str,), "a string (a gymnasium environment id)")
        if not isinstance(self.net_arch, (list, tuple)) or any(
            isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in self.net_arch
        ):
            raise TaskError(f"task.net_arch must be a list of positive integers (hidden layer sizes, e.g. "
                            f"[64, 64]), got {self.net_arch!r}")
        object.__setattr__(self, "net_arch", tuple(self.net_arch))
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise TaskError(f"task.activation must be one of {', '.join(ACTIVATIONS)}, got "
                            f"{self.activation!r}" + suggest(str(self.activation), ACTIVATIONS))
        if self.schedule not in SCHEDULES:
            raise TaskError(f"task.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
                            + suggest(str(self.schedule), SCHEDULES))
        for name in _INTS:
            value = getattr(self, name)
            if value is not None:
                _check_type(name, value, (int,), "an integer")
                _check_range(name, value)
        for name in _FLOATS:
            value = getattr(self, name)
            if value is not None:
                _check_type(name, value, (int, float), "a number")
                object.__setattr__(self, name, float(value))
                _check_range(name, float(value))
        for name in _BOOLS:
            value = getattr(self, name)
            if value is not None:
                _check_type(name, value, (bool,), "true or false")
        val = range(self.val_seed, self.val_seed + self.eval_episodes)
        test = range(self.test_seed, self.test_seed + self.eval_episodes)
        if val.start < test.stop and test.start < val.stop:
            raise TaskError(
                f"task.val_seed ({self.val_seed}) and task.test_seed ({self.test_seed}) give overlapping "
                f"episode seeds with task.eval_episodes = {self.eval_episodes} (val uses val_seed..val_seed+"
                f"{self.eval_episodes - 1}); the splits must be apart, e.g. val_seed = 10000, test_seed = 20000"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], *, algorithm: str) -> RLOptions:
        """Options from a recipe's `[task]` table (without `plugin` and `name`), resolved for `algorithm`."""
        valid = [f.name for f in fields(cls)]
        unknown = [str(k) for k in options if k not in valid]
        if unknown:
            listed = "; ".join(f"task.{k}" + suggest(k, valid) for k in unknown)
            raise TaskError(f"unknown option(s) for rl task {algorithm!r}: {listed}. Valid options for "
                            f"{algorithm}: {', '.join(COMMON + ONLY[algorithm])}")
        return cls(**options).resolved_for(algorithm)

    def resolved_for(self, algorithm: str) -> RLOptions:
        """These options checked against `algorithm`, every None replaced by the value it stands for."""
        foreign = [f.name for f in fields(self) if f.name not in COMMON + ONLY[algorithm]
                   and getattr(self, f.name) is not None]
        if foreign:
            users = {name: [a for a in ALGORITHMS if name in ONLY[a]] for name in foreign}
            raise TaskError("; ".join(f"task.{n} applies to {' and '.join(users[n])} only, got "
                                      f"{getattr(self, n)!r} for {algorithm}" for n in foreign))
        defaults = sb3_defaults(algorithm)
        values: dict[str, Any] = {n: defaults[n] for n in SB3_KWARGS
                                  if n in COMMON + ONLY[algorithm] and getattr(self, n) is None}
        if self.activation is None:
            values["activation"] = "relu" if algorithm == "dqn" else "tanh"
        if algorithm in ACTOR_CRITIC and self.ortho_init is None:
            values["ortho_init"] = True
        out = replace(self, **values)
        if algorithm == "ppo" and out.n_steps * out.n_envs < 2:
            raise TaskError(f"task.n_steps x task.n_envs must be at least 2 for ppo (advantages are normalised "
                            f"over a rollout), got {out.n_steps} x {out.n_envs}")
        return out

    def as_dict(self, algorithm: str) -> dict[str, Any]:
        """The options that apply to `algorithm`, JSON-able (lists, not tuples)."""
        return {n: (list(v) if isinstance(v, tuple) else v)
                for n in COMMON + ONLY[algorithm] for v in [getattr(self, n)]}

    def sb3_kwargs(self, algorithm: str) -> dict[str, Any]:
        """The options that stable-baselines3's algorithm takes under their own names."""
        return {n: getattr(self, n) for n in SB3_KWARGS if n in COMMON + ONLY[algorithm]}


def sb3_defaults(algorithm: str) -> dict[str, Any]:
    """stable-baselines3's default for each keyword of `algorithm`'s constructor."""
    from stable_baselines3 import A2C, DQN, PPO

    cls = {"ppo": PPO, "a2c": A2C, "dqn": DQN}[algorithm]
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _check_type(name: str, value: Any, allowed: tuple[type, ...], what: str) -> None:
    # bool is a subclass of int: `n_envs = true` must not pass as 1
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise TaskError(f"task.{name} must be {what}, got {value!r} ({type(value).__name__})")


def _check_range(name: str, value: float) -> None:
    if name not in _RANGES:
        return
    lo, lo_in, hi, hi_in = _RANGES[name]
    if (value < lo or (value == lo and not lo_in)) or (value > hi or (value == hi and not hi_in)):
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        high = "inf" if hi == float("inf") else f"{hi:g}"
        raise TaskError(f"task.{name} must be in {left}{lo:g}, {high}{right}, got {value!r}")


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to `word`, or '' where none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
