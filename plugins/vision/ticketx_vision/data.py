"""Image datasets read whole into memory from the standard layouts under a data root, then split.

Loaders return the images as stored (uint8); `stored_splits` holds out validation and takes subsets,
keeping the images as stored (uint8) with the per-channel statistics that normalise them, batch by batch,
on whatever device they are held (`StoredSplits.normalise`); `make_splits` is the same split normalised
whole, as float32. Nothing here unpickles by itself: MNIST comes as IDX files, CIFAR-10 as torchvision's
batches (torchvision checks their md5s) or as JPEGs, and decoded JPEGs are cached as safetensors.

torchvision (slow to import: it loads much of torch._dynamo) is imported inside the functions that
read, decode or download images, so that the plugin lists its tasks and checks options without it. A
download that fails removes what it wrote under the data root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ticketx.paths import user_cache
from ticketx.task import DataError, TaskError

IDX_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_BATCHES = "cifar-10-batches-py"  # torchvision's folder
CIFAR10_TREE = Path("cifar10-jpeg") / "images"  # images/{train,test}/<class>/NNNN.jpg
CIFAR10_TARBALL = Path("cifar10-jpeg") / "cifar10-jpeg-q75.tar.gz"  # the same tree, archived
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
TORCHVISION_DECODERS_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"
POINT_ELSEWHERE = "point ticketx at another data root with --data-root or the TICKETX_DATA variable"
CIFAR10_DOWNLOAD = ("cifar-10-python.tar.gz", CIFAR10_BATCHES)  # what torchvision writes under the root


@dataclass(frozen=True, kw_only=True)
class ImageData:
    """A dataset as stored: uint8 images (N, C, H, W) and int64 labels (N,) for each split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str  # where it was read from, for logs and errors


@dataclass(frozen=True, kw_only=True)
class StoredSplits:
    """Images as stored, uint8 (N, C, H, W), and int64 labels (N,) for train, validation and test, on one
    device, with the per-channel mean and std of the training split that `normalise` applies per batch.

    Held this way, CIFAR-10 takes 184 MB instead of the 737 MB of float32 images; `normalise` does the
    arithmetic `make_splits` does on the whole set, so a batch is bit for bit the same either way.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]  # label i is classes[i]
    mean: tuple[float, ...]  # per channel, in stored units (0..255), of the training split
    std: tuple[float, ...]
    # (C, 1, 1) float32 on the images' device: made once here, not per batch
    _mean: torch.Tensor = field(init=False, repr=False, compare=False)
    _std: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        device = self.train_x.device
        object.__setattr__(self, "_mean", torch.tensor(self.mean, dtype=torch.float32)[:, None, None].to(device))
        object.__setattr__(self, "_std", torch.tensor(self.std, dtype=torch.float32)[:, None, None].to(device))

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def normalise(
        self, x: torch.Tensor, *, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """Stored images `x` (B, C, H, W) on this object's device -> float32 (x - mean) / std per channel,
        in `memory_format`: one conversion pass into a new tensor, then the subtraction and division in
        place (the arithmetic of `make_splits`, value for value)."""
        return x.to(torch.float32, memory_format=memory_format, copy=True).sub_(self._mean).div_(self._std)

    def to(self, device: torch.device | str) -> StoredSplits:
        """These splits on `device` (self where they are there already): one copy of each tensor."""
        if torch.device(device) == self.device:
            return self
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return StoredSplits(**moved, classes=self.classes, mean=self.mean, std=self.std)

    def normalised(self) -> Splits:
        """Every split's images normalised whole, as `make_splits` returns them."""
        return Splits(
            train_x=self.normalise(self.train_x), train_y=self.train_y, val_x=self.normalise(self.val_x),
            val_y=self.val_y, test_x=self.normalise(self.test_x), test_y=self.test_y, classes=self.classes,
            mean=self.mean, std=self.std,
        )


