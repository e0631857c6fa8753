"""Analyses the lottery-ticket papers use, as pure functions of masks, weights and evaluations.

- `mask_overlap`: Jaccard index of the surviving weights of two tickets, per layer and overall (tickets
  from different seeds, datasets or optimizers).
- `weight_movement`: how far training moved the surviving weights from their starting values, per
  layer, and how many kept their starting sign (Frankle & Carbin 2019 discuss where tickets' weights go,
  section 5 and appendix; Zhou et al. 2019, arXiv 1905.01067, found the signs matter).
- `interpolation` and `error_barrier`: the linear mode connectivity test of Frankle et al. 2020
  (arXiv 1912.05671): evaluate along the straight line between two trained networks; the barrier is the
  largest rise of the error above the straight line between the endpoints' errors. A network is *stable*
  at rewind
  step k when two copies trained from θk with different data orders have a barrier near zero.
- `generalisation_gap`: training minus test accuracy at the same weights.

None of these trains anything; `ticketx.instability` runs the training that the barrier needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


class AnalysisError(ValueError):
    """The inputs of an analysis do not fit together; the message says which tensor and why."""


def _same_names(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str) -> list[str]:
    if set(a) != set(b):
        raise AnalysisError(f"{what} name different tensors: only in the first {sorted(set(a) - set(b))}, "
                            f"only in the second {sorted(set(b) - set(a))}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise AnalysisError(f"{what}: {name} has shape {tuple(a[name].shape)} in the first and "
                                f"{tuple(b[name].shape)} in the second")
    return list(a)


def mask_overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Jaccard index |a ∩ b| / |a ∪ b| of the surviving weights, per layer and `"all"` over every layer.

    1 means the same weights survive; two random masks at densities d1 and d2 overlap by about
    d1·d2 / (d1 + d2 - d1·d2) (the `"random"` entry gives that baseline for the overall densities).
    Two layers that both prune everything count as identical (1.0).
    """
    names = _same_names(a, b, "the two masks")
    out: dict[str, float] = {}
    inter_all = union_all = 0
    for name in names:
        x, y = a[name].bool(), b[name].bool()
        inter, union = int((x & y).sum()), int((x | y).sum())
        out[name] = inter / union if union else 1.0
        inter_all, union_all = inter_all + inter, union_all + union
    out["all"] = inter_all / union_all if union_all else 1.0
    total = sum(a[n].numel() for n in names)
    d1 = sum(int(a[n].bool().sum()) for n in names) / total
    d2 = sum(int(b[n].bool().sum()) for n in names) / total
    out["random"] = d1 * d2 / (d1 + d2 - d1 * d2) if d1 + d2 > 0 else 1.0
    return out


@dataclass(frozen=True)
class Movement:
    """Per-layer movement of the surviving weights from initial to final values."""

    relative_distance: float  # ||θ_final - θ_init|| / ||θ_init|| over the surviving weights
    sign_agreement: float  # share of surviving weights whose final sign equals their initial sign


def weight_movement(
    initial: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> dict[str, Movement]:
    """Movement of each masked layer's surviving weights, plus `"all"` over every masked layer."""
    names = _same_names({n: initial[n] for n in masks if n in initial}, dict(masks), "initial weights and masks")
    _same_names({n: final[n] for n in masks if n in final}, dict(masks), "final weights and masks")
    out: dict[str, Movement] = {}
    sq_d = sq_i = agree = count = 0.0
    for name in names:
        keep = masks[name].bool()
        w0, w1 = initial[name].detach().float()[keep], final[name].detach().float()[keep]
        d, i = float(((w1 - w0) ** 2).sum()), float((w0**2).sum())
        a, n = float((torch.sign(w0) == torch.sign(w1)).sum()), w0.numel()
        out[name] = Movement(math.sqrt(d / i) if i > 0 else math.nan, a / n if n else math.nan)
        sq_d, sq_i, agree, count = sq_d + d, sq_i + i, agree + a, count + n
    out["all"] = Movement(math.sqrt(sq_d / sq_i) if sq_i > 0 else math.nan, agree / count if count else math.nan)
    return out


def movement_metrics(movement: Mapping[str, Movement]) -> dict[str, float]:
    """Flat metric names for MLflow: `move_dist/<layer>`, `move_sign/<layer>` (layer `all` included)."""
    out = {}
    for name, m in movement.items():
        out[f"move_dist/{name}"] = m.relative_distance
        out[f"move_sign/{name}"] = m.sign_agreement
    return out


def interpolate_state(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha)·a + alpha·b for floating tensors; other tensors (counters) are taken from `a`."""
    _same_names(a, b, "the two networks' state dicts")
    return {k: torch.lerp(a[k], b[k], alpha) if a[k].is_floating_point() else a[k].clone() for k in a}


def interpolation(
    model: nn.Module,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    error: Callable[[nn.Module], float],
    points: int = 11,
) -> list[tuple[float, float]]:
    """(alpha, error) at `points` evenly spaced alphas from 0 (network a) to 1 (network b).

    `error(model)` scores the model as loaded (for classifiers 1 - accuracy). The model's own weights
    are restored afterwards. BatchNorm running statistics are interpolated like the weights, which is
    what Frankle et al. 2020 do for the networks they test.
    """
    if points < 2:
        raise AnalysisError(f"interpolation needs at least 2 points, got {points}")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = []
    try:
        for i in range(points):
            alpha = i / (points - 1)
            model.load_state_dict(interpolate_state(a, b, alpha))
            out.append((alpha, float(error(model))))
    finally:
        model.load_state_dict(saved)
    return out


def error_barrier(curve: Sequence[tuple[float, float]]) -> float:
    """The instability of Frankle et al. 2020 (section 2): the largest amount by which the error along the
    line exceeds the straight line between the endpoints' errors, max over alpha of
    error(alpha) - ((1 - alpha)·error(0) + alpha·error(1)); 0 when the line never does worse than that.
    `curve` is `interpolation`'s output, alphas from 0 to 1."""
    if len(curve) < 2:
        raise AnalysisError("an error barrier needs a curve of at least 2 points")
    (a0, e0), (a1, e1) = curve[0], curve[-1]
    if (a0, a1) != (0.0, 1.0):
        raise AnalysisError(f"the curve must run from alpha 0 to 1, got {a0} to {a1}")
    return max(0.0, max(e - ((1 - a) * e0 + a * e1) for a, e in curve))


def generalisation_gap(train_accuracy: float, test_accuracy: float) -> float:
    """Training minus test accuracy at the same weights (positive: the network fits its training set
    better than it generalises)."""
    return train_accuracy - test_accuracy
