"""Inference throughput of exported tickets against the masked dense model, across densities.

LeNet-300-100 (the vision plugin's model, seed 0) with layer-wise magnitude masks at each density (the
output layer at the same density), on real MNIST test images at batch 256 and batch 1, one thread:
- masked dense, eager: the trained model as find leaves it (nn.Linear, pruned entries zero);
- dense, scripted: the same through torch.jit.script, to separate TorchScript's own gain;
- exported: `ticketx.export.compact(max_density=1.0)` (every Linear as CSR), scripted and saved, then
  loaded with torch.jit.load, as users run it.
Each figure is the median of 5 timings of 0.5 s. The crossover density is the highest density at which
the exported model beats the scripted dense one. Run by hand: `.venv/bin/python benchmarks/export_speed.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from ticketx import export as E
from ticketx import masks as M
from ticketx_vision.plugin import VisionPlugin

DENSITIES = (1.0, 0.5, 0.25, 0.18, 0.12, 0.08, 0.05, 0.036, 0.02, 0.01)


def rate(model: torch.nn.Module, x: torch.Tensor) -> float:
    return statistics.median(E.throughput(model, x, seconds=0.5) for _ in range(5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(os.environ.get("TICKETX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    task = VisionPlugin().make_task("mnist", {"model": "lenet300_100"}, data_root=root)
    model = task.build_model(0).eval()
    weights = {n: p.detach() for n, p in task.prunable(model).items()}
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for density in DENSITIES:
        masks = M.magnitude(weights, M.ones(weights), 1 - density) if density < 1 else M.ones(weights)
        dense, _ = E.compact(model, masks, max_density=-1.0)  # masks applied, every layer dense
        exported = E.load(E.save(E.compact(model, masks, max_density=1.0)[0], tmp / f"d{density}.pt"))
        scripted = E.load(E.save(dense, tmp / f"dense{density}.pt"))
        for batch in (256, 1):
            x = task.example_inputs(batch)
            assert E.max_difference(dense, exported, x) < 1e-4
            row = {"density": M.density(masks), "batch": batch, "dense_eager": rate(dense, x),
                   "dense_scripted": rate(scripted, x), "exported_csr": rate(exported, x)}
            rows.append(row)
            print(f"density {100 * row['density']:6.2f}%  batch {batch:>3}: dense eager {row['dense_eager']:>9,.0f}/s"
                  f"  dense scripted {row['dense_scripted']:>9,.0f}/s  exported CSR {row['exported_csr']:>9,.0f}/s"
                  f"  ({row['exported_csr'] / row['dense_eager']:.2f}x eager, "
                  f"{row['exported_csr'] / row['dense_scripted']:.2f}x scripted)", flush=True)
    for batch in (256, 1):
        wins = [r["density"] for r in rows if r["batch"] == batch and r["exported_csr"] > r["dense_scripted"]]
        print(f"batch {batch}: exported CSR beats scripted dense at densities <= "
              f"{100 * max(wins):.1f}%" if wins else f"batch {batch}: exported CSR never beats scripted dense")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
