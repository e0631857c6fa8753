"""Arms trained one at a time against the same arms stacked into one batched model (torch.func.vmap).

The arms of one IMP level (ticket, random reinitialisation, random pruning) share an architecture and,
within a replicate, the data order, so they could train in lockstep as one model whose weights are
stacked along a leading member dimension: one `vmap`-ed forward and backward (batched matrix multiplies),
one fused Adam step over the stacked tensors, masks held per member. This script measures whether that
beats the way ticketx trains them (one at a time, each with `fit`'s own loop: fused `LeanAdam`, masks
multiplied in after each step), in member-steps per second on one thread, for two model sizes:

- `lenet`: LeNet-300-100 (784-300-100-10), batch 60, the Frankle & Carbin setup;
- `small`: 784-30-10, the same batch, where per-step overhead rather than arithmetic dominates.

Each member starts from its own weights and holds 10%-density magnitude masks (layer-wise, one shot);
both ways see the same MNIST batches (`EpochBatches`, seed 0). Rounds alternate the two ways; rates are
medians over rounds. Run by hand:

    .venv/bin/python benchmarks/batched_arms.py [--members 3 6] [--steps 1500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import BATCH, LR, default_data_root, load_splits  # noqa: E402

from ticketx import masks as M  # noqa: E402
from ticketx.training import EpochBatches, LeanAdam, configure_torch  # noqa: E402


def build(size: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    hidden = (300, 100) if size == "lenet" else (30,)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def masks_for(model: nn.Module, density: float = 0.1) -> dict[str, torch.Tensor]:
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    return {n: m.float() for n, m in M.magnitude(weights, M.ones(weights), 1 - density, scope="layerwise").items()}


def update(loss: torch.Tensor, params: list[torch.Tensor], opt: torch.optim.Optimizer,
           held: list[torch.Tensor], held_masks: list[torch.Tensor]) -> None:
    """One step as `ticketx.training.fit` takes it: fresh gradients, the optimizer, masks multiplied in."""
    for p in params:
        p.grad = None
    loss.backward()
    opt.step()
    with torch.no_grad():
        torch._foreach_mul_(held, held_masks)


def one_at_a_time(size: str, members: int, steps: int, batches: EpochBatches) -> float:
    """Member-steps per second, training each member in turn with fit's inner loop."""
    seconds = 0.0
    for i in range(members):
        model = build(size, i)
        masks = masks_for(model)
        params = list(model.parameters())
        named = dict(model.named_parameters())
        held, held_masks = [named[n] for n in masks], list(masks.values())
        opt = LeanAdam(params, lr=LR, fused=True)
        start = time.perf_counter()
        for step in range(steps):
            x, y = batches(step)
            update(nn.functional.cross_entropy(model(x), y), params, opt, held, held_masks)
        seconds += time.perf_counter() - start
    return members * steps / seconds


def stacked(size: str, members: int, steps: int, batches: EpochBatches) -> float:
    """Member-steps per second, all members as one vmap-ed model with stacked weights."""
    models = [build(size, i) for i in range(members)]
    per_member = [masks_for(m) for m in models]
    params, buffers = stack_module_state(models)  # leaves of shape (members, ...)
    skeleton = copy.deepcopy(models[0]).to("meta")
    leaves = list(params.values())
    held = [params[n] for n in per_member[0]]
    held_masks = [torch.stack([pm[n] for pm in per_member]) for n in per_member[0]]
    opt = LeanAdam(leaves, lr=LR, fused=True)

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, None))
    start = time.perf_counter()
    for step in range(steps):
        x, y = batches(step)
        logits = batched(params, buffers, x)  # (members, batch, 10)
        # the sum of the members' mean losses: each member's gradient is its own loss's gradient
        loss = nn.functional.cross_entropy(logits.reshape(-1, 10), y.repeat(members), reduction="sum") / BATCH
        update(loss, leaves, opt, held, held_masks)
    return members * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--sizes", nargs="+", default=["lenet", "small"], choices=["lenet", "small"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    args = ap.parse_args()
    configure_torch(1)
    splits = load_splits(args.data_root)
    batches = EpochBatches(splits.train_x, splits.train_y, BATCH, 0)
    ways: dict[str, Callable[[str, int, int, EpochBatches], float]] = {
        "one at a time": one_at_a_time, "stacked (vmap)": stacked}
    print(f"member-steps/s, batch {BATCH}, Adam {LR:g}, 1 thread, {args.steps} steps a member, "
          f"median [min-max] of {args.repeats} rounds; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for size in args.sizes:
        for k in args.members:
            for way in ways.values():
                way(size, k, 200, batches)  # warm-up
            rates: dict[str, list[float]] = {name: [] for name in ways}
            for r in range(args.repeats):
                order = list(ways.items()) if r % 2 == 0 else list(ways.items())[::-1]
                for name, way in order:
                    rates[name].append(way(size, k, args.steps, batches))
            one, st = rates["one at a time"], rates["stacked (vmap)"]
            ratio = statistics.median(s / o for s, o in zip(st, one))
            print(f"{size:>6} x{k}: one at a time {statistics.median(one):7.1f} [{min(one):.1f}-{max(one):.1f}]"
                  f"   stacked {statistics.median(st):7.1f} [{min(st):.1f}-{max(st):.1f}]"
                  f"   stacked / one at a time {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
