"""The supervised training loop that vision and NLP plugins share.

Pruned weights are exactly zero at every step whatever the optimizer, device or precision. With Adam and
AdamW (torch's fused kernel: `LeanAdam` on the CPU, torch.optim.Adam on CUDA) they are pinned at no
per-step cost: their second-moment estimate starts at +inf (`pin_zeros`), so the update Adam gives them,
lr * m / (sqrt(v) + eps), is exactly zero at every step (v stays +inf; a finite m over +inf is 0 in IEEE
arithmetic), and weight decay, L2 or decoupled, scales a zero. The surviving weights' arithmetic is
untouched: training is bit for bit what multiplying by the masks after every step gives
(tests/test_training.py). With other optimizers (SGD with momentum) each pruned weight is multiplied by
its mask in place after every step (one `torch._foreach_mul_` over the masked tensors), after momentum
and weight decay have acted: one pass over the masked weights and their masks, a few percent of a
LeNet-300-100 step, against several times that for torch.nn.utils.prune's forward hook
(benchmarks/README.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.optim.optimizer import _get_scalar_dtype, _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from . import devices
from .task import Masks, Observer, Plan, StopTraining, TaskError

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (inputs, targets)
LossFn = Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
EvalFn = Callable[[nn.Module, str], dict[str, float]]  # (model, split) -> unprefixed metrics


def configure_torch(threads: int) -> None:
    """Set up torch in a ticketx process: `threads` intra-op threads, and denormal floats flushed to zero.

    Denormals (magnitudes below ~1.2e-38) turn up in Adam's moment estimates as gradients fade, and CPU
    arithmetic on them is many times slower: flushing them made LeNet-300-100 training on MNIST ~6%
    faster here (benchmarks/README.md). Rounding such values to zero changes no result that a float32
    network could express.
    """
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # returns False (a no-op) on CPUs without the mode


def make_optimizer(params: list[nn.Parameter], plan: Plan) -> torch.optim.Optimizer:
    """The optimizer named by `plan.optimizer`, with torch's fused kernel where the parameters allow it.

    The fused kernel does each step in one pass over every parameter instead of one op per tensor. On the
    CPU, `LeanAdam` calls it without torch.optim's per-step Python bookkeeping (benchmarks/README.md
    measures what that gains); on CUDA, and wherever a gradient scaler must reach the kernel, torch's
    own fused Adam is used. Either way the update is torch's fused Adam, bit for bit.
    """
    fused = _fusable(params)
    if plan.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=plan.lr, momentum=plan.momentum, nesterov=plan.nesterov,
            weight_decay=plan.weight_decay, fused=fused,
        )
    if plan.optimizer in ("adam", "adamw"):
        lean = fused and all(p.device.type == "cpu" for p in params) and plan.precision != "fp16"
        cls = LeanAdam if lean else torch.optim.Adam
        return cls(
            params, lr=plan.lr, weight_decay=plan.weight_decay, fused=fused,
            decoupled_weight_decay=plan.optimizer == "adamw",
        )
    raise TaskError(f"train.optimizer must be one of 'sgd', 'adam', 'adamw', got {plan.optimizer!r}")


def pin_zeros(optimizer: torch.optim.Optimizer, pairs: list[tuple[nn.Parameter, torch.Tensor]]) -> list[nn.Parameter]:
    """Keep each parameter's entries where its mask is 0 exactly as they are (zero, in a ticket) at no
    per-step cost, by starting their Adam second-moment estimate at +inf (see the module docstring).

    Works through torch.optim.Adam's public state: creates the state now, exactly as Adam's first step
    would, and fills +inf where masks are 0. Returns the parameters pinned: none for other optimizers
    or for Adam with amsgrad, maximize or a differentiable step (the masks are then multiplied in).
    """
    if not isinstance(optimizer, torch.optim.Adam):
        return []
    groups = [g for g in optimizer.param_groups if not (g["amsgrad"] or g["maximize"] or g["differentiable"])]
    trained = {id(p) for g in groups for p in g["params"]}
    pinned = [(p, m) for p, m in pairs if id(p) in trained]
    for group in groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if len(state) == 0:  # as torch.optim.Adam._init_group creates it
                on_device = group["fused"] or group["capturable"]
                state["step"] = (
                    torch.zeros((), dtype=_get_scalar_dtype(is_fused=group["fused"]), device=p.device)
                    if on_device else torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    with torch.no_grad():
        for p, m in pinned:
            optimizer.state[p]["exp_avg_sq"].masked_fill_(m == 0, math.inf)
    return [p for p, _ in pinned]


def _fusable(params: list[nn.Parameter]) -> bool | None:
    """True when torch's fused optimizer kernels take these parameters (floating point, one supported
    device type for all); None (torch's default choice) otherwise."""
    devices = {p.device.type for p in params}
    if len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        return True
    return None


class LeanAdam(torch.optim.Adam):
    """torch.optim.Adam with `fused=True` whose step calls the fused kernel directly in the common case.

    torch.optim's step regroups the parameters, their state and gradients by device and dtype on every
    call: ~125 us of Python per LeNet-300-100 step here, close to the ~160 us the kernel itself takes.
    This class lets torch do the first step (which creates the state exactly as torch.optim.Adam does),
    then keeps the per-tensor lists and calls the same kernel (`torch._fused_adam_`, or `_fused_adamw_`
    with decoupled weight decay) on them. It uses torch's own step whenever the common case does not
    hold: several parameter groups, amsgrad, maximize, a closure, or a parameter without a gradient.
    Step hooks run as for any optimizer; state dicts are torch.optim.Adam's. `pin_zeros` creates the
    state before the first step instead, as torch would, with +inf second moments where masks are 0.
    """

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self._lean: tuple[list[torch.Tensor], ...] | None = None

    def load_state_dict(self, state_dict) -> None:
        self._lean = None
        super().load_state_dict(state_dict)
        self._lean = self._lean_lists()  # a resumed checkpoint's state: the direct path from its first step

    def add_param_group(self, param_group) -> None:
        self._lean = None
        super().add_param_group(param_group)

    def pin_zeros(self, pairs: list[tuple[nn.Parameter, torch.Tensor]]) -> list[nn.Parameter]:
        """`pin_zeros(self, pairs)` where the direct path applies (see the class docstring), else
        nothing pinned; then the direct path is ready from the first step."""
        if self._direct_group() is None:
            return []
        pinned = pin_zeros(self, pairs)
        self._lean = self._lean_lists()
        return pinned

    def _direct_group(self) -> dict | None:
        """The one parameter group when the direct path applies to it (fused, no amsgrad, maximize or
        differentiable), else None."""
        if len(self.param_groups) != 1:
            return None
        group = self.param_groups[0]
        if group["amsgrad"] or group["maximize"] or not group["fused"] or group["differentiable"]:
            return None
        return group

    def _lean_lists(self) -> tuple[list[torch.Tensor], ...] | None:
        """(params, exp_avgs, exp_avg_sqs, steps, ones) when the common case holds, else None; `ones`
        holds a 1 for each step counter (see `_lean_update`)."""
        group = self._direct_group()
        if group is None:
            return None
        params = list(group["params"])
        if not all(len(self.state[p]) > 0 for p in params):  # state not created yet for some
            return None
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        return (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], steps,
                [torch.ones_like(t) for t in steps])

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is None and self._lean_update():
            return None
        # torch.optim.Adam.step without the hook wrapper torch puts on it once an Adam exists (ours ran the
        # hooks already; the wrapper would run them twice)
        adam_step = torch.optim.Adam.step
        if getattr(adam_step, "hooked", False):
            adam_step = adam_step.__wrapped__
        loss = adam_step(self, closure)
        self._lean = self._lean_lists()
        return loss

    def train_step(self) -> None:
        """`step()` for a training loop that owns the optimizer: the same update, called without the
        wrapper torch.optim puts around every `step` (a profiler record and the step-hook loops: ~65 us of
        a ~2.1 ms LeNet-300-100 step on one machine here, so torch's profiler no longer labels the step)
        whenever no step hook is registered, on this optimizer or globally; `step()`, hooks and all,
        otherwise."""
        if (self._lean is None or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks):
            self.step()
            return
        with torch.no_grad():
            if not self._lean_update():
                self.step()

    def _lean_update(self) -> bool:
        """Adam's update through the fused kernel on the kept lists; False (nothing done) where the
        common case does not hold this step."""
        if self._lean is None:
            return False
        params, exp_avgs, exp_avg_sqs, steps, ones = self._lean
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            return False
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        # adding a list of 1-tensors takes 5 us here against 13 us for the scalar 1, which torch wraps,
        # converts and adds tensor by tensor on CPU; the sum is the same float
        torch._foreach_add_(steps, ones)
        kernel(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
            beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False, grad_scale=None, found_inf=None,
        )
        return True


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
    return [(params[n], m.to(device=params[n].device, dtype=params[n].dtype))
            for n, m in masks.items() if not bool(m.all())]


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
    score_train: bool = False,
) -> None:
    """Train `model` in place from `plan.start_step` to `plan.steps`, masks held, evaluating as it goes.

    Every `plan.eval_every` steps and at the last step the validation split is evaluated. The test split
    is evaluated twice, after the last step: on the final weights, and on the weights of the evaluation
    with the lowest validation loss (a copy kept as training goes), reported as an evaluation at that
    step with test metrics only, just before the final one. So the test metric at the early-stopping
    iteration is known without scoring the test split at every new best (which cost a LeNet-300-100
    search on MNIST ~20% of its time). With `test_every_eval` the test split is scored at every
    evaluation instead. With `score_train`, the whole training split is scored where the test split is
    at the end (`evaluate(model, "train")`, reported as `trainset_loss`, `trainset_accuracy`, ...; not
    `train_loss`, the running mean of the batches' losses), for the generalisation gap.
    `batch_at(step)` must be a pure function of the step (and the plan's data seed) so that rewinding
    to step k replays the same data order. An observer whose `on_step` raises `StopTraining` ends training
    at that step, evaluated as the last one would be (early-bird tickets).

    The model (and its data) are on `plan.device`. With `plan.precision` "bf16" or "fp16" the forward
    passes, training and evaluation, run under autocast; weights and optimizer state stay fp32, and fp16
    scales the loss (torch.amp.GradScaler). Where the observer offers `checkpoints` (the core's, see
    `ticketx.checkpoint`), the whole loop state is saved when it says one is due and training resumes
    from the last one: model, optimizer, scaler, step, RNG states, the early-stop candidate, the mean
    training loss so far, and `loss_fn`'s own state where it has `state_dict`/`load_state_dict`.
    """
    if plan.steps <= plan.start_step:
        raise TaskError(
            f"train.steps ({plan.steps}) must exceed the rewind step ({plan.start_step})"
        )
    devices.check_precision(plan.precision, plan.device)
    held = active_masks(model, masks)
    held_params, held_masks = [p for p, _ in held], [m for _, m in held]
    with torch.no_grad():
        for p, m in held:
            p.mul_(m)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trained, plan)
    step_optimizer = getattr(optimizer, "train_step", optimizer.step)
    pinned = {id(p) for p in (optimizer.pin_zeros(held) if isinstance(optimizer, LeanAdam)
                              else pin_zeros(optimizer, held))}
    # the masks that must still be multiplied in after each step
    multiplied = [(p, m) for p, m in held if id(p) not in pinned]
    mul_params, mul_masks = [p for p, _ in multiplied], [m for _, m in multiplied]
    scaler = torch.amp.GradScaler("cuda") if plan.precision == "fp16" else None
    cast = devices.autocast(plan.device, plan.precision)
    best_val, best_step, best_state = math.inf, 0, None
    window_loss = torch.zeros((), device=plan.device)  # summed training loss since the last evaluation
    window_steps, start, stopped = 0, plan.start_step, False
    checkpoints = getattr(observer, "checkpoints", None)
    resumed = checkpoints.resume() if checkpoints is not None else None
    if resumed is not None:
        start, best_val, best_step, window_steps = (resumed["step"], resumed["best_val"], resumed["best_step"],
                                                    resumed["window_steps"])
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        best_state, window_loss = resumed["best_state"], resumed["window_loss"].to(plan.device)
        if scaler is not None:
            scaler.load_state_dict(resumed["scaler"])
        if hasattr(loss_fn, "load_state_dict"):
            loss_fn.load_state_dict(resumed["loss_fn"])
        _set_rng(resumed["rng"], plan.device)
    model.train()
    with devices.matmul_precision(plan.device, plan.tf32):
        for step in range(start, plan.steps):
            lr = lr_at(step, plan)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batch_at(step)
            with cast:
                loss = loss_fn(model, batch)
            for p in trained:  # optimizer.zero_grad(set_to_none=True) without its ~25 us of bookkeeping
                p.grad = None
            if scaler is None:
                loss.backward()
                if plan.clip_grad_norm > 0:
                    _clip_surviving(trained, held_params, held_masks, plan.clip_grad_norm)
                step_optimizer()
            else:
                scaler.scale(loss).backward()
                if plan.clip_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    _clip_surviving(trained, held_params, held_masks, plan.clip_grad_norm)
                scaler.step(optimizer)  # skipped where the scaled gradients overflowed
                scaler.update()
            if multiplied:
                with torch.no_grad():
                    torch._foreach_mul_(mul_params, mul_masks)
            window_loss += loss.detach().float()
            window_steps += 1
            done = step + 1
            try:
                observer.on_step(done, model)
                last = done == plan.steps
            except StopTraining:  # the observer ends training here: evaluated as after the last step
                last = stopped = True
            if done % plan.eval_every == 0 or last:
                model.eval()
                metrics = {"train_loss": float(window_loss) / window_steps, "lr": lr}
                window_loss, window_steps = torch.zeros((), device=plan.device), 0
                with cast:
                    metrics.update(prefixed(evaluate(model, "val"), "val"))
                val_loss = metrics["val_loss"]
                if not math.isfinite(val_loss):
                    raise TaskError(
                        f"validation loss became {val_loss} at step {done}: training diverged "
                        f"(try a lower train.lr than {plan.lr} or train.warmup_steps)"
                    )
                if val_loss < best_val:
                    best_val, best_step = val_loss, done
                    best_state = None if test_every_eval or last else _snapshot(model)
                elif last and best_state is not None:  # the early-stop weights' test score
                    with cast:
                        observer.on_eval(best_step, _evaluate_state(model, best_state, evaluate, score_train))
                with cast:
                    if test_every_eval or last:
                        metrics.update(prefixed(evaluate(model, "test"), "test"))
                    if score_train and last:
                        metrics.update(prefixed(evaluate(model, "train"), "trainset"))
                observer.on_eval(done, metrics)
                model.train()
            if stopped:
                break
            if checkpoints is not None and not last and checkpoints.due(done):
                checkpoints.save(done, {
                    "step": done, "best_val": best_val, "best_step": best_step, "window_steps": window_steps,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best_state": best_state,
                    "window_loss": window_loss, "scaler": scaler.state_dict() if scaler is not None else None,
                    "loss_fn": loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else None,
                    "rng": _get_rng(plan.device),
                })
    model.eval()


