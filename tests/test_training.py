import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ticketx import training
from ticketx.task import Plan, TaskError


class Log:
    def __init__(self):
        self.evals, self.steps = [], []

    def on_step(self, step, model):
        self.steps.append(step)

    def on_eval(self, step, metrics):
        self.evals.append((step, dict(metrics)))


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    masks = {"0.weight": (torch.rand(16, 8, generator=g) > 0.5).float(),
             "2.weight": (torch.rand(3, 16, generator=g) > 0.3).float()}
    return x, y, model, masks


def run(model, masks, x, y, **plan_kwargs):
    plan = Plan(**{"steps": 60, "batch_size": 32, "optimizer": "sgd", "lr": 0.1, "eval_every": 20,
                   **plan_kwargs})
    log = Log()
    batches = training.EpochBatches(x, y, plan.batch_size, plan.data_seed)
    training.fit(model, masks, plan, log, batch_at=batches, loss_fn=training.cross_entropy_loss,
                 evaluate=lambda m, split: training.evaluate_classifier(m, x, y))
    return log


@pytest.mark.parametrize("opt", [
    {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4},
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1},
])
def test_pruned_weights_stay_exactly_zero(opt):
    x, y, model, masks = setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run(model, masks, x, y, **opt)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert bool((params[name][m == 0] == 0).all())
        assert not torch.equal(params[name][m == 1], before[name][m == 1])  # survivors did train


@pytest.mark.parametrize("opt", [
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4},
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1},
    {"optimizer": "adam", "lr": 0.01, "clip_grad_norm": 0.5},
])
def test_adam_pins_pruned_weights_bit_for_bit_as_multiplying_by_the_masks(opt, monkeypatch):
    pinned = []
    pin = training.LeanAdam.pin_zeros
    monkeypatch.setattr(training.LeanAdam, "pin_zeros", lambda self, pairs: pinned.extend(pin(self, pairs)) or pinned)
    x, y, model, masks = setup()
    ours = run(model, masks, x, y, **opt)
    assert len(pinned) == 2  # both masked weights pinned: no mask multiplied in after the steps
    monkeypatch.setattr(training.LeanAdam, "pin_zeros", lambda self, pairs: [])  # the multiplying way
    x, y, reference, masks = setup()
    theirs = run(reference, masks, x, y, **opt)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    assert ours.evals == theirs.evals
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert bool((params[name][m == 0] == 0).all())  # +0 or -0 (a negative weight times 0)


def test_evaluations_and_steps_reported():
    x, y, model, masks = setup()
    log = run(model, masks, x, y, start_step=10)
    assert log.steps == list(range(11, 61))
    assert [s for s, _ in log.evals] == [20, 40, 60]
    assert all("val_loss" in m and "train_loss" in m and "lr" in m for _, m in log.evals)
    assert "test_loss" in log.evals[-1][1]  # test always scored at the end
    assert all("test_loss" not in m for _, m in log.evals[:-1])  # and nowhere else: val fell throughout
    assert [m["val_loss"] for _, m in log.evals] == sorted((m["val_loss"] for _, m in log.evals), reverse=True)


def _overfitting_run(steps, score_train=False):
    """SGD on random labels, validated on other random data: validation loss rises after a while."""
    x, y, model, masks = setup()
    g = torch.Generator().manual_seed(9)
    vx, vy = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    tx, ty = torch.randn(128, 8, generator=g), torch.randint(0, 3, (128,), generator=g)
    data = {"train": (x, y), "val": (vx, vy), "test": (tx, ty)}
    plan = Plan(steps=steps, batch_size=32, optimizer="sgd", lr=0.5, momentum=0.9, eval_every=10)
    log = Log()
    training.fit(model, masks, plan, log, batch_at=training.EpochBatches(x, y, 32, 0),
                 loss_fn=training.cross_entropy_loss,
                 evaluate=lambda m, split: training.evaluate_classifier(m, *data[split]),
                 score_train=score_train)
    return log


