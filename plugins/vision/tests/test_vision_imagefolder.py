"""The imagefolder task: any folder/{train,test}/<class>/<image> tree, PNG or JPEG, resized on request."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import encode_png

from ticketx.task import DataError, Plan, TaskError
from ticketx_vision.plugin import VisionPlugin

CLASSES = ("circle", "cross", "square")


def write_png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(encode_png(image).numpy()))


def grey(label: int, i: int, size: int = 8) -> torch.Tensor:
    """A (1, size, size) uint8 image whose value encodes its class."""
    return torch.full((1, size, size), 60 * label + i, dtype=torch.uint8)


def make_tree(folder: Path, *, train: int = 4, test: int = 2, size: int = 8) -> Path:
    for split, n in (("train", train), ("test", test)):
        for label, cls in enumerate(CLASSES):
            for i in range(n):
                write_png(folder / split / cls / f"{i}.png", grey(label, i, size))
    return folder


def task(root: Path, **options: object):
    return VisionPlugin().make_task("imagefolder", {"val_size": 3, **options}, data_root=root)


def test_relative_path_under_the_data_root_and_shapes(tmp_path: Path, recorder) -> None:
    make_tree(tmp_path / "shapes")
    t = task(tmp_path, path="shapes")
    s = t.splits()
    assert s.classes == CLASSES
    assert s.train_x.shape == (9, 1, 8, 8) and s.val_x.shape == (3, 1, 8, 8)
    assert s.test_x.shape == (6, 1, 8, 8)
    assert s.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    model = t.build_model(0)
    assert model.fc1.in_features == 64 and model.fc3.out_features == 3
    plan = Plan(steps=4, batch_size=3, optimizer="adam", lr=1e-3, eval_every=2)
    t.train(model, {}, plan, recorder)
    assert [step for step, _ in recorder.evals] == [2, 4]


def test_absolute_path(tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "elsewhere" / "shapes")
    t = task(tmp_path / "unrelated-root", path=str(folder))
    assert t.splits().train_x.shape[0] == 9


def test_sizes_must_agree_unless_resized(tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "shapes")
    write_png(folder / "train" / "cross" / "big.png", grey(1, 9, size=12))
    with pytest.raises(DataError, match=r"images differ in size: train/circle/0.png is 8x8 with 1 "
                       r"channel\(s\), train/cross/big.png is 12x12 with 1 channel\(s\) "
                       r".*set task.image_size"):
        task(tmp_path, path="shapes").splits()
    s = task(tmp_path, path="shapes", image_size=6).splits()
    assert s.train_x.shape[1:] == (1, 6, 6) and s.test_x.shape[1:] == (1, 6, 6)
    assert task(tmp_path, path="shapes", image_size=6).build_model(0).fc1.in_features == 36


def test_colour_and_alpha_make_three_channels(tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "shapes")
    # torchvision cannot encode RGBA: PIL writes this one test image
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(folder / "test" / "square" / "red.png")
    s = task(tmp_path, path="shapes").splits()
    assert s.train_x.shape[1] == 3 and s.test_x.shape == (7, 3, 8, 8)
    assert s.test_x[-1][:, 0, 0].tolist() == [255, 0, 0]  # alpha dropped, colour kept (stored as uint8)
    norm = s.normalise(s.test_x[-1:])[0]
    raw = (norm * torch.tensor(s.std)[:, None, None] + torch.tensor(s.mean)[:, None, None]).round()
    assert raw[:, 0, 0].tolist() == [255.0, 0.0, 0.0]
    assert s.std[0] == pytest.approx(s.std[1])  # the grey images became equal R, G and B


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: None,
         r"{f} is not a folder: expected {f}/\{{train,test\}}/<class>/<image> \(.jpg, .jpeg, .png\)"),
        (lambda f: (f / "train" / "a").mkdir(parents=True), r"{f}/test is missing: expected"),
        (lambda f: [(f / s).mkdir(parents=True) for s in ("train", "test")], r"no training images found"),
        (lambda f: (make_tree(f), write_png(f / "test" / "star" / "0.png", grey(0, 0))),
         r"test classes star have no training images"),
        (lambda f: (make_tree(f, test=0), (f / "test").mkdir()), r"no test images found"),
        (lambda f: (make_tree(f), (f / "train" / "cross" / "bad.png").write_bytes(b"not a png")),
         r"cannot decode the image train/cross/bad.png"),
    ],
    ids=["no-folder", "no-test", "empty", "unknown-test-class", "no-test-images", "bad-image"],
)
def test_layout_errors_name_the_folder(tmp_path: Path, setup, message: str) -> None:
    folder = tmp_path / "imgs"
    setup(folder)
    with pytest.raises(DataError, match=message.format(f=re.escape(str(folder)))):
        task(tmp_path, path="imgs").splits()


def test_images_too_small_for_the_model(tmp_path: Path) -> None:
    make_tree(tmp_path / "shapes", size=4)
    with pytest.raises(TaskError, match=r"task.model 'conv6' needs images of at least 8x8 pixels .*got 4x4; "
                       r"set task.image_size"):
        task(tmp_path, path="shapes", model="conv6").build_model(0)
