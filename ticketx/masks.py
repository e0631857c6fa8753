"""Pruning math: pure functions of tensors.

Weights and masks come in as `dict[str, Tensor]` and new masks go out; no input is mutated and no module
is touched (applying masks to a model is `ticketx.training.apply_masks`). A mask is a 0/1 tensor of its
parameter's shape. *rate* is the share of the surviving weights a pruning step removes; *density* is the
share kept in total; *sparsity* = 1 - density.

Scores (higher = keep) become masks here and only here: `prune` (one IMP step at a rate), `keep_top` (an
exact count, global or per layer, or its inversion), with per-layer counts from `erk_counts` or
`uniform_counts`; the scores themselves come from `ticketx.pruning`. Only surviving weights are ranked,
so a pruned weight is never revived, and ties are broken by position, so every mask is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

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


def _ranked_keep(scores: torch.Tensor, alive: torch.Tensor, n_keep: int, invert: bool = False) -> torch.Tensor:
    """Flat bool mask keeping `n_keep` of the `alive` entries: those with the highest scores, or with
    `invert` the lowest. Entries not alive are never kept (a pruned weight is never revived).

    The ranking is a stable descending sort of the alive entries, so among equal scores the earlier index
    ranks higher; `invert` walks the same ranking from its other end, so the inverted mask keeping n is
    exactly the complement (among the alive) of the mask keeping alive - n, ties included.
    """
    idx = alive.nonzero().squeeze(1)
    if bool(torch.isnan(scores[idx]).any()):
        raise MaskError("a pruning score is NaN; the criterion cannot rank these weights")
    if not 0 <= n_keep <= idx.numel():
        raise MaskError(f"cannot keep {n_keep} of {idx.numel()} surviving weights")
    order = idx[torch.sort(scores[idx], descending=True, stable=True).indices]
    if invert:
        order = order.flip(0)
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep


def prune(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    *,
    scope: Scope = "layerwise",
    layer_rates: Mapping[str, float] | None = None,
    exclude: Iterable[str] = (),
) -> Masks:
    """New masks that remove the `rate` share of surviving weights with the lowest `scores` (one IMP step).

    Args:
        scores: a score per weight by name (higher = keep), e.g. magnitudes; only survivors are ranked.
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
    _check(scores, masks)
    overrides = dict(layer_rates or {})
    unknown = sorted(set(overrides) - set(scores))
    excluded = set(exclude)
    unknown += sorted(excluded - set(scores))
    if unknown:
        raise MaskError(f"no prunable weight named {unknown}; prunable weights are {sorted(scores)}")
    for name, r in [("rate", rate), *((f"layer_rates[{n!r}]", r) for n, r in overrides.items())]:
        if not 0.0 <= r < 1.0:
            raise MaskError(f"prune.{name} must be in [0, 1), got {r}")
    if scope not in ("layerwise", "global"):
        raise MaskError(f"prune.scope must be 'layerwise' or 'global', got {scope!r}")

    new: Masks = {name: m.clone() for name, m in masks.items()}
    pooled = [n for n in scores if n not in overrides and n not in excluded]
    by_layer = [(n, overrides[n]) for n in overrides if n not in excluded]
    if scope == "layerwise":
        by_layer += [(n, rate) for n in pooled]
    for name, r in by_layer:
        surviving = int((masks[name] > 0).sum())
        new[name] = keep_top({name: scores[name]}, {name: masks[name]}, surviving - _n_pruned(r, surviving))[name]
    if scope == "global" and pooled:
        surviving = sum(int((masks[n] > 0).sum()) for n in pooled)
        new.update(keep_top({n: scores[n] for n in pooled}, {n: masks[n] for n in pooled},
                            surviving - _n_pruned(rate, surviving)))
    return new


def kept_after(total: int, rate: float, level: int, *, oneshot: bool = False) -> int:
    """How many of `total` weights a layer keeps after `level` IMP levels at `rate`, counted as `prune`
    counts (iterative: each level removes round(rate * survivors); oneshot: level L removes the share
    1 - (1 - rate)**L of the dense layer at once)."""
    if oneshot:
        return total - _n_pruned(1 - (1 - rate) ** level, total)
    kept = total
    for _ in range(level):
        kept -= _n_pruned(rate, kept)
    return kept


def magnitude(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float,
              **how: Any) -> Masks:
    """`prune` by magnitude: remove the `rate` share of surviving weights with the smallest |w|; `how` is
    `prune`'s scope, layer_rates and exclude."""
    _check(weights, masks)
    return prune({n: w.detach().float().abs() for n, w in weights.items()}, masks, rate, **how)


