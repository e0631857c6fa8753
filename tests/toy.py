"""A toy task plugin for the core's tests: a small MLP on synthetic data, no files, seconds to train."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketx import training
from ticketx.task import Masks, MetricSpec, Observer, Plan, TaskError


class ToyTask:
    """Classify 16-d Gaussian points labelled by a fixed random linear teacher (4 classes by default)."""

    metrics = MetricSpec()

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"hidden", "n_train", "classes", "data_seed", "fail", "dropout"}
        if unknown:
            raise TaskError(f"unknown toy option(s): {sorted(unknown)}")
        self.name = name
        self.hidden = int(options.get("hidden", 32))
        # "LEVEL/ARM/raise" or "LEVEL/ARM/exit": that arm raises, or kills its process, when it trains
        self.fail = str(options.get("fail", ""))
        self.classes = int(options.get("classes", 4))
        self.dropout = float(options.get("dropout", 0.0))  # > 0: training draws from the global RNG
        self.data_seed = int(options.get("data_seed", 1234))  # another seed: another "dataset"
        g = torch.Generator().manual_seed(self.data_seed)
        n = int(options.get("n_train", 1024))
        x = torch.randn(n + 512 + 512, 16, generator=g)
        teacher = torch.randn(16, self.classes, generator=g)
        y = (x @ teacher).argmax(dim=1)
        self.train_x, self.train_y = x[:n], y[:n]
        self.splits = {"train": (self.train_x, self.train_y), "val": (x[n : n + 512], y[n : n + 512]),
                       "test": (x[n + 512 :], y[n + 512 :])}

    def spec(self) -> dict[str, Any]:
        options = {"hidden": self.hidden, "classes": self.classes, "data_seed": self.data_seed}
        if self.dropout:
            options["dropout"] = self.dropout
        return {"plugin": "toy", "task": self.name, "options": options}

    def prepare(self) -> None:
        """The data is made in __init__: nothing to load."""

    def build_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.dropout:  # the same parameter names as without: Dropout has none
                return nn.Sequential(nn.Linear(16, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden),
                                     nn.ReLU(), nn.Linear(self.hidden, self.classes), nn.Dropout(self.dropout))
            return nn.Sequential(nn.Linear(16, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden),
                                 nn.ReLU(), nn.Linear(self.hidden, self.classes))

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.dim() >= 2}

    def head(self, model: nn.Module) -> set[str]:
        return {"4.weight", "4.bias"}

    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        if self.fail:
            level, arm, how = self.fail.split("/")
            info = getattr(observer, "info", {})
            if (str(info.get("level")), info.get("arm")) == (level, arm):
                if how == "exit":
                    os._exit(3)  # a worker killed from outside (out of memory, kill -9)
                raise RuntimeError(f"toy task told to fail at level {level} arm {arm}")
        exit_at = os.environ.get("TICKETX_TOY_EXIT_AT", "")  # "LEVEL/ARM/STEP": that arm's process dies there
        if exit_at:
            level, arm, step = exit_at.split("/")
            info = getattr(observer, "info", {})
            if (str(info.get("level")), info.get("arm")) == (level, arm):
                observer = _ExitAt(observer, int(step))
        device = torch.device(plan.device)
        batches = training.EpochBatches(self.train_x.to(device), self.train_y.to(device), plan.batch_size,
                                        plan.data_seed)
        with torch.random.fork_rng(devices=[]):  # dropout: training a function of (model, masks, plan)
            torch.manual_seed(plan.data_seed * 1_000_003 + plan.start_step)
            training.fit(model, masks, plan, observer, batch_at=batches, loss_fn=training.cross_entropy_loss,
                         evaluate=self._evaluate, score_train=True)

    def _evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = self.splits[split]
        device = next(model.parameters()).device
        return training.evaluate_classifier(model, x.to(device), y.to(device))

    def scoring_batches(self, n_per_class: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return training.balanced_sample(self.train_x, self.train_y, n_per_class, seed)

    def scoring_input_shape(self) -> tuple[int, ...]:
        return (16,)

    def example_inputs(self, n: int) -> torch.Tensor:
        return self.splits["test"][0][:n]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for split in ("val", "test"):
            out.update(training.prefixed(self._evaluate(model, split), split))
        return out


class _ExitAt:
    """An observer that ends the process, as kill -9 would (no cleanup, no flush), after step `step`."""

    def __init__(self, observer: Observer, step: int) -> None:
        self._observer, self._step = observer, step

    def __getattr__(self, name: str) -> Any:  # info, checkpoints, ...: the core's observer's
        return getattr(self._observer, name)

    def on_step(self, step: int, model: nn.Module) -> None:
        self._observer.on_step(step, model)
        if step == self._step:
            os._exit(9)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self._observer.on_eval(step, metrics)


class ToyPlugin:
    def tasks(self) -> dict[str, str]:
        return {"gauss": "a 3-layer MLP on 16-d Gaussian points labelled by a random teacher"}

    def make_task(self, name: str, options: Mapping[str, Any], *, data_root: Path | None) -> ToyTask:
        return ToyTask(name, options)
