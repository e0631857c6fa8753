import math

import pytest
import torch
from torch import nn

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


def test_evaluations_and_steps_reported():
    x, y, model, masks = setup()
    log = run(model, masks, x, y, start_step=10)
    assert log.steps == list(range(11, 61))
    assert [s for s, _ in log.evals] == [20, 40, 60]
    assert all("val_loss" in m and "train_loss" in m and "lr" in m for _, m in log.evals)
    assert "test_loss" in log.evals[-1][1]  # test always scored at the end
    # test is scored exactly when val improves (or at the end)
    best = math.inf
    for i, (_, m) in enumerate(log.evals):
        assert ("test_accuracy" in m) == (m["val_loss"] < best or i == len(log.evals) - 1)
        best = min(best, m["val_loss"])


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