def keep_top(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    keep: int | Mapping[str, int],
    *,
    invert: bool = False,
) -> Masks:
    """New masks keeping, among the survivors of `masks`, the highest-scored weights (`invert`: the lowest).

    `keep` is a count over all the layers given, ranked together (global), or a count per layer. Ties are
    broken by position (layer order, then index; see `_ranked_keep`), so the result is deterministic.
    """
    _check(scores, masks)
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names])
    alive = torch.cat([(masks[n] > 0).flatten().cpu() for n in names])
    sizes = [masks[n].numel() for n in names]
    if isinstance(keep, int):
        kept = _ranked_keep(flat, alive, keep, invert)
    else:
        missing = sorted(set(names) - set(keep))
        if missing:
            raise MaskError(f"no count given for {missing}")
        parts, offset = [], 0
        for n, size in zip(names, sizes):
            parts.append(_ranked_keep(flat[offset : offset + size], alive[offset : offset + size], keep[n], invert))
            offset += size
        kept = torch.cat(parts)
    out, offset = {}, 0
    for n, size in zip(names, sizes):
        m = masks[n]
        out[n] = kept[offset : offset + size].view(m.shape).to(device=m.device, dtype=m.dtype)
        offset += size
    return out


def apportion(sizes: Mapping[str, int], quotas: Mapping[str, float], total: int) -> dict[str, int]:
    """Whole counts per layer adding up to exactly `total`, each within [0, size], close to `quotas`.

    Each layer gets the floor of its quota; the layers with the largest remainders (ties: the earlier
    layer) get one more until the counts add up (the largest-remainder method).
    """
    if not 0 <= total <= sum(sizes.values()):
        raise MaskError(f"cannot keep {total} of {sum(sizes.values())} weights")
    counts = {n: max(0, min(sizes[n], math.floor(quotas[n]))) for n in sizes}
    by_remainder = sorted(sizes, key=lambda n: -(quotas[n] - math.floor(quotas[n])))  # stable: layer order
    deficit = total - sum(counts.values())
    while deficit != 0:  # one pass nearly always; more only where quotas were capped or rounded off
        step = 1 if deficit > 0 else -1
        for n in by_remainder if step > 0 else reversed(by_remainder):
            if deficit != 0 and 0 <= counts[n] + step <= sizes[n]:
                counts[n] += step
                deficit -= step
    return counts


def uniform_counts(shapes: Mapping[str, Sequence[int]], total: int) -> dict[str, int]:
    """Per-layer counts keeping the same share of every layer, `total` weights in all."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    share = total / sum(sizes.values())
    return apportion(sizes, {n: share * size for n, size in sizes.items()}, total)


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Erdős-Rényi-kernel densities (Evci et al. 2020, RigL, section 3 and its sparse_utils code).

    Layer l keeps a share eps * sum(shape_l) / prod(shape_l) of its weights (a linear layer (out, in):
    (out + in) / (out * in); a kernel (out, in, kh, kw) adds kh + kw), with eps chosen so that `density`
    of all the weights is kept. Where that share would exceed 1, the layer with the largest raw share is
    made dense and eps is solved again for the rest, until every share is at most 1.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        if not rest:
            return {n: 1.0 for n in shapes}
        # the kept weights are density * total; the dense layers keep all of theirs
        eps = (density * total - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in rest)
        top = max(raw[n] for n in rest)
        if eps * top <= 1.0:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= {n for n in rest if raw[n] == top}


def erk_counts(shapes: Mapping[str, Sequence[int]], total: int) -> dict[str, int]:
    """Per-layer counts at ERK densities (`erk_densities`), `total` weights in all."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    dens = erk_densities(shapes, total / sum(sizes.values()))
    return apportion(sizes, {n: dens[n] * sizes[n] for n in shapes}, total)


def lamp_scores(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAMP scores (Lee et al. 2021, arXiv 2010.07611, eq. 2) of the surviving weights, per layer.

    Within a layer the survivors are sorted by ascending w^2 (stable: ties by index), and weight u scores
    w_u^2 / sum_{v >= u} w_v^2: the largest weight of every layer scores 1, so scores compare across
    layers and are ranked globally. Pruned weights score 0 (they are never ranked). float64.
    """
    _check(weights, masks)
    out = {}
    for name, w in weights.items():
        sq = w.detach().double().flatten().cpu() ** 2
        idx = (masks[name] > 0).flatten().cpu().nonzero().squeeze(1)
        order = torch.sort(sq[idx], stable=True).indices  # ascending
        ranked = sq[idx][order]
        tail = ranked.flip(0).cumsum(0).flip(0)  # sum over v >= u
        score = torch.zeros_like(sq)
        score[idx[order]] = torch.where(tail > 0, ranked / tail.clamp_min(1e-300), torch.zeros_like(ranked))
        out[name] = score.view(w.shape)
    return out


def hamming(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> int:
    """The number of weights kept by one of two masks and not by the other."""
    _check(a, b)
    return sum(int(((a[n] > 0) != (b[n] > 0)).sum()) for n in a)


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
