"""The `vision` entry point: image-classification tasks for ticketx.

Light on purpose: listing the tasks and refusing a bad option import neither torchvision nor the task,
model and data modules (`ticketx tasks` and a recipe's errors answer without them); `make_task` imports
the task module once the options are checked, and torchvision is imported where data is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketx.paths import default_data_root
from ticketx.task import TaskError

from .options import VisionOptions, suggest

if TYPE_CHECKING:
    from .task import VisionTask

TASKS = {
    "mnist": "MNIST digits, 28x28 grey, 10 classes (60K train incl. validation, 10K test)",
    "fashion_mnist": "Fashion-MNIST clothing, 28x28 grey, 10 classes (60K train incl. validation, 10K test)",
    "cifar10": "CIFAR-10, 32x32 RGB, 10 classes (50K train incl. validation, 10K test)",
    "imagefolder": "any folder of images: task.path/{train,test}/<class>/<image>",
}


class VisionPlugin:
    """Builds vision tasks: a dataset plus one of LeNet-300-100, Conv-2/4/6, VGG-19, ResNet-20."""

    def tasks(self) -> dict[str, str]:
        """Task name -> one-line description."""
        return dict(TASKS)

    def make_task(self, name: str, options: Mapping[str, Any], *, data_root: Path | None) -> VisionTask:
        """The named task with its options checked; `data_root` None means ~/.cache/ticketx/data."""
        if name not in TASKS:
            raise TaskError(
                f"task.name must be one of the vision tasks {', '.join(TASKS)}, got {name!r}"
                + suggest(name, TASKS)
            )
        checked = VisionOptions.from_mapping(options, task=name)
        from .task import VisionTask  # the task, model and data modules: only once the options are good

        root = default_data_root() if data_root is None else Path(data_root)
        return VisionTask(name, checked, data_root=root)
