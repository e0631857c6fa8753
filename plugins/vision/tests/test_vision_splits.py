"""make_splits: validation held out of the training set, subsets, per-channel normalisation."""

from __future__ import annotations

import pytest
import torch

from ticketx.task import TaskError
from ticketx_vision.data import ImageData, make_splits


def image_data(n_train: int = 100, n_test: int = 40) -> ImageData:
    """Random images whose labels are their row numbers, so each split says where its rows came from."""
    g = torch.Generator().manual_seed(0)
    return ImageData(
        train_x=torch.randint(0, 256, (n_train, 3, 4, 4), dtype=torch.uint8, generator=g),
        train_y=torch.arange(n_train),
        test_x=torch.randint(0, 256, (n_test, 3, 4, 4), dtype=torch.uint8, generator=g),
        test_y=torch.arange(n_test),
        classes=("a", "b"), source="synthetic",
    )


def split(data: ImageData | None = None, **kw: int):
    args = {"val_size": 20, "split_seed": 0, "train_subset": 0, "test_subset": 0} | kw
    return make_splits(data or image_data(), dataset="toy", **args)


def test_validation_is_held_out_of_the_training_set() -> None:
    s = split()
    train, val = set(s.train_y.tolist()), set(s.val_y.tolist())
    assert len(val) == 20 and len(train) == 80
    assert train | val == set(range(100)) and not train & val
    assert s.test_y.tolist() == list(range(40))  # the test split untouched, in order
    assert sorted(s.val_y.tolist()) != list(range(20))  # a permutation, not the first rows


def test_split_seed() -> None:
    assert torch.equal(split(split_seed=3).val_y, split(split_seed=3).val_y)
    assert not torch.equal(split(split_seed=3).val_y, split(split_seed=4).val_y)


def test_train_subset_is_a_prefix_of_the_full_training_split() -> None:
    full, sub = split(), split(train_subset=30)
    assert torch.equal(sub.train_y, full.train_y[:30])
    assert torch.equal(sub.val_y, full.val_y)
    assert sub.mean == full.mean  # statistics of the whole training split, not the subset


def test_test_subset_is_seeded() -> None:
    a, b = split(test_subset=10), split(test_subset=10, split_seed=1)
    assert a.test_x.shape[0] == 10 and len(set(a.test_y.tolist())) == 10
    assert torch.equal(a.test_y, split(test_subset=10).test_y)
    assert not torch.equal(a.test_y, b.test_y)


def test_normalised_with_the_training_statistics() -> None:
    data = image_data()
    s = split(data)
    kept = data.train_x[s.train_y].double()  # labels are row numbers
    mean = kept.mean(dim=(0, 2, 3))
    std = kept.std(dim=(0, 2, 3), unbiased=False)
    assert s.mean == pytest.approx(mean.tolist(), rel=1e-9)
    assert s.std == pytest.approx(std.tolist(), rel=1e-9)
    assert s.train_x.dtype == torch.float32
    assert s.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    expected_val = (data.train_x[s.val_y].double() - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(s.val_x.double(), expected_val, atol=1e-5)


def test_a_constant_channel_is_not_divided_by_zero() -> None:
    data = image_data()
    flat = ImageData(**{**data.__dict__, "train_x": torch.full_like(data.train_x, 7)})
    s = split(flat)
    assert s.std == (1.0, 1.0, 1.0) and torch.isfinite(s.train_x).all()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"val_size": 100},
         r"task.val_size must be smaller than the toy training set \(100 images\), got 100"),
        ({"train_subset": 81}, r"task.train_subset must be at most the 80 toy training images left after "
                               r"holding out task.val_size = 20, got 81"),
        ({"test_subset": 41}, r"task.test_subset must be at most the 40 toy test images, got 41"),
    ],
    ids=["val_size", "train_subset", "test_subset"],
)
def test_sizes_beyond_the_data(kw: dict[str, int], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        split(**kw)
