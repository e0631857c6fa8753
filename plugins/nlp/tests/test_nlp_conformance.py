"""The nlp plugin passes the conformance kit (ticketx.testing) on tiny corpora written to tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ticketx.testing import check_task
from ticketx_nlp.plugin import NLPPlugin


def test_the_word_lm_passes_the_conformance_kit(tmp_path: Path, make_corpus: Callable[..., Path],
                                                tiny: dict[str, object]) -> None:
    corpus = make_corpus(tmp_path / "corpus")  # train.txt, valid.txt, test.txt
    task = NLPPlugin().make_task("word_lm", {"corpus": str(corpus), **tiny}, data_root=tmp_path)
    check_task(task, plugin="nlp", name="word_lm", tmp_dir=tmp_path)


def test_the_char_lm_passes_the_conformance_kit(tmp_path: Path, make_sentences: Callable[..., str],
                                                tiny: dict[str, object]) -> None:
    (tmp_path / "input.txt").write_text(make_sentences(80, 0))  # one file, split 90/5/5 by position
    task = NLPPlugin().make_task("char_lm", {"corpus": "input.txt", **tiny}, data_root=tmp_path)
    check_task(task, plugin="nlp", name="char_lm", tmp_dir=tmp_path)


def test_the_classifier_passes_the_conformance_kit(tmp_path: Path, make_sentences: Callable[..., str]) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    for i, (split, n) in enumerate((("train.tsv", 40), ("dev.tsv", 10), ("test.tsv", 10))):
        lines = make_sentences(n, i).splitlines()
        # the label is in the text ("good" or "bad"): a classifier with something to learn
        (folder / split).write_text("".join(f"{j % 2}\t{('bad', 'good')[j % 2]} {s}\n" for j, s in enumerate(lines)))
    task = NLPPlugin().make_task("classify", {"dataset": "tsv", "corpus": str(folder), "emb_size": 8,
                                              "hidden_size": 8, "dropout": 0.0}, data_root=tmp_path)
    check_task(task, plugin="nlp", name="classify", tmp_dir=tmp_path)
