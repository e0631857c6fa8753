"""The Task protocol: the one contract between the core and domain plugins.

A plugin subclasses nothing. It is any object with the attributes of `Plugin`, returning objects with the
attributes of `Task`; the core calls nothing else. Shared behaviour (the supervised loop, mask helpers) is
offered as functions in `ticketx.training` and `ticketx.masks` that a plugin may call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from . import ticket as ticketlib

Masks = dict[str, torch.Tensor]  # parameter name -> 0/1 tensor of the parameter's shape and dtype


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """Which metric a task reports as its result and which one picks the early-stopping iteration.

    Metric names are those the task reports through `Observer.on_eval`, prefixed by split
    (`val_loss`, `test_accuracy`, ...).
    """

    primary: str = "accuracy"  # reported per split: val_<primary>, test_<primary>
    higher_is_better: bool = True
    early_stop: str = "val_loss"  # the iteration where this is best is the early-stopping iteration
    early_stop_higher_is_better: bool = False


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How long and how to train: what the core hands to `Task.train`.

    Steps are optimizer steps ("iterations" in Frankle & Carbin). Training runs from `start_step` to
    `steps`; `start_step` is the rewind step k for levels after the first, so the learning-rate schedule
    and the data order continue from k as in Frankle et al. 2019 (arXiv 1903.01611).
    """

    steps: int
    batch_size: int
    optimizer: str  # "sgd" | "adam" | "adamw"
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warmup from lr/warmup_steps to lr over the first steps
    milestones: tuple[int, ...] = ()  # steps at which the learning rate is multiplied by gamma
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # clip the gradients' global L2 norm to this before each step; 0: never
    eval_every: int = 100
    start_step: int = 0
    data_seed: int = 0  # seeds the data order (and augmentation); apart from the init seed
    # where and in what arithmetic to train; the core sets `device` (resolved: "cpu", "cuda:0", ...) and
    # moves the model and masks there before calling Task.train: a task builds its data on `device`
    device: str = "cpu"
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp16" (autocast + gradient scaler, CUDA only)
    tf32: bool = False  # on CUDA, whether fp32 matrix multiplies may use TF32


class StopTraining(Exception):
    """Raised by `Observer.on_step` to end training at that step (an early-bird ticket's level, say).

    `Task.train` ends there as if `step` were the plan's last: it evaluates as after the last step (so the
    early-stop and final metrics exist) and returns normally, the model holding the weights of that step.
    `ticketx.training.fit` does this; a plugin with its own loop catches it around `on_step`.
    """


class Observer(Protocol):
    """What a task reports to while it trains; the core uses it to log, to capture θk and to watch for
    early-bird tickets."""

    def on_step(self, step: int, model: nn.Module) -> None:
        """Called after optimizer step number `step` (1-based), masks already applied; may raise
        `StopTraining` to end training there."""

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Called with split-prefixed metrics (`val_loss`, `test_accuracy`, `train_loss`, ...)."""


@runtime_checkable
class Task(Protocol):
    """One trainable problem: a model family on a dataset (or environment) with its metrics.

    Optional hooks, looked up with getattr (a plugin without them loses nothing; call them through
    `check_ticket` and `check_plan` below):
    - `check_source(meta: dict) -> None`: called with a ticket's metadata before the ticket is transferred
      onto this task (its head re-initialised); raises TaskError for what tensor shapes cannot tell (a
      ticket built on another vocabulary, say), naming what it expected.
    - `check_ticket(meta: dict) -> None`: the same before a ticket is loaded whole (head included) onto
      this task, by `ticketx show`, `export`, `instability --ticket` and transfer's `--compare` tickets.
    - `check_plan(plan: Plan) -> None`: raises TaskError for a plan this task cannot train with (an RL
      minibatch larger than a rollout, say), naming the keys to change; the core calls it for every plan
      of a job before any MLflow run is recorded.

    What pruning criteria at initialisation need (`ticketx.pruning`); a task without them has the arms
    that need them refused in one line before any run is opened:
    - `scoring_batches(n_per_class: int, seed: int) -> list[(inputs, targets)]`: a class-balanced sample of
      the training split only (`n_per_class` examples of each class, chosen by `seed`), without
      augmentation, as batches on the CPU (SNIP, GraSP). `ticketx.training.balanced_sample` makes one
      from in-memory tensors.
    - `scoring_loss(model, batch) -> Tensor`: the loss on one such batch (default:
      `ticketx.training.cross_entropy_loss`).
    - `scoring_input_shape() -> tuple[int, ...]`: the shape of one input, for SynFlow's all-ones input
      (no data); it may raise TaskError saying why such an input means nothing for this task.
    """

    metrics: MetricSpec

    def spec(self) -> dict[str, Any]:
        """JSON-able description (plugin, task name, options) saved with tickets and logged as params."""

    def prepare(self) -> None:
        """Load and check data (or make an environment) now; raise DataError before any run is started."""

    def build_model(self, seed: int) -> nn.Module:
        """The network, initialised from `seed` alone."""

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Weights that take part in pruning, by parameter name (weight matrices and conv kernels)."""

    def head(self, model: nn.Module) -> set[str]:
        """Parameter names tied to this task's inputs or outputs; re-initialised on transfer."""

    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        """Train in place for `plan`, keeping every masked weight exactly zero; report to `observer`."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Split-prefixed metrics of the model as it is (`val_loss`, `val_accuracy`, `test_...`)."""


