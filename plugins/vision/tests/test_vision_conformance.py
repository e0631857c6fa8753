"""The vision plugin passes the conformance kit (ticketx.testing) on small slices of MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketx.testing import check_task
from ticketx_vision.plugin import VisionPlugin

SMALL = {"train_subset": 200, "val_size": 100, "test_subset": 100}


@pytest.mark.parametrize("model", ["lenet300_100", "conv2"])
def test_mnist_passes_the_conformance_kit(model: str, data_root: Path, tmp_path: Path) -> None:
    task = VisionPlugin().make_task("mnist", {"model": model, **SMALL}, data_root=data_root)
    check_task(task, plugin="vision", name="mnist", tmp_dir=tmp_path)
