"""What the nlp tasks give pruning criteria: a scoring sample and loss for SNIP and GraSP, and a one-line
refusal of SynFlow, whose all-ones input means nothing to an embedding of token ids."""

from pathlib import Path

import pytest
import torch

from ticketx import masks as M
from ticketx import pruning as P
from ticketx.task import TaskError
from ticketx_nlp.plugin import NLPPlugin

from test_nlp_classify import classify, write_reviews


def test_classifier_scoring_sample_is_class_balanced_from_the_training_split(tmp_path: Path):
    task = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")))
    (x, y), = task.scoring_batches(4, seed=1)
    assert sorted(y.tolist()) == [0] * 4 + [1] * 4
    train = {tuple(row) for row in task.data().train_x.tolist()}
    assert all(tuple(row) in train for row in x.tolist())
    model = task.build_model(0)
    masks = P.cut(P.CRITERIA["grasp"], model, M.ones(task.prunable(model)), 500, batches=[(x, y)],
                  loss=P.scoring_sample(task, 4, seed=1)[1])
    assert sum(int(m.sum()) for m in masks.values()) == 500


def test_language_model_scores_snip_on_windows_of_its_training_stream(tmp_path: Path, make_corpus, tiny):
    corpus = make_corpus(tmp_path / "c")
    task = NLPPlugin().make_task("word_lm", {"corpus": str(corpus), **tiny}, data_root=tmp_path)
    batches, loss = P.scoring_sample(task, 2, seed=0)
    (x, y), = batches
    assert x.shape == y.shape == (tiny["bptt"], 20)  # 10 windows per n_per_class, (T, B)
    assert torch.equal(x[1:], y[:-1])  # targets are the next tokens
    model = task.build_model(0)
    masks = P.cut(P.CRITERIA["snip"], model, M.ones(task.prunable(model)), 300, batches=batches, loss=loss)
    assert sum(int(m.sum()) for m in masks.values()) == 300


@pytest.mark.parametrize("name", ["word_lm", "classify"])
def test_synflow_is_refused_in_one_line(tmp_path: Path, make_corpus, tiny, name):
    if name == "classify":
        task = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")))
    else:
        task = NLPPlugin().make_task(name, {"corpus": str(make_corpus(tmp_path / "c")), **tiny}, data_root=tmp_path)
    with pytest.raises(TaskError, match=rf"^nlp/{name} cannot score SynFlow: its all-ones input is one token id "
                                        r"repeated.*drop the synflow arms$"):
        P.check_task(task, {"snip": "snip", "synflow": "synflow"})
