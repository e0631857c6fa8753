"""CIFAR-10: the places looked in, in order; the tarball decoded once and cached; training a convnet."""

from __future__ import annotations

import pickle
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from safetensors.torch import save_file
from torchvision import datasets

import ticketx_vision.task as vtask
from ticketx.task import DataError, Plan, TaskError
from ticketx_vision.data import CIFAR10_CLASSES, load_cifar10
from ticketx_vision.plugin import VisionPlugin

TARBALL = Path("cifar10-jpeg") / "cifar10-jpeg-q75.tar.gz"
Maker = Callable[..., Path]  # the conftest fixtures that write CIFAR-10 layouts


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("TICKETX_CACHE", str(folder))
    return folder


def test_tarball_decoded_then_loaded_from_the_cache(
    tmp_path: Path, cache: Path, make_cifar_tar: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    make_cifar_tar(root / TARBALL)
    listing = sorted(p for p in root.rglob("*"))
    first = VisionPlugin().make_task("cifar10", {"val_size": 5}, data_root=root).splits()
    assert sorted(p for p in root.rglob("*")) == listing, "the data root was written to"
    cached = list((cache / "vision").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".safetensors", cached  # no temp file left behind

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_decoding)  # data.py imports it where it decodes
    second = VisionPlugin().make_task("cifar10", {"val_size": 5}, data_root=root).splits()
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert second.classes == CIFAR10_CLASSES


def test_tarball_images_and_labels(tmp_path: Path, cache: Path, make_cifar_tar: Maker) -> None:
    data = load_cifar10(make_cifar_tar(tmp_path / TARBALL).parents[1], download=False, cache=cache)
    assert data.train_x.shape == (30, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (20, 3, 32, 32)
    assert data.classes == CIFAR10_CLASSES
    # the red channel encodes the class (conftest.class_image); labels follow the sorted class names
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        red = x[:, 0].float().mean(dim=(1, 2))
        assert torch.allclose(red, 20 * y.float() + 10, atol=2)
    assert data.train_y.tolist() == sorted(data.train_y.tolist())  # class, then file name
    green = data.train_x[:3, 1].float().mean(dim=(1, 2))  # 0000, 0001, 0002 of airplane
    assert torch.allclose(green, torch.tensor([40.0, 70.0, 100.0]), atol=2)
    assert "cached in" in data.source


def test_unreadable_cache_is_rebuilt(tmp_path: Path, cache: Path, make_cifar_tar: Maker) -> None:
    root = make_cifar_tar(tmp_path / TARBALL).parents[1]
    good = load_cifar10(root, download=False, cache=cache)
    (path,) = (cache / "vision").iterdir()
    path.write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match=rf"ignoring the unreadable dataset cache {re.escape(str(path))}"):
        again = load_cifar10(root, download=False, cache=cache)
    assert torch.equal(again.train_x, good.train_x)
    assert path.stat().st_size > 1000  # written again


def test_cache_with_wrong_tensors_is_rebuilt(tmp_path: Path, cache: Path, make_cifar_tar: Maker) -> None:
    root = make_cifar_tar(tmp_path / TARBALL).parents[1]
    good = load_cifar10(root, download=False, cache=cache)
    (path,) = (cache / "vision").iterdir()
    x = torch.zeros(3, 3, 32, 32)  # float, not the uint8 the loader writes
    save_file({"train_x": x, "train_y": torch.zeros(3, dtype=torch.long), "test_x": x.clone(),
               "test_y": torch.zeros(3, dtype=torch.long)}, str(path), metadata={"classes": "[]"})
    with pytest.warns(UserWarning, match=r"unreadable dataset cache .*train tensors are torch.float32"):
        again = load_cifar10(root, download=False, cache=cache)
    assert torch.equal(again.train_x, good.train_x)


def test_unwritable_cache_is_skipped_with_a_warning(tmp_path: Path, make_cifar_tar: Maker) -> None:
    root = make_cifar_tar(tmp_path / TARBALL).parents[1]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match=r"cannot cache the decoded dataset in .*set TICKETX_CACHE"):
        data = load_cifar10(root, download=False, cache=blocker)
    assert data.train_x.shape[0] == 30


