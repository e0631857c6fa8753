"""Training a sparse ticket with sparse (CSR) matrix multiplies against ticketx's dense masked step.

A ticket at low density does a fraction of the dense network's useful arithmetic, so it could train
faster if its layers were stored sparse: only the surviving weights as a compact vector (and its Adam
moments), the forward pass a CSR x dense multiply, the weight gradient a sampled dense x dense multiply
(`torch.sparse.sampled_addmm`: only at the surviving positions), the input gradient a multiply by the
transposed CSR matrix. No mask is held at all: pruned weights do not exist. This script measures whether
that beats the way ticketx trained when it was run (dense multiplies, masks multiplied in after each step,
as `fit` did until commit 5b68a20; `fit` now pins Adam's pruned weights instead, which removed that
multiply: see benchmarks/README.md, fifth and sixth throughput runs).

LeNet-300-100 (784-300-100-10), batch 60, Adam 1.2e-3 (fused, `LeanAdam`), one thread, real MNIST
batches (`EpochBatches`, seed 0), layer-wise magnitude masks on the initial weights at each density (the
output layer at the density Frankle & Carbin's schedule gives it: pruned 10% a level to fc1 and fc2's
20%, e.g. 20.6% where they are at 3.5%). The sparse way stores
fc1 and fc2 as CSR; fc3 (1,000 weights) stays dense and masked. Rounds alternate the two ways; rates are
medians over rounds. Before timing, both ways train 50 steps from the same weights and the largest
difference between their weights is printed: the same arithmetic up to float rounding, so the comparison
is of two ways to compute one thing.

    .venv/bin/python benchmarks/sparse_training.py [--densities 0.2 0.1 0.05 0.036 0.02 0.01]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from batched_arms import update  # noqa: E402
from throughput import BATCH, LR, default_data_root, load_splits  # noqa: E402

from ticketx import masks as M  # noqa: E402
from ticketx.training import EpochBatches, LeanAdam, configure_torch  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class CSRLinearFn(torch.autograd.Function):
    """y = x W^T + b with W given by its CSR structure and its surviving values (the trained leaf)."""

    @staticmethod
    def forward(ctx, x, values, bias, layout):  # type: ignore[override]
        crow, col, tperm, tcrow, tcol, shape = layout
        w = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
        ctx.save_for_backward(x, values)
        ctx.layout = layout
        return torch.sparse.mm(w, x.t()).t() + bias  # (B, out)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, values = ctx.saved_tensors
        crow, col, tperm, tcrow, tcol, shape = ctx.layout
        pattern = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
        grad_values = torch.sparse.sampled_addmm(pattern, g.t().contiguous(), x, beta=0.0).values()
        grad_x = None
        if ctx.needs_input_grad[0]:
            wt = torch.sparse_csr_tensor(tcrow, tcol, values[tperm], (shape[1], shape[0]), check_invariants=False)
            grad_x = torch.sparse.mm(wt, g.t()).t()
        return grad_x, grad_values, g.sum(0), None


class CSRLinear(nn.Module):
    """A pruned nn.Linear stored as CSR: `values` holds the surviving weights in row-major order."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        keep = mask.bool()
        csr = (keep.to(torch.float32)).to_sparse_csr()
        flat = keep.flatten().nonzero().squeeze(1)  # row-major positions = CSR order
        position = torch.full(keep.shape, -1, dtype=torch.long)
        position.view(-1)[flat] = torch.arange(flat.numel())
        kt = keep.t().contiguous()
        csr_t = kt.to(torch.float32).to_sparse_csr()
        tperm = position.t().contiguous().view(-1)[kt.flatten().nonzero().squeeze(1)]
        self.layout = (csr.crow_indices(), csr.col_indices(), tperm, csr_t.crow_indices(),
                       csr_t.col_indices(), tuple(keep.shape))
        self.flat = flat
        self.values = nn.Parameter(linear.weight.detach().reshape(-1)[flat].clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return CSRLinearFn.apply(x, self.values, self.bias, self.layout)

    def dense_weight(self) -> torch.Tensor:
        w = torch.zeros(self.layout[5])
        w.view(-1)[self.flat] = self.values.detach()
        return w


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def masks_at(model: nn.Module, density: float) -> dict[str, torch.Tensor]:
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    levels = math.log(density) / math.log(0.8)  # IMP levels at 20% to reach it; the output layer at 10%
    rates = {"5.weight": 1 - 0.9**levels}
    return {n: m.float() for n, m in
            M.magnitude(weights, M.ones(weights), 1 - density, scope="layerwise", layer_rates=rates).items()}


class Way:
    """A model, its optimizer and the masks it holds after each step, ready to train."""

    def __init__(self, density: float, sparse: bool) -> None:
        model = build()
        masks = masks_at(model, density)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
        if sparse:
            model[1] = CSRLinear(model[1], masks["1.weight"])
            model[3] = CSRLinear(model[3], masks["3.weight"])
            masks = {"5.weight": masks["5.weight"]}
        named = dict(model.named_parameters())
        self.model, self.params = model, list(model.parameters())
        self.held, self.held_masks = [named[n] for n in masks], list(masks.values())
        self.opt = LeanAdam(self.params, lr=LR, fused=True)

    def train(self, batches: EpochBatches, steps: int, first: int = 0) -> float:
        start = time.perf_counter()
        for step in range(first, first + steps):
            x, y = batches(step)
            update(nn.functional.cross_entropy(self.model(x), y), self.params, self.opt, self.held,
                   self.held_masks)
        return steps / (time.perf_counter() - start)

    def weights(self) -> list[torch.Tensor]:
        return [m.dense_weight() if isinstance(m, CSRLinear) else m.weight.detach()
                for m in (self.model[1], self.model[3], self.model[5])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.036, 0.02, 0.01])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    args = ap.parse_args()
    configure_torch(1)
    splits = load_splits(args.data_root)
    batches = EpochBatches(splits.train_x, splits.train_y, BATCH, 0)
    print(f"LeNet-300-100 steps/s, batch {BATCH}, Adam {LR:g}, 1 thread, {args.steps} steps a round, median "
          f"[min-max] of {args.repeats} rounds; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for d in args.densities:
        ways = {"dense masked": Way(d, sparse=False), "CSR": Way(d, sparse=True)}
        for w in ways.values():
            w.train(batches, 50)
        diff = max(float((a - b).abs().max()) for a, b in zip(ways["dense masked"].weights(), ways["CSR"].weights()))
        for w in ways.values():
            w.train(batches, 150, first=50)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for r in range(args.repeats):
            order = list(ways.items()) if r % 2 == 0 else list(ways.items())[::-1]
            for name, w in order:
                rates[name].append(w.train(batches, args.steps, first=200))
        dense, csr = rates["dense masked"], rates["CSR"]
        ratio = [c / m for c, m in zip(csr, dense)]
        print(f"density {100 * d:5.1f}%: dense masked {statistics.median(dense):6.1f} [{min(dense):.1f}-{max(dense):.1f}]"
              f"   CSR {statistics.median(csr):6.1f} [{min(csr):.1f}-{max(csr):.1f}]"
              f"   CSR / dense {statistics.median(ratio):.2f}x [{min(ratio):.2f}-{max(ratio):.2f}]"
              f"   weights after 50 steps differ by <= {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
