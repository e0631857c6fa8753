"""Text datasets read from plain files under a data root: token streams for language models, labelled
sentences for classifiers. No torchtext: tokenisation is whitespace splitting (word level) or characters.

Word level (WikiText / Penn Treebank convention, as in PyTorch's word_language_model and Merity et al.'s
AWD-LSTM): every line is split on whitespace and followed by `<eos>`; blank lines give a lone `<eos>`.
Character level: every character, newlines included, is a token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ticketx.task import DataError

from .vocab import EOS

# word_lm: the file names of the standard layouts, tried in this order (PyTorch's examples, the WikiText
# archives, the Penn Treebank files of Mikolov's simple-examples)
LM_LAYOUTS = (
    ("train.txt", "valid.txt", "test.txt"),
    ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
)
TSV_FILES = ("train.tsv", "dev.tsv", "test.tsv")
SST_FOLDER, MR_FILE = Path("text") / "sst", Path("text") / "mr" / "all.tsv"
CHAR_SPLIT = (0.90, 0.05)  # char_lm: train and valid shares of the file, by position; test is the rest
MR_SPLIT = (0.80, 0.10)  # mr: train and dev shares of a seeded permutation; test is the rest
POINT_ELSEWHERE = "point ticketx at another data root with --data-root or the TICKETX_DATA variable"


def read_text(path: Path) -> str:
    """A file's text, which must be UTF-8 and hold something besides whitespace."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                        f"({e.reason}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is not a token
    if not text.strip():
        raise DataError(f"{path} is empty: a corpus file must hold at least one token")
    return text


def word_tokens(text: str) -> list[str]:
    """Whitespace tokens of every line, each line followed by <eos>."""
    lines = text.split("\n")
    if lines and lines[-1] == "":  # a final newline ends the last line; it does not start another
        lines.pop()
    out: list[str] = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


@dataclass(frozen=True, kw_only=True)
class TokenSplits:
    """The three splits of a language-modelling corpus as token lists, and where they were read from."""

    train: list[str]
    valid: list[str]
    test: list[str]
    source: str


def load_word_corpus(folder: Path, *, shown: str) -> TokenSplits:
    """train/valid/test word tokens of a folder in the WikiText / PTB layout, or of one text file split by
    lines (`load_word_file`). `shown` names the option."""
    if folder.is_file():
        return load_word_file(folder, shown=shown)
    if not folder.is_dir():
        raise DataError(
            f"word_lm corpus folder {folder} not found ({shown}); expected a folder holding "
            f"{_layouts()}, or one text file (split 90/5/5 by lines); {POINT_ELSEWHERE}"
        )
    for names in LM_LAYOUTS:
        if all((folder / n).is_file() for n in names):
            train, valid, test = (word_tokens(read_text(folder / n)) for n in names)
            return TokenSplits(train=train, valid=valid, test=test, source=str(folder))
    have = sorted(p.name for p in folder.iterdir())[:10]
    raise DataError(f"{folder} ({shown}) does not hold a word_lm corpus: expected {_layouts()}; "
                    f"it holds {have or 'nothing'}")


def load_word_file(file: Path, *, shown: str) -> TokenSplits:
    """Word tokens of one text file split by lines, as char_lm splits by characters: the first 90% of the
    lines train, the next 5% valid, the last 5% test (e.g. Tiny Shakespeare at word level)."""
    text = read_text(file)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    a, b = int(CHAR_SPLIT[0] * len(lines)), int(sum(CHAR_SPLIT) * len(lines))
    if a == 0 or b == a or b == len(lines):
        raise DataError(f"{file} ({shown}) holds {len(lines)} lines: too few to split 90/5/5 by lines into "
                        "train/valid/test")
    train, valid, test = (word_tokens("\n".join(part) + "\n") for part in (lines[:a], lines[a:b], lines[b:]))
    return TokenSplits(train=train, valid=valid, test=test, source=str(file))


def _layouts() -> str:
    return " or ".join(", ".join(names) for names in LM_LAYOUTS)


def load_char_corpus(file: Path, *, shown: str) -> TokenSplits:
    """Characters of one text file, split by position: the first 90% train, 5% valid, the last 5% test."""
    if file.is_dir():
        raise DataError(f"char_lm corpus {file} ({shown}) is a folder; expected one text file "
                        f"(e.g. text/tinyshakespeare/input.txt), split 90/5/5 by position")
    if not file.is_file():
        raise DataError(f"char_lm corpus file {file} not found ({shown}); expected one UTF-8 text file, "
                        f"split 90/5/5 by position into train/valid/test; {POINT_ELSEWHERE}")
    text = read_text(file)
    a, b = int(CHAR_SPLIT[0] * len(text)), int(sum(CHAR_SPLIT) * len(text))
    if a == 0 or b == a or b == len(text):
        raise DataError(f"{file} holds {len(text)} characters: too few to split 90/5/5 into train/valid/test")
    return TokenSplits(train=list(text[:a]), valid=list(text[a:b]), test=list(text[b:]), source=str(file))


# classification


@dataclass(frozen=True, kw_only=True)
class Labelled:
    """Tokenised sentences and their integer labels."""

    sentences: list[list[str]]
    labels: list[int]


