"""stable-baselines3 networks and algorithms for a task's options and the core's plan, and masks held in them.

The network a ticket covers is the algorithm's policy module itself: an `ActorCriticPolicy` for ppo and
a2c (actor `mlp_extractor.policy_net` + `action_net`, critic `mlp_extractor.value_net` + `value_net`; the
same parameter names for both algorithms, so tickets move between them), a `DQNPolicy` for dqn (`q_net`,
with its target `q_net_target` following it).

Masks are held by a post-step hook on the policy's optimizer that multiplies every masked weight by its
mask (and dqn's target network by the same masks) right after each optimizer step, so pruned weights are
exactly zero whenever they are used. A torch parametrization instead reorders dqn's parameters (its
`polyak_update` zips q_net's parameters against the target's) and breaks loading; re-masking in a callback
lets pruned weights regrow between callbacks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn
from torch.utils.hooks import RemovableHandle

from ticketx.devices import rng_devices
from ticketx.task import Masks, Plan, TaskError
from ticketx.training import lr_at

from .envs import EnvSpaces
from .options import ACTOR_CRITIC, RLOptions

ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
ACTIVATION_FN: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU,
                                             "leaky_relu": nn.LeakyReLU}
TARGET = "q_net_target."  # dqn's target network: follows q_net, never pruned on its own


def policy_kwargs(algorithm: str, o: RLOptions) -> dict[str, Any]:
    """The architecture keywords of the algorithm's MlpPolicy (the same in build_policy and train)."""
    arch = list(o.net_arch)
    kwargs: dict[str, Any] = {"activation_fn": ACTIVATION_FN[o.activation or "tanh"]}
    if algorithm in ACTOR_CRITIC:
        # separate actor and critic of the same sizes (stable-baselines3 >= 1.8 shares no hidden layer)
        kwargs.update(net_arch={"pi": arch, "vf": list(arch)}, ortho_init=bool(o.ortho_init))
    else:
        kwargs["net_arch"] = arch
    return kwargs


def build_policy(algorithm: str, o: RLOptions, s: EnvSpaces, seed: int) -> BasePolicy:
    """The algorithm's MlpPolicy for spaces `s`, initialised from `seed` alone (global RNGs untouched)."""
    cls = DQNPolicy if algorithm == "dqn" else ActorCriticPolicy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = cls(s.observation, s.action, lambda _: 0.0, **policy_kwargs(algorithm, o))
    policy.set_training_mode(False)
    return policy


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every nn.Linear weight of the policy and value (or Q) networks, in model order; dqn's target
    network follows q_net's masks instead of being pruned itself."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not name.startswith(TARGET)}


def head_params(model: nn.Module) -> set[str]:
    """Parameters whose shape or meaning depends on the environment's observation or action spaces: the
    first Linear layer of each network (observation size), the output layers (action count; the critic's
    value scale) and a Gaussian policy's log_std (action size); dqn's target network alike."""
    out: set[str] = set()
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if isinstance(model, ActorCriticPolicy):
        for net in ("mlp_extractor.policy_net.", "mlp_extractor.value_net."):
            first = next((n for n, _ in linear if n.startswith(net)), None)
            if first is not None:
                out |= {f"{first}.weight", f"{first}.bias"}
        out |= {n for n, _ in model.named_parameters()
                if n.startswith(("action_net.", "value_net.")) or n == "log_std"}
    elif isinstance(model, DQNPolicy):
        for net in ("q_net.q_net.", "q_net_target.q_net."):
            layers = [n for n, _ in linear if n.startswith(net)]
            for n in {layers[0], layers[-1]}:
                out |= {f"{n}.weight", f"{n}.bias"}
    else:
        raise TaskError(f"not a policy ticketx-rl builds: {type(model).__name__}")
    return out


OPTIMIZERS = ("sgd", "adam", "adamw")


def check_plan(algorithm: str, o: RLOptions, plan: Plan) -> None:
    """Raise TaskError for a plan `algorithm` cannot train with these options, naming the keys to change:
    everything stable-baselines3 would refuse (or silently ignore) once training has started."""
    if plan.steps <= plan.start_step:
        raise TaskError(f"train.steps ({plan.steps}) must exceed the rewind step ({plan.start_step})")
    if plan.optimizer not in OPTIMIZERS:
        raise TaskError(f"train.optimizer must be one of {', '.join(repr(x) for x in OPTIMIZERS)}, "
                        f"got {plan.optimizer!r}")
    if plan.optimizer == "sgd" and plan.nesterov and plan.momentum <= 0:
        raise TaskError("train.nesterov needs train.momentum > 0 (torch's SGD), got momentum "
                        f"{plan.momentum:g}")
    if plan.precision == "fp16":
        raise TaskError("train.precision 'fp16' needs a gradient scaler, which stable-baselines3's training loop "
                        "does not have; use 'bf16' or 'fp32' for rl tasks")
    if plan.clip_grad_norm > 0:
        raise TaskError(f"train.clip_grad_norm ({plan.clip_grad_norm:g}) is not used by rl tasks: "
                        f"stable-baselines3 clips the gradient norm itself, at task.max_grad_norm "
                        f"({o.max_grad_norm:g} here); set that instead and leave train.clip_grad_norm at 0")
    if algorithm == "ppo":
        rollout = rollout_size(algorithm, o)
        if not 1 < plan.batch_size <= rollout:
            raise TaskError(f"train.batch_size is ppo's minibatch and must be in [2, n_steps x n_envs = "
                            f"{o.n_steps} x {o.n_envs} = {rollout}], got {plan.batch_size}: lower "
                            "train.batch_size or raise task.n_steps or task.n_envs")
    if algorithm == "dqn" and plan.start_step + o.learning_starts >= plan.steps:
        raise TaskError(f"dqn would make no update: it fills its replay buffer for task.learning_starts = "
                        f"{o.learning_starts} env steps from step {plan.start_step} (the rewind step) before "
                        f"the first, and trains to train.steps = {plan.steps}; lower task.learning_starts "
                        "or raise train.steps")


