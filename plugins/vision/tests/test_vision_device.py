"""Data held as stored on the training device: batches, augmentation and a short training run are bit for
bit what the earlier float-on-the-CPU way gave; channels_last; the device path on torch's meta device."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from ticketx.task import Plan, TaskError
from ticketx.training import EpochBatches, cross_entropy_loss, evaluate_classifier, fit
from ticketx_vision.augment import random_crop_flip
from ticketx_vision.data import ImageData, Splits, StoredSplits, _channel_stats, make_splits, stored_splits
from ticketx_vision.options import VisionOptions
from ticketx_vision.plugin import VisionPlugin
from ticketx_vision.task import TrainingBatches, VisionTask, use_channels_last

ROOT = Path("/nonexistent-data-root")
SPLIT = {"val_size": 20, "split_seed": 3, "train_subset": 0, "test_subset": 0, "dataset": "toy"}


def old_random_crop_flip(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """augment.random_crop_flip as it was before the data moved to the device (CPU only), for reference."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    rows = dy[:, None] + torch.arange(h)
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]
    batch = torch.arange(b)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def old_make_splits(data: ImageData, *, val_size: int, split_seed: int, train_subset: int, test_subset: int,
                    dataset: str) -> Splits:
    """data.make_splits as it was before the splits were kept as stored (checks left out), for reference."""
    g = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(data.train_x.shape[0], generator=g)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    mean, std = _channel_stats(data.train_x, exclude=val_idx)
    if train_subset:
        train_idx = train_idx[:train_subset]
    test_idx = torch.randperm(data.test_x.shape[0], generator=g)[:test_subset] if test_subset else None
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.float().sub_(m).div_(s)

    test_x, test_y = (data.test_x, data.test_y) if test_idx is None else (data.test_x[test_idx], data.test_y[test_idx])
    return Splits(train_x=norm(data.train_x[train_idx]), train_y=data.train_y[train_idx],
                  val_x=norm(data.train_x[val_idx]), val_y=data.train_y[val_idx],
                  test_x=norm(test_x), test_y=test_y, classes=data.classes, mean=mean, std=std)


def image_data(n_train: int = 120, n_test: int = 40, channels: int = 3, side: int = 16) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(
        train_x=torch.randint(0, 256, (n_train, channels, side, side), dtype=torch.uint8, generator=g),
        train_y=torch.randint(0, 10, (n_train,), generator=g),
        test_x=torch.randint(0, 256, (n_test, channels, side, side), dtype=torch.uint8, generator=g),
        test_y=torch.randint(0, 10, (n_test,), generator=g),
        classes=tuple(str(i) for i in range(10)), source="toy",
    )


def test_stored_splits_normalise_to_exactly_the_old_float_splits() -> None:
    data = image_data()
    stored, old = stored_splits(data, **SPLIT), old_make_splits(data, **SPLIT)
    assert stored.train_x.dtype == torch.uint8 and stored.train_x.device.type == "cpu"
    assert (stored.mean, stored.std, stored.classes) == (old.mean, old.std, old.classes)
    whole = make_splits(data, **{**SPLIT, "test_subset": 0})
    for split in ("train", "val", "test"):
        assert torch.equal(stored.normalise(getattr(stored, f"{split}_x")), getattr(old, f"{split}_x")), split
        assert torch.equal(getattr(stored, f"{split}_y"), getattr(old, f"{split}_y")), split
        assert torch.equal(getattr(whole, f"{split}_x"), getattr(old, f"{split}_x")), split
    # normalising a batch is normalising the whole set, then slicing it: bit for bit
    idx = torch.tensor([5, 0, 77, 31])
    assert torch.equal(stored.normalise(stored.train_x[idx]), old.train_x[idx])
    cl = stored.normalise(stored.train_x[idx], memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, old.train_x[idx])


