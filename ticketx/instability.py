"""Instability analysis (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis",
arXiv 1912.05671): is training from θk stable to the order of the data?

For each rewind step k: train the network from its initialisation to step k (θk), then train two copies
from θk to the end with different data orders, and evaluate the straight line between the two results on
the validation split. The error barrier (`ticketx.analysis.error_barrier`) near zero means the outcome no
longer depends on the data order from k on: the regime in which rewinding to k finds matching tickets
where rewinding to 0 does not (Frankle et al. 2019, arXiv 1903.01611).

The error along the line is 1 - validation accuracy for classifiers, else the validation loss. With a
ticket, its masks are held while both copies train (the sparse-network variant of the paper); θk is
always reached by training the network from its initialisation with the same masks.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import analysis
from .config import FindConfig
from .jobs import clone_state
from .task import Masks, Task, TaskError


class _Quiet:
    """An Observer that keeps only the last evaluation."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def on_step(self, step: int, model: nn.Module) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.last.update(metrics)


@dataclass(frozen=True)
class Point:
    """One rewind step's result."""

    k: int
    barrier: float
    curve: list[tuple[float, float]]  # (alpha, error) along the line
    end_errors: tuple[float, float]  # the two trained copies' errors


def error_fn(task: Task) -> tuple[str, Callable[[nn.Module], float]]:
    """(what the error is, how to compute it on the validation split)."""
    if task.metrics.primary == "accuracy":
        return "1 - val_accuracy", lambda m: 1.0 - float(task.evaluate(m)["val_accuracy"])
    return "val_loss", lambda m: float(task.evaluate(m)["val_loss"])


def check(config: FindConfig, ks: Sequence[int]) -> None:
    """TaskError unless every rewind step is in [0, train.steps)."""
    bad = [k for k in ks if not 0 <= k < config.train.steps]
    if bad:
        raise TaskError(f"rewind steps must be in [0, train.steps = {config.train.steps}), got {bad}")


def run(config: FindConfig, task: Task, ks: Sequence[int], *, masks: Masks | None = None, points: int = 11,
        data_seeds: tuple[int, int] = (1, 2),
        progress: Callable[[str, Mapping[str, Any]], None] = lambda event, info: None,
        device: str = "cpu") -> list[Point]:
    """The barrier at each rewind step in `ks` for replicate 0 of `config` (its init seed and training).

    `data_seeds` are the two copies' data orders (added to the config's data seed); θk itself is reached
    with the config's own data order. `progress(event, info)` hears "plan" ({"total", "workers", "unit"}),
    then per rewind step "start" and "done" ({"name": "k=K"}) with "line" events ({"line": text}) between:
    the events `ticketx.progress` reporters count.
    """
    steps = config.train.steps
    check(config, ks)
    if data_seeds[0] == data_seeds[1]:
        raise TaskError("the two copies need different data orders (data_seeds must differ)")
    _, error = error_fn(task)
    init = task.build_model(config.init_seed(0))
    if masks is None:
        masks = {n: torch.ones_like(p) for n, p in task.prunable(init).items()}
    init_state = clone_state(init)
    masks = {n: m.to(device) for n, m in masks.items()}
    out = []
    progress("plan", {"total": len(set(ks)), "workers": 1, "unit": "rewind steps"})
    for k in sorted(set(ks)):
        name = f"k={k}"

        def say(text: str) -> None:
            progress("line", {"name": name, "line": f"{name}: {text}"})

        progress("start", {"name": name})
        model = task.build_model(config.init_seed(0)).to(device)
        model.load_state_dict(init_state)
        if k > 0:
            say(f"training from initialisation to step {k}")
            task.train(model, masks, replace(config.plan(0), steps=k, device=device), _Quiet())
        theta_k = clone_state(model)
        ends = []
        for copy, seed in enumerate(data_seeds):
            say(f"copy {copy + 1} of 2, steps {k} to {steps}, data order {seed}")
            m = task.build_model(config.init_seed(0)).to(device)
            m.load_state_dict(theta_k)
            plan = replace(config.plan(0, start_step=k), data_seed=config.order_seed(0) + seed, device=device)
            task.train(m, masks, plan, _Quiet())
            ends.append(clone_state(m))
        curve = analysis.interpolation(model, ends[0], ends[1], error, points=points)
        out.append(Point(k, analysis.error_barrier(curve), curve, (curve[0][1], curve[-1][1])))
        say(f"error barrier {out[-1].barrier:.4f}")
        progress("done", {"name": name})
    return out


def folder(out: Path, config: FindConfig, ks: Sequence[int], points: int, ticket: Path | None) -> Path:
    """`<out>/instability-<name>-<hash>`: one folder per question asked (the recipe's hashed keys, the
    rewind steps, the points, the ticket held), so that runs with another ticket or other steps never
    overwrite each other's CSV and figure, and the same command run again rewrites its own."""
    import hashlib
    import json

    from .config import hashed
    identity = {"config": hashed(config), "rewind": list(ks), "points": points,
                "ticket": str(Path(ticket).resolve()) if ticket is not None else None}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Path(out) / f"instability-{config.name}-{digest[:10]}"


def write(results: Sequence[Point], what: str, folder: Path, title: str) -> list[Path]:
    """instability.csv (every point of every curve) and instability.png (barrier against k; the curves)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "instability.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "alpha", "error", "barrier"])
        for p in results:
            for alpha, e in p.curve:
                w.writerow([p.k, f"{alpha:.4f}", f"{e:.6f}", f"{p.barrier:.6f}"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    ks = [p.k for p in results]
    left.plot(ks, [p.barrier for p in results], marker="o")
    left.set_xlabel("rewind step k")
    left.set_ylabel(f"error barrier ({what})")
    if len(ks) > 1 and min(ks) >= 0 and max(ks) > 0:
        left.set_xscale("symlog", linthresh=max(1, min(k for k in ks if k > 0)))
    left.grid(True, alpha=0.3)
    for p in results:
        right.plot([a for a, _ in p.curve], [e for _, e in p.curve], marker=".", label=f"k={p.k}")
    right.set_xlabel("interpolation alpha (copy 1 at 0, copy 2 at 1)")
    right.set_ylabel(what)
    right.legend(fontsize=8)
    right.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    figure = folder / "instability.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    return [table, figure]


def summary(results: Sequence[Point]) -> list[dict[str, Any]]:
    return [{"k": p.k, "barrier": p.barrier, "error_copy1": p.end_errors[0], "error_copy2": p.end_errors[1],
             "error_midpoint": p.curve[len(p.curve) // 2][1]} for p in results]
