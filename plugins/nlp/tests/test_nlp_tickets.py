"""Tickets carry their vocabulary: save/load, vocab_from, and the check before a transfer."""

from pathlib import Path

import pytest
import torch

from ticketx import masks as M
from ticketx import ticket as T
from ticketx.task import TaskError
from ticketx.transferjob import Source, check_source
from ticketx_nlp.plugin import NLPPlugin

OTHER_WORDS = ("a", "bird", "flew", "over", "the", "river", "and", "sang", "song", "tree")


def lm(root: Path, corpus: Path, tiny: dict, **options):
    return NLPPlugin().make_task("word_lm", {"corpus": str(corpus), **tiny, **options}, data_root=root)


def save_ticket(task, path: Path) -> Path:
    model = task.build_model(0)
    g = torch.Generator().manual_seed(0)
    masks = M.random_like(M.ones({n: p.detach() for n, p in task.prunable(model).items()}), g)
    return T.save(T.make(masks, model.state_dict(), task=task.spec(), seed=0, level=1), path)


@pytest.fixture
def corpora(tmp_path: Path, make_corpus):
    return make_corpus(tmp_path / "a"), make_corpus(tmp_path / "b", seed=7, words=OTHER_WORDS)


def test_ticket_saves_and_loads_its_vocabulary(tmp_path: Path, corpora, tiny):
    task = lm(tmp_path, corpora[0], tiny)
    path = save_ticket(task, tmp_path / "ticket")
    loaded = T.load(path)
    spec = loaded.meta["task"]
    vocab = task.data().vocab
    assert spec["plugin"] == "nlp" and spec["task"] == "word_lm" and spec["options"]["corpus"] == str(corpora[0])
    assert spec["vocab"] == list(vocab.tokens) and spec["vocab_sha256"] == vocab.sha256
    assert spec["vocab_size"] == len(vocab) and spec["vocab_kind"] == "word"
    model = task.build_model(0)
    T.check_fits(loaded, model, task.prunable(model))
    model.load_state_dict(loaded.weights)


def test_vocab_from_reuses_a_ticket_vocabulary(tmp_path: Path, corpora, tiny):
    source = lm(tmp_path, corpora[0], tiny)
    path = save_ticket(source, tmp_path / "ticket")
    # another corpus and another vocabulary rule: the ticket's vocabulary wins
    reused = lm(tmp_path, corpora[1], tiny, vocab_from=str(path), min_freq=5)
    assert reused.data().vocab == source.data().vocab
    assert reused.spec()["vocab_sha256"] == source.spec()["vocab_sha256"]
    assert "bird" not in reused.data().vocab.index and int((reused.data().train == 0).sum()) > 0  # <unk> now
    model = reused.build_model(0)
    T.check_fits(T.load(path), model, reused.prunable(model))  # the ticket fits the model it now builds
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text((path / "ticket.json").read_text())  # a find job folder holds "task" too
    assert lm(tmp_path, corpora[1], tiny, vocab_from=str(job)).data().vocab == source.data().vocab
    chars = tmp_path / "chars.txt"
    chars.write_text("hello world, " * 20)
    with pytest.raises(TaskError, match=r"holds a word-level vocabulary; this task tokenises at char level"):
        NLPPlugin().make_task("char_lm", {"corpus": str(chars), "vocab_from": str(path)}, data_root=tmp_path).prepare()


def test_check_source_refuses_kept_embeddings_on_another_vocabulary(tmp_path: Path, corpora, tiny):
    source = lm(tmp_path, corpora[0], tiny)
    path = save_ticket(source, tmp_path / "ticket")
    meta = T.load(path).meta
    keep = lm(tmp_path, corpora[1], tiny, transfer_embeddings=True)
    a, b = source.data().vocab, keep.data().vocab
    with pytest.raises(TaskError, match=rf"the ticket's vocabulary \({len(a)} word tokens, sha256 {a.sha256[:12]}\) "
                                        rf"differs from this task's \({len(b)} word tokens, sha256 {b.sha256[:12]}\)"
                                        r".*set task.vocab_from to the ticket's folder"):
        keep.check_source(meta)
    lm(tmp_path, corpora[1], tiny).check_source(meta)  # embeddings re-initialised: any vocabulary will do
    lm(tmp_path, corpora[1], tiny, transfer_embeddings=True, vocab_from=str(path)).check_source(meta)
    with pytest.raises(TaskError, match=r"the ticket's vocabulary \(none recorded: not an nlp ticket\)"):
        keep.check_source({"task": {"plugin": "vision"}})


