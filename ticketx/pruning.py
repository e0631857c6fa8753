"""Pruning criteria by name: one scoring function each, and how each allocates the kept weights over layers.

A criterion scores every prunable weight (higher = keep); `ticketx.masks` alone turns scores into masks
(the split of ganguli-lab/Synaptic-Flow: `score()` per method, one shared `mask()`). `CRITERIA` is the one
table: a new criterion is a scoring function and an entry here, and `ticketx.arms` makes its arms (the
criterion at initialisation and its ablations) from it.

    snip            |θ ⊙ ∂L/∂θ| = |∂L/∂m| at m = 1, global                Lee et al. 2019, arXiv 1810.02340
    grasp           keep θ ⊙ Hg (remove the highest S = -θ ⊙ Hg), global  Wang et al. 2020, arXiv 2002.07376
    synflow         |θ ⊙ ∂R/∂θ|, R = sum f(1; |θ|), 100 rounds, global   Tanaka et al. 2020, arXiv 2006.05467
    magnitude       |w|: IMP's; at initialisation (magnitude_init) global  Frankle & Carbin 2019
    random_erk      random, Erdős-Rényi-kernel layer densities          Evci et al. 2020, arXiv 1911.11134
    random_uniform  random, every layer at the same density
    lamp            w_u^2 / sum_{v>=u} w_v^2 ranked globally; IMP only   Lee et al. 2021, arXiv 2010.07611

Criteria at initialisation cut masks from all-ones to a given number of kept weights (that level's
ticket's, so that every arm is compared at exactly the same overall density). Scoring data is a
class-balanced sample of the training split (`Task.scoring_batches`), scored in fp32 (SynFlow in float64)
on the job's device, whatever the training precision.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from . import masks as masklib
from .task import Masks, Task, TaskError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Allocation = Literal["global", "erk", "uniform"]
DEFAULT_PER_CLASS = 10  # prune.scoring_per_class: examples per class in the scoring sample
DEFAULT_SYNFLOW_ROUNDS = 100  # prune.synflow_rounds (Tanaka et al. 2020, section 6)
GRASP_TEMPERATURE = 200.0  # logits / T in both passes, as Wang et al.'s code (and Synaptic-Flow's) does


@dataclass(frozen=True)
class Scoring:
    """What a scoring function sees: a scoring copy of the model on the scoring device, its pruned weights
    set to zero, and the inputs the criterion needs (None where it needs none)."""

    model: nn.Module | None  # None where only `tensors` are scored
    names: tuple[str, ...]  # the prunable weights being scored, in the model's order
    masks: Masks  # current masks of `names` (all ones before the first round)
    batches: list[Batch] | None = None  # the scoring sample, on the model's device
    loss: LossFn | None = None
    input_shape: tuple[int, ...] | None = None  # one example's shape, for SynFlow's all-ones input
    generator: torch.Generator | None = None  # random criteria draw from it (CPU)
    tensors: Mapping[str, torch.Tensor] | None = None  # bare weights instead of a model (IMP's criteria)

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights being scored, by name (the model's parameters, or `tensors`)."""
        if self.tensors is not None:
            return {n: self.tensors[n] for n in self.names}
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.names}


