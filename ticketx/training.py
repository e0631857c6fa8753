"""The supervised training loop that vision and NLP plugins share.

Masks are held by multiplying each pruned weight by its mask in place after every optimizer step: ~3.5% of
a LeNet-300-100 step at batch 60 here, against 15-19% for torch.nn.utils.prune's forward hook. Pruned
weights are therefore exactly zero at every step whatever the optimizer (momentum, Adam moments and
weight decay all act on them between the step and the multiply, never after it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .task import Masks, Observer, Plan, TaskError

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (inputs, targets)
LossFn = Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
EvalFn = Callable[[nn.Module, str], dict[str, float]]  # (model, split) -> unprefixed metrics


def make_optimizer(params: list[nn.Parameter], plan: Plan) -> torch.optim.Optimizer:
    """The optimizer named by `plan.optimizer`."""
    if plan.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=plan.lr, momentum=plan.momentum, nesterov=plan.nesterov,
            weight_decay=plan.weight_decay,
        )
    if plan.optimizer == "adam":
        return torch.optim.Adam(params, lr=plan.lr, weight_decay=plan.weight_decay)
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    raise TaskError(f"train.optimizer must be one of 'sgd', 'adam', 'adamw', got {plan.optimizer!r}")


def lr_at(step: int, plan: Plan) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then step decay at milestones."""
    lr = plan.lr
    if plan.warmup_steps > 0 and step < plan.warmup_steps:
        lr *= (step + 1) / plan.warmup_steps
    decays = sum(1 for m in plan.milestones if step >= m)
    return lr * plan.gamma**decays


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Multiply each masked parameter of `model` by its mask, in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


def active_masks(model: nn.Module, masks: Masks) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, mask) pairs for the masks that prune something; all-ones masks cost nothing to hold."""
    params = dict(model.named_parameters())
    missing = sorted(set(masks) - set(params))
    if missing:
        raise TaskError(f"masks name parameters the model does not have: {', '.join(missing)}")
    return [(params[n], m.to(params[n].dtype)) for n, m in masks.items() if not bool(m.all())]


def fit(
    model: nn.Module,
    masks: Masks,
    plan: Plan,
    observer: Observer,
    *,
    batch_at: BatchFn,
    loss_fn: LossFn,
    evaluate: EvalFn,
    test_every_eval: bool = False,
) -> None:
    """Train `model` in place from `plan.start_step` to `plan.steps`, masks held, evaluating as it goes.

    Every `plan.eval_every` steps and at the last step the validation split is evaluated; the test split
    is evaluated at the last step and whenever the validation loss reaches a new minimum (so the test
    metric at the early-stopping iteration is always known without scoring test at every evaluation),
    or at every evaluation with `test_every_eval`. `batch_at(step)` must be a pure function of the step
    (and the plan's data seed) so that rewinding to step k replays the same data order.
    """
    if plan.steps <= plan.start_step:
        raise TaskError(
            f"train.steps ({plan.steps}) must exceed the rewind step ({plan.start_step})"
        )
    held = active_masks(model, masks)
    with torch.no_grad():
        for p, m in held:
            p.mul_(m)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], plan)
    best_val = math.inf
    window_loss, window_steps = torch.zeros(()), 0  # mean training loss since the last evaluation
    model.train()
    for step in range(plan.start_step, plan.steps):
        lr = lr_at(step, plan)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch_at(step)
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, m in held:
                p.mul_(m)
        window_loss += loss.detach()
        window_steps += 1
        done = step + 1
        observer.on_step(done, model)
        if done % plan.eval_every == 0 or done == plan.steps:
            model.eval()
            metrics = {"train_loss": float(window_loss) / window_steps, "lr": lr}
            window_loss, window_steps = torch.zeros(()), 0
            metrics.update(prefixed(evaluate(model, "val"), "val"))
            val_loss = metrics["val_loss"]
            if not math.isfinite(val_loss):
                raise TaskError(
                    f"validation loss became {val_loss} at step {done}: training diverged "
                    f"(try a lower train.lr than {plan.lr} or train.warmup_steps)"
                )
            if test_every_eval or val_loss < best_val or done == plan.steps:
                metrics.update(prefixed(evaluate(model, "test"), "test"))
            best_val = min(best_val, val_loss)
            observer.on_eval(done, metrics)
            model.train()
    model.eval()


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 1000
) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of `model` on in-memory `inputs` (N, ...) and `targets` (N,)."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, targets.shape[0]
    for i in range(0, n, batch_size):
        logits = model(inputs[i : i + batch_size])  # (b, classes)
        y = targets[i : i + batch_size]
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    return {"loss": total_loss / n, "accuracy": correct / n}


class EpochBatches:
    """Batches of in-memory tensors, sliced by a seeded permutation per epoch: batch `step` is a pure
    function of (seed, step), so a rewound run replays exactly the data order of the run it rewinds.

    A DataLoader with per-image transforms spends ~80% of a LeNet step loading; slicing a tensor does not.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        seed: int,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        if batch_size > inputs.shape[0]:
            raise TaskError(
                f"train.batch_size ({batch_size}) exceeds the training set ({inputs.shape[0]} examples)"
            )
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.seed, self.transform = batch_size, seed, transform
        self.per_epoch = inputs.shape[0] // batch_size  # the last partial batch is dropped
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.inputs.shape[0], generator=g)
            self._epoch = epoch
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.inputs[idx]
        if self.transform is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * step + 1)
            x = self.transform(x, g)
        return x, self.targets[idx]


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a classifier on one batch."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """`{'loss': 1}` -> `{'val_loss': 1}` for prefix 'val'."""
    return {f"{prefix}_{k}": v for k, v in metrics.items()}
