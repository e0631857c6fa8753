"""MNIST and Fashion-MNIST from the real data root; the missing-data errors; training with a mask."""

from __future__ import annotations

import re
import socket
import struct
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision import datasets

from ticketx.task import DataError, Plan, TaskError
from ticketx_vision.data import IDX_FILES, load_mnist
from ticketx_vision.plugin import VisionPlugin
from ticketx_vision.task import VisionTask

SLICE = {"train_subset": 2000, "val_size": 500, "test_subset": 1000}


@pytest.fixture(scope="module")
def mnist(data_root: Path) -> VisionTask:
    task = VisionPlugin().make_task("mnist", SLICE, data_root=data_root)
    task.splits()  # load once for the module
    return task


def test_slice_shapes_and_normalisation(mnist: VisionTask) -> None:
    s = mnist.splits()
    assert s.train_x.shape == (2000, 1, 28, 28) and s.train_x.dtype == torch.uint8  # held as stored
    assert s.val_x.shape == (500, 1, 28, 28) and s.test_x.shape == (1000, 1, 28, 28)
    assert s.train_y.dtype == torch.int64 and s.train_y.shape == (2000,)
    assert s.mean[0] == pytest.approx(0.1307 * 255, abs=0.5)  # MNIST's well-known mean, in 0..255
    assert s.std[0] == pytest.approx(0.3081 * 255, abs=0.5)
    x = s.normalise(s.train_x)
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05 and x.std().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(mnist.example_inputs(7), s.normalise(s.test_x[:7]))
    assert set(s.train_y.unique().tolist()) == set(range(10))
    assert mnist.splits() is s  # loaded once


def test_validation_comes_from_the_training_set(mnist: VisionTask, data_root: Path) -> None:
    s = mnist.splits()

    def rows(x: torch.Tensor) -> set[bytes]:  # the stored bytes of each image
        return {bytes(r.numpy()) for r in x.flatten(1)}

    raw_train = datasets.MNIST(str(data_root), train=True).data.flatten(1)
    raw_test = datasets.MNIST(str(data_root), train=False).data.flatten(1)
    train_rows = {bytes(r.numpy()) for r in raw_train}
    test_rows = {bytes(r.numpy()) for r in raw_test}
    train, val, test = rows(s.train_x), rows(s.val_x), rows(s.test_x)
    assert val <= train_rows and train <= train_rows and test <= test_rows
    assert not val & train, "a validation image is also a training image"
    assert not val & test_rows - train_rows  # never the test set


def test_train_lenet_with_half_of_fc1_pruned(mnist: VisionTask, recorder) -> None:
    model = mnist.build_model(seed=0)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(model.fc1.weight.shape, generator=g) < 0.5).float()  # (300, 784), half zero
    plan = Plan(steps=50, batch_size=60, optimizer="adam", lr=1.2e-3, eval_every=25)
    before = torch.get_rng_state()
    mnist.train(model, {"fc1.weight": mask}, plan, recorder)
    assert torch.equal(torch.get_rng_state(), before)
    w = model.fc1.weight.detach()
    assert torch.all(w[mask == 0] == 0), "a pruned weight is not exactly zero"
    assert (w[mask == 1] != 0).float().mean() > 0.99
    assert recorder.steps == list(range(1, 51))
    assert [step for step, _ in recorder.evals] == [25, 50]
    last = recorder.evals[-1][1]
    assert {"train_loss", "lr", "val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(last)
    assert last["val_accuracy"] > 0.6  # chance is 0.1; 50 Adam steps reach ~0.85
    metrics = mnist.evaluate(model)
    assert set(metrics) == {"val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    assert metrics["val_accuracy"] == pytest.approx(last["val_accuracy"])
    assert metrics["test_accuracy"] > 0.6


def test_training_with_dropout_replays_from_the_plan(data_root: Path, recorder) -> None:
    task = VisionPlugin().make_task("mnist", {**SLICE, "dropout": 0.5}, data_root=data_root)
    plan = Plan(steps=10, batch_size=60, optimizer="sgd", lr=0.05, eval_every=10)
    models = [task.build_model(seed=1) for _ in range(3)]
    task.train(models[0], {}, plan, recorder)
    torch.manual_seed(999)  # the global RNG must not matter
    task.train(models[1], {}, plan, recorder)
    task.train(models[2], {}, replace(plan, data_seed=1), recorder)
    assert torch.equal(models[0].fc1.weight, models[1].fc1.weight)
    assert not torch.equal(models[0].fc1.weight, models[2].fc1.weight)


def test_fashion_mnist_loads(data_root: Path) -> None:
    task = VisionPlugin().make_task(
        "fashion_mnist", {"val_size": 100, "train_subset": 300, "test_subset": 200}, data_root=data_root)
    s = task.splits()
    assert s.train_x.shape == (300, 1, 28, 28) and s.test_x.shape == (200, 1, 28, 28)
    assert s.mean[0] == pytest.approx(0.2860 * 255, abs=0.5)  # Fashion-MNIST's mean, not MNIST's
    assert "Ankle boot" in s.classes


def test_missing_mnist_names_the_folder_and_layout(tmp_path: Path) -> None:
    task = VisionPlugin().make_task("mnist", {"download": False}, data_root=tmp_path)
    task.build_model(0)  # needs no data
    folder = re.escape(str(tmp_path / "MNIST" / "raw"))
    with pytest.raises(DataError, match=rf"MNIST not found in {folder} \(task.download is false\): "
                       r"expected torchvision's layout, the four uncompressed IDX files "
                       r"train-images-idx3-ubyte, .*--data-root or the TICKETX_DATA variable"
                       r".*task.download = true"):
        task.evaluate(task.build_model(0))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "FashionMNIST" / "raw"))):
        load_mnist(tmp_path, fashion=True, download=False)