ScoreFn = Callable[[Scoring], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Criterion:
    """One entry of `CRITERIA`."""

    name: str
    score: ScoreFn
    allocation: Allocation  # how the kept weights are spread over layers at initialisation
    cite: str
    needs: tuple[Literal["data", "input_shape"], ...] = ()
    iterative: bool = False  # scored again after each of prune.synflow_rounds cuts (exponential schedule)
    batchnorm: Literal["train", "eval"] = "eval"  # BatchNorm's mode while scoring (dropout is always off)
    arm: str | None = None  # the arm training its masks at initialisation; None: an IMP criterion only
    imp: bool = False  # may be prune.criterion, IMP's own
    seed_offset: int = 0  # random criteria: Generator(seed_offset + 1_000 * init seed + level)


# ------------------------------------------------------------------------------------------ scores

def magnitude_scores(s: Scoring) -> dict[str, torch.Tensor]:
    return {n: w.detach().abs() for n, w in s.weights().items()}


def lamp_scores(s: Scoring) -> dict[str, torch.Tensor]:
    return masklib.lamp_scores({n: w.detach() for n, w in s.weights().items()}, s.masks)


def random_scores(s: Scoring) -> dict[str, torch.Tensor]:
    assert s.generator is not None  # cut() always passes one
    return {n: torch.rand(w.shape, generator=s.generator, dtype=torch.float64) for n, w in s.weights().items()}


def _sample_loss(s: Scoring) -> torch.Tensor:
    """The mean over the scoring batches of the task's loss."""
    assert s.batches and s.loss is not None  # check_task refused the arm before any run otherwise
    return sum(s.loss(s.model, b) for b in s.batches) / len(s.batches)  # type: ignore[arg-type, return-value]


def snip_scores(s: Scoring) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂L/∂θ|: the saliency |∂L/∂m| of a multiplicative mask m at m = 1 (Lee et al. 2019, eq. 3; the
    normalisation by the sum does not change the ranking)."""
    weights = s.weights()
    grads = torch.autograd.grad(_sample_loss(s), list(weights.values()))
    return {n: (w.detach() * g).abs() for (n, w), g in zip(weights.items(), grads)}


def grasp_scores(s: Scoring, temperature: float = GRASP_TEMPERATURE) -> dict[str, torch.Tensor]:
    """θ ⊙ Hg, the negative of GraSP's S = -θ ⊙ Hg (Wang et al. 2020, eq. 8).

    The paper removes the weights with the HIGHEST S (their removal reduces the gradient flow least, or
    raises it): keeping the highest θ ⊙ Hg is exactly that. g is the gradient of the loss over the sample
    (a constant), Hg the Hessian-gradient product by one double backward of g · ∇L. Logits are divided by
    `temperature` in both passes, as in the authors' code.
    """
    weights = list(s.weights().values())
    with _scaled_output(s.model, 1.0 / temperature):  # type: ignore[arg-type]
        g = [x.detach() for x in torch.autograd.grad(_sample_loss(s), weights)]
        grads = torch.autograd.grad(_sample_loss(s), weights, create_graph=True)
        hg = torch.autograd.grad(sum((gi * x).sum() for gi, x in zip(g, grads)), weights)
    return {n: w.detach() * h for n, w, h in zip(s.names, weights, hg)}


def synflow_scores(s: Scoring) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂R/∂θ| with R the sum of the output of the network with |θ| on an all-ones input (Tanaka et al.
    2020, eq. 6): no data. In float64 (the product over layers under- or overflows float32 in deep
    networks), with every floating state entry made absolute as in the authors' code (BatchNorm's running
    statistics too)."""
    assert s.input_shape is not None  # check_task refused the arm before any run otherwise
    assert s.model is not None
    model = s.model.double()  # in place: the scoring copy only
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    device = next(model.parameters()).device
    out = model(torch.ones((1, *s.input_shape), dtype=torch.float64, device=device))
    out = out[0] if isinstance(out, (tuple, list)) else out
    weights = s.weights()
    grads = torch.autograd.grad(out.sum(), list(weights.values()))
    return {n: (w.detach() * g).abs() for (n, w), g in zip(weights.items(), grads)}


@contextlib.contextmanager
def _scaled_output(model: nn.Module, factor: float) -> Iterator[None]:
    """The model's output (or its first element, for models returning (output, state)) times `factor`."""
    def hook(_: nn.Module, __: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] * factor, *out[1:])
        return out * factor

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("snip", snip_scores, "global", "Lee et al. 2019, arXiv 1810.02340", needs=("data",),
              batchnorm="train", arm="snip"),
    Criterion("grasp", grasp_scores, "global", "Wang et al. 2020, arXiv 2002.07376", needs=("data",),
              batchnorm="train", arm="grasp"),
    Criterion("synflow", synflow_scores, "global", "Tanaka et al. 2020, arXiv 2006.05467",
              needs=("input_shape",), iterative=True, arm="synflow"),
    # IMP's criterion; at initialisation (|θ0|, or |θk| with rewinding) global, as Frankle et al. 2021 do
    Criterion("magnitude", magnitude_scores, "global", "Frankle & Carbin 2019", arm="magnitude_init", imp=True),
    Criterion("random_erk", random_scores, "erk", "Evci et al. 2020, arXiv 1911.11134", arm="random_erk",
              seed_offset=4_000_037),
    Criterion("random_uniform", random_scores, "uniform", "every layer at the overall density",
              arm="random_uniform", seed_offset=5_000_011),
    Criterion("lamp", lamp_scores, "global", "Lee et al. 2021, arXiv 2010.07611", imp=True),
)}
IMP_CRITERIA = tuple(n for n, c in CRITERIA.items() if c.imp)


# -------------------------------------------------------------------------------------- masks

def imp_masks(criterion: str, weights: Mapping[str, torch.Tensor], masks: Masks, rate: float, *,
              scope: masklib.Scope, layer_rates: Mapping[str, float], exclude: Sequence[str]) -> Masks:
    """One IMP step by `criterion` (magnitude or lamp): remove `rate` of the survivors with the lowest
    scores, from trained `weights` (the next level's masks)."""
    scores = CRITERIA[criterion].score(Scoring(None, tuple(weights), dict(masks), tensors=weights))
    return masklib.prune(scores, masks, rate, scope=scope, layer_rates=layer_rates, exclude=exclude)