def test_tarball_of_other_classes(tmp_path: Path, cache: Path, make_cifar_tar: Maker) -> None:
    root = make_cifar_tar(tmp_path / TARBALL, classes=("cat", "dog", "owl")).parents[1]
    with pytest.raises(DataError, match=r"does not hold CIFAR-10: expected the class folders airplane, "
                       r"automobile, .*found cat, dog, owl \(use the imagefolder task"):
        load_cifar10(root, download=False, cache=cache)


def test_undecodable_member_is_named(tmp_path: Path, cache: Path, make_cifar_tar: Maker) -> None:
    root = make_cifar_tar(tmp_path / TARBALL, corrupt="images/train/cat/0001.jpg").parents[1]
    with pytest.raises(DataError, match=r"cannot decode the image train/cat/0001.jpg"):
        load_cifar10(root, download=False, cache=cache)


def test_not_a_tarball(tmp_path: Path, cache: Path) -> None:
    (tmp_path / TARBALL).parent.mkdir()
    (tmp_path / TARBALL).write_bytes(b"\x1f\x8b truncated gzip")
    with pytest.raises(DataError, match=rf"cannot read the tarball {re.escape(str(tmp_path / TARBALL))}"):
        load_cifar10(tmp_path, download=False, cache=cache)


def test_tarball_without_images(tmp_path: Path, cache: Path, make_cifar_tar: Maker) -> None:
    root = make_cifar_tar(tmp_path / TARBALL, classes=()).parents[1]
    with pytest.raises(DataError, match=r"no training images found: expected members images/\{train,test\}"):
        load_cifar10(root, download=False, cache=cache)


def test_image_tree_is_read_before_the_tarball(
    tmp_path: Path, cache: Path, make_cifar_tree: Maker
) -> None:
    make_cifar_tree(tmp_path / "cifar10-jpeg" / "images")
    (tmp_path / TARBALL).write_bytes(b"never opened")
    data = load_cifar10(tmp_path, download=False, cache=cache)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (10, 3, 32, 32)
    assert torch.allclose(data.train_x[:, 0].float().mean(dim=(1, 2)), 20 * data.train_y.float() + 10, atol=2)
    assert not cache.exists()  # only tarballs are cached


def write_torchvision_batches(root: Path) -> None:
    """A tiny cifar-10-batches-py in torchvision's format (the md5 check is patched out by the caller)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i, (i + 1) % 10]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)


def test_torchvision_batches_come_first(
    tmp_path: Path, cache: Path, make_cifar_tar: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cifar_tar(tmp_path / TARBALL)
    write_torchvision_batches(tmp_path)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *a, **k: True)
    data = load_cifar10(tmp_path, download=False, cache=cache)
    assert data.train_x.shape == (10, 3, 32, 32) and data.test_x.shape == (2, 3, 32, 32)
    assert data.train_y.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert data.classes == CIFAR10_CLASSES
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)["data"][0]
    torchvision_row = torch.from_numpy(raw).reshape(3, 32, 32)  # channels first, as the batches store it
    assert torch.equal(data.train_x[0], torchvision_row)


def test_corrupt_torchvision_batches_are_an_error(
    tmp_path: Path, cache: Path, make_cifar_tar: Maker
) -> None:
    make_cifar_tar(tmp_path / TARBALL)  # present, but the batches folder comes first
    write_torchvision_batches(tmp_path)  # fails torchvision's md5 check
    with pytest.raises(DataError, match=r"torchvision cannot load CIFAR-10 from .*cifar-10-batches-py: "
                       r"Dataset not found or corrupted.*repair or remove that folder"):
        load_cifar10(tmp_path, download=False, cache=cache)


def test_missing_cifar_names_every_place_looked(tmp_path: Path, cache: Path) -> None:
    task = VisionPlugin().make_task("cifar10", {"download": False}, data_root=tmp_path)
    root = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=(
        rf"CIFAR-10 not found \(task.download is false\): looked for torchvision's batches in "
        rf"{root}/cifar-10-batches-py, an ImageFolder tree of JPEGs {root}/cifar10-jpeg/images/"
        rf"\{{train,test\}}/<class>/\*.jpg, and that tree archived as {root}/cifar10-jpeg/"
        rf"cifar10-jpeg-q75.tar.gz .*--data-root or the TICKETX_DATA variable")):
        task.splits()


def test_failed_cifar_download(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError, match=r"CIFAR-10 not found and downloading failed \(network is "
                       r"unreachable\): looked for torchvision's batches in"):
        load_cifar10(tmp_path, download=True, cache=cache)


def test_missing_cifar_without_network_is_short_and_writes_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's real download code runs and fails: one line saying where ticketx looked and how to get
    the data, and nothing left under the data root (a half-made cifar-10-batches-py would be read next)."""

    def unreachable(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    (tmp_path / "empty").mkdir()
    (tmp_path / "absent").mkdir()
    for root in (tmp_path / "empty", tmp_path / "absent" / "not" / "made"):  # torchvision makes root too
        with pytest.raises(DataError) as failed:
            VisionPlugin().make_task("cifar10", {}, data_root=root).prepare()
        message = str(failed.value)
        assert message.count("\n") <= 2, message
        assert message.startswith("CIFAR-10 not found and downloading failed ([Errno -2] Name or service not "
                                  f"known): looked for torchvision's batches in {root / 'cifar-10-batches-py'}, ")
        assert f"{root / TARBALL}" in message and "images/{train,test}/<class>/NNNN.jpg" in message
        assert "torchvision.datasets.CIFAR10(root, download=True)" in message and "--data-root" in message
    assert list((tmp_path / "empty").iterdir()) == [] and list((tmp_path / "absent").iterdir()) == []


def test_failed_cifar_download_removes_its_partial_files(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "MNIST").mkdir()  # another dataset under the same root is left alone

    def partial(self: object) -> None:
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"partial")
        (tmp_path / "cifar-10-batches-py").mkdir()
        raise OSError("connection reset")

    monkeypatch.setattr(datasets.CIFAR10, "download", partial)
    with pytest.raises(DataError, match=r"downloading failed \(connection reset\)"):
        load_cifar10(tmp_path, download=True, cache=cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]