def test_partly_missing_mnist_lists_what_is_missing(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES[:3]:
        (raw / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"\(missing: t10k-labels-idx1-ubyte\)"):
        load_mnist(tmp_path, fashion=False, download=False)


def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match=rf"MNIST not found in {re.escape(str(tmp_path))}.*"
                       r"downloading failed: network is unreachable\): expected torchvision's layout"):
        load_mnist(tmp_path, fashion=False, download=True)


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every URL torchvision opens fails as it does on a machine without DNS; its own download code runs."""

    def unreachable(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)


@pytest.mark.parametrize("task, name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_missing_mnist_without_network_is_short_and_writes_nothing(
    task: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision makes <root>/MNIST/raw before it downloads and lists every mirror in its error: what
    ticketx prints is one line (where, which files, how to get them) and the data root stays empty."""
    no_network(monkeypatch)
    (tmp_path / "empty").mkdir()
    (tmp_path / "absent").mkdir()
    for root in (tmp_path / "empty", tmp_path / "absent" / "not" / "made"):  # torchvision makes root too
        with pytest.raises(DataError) as failed:
            VisionPlugin().make_task(task, {}, data_root=root).prepare()
        message = str(failed.value)
        assert message.count("\n") <= 2, message
        assert f"{name} not found in {root / name / 'raw'} (downloading failed: [Errno -2] Name or service not " \
               "known)" in message
        assert "train-images-idx3-ubyte" in message and "(missing: all four)" in message
        assert f"torchvision.datasets.{name}(root, download=True)" in message and "--data-root" in message
        assert "Tried" not in message  # torchvision's list of mirrors is not pasted in
    assert list((tmp_path / "empty").iterdir()) == [] and list((tmp_path / "absent").iterdir()) == []


def test_failed_download_removes_only_what_it_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / IDX_FILES[0]).write_bytes(b"kept")
    (tmp_path / "other").mkdir()

    def partial(self: object) -> None:  # writes part of an archive, then the network goes
        (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"partial")
        (raw / "tmp").mkdir()
        raise RuntimeError("Error downloading train-labels-idx1-ubyte.gz:\nTried https://x/, got:\n"
                           "<urlopen error timed out>\n")

    monkeypatch.setattr(datasets.MNIST, "download", partial)
    with pytest.raises(DataError, match=r"downloading failed: timed out\): .*\(missing: train-labels-idx1-ubyte, "
                                        r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte\)"):
        load_mnist(tmp_path, fashion=False, download=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "MNIST", "MNIST/raw", f"MNIST/raw/{IDX_FILES[0]}", "other"]


