"""Options of the NLP tasks: a recipe's `[task]` table as frozen dataclasses, checked when built."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from ticketx.task import TaskError

DATASETS = ("sst5", "sst2", "mr", "tsv")  # classify: task.dataset

_O = TypeVar("_O", bound="_Options")


class _Options:
    """What the option classes share: reading a `[task]` table, and a JSON-able dict."""

    @classmethod
    def from_mapping(cls: type[_O], options: Mapping[str, Any], *, task: str) -> _O:
        """Options from a recipe's `[task]` table (without its `plugin` and `name` keys)."""
        valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = [str(k) for k in options if k not in valid]
        if unknown:
            listed = "; ".join(f"task.{k}" + suggest(k, valid) for k in unknown)
            raise TaskError(f"unknown option(s) for nlp task {task!r}: {listed}. Valid options: {', '.join(valid)}")
        return cls(**options)

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-able."""
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True, kw_only=True)
class LMOptions(_Options):
    """A word- or character-level LSTM language model (word_lm, char_lm); every field is `task.<field>`."""

    # word_lm: a folder of train/valid/test files (or one file split by lines); char_lm: one text file; a relative
    # path is under the data root
    corpus: str = ""
    emb_size: int = 200
    hidden_size: int = 200
    layers: int = 2
    dropout: float = 0.2  # on embeddings, between LSTM layers and on the LSTM output (Zaremba et al. 2014)
    tie_weights: bool = False  # the decoder uses the embedding matrix (Press & Wolf 2017); emb_size == hidden_size
    bptt: int = 35  # truncated back-propagation through time: tokens per training window
    min_freq: int = 1  # a token enters the vocabulary if it occurs this often in the training tokens
    max_vocab: int = 0  # 0 = no cap; else at most this many entries, the specials included
    prune_embeddings: bool = True  # Yu et al. 2019 prune every weight; false leaves embedding and decoder dense
    train_tokens: int = 0  # 0 = the whole training split; else its first N tokens (quick runs)
    eval_tokens: int = 0  # 0 = the whole validation / test split; else its first N tokens (quick runs)
    eval_batch_size: int = 10  # streams evaluated side by side (10 in Zaremba et al. and Merity et al.)
    vocab_from: str = ""  # a ticket (or find job) folder whose vocabulary is used instead of building one
    transfer_embeddings: bool = False  # on transfer keep the source's embedding and decoder (same vocabulary only)

    def __post_init__(self) -> None:
        _check_type("corpus", self.corpus, (str,), "a string (a path under the data root)")
        for name in ("emb_size", "hidden_size", "layers", "bptt", "min_freq", "eval_batch_size"):
            _check_type(name, getattr(self, name), (int,), "an integer")
            if getattr(self, name) < 1:
                raise TaskError(f"task.{name} must be at least 1, got {getattr(self, name)}")
        _check_dropout(self)
        for name in ("max_vocab", "train_tokens", "eval_tokens"):
            _check_type(name, getattr(self, name), (int,), "an integer")
            if getattr(self, name) < 0:
                raise TaskError(f"task.{name} must be 0 (no cap) or more, got {getattr(self, name)}")
        if 0 < self.max_vocab < 3:
            raise TaskError(f"task.max_vocab must be 0 (no cap) or at least 3 (the specials <unk>, <eos> and "
                            f"one token), got {self.max_vocab}")
        for name in ("tie_weights", "prune_embeddings", "transfer_embeddings"):
            _check_type(name, getattr(self, name), (bool,), "true or false")
        if self.tie_weights and self.emb_size != self.hidden_size:
            raise TaskError(f"task.tie_weights needs task.emb_size == task.hidden_size (the decoder reads the last "
                            f"LSTM layer with the embedding matrix), got emb_size {self.emb_size} and "
                            f"hidden_size {self.hidden_size}")
        _check_type("vocab_from", self.vocab_from, (str,), "a string (a ticket folder)")

    def checked_for(self, task: str) -> LMOptions:
        """These options checked against the task they are for."""
        if not self.corpus:
            layout = ("a folder holding train.txt, valid.txt and test.txt (or one text file, split 90/5/5 by "
                      "lines)" if task == "word_lm" else "one text file, split 90/5/5 into train/valid/test")
            raise TaskError(f"task.corpus must name the {task} corpus, {layout}, under the data root "
                            f"(e.g. 'text/brown' or 'text/tinyshakespeare/input.txt'), got '' (absent)")
        return self


@dataclass(frozen=True, kw_only=True)
class ClassifyOptions(_Options):
    """An LSTM text classifier on `label<TAB>text` files (classify); every field is `task.<field>`."""

    dataset: str = "sst2"  # one of DATASETS
    corpus: str = ""  # dataset "tsv" only: a folder holding train.tsv, dev.tsv and test.tsv
    emb_size: int = 200
    hidden_size: int = 200
    layers: int = 1
    dropout: float = 0.2  # on embeddings, between LSTM layers and before the output layer
    min_freq: int = 1
    max_vocab: int = 0
    max_len: int = 100  # sentences are cut to their first max_len tokens
    split_seed: int = 0  # mr only: seeds its 80/10/10 train/dev/test split
    train_examples: int = 0  # 0 = all; else the first N training sentences (quick runs)
    prune_embeddings: bool = True
    vocab_from: str = ""
    transfer_embeddings: bool = False  # on transfer keep the source's embedding (same vocabulary only)

    def __post_init__(self) -> None:
        _check_type("dataset", self.dataset, (str,), "a string")
        if self.dataset not in DATASETS:
            raise TaskError(f"task.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}"
                            + suggest(self.dataset, DATASETS))
        _check_type("corpus", self.corpus, (str,), "a string (a folder under the data root)")
        if self.dataset == "tsv" and not self.corpus:
            raise TaskError("task.corpus must name a folder holding train.tsv, dev.tsv and test.tsv for "
                            "task.dataset 'tsv', got '' (absent)")
        if self.dataset != "tsv" and self.corpus:
            raise TaskError(f"task.corpus applies only to task.dataset 'tsv', got {self.corpus!r} for dataset "
                            f"{self.dataset!r} (its files are found under the data root)")
        for name in ("emb_size", "hidden_size", "layers", "min_freq", "max_len"):
            _check_type(name, getattr(self, name), (int,), "an integer")
            if getattr(self, name) < 1:
                raise TaskError(f"task.{name} must be at least 1, got {getattr(self, name)}")
        _check_dropout(self)
        for name in ("max_vocab", "split_seed", "train_examples"):
            _check_type(name, getattr(self, name), (int,), "an integer")
            if getattr(self, name) < 0:
                raise TaskError(f"task.{name} must be 0 or more, got {getattr(self, name)}")
        if 0 < self.max_vocab < 3:
            raise TaskError(f"task.max_vocab must be 0 (no cap) or at least 3 (the specials <unk>, <eos> and "
                            f"one token), got {self.max_vocab}")
        for name in ("prune_embeddings", "transfer_embeddings"):
            _check_type(name, getattr(self, name), (bool,), "true or false")
        _check_type("vocab_from", self.vocab_from, (str,), "a string (a ticket folder)")

    def checked_for(self, task: str) -> ClassifyOptions:
        """These options checked against the task they are for (nothing more to check)."""
        return self


def _check_dropout(options: Any) -> None:
    _check_type("dropout", options.dropout, (int, float), "a number")
    object.__setattr__(options, "dropout", float(options.dropout))
    if not 0.0 <= options.dropout < 1.0:
        raise TaskError(f"task.dropout must be in [0, 1), got {options.dropout}")


def _check_type(name: str, value: Any, allowed: tuple[type, ...], what: str) -> None:
    # bool is a subclass of int: `bptt = true` must not pass as 1
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise TaskError(f"task.{name} must be {what}, got {value!r} ({type(value).__name__})")


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to `word`, or '' where none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