@pytest.mark.parametrize("augment", [False, True])
def test_training_batches_are_the_old_batches(augment: bool) -> None:
    data = image_data()
    stored, old = stored_splits(data, **SPLIT), old_make_splits(data, **SPLIT)
    plan = Plan(steps=100, batch_size=16, optimizer="sgd", lr=0.1, data_seed=4)
    new = TrainingBatches(stored, plan, augment=augment)
    before = EpochBatches(old.train_x, old.train_y, 16, 4, transform=old_random_crop_flip if augment else None)
    cl = TrainingBatches(stored, plan, augment=augment, memory_format=torch.channels_last)
    for step in (0, 1, 5, 6, 13):  # 6 batches per epoch: steps in three epochs
        (x, y), (x0, y0), (xc, yc) = new(step), before(step), cl(step)
        assert x.dtype == torch.float32 and x.is_contiguous()
        assert torch.equal(x, x0) and torch.equal(y, y0), step
        assert xc.is_contiguous(memory_format=torch.channels_last) and torch.equal(xc, x0) and torch.equal(yc, y0)


def test_augmentation_is_the_old_augmentation() -> None:
    x = torch.randn(50, 3, 32, 32)
    for seed in range(3):
        new = random_crop_flip(x, torch.Generator().manual_seed(seed))
        old = old_random_crop_flip(x, torch.Generator().manual_seed(seed))
        assert torch.equal(new, old) and new.is_contiguous()
        cl = random_crop_flip(x, torch.Generator().manual_seed(seed), memory_format=torch.channels_last)
        assert torch.equal(cl, old) and cl.is_contiguous(memory_format=torch.channels_last)


def toy_task(name: str = "cifar10", data: ImageData | None = None, **options: object) -> VisionTask:
    """A vision task whose splits are a small synthetic dataset (no data root read)."""
    task = VisionPlugin().make_task(name, {"val_size": SPLIT["val_size"], "split_seed": 3, **options},
                                    data_root=ROOT)
    task._splits = stored_splits(data or image_data(side=32), **SPLIT)
    return task


class Recorder:
    def __init__(self) -> None:
        self.evals: list[tuple[int, dict[str, float]]] = []

    def on_step(self, step: int, model: torch.nn.Module) -> None:
        pass

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, dict(metrics)))


def train_the_old_way(task: VisionTask, data: ImageData, model: torch.nn.Module, masks: dict, plan: Plan,
                      observer: Recorder) -> None:
    """VisionTask.train as it was: whole float splits on the CPU, EpochBatches with the old augmentation."""
    old = old_make_splits(data, **SPLIT)
    batches = EpochBatches(old.train_x, old.train_y, plan.batch_size, plan.data_seed,
                           transform=old_random_crop_flip if task.options.augment else None)
    splits = {"train": (old.train_x, old.train_y), "val": (old.val_x, old.val_y), "test": (old.test_x, old.test_y)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.data_seed * 1_000_003 + plan.start_step)
        fit(model, masks, plan, observer, batch_at=batches, loss_fn=cross_entropy_loss,
            evaluate=lambda m, split: evaluate_classifier(m, *splits[split]), score_train=task.options.score_train)


@pytest.mark.parametrize(("name", "options"), [
    ("cifar10", {"model": "conv2", "dropout": 0.5}),  # augmented by default; dropout draws from the fork
    ("mnist", {"model": "lenet300_100"}),
])
def test_cpu_fp32_training_is_bit_for_bit_the_old_way(name: str, options: dict) -> None:
    channels = 3 if name == "cifar10" else 1
    side = 32 if name == "cifar10" else 28
    data = image_data(channels=channels, side=side)
    task = toy_task(name, data, **options)
    plan = Plan(steps=6, batch_size=8, optimizer="adam", lr=1e-3, eval_every=3, data_seed=2)
    models = [task.build_model(seed=1) for _ in range(2)]
    weight = "features.0.weight" if name == "cifar10" else "fc1.weight"
    mask = (torch.rand(dict(models[0].named_parameters())[weight].shape,
                       generator=torch.Generator().manual_seed(0)) < 0.5).float()
    new, old = Recorder(), Recorder()
    task.train(models[0], {weight: mask}, plan, new)
    train_the_old_way(task, data, models[1], {weight: mask}, plan, old)
    assert new.evals == old.evals and len(new.evals) == 2
    for (k, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items()):
        assert torch.equal(a, b), k
    assert task._on_device == {}, "no second copy of the data on the CPU"
    assert task.splits().train_x.dtype == torch.uint8


