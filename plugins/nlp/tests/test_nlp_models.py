"""Models: masks held on nn.LSTM's gate matrices through training, tied weights, prunable and head sets."""

from pathlib import Path

import pytest
import torch

from ticketx import masks as M
from ticketx.jobs import check_masked
from ticketx.task import Plan
from ticketx_nlp.models import LSTMLanguageModel, parameter_count
from ticketx_nlp.plugin import NLPPlugin

LSTM_MATRICES = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"]


@pytest.fixture
def task(tmp_path: Path, make_corpus, tiny):
    return NLPPlugin().make_task("word_lm", {"corpus": str(make_corpus(tmp_path / "c")), **tiny, "dropout": 0.3},
                                 data_root=tmp_path)


def test_prunable_and_head_names(task, tmp_path: Path):
    model = task.build_model(0)
    assert list(task.prunable(model)) == ["encoder.weight", *LSTM_MATRICES, "decoder.weight"]
    assert task.head(model) == {"encoder.weight", "decoder.weight", "decoder.bias"}
    assert not any("bias" in n for n in task.prunable(model))
    o = task.options.as_dict()
    dense_emb = NLPPlugin().make_task("word_lm", {**o, "prune_embeddings": False}, data_root=tmp_path)
    assert list(dense_emb.prunable(model)) == LSTM_MATRICES  # Yu et al.'s ablation: embeddings left dense
    kept = NLPPlugin().make_task("word_lm", {**o, "transfer_embeddings": True}, data_root=tmp_path)
    assert kept.head(model) == set()
    three = NLPPlugin().make_task("word_lm", {**o, "layers": 3}, data_root=tmp_path)
    assert "rnn.weight_hh_l2" in three.prunable(three.build_model(0))


def test_build_model_is_a_function_of_the_seed_and_leaves_the_rng_alone(task):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = task.build_model(5), task.build_model(5), task.build_model(6)
    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.rnn.weight_hh_l0, c.rnn.weight_hh_l0)
    assert a.encoder.weight.abs().max() <= 0.1 and bool((a.decoder.bias == 0).all())


def test_lstm_forward_reads_the_masked_parameters_in_place(task):
    model = task.build_model(0).eval()
    x = torch.randint(0, len(task.data().vocab), (5, 2), generator=torch.Generator().manual_seed(0))
    before, _ = model(x)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0)  # what the core does after each optimizer step
        model.rnn.weight_ih_l1[:3].mul_(0)
    after, _ = model(x)
    rebuilt = task.build_model(0).eval()
    rebuilt.load_state_dict(model.state_dict())  # a fresh module holding the zeroed weights
    assert not torch.allclose(before, after)
    assert torch.equal(after, rebuilt(x)[0])


def test_pruned_gate_weights_stay_exactly_zero_after_adam_steps(task, recorder):
    model = task.build_model(0)
    g = torch.Generator().manual_seed(1)
    masks = {n: (torch.rand(p.shape, generator=g) > 0.5).float() for n, p in task.prunable(model).items()}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = Plan(steps=12, batch_size=4, optimizer="adam", lr=0.01, eval_every=6)
    task.train(model, masks, plan, recorder)
    params = dict(model.named_parameters())
    for name in LSTM_MATRICES:
        pruned = masks[name] == 0
        assert bool(pruned.any()) and bool((params[name].detach()[pruned] == 0).all()), name
        kept = ~pruned
        assert not torch.equal(params[name].detach()[kept], start[name][kept]), f"{name} did not train"
    check_masked(model, masks, "nlp")  # the core's own check after every arm
    assert recorder.steps == list(range(1, 13)) and [s for s, _ in recorder.evals] == [6, 12]
    assert {"train_loss", "val_loss", "val_perplexity", "test_loss", "test_perplexity"} <= set(recorder.evals[-1][1])


def test_training_is_a_function_of_model_masks_and_plan(task, recorder):
    masks = M.ones({n: p.detach() for n, p in task.prunable(task.build_model(0)).items()})
    plan = Plan(steps=6, batch_size=4, optimizer="adam", lr=0.01, eval_every=6, data_seed=3)
    a, b = task.build_model(0), task.build_model(0)
    task.train(a, masks, plan, recorder)
    torch.rand(5)  # the global RNG moved on: dropout draws from a fork seeded by the plan
    task.train(b, masks, plan, recorder)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_tied_weights_are_one_matrix(tmp_path: Path, make_corpus, tiny):
    t = NLPPlugin().make_task("word_lm", {"corpus": str(make_corpus(tmp_path / "c")), **tiny, "tie_weights": True},
                              data_root=tmp_path)
    model = t.build_model(0)
    untied = LSTMLanguageModel(len(t.data().vocab), 8, 8, 2, 0.0, False)
    assert parameter_count(untied) - parameter_count(model) == 8 * len(t.data().vocab)
    assert "decoder.weight" not in model.state_dict() and model.decoder_weight() is model.encoder.weight
    assert list(t.prunable(model)) == ["encoder.weight", *LSTM_MATRICES]
    assert t.head(model) == {"encoder.weight", "decoder.bias"}
    x = torch.tensor([[2], [3]])
    logits, _ = model.eval()(x)
    logits[-1, 0, 4].backward()
    assert model.encoder.weight.grad[4].abs().sum() > 0  # the decoder's row 4 is the embedding's row 4
    with torch.no_grad():
        model.encoder.weight[4].zero_()
    assert model(x)[0][-1, 0, 4] == model.decoder.bias[4]  # zeroing the embedding row zeroes the logit's weight


def test_gradient_clipping_keeps_pruned_weights_zero_and_bounds_each_step(task, recorder):
    """train.clip_grad_norm through the plugin: with plain SGD each step moves the weights by at most
    lr x clip (global L2 norm), and the pruned gate weights stay exactly zero."""
    g = torch.Generator().manual_seed(2)
    masks = {n: (torch.rand(p.shape, generator=g) > 0.5).float() for n, p in task.prunable(task.build_model(0)).items()}

    def moved(clip: float) -> float:
        model = task.build_model(0)
        start = {n: p.detach() * masks[n] if n in masks else p.detach().clone() for n, p in model.named_parameters()}
        task.train(model, masks, Plan(steps=6, batch_size=4, optimizer="sgd", lr=1.0, eval_every=6,
                                      clip_grad_norm=clip), recorder)
        params = dict(model.named_parameters())
        for name in LSTM_MATRICES:
            assert bool((params[name].detach()[masks[name] == 0] == 0).all()), name
        check_masked(model, masks, "nlp")
        return sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in params.items()) ** 0.5

    clip = 1e-3
    assert moved(clip) <= 6 * 1.0 * clip * (1 + 1e-4)  # 6 steps of at most lr x clip each
    assert moved(0.0) > 20 * 6 * clip  # unclipped, the same steps move far more: the clip was active