def test_train_resnet20_with_augmentation_and_a_mask(
    tmp_path: Path, cache: Path, make_cifar_tar: Maker, monkeypatch: pytest.MonkeyPatch, recorder
) -> None:
    root = make_cifar_tar(tmp_path / TARBALL).parents[1]
    calls: list[tuple[int, ...]] = []
    real = vtask.random_crop_flip

    def spy(x: torch.Tensor, g: torch.Generator, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(x.shape))
        assert x.dtype == torch.float32  # normalised before the crop: the zero padding is the mean
        return real(x, g, **kwargs)

    monkeypatch.setattr(vtask, "random_crop_flip", spy)
    task = VisionPlugin().make_task("cifar10", {"model": "resnet20", "val_size": 10}, data_root=root)
    model = task.build_model(0)
    name = "layer2.0.conv1.weight"
    mask = torch.ones_like(dict(model.named_parameters())[name])
    mask[::2] = 0  # prune every other output channel's kernel
    plan = Plan(steps=3, batch_size=4, optimizer="sgd", lr=0.05, momentum=0.9, eval_every=3)
    task.train(model, {name: mask}, plan, recorder)
    assert calls == [(4, 3, 32, 32)] * 3  # augmented on by default for cifar10
    assert torch.all(dict(model.named_parameters())[name][::2] == 0)
    assert [s for s, _ in recorder.evals] == [3]
    assert 0.0 <= recorder.evals[0][1]["test_accuracy"] <= 1.0

    calls.clear()
    plain = VisionPlugin().make_task("cifar10", {"model": "conv2", "val_size": 10, "augment": False},
                                     data_root=root)
    plain.train(plain.build_model(0), {}, plan, recorder)
    assert calls == []


def test_batch_larger_than_the_training_set(
    tmp_path: Path, cache: Path, make_cifar_tar: Maker, recorder
) -> None:
    root = make_cifar_tar(tmp_path / TARBALL).parents[1]
    task = VisionPlugin().make_task("cifar10", {"val_size": 10}, data_root=root)
    with pytest.raises(TaskError, match=r"train.batch_size \(64\) exceeds the training set \(20 examples\)"):
        task.train(task.build_model(0), {}, Plan(steps=1, batch_size=64, optimizer="sgd", lr=0.1), recorder)


def test_real_cifar10_tarball(data_root: Path, cache: Path) -> None:
    if not (data_root / TARBALL).is_file():
        pytest.skip(f"{data_root / TARBALL} not found")
    data = load_cifar10(data_root, download=False, cache=cache)
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [5000] * 10
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    # every 10th image: all classes (the rows are sorted by class); CIFAR-10: 0.491, 0.482, 0.447
    mean = data.train_x[::10].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.491, 0.482, 0.447]), atol=0.01)