def test_transfer_onto_a_new_vocabulary_reinitialises_the_head(tmp_path: Path, corpora, tiny):
    source = lm(tmp_path, corpora[0], tiny)
    ticket = T.load(save_ticket(source, tmp_path / "ticket"))
    target = lm(tmp_path, corpora[1], tiny)
    model = target.build_model(0)
    assert model.encoder.weight.shape != ticket.weights["encoder.weight"].shape  # another vocabulary size
    check_source(Source(1, ticket, "t"), target, model)  # the core's check: the head is not compared
    keep = lm(tmp_path, corpora[1], tiny, transfer_embeddings=True)
    with pytest.raises(TaskError, match="set task.vocab_from"):  # the hook runs before shapes are compared
        check_source(Source(1, ticket, "t"), keep, keep.build_model(0))


def test_check_ticket_names_the_vocabulary_it_expects(tmp_path: Path, make_corpus, tiny):
    a = make_corpus(tmp_path / "a", words=OTHER_WORDS)
    b = make_corpus(tmp_path / "b", words=tuple(f"x{w}" for w in OTHER_WORDS))  # the same text, words renamed
    source = lm(tmp_path, a, tiny)
    path = save_ticket(source, tmp_path / "ticket")
    ticket = T.load(path)
    source.check_ticket(ticket.meta)  # its own vocabulary
    other = lm(tmp_path, b, tiny)
    va, vb = source.data().vocab, other.data().vocab
    assert len(va) == len(vb) and va != vb  # same shapes: only the vocabulary tells them apart
    model = other.build_model(0)
    T.check_fits(ticket, model, other.prunable(model))  # the core's shape check passes...
    with pytest.raises(TaskError, match=rf"vocabulary mismatch: the ticket expects the vocabulary it was found with "
                                        rf"\({len(va)} word tokens, sha256 {va.sha256[:12]}\), but this task built "
                                        rf"another one \({len(vb)} word tokens, sha256 {vb.sha256[:12]}\) from {b}"
                                        r".*Set task.vocab_from to the ticket's folder"):
        other.check_ticket(ticket.meta)  # ...the vocabulary check does not
    lm(tmp_path, b, tiny, vocab_from=str(path)).check_ticket(ticket.meta)
    with pytest.raises(TaskError, match=r"the ticket records no vocabulary \(none recorded: not an nlp ticket\)"):
        source.check_ticket({"task": {"plugin": "vision"}})
    # a classifier ticket likewise
    for name, words in (("ca", "good bad fine awful"), ("cb", "great poor nice dull")):
        (tmp_path / name).mkdir()
        for split in ("train", "dev", "test"):
            lines = (f"{i % 2}\t{w} film\n" for i, w in enumerate(words.split()))
            (tmp_path / name / f"{split}.tsv").write_text("".join(lines))
    clf = NLPPlugin().make_task("classify", {"dataset": "tsv", "corpus": "ca", "emb_size": 4, "hidden_size": 4},
                                data_root=tmp_path)
    meta = T.load(save_ticket(clf, tmp_path / "clf")).meta
    clf.check_ticket(meta)
    with pytest.raises(TaskError, match=r"vocabulary mismatch: the ticket expects .* \(7 word tokens"):
        NLPPlugin().make_task("classify", {"dataset": "tsv", "corpus": "cb", "emb_size": 4, "hidden_size": 4},
                              data_root=tmp_path).check_ticket(meta)