@runtime_checkable
class Plugin(Protocol):
    """What the `ticketx.plugins` entry point loads (a class or a factory, called with no arguments)."""

    def tasks(self) -> dict[str, str]:
        """Task name -> one-line description."""

    def make_task(self, name: str, options: Mapping[str, Any], *, data_root: Path | None) -> Task:
        """Build the named task. Unknown options are an error that names them (raise `TaskError`)."""


REQUIRED = ("spec", "prepare", "build_model", "prunable", "head", "train", "evaluate")  # Task's methods
OPTIONAL = ("check_source", "check_ticket", "check_plan", "example_inputs", "scoring_batches", "scoring_loss",
            "scoring_input_shape")  # hooks looked up with getattr; where present they must be callable


def _where(task: Any, plugin: str, name: str) -> str:
    return f"plugin {plugin!r}, task {name!r} ({type(task).__module__}.{type(task).__qualname__})"


def check_contract(task: Any, plugin: str, name: str) -> None:
    """Raise TaskError, in one line naming the plugin, the task and what is missing, unless `task` (made by
    plugin `plugin` as its task `name`) has every member of `Task`: the methods callable (and the optional
    hooks it has), `metrics` a MetricSpec. `ticketx.plugins.make_task` calls it on every task it makes.
    It calls nothing of the task: `check_spec` does that once the task's data is loaded."""
    missing = [m for m in REQUIRED if not callable(getattr(task, m, None))]
    missing += [f"{m} (not callable)" for m in OPTIONAL if hasattr(task, m) and not callable(getattr(task, m))]
    if not isinstance(getattr(task, "metrics", None), MetricSpec):
        missing.append("metrics (a ticketx.task.MetricSpec)")
    if missing:
        raise TaskError(f"{_where(task, plugin, name)} does not meet the Task contract: it lacks "
                        f"{', '.join(missing)} (see docs/PLUGINS.md)")


def check_spec(task: Any, plugin: str, name: str) -> None:
    """Raise TaskError, in one line, unless `task.spec()` is a JSON-serialisable dict naming this plugin (its
    entry-point name) and task, with its options: what every ticket saves to rebuild the task. Called
    after `prepare()` (a spec may need the data: the NLP plugin's names its vocabulary), before any run."""
    import json

    where = _where(task, plugin, name)
    try:
        spec = task.spec()
    except TaskError:
        raise
    except Exception as e:  # third-party code: its error, named and placed
        raise TaskError(f"{where}: spec() raised {type(e).__name__}: {e}") from e
    if not isinstance(spec, dict) or not {"plugin", "task", "options"} <= set(spec):
        raise TaskError(f"{where}: spec() must return a dict with keys 'plugin', 'task' and 'options', "
                        f"got {spec!r:.200}")
    if spec["plugin"] != plugin or spec["task"] != name:
        raise TaskError(f"{where}: spec() names plugin {spec['plugin']!r}, task {spec['task']!r}; it must name "
                        f"the plugin's entry-point name {plugin!r} and the task {name!r}, or tickets and "
                        "exports would rebuild another task")
    if not isinstance(spec["options"], dict):
        raise TaskError(f"{where}: spec()['options'] must be a dict, got {type(spec['options']).__name__}")
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TaskError(f"{where}: spec() must be JSON-serialisable (it is saved with every ticket): {e}") from e


def check_plan(task: Task, plan: Plan) -> None:
    """The task's optional `check_plan` hook, if it has one."""
    hook = getattr(task, "check_plan", None)
    if hook is not None:
        hook(plan)


def check_ticket(task: Task, ticket: ticketlib.Ticket, model: nn.Module) -> None:
    """Raise (TaskError or TicketError) unless `ticket` can be loaded whole onto `task`'s `model`: first the
    task's optional `check_ticket` hook on the metadata (what shapes cannot tell), then every tensor."""
    hook = getattr(task, "check_ticket", None)
    if hook is not None:
        hook(ticket.meta)
    ticketlib.check_fits(ticket, model, task.prunable(model))


class TaskError(ValueError):
    """A task cannot be built or run as asked; the message says what to change."""


class DataError(TaskError):
    """A dataset is missing or unreadable; the message names the path looked in and the layout expected."""
