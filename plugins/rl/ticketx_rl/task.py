"""RLTask: a stable-baselines3 agent on a gymnasium environment, as the core's Task protocol asks.

Steps are environment steps (stable-baselines3's timesteps). Training runs in whole rollouts (ppo / a2c:
n_steps x n_envs env steps, dqn: train_freq x n_envs), and the weights change only in the update after a
rollout. The observer therefore hears about the env steps of a rollout once that rollout's update is done:
`on_step(s, policy)` for every s up to the current step, then an evaluation where a multiple of
`plan.eval_every` was passed. So the weights captured at a step k that ends a rollout are exactly those
of a run told to train for k steps, and choosing the rewind step as a multiple of the rollout size makes
rewinding exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from ticketx import devices
from ticketx.task import Masks, MetricSpec, Observer, Plan, StopTraining, TaskError

from . import agents, envs
from .options import ACTOR_CRITIC, ALGORITHMS, RLOptions


class RLTask:
    """One algorithm (ppo, a2c, dqn) with its MLP policy on one gymnasium environment."""

    # the return of the deterministic policy; the early-stopping evaluation is the best validation return
    metrics = MetricSpec(primary="return", higher_is_better=True, early_stop="val_return",
                         early_stop_higher_is_better=True)
    # where train.device "auto" puts this task (the core reads it): the CPU, as stable-baselines3 advises
    # for A2C / PPO with MLP policies, which use a GPU poorly (plugins/rl/README.md, "Devices"); a
    # train.device that names a GPU still puts the policy there
    default_device = "cpu"

    def __init__(self, algorithm: str, options: RLOptions) -> None:
        if algorithm not in ALGORITHMS:
            raise TaskError(f"task.name must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        self.algorithm = algorithm
        self.options = options.resolved_for(algorithm)
        self._spaces: envs.EnvSpaces | None = None
        self.spaces()  # an unknown id or an action space the algorithm cannot take fails with the options

    def spec(self) -> dict[str, Any]:
        """JSON-able description saved with tickets: plugin, task (the algorithm) and every option used."""
        return {"plugin": "rl", "task": self.algorithm, "options": self.options.as_dict(self.algorithm)}

    def spaces(self) -> envs.EnvSpaces:
        """The environment's spaces, checked against the algorithm (made once per task object)."""
        if self._spaces is None:
            s = envs.env_spaces(self.options.env)
            envs.check_spaces(self.options.env, self.algorithm, s)
            self._spaces = s
        return self._spaces

    def prepare(self) -> None:
        """Make the real environment now, so that a missing simulator fails before any run is recorded
        (unknown ids and unfit action spaces already failed when the task was made)."""
        s = envs.env_spaces(self.options.env, real=True)
        envs.check_spaces(self.options.env, self.algorithm, s)
        self._spaces = s

    def check_plan(self, plan: Plan) -> None:
        """Raise TaskError for a plan this algorithm cannot train with these options (ppo's minibatch
        larger than a rollout, train.clip_grad_norm, a dqn that would make no update, ...), naming the
        keys to change. `train` calls it first; a caller may call it before any run is recorded."""
        agents.check_plan(self.algorithm, self.options, plan)

    def build_model(self, seed: int) -> nn.Module:
        """The algorithm's policy module (what the ticket covers), initialised from `seed` alone."""
        return agents.build_policy(self.algorithm, self.options, self.spaces(), seed)

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Every Linear weight of the actor and critic (dqn: of q_net), never biases."""
        return agents.prunable_weights(model)

    def head(self, model: nn.Module) -> set[str]:
        """First layers (observation size), output layers (actions, value) and log_std."""
        return agents.head_params(model)

    def check_source(self, meta: dict[str, Any]) -> None:
        """Refuse a ticket of the other network family with a message saying which ones fit."""
        src = meta.get("task", {})
        algorithm = src.get("task") if isinstance(src, dict) else None
        if algorithm in ALGORITHMS and (algorithm in ACTOR_CRITIC) != (self.algorithm in ACTOR_CRITIC):
            family = {True: "an actor-critic network (ppo, a2c)", False: "a Q-network (dqn)"}
            raise TaskError(
                f"the ticket was found with {algorithm}, which trains {family[algorithm in ACTOR_CRITIC]}; "
                f"{self.algorithm} trains {family[self.algorithm in ACTOR_CRITIC]}. Tickets move between "
                "ppo and a2c, and from dqn to dqn"
            )

    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        """Train a fresh stable-baselines3 algorithm from `model`'s weights for env steps
        `plan.start_step` .. `plan.steps` (rounded up to whole rollouts), masks held; copy its weights
        back into `model`. Global RNG states are left as they were."""
        o = self.options
        self.spaces()
        with agents.isolated_rng(plan.device):
            algo = agents.build_algorithm(self.algorithm, o, plan)
            val = envs.Evaluator(o.env, range(o.val_seed, o.val_seed + o.eval_episodes))
            test = envs.Evaluator(o.env, range(o.test_seed, o.test_seed + o.eval_episodes))
            try:
                algo.policy.load_state_dict(model.state_dict())
                handle = agents.hold_masks(algo.policy, masks)
                # continue the step count (and with it the lr, clip and exploration schedules) from k
                algo.num_timesteps = plan.start_step
                if self.algorithm == "dqn":
                    algo._n_calls = plan.start_step // o.n_envs  # target updates every interval from step 0
                    # a rewound dqn starts with an empty replay buffer: warm it up as the dense run did
                    algo.learning_starts += plan.start_step
                reporter = _Reporter(observer, val, test, plan)
                if plan.precision != "fp32":  # the updates only: rollouts go to numpy buffers, which take no bf16
                    algo.train = _in_autocast(algo.train, plan)  # type: ignore[method-assign]
                try:
                    algo.learn(total_timesteps=plan.steps - plan.start_step, callback=reporter,
                               reset_num_timesteps=False)
                except ValueError as e:  # torch.distributions: "... but found invalid values" (NaN)
                    if "invalid values" not in str(e):
                        raise
                    raise TaskError(f"training diverged at env step {algo.num_timesteps}: the policy's outputs "
                                    f"became NaN (try a lower train.lr than {plan.lr})") from None
                handle.remove()
            finally:
                algo.env.close()
                val.close()
                test.close()
        with torch.no_grad():
            model.load_state_dict(algo.policy.state_dict())
        model.eval()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean and std return of the deterministic policy on the validation and test episodes."""
        o = self.options
        out: dict[str, float] = {}
        for split, base in (("val", o.val_seed), ("test", o.test_seed)):
            ev = envs.Evaluator(o.env, range(base, base + o.eval_episodes))
            try:
                out.update(_summary(split, ev.returns(model)))
            finally:
                ev.close()
        return out


