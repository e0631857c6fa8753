"""Vocabularies: built from the training tokens only, identified by a SHA-256, read back from tickets.

A word vocabulary is `<unk>`, `<eos>`, then the training tokens seen at least `min_freq` times, most
frequent first (ties in code-point order), capped at `max_vocab` entries; a character vocabulary is
`<unk>` then every character of the training text. Tokens outside the vocabulary read as `<unk>`. The
vocabulary is saved in the task's `spec()`, hence in every ticket's `ticket.json`, so a ticket can be
trained or evaluated later on exactly the vocabulary it was found with (`task.vocab_from`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketx import ticket as ticketlib
from ticketx.task import TaskError

UNK, EOS = "<unk>", "<eos>"
SPECIALS = {"word": (UNK, EOS), "char": (UNK,)}  # at the start of every vocabulary of that kind
KINDS = tuple(SPECIALS)


@dataclass(frozen=True)
class Vocab:
    """Tokens by index (index 0 is `<unk>`) and the tokenisation they belong to ("word" or "char")."""

    tokens: tuple[str, ...]
    kind: str
    index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in SPECIALS:
            raise TaskError(f"vocabulary kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        specials = SPECIALS[self.kind]
        if tuple(self.tokens[: len(specials)]) != specials:
            raise TaskError(f"a {self.kind} vocabulary starts with {list(specials)}, got {list(self.tokens[:3])}")
        if len(set(self.tokens)) != len(self.tokens):
            dupes = [t for t, n in Counter(self.tokens).items() if n > 1]
            raise TaskError(f"a vocabulary lists each token once; repeated: {dupes[:5]}")
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def sha256(self) -> str:
        """SHA-256 of the token list as compact UTF-8 JSON (kind included): equal digests, equal vocabularies."""
        blob = json.dumps({"kind": self.kind, "tokens": list(self.tokens)}, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        """'<n> <kind> tokens, sha256 <first 12 hex digits>', for messages."""
        return f"{len(self)} {self.kind} tokens, sha256 {self.sha256[:12]}"

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        """Token ids (int64, 1-d); unknown tokens are `<unk>` (0)."""
        get = self.index.get
        return torch.tensor([get(t, 0) for t in tokens], dtype=torch.long)

    def as_spec(self) -> dict[str, Any]:
        """The entries a task's `spec()` carries: kind, size, digest and the token list."""
        return {"vocab_kind": self.kind, "vocab_size": len(self), "vocab_sha256": self.sha256,
                "vocab": list(self.tokens)}


def build(tokens: Sequence[str], *, kind: str, min_freq: int = 1, max_vocab: int = 0) -> Vocab:
    """The vocabulary of `tokens` (the training split only): specials, then tokens by falling count."""
    if kind not in SPECIALS:
        raise TaskError(f"vocabulary kind must be one of {', '.join(KINDS)}, got {kind!r}")
    specials = SPECIALS[kind]
    counts = Counter(tokens)
    for s in specials:  # a corpus may write <unk> itself (Penn Treebank does): it is the special
        counts.pop(s, None)
    kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    if max_vocab:
        kept = kept[: max(0, max_vocab - len(specials))]
    return Vocab((*specials, *kept), kind)


def from_spec(spec: Mapping[str, Any], where: str) -> Vocab:
    """The vocabulary saved in a task spec (a ticket's `task` entry), checked against its digest."""
    tokens, kind, sha = spec.get("vocab"), spec.get("vocab_kind"), spec.get("vocab_sha256")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise TaskError(f"{where} holds no vocabulary (its task entry has no 'vocab' list of strings): "
                        "it was not made by an nlp task")
    vocab = Vocab(tuple(tokens), str(kind))
    if vocab.sha256 != sha:
        raise TaskError(f"{where}: the vocabulary's SHA-256 {vocab.sha256[:12]} does not match its recorded "
                        f"vocab_sha256 {str(sha)[:12]}: the file was edited or is corrupted")
    return vocab


def from_ticket(path: Path) -> Vocab:
    """The vocabulary of a ticket folder (its ticket.json) or of a find job folder (its job.json)."""
    path = Path(path).expanduser()
    if (path / ticketlib.META).is_file():
        meta = ticketlib.read_meta(path)
        where = str(path / ticketlib.META)
    elif (path / "job.json").is_file():
        where = str(path / "job.json")
        try:
            meta = json.loads((path / "job.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TaskError(f"{where}: not readable JSON ({e})") from None
    else:
        raise TaskError(f"task.vocab_from = {str(path)!r} is not a ticket folder (with {ticketlib.META}) nor a "
                        "find job folder (with job.json)")
    task = meta.get("task") if isinstance(meta, dict) else None
    if not isinstance(task, dict):
        raise TaskError(f"{where} has no task entry to read a vocabulary from")
    return from_spec(task, where)
