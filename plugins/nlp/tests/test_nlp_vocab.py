"""Tokenisation and vocabularies: <eos> per line, <unk>, min_freq, max_vocab, train split only, digests."""

from pathlib import Path

import pytest
import torch

from ticketx.task import TaskError
from ticketx_nlp import vocab as V
from ticketx_nlp.data import word_tokens
from ticketx_nlp.plugin import NLPPlugin


def test_word_tokens_end_every_line_with_eos():
    assert word_tokens("a b\n\nc  d e\n") == ["a", "b", "<eos>", "<eos>", "c", "d", "e", "<eos>"]
    assert word_tokens("a b") == ["a", "b", "<eos>"]  # no final newline: the last line still ends
    assert word_tokens("a\r\nb\r\n") == ["a", "<eos>", "b", "<eos>"]  # CRLF: \r is whitespace


def test_build_orders_by_count_then_code_point_and_applies_min_freq():
    tokens = "b a c a b a d <unk> e e".split()
    v = V.build(tokens, kind="word", min_freq=2)
    assert v.tokens == ("<unk>", "<eos>", "a", "b", "e")  # a:3, then b:2 and e:2 by code point; c, d once
    assert v.encode(["a", "c", "zzz", "<eos>", "<unk>"]).tolist() == [2, 0, 0, 1, 0]
    assert V.build(tokens, kind="word", min_freq=1, max_vocab=4).tokens == ("<unk>", "<eos>", "a", "b")
    chars = V.build(list("hello"), kind="char")
    assert chars.tokens == ("<unk>", "l", "e", "h", "o")
    assert chars.encode("hex").tolist() == [3, 2, 0]


def test_digest_is_a_function_of_kind_and_tokens():
    a = V.build("x y y".split(), kind="word")
    assert a.sha256 == V.build("y x y".split(), kind="word").sha256
    assert a.sha256 != V.build("x y y z".split(), kind="word").sha256
    same_list = ("<unk>", "<eos>")
    assert V.Vocab(same_list, "word").sha256 != V.Vocab(same_list, "char").sha256
    assert a.describe() == f"4 word tokens, sha256 {a.sha256[:12]}"
    assert V.from_spec(a.as_spec(), "here") == a


@pytest.mark.parametrize("tokens, kind, match", [
    (("x", "<unk>"), "word", r"a word vocabulary starts with \['<unk>', '<eos>'\]"),
    (("<unk>", "<eos>", "a", "a"), "word", r"repeated: \['a'\]"),
    (("<unk>",), "bytes", r"kind must be one of word, char, got 'bytes'"),
])
def test_malformed_vocabularies(tokens, kind, match):
    with pytest.raises(TaskError, match=match):
        V.Vocab(tokens, kind)


def test_edited_vocabulary_fails_its_digest():
    spec = V.build("a b".split(), kind="word").as_spec()
    spec["vocab"] = [*spec["vocab"], "c"]
    with pytest.raises(TaskError, match=r"here: the vocabulary's SHA-256 \w{12} does not match"):
        V.from_spec(spec, "here")
    with pytest.raises(TaskError, match="holds no vocabulary"):
        V.from_spec({"plugin": "vision"}, "ticket.json")


def test_task_vocabulary_comes_from_the_training_tokens_only(tmp_path: Path, make_corpus):
    folder = make_corpus(tmp_path / "c", train="the cat the dog\nthe cat\n", valid="zebra cat\n", test="the yak\n")
    task = NLPPlugin().make_task("word_lm", {"corpus": str(folder), "eval_batch_size": 1}, data_root=tmp_path)
    d = task.data()
    assert d.vocab.tokens == ("<unk>", "<eos>", "the", "cat", "dog")
    assert "zebra" not in d.vocab.index and "yak" not in d.vocab.index
    assert d.valid.tolist() == [0, 3, 1] and d.test.tolist() == [2, 0, 1]  # unseen words read as <unk>
    capped = NLPPlugin().make_task("word_lm", {"corpus": str(folder), "train_tokens": 3, "eval_batch_size": 1},
                                   data_root=tmp_path)
    # "the cat the": only the tokens it trains on; dog and <eos> never occur there
    assert capped.data().vocab.tokens == ("<unk>", "<eos>", "the", "cat")
    assert capped.data().train.tolist() == [2, 3, 2]
    frequent = NLPPlugin().make_task("word_lm", {"corpus": str(folder), "min_freq": 2, "eval_batch_size": 1},
                                     data_root=tmp_path)
    assert frequent.data().vocab.tokens == ("<unk>", "<eos>", "the", "cat")
    assert frequent.data().train.tolist() == [2, 3, 2, 0, 1, 2, 3, 1]  # dog (once) is <unk>


def test_char_task_splits_by_position_and_builds_from_train(tmp_path: Path):
    text = "ab" * 45 + "xyz" * 2 + "wwwww"  # 90 + 6 + 5 = 101 characters
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    task = NLPPlugin().make_task("char_lm", {"corpus": "t.txt", "eval_batch_size": 2}, data_root=tmp_path)
    d = task.data()
    assert d.vocab.tokens == ("<unk>", "a", "b")
    assert d.train.shape[0] == 90 and d.valid.shape[0] == 5 and d.test.shape[0] == 6
    assert bool((d.test == 0).all())  # w, x, y, z never occur in the training 90%
    assert task.spec()["vocab"] == ["<unk>", "a", "b"] and task.spec()["vocab_kind"] == "char"
    assert torch.equal(task.data().train, d.train)  # loaded once per task object