def _in_autocast(update: Any, plan: Plan) -> Any:
    """An algorithm's `train` (its gradient updates) run under the plan's autocast."""
    def train(*args: Any, **kwargs: Any) -> Any:
        with devices.autocast(plan.device, plan.precision):
            return update(*args, **kwargs)
    return train


def _summary(split: str, returns: np.ndarray) -> dict[str, float]:
    return {f"{split}_return": float(returns.mean()), f"{split}_return_std": float(returns.std())}


class _Reporter(BaseCallback):
    """Tells the observer about each env step once the update that follows it is done, and evaluates
    every `plan.eval_every` env steps and at the last one (test where validation reaches a new best).

    An observer that raises StopTraining (an early-bird level) ends training after that rollout's update:
    the evaluation there is the last one, and the next env step tells stable-baselines3 to stop."""

    def __init__(self, observer: Observer, val: envs.Evaluator, test: envs.Evaluator, plan: Plan) -> None:
        super().__init__(verbose=0)
        self.observer, self.val, self.test, self.every = observer, val, test, plan.eval_every
        self.reported = plan.start_step
        self.best = -math.inf
        self.stopped = False

    def _on_step(self) -> bool:
        return not self.stopped

    def _on_rollout_start(self) -> None:
        self._flush(final=False)  # the previous rollout's update, if any, is done

    def _on_training_end(self) -> None:
        self._flush(final=True)

    def _flush(self, *, final: bool) -> None:
        if self.stopped:  # evaluated as the last step already
            return
        algo: BaseAlgorithm = self.model
        now, before = algo.num_timesteps, self.reported
        for step in range(before + 1, now + 1):
            try:
                self.observer.on_step(step, algo.policy)
            except StopTraining:  # the weights are the update's: the same at every step of the rollout
                self.stopped = final = True
                break
        self.reported = now
        if now == before or not (final or now // self.every > before // self.every):
            return
        metrics = _summary("val", self.val.returns(algo.policy))
        if metrics["val_return"] > self.best or final:
            metrics.update(_summary("test", self.test.returns(algo.policy)))
        self.best = max(self.best, metrics["val_return"])
        episodes = [info["r"] for info in algo.ep_info_buffer or []]
        if episodes:
            metrics["train_return"] = float(np.mean(episodes))  # the last 100 training episodes
        self.observer.on_eval(now, metrics)