@dataclass(frozen=True, kw_only=True)
class LabelledSplits:
    """Train, dev and test sentences, the number of classes, and where they were read from."""

    train: Labelled
    dev: Labelled
    test: Labelled
    classes: int
    source: str


def read_tsv(path: Path, *, classes: int | None) -> Labelled:
    """`label<TAB>text` lines (blank lines skipped); labels in 0..classes-1 when `classes` is given."""
    if not path.is_file():
        raise DataError(f"{path} not found; expected a file of label<TAB>text lines; {POINT_ELSEWHERE}")
    sentences, labels = [], []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        raw, tab, text = line.partition("\t")
        if not tab:
            raise DataError(f"{path}, line {number}: no tab; expected label<TAB>text, got {line[:60]!r}")
        try:
            label = int(raw.strip())
        except ValueError:
            raise DataError(f"{path}, line {number}: label {raw[:40]!r} is not an integer; "
                            "expected label<TAB>text with an integer label") from None
        if label < 0 or (classes is not None and label >= classes):
            allowed = f"0..{classes - 1}" if classes is not None else "0 or more"
            raise DataError(f"{path}, line {number}: label {label} is out of range; allowed: {allowed}")
        tokens = text.split()
        if not tokens:
            raise DataError(f"{path}, line {number}: label {label} has no text")
        sentences.append(tokens)
        labels.append(label)
    return Labelled(sentences=sentences, labels=labels)


def load_sst(root: Path, *, binary: bool) -> LabelledSplits:
    """SST-5 from `<root>/text/sst/{train,dev,test}.tsv`; SST-2 drops label 2 and maps 0,1 -> 0, 3,4 -> 1."""
    folder = root / SST_FOLDER
    _need_files(folder, TSV_FILES, "sst5/sst2")
    splits = [read_tsv(folder / n, classes=5) for n in TSV_FILES]
    if binary:
        splits = [Labelled(sentences=[s for s, y in zip(d.sentences, d.labels) if y != 2],
                           labels=[int(y > 2) for y in d.labels if y != 2]) for d in splits]
    return LabelledSplits(train=splits[0], dev=splits[1], test=splits[2], classes=2 if binary else 5,
                          source=str(folder))


def load_mr(root: Path, *, split_seed: int) -> LabelledSplits:
    """MR sentence polarity from `<root>/text/mr/all.tsv` (1 = positive), split 80/10/10 by a seeded shuffle."""
    path = root / MR_FILE
    if not path.is_file():
        raise DataError(f"MR file {path} not found; expected all.tsv of label<TAB>sentence lines (labels 0/1) "
                        f"under <data root>/text/mr/; {POINT_ELSEWHERE}")
    data = read_tsv(path, classes=2)
    order = list(range(len(data.labels)))
    random.Random(split_seed).shuffle(order)
    a, b = int(MR_SPLIT[0] * len(order)), int(sum(MR_SPLIT) * len(order))
    if a == 0 or b == a or b == len(order):
        raise DataError(f"{path} holds {len(order)} sentences: too few to split 80/10/10")
    parts = [order[:a], order[a:b], order[b:]]
    train, dev, test = (Labelled(sentences=[data.sentences[i] for i in p], labels=[data.labels[i] for i in p])
                        for p in parts)
    return LabelledSplits(train=train, dev=dev, test=test, classes=2, source=str(path))


def load_tsv_folder(folder: Path, *, shown: str) -> LabelledSplits:
    """Any `train.tsv`, `dev.tsv`, `test.tsv` folder. The training labels must be 0..K-1 with each of them
    present, K at least 2; classes = K, and dev and test labels must lie in 0..K-1."""
    if not folder.is_dir():
        raise DataError(f"classify corpus folder {folder} not found ({shown}); expected a folder holding "
                        f"{', '.join(TSV_FILES)} of label<TAB>text lines; {POINT_ELSEWHERE}")
    _need_files(folder, TSV_FILES, "classify tsv")
    train = read_tsv(folder / TSV_FILES[0], classes=None)
    classes = check_labels(folder / TSV_FILES[0], train.labels)
    dev, test = (read_tsv(folder / n, classes=classes) for n in TSV_FILES[1:])
    return LabelledSplits(train=train, dev=dev, test=test, classes=classes, source=str(folder))


def check_labels(path: Path, labels: list[int]) -> int:
    """The number of classes of a training file's labels (all 0 or more): they must number at least two
    and run 0..K-1 without a gap, since the model's K outputs are the labels 0..K-1 and an absent one would
    be a class never trained on."""
    present = sorted(set(labels))
    if len(present) < 2:
        found = f"only label {present[0]}" if present else "no labels"
        raise DataError(f"{path} has {found}: a classifier needs at least two classes (labels 0 and 1 at least)")
    gaps = sorted(set(range(present[-1] + 1)) - set(present))
    if gaps:
        raise DataError(f"{path} has labels {', '.join(map(str, present))} but no {', '.join(map(str, gaps))}: "
                        f"labels must be 0..K-1 with every one of them in the training file; renumber them "
                        f"0..{len(present) - 1}")
    return len(present)


def _need_files(folder: Path, names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{what} data: {folder} lacks {', '.join(missing)}; expected {', '.join(names)} "
                        f"of label<TAB>text lines; {POINT_ELSEWHERE}")
