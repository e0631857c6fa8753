"""BPTT batching (shapes, a pure function of the step), the carried LSTM state, and perplexity by hand."""

import math

import pytest
import torch

from ticketx.task import TaskError
from ticketx_nlp.batching import CarriedStateLoss, StreamBatches, batchify, evaluate_stream, steps_per_epoch
from ticketx_nlp.models import LSTMLanguageModel


def test_batchify_makes_contiguous_columns():
    data = batchify(torch.arange(11), 3)  # 11 // 3 = 3 rows; the 2 last tokens dropped
    assert data.shape == (3, 3)
    assert data.t().tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_windows_shapes_targets_and_epochs():
    ids = torch.arange(100)
    b = StreamBatches(ids, batch_size=4, bptt=6)  # 25 rows -> (25 - 1) // 6 = 4 windows per epoch
    assert b.per_epoch == 4 == steps_per_epoch(100, 4, 6)
    x, y, epoch, window = b(0)
    assert x.shape == y.shape == (6, 4) and (epoch, window) == (0, 0)
    assert x[:, 0].tolist() == list(range(6)) and y[:, 0].tolist() == list(range(1, 7))
    assert x[:, 1].tolist() == list(range(25, 31))  # column 1 is the second quarter of the stream
    assert b(3).inputs[-1, 0] == 23 and b(3).targets[-1, 0] == 24  # the last whole window
    assert torch.equal(b(4).inputs, b(0).inputs) and (b(4).epoch, b(4).window) == (1, 0)


def test_batch_at_is_a_pure_function_of_the_step():
    ids = torch.randint(0, 50, (997,), generator=torch.Generator().manual_seed(0))
    replayed = StreamBatches(ids, batch_size=5, bptt=7)
    seen = [replayed(s) for s in range(17)]  # replay steps 0..16, then ask for 17
    at17 = replayed(17)
    fresh = StreamBatches(ids, batch_size=5, bptt=7)(17)
    assert torch.equal(at17.inputs, fresh.inputs) and torch.equal(at17.targets, fresh.targets)
    assert (at17.epoch, at17.window) == (fresh.epoch, fresh.window)
    assert torch.equal(seen[3].inputs, StreamBatches(ids, 5, 7)(3).inputs)


def test_too_short_a_stream_names_the_sizes():
    with pytest.raises(TaskError, match=r"has 20 tokens: too few for one window of train.batch_size 4 x "
                                        r"task.bptt 5 \(needs at least 24 tokens\)"):
        StreamBatches(torch.arange(20), batch_size=4, bptt=5)


def test_state_is_carried_between_consecutive_windows_only():
    torch.manual_seed(0)
    model = LSTMLanguageModel(10, 4, 4, 2, 0.0, False).eval()
    b = StreamBatches(torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1)), 2, 5)
    carried = CarriedStateLoss()
    first = carried(model, b(0))
    assert torch.equal(first, CarriedStateLoss()(model, b(0)))
    second = carried(model, b(1))  # follows window 0: starts from its state
    assert not torch.equal(second, CarriedStateLoss()(model, b(1)))
    assert not carried.state[0].requires_grad  # detached: truncated BPTT
    jumped = carried(model, b(5))  # not window 2: starts from zero
    assert torch.equal(jumped, CarriedStateLoss()(model, b(5)))
    last = b.per_epoch - 1
    carried(model, b(last))
    wrapped = carried(model, b(b.per_epoch))  # window 0 of epoch 1: a new epoch starts from zero
    assert torch.equal(wrapped, CarriedStateLoss()(model, b(0)))


def fixed_model(probs: list[float]) -> LSTMLanguageModel:
    """A model whose next-token distribution is `probs` whatever it reads: decoder weight 0, bias log p."""
    model = LSTMLanguageModel(len(probs), 3, 3, 2, 0.0, False)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(torch.tensor(probs).log())
    return model


def test_perplexity_matches_a_hand_computation():
    probs = [0.1, 0.2, 0.3, 0.4]
    ids = torch.tensor([0, 1, 2, 3, 3, 2, 1, 3, 3, 0, 2])  # batch 2: columns [0 1 2 3 3], [2 1 3 3 0]
    # every token but the first of each column is predicted once: 1 2 3 3 | 1 3 3 0
    targets = [1, 2, 3, 3, 1, 3, 3, 0]
    loss = -sum(math.log(probs[t]) for t in targets) / len(targets)
    for bptt in (1, 3, 35):  # however the windows cut the stream
        got = evaluate_stream(fixed_model(probs), ids, batch_size=2, bptt=bptt)
        assert got["loss"] == pytest.approx(loss, rel=1e-6)
        assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    uniform = evaluate_stream(fixed_model([0.25] * 4), ids, batch_size=2, bptt=2)
    assert uniform["perplexity"] == pytest.approx(4.0, rel=1e-6)  # a uniform model's perplexity is V


def test_evaluation_restores_the_training_mode_and_rejects_tiny_splits():
    model = fixed_model([0.5, 0.5]).train()
    evaluate_stream(model, torch.tensor([0, 1, 0, 1]), batch_size=2, bptt=3)
    assert model.training
    with pytest.raises(TaskError, match=r"split of 3 tokens is too short for task.eval_batch_size 2"):
        evaluate_stream(model, torch.tensor([0, 1, 0]), batch_size=2, bptt=3)