@dataclass(frozen=True, kw_only=True)
class Splits:
    """Normalised float32 images (N, C, H, W) and int64 labels (N,) for train, validation and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]  # label i is classes[i]
    mean: tuple[float, ...]  # per channel, in stored units (0..255), of the training split
    std: tuple[float, ...]


def cache_root() -> Path:
    """Where decoded datasets are cached: $TICKETX_CACHE, else ~/.cache/ticketx (or XDG's)."""
    env = os.environ.get("TICKETX_CACHE")
    return Path(env).expanduser() if env else user_cache()


# MNIST and Fashion-MNIST


def load_mnist(root: Path, *, fashion: bool, download: bool) -> ImageData:
    """MNIST or Fashion-MNIST from torchvision's layout, `<root>/MNIST/raw` or `<root>/FashionMNIST/raw`;
    where files are missing and `download` is true, torchvision downloads them there (a download that
    fails leaves the data root as it was)."""
    name = "FashionMNIST" if fashion else "MNIST"  # torchvision's class, and its folder under the root
    folder = root / name / "raw"
    missing = [f for f in IDX_FILES if not (folder / f).is_file()]
    if missing and not download:
        raise _mnist_missing(name, folder, missing, "task.download is false")
    from torchvision import datasets

    cls = getattr(datasets, name)
    if missing:
        try:
            with _undone_on_failure(root, name):
                for train in (True, False):
                    cls(str(root), train=train, download=True)
        except (OSError, RuntimeError, ValueError) as e:  # urllib's errors are OSErrors
            raise _mnist_missing(name, folder, missing, f"downloading failed: {_download_reason(e)}") from e
    try:
        train, test = (cls(str(root), train=t, download=False) for t in (True, False))
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(
            f"{name} in {folder} cannot be read: {e}. Expected torchvision's layout, the "
            f"uncompressed IDX files {', '.join(IDX_FILES)}; replace them or {POINT_ELSEWHERE}"
        ) from e
    return ImageData(
        train_x=train.data.unsqueeze(1), train_y=train.targets.long(),  # (N, 1, 28, 28), (N,)
        test_x=test.data.unsqueeze(1), test_y=test.targets.long(),
        classes=tuple(train.classes), source=str(folder),
    )


def _mnist_missing(name: str, folder: Path, missing: list[str], reason: str) -> DataError:
    """One line: where, why, the layout expected and how to get it."""
    download = ", or set task.download = true where the network is reachable" if "false" in reason else ""
    which = "all four" if len(missing) == len(IDX_FILES) else ", ".join(missing)
    return DataError(
        f"{name} not found in {folder} ({reason}): expected torchvision's layout, the four uncompressed "
        f"IDX files {', '.join(IDX_FILES)} (missing: {which}). Put them there (torchvision.datasets."
        f"{name}(root, download=True) writes them to root/{name}/raw where the network is reachable), or "
        f"{POINT_ELSEWHERE} (the folder that holds {name}/raw){download}"
    )


def _download_reason(e: BaseException) -> str:
    """A failed download's reason in one line: torchvision's MNIST error lists every mirror tried, one
    `<urlopen error ...>` each over several lines; the first such reason says what went wrong."""
    text = str(e)
    found = re.search(r"<urlopen error (.+?)>", text)
    if found:
        return found.group(1)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return first if len(first) <= 200 else first[:197] + "..."


@contextmanager
def _undone_on_failure(root: Path, *names: str) -> Iterator[None]:
    """Where the body (a download into `root`) raises, remove what it added: `root` if it was not there
    (and the folders made on the way to it, where nothing else came into them), else each entry
    `root/<name>` that was not there, and what was added inside those that were. So a failed download
    leaves no empty or partial dataset folder to be mistaken for data on the next run."""
    made = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    before = {n: (root / n).exists() for n in names}
    inside = {n: set((root / n).rglob("*")) for n in names if (root / n).is_dir()}
    try:
        yield
    except BaseException:
        if made:  # everything the body wrote is below root
            shutil.rmtree(root, ignore_errors=True)
            for folder in made[1:]:
                try:
                    folder.rmdir()  # only where empty: another process may have written beside root
                except OSError:
                    break
        else:
            for n in names:
                added = [root / n] if not before[n] else sorted(
                    set((root / n).rglob("*")) - inside.get(n, set()), key=lambda p: len(p.parts))
                for path in added:
                    _remove(path)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# CIFAR-10


def load_cifar10(root: Path, *, download: bool, cache: Path) -> ImageData:
    """CIFAR-10 from torchvision's batches, an ImageFolder tree of JPEGs, or a tarball of that tree.

    Looked for in that order under `root`; a tarball is decoded once and cached as safetensors under
    `cache` (the data root may be read-only). Where none is found and `download` is true, torchvision
    downloads the batches into `root`.
    """
    batches, tree, tarball = root / CIFAR10_BATCHES, root / CIFAR10_TREE, root / CIFAR10_TARBALL
    if batches.is_dir():
        try:
            return _cifar10_torchvision(root, download=False)
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(
                f"torchvision cannot load CIFAR-10 from {batches}: {e} (it checks every batch file's "
                "md5); repair or remove that folder"
            ) from e
    if tree.is_dir():
        return _check_cifar10_classes(read_image_tree(tree, jpeg_only=True), tree)
    if tarball.is_file():
        return _check_cifar10_classes(read_cached_tarball(tarball, cache), tarball)
    looked = (
        f"looked for torchvision's batches in {batches}, an ImageFolder tree of JPEGs "
        f"{tree}/{{train,test}}/<class>/*.jpg, and that tree archived as {tarball} (members "
        f"images/{{train,test}}/<class>/NNNN.jpg)"
    )
    if not download:
        raise DataError(
            f"CIFAR-10 not found (task.download is false): {looked}. Put one of them there, "
            f"{POINT_ELSEWHERE}, or set task.download = true where the network is reachable"
        )
    try:
        with _undone_on_failure(root, *CIFAR10_DOWNLOAD):
            return _cifar10_torchvision(root, download=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(
            f"CIFAR-10 not found and downloading failed ({_download_reason(e)}): {looked}. Put one of them "
            f"there (torchvision.datasets.CIFAR10(root, download=True) writes root/{CIFAR10_BATCHES} where "
            f"the network is reachable) or {POINT_ELSEWHERE}"
        ) from e


def _cifar10_torchvision(root: Path, *, download: bool) -> ImageData:
    """CIFAR-10 through torchvision, which checks the batches' md5s; raises torchvision's errors."""
    from torchvision import datasets

    train, test = (datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False))
    return ImageData(
        # torchvision keeps (N, 32, 32, 3) numpy arrays
        train_x=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_y=torch.tensor(train.targets, dtype=torch.long),
        test_x=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_y=torch.tensor(test.targets, dtype=torch.long),
        classes=tuple(train.classes), source=str(root / CIFAR10_BATCHES),
    )


def _check_cifar10_classes(data: ImageData, where: Path) -> ImageData:
    if data.classes != CIFAR10_CLASSES:
        raise DataError(
            f"{where} does not hold CIFAR-10: expected the class folders {', '.join(CIFAR10_CLASSES)}, "
            f"found {', '.join(data.classes)} (use the imagefolder task for other image sets)"
        )
    return data


# JPEG trees and tarballs


def read_cached_tarball(tarball: Path, cache: Path) -> ImageData:
    """A tarball of an image tree, decoded once and cached under `cache` as safetensors (uint8)."""
    digest = _sha256(tarball)[:16]
    stem = tarball.name.removesuffix(".gz").removesuffix(".tar")
    cached = cache / "vision" / f"{stem}-{digest}.safetensors"  # a changed tarball gets a new entry
    source = f"{tarball} (decoded, cached in {cached})"
    data = _read_cache(cached, source=source)
    if data is None:
        data = read_image_tar(tarball)
        _write_cache(cached, data)
    return replace(data, source=source)


def read_image_tar(tarball: Path) -> ImageData:
    """Decode every `images/{train,test}/<class>/*.jpg` member of a tarball, reading bytes, not files."""
    blobs: dict[tuple[str, str, str], bytes] = {}  # (split, class, file) -> JPEG bytes
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                parts = member.name.removeprefix("./").split("/")
                if (member.isfile() and len(parts) == 4 and parts[0] == "images" and parts[1] in SPLITS
                        and parts[3].lower().endswith((".jpg", ".jpeg"))):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        blobs[(parts[1], parts[2], parts[3])] = handle.read()
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot read the tarball {tarball}: {e}") from e
    layout = f"members images/{{train,test}}/<class>/*.jpg in {tarball}"
    per_split = {
        split: {(c, f): b for (s, c, f), b in blobs.items() if s == split} for split in SPLITS
    }
    return _decode_splits(per_split, layout, jpeg_only=True, image_size=0)


def read_image_tree(folder: Path, *, jpeg_only: bool = False, image_size: int = 0) -> ImageData:
    """An ImageFolder tree `folder/{train,test}/<class>/<image>`; classes are the sorted folder names."""
    suffixes = (".jpg", ".jpeg") if jpeg_only else IMAGE_SUFFIXES
    layout = f"{folder}/{{train,test}}/<class>/<image> ({', '.join(suffixes)})"
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: expected {layout}")
    per_split: dict[str, dict[tuple[str, str], bytes]] = {}
    for split in SPLITS:
        if not (folder / split).is_dir():
            raise DataError(f"{folder / split} is missing: expected {layout}")
        per_split[split] = {
            (c.name, f.name): f.read_bytes()
            for c in (folder / split).iterdir() if c.is_dir()
            for f in c.iterdir() if f.is_file() and f.suffix.lower() in suffixes
        }
    return _decode_splits(per_split, layout, jpeg_only=jpeg_only, image_size=image_size)


def _decode_splits(
    per_split: dict[str, dict[tuple[str, str], bytes]], layout: str, *, jpeg_only: bool, image_size: int
) -> ImageData:
    """Decode {split: {(class, file): bytes}}; labels index the sorted class names of the train split."""
    classes = tuple(sorted({c for c, _ in per_split["train"]}))
    if not classes:
        raise DataError(f"no training images found: expected {layout}")
    extra = sorted({c for c, _ in per_split["test"]} - set(classes))
    if extra:
        raise DataError(f"test classes {', '.join(extra)} have no training images: expected {layout}")
    if not per_split["test"]:
        raise DataError(f"no test images found: expected {layout}")
    from torchvision.transforms.v2 import functional as TF

    label = {c: i for i, c in enumerate(classes)}
    out: dict[str, tuple[list[torch.Tensor], list[int], list[str]]] = {}
    for split, items in per_split.items():
        keys = sorted(items)  # class, then file name: a stable order whatever the archive's order
        names = [f"{split}/{c}/{f}" for c, f in keys]
        blobs = [torch.frombuffer(bytearray(items[k]), dtype=torch.uint8) for k in keys]
        if jpeg_only:
            images = _decode_jpegs(blobs, names)
        else:
            images = [_decode_one(b, n, jpeg_only=False) for b, n in zip(blobs, names)]
        out[split] = (images, [label[c] for c, _ in keys], names)
    channels = 1 if all(im.shape[0] == 1 for ims, _, _ in out.values() for im in ims) else 3
    stacked: dict[str, torch.Tensor] = {}
    first: tuple[str, tuple[int, ...]] | None = None
    for split, (images, _, names) in out.items():
        images = [_to_channels(im, channels) for im in images]
        if image_size:
            images = [TF.resize(im, [image_size, image_size], antialias=True) for im in images]
        for im, name in zip(images, names):
            if first is None:
                first = (name, tuple(im.shape))
            elif tuple(im.shape) != first[1]:
                raise DataError(
                    f"images differ in size: {first[0]} is {_hw(first[1])}, {name} is {_hw(im.shape)} "
                    f"({layout}); set task.image_size to resize them all to one size"
                )
        stacked[split] = torch.stack(images)  # (N, C, H, W) uint8
    return ImageData(
        train_x=stacked["train"], train_y=torch.tensor(out["train"][1], dtype=torch.long),
        test_x=stacked["test"], test_y=torch.tensor(out["test"][1], dtype=torch.long),
        classes=classes, source=layout,
    )


def _decode_jpegs(blobs: list[torch.Tensor], names: list[str]) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with _quiet_decoders():
            return list(decode_jpeg(blobs, mode=ImageReadMode.RGB))  # batched: ~25 us an image
    except RuntimeError:
        return [_decode_one(b, n, jpeg_only=True) for b, n in zip(blobs, names)]  # to name the bad one


def _decode_one(blob: torch.Tensor, name: str, *, jpeg_only: bool) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        with _quiet_decoders():
            if jpeg_only:
                return decode_jpeg(blob, mode=ImageReadMode.RGB)
            return decode_image(blob, mode=ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise DataError(f"cannot decode the image {name}: {e}") from e


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Silence torchvision 0.29's per-call notice that its image decoders move to TorchCodec."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=TORCHVISION_DECODERS_DEPRECATED, category=DeprecationWarning
        )
        yield


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(c, H, W) uint8 with c in 1..4 -> (channels, H, W); alpha is dropped, grey repeated for RGB."""
    colour = image[:1] if image.shape[0] <= 2 else image[:3]
    return colour.expand(channels, -1, -1).contiguous() if colour.shape[0] != channels else colour


def _hw(shape: tuple[int, ...] | torch.Size) -> str:
    return f"{shape[-2]}x{shape[-1]} with {shape[0]} channel(s)"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_cache(path: Path, *, source: str) -> ImageData | None:
    """The cached dataset, or None where there is none or it cannot be read (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in ("train_x", "train_y", "test_x", "test_y")}
            classes = json.loads((f.metadata() or {})["classes"])
        for split in ("train", "test"):
            x, y = tensors[f"{split}_x"], tensors[f"{split}_y"]
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.long or y.shape != x.shape[:1]:
                raise ValueError(
                    f"{split} tensors are {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}"
                )
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        warnings.warn(f"ignoring the unreadable dataset cache {path} ({e}); decoding again", stacklevel=3)
        return None
    return ImageData(**tensors, classes=tuple(classes), source=source)


def _write_cache(path: Path, data: ImageData) -> None:
    """Write the cache atomically (temp file + os.replace); a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {"train_x": data.train_x, "train_y": data.train_y,
                 "test_x": data.test_x, "test_y": data.test_y},
                tmp, metadata={"classes": json.dumps(list(data.classes))},
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, SafetensorError) as e:
        warnings.warn(
            f"cannot cache the decoded dataset in {path} ({e}); it will be decoded again next time "
            "(set TICKETX_CACHE to a writable folder)", stacklevel=3,
        )


# Splits


def resize(data: ImageData, image_size: int) -> ImageData:
    """Every image resized to image_size x image_size (antialiased)."""
    from torchvision.transforms.v2 import functional as TF

    size = [image_size, image_size]
    return replace(
        data, train_x=TF.resize(data.train_x, size, antialias=True),
        test_x=TF.resize(data.test_x, size, antialias=True),
    )


def make_splits(
    data: ImageData, *, val_size: int, split_seed: int, train_subset: int, test_subset: int, dataset: str
) -> Splits:
    """`stored_splits`, every image normalised to float32 at once (for benchmarks and scripts that want
    whole float tensors; the task keeps the stored form and normalises per batch)."""
    return stored_splits(
        data, val_size=val_size, split_seed=split_seed, train_subset=train_subset, test_subset=test_subset,
        dataset=dataset,
    ).normalised()


def stored_splits(
    data: ImageData, *, val_size: int, split_seed: int, train_subset: int, test_subset: int, dataset: str
) -> StoredSplits:
    """Hold `val_size` training images out for validation, take subsets; images stay as stored (uint8).

    The validation images are drawn from the training split by a permutation seeded with `split_seed`;
    the test split is never touched. Mean and std are those of the training images left after holding
    out validation (before `train_subset`), so a subset run sees the same inputs as a full one.
    """
    n_train, n_test = data.train_x.shape[0], data.test_x.shape[0]
    if val_size >= n_train:
        raise TaskError(
            f"task.val_size must be smaller than the {dataset} training set ({n_train} images), "
            f"got {val_size}"
        )
    if train_subset > n_train - val_size:
        raise TaskError(
            f"task.train_subset must be at most the {n_train - val_size} {dataset} training images "
            f"left after holding out task.val_size = {val_size}, got {train_subset} (0 takes them all)"
        )
    if test_subset > n_test:
        raise TaskError(
            f"task.test_subset must be at most the {n_test} {dataset} test images, got {test_subset} "
            "(0 takes them all)"
        )
    g = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(n_train, generator=g)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    mean, std = _channel_stats(data.train_x, exclude=val_idx)
    if train_subset:
        train_idx = train_idx[:train_subset]
    test_idx = torch.randperm(n_test, generator=g)[:test_subset] if test_subset else None
    test_x, test_y = (data.test_x, data.test_y) if test_idx is None else (
        data.test_x[test_idx], data.test_y[test_idx])
    return StoredSplits(
        train_x=data.train_x[train_idx], train_y=data.train_y[train_idx],
        val_x=data.train_x[val_idx], val_y=data.train_y[val_idx],
        test_x=test_x, test_y=test_y, classes=data.classes, mean=mean, std=std,
    )


def _channel_stats(x: torch.Tensor, *, exclude: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images `x` (N, C, H, W) without the rows in `exclude`.

    Counting each of the 256 values per channel is exact and ~20x faster than a float64 sum over CIFAR-10.
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].flatten(), minlength=256)
        counts -= torch.bincount(x[exclude, c].flatten(), minlength=256)
        counts = counts.double()
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / n)
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)  # a constant channel is left unscaled
    return tuple(means), tuple(stds)
