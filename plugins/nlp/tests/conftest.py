"""Shared fixtures for the nlp plugin's tests: one torch thread, tiny corpora written to tmp_path, the
real data root (skipped where absent), a recording observer."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

DATA_ROOT = Path(os.environ.get("TICKETX_DATA", Path(__file__).parents[3] / ".." / "shared" / "data"))
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

WORDS = ("the", "cat", "dog", "sat", "on", "a", "mat", "ran", "to", "big", "small", "house", "and", "saw")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The build machines have 2 cores shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sentences(n: int, seed: int, words: tuple[str, ...] = WORDS) -> str:
    """`n` lines of 3-8 words drawn with a seeded RNG, newline-terminated."""
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) + "\n" for _ in range(n))


@pytest.fixture
def make_corpus() -> Callable[..., Path]:
    """Write a word_lm corpus folder (train.txt, valid.txt, test.txt) of a few hundred tokens."""

    def make(folder: Path, *, train: str | None = None, valid: str | None = None, test: str | None = None,
             seed: int = 0, words: tuple[str, ...] = WORDS) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        texts = {"train.txt": train if train is not None else sentences(60, seed, words),
                 "valid.txt": valid if valid is not None else sentences(12, seed + 1, words),
                 "test.txt": test if test is not None else sentences(12, seed + 2, words)}
        for name, text in texts.items():
            (folder / name).write_text(text, encoding="utf-8")
        return folder

    return make


@pytest.fixture
def real_data_root() -> Path:
    """The real data root (../shared/data beside the repo, or $TICKETX_DATA); skips where absent."""
    if not (DATA_ROOT / "text" / "brown" / "train.txt").is_file():
        pytest.skip(f"real text datasets not found in {DATA_ROOT.resolve()} (set TICKETX_DATA to the data root)")
    return DATA_ROOT


@pytest.fixture
def tiny() -> dict[str, object]:
    """Toy-sized model options for word_lm / char_lm."""
    return {"emb_size": 8, "hidden_size": 8, "bptt": 5, "dropout": 0.0}


@pytest.fixture
def make_sentences() -> Callable[..., str]:
    return sentences


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
