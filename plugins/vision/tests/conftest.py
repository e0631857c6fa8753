"""Shared fixtures for the vision plugin's tests: one torch thread, the data root, a recording observer."""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg

from ticketx_vision.data import CIFAR10_CLASSES

DATA_ROOT = Path(os.environ.get("TICKETX_DATA", Path(__file__).parents[3] / ".." / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    # torchvision 0.29 warns on every encode/decode call that TorchCodec will take them over
    config.addinivalue_line(
        "filterwarnings",
        "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning",
    )


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The build machines have 2 cores and another process holds one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root (../shared/data beside the repo, or $TICKETX_DATA); skips where absent."""
    if not (DATA_ROOT / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found in {DATA_ROOT.resolve()} (set TICKETX_DATA to the data root)")
    return DATA_ROOT


class Recorder:
    """A minimal Observer that records what training reports."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.evals: list[tuple[int, dict[str, float]]] = []

    def on_step(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.evals.append((step, dict(metrics)))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def class_image(label: int, index: int, *, size: int = 32) -> torch.Tensor:
    """A flat-coloured (3, size, size) uint8 image whose red channel encodes its class (survives JPEG)."""
    image = torch.empty(3, size, size, dtype=torch.uint8)
    image[0], image[1], image[2] = 20 * label + 10, 40 + 30 * index, 200 - 10 * label
    return image


@pytest.fixture
def make_cifar_tar() -> Callable[..., Path]:
    """Build a tarball in CIFAR-10 JPEG layout: images/{train,test}/<class>/NNNN.jpg, members shuffled."""

    def make(
        path: Path, *, classes: tuple[str, ...] = CIFAR10_CLASSES, train: int = 3, test: int = 2,
        corrupt: str | None = None,
    ) -> Path:
        members: list[tuple[str, bytes]] = []
        for split, n in (("train", train), ("test", test)):
            for label, cls in enumerate(classes):
                for i in range(n):
                    name = f"images/{split}/{cls}/{i:04d}.jpg"
                    data = bytes(encode_jpeg(class_image(label, i), quality=95).numpy())
                    members.append((name, b"not a jpeg" if name == corrupt else data))
        random.Random(0).shuffle(members)  # the loader must not depend on archive order
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as archive:
            for d in ("images", "images/train", "images/test"):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return path

    return make


@pytest.fixture
def make_cifar_tree() -> Callable[..., Path]:
    """Build an ImageFolder tree of JPEGs, folder/{train,test}/<class>/NNNN.jpg, in CIFAR-10's classes."""

    def make(folder: Path, *, train: int = 2, test: int = 1) -> Path:
        for split, n in (("train", train), ("test", test)):
            for label, cls in enumerate(CIFAR10_CLASSES):
                (folder / split / cls).mkdir(parents=True)
                for i in range(n):
                    data = bytes(encode_jpeg(class_image(label, i), quality=95).numpy())
                    (folder / split / cls / f"{i:04d}.jpg").write_bytes(data)
        return folder

    return make