def test_test_split_is_scored_on_the_early_stop_weights_at_the_end():
    log = _overfitting_run(200)
    vals = [(m["val_loss"], s) for s, m in log.evals if "val_loss" in m]
    best_step = min(vals)[1]
    assert best_step < 200  # the search problem does overfit; otherwise this test shows nothing
    # evaluations in step order, then the early-stop weights' test score, then the final evaluation
    steps = [s for s, _ in log.evals]
    assert steps == list(range(10, 201, 10))[:-1] + [best_step, 200]
    deferred = log.evals[-2][1]
    assert set(deferred) == {"test_loss", "test_accuracy"}
    assert {"val_loss", "test_loss"} <= set(log.evals[-1][1])
    # the same run stopped at the early-stop step has exactly those weights, so the same test score
    short = _overfitting_run(best_step)
    assert short.evals[-1][1]["test_loss"] == deferred["test_loss"]
    assert short.evals[-1][1]["test_accuracy"] == deferred["test_accuracy"]


def test_same_seed_same_result_and_data_order_is_pure():
    x, y, m1, masks = setup()
    _, _, m2, _ = setup()
    run(m1, masks, x, y, data_seed=5)
    run(m2, masks, x, y, data_seed=5)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    b = training.EpochBatches(x, y, 32, seed=5)
    late = b(17)[0].clone()
    fresh = training.EpochBatches(x, y, 32, seed=5)
    assert torch.equal(fresh(17)[0], late)  # step 17 without replaying steps 0..16
    assert not torch.equal(training.EpochBatches(x, y, 32, seed=6)(17)[0], late)


def test_learning_rate_warmup_and_milestones():
    plan = Plan(steps=100, batch_size=1, optimizer="sgd", lr=1.0, warmup_steps=10, milestones=(50, 80),
                gamma=0.1)
    assert training.lr_at(0, plan) == pytest.approx(0.1)
    assert training.lr_at(9, plan) == pytest.approx(1.0)
    assert training.lr_at(49, plan) == pytest.approx(1.0)
    assert training.lr_at(50, plan) == pytest.approx(0.1)
    assert training.lr_at(85, plan) == pytest.approx(0.01)


def test_errors():
    x, y, model, masks = setup()
    with pytest.raises(TaskError, match=r"train.steps \(60\) must exceed the rewind step \(60\)"):
        run(model, masks, x, y, start_step=60)
    with pytest.raises(TaskError, match="masks name parameters the model does not have: nope"):
        run(model, {"nope": torch.ones(1)}, x, y)
    with pytest.raises(TaskError, match="train.optimizer must be one of"):
        run(model, masks, x, y, optimizer="lbfgs")
    with pytest.raises(TaskError, match=r"train.batch_size \(512\) exceeds the training set \(256"):
        training.EpochBatches(x, y, 512, 0)
    with pytest.raises(TaskError, match="training diverged"):
        run(model, masks, x * 1e30, y, lr=1e10)


def _trajectory(opt_factory, steps=25, drop_grad_at=None, train_step=False):
    """Parameters after each of `steps` steps of `opt_factory(params)` on a fixed problem (through
    `train_step()` instead of `step()` where asked)."""
    x, y, model, _ = setup(3)
    opt = opt_factory(list(model.parameters()))
    out = []
    for step in range(steps):
        for p in model.parameters():
            p.grad = None
        nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()
        if step == drop_grad_at:
            model[2].bias.grad = None  # a parameter that got no gradient this step
        opt.train_step() if train_step else opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out, opt


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("drop_grad_at", [None, 7])
@pytest.mark.parametrize("train_step", [False, True])
def test_lean_adam_is_torch_fused_adam_bit_for_bit(decoupled, drop_grad_at, train_step):
    kwargs = dict(lr=0.01, weight_decay=0.05, fused=True, decoupled_weight_decay=decoupled)
    ours, opt = _trajectory(lambda ps: training.LeanAdam(ps, **kwargs), drop_grad_at=drop_grad_at,
                            train_step=train_step)
    theirs, ref = _trajectory(lambda ps: torch.optim.Adam(ps, **kwargs), drop_grad_at=drop_grad_at)
    assert opt._lean is not None  # the direct path was taken after the first step
    for a, b in zip(ours, theirs):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    steps = [float(s["step"]) for s in opt.state_dict()["state"].values()]
    assert steps == [float(s["step"]) for s in ref.state_dict()["state"].values()]
    assert steps[-1] == (25 if drop_grad_at is None else 24)  # torch skips a parameter without gradient


