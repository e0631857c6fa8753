"""Pruning math: pure functions of tensors.

Weights and masks come in as `dict[str, Tensor]` and new masks go out; no input is mutated and no module
is touched (applying masks to a model is `ticketx.training.apply_masks`). A mask is a 0/1 tensor of its
parameter's shape. *rate* is the share of the surviving weights a pruning step removes; *density* is the
share kept in total; *sparsity* = 1 - density.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch

Masks = dict[str, torch.Tensor]
Scope = Literal["layerwise", "global"]


class MaskError(ValueError):
    """Masks and weights do not fit together, or a rate is out of range."""


def ones(weights: Mapping[str, torch.Tensor]) -> Masks:
    """All-ones masks (nothing pruned) for `weights`."""
    return {name: torch.ones_like(w) for name, w in weights.items()}


def _n_pruned(rate: float, surviving: int) -> int:
    # round half up: 20% of 100 survivors prunes exactly 20, of 7 prunes 1
    return min(surviving, int(rate * surviving + 0.5))


def _check(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    if set(weights) != set(masks):
        only_w, only_m = sorted(set(weights) - set(masks)), sorted(set(masks) - set(weights))
        raise MaskError(f"weights and masks name different tensors: only in weights {only_w}, only in masks {only_m}")
    for name, w in weights.items():
        if w.shape != masks[name].shape:
            raise MaskError(f"{name}: weight shape {tuple(w.shape)} but mask shape {tuple(masks[name].shape)}")


def _keep_largest(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """0/1 mask (flat) keeping the `n_keep` largest scores; ties broken by index, deterministically."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    if n_keep > 0:
        # stable descending sort: among equal scores the earlier index is kept
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[:n_keep]] = True
    return keep


def magnitude(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    *,
    scope: Scope = "layerwise",
    layer_rates: Mapping[str, float] | None = None,
    exclude: Iterable[str] = (),
) -> Masks:
    """New masks that remove the `rate` share of surviving weights with the smallest magnitude.

    Args:
        weights: trained weights by name (only those taking part in pruning).
        masks: current masks for the same names; a weight pruned before stays pruned.
        rate: share of the surviving weights to remove, in [0, 1).
        scope: "layerwise" prunes `rate` of each layer; "global" ranks all layers' weights together
            (Frankle & Carbin use layer-wise for LeNet and Conv-2/4/6, global for VGG-19 and ResNet-20).
        layer_rates: per-layer rate overrides (e.g. the output layer at half the rate, F&C section 2);
            layers named here are always pruned layer-wise at their own rate, outside the global pool.
        exclude: layers never pruned (their masks come back unchanged).

    Returns:
        A new dict of masks (same dtypes as `masks`); counts are exact: a layer with s survivors pruned
        at rate r loses round(r * s) weights.
    """
    _check(weights, masks)
    overrides = dict(layer_rates or {})
    unknown = sorted(set(overrides) - set(weights))
    excluded = set(exclude)
    unknown += sorted(excluded - set(weights))
    if unknown:
        raise MaskError(f"no prunable weight named {unknown}; prunable weights are {sorted(weights)}")
    for name, r in [("rate", rate), *((f"layer_rates[{n!r}]", r) for n, r in overrides.items())]:
        if not 0.0 <= r < 1.0:
            raise MaskError(f"prune.{name} must be in [0, 1), got {r}")
    if scope not in ("layerwise", "global"):
        raise MaskError(f"prune.scope must be 'layerwise' or 'global', got {scope!r}")

    new: Masks = {name: m.clone() for name, m in masks.items()}

    def scores_of(name: str) -> torch.Tensor:
        w, m = weights[name].detach().flatten().float(), masks[name].flatten()
        # pruned weights score below every surviving one, so they are never chosen to be kept
        return torch.where(m > 0, w.abs(), torch.full_like(w, -1.0))

    def prune_layer(name: str, r: float) -> None:
        surviving = int((masks[name] > 0).sum())
        keep = _keep_largest(scores_of(name), surviving - _n_pruned(r, surviving))
        new[name] = keep.view_as(masks[name]).to(masks[name].dtype)

    pooled = [n for n in weights if n not in overrides and n not in excluded]
    for name, r in overrides.items():
        if name not in excluded:
            prune_layer(name, r)
    if scope == "layerwise":
        for name in pooled:
            prune_layer(name, rate)
    elif pooled:
        scores = torch.cat([scores_of(n) for n in pooled])
        surviving = int((scores >= 0).sum())
        keep = _keep_largest(scores, surviving - _n_pruned(rate, surviving))
        offset = 0
        for name in pooled:
            n = masks[name].numel()
            new[name] = keep[offset : offset + n].view_as(masks[name]).to(masks[name].dtype)
            offset += n
    return new


def random_like(masks: Mapping[str, torch.Tensor], generator: torch.Generator) -> Masks:
    """Random masks with exactly the same number of survivors in each layer as `masks`.

    The random-pruning control of Frankle & Carbin: same per-layer sparsity, random positions.
    """
    return {name: random_at_density(m, int((m > 0).sum()) / m.numel(), generator) for name, m in masks.items()}


def random_at_density(like: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """A random 0/1 mask of `like`'s shape and dtype keeping round(density * numel) entries."""
    n_keep = int(density * like.numel() + 0.5)
    keep = torch.zeros(like.numel(), dtype=torch.bool)
    keep[torch.randperm(like.numel(), generator=generator)[:n_keep]] = True
    return keep.view_as(like).to(like.dtype)


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Share of weights kept over all masks (1.0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((m > 0).sum()) for m in masks.values()) / total if total else 1.0


def layer_density(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Share of weights kept, per layer."""
    return {name: int((m > 0).sum()) / m.numel() for name, m in masks.items()}
