"""Early-bird tickets (You et al. 2020, "Drawing early-bird tickets", arXiv 1909.11957, section 4).

While a level trains, every `every` steps the masks the level would prune to are cut from the current
weights. The early-bird iteration is the first such step at which the largest normalised Hamming distance
between any two of the last `window` masks is at most `distance`: the mask has stopped changing. The
distance between two masks is the number of weights kept by one and not the other over the number of
weights the level prunes among (its survivors), so that at level 0 it is the paper's distance over all
weights, and at later levels it is not diluted by the weights pruned before.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import masks as masklib
from .task import Masks

WouldPrune = Callable[[dict[str, torch.Tensor]], Masks]  # current weights (CPU) -> the masks cut from them


def largest_distance(masks: Sequence[Masks], among: int) -> float:
    """The largest normalised Hamming distance between any two of `masks`."""
    return max((masklib.hamming(a, b) / among for a, b in itertools.combinations(masks, 2)), default=0.0)


def first_early_bird(history: Sequence[tuple[int, Masks]], among: int, *, distance: float, window: int) -> int | None:
    """The early-bird iteration of a sequence of (step, masks), or None where the masks never settle."""
    for i in range(window - 1, len(history)):
        if largest_distance([m for _, m in history[i - window + 1 : i + 1]], among) <= distance:
            return history[i][0]
    return None


class EarlyBird:
    """Watches one arm's training for its early-bird iteration (`found`); with `stop`, says when to end it.

    `would_prune` cuts the masks the level would prune to from weights by name (the prunable weights
    `names`); `among` is the number of weights it prunes among. Training stops at the early-bird
    iteration, or at the first check from `not_before` on (the rewind step k, which must be captured).
    """

    def __init__(self, would_prune: WouldPrune, names: Sequence[str], among: int, *, distance: float,
                 window: int, every: int, stop: bool, not_before: int = 0) -> None:
        self.would_prune, self.names, self.among = would_prune, tuple(names), max(1, among)
        self.distance, self.window, self.every, self.stop, self.not_before = distance, window, every, stop, not_before
        self.recent: list[Masks] = []  # the last `window` masks, as bool tensors
        self.found: int | None = None

    def observe(self, step: int, model: nn.Module) -> bool:
        """Called after each training step; True when training should end at this step."""
        if step % self.every == 0:
            params = dict(model.named_parameters())
            weights = {n: params[n].detach().to("cpu", copy=True).float() for n in self.names}
            masks = {n: m > 0 for n, m in self.would_prune(weights).items()}
            self.recent = [*self.recent, masks][-self.window :]
            if (self.found is None and len(self.recent) == self.window
                    and largest_distance(self.recent, self.among) <= self.distance):
                self.found = step
        return self.stop and self.found is not None and step >= self.not_before and step % self.every == 0

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed arm finds the same iteration."""
        return {"recent": [dict(m) for m in self.recent], "found": self.found}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.recent = [dict(m) for m in state["recent"]]
        self.found = state["found"]