def test_lean_adam_state_dict_round_trip_and_hooks():
    ours, opt = _trajectory(lambda ps: training.LeanAdam(ps, lr=0.01, fused=True), steps=5)
    state = opt.state_dict()
    x, y, model, _ = setup(3)
    fresh = training.LeanAdam(list(model.parameters()), lr=0.01, fused=True)
    fresh.load_state_dict(state)
    # the direct path's lists are rebuilt from the loaded state (a resumed checkpoint), never reused
    params = fresh.param_groups[0]["params"]
    assert fresh._lean is not None and fresh._lean is not opt._lean
    assert all(a is fresh.state[p]["exp_avg"] for a, p in zip(fresh._lean[1], params))
    calls = []
    fresh.register_step_post_hook(lambda *a: calls.append(1))
    nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()
    fresh.step()
    fresh.step()
    assert calls == [1, 1]
    assert [float(s["step"]) for s in fresh.state_dict()["state"].values()] == [7.0] * 4


def test_lean_adam_train_step_runs_step_hooks_once_when_there_are_any():
    calls = []
    _, opt = _trajectory(lambda ps: training.LeanAdam(ps, lr=0.01, fused=True), steps=3, train_step=True)
    handles = [opt.register_step_pre_hook(lambda *a: calls.append("pre")),
               register_optimizer_step_post_hook(lambda *a: calls.append("global post"))]
    try:
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        before = [p.detach().clone() for p in opt.param_groups[0]["params"]]
        opt.train_step()
        assert calls == ["pre", "global post"]
        assert all(not torch.equal(a, b) for a, b in zip(before, opt.param_groups[0]["params"]))
    finally:
        for h in handles:
            h.remove()
    opt.train_step()  # no hooks left: the direct path, nothing more recorded
    assert calls == ["pre", "global post"]
    assert [float(s["step"]) for s in opt.state_dict()["state"].values()] == [5.0] * 4


def test_make_optimizer_uses_fused_kernels_on_cpu():
    params = list(nn.Linear(4, 2).parameters())
    for name, cls in [("adam", training.LeanAdam), ("adamw", training.LeanAdam), ("sgd", torch.optim.SGD)]:
        opt = training.make_optimizer(params, Plan(steps=1, batch_size=1, optimizer=name, lr=0.1))
        assert type(opt) is cls and opt.param_groups[0]["fused"] is True
    adamw = training.make_optimizer(params, Plan(steps=1, batch_size=1, optimizer="adamw", lr=0.1))
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


def test_gradient_clipping_counts_surviving_weights_only():
    x, y, model, masks = setup()
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            grads = [p.grad for p in model.parameters()]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            params = dict(model.named_parameters())
            seen_pruned.append(max(float(params[n].grad[m == 0].abs().max()) for n, m in masks.items()))
            return super().step(closure)

    seen_pruned = []
    original = training.make_optimizer
    training.make_optimizer = lambda params, plan: Spy(params, lr=plan.lr)
    try:
        run(model, masks, x, y, lr=0.5, clip_grad_norm=0.05, steps=20)
    finally:
        training.make_optimizer = original
    assert len(seen) == 20 and max(seen) <= 0.05 * (1 + 1e-5)
    assert max(seen_pruned) == 0.0  # pruned weights' gradients were zeroed before the norm
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert bool((params[name][m == 0] == 0).all())
    # without clipping the same run takes larger steps
    x, y, unclipped, _ = setup()
    run(unclipped, masks, x, y, lr=0.5, steps=20)
    assert not torch.equal(unclipped[0].weight, model[0].weight)


def test_training_split_scored_at_the_end_for_the_generalisation_gap():
    log = _overfitting_run(200, score_train=True)
    deferred, final = log.evals[-2][1], log.evals[-1][1]
    assert set(deferred) == {"test_loss", "test_accuracy", "trainset_loss", "trainset_accuracy"}
    assert {"trainset_accuracy", "train_loss", "test_accuracy"} <= set(final)
    assert all("trainset_loss" not in m for _, m in log.evals[:-2])
    # random labels: the network fits its training set far better than it does unseen data
    assert final["trainset_accuracy"] > final["test_accuracy"] + 0.1
    short = _overfitting_run(log.evals[-2][0], score_train=True)
    assert short.evals[-1][1]["trainset_accuracy"] == deferred["trainset_accuracy"]
