"""VisionTask: an image classifier on an in-memory dataset, as the core's Task protocol asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketx.task import DataError, Masks, MetricSpec, Observer, Plan
from ticketx.training import EpochBatches, cross_entropy_loss, evaluate_classifier, fit, prefixed

from .augment import random_crop_flip
from .data import (
    ImageData, Splits, cache_root, load_cifar10, load_mnist, make_splits, read_image_tree, resize,
)
from .models import InputShape, build_model, output_layer_params, prunable_weights
from .options import VisionOptions

# (channels, height, width, classes) of the datasets whose shape is known before loading them
KNOWN_SHAPES = {"mnist": (1, 28, 28, 10), "fashion_mnist": (1, 28, 28, 10), "cifar10": (3, 32, 32, 10)}


class VisionTask:
    """One image-classification task: a dataset, a model family and how the data is split and fed."""

    metrics = MetricSpec()  # accuracy, higher is better; early stop on val_loss

    def __init__(self, name: str, options: VisionOptions, *, data_root: Path) -> None:
        self.name = name
        self.options = options.checked_for(name)
        self.data_root = data_root
        self._splits: Splits | None = None  # loaded on first use, once per task object

    def spec(self) -> dict[str, Any]:
        """JSON-able description saved with tickets: plugin, task name and every option."""
        return {"plugin": "vision", "task": self.name, "options": self.options.as_dict()}

    def prepare(self) -> None:
        """Load the dataset now, so that a missing one fails before any run is recorded."""
        self.splits()

    def build_model(self, seed: int) -> nn.Module:
        """The configured model, initialised from `seed` alone."""
        return build_model(
            self.options.model, self.input_shape(), dropout=self.options.dropout, seed=seed
        )

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Every nn.Linear weight and nn.Conv2d kernel, by parameter name."""
        return prunable_weights(model)

    def head(self, model: nn.Module) -> set[str]:
        """The output layer's weight and bias: tied to this dataset's classes."""
        return output_layer_params(model)

    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        """Train in place with `ticketx.training.fit` on the training split, masks held."""
        s = self.splits()
        batches = EpochBatches(
            s.train_x, s.train_y, plan.batch_size, plan.data_seed,
            transform=random_crop_flip if self.options.augment else None,
        )
        # dropout draws from the global RNG: seed a fork of it from the plan so that training is a
        # function of (model, masks, plan) and the caller's RNG stream is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.data_seed * 1_000_003 + plan.start_step)
            fit(
                model, masks, plan, observer,
                batch_at=batches, loss_fn=cross_entropy_loss, evaluate=self._evaluate_split,
                score_train=self.options.score_train,
            )

    def example_inputs(self, n: int) -> torch.Tensor:
        """The first `n` test images (N, C, H, W), normalised as in training: for checking exports."""
        return self.splits().test_x[:n]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Loss and accuracy on the validation and test splits (`val_loss`, `test_accuracy`, ...)."""
        return {**prefixed(self._evaluate_split(model, "val"), "val"),
                **prefixed(self._evaluate_split(model, "test"), "test")}

    def input_shape(self) -> InputShape:
        """Channels, image size and classes of this task's data (loads it only where not known)."""
        if self.name in KNOWN_SHAPES:
            c, h, w, k = KNOWN_SHAPES[self.name]
            if self.options.image_size:
                h = w = self.options.image_size
            return InputShape(channels=c, height=h, width=w, classes=k)
        s = self.splits()
        _, c, h, w = s.train_x.shape
        return InputShape(channels=c, height=h, width=w, classes=len(s.classes))

    def splits(self) -> Splits:
        """Train, validation and test tensors, loaded on first use and kept for the task's lifetime."""
        if self._splits is None:
            data = self._load()
            o = self.options
            self._splits = make_splits(
                data, val_size=o.val_size, split_seed=o.split_seed, train_subset=o.train_subset,
                test_subset=o.test_subset, dataset=self.name,
            )
        return self._splits

    def _load(self) -> ImageData:
        o = self.options
        if self.name in ("mnist", "fashion_mnist"):
            data = load_mnist(self.data_root, fashion=self.name == "fashion_mnist", download=o.download)
        elif self.name == "cifar10":
            data = load_cifar10(self.data_root, download=o.download, cache=cache_root())
        else:
            # a relative path is under the data root; joining leaves an absolute one as it is
            return read_image_tree(self.data_root / Path(o.path).expanduser(), image_size=o.image_size)
        if o.image_size:
            data = resize(data, o.image_size)
        c, h, w, k = KNOWN_SHAPES[self.name]
        expected = (c, o.image_size or h, o.image_size or w)
        if tuple(data.train_x.shape[1:]) != expected or len(data.classes) != k:
            raise DataError(
                f"{data.source} holds images of shape {tuple(data.train_x.shape[1:])} in "
                f"{len(data.classes)} classes; {self.name} should have {expected} in {k}"
            )
        return data

    def _evaluate_split(self, model: nn.Module, split: str) -> dict[str, float]:
        s = self.splits()
        x, y = {"train": (s.train_x, s.train_y), "val": (s.val_x, s.val_y), "test": (s.test_x, s.test_y)}[split]
        return evaluate_classifier(model, x, y)