def _optimizer(algorithm: str, plan: Plan) -> dict[str, Any]:
    """optimizer_class / optimizer_kwargs for the policy, from the plan (the core's train.optimizer)."""
    if plan.optimizer == "sgd":
        return {"optimizer_class": torch.optim.SGD, "optimizer_kwargs": {
            "momentum": plan.momentum, "nesterov": plan.nesterov, "weight_decay": plan.weight_decay}}
    if plan.optimizer in ("adam", "adamw"):
        kwargs: dict[str, Any] = {"weight_decay": plan.weight_decay}
        if algorithm in ACTOR_CRITIC:
            kwargs["eps"] = 1e-5  # stable-baselines3's ActorCriticPolicy default for Adam
        cls = torch.optim.Adam if plan.optimizer == "adam" else torch.optim.AdamW
        return {"optimizer_class": cls, "optimizer_kwargs": kwargs}
    raise AssertionError(plan.optimizer)  # check_plan refuses any other


def rollout_size(algorithm: str, o: RLOptions) -> int:
    """Env steps between two updates: training runs in whole rollouts of this many steps."""
    per_env = o.train_freq if algorithm == "dqn" else o.n_steps
    return int(per_env) * o.n_envs


def build_algorithm(algorithm: str, o: RLOptions, plan: Plan) -> BaseAlgorithm:
    """A fresh stable-baselines3 algorithm on `o.env` for `plan`: its environments and exploration seeded
    by `plan.data_seed`, the learning rate following the plan's schedule over env steps, its policy on
    `plan.device` (the CPU unless train.device names a GPU: RLTask.default_device)."""
    check_plan(algorithm, o, plan)
    kwargs = o.sb3_kwargs(algorithm)
    linear = o.schedule == "linear"

    def learning_rate(progress_remaining: float) -> float:
        # stable-baselines3 passes 1 - num_timesteps / total_timesteps; total is plan.steps (see train)
        step = int(round((1.0 - progress_remaining) * plan.steps))
        return lr_at(step, plan) * (progress_remaining if linear else 1.0)

    if algorithm == "ppo":
        kwargs["batch_size"] = plan.batch_size
        if linear:
            clip = float(kwargs["clip_range"])
            kwargs["clip_range"] = lambda p: clip * p
    elif algorithm == "dqn":
        kwargs["batch_size"] = plan.batch_size  # a2c has no minibatch: one update per whole rollout
    env = make_vec_env(o.env, n_envs=o.n_envs, seed=plan.data_seed, vec_env_cls=DummyVecEnv)
    algo = ALGORITHM_CLASSES[algorithm](
        "MlpPolicy", env, learning_rate=learning_rate, seed=plan.data_seed, device=plan.device, verbose=0,
        policy_kwargs={**policy_kwargs(algorithm, o), **_optimizer(algorithm, plan)}, **kwargs,
    )
    # a logger with no outputs: stable-baselines3's default leaves an empty /tmp/SB3-<time> folder per learn()
    algo.set_logger(Logger(folder=None, output_formats=[]))
    return algo


def hold_masks(policy: BasePolicy, masks: Masks) -> RemovableHandle:
    """Zero the pruned weights of `policy` now and after every step of its optimizer (dqn's target too)."""
    params = dict(policy.named_parameters())
    missing = sorted(set(masks) - set(params))
    if missing:
        raise TaskError(f"masks name parameters the policy does not have: {', '.join(missing)}")
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, m in masks.items():
        if bool(m.all()):
            continue  # an all-ones mask prunes nothing and costs nothing to hold
        mask = m.to(params[name].dtype)
        held.append((params[name], mask))
        target = TARGET + name[len("q_net."):] if name.startswith("q_net.") else None
        if target is not None and target in params:
            held.append((params[target], mask))

    @torch.no_grad()
    def apply(*_: Any) -> None:
        for p, m in held:
            p.mul_(m)

    apply()
    return policy.optimizer.register_step_post_hook(apply)


@contextmanager
def isolated_rng(device: str = "cpu") -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states afterwards, the CUDA RNG of `device` too
    where it is a GPU: stable-baselines3 seeds them (torch.manual_seed seeds every CUDA device's)."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=rng_devices(device)):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)

