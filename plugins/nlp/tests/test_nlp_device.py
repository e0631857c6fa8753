"""The data on the training device: copies made once per device, windows and batches made there (torch's
meta device stands in for a GPU: a CPU tensor mixed in fails there), the carried state through a
checkpoint, training and evaluation with plan.device on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from test_nlp_classify import classify, write_reviews

from ticketx.task import Plan
from ticketx.training import EpochBatches
from ticketx_nlp.batching import CarriedStateLoss, StreamBatches
from ticketx_nlp.models import LSTMLanguageModel
from ticketx_nlp.plugin import NLPPlugin
from ticketx_nlp.task import on_device


def lm_task(tmp_path: Path, make_corpus, tiny):
    return NLPPlugin().make_task("word_lm", {"corpus": str(make_corpus(tmp_path / "c")), **tiny}, data_root=tmp_path)


def test_lm_streams_are_copied_once_per_device(tmp_path: Path, make_corpus, tiny) -> None:
    task = lm_task(tmp_path, make_corpus, tiny)
    assert on_device(task, "cpu") is task.data()
    meta = on_device(task, "meta")
    assert meta is on_device(task, torch.device("meta")) and meta.vocab is task.data().vocab
    assert {t.device.type for t in (meta.train, meta.valid, meta.test)} == {"meta"}
    window = StreamBatches(meta.train, batch_size=4, bptt=5)(3)
    assert window.inputs.device.type == window.targets.device.type == "meta"


def test_classify_batches_are_gathered_on_the_device(tmp_path: Path) -> None:
    task = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")))
    d = on_device(task, "meta")
    assert d is on_device(task, "meta") and on_device(task, "cpu") is task.data()
    x, y = EpochBatches(d.train_x, d.train_y, 16, 0)(12)
    assert (x.device.type, y.device.type, x.shape[0]) == ("meta", "meta", 16)


def test_carried_state_survives_a_checkpoint() -> None:
    torch.manual_seed(0)
    model = LSTMLanguageModel(10, 4, 4, 2, 0.0, False).eval()
    b = StreamBatches(torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1)), 2, 5)
    straight = CarriedStateLoss()
    losses = [straight(model, b(step)) for step in range(3)]
    before = CarriedStateLoss()
    for step in range(2):
        before(model, b(step))
    saved = before.state_dict()  # what the core's checkpoint holds (tensors moved to the CPU, here already)
    assert saved["last"] == [0, 1] and len(saved["state"]) == 2
    after = CarriedStateLoss()
    after.load_state_dict({"state": tuple(t.clone() for t in saved["state"]), "last": saved["last"]})
    assert torch.equal(after(model, b(2)), losses[2])  # window 2 starts from window 1's state
    assert not torch.equal(CarriedStateLoss()(model, b(2)), losses[2])
    empty = CarriedStateLoss()
    empty.load_state_dict(CarriedStateLoss().state_dict())
    assert empty.state is None and empty.last is None


def test_training_and_evaluation_with_plan_device(tmp_path: Path, make_corpus, tiny, recorder) -> None:
    task = lm_task(tmp_path, make_corpus, tiny)
    model = task.build_model(0)
    plan = Plan(steps=4, batch_size=4, optimizer="adam", lr=1e-3, eval_every=2, device="cpu")
    before = torch.get_rng_state()
    task.train(model, {}, plan, recorder)
    assert torch.equal(torch.get_rng_state(), before)
    assert [s for s, _ in recorder.evals] == [2, 4] and task._on_device == {}
    assert set(task.evaluate(model)) == {"val_loss", "val_perplexity", "test_loss", "test_perplexity"}
    ctask = classify(tmp_path, dataset="tsv", corpus=str(write_reviews(tmp_path / "r")))
    ctask.train(ctask.build_model(0), {}, Plan(steps=3, batch_size=16, optimizer="adam", lr=1e-3, eval_every=3),
                recorder)
    assert recorder.evals[-1][0] == 3 and ctask._on_device == {}