def _get_rng(device: str) -> dict[str, torch.Tensor]:
    """The global RNG states training draws from (dropout): the CPU's, and the CUDA device's."""
    out = {"cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng(states: Mapping[str, torch.Tensor], device: str) -> None:
    torch.set_rng_state(states["cpu"])
    if device.startswith("cuda") and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _evaluate_state(
    model: nn.Module, state: dict[str, torch.Tensor], evaluate: EvalFn, score_train: bool
) -> dict[str, float]:
    """Test (and training-split) metrics of `model` with the weights `state`, prefixed; the model's own
    weights are restored after."""
    current = _snapshot(model)
    model.load_state_dict(state)
    try:
        out = prefixed(evaluate(model, "test"), "test")
        if score_train:
            out.update(prefixed(evaluate(model, "train"), "trainset"))
        return out
    finally:
        model.load_state_dict(current)


@torch.no_grad()
def _clip_surviving(
    params: list[nn.Parameter], held: list[nn.Parameter], masks: list[torch.Tensor], max_norm: float
) -> None:
    """Clip the global L2 norm of the surviving weights' gradients to `max_norm`, in place.

    Pruned weights' gradients are zeroed first: they would otherwise count in the norm (and so shrink
    the surviving weights' steps) although the mask discards their updates.
    """
    pairs = [(p.grad, m) for p, m in zip(held, masks) if p.grad is not None]
    if pairs:
        torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
    nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm, foreach=True)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 1000,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of `model` on in-memory `inputs` (N, ...) and `targets` (N,).

    `transform` turns each slice of `inputs` into what the model takes (uint8 images normalised per
    batch, say). Sums are accumulated on the inputs' device and read once, at the end.
    """
    was_training = model.training
    model.eval()
    n = targets.shape[0]
    total_loss = torch.zeros((), dtype=torch.float64, device=targets.device)
    correct = torch.zeros((), dtype=torch.long, device=targets.device)
    for i in range(0, n, batch_size):
        x = inputs[i : i + batch_size]
        logits = model(x if transform is None else transform(x))  # (b, classes)
        y = targets[i : i + batch_size]
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    return {"loss": float(total_loss) / n, "accuracy": int(correct) / n}


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
        if epoch != self._epoch:  # drawn on the CPU whatever the data's device: the same order everywhere
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.inputs.shape[0], generator=g).to(self.inputs.device)
            self._epoch = epoch
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        x = torch.index_select(self.inputs, 0, idx)  # half the time of inputs[idx] for a LeNet batch here
        if self.transform is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * step + 1)
            x = self.transform(x, g)
        return x, torch.index_select(self.targets, 0, idx)


def balanced_sample(inputs: torch.Tensor, targets: torch.Tensor, n_per_class: int, seed: int, *,
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n_per_class` examples of every class of `targets` (N,), chosen by a seeded permutation, as batches
    of `inputs` (N, ...) and targets, each batch through `transform` (normalisation; never augmentation):
    the scoring sample of pruning criteria (`Task.scoring_batches`). Pass the training split only."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(targets.shape[0], generator=g).to(targets.device)
    picked = []
    for c in torch.unique(targets).tolist():
        of_class = perm[targets[perm] == c][:n_per_class]
        if of_class.numel() < n_per_class:
            raise TaskError(f"prune.scoring_per_class is {n_per_class}, but class {c} has only "
                            f"{of_class.numel()} training examples")
        picked.append(of_class)
    idx = torch.stack(picked, dim=1).flatten()  # classes interleaved: every batch holds every class
    out = []
    for i in range(0, idx.numel(), batch_size):
        x = torch.index_select(inputs, 0, idx[i : i + batch_size].to(inputs.device))
        out.append((x if transform is None else transform(x), torch.index_select(targets, 0, idx[i : i + batch_size])))
    return out


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a classifier on one batch."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """`{'loss': 1}` -> `{'val_loss': 1}` for prefix 'val'."""
    return {f"{prefix}_{k}": v for k, v in metrics.items()}