def test_channels_last_option_and_spec() -> None:
    assert VisionOptions().channels_last == "auto"
    for value in (True, False, "auto"):
        task = toy_task(channels_last=value)
        assert task.options.channels_last == value
        spec = task.spec()
        assert ("channels_last" in spec["options"]) == (value != "auto")  # left out at its default
        again = VisionPlugin().make_task(spec["task"], spec["options"], data_root=ROOT)
        assert again.spec() == spec and again.options.channels_last == value
    for bad in ("yes", 1, None):
        with pytest.raises(TaskError, match=r'task.channels_last must be true, false or "auto", got '):
            toy_task(channels_last=bad)


@pytest.mark.parametrize(("option", "model", "device", "precision", "tf32", "expected"), [
    ("auto", "conv2", "cpu", "fp32", False, False),  # faster, but changes fp32 results: not by default
    ("auto", "resnet20", "cpu", "bf16", False, True),
    ("auto", "conv6", "cuda:0", "fp32", False, False),
    ("auto", "conv6", "cuda:0", "fp32", True, True),
    ("auto", "vgg19", "cuda:1", "bf16", False, True),
    ("auto", "conv4", "cuda:0", "fp16", False, True),
    ("auto", "lenet300_100", "cpu", "bf16", False, False),  # no convolution
    (True, "conv2", "cpu", "fp32", False, True),
    (True, "lenet300_100", "cuda:0", "bf16", False, False),
    (False, "resnet20", "cuda:0", "bf16", False, False),
])
def test_when_channels_last_is_used(option, model, device, precision, tf32, expected) -> None:
    plan = Plan(steps=1, batch_size=1, optimizer="sgd", lr=0.1, device=device, precision=precision, tf32=tf32)
    assert use_channels_last(option, model, plan) is expected


def test_training_with_channels_last_batches() -> None:
    task = toy_task(model="conv2", channels_last=True)
    model = task.build_model(seed=0)
    seen: list[tuple[bool, bool]] = []  # (training, channels-last input) per forward pass
    model.register_forward_pre_hook(lambda m, args: seen.append(
        (m.training, args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())))
    mask = torch.ones_like(model.features[2].weight)
    mask[::2] = 0
    plan = Plan(steps=4, batch_size=8, optimizer="adam", lr=1e-3, eval_every=2)
    task.train(model, {"features.2.weight": mask}, plan, Recorder())
    assert seen and all(cl for _, cl in seen)  # training and evaluation batches alike
    assert all(p.is_contiguous() for p in model.parameters())  # the weights keep the default layout
    assert torch.all(model.features[2].weight[::2] == 0)
    seen.clear()
    task.evaluate(model)  # outside train(): NCHW slices, as before
    assert seen and not any(cl for _, cl in seen)


def test_the_device_path_on_the_meta_device() -> None:
    """torch's meta device stands in for a GPU: every tensor of a batch must be made on the data's device
    (a CPU tensor mixed in fails there), and the copy is made once per device."""
    task = toy_task()
    meta = task.splits_on("meta")
    assert meta is task.splits_on(torch.device("meta")) and task.splits_on("cpu") is task.splits()
    assert meta.train_x.device.type == "meta" and meta.train_x.dtype == torch.uint8
    plan = Plan(steps=10, batch_size=8, optimizer="sgd", lr=0.1, device="meta")
    for augment in (False, True):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x, y = TrainingBatches(meta, plan, augment=augment, memory_format=fmt)(3)
            assert (x.device.type, x.dtype, tuple(x.shape)) == ("meta", torch.float32, (8, 3, 32, 32))
            assert y.device.type == "meta" and y.shape == (8,)
    assert task.example_inputs(3).device.type == "cpu"


def test_stored_splits_move_once() -> None:
    s = stored_splits(image_data(), **SPLIT)
    assert s.to("cpu") is s
    m = s.to("meta")
    assert isinstance(m, StoredSplits) and (m.mean, m.std) == (s.mean, s.std)
    assert all(getattr(m, k).device.type == "meta" for k in ("train_x", "train_y", "val_x", "test_y"))
    assert replace(s, classes=("x",) * 10).normalise(s.val_x).dtype == torch.float32