def cut(criterion: Criterion, model: nn.Module, masks: Masks, n_keep: int, *, device: str = "cpu",
        batches: list[Batch] | None = None, loss: LossFn | None = None,
        input_shape: tuple[int, ...] | None = None, generator: torch.Generator | None = None,
        rounds: int = DEFAULT_SYNFLOW_ROUNDS, invert: bool = False) -> Masks:
    """Masks keeping exactly `n_keep` of the weights `masks` keeps, chosen by `criterion` from `model`'s
    weights as they are (θ0 or θk), spread over layers as the criterion's paper does.

    `masks` names the layers taking part (all ones at initialisation; layers left out stay as they are).
    Scoring runs on a copy of the model moved to `device` (the job's: the model stays where it is);
    scores come back to the CPU, where the masks are cut. An iterative criterion (SynFlow) cuts in `rounds`
    steps to densities d^(1/rounds), d^(2/rounds), ..., d (the exponential schedule of Tanaka et al.,
    section 6), scoring the masked network again before each; a weight pruned in one round is never
    kept in a later one. `invert` keeps the lowest scores instead (Frankle et al. 2021's inversion), in
    every round.
    """
    scoring = copy.deepcopy(model).to(device)
    scoring.eval()  # dropout off: scores are a function of the weights and the sample
    for m in scoring.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(criterion.batchnorm == "train")  # batch statistics, as in SNIP's and GraSP's code
    names = tuple(n for n, _ in scoring.named_parameters() if n in masks)
    params = dict(scoring.named_parameters())
    start = {n: params[n].detach().clone() for n in names}
    on_device = [(x.to(device), y.to(device)) for x, y in batches] if batches is not None else None
    current = {n: masks[n].detach().cpu().clone() for n in names}
    shapes = {n: tuple(masks[n].shape) for n in names}
    total = sum(int((m > 0).sum()) for m in current.values())
    if n_keep == total:  # nothing to cut (every layer excluded, say)
        return {n: m.detach().clone() for n, m in masks.items()}
    rounds = rounds if criterion.iterative else 1
    for r in range(1, rounds + 1):
        target = n_keep if r == rounds else max(n_keep, round(total * (n_keep / total) ** (r / rounds)))
        with torch.no_grad():
            for n in names:
                params[n].copy_(start[n] * current[n].to(device=device, dtype=start[n].dtype))
        s = Scoring(scoring, names, current, on_device, loss, input_shape, generator)
        with _no_cudnn(device):
            scores = {n: v.detach().to("cpu") for n, v in criterion.score(s).items()}
        keep: int | dict[str, int] = target
        if criterion.allocation == "erk":
            keep = masklib.erk_counts(shapes, target)
        elif criterion.allocation == "uniform":
            keep = masklib.uniform_counts(shapes, target)
        current = masklib.keep_top(scores, current, keep, invert=invert)
    return {**{n: m.detach().clone() for n, m in masks.items()},
            **{n: current[n].to(masks[n].dtype) for n in names}}


@contextlib.contextmanager
def _no_cudnn(device: str) -> Iterator[None]:
    """cuDNN off while scoring on CUDA: its RNN kernels have no double backward (GraSP) and refuse a
    backward pass in eval mode (SNIP on an LSTM); the scoring passes are few, so the cost is small."""
    if device.startswith("cuda"):
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


# ---------------------------------------------------------------------------------- the Task hooks

def check_task(task: Task, arms: Mapping[str, str], *, per_class: int = DEFAULT_PER_CLASS) -> None:
    """Raise TaskError, before any run is opened, when `task` cannot give what the criteria of `arms` (arm
    name -> criterion) need: scoring data (`Task.scoring_batches`; a loss, `Task.scoring_loss` or
    cross-entropy) or an input shape for SynFlow's all-ones input (`Task.scoring_input_shape`, which may
    itself refuse with the plugin's reason)."""
    spec = task.spec()
    where = f"{spec.get('plugin')}/{spec.get('task')}"
    for need, hook, what in (("data", "scoring_batches", "scoring data (a class-balanced sample of training "
                              "examples and a loss)"),
                             ("input_shape", "scoring_input_shape", "input shape for SynFlow's all-ones input")):
        wanting = [arm for arm, c in arms.items() if need in CRITERIA[c].needs]
        if not wanting:
            continue
        offer = getattr(task, hook, None)
        if offer is None:
            free = [c.arm for c in CRITERIA.values() if c.arm and not c.needs]
            raise TaskError(f"{where} offers no {what} (Task.{hook}), which the arm(s) {', '.join(wanting)} need; "
                            f"drop them from arms ({', '.join(free)} need nothing but the weights)")
        if need == "input_shape":
            offer()  # a task may refuse here with its own reason
        else:
            scoring_sample(task, per_class, seed=0)


def scoring_sample(task: Task, per_class: int, seed: int) -> tuple[list[Batch], LossFn]:
    """The task's scoring sample (`per_class` training examples per class, drawn by `seed`) and its loss."""
    from .training import cross_entropy_loss
    batches = task.scoring_batches(per_class, seed)  # type: ignore[attr-defined]
    return list(batches), getattr(task, "scoring_loss", cross_entropy_loss)
