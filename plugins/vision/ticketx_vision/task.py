"""VisionTask: an image classifier on an in-memory dataset, as the core's Task protocol asks.

The dataset is held as stored (uint8 images, int64 labels) on each device it is used on: loaded once on
the CPU, copied once to a training device. Batches are gathered there by `EpochBatches`, then normalised
(and augmented) there, a batch at a time; evaluation reads the splits on the model's device and
normalises slice by slice. Only the few random crop offsets and flips of a batch cross from the host
(they are drawn from a CPU generator, so every device sees the same data order and augmentation).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketx.devices import canonical, rng_devices
from ticketx.task import DataError, Masks, MetricSpec, Observer, Plan, TaskError
from ticketx.training import EpochBatches, balanced_sample, cross_entropy_loss, evaluate_classifier, fit, prefixed

from .augment import random_crop_flip
from .data import (
    ImageData, StoredSplits, cache_root, load_cifar10, load_mnist, read_image_tree, resize, stored_splits,
)
from .models import InputShape, build_model, output_layer_params, prunable_weights
from .options import MODELS, VisionOptions

# (channels, height, width, classes) of the datasets whose shape is known before loading them
KNOWN_SHAPES = {"mnist": (1, 28, 28, 10), "fashion_mnist": (1, 28, 28, 10), "cifar10": (3, 32, 32, 10)}
CONV_MODELS = tuple(m for m in MODELS if m != "lenet300_100")  # the models task.channels_last applies to


# What "auto" does is what benchmarks/channels_last.py measured (plugins/vision/README.md, "channels_last"):
# on one CPU thread of a Xeon with AMX-BF16, channels-last batches made a Conv-2 / Conv-6 / ResNet-20
# training step 1.35-1.9x faster under bf16 autocast, and about 1.1-1.3x faster in fp32, where they also
# change the arithmetic (the weights differ from NCHW's after 3 steps). So CPU fp32 stays NCHW under
# "auto": a recipe that leaves the option out keeps its config hash, and so must keep its numbers
# (`channels_last = true` takes the fp32 speed-up, and is hashed). On CUDA, not measured (no GPU here):
# on where tensor cores run the convolutions (bf16, fp16, fp32 with TF32), which cuDNN runs natively
# channels-last (PyTorch's memory-format tutorial and performance tuning guide); not for strict fp32.
def use_channels_last(option: bool | str, model: str, plan: Plan) -> bool:
    """Whether to train `model` on channels-last (NHWC) batches under `plan`, given task.channels_last
    (true, false or "auto"); never for LeNet-300-100, which has no convolution."""
    if model not in CONV_MODELS:
        return False
    if option != "auto":
        return bool(option)
    if plan.device.startswith("cuda"):
        return plan.precision in ("bf16", "fp16") or plan.tf32
    return plan.precision == "bf16"


class TrainingBatches:
    """Batch `step` of the training split on the splits' device: gathered by `EpochBatches` (the seeded
    order), normalised there and, with `augment`, randomly cropped and flipped there (offsets drawn on the
    CPU from EpochBatches' per-step generator), in `memory_format`."""

    def __init__(self, splits: StoredSplits, plan: Plan, *, augment: bool,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.splits, self.augment, self.memory_format = splits, augment, memory_format
        self.epochs = EpochBatches(splits.train_x, splits.train_y, plan.batch_size, plan.data_seed,
                                   transform=self._augmented if augment else None)

    def _augmented(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # padded with zeros after normalising: the padding is each channel's mean, as before
        return random_crop_flip(self.splits.normalise(x), g, memory_format=self.memory_format)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.epochs(step)
        return (x, y) if self.augment else (self.splits.normalise(x, memory_format=self.memory_format), y)


class VisionTask:
    """One image-classification task: a dataset, a model family and how the data is split and fed."""

    metrics = MetricSpec()  # accuracy, higher is better; early stop on val_loss

    def __init__(self, name: str, options: VisionOptions, *, data_root: Path) -> None:
        self.name = name
        self.options = options.checked_for(name)
        self.data_root = data_root
        self._splits: StoredSplits | None = None  # loaded on first use, once per task object
        self._on_device: dict[torch.device, StoredSplits] = {}  # copies on other devices, made once each
        # channels-last batches for evaluation too, while a train() that chose them runs
        self._eval_format = torch.contiguous_format

    def spec(self) -> dict[str, Any]:
        """JSON-able description saved with tickets: plugin, task name and every option (channels_last
        only where it is not "auto")."""
        return {"plugin": "vision", "task": self.name, "options": self.options.as_dict()}

    def prepare(self) -> None:
        """Load the dataset now, so that a missing one fails before any run is recorded."""
        self.splits()

    def check_plan(self, plan: Plan) -> None:
        """Refuse, before any run is recorded, a train.batch_size larger than the training split (what is
        left after task.val_size and task.train_subset): one batch would not fill. Loads the data."""
        n = self.splits().train_x.shape[0]
        if plan.batch_size > n:
            o = self.options
            subset = f" and task.train_subset = {o.train_subset} taken" if o.train_subset else ""
            raise TaskError(
                f"train.batch_size must be at most the {n} images of the {self.name} training split (after "
                f"task.val_size = {o.val_size} held out{subset}), got {plan.batch_size}"
            )

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
        """Train in place with `ticketx.training.fit` on the training split, masks held, on `plan.device`
        (where the core has put the model and masks; the data is copied there once per task)."""
        s = self.splits_on(plan.device)
        # channels_last: the batches only. The weights stay in the default layout, which measured as fast
        # on the CPU (the convolutions follow their input's layout; benchmarks/channels_last.py,
        # "inputs_only"), and keeps the snapshots, checkpoints and optimizer state the core makes in one
        # layout: torch's fused Adam silently miscomputes where a parameter and its state differ in layout
        fmt = (torch.channels_last if use_channels_last(self.options.channels_last, self.options.model, plan)
               else torch.contiguous_format)
        batches = TrainingBatches(s, plan, augment=bool(self.options.augment), memory_format=fmt)
        self._eval_format = fmt
        try:
            # dropout draws from the global RNG (the device's, on CUDA): seed a fork of it from the plan so
            # that training is a function of (model, masks, plan) and the caller's RNG stream is left as it was
            with torch.random.fork_rng(devices=rng_devices(plan.device)):
                torch.manual_seed(plan.data_seed * 1_000_003 + plan.start_step)  # seeds CUDA's too
                fit(
                    model, masks, plan, observer,
                    batch_at=batches, loss_fn=cross_entropy_loss, evaluate=self._evaluate_split,
                    score_train=self.options.score_train,
                )
        finally:
            self._eval_format = torch.contiguous_format

    def scoring_batches(self, n_per_class: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n_per_class` training images of each class (never validation or test), chosen by `seed`,
        normalised as in training and never augmented, on the CPU: what SNIP and GraSP score with."""
        s = self.splits()
        return balanced_sample(s.train_x, s.train_y, n_per_class, seed, transform=s.normalise)

    def scoring_input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width): the shape of SynFlow's all-ones input."""
        shape = self.input_shape()
        return (shape.channels, shape.height, shape.width)

    def example_inputs(self, n: int) -> torch.Tensor:
        """The first `n` test images (N, C, H, W), normalised float32 on the CPU as in training: for
        checking exports."""
        s = self.splits()
        return s.normalise(s.test_x[:n])

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

    def splits(self) -> StoredSplits:
        """Train, validation and test tensors as stored (uint8 images) on the CPU, with the statistics that
        normalise them; loaded on first use and kept for the task's lifetime."""
        if self._splits is None:
            data = self._load()
            o = self.options
            self._splits = stored_splits(
                data, val_size=o.val_size, split_seed=o.split_seed, train_subset=o.train_subset,
                test_subset=o.test_subset, dataset=self.name,
            )  # `data`, the whole dataset as loaded, is dropped here: only the splits are kept
        return self._splits

    def splits_on(self, device: torch.device | str) -> StoredSplits:
        """`splits()` on `device`: the CPU's own object there, else a copy made on first use and kept."""
        device = canonical(device)
        s = self.splits()
        if device == s.device:
            return s
        if device not in self._on_device:
            self._on_device[device] = s.to(device)
        return self._on_device[device]

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
        """Loss and accuracy of `model` on a split held on the model's device, normalised slice by slice."""
        s = self.splits_on(next(model.parameters()).device)
        x, y = {"train": (s.train_x, s.train_y), "val": (s.val_x, s.val_y), "test": (s.test_x, s.test_y)}[split]
        return evaluate_classifier(model, x, y, transform=partial(s.normalise, memory_format=self._eval_format))