def test_unreadable_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match=rf"MNIST in {re.escape(str(raw))} cannot be read: "):
        load_mnist(tmp_path, fashion=False, download=False)


def test_val_size_beyond_the_training_set(data_root: Path, recorder) -> None:
    task = VisionPlugin().make_task("mnist", {"val_size": 60000}, data_root=data_root)
    plan = Plan(steps=1, batch_size=60, optimizer="adam", lr=1e-3)
    with pytest.raises(TaskError, match=r"task.val_size must be smaller than the mnist training set "
                       r"\(60000 images\), got 60000"):
        task.train(task.build_model(0), {}, plan, recorder)


def write_idx(folder: Path, side: int, n_train: int = 12, n_test: int = 4) -> None:
    """MNIST's four IDX files (big-endian header, then uint8 data) holding side x side images."""
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        g = torch.Generator().manual_seed(n)
        images = torch.randint(0, 256, (n, side, side), dtype=torch.uint8, generator=g)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        head = struct.pack(">IIII", 0x803, n, side, side)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(head + bytes(images.flatten().numpy()))
        labels_head = struct.pack(">II", 0x801, n)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels_head + bytes(labels.numpy()))


def test_idx_files_of_the_wrong_shape(tmp_path: Path) -> None:
    write_idx(tmp_path / "MNIST" / "raw", side=10)
    data = load_mnist(tmp_path, fashion=False, download=False)
    assert data.train_x.shape == (12, 1, 10, 10) and data.train_y.tolist()[:3] == [0, 1, 2]
    task = VisionPlugin().make_task("mnist", {"val_size": 2}, data_root=tmp_path)
    with pytest.raises(DataError, match=r"MNIST/raw holds images of shape \(1, 10, 10\) in 10 classes; "
                       r"mnist should have \(1, 28, 28\) in 10"):
        task.splits()


def test_image_size_resizes_a_builtin_dataset(tmp_path: Path) -> None:
    write_idx(tmp_path / "MNIST" / "raw", side=10)
    task = VisionPlugin().make_task("mnist", {"val_size": 2, "image_size": 28}, data_root=tmp_path)
    s = task.splits()
    assert s.train_x.shape == (10, 1, 28, 28) and s.test_x.shape == (4, 1, 28, 28)
    assert task.build_model(0)(s.normalise(s.val_x)).shape == (2, 10)


def test_batch_size_beyond_the_training_split_is_refused_before_training(tmp_path: Path) -> None:
    """check_plan, which the core calls before any MLflow run opens, measures the split left after
    task.val_size and task.train_subset."""
    write_idx(tmp_path / "MNIST" / "raw", side=28, n_train=12)
    plan = Plan(steps=1, batch_size=10, optimizer="adam", lr=1e-3)
    task = VisionPlugin().make_task("mnist", {"val_size": 2}, data_root=tmp_path)
    task.check_plan(plan)  # 10 of 10: one full batch
    with pytest.raises(TaskError, match=r"^train.batch_size must be at most the 10 images of the mnist training "
                                        r"split \(after task.val_size = 2 held out\), got 11$"):
        task.check_plan(replace(plan, batch_size=11))
    task = VisionPlugin().make_task("mnist", {"val_size": 2, "train_subset": 4}, data_root=tmp_path)
    with pytest.raises(TaskError, match=r"at most the 4 images .*task.val_size = 2 held out and "
                                        r"task.train_subset = 4 taken\), got 10"):
        task.check_plan(plan)


def test_scoring_sample_is_balanced_normalised_and_from_the_training_split(mnist: VisionTask) -> None:
    """SNIP's and GraSP's sample: 10 training images of each class, normalised, never augmented; never a
    validation or test image. SynFlow's input is one image's shape."""
    s = mnist.splits()
    batches = mnist.scoring_batches(10, seed=4)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    probe = torch.randn(784, dtype=torch.float64)
    train = set((s.normalise(s.train_x).flatten(1).double() @ probe).tolist())
    held_out = set((s.normalise(torch.cat([s.val_x, s.test_x])).flatten(1).double() @ probe).tolist())
    sample = (x.flatten(1).double() @ probe).tolist()
    assert all(v in train for v in sample) and not any(v in held_out for v in sample)
    assert mnist.scoring_input_shape() == (1, 28, 28)
