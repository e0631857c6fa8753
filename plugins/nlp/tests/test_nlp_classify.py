"""The LSTM classifier on tiny label<TAB>text files: padding, SST-2 from SST-5, the MR split, training."""

import random
from pathlib import Path

import pytest
import torch

from ticketx.task import Plan
from ticketx_nlp.models import PAD
from ticketx_nlp.plugin import NLPPlugin

FILLER = ("the", "film", "was", "a", "story", "of", "it", "and", "plot", "actors")


def review(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 7))]
    words.insert(rng.randint(0, len(words)), "good" if label else "bad")
    return " ".join(words)


def write_reviews(folder: Path, sizes=(("train.tsv", 160), ("dev.tsv", 40), ("test.tsv", 40))) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in sizes:
        labels = [i % 2 for i in range(n)]
        (folder / name).write_text("".join(f"{y}\t{review(rng, y)}\n" for y in labels), encoding="utf-8")
    return folder


def classify(root: Path, **options):
    return NLPPlugin().make_task("classify", {"emb_size": 16, "hidden_size": 16, "dropout": 0.0, **options},
                                 data_root=root)


def test_sentences_are_padded_and_cut(tmp_path: Path):
    folder = write_reviews(tmp_path / "r")
    (folder / "dev.tsv").write_text("1\tgood\n0\tbad film bad plot bad actors\n")
    d = classify(tmp_path, dataset="tsv", corpus="r", max_len=4).data()
    assert d.classes == 2 and d.val_x.shape == (2, 4)
    v = d.vocab.index
    assert d.val_x.tolist() == [[v["good"], PAD, PAD, PAD], [v["bad"], v["film"], v["bad"], v["plot"]]]
    assert d.val_y.tolist() == [1, 0] and d.train_x.shape[0] == 160


def test_classifier_ignores_padding(tmp_path: Path):
    task = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")))
    model = task.build_model(0).eval()
    v = task.data().vocab.index
    short = torch.tensor([[v["good"], v["film"], PAD]])
    padded_more = torch.tensor([[v["good"], v["film"], PAD, PAD, PAD]])
    alone = torch.tensor([[v["good"], v["film"]]])
    assert torch.allclose(model(short), model(alone)) and torch.allclose(model(padded_more), model(alone))
    batch = torch.tensor([[v["good"], v["film"], PAD], [v["bad"], v["film"], v["plot"]]])
    assert torch.allclose(model(batch)[0], model(alone)[0], atol=1e-6)  # a longer neighbour changes nothing


def test_prunable_and_head(tmp_path: Path):
    task = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")), layers=2)
    model = task.build_model(0)
    assert list(task.prunable(model)) == ["encoder.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                                          "rnn.weight_ih_l1", "rnn.weight_hh_l1", "classifier.weight"]
    assert task.head(model) == {"encoder.weight", "classifier.weight", "classifier.bias"}
    kept = classify(tmp_path, dataset="tsv", corpus=str(tmp_path / "r"), transfer_embeddings=True,
                    prune_embeddings=False)
    assert kept.head(model) == {"classifier.weight", "classifier.bias"}
    assert "encoder.weight" not in kept.prunable(model)


def test_training_learns_a_keyword_task(tmp_path: Path, recorder):
    task = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")))
    model = task.build_model(0)
    masks = {n: torch.ones_like(p) for n, p in task.prunable(model).items()}
    masks["rnn.weight_hh_l0"][::2] = 0  # half the recurrent rows pruned
    task.train(model, masks, Plan(steps=60, batch_size=16, optimizer="adam", lr=0.02, eval_every=30), recorder)
    first, last = recorder.evals[0][1], recorder.evals[-1][1]
    assert last["val_accuracy"] >= 0.9 and last["test_accuracy"] >= 0.9, recorder.evals
    assert bool((model.rnn.weight_hh_l0[::2] == 0).all())
    assert set(task.evaluate(model)) == {"val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    assert first["val_loss"] > last["val_loss"]


def test_sst2_is_derived_from_sst5(tmp_path: Path):
    sst = tmp_path / "text" / "sst"
    sst.mkdir(parents=True)
    rows = "0\tawful\n1\tbad\n2\tso so\n3\tnice\n4\tsuperb\n"
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (sst / name).write_text(rows)
    five = classify(tmp_path, dataset="sst5").data()
    two = classify(tmp_path, dataset="sst2").data()
    assert five.classes == 5 and five.train_y.tolist() == [0, 1, 2, 3, 4]
    assert two.classes == 2 and two.train_y.tolist() == [0, 0, 1, 1] and two.test_y.tolist() == [0, 0, 1, 1]
    assert "so" not in two.vocab.index  # the dropped neutral sentence is not training text


def test_mr_split_is_seeded_80_10_10(tmp_path: Path):
    mr = tmp_path / "text" / "mr"
    mr.mkdir(parents=True)
    (mr / "all.tsv").write_text("".join(f"{i % 2}\tsentence number w{i}\n" for i in range(100)))
    a, b = classify(tmp_path, dataset="mr").data(), classify(tmp_path, dataset="mr").data()
    c = classify(tmp_path, dataset="mr", split_seed=1).data()
    assert (a.train_x.shape[0], a.val_x.shape[0], a.test_x.shape[0]) == (80, 10, 10)
    train_words = [t for t in a.vocab.tokens if t.startswith("w")]  # one distinct word per sentence
    assert len(train_words) == 80 and a.vocab == b.vocab and a.vocab != c.vocab  # the seed picks the split
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.test_y, b.test_y)
    assert bool((a.test_x[:, 2] == 0).all())  # test sentences' words never occur in training: <unk>
    limited = classify(tmp_path, dataset="mr", train_examples=20).data()
    assert limited.train_x.shape[0] == 20 and torch.equal(limited.train_x[:, :2], a.train_x[:20, :2])


def test_real_sst2_loads(real_data_root: Path):
    d = classify(real_data_root, dataset="sst2").data()
    assert (d.train_x.shape[0], d.val_x.shape[0], d.test_x.shape[0]) == (6920, 872, 1821)
    assert d.classes == 2


@pytest.mark.parametrize("dataset, sizes", [("sst5", (8544, 1101, 2210)), ("mr", (8529, 1066, 1067))])
def test_real_sst5_and_mr_load(real_data_root: Path, dataset, sizes):
    d = classify(real_data_root, dataset=dataset).data()
    assert (d.train_x.shape[0], d.val_x.shape[0], d.test_x.shape[0]) == sizes
