"""Options of a vision task: the recipe's `[task]` table as a frozen dataclass, checked when built."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ticketx.task import TaskError

MODELS = ("lenet300_100", "conv2", "conv4", "conv6", "vgg19", "resnet20")
DROPOUT_MODELS = ("lenet300_100", "conv2", "conv4", "conv6")  # dropout after hidden FC layers
AUGMENTED_BY_DEFAULT = frozenset({"cifar10"})  # Frankle & Carbin augment CIFAR-10 for VGG / ResNet


@dataclass(frozen=True, kw_only=True)
class VisionOptions:
    """What a vision task trains on and with; every field is settable from a recipe as `task.<field>`."""

    model: str = "lenet300_100"  # one of MODELS
    dropout: float = 0.0  # after each hidden FC layer of LeNet and Conv-2/4/6 (Frankle & Carbin sec. 4)
    val_size: int = 5000  # held out of the training set (never the test set) by a seeded permutation
    split_seed: int = 0  # seeds the validation split and the test subset
    train_subset: int = 0  # 0 = all; else the first N training examples left after the split
    test_subset: int = 0  # 0 = all; else a seeded random subset of N test examples
    augment: bool | None = None  # random crop (4-pixel zero padding) + horizontal flip; None = per task
    download: bool = True  # let torchvision download a missing dataset where the network is reachable
    path: str = ""  # imagefolder only: folder with train/ and test/; relative paths are under the data root
    image_size: int = 0  # 0 = as stored; else resize every image to image_size x image_size
    score_train: bool = True  # score the whole training split at the end too (the generalisation gap)
    # convolutional models in torch.channels_last (NHWC) memory format while they train: "auto" (where it
    # is faster and changes no earlier result; see task.use_channels_last), true or false. Left out of
    # `as_dict` (the spec saved in tickets) at its default, so specs of earlier recipes stay as they were
    channels_last: bool | str = "auto"

    def __post_init__(self) -> None:
        _check_type("model", self.model, (str,), "a string")
        if self.model not in MODELS:
            raise TaskError(
                f"task.model must be one of {', '.join(MODELS)}, got {self.model!r}"
                + suggest(self.model, MODELS)
            )
        _check_type("dropout", self.dropout, (int, float), "a number")
        object.__setattr__(self, "dropout", float(self.dropout))
        if not 0.0 <= self.dropout < 1.0:
            raise TaskError(f"task.dropout must be in [0, 1), got {self.dropout}")
        if self.dropout > 0 and self.model not in DROPOUT_MODELS:
            raise TaskError(
                f"task.dropout applies to {', '.join(DROPOUT_MODELS)} only, got {self.dropout} for "
                f"task.model {self.model!r}"
            )
        for name in ("val_size", "split_seed", "train_subset", "test_subset", "image_size"):
            _check_type(name, getattr(self, name), (int,), "an integer")
        if self.val_size < 1:
            raise TaskError(
                f"task.val_size must be at least 1 (the validation split picks the early-stopping "
                f"iteration), got {self.val_size}"
            )
        for name in ("split_seed", "train_subset", "test_subset", "image_size"):
            if getattr(self, name) < 0:
                raise TaskError(f"task.{name} must be 0 or more, got {getattr(self, name)}")
        if self.augment is not None:
            _check_type("augment", self.augment, (bool,), "true, false or absent (the task's default)")
        _check_type("download", self.download, (bool,), "true or false")
        _check_type("score_train", self.score_train, (bool,), "true or false")
        _check_type("path", self.path, (str,), "a string (a folder)")
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            raise TaskError(
                f"task.channels_last must be true, false or \"auto\", got {self.channels_last!r} "
                f"({type(self.channels_last).__name__})"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], *, task: str) -> VisionOptions:
        """Options from a recipe's `[task]` table (without its `plugin` and `name` keys)."""
        valid = [f.name for f in fields(cls)]
        unknown = [str(k) for k in options if k not in valid]
        if unknown:
            listed = "; ".join(f"task.{k}" + suggest(k, valid) for k in unknown)
            raise TaskError(
                f"unknown option(s) for vision task {task!r}: {listed}. Valid options: {', '.join(valid)}"
            )
        return cls(**options).checked_for(task)

    def checked_for(self, task: str) -> VisionOptions:
        """These options checked against the task they are for, with `augment` resolved."""
        if task == "imagefolder" and not self.path:
            raise TaskError(
                "task.path must name a folder with train/ and test/ subfolders of class folders "
                "for the imagefolder task, got '' (absent)"
            )
        if task != "imagefolder" and self.path:
            raise TaskError(
                f"task.path applies only to the imagefolder task, got {self.path!r} for task {task!r} "
                "(its data is found under the data root: --data-root or TICKETX_DATA)"
            )
        augment = task in AUGMENTED_BY_DEFAULT if self.augment is None else self.augment
        return replace(self, augment=augment)

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-able; `channels_last` only where it is not "auto" (options added after
        tickets were saved are left out at their default, so earlier specs are unchanged)."""
        out = asdict(self)
        if out["channels_last"] == "auto":
            del out["channels_last"]
        return out


def _check_type(name: str, value: Any, allowed: tuple[type, ...], what: str) -> None:
    # bool is a subclass of int: `val_size = true` must not pass as 1
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise TaskError(f"task.{name} must be {what}, got {value!r} ({type(value).__name__})")


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to `word`, or '' where none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
