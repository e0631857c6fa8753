"""Training throughput of LeNet-300-100 at batch 60 on one torch thread: ticketx's loop, the usual way, and
the bound set by the step's matrix multiplies.

Run by hand (`make bench`, or `.venv/bin/python benchmarks/throughput.py --steps N --repeats R --out F.json`).

What is timed (all on one torch thread, Adam at lr 1.2e-3, batch 60, the same seed-0 initial weights):

- **ticketx**: the real code path, `ticketx.training.fit` with `EpochBatches` over the 55,000 MNIST training
  images held in memory as a normalised float tensor (`ticketx_vision.data.make_splits`, 5,000 held out),
  at density 100% (no masks), 10% and 2%. Masks come from `ticketx.masks.magnitude` (layer-wise, one shot
  on the initial weights). `eval_every` equals the step count, so `fit` evaluates once, at the end, on a
  60-image validation and test slice; that evaluation is timed with the rest (not subtracted) and its
  measured share of the run is reported beside the results.
- **usual**: what a PyTorch tutorial does: `torchvision.datasets.MNIST` with per-image `ToTensor` +
  `Normalize`, a `DataLoader` with `shuffle=True, num_workers=0`, and at densities below 100% the same
  masks attached with `torch.nn.utils.prune.custom_from_mask` (a forward hook recomputing each weight).
  The loop is forward, cross-entropy, `zero_grad`, backward, `step`; nothing is logged.
- **matmul**: the multiplies of the three Linear layers (784->300, 300->100, 100->10) at batch 60 with
  `torch.mm` into preallocated outputs: per layer forward `x @ W^T` (B, out), grad_weight `gy^T @ x`
  (out, in) and grad_input `gy @ W` (B, in). "all 9" times every one of them; "step's 8" leaves out
  fc1's grad_input, which autograd never computes because the images need no gradient. The step's 8 is
  the upper bound for a training step that did nothing but its multiplies, and the one the target is
  judged on (crediting the loop with fc1's grad_input would inflate its share by ~40%).

Robustness: the machine has 2 cores that another process may share, so every variant is warmed up, then
measured once per round, `--repeats` rounds, variants interleaved (ticketx and usual alternate density by
density) and the order reversed every other round (A B ... B A), so that drift in the machine's load falls
evenly on every variant. Rates are reported as the median and [min-max] over rounds; ratios (speedups,
masking overhead, matmul share) are formed within a round, from measurements taken seconds apart, and
reported as the median and [min-max] of the per-round ratios. The load average is recorded at the start
and the end, and for every measurement the CPU that other processes used meanwhile (machine-wide busy time
from /proc/stat less this process's and its children's, in cores: 0 means the rest of the machine idled).
Before each measurement the script waits for the machine to be idle (others under 0.1 cores), spending at
most `--quiet-wait` seconds on waiting in all; no measurement is dropped or repeated.

Paired section: minutes-long drift on a shared machine moves a 5-7 s measurement by +-15% from one to the
next, which a few-percent difference between two of them cannot be read through, and the long rounds
measure the dense loop and the multiplies tens of seconds apart. So the masking-overhead and matmul-share
targets are judged on a section of their own: `--pair-rounds` rounds (default 40) of short runs
(`--pair-steps`, default 500 steps, about 0.5-1 s each), back to back: the step's 8 multiplies, then `fit`
at 100%, 10% and 2% density, the order reversed every other round (so the multiplies always sit next to
the dense loop). Each figure is formed within a round and reported as the median over rounds with
quartiles and a bootstrap 95% interval of the median (5,000 resamples, seed 0); a target passes only when
the whole interval meets it (overhead: upper end under 5%; share: lower end at least 50%). The long
rounds' figures are printed as well, without a target.

A further section runs the dense ticketx loop in separate processes (multiprocessing, spawn): two
one-thread processes side by side, one two-thread process, and one one-thread process for reference. The
workers load the data and warm up, wait at a barrier, then train; total iterations per second is all the
steps done divided by the time from the first start to the last finish.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, TypeVar

import torch
import torchvision
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from ticketx import masks as M
from ticketx.task import Masks, Plan
from ticketx.training import EpochBatches, configure_torch, cross_entropy_loss, evaluate_classifier, fit
from ticketx_vision.data import Splits, load_mnist, make_splits
from ticketx_vision.models import InputShape, build_model, prunable_weights

REPO = Path(__file__).resolve().parents[1]
BATCH = 60
LR = 1.2e-3
SEED = 0
VAL_SIZE = 5000  # held out as in a real run, so the training tensor has the real run's size
EVAL_IMAGES = 60  # the validation / test slice `fit` scores once, at its last step
DENSITIES = (1.0, 0.1, 0.02)
MNIST_SHAPE = InputShape(channels=1, height=28, width=28, classes=10)
LAYERS = ((784, 300), (300, 100), (100, 10))  # (in, out) of fc1, fc2, fc3
WARMUP_STEPS = 200
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual Normalize constants

SPEEDUP_TARGET = 4.0  # ticketx / usual, at every density
OVERHEAD_TARGET = 0.05  # masks held at 10% density vs no masks, through fit
MATMUL_SHARE_TARGET = 0.50  # ticketx dense it/s over the step's-8-matmul bound

BUSY_CORES = 0.25  # a measurement beside other processes using more than this is counted as disturbed

T = TypeVar("T")


# Timed variants


class _Silent:
    """An Observer that records nothing."""

    def on_step(self, step: int, model: nn.Module) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        pass


@dataclass(frozen=True)
class Timing:
    """One timed run: `steps` training steps in `seconds`, of which `eval_seconds` evaluating."""

    steps: int
    seconds: float
    eval_seconds: float = 0.0
    other_cores: float = math.nan  # CPU other processes used meanwhile, in cores (see `others_meanwhile`)

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def lenet() -> nn.Module:
    """LeNet-300-100 with the seed-0 initial weights (every variant starts from the same ones)."""
    return build_model("lenet300_100", MNIST_SHAPE, dropout=0.0, seed=SEED)


def magnitude_masks(density: float) -> Masks:
    """Layer-wise one-shot magnitude masks of the initial weights keeping `density` of each layer."""
    if density >= 1.0:
        return {}
    weights = {n: p.detach() for n, p in prunable_weights(lenet()).items()}
    return M.magnitude(weights, M.ones(weights), 1.0 - density, scope="layerwise")


def time_ticketx(splits: Splits, masks: Masks, steps: int) -> Timing:
    """`fit` for `steps` steps over `EpochBatches`; the one final evaluation is on `EVAL_IMAGES` images."""
    model = lenet()
    batches = EpochBatches(splits.train_x, splits.train_y, BATCH, SEED)
    plan = Plan(steps=steps, batch_size=BATCH, optimizer="adam", lr=LR, eval_every=steps)
    x, y = splits.val_x[:EVAL_IMAGES], splits.val_y[:EVAL_IMAGES]
    in_eval = 0.0

    def evaluate(m: nn.Module, split: str) -> dict[str, float]:
        nonlocal in_eval
        start = time.perf_counter()
        metrics = evaluate_classifier(m, x, y)
        in_eval += time.perf_counter() - start
        return metrics

    start = time.perf_counter()
    fit(model, masks, plan, _Silent(), batch_at=batches, loss_fn=cross_entropy_loss, evaluate=evaluate)
    return Timing(steps, time.perf_counter() - start, in_eval)


def usual_dataset(data_root: Path) -> datasets.MNIST:
    """torchvision's MNIST training set with per-image ToTensor + Normalize."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    return datasets.MNIST(str(data_root), train=True, download=False, transform=transform)


def time_usual(dataset: datasets.MNIST, masks: Masks, steps: int) -> Timing:
    """A DataLoader loop for `steps` steps, masks held by torch.nn.utils.prune's forward hooks."""
    model = lenet()
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        prune.custom_from_mask(modules[name.removesuffix(".weight")], "weight", mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)  # weight_orig where pruned, as usual
    loader = DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(SEED)
    )
    model.train()
    done = 0
    start = time.perf_counter()
    while done < steps:  # a new epoch (and a new shuffle) whenever the loader runs out
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return Timing(steps, time.perf_counter() - start)


class Matmuls:
    """The forward and backward multiplies of LeNet-300-100's Linear layers at batch `BATCH`."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(SEED)
        self.layers = []
        for n_in, n_out in LAYERS:
            x = torch.randn(BATCH, n_in, generator=g)  # (B, in)
            w = torch.randn(n_out, n_in, generator=g)  # (out, in), as nn.Linear stores it
            gy = torch.randn(BATCH, n_out, generator=g)  # (B, out)
            y, gx, gw = torch.empty(BATCH, n_out), torch.empty(BATCH, n_in), torch.empty(n_out, n_in)
            self.layers.append((x, w, gy, y, gx, gw))

    @staticmethod
    def flops(*, all_nine: bool) -> int:
        """Floating-point operations of one step's multiplies (2 per multiply-add)."""
        total = sum(3 * 2 * BATCH * n_in * n_out for n_in, n_out in LAYERS)
        n_in, n_out = LAYERS[0]
        return total if all_nine else total - 2 * BATCH * n_in * n_out  # less fc1's grad_input

    def time(self, steps: int, *, all_nine: bool) -> Timing:
        """`steps` repetitions of one step's multiplies."""
        start = time.perf_counter()
        for _ in range(steps):
            for i, (x, w, gy, y, gx, gw) in enumerate(self.layers):
                torch.mm(x, w.t(), out=y)  # forward (B, out)
                torch.mm(gy.t(), x, out=gw)  # grad_weight (out, in)
                if all_nine or i > 0:
                    torch.mm(gy, w, out=gx)  # grad_input (B, in)
        return Timing(steps, time.perf_counter() - start)


def others_meanwhile(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()` and the CPU other processes used while it ran, in cores (nan where /proc/stat is missing).

    Machine-wide busy time (steal included: time the hypervisor gave to others) less the CPU time of this
    process and of its children reaped meanwhile, over the wall time.
    """

    def busy() -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        except OSError:
            return math.nan
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    busy0, own0, wall0 = busy(), own(), time.perf_counter()
    result = fn()
    busy1, own1, wall1 = busy(), own(), time.perf_counter()
    return result, max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


class QuietGate:
    """Before a measurement, wait until other processes leave the machine idle, within a total budget.

    Idle means under `threshold` cores used by others over a `probe`-second window. Once `budget` seconds
    have been spent waiting in all, measurements go ahead at once; `others_meanwhile` still records them.
    """

    def __init__(self, budget: float, *, threshold: float = 0.1, probe: float = 0.5) -> None:
        self.budget, self.threshold, self.probe = budget, threshold, probe
        self.waited = 0.0

    def wait(self) -> float:
        """Seconds waited this time."""
        start = time.perf_counter()
        while self.waited + (time.perf_counter() - start) < self.budget:
            _, others = others_meanwhile(partial(time.sleep, self.probe))
            if others < self.threshold:
                break
        spent = time.perf_counter() - start
        self.waited += spent
        return spent


# Rounds


@dataclass(frozen=True)
class Variant:
    """One thing to time: `kind` is 'ticketx', 'usual' or 'matmul' (density 1.0, step's 8 or all 9)."""

    kind: str
    density: float
    label: str
    all_nine: bool = False


def variants() -> list[Variant]:
    """ticketx and usual interleaved density by density, then the two matmul bounds."""
    out = []
    for d in DENSITIES:
        out += [Variant("ticketx", d, f"ticketx@{d:g}"), Variant("usual", d, f"usual@{d:g}")]
    return out + [Variant("matmul", 1.0, "matmul_step8"), Variant("matmul", 1.0, "matmul_all9", all_nine=True)]


def run_rounds(
    splits: Splits, dataset: datasets.MNIST, *, steps: int, usual_steps: int, repeats: int, gate: QuietGate,
    log: Callable[[str], None],
) -> dict[str, list[Timing]]:
    """Warm every variant up, then time each once per round, `repeats` rounds, order reversed every other."""
    masks = {d: magnitude_masks(d) for d in DENSITIES}
    matmuls = Matmuls()

    def measure(v: Variant, n: int) -> Timing:
        if v.kind == "ticketx":
            return time_ticketx(splits, masks[v.density], n)
        if v.kind == "usual":
            return time_usual(dataset, masks[v.density], n)
        return matmuls.time(n, all_nine=v.all_nine)

    todo = variants()
    for v in todo:
        measure(v, WARMUP_STEPS)
    timings: dict[str, list[Timing]] = {v.label: [] for v in todo}
    for r in range(repeats):
        for v in todo if r % 2 == 0 else todo[::-1]:
            _log_wait(gate.wait(), log)
            t, others = others_meanwhile(partial(measure, v, usual_steps if v.kind == "usual" else steps))
            timings[v.label].append(replace(t, other_cores=others))
            log(f"  round {r + 1}/{repeats}  {v.label:<14} {t.rate:8.1f} it/s  ({t.seconds:.1f} s, "
                f"other processes {others:.2f} cores)")
    return timings


PAIRED = ("matmul_step8", *(f"ticketx@{d:g}" for d in DENSITIES))  # matmuls beside the dense loop


def run_pairs(splits: Splits, *, steps: int, rounds: int, log: Callable[[str], None]) -> dict[str, list[Timing]]:
    """Short runs back to back, `rounds` rounds, order reversed every other: the step's 8 multiplies, then
    `fit` at every density (so the multiplies are always measured next to the dense loop)."""
    measure: dict[str, Callable[[int], Timing]] = {"matmul_step8": partial(Matmuls().time, all_nine=False)}
    for d in DENSITIES:
        measure[f"ticketx@{d:g}"] = partial(time_ticketx, splits, magnitude_masks(d))
    for label in PAIRED:
        measure[label](WARMUP_STEPS)
    timings: dict[str, list[Timing]] = {label: [] for label in PAIRED}
    for r in range(rounds):
        for label in PAIRED if r % 2 == 0 else PAIRED[::-1]:
            t, others = others_meanwhile(partial(measure[label], steps))
            timings[label].append(replace(t, other_cores=others))
        if (r + 1) % 10 == 0 or r + 1 == rounds:
            log(f"  paired: {r + 1}/{rounds} rounds")
    return timings


def bootstrap_median(values: Sequence[float], *, resamples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the median of `values` resampled with replacement."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


# Processes side by side


def _process_worker(
    data_root: str, threads: int, steps: int, barrier: Barrier, results: mp.Queue[tuple[float, float]]
) -> None:
    """Load the data, warm up, wait for the others, train densely for `steps`; report (start, end)."""
    configure_torch(threads)
    splits = load_splits(Path(data_root))
    time_ticketx(splits, {}, WARMUP_STEPS)
    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    time_ticketx(splits, {}, steps)
    results.put((start, time.perf_counter()))


@dataclass(frozen=True)
class ProcessRun:
    """`processes` processes of `threads` threads each, `steps` steps each, side by side."""

    processes: int
    threads: int
    steps: int
    seconds: float  # first start to last finish
    per_process_rates: tuple[float, ...]
    other_cores: float = math.nan  # CPU other processes used meanwhile (spawning and loading included)

    @property
    def rate(self) -> float:
        return self.processes * self.steps / self.seconds


def run_processes(data_root: Path, processes: int, threads: int, steps: int) -> ProcessRun:
    """Time `processes` spawned workers of `threads` torch threads each, started together."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no OpenMP pool inherited across fork
    barrier = ctx.Barrier(processes)
    results: mp.Queue[tuple[float, float]] = ctx.Queue()
    workers = [
        ctx.Process(target=_process_worker, args=(str(data_root), threads, steps, barrier, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    spans = [results.get() for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a benchmark worker process exited with code {w.exitcode}")
    seconds = max(e for _, e in spans) - min(s for s, _ in spans)
    return ProcessRun(processes, threads, steps, seconds, tuple(steps / (e - s) for s, e in spans))


PROCESS_LAYOUTS = ((2, 1), (1, 2), (1, 1))  # (processes, threads per process)


def run_process_rounds(
    data_root: Path, *, steps: int, repeats: int, gate: QuietGate, log: Callable[[str], None]
) -> dict[str, list[ProcessRun]]:
    """Each layout once per round, `repeats` rounds, order reversed every other round."""
    runs: dict[str, list[ProcessRun]] = {_layout(p, t): [] for p, t in PROCESS_LAYOUTS}
    for r in range(repeats):
        for p, t in PROCESS_LAYOUTS if r % 2 == 0 else PROCESS_LAYOUTS[::-1]:
            _log_wait(gate.wait(), log)
            run, others = others_meanwhile(partial(run_processes, data_root, p, t, steps))
            runs[_layout(p, t)].append(replace(run, other_cores=others))
            log(f"  round {r + 1}/{repeats}  {_layout(p, t):<22} {run.rate:8.1f} it/s total  "
                f"({run.seconds:.1f} s, other processes {others:.2f} cores)")
    return runs


def _log_wait(seconds: float, log: Callable[[str], None]) -> None:
    if seconds > 1.0:
        log(f"  (waited {seconds:.0f} s for other processes to leave the machine idle)")


def _layout(processes: int, threads: int) -> str:
    return f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


# Summaries


@dataclass(frozen=True)
class Spread:
    """Median and range of a few repeated values."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class Check:
    """A derived figure against its target."""

    name: str
    value: Spread
    unit: str  # "x" or "%"
    target: str
    passed: bool | None  # None: informational, no target


def derive(timings: Mapping[str, list[Timing]], processes: Mapping[str, list[ProcessRun]],
           pairs: Mapping[str, list[Timing]] | None = None) -> list[Check]:
    """Speedups, masking overhead, matmul share and the process layout claim, from per-round ratios; the
    masking-overhead and matmul-share targets are judged on the paired short runs where there are any, by
    the end of the median's 95% interval nearer to failing."""
    rate = {k: [t.rate for t in ts] for k, ts in timings.items()}

    def ratio(a: Sequence[float], b: Sequence[float]) -> Spread:
        return Spread.of([x / y for x, y in zip(a, b)])

    checks = []
    for d in DENSITIES:
        s = ratio(rate[f"ticketx@{d:g}"], rate[f"usual@{d:g}"])
        checks.append(Check(f"speedup ticketx / usual at {d:.0%}", s, "x", f">= {SPEEDUP_TARGET:g}x",
                            s.median >= SPEEDUP_TARGET))
    # time per step ratio = inverse rate ratio
    paired = {k: [t.rate for t in ts] for k, ts in (pairs or {}).items()}
    for d in DENSITIES[1:]:
        o = Spread.of([b / a - 1 for a, b in zip(rate[f"ticketx@{d:g}"], rate["ticketx@1"])])
        target = d == 0.1 and not paired
        checks.append(Check(
            f"masking overhead at {d:.0%} (fit)", o, "%", f"< {OVERHEAD_TARGET:.0%}" if target else "-",
            o.median < OVERHEAD_TARGET if target else None,
        ))
    for d in DENSITIES[1:] if paired else ():
        per_round = [b / a - 1 for a, b in zip(paired[f"ticketx@{d:g}"], paired["ticketx@1"])]
        target = d == 0.1
        checks += paired_checks(
            f"masking overhead at {d:.0%}, paired", per_round, f"< {OVERHEAD_TARGET:.0%}" if target else "-",
            (lambda low, high: high < OVERHEAD_TARGET) if target else None,
        )
    shares = [a / b for a, b in zip(rate["ticketx@1"], rate["matmul_step8"])]
    s8 = Spread.of(shares)
    share_target = f">= {MATMUL_SHARE_TARGET:.0%}"
    checks.append(Check("ticketx dense / matmul bound (step's 8)", s8, "%", "-" if paired else share_target,
                        None if paired else s8.median >= MATMUL_SHARE_TARGET))
    if len(shares) >= 4:
        checks.append(Check("  95% interval of the median", Spread(s8.median, *bootstrap_median(shares)), "%",
                            "-", None))
    # the same rate in FLOPs counted as all 9 multiplies: what the bound would be if fc1's grad_input ran
    s9 = Spread.of([r * Matmuls.flops(all_nine=False) / (m * Matmuls.flops(all_nine=True))
                    for r, m in zip(rate["ticketx@1"], rate["matmul_all9"])])
    checks.append(Check("  same, FLOP share vs all-9 rate", s9, "%", "-", None))
    if paired:
        checks += paired_checks(
            "ticketx dense / matmul bound, paired", [a / b for a, b in zip(paired["ticketx@1"],
                                                                             paired["matmul_step8"])],
            share_target, lambda low, high: low >= MATMUL_SHARE_TARGET,
        )
    if processes:
        two_by_one, one_by_two, one_by_one = (
            [r.rate for r in processes[_layout(p, t)]] for p, t in PROCESS_LAYOUTS
        )
        c = ratio(two_by_one, one_by_two)
        checks.append(Check("2 processes x 1 thread / 1 process x 2", c, "x", "> 1x", c.median > 1.0))
        checks.append(Check("1 process x 2 threads / 1 x 1", ratio(one_by_two, one_by_one), "x", "-", None))
        checks.append(Check("2 processes x 1 thread / 1 x 1", ratio(two_by_one, one_by_one), "x", "-", None))
    return checks


def paired_checks(
    name: str, per_round: Sequence[float], target: str, passes: Callable[[float, float], bool] | None
) -> list[Check]:
    """A paired figure: its median [min-max] judged by `passes(low, high)` on the bootstrap 95% interval
    of the median (None: no target), then its quartiles and that interval."""
    low, high = bootstrap_median(per_round)
    quartiles = statistics.quantiles(per_round, n=4)
    median = statistics.median(per_round)
    return [
        Check(name, Spread.of(per_round), "%", target, None if passes is None else passes(low, high)),
        Check("  quartiles", Spread(quartiles[1], quartiles[0], quartiles[2]), "%", "-", None),
        Check("  95% interval of the median", Spread(median, low, high), "%", "-", None),
    ]


def fmt(s: Spread, unit: str = "") -> str:
    """'795.3 [780.1-801.2]' (rates), '2.93x [...]' or '3.1% [...]'."""
    if unit == "%":
        return f"{s.median:6.1%} [{s.low:.1%} to {s.high:.1%}]"
    digits = 2 if unit == "x" else 1
    return f"{s.median:7.{digits}f}{unit} [{s.low:.{digits}f}-{s.high:.{digits}f}]"


def table(
    meta: Mapping[str, Any], timings: Mapping[str, list[Timing]], processes: Mapping[str, list[ProcessRun]],
    checks: Sequence[Check],
) -> str:
    """The printed results: rates per variant and density, then the derived figures with PASS/FAIL."""
    rate = {k: Spread.of([t.rate for t in ts]) for k, ts in timings.items()}
    lines = [
        (f"LeNet-300-100, batch {BATCH}, Adam {LR:g}, 1 torch thread; {meta['repeats']} rounds, "
         "median [min-max]"),
        f"machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, {meta['date']}",
        f"load average at start: {meta['loadavg_start']}; at end: {meta['loadavg_end']}",
        (f"steps per measurement: {meta['steps']} (ticketx, matmul, processes), {meta['usual_steps']} "
         f"(usual); processes section: {meta['process_repeats']} rounds"),
        "",
        f"{'iterations/s':<38}" + "".join(f"{f'density {d:.0%}':>26}" for d in DENSITIES),
        f"{'ticketx: fit + EpochBatches':<38}" + "".join(f"{fmt(rate[f'ticketx@{d:g}']):>26}" for d in DENSITIES),
        f"{'usual: DataLoader + prune hooks':<38}" + "".join(f"{fmt(rate[f'usual@{d:g}']):>26}" for d in DENSITIES),
    ]
    for label, nine in (("matmul_step8", False), ("matmul_all9", True)):
        gflops = Spread.of([t.rate * Matmuls.flops(all_nine=nine) / 1e9 for t in timings[label]])
        name = "matmuls only, all 9" if nine else "matmuls only, the step's 8"
        lines.append(f"{name:<38}{fmt(rate[label]):>26}   ({fmt(gflops)} GFLOP/s, "
                     f"{Matmuls.flops(all_nine=nine) / 1e6:.2f} MFLOP/step)")
    evals = [t.eval_seconds / t.seconds for k, ts in timings.items() if k.startswith("ticketx") for t in ts]
    lines.append(f"final evaluation inside fit ({EVAL_IMAGES} images, val + test), not subtracted: "
                 f"at most {max(evals):.3%} of a ticketx run")
    others = [t.other_cores for ts in timings.values() for t in ts]
    disturbed = sum(o > BUSY_CORES for o in others)
    lines.append(f"CPU used by other processes meanwhile: median {statistics.median(others):.2f} cores, max "
                 f"{max(others):.2f}; {disturbed} of {len(others)} measurements beside > {BUSY_CORES:g} cores "
                 f"(waited {meta['quiet_wait_seconds']} s in all for idle)")
    if processes:
        header = f"{'dense ticketx loop in processes':<38}{'total it/s':>26}   {'per process':<32}"
        lines += ["", header + "other processes (cores), per round"]
        for name, runs in processes.items():
            per = Spread.of([r for run in runs for r in run.per_process_rates])
            busy = " ".join(f"{run.other_cores:.2f}" for run in runs)
            lines.append(f"{name:<38}{fmt(Spread.of([r.rate for r in runs])):>26}   {fmt(per):<32}{busy}")
    lines += ["", f"{'derived (per-round ratios)':<42}{'value':>30}  {'target':>8}"]
    for c in checks:
        verdict = "" if c.passed is None else ("PASS" if c.passed else "FAIL")
        lines.append(f"{c.name:<42}{fmt(c.value, c.unit):>30}  {c.target:>8}  {verdict}")
    return "\n".join(lines)


# Setup


def load_splits(data_root: Path) -> Splits:
    """MNIST as ticketx holds it: normalised float tensors, 5,000 training images held out."""
    data = load_mnist(data_root, fashion=False, download=False)
    return make_splits(data, val_size=VAL_SIZE, split_seed=SEED, train_subset=0, test_subset=0, dataset="mnist")


def default_data_root() -> Path:
    """$TICKETX_DATA, else ../shared/data beside this checkout (as the Makefile does)."""
    env = os.environ.get("TICKETX_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def machine() -> dict[str, Any]:
    """CPU model, cores, versions, date and commit, for the record."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "commit": commit,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=3500,
                        help="steps per ticketx, matmul and process measurement (default 3500: ~5 s each)")
    parser.add_argument("--usual-steps", type=int, default=1200,
                        help="steps per usual-way measurement (default 1200: ~5 s each; it is ~3x slower)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds of the single-thread measurements (default 5)")
    parser.add_argument("--process-repeats", type=int, default=3,
                        help="rounds of the processes section (default 3; 0 skips it)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds in all to spend waiting, before measurements, for other processes to "
                             "leave the machine idle (default 60; 0 never waits)")
    parser.add_argument("--pair-rounds", "--mask-rounds", type=int, default=40, dest="pair_rounds",
                        help="rounds of the paired section (masking overhead, matmul share; default 40; 0 "
                             "skips it)")
    parser.add_argument("--pair-steps", "--mask-steps", type=int, default=500, dest="pair_steps",
                        help="steps per run in the paired section (default 500: ~1 s)")
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="folder holding MNIST/raw (default $TICKETX_DATA, else ../shared/data)")
    parser.add_argument("--out", type=Path, help="also write every timing and summary to this JSON file")
    args = parser.parse_args(argv)
    for name in ("steps", "usual_steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.pair_rounds < 0 or args.pair_steps < 1:
        parser.error("--pair-rounds must be 0 (skip) or more and --pair-steps at least 1")
    if 0 < args.pair_rounds < 4:
        parser.error(f"--pair-rounds must be 0 or at least 4 (quartiles), got {args.pair_rounds}")
    if args.process_repeats < 0:
        parser.error(f"--process-repeats must be 0 (skip) or more, got {args.process_repeats}")
    if not (args.data_root / "MNIST" / "raw").is_dir():
        parser.error(f"MNIST not found: expected torchvision's layout {args.data_root}/MNIST/raw "
                     "(set --data-root or TICKETX_DATA)")

    configure_torch(1)  # as every ticketx process: one thread, denormals flushed (both ways run under it)
    began = time.perf_counter()
    meta = {**machine(), "loadavg_start": loadavg(), "steps": args.steps, "usual_steps": args.usual_steps,
            "repeats": args.repeats, "process_repeats": args.process_repeats,
            "pair_rounds": args.pair_rounds, "pair_steps": args.pair_steps,
            "torch_threads": torch.get_num_threads()}
    print(f"{meta['date']}  load average {meta['loadavg_start']}  ({meta['cpu']}, torch {meta['torch']})",
          flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    splits = load_splits(args.data_root)
    dataset = usual_dataset(args.data_root)
    log("single-thread loops (warm-up first):")
    gate = QuietGate(args.quiet_wait)
    timings = run_rounds(splits, dataset, steps=args.steps, usual_steps=args.usual_steps,
                         repeats=args.repeats, gate=gate, log=log)
    pairs: dict[str, list[Timing]] = {}
    if args.pair_rounds > 0:
        log(f"paired: {args.pair_rounds} rounds of {args.pair_steps}-step runs, the step's multiplies and "
            "fit at every density:")
        pairs = run_pairs(splits, steps=args.pair_steps, rounds=args.pair_rounds, log=log)
    processes: dict[str, list[ProcessRun]] = {}
    if args.process_repeats > 0:
        log("processes side by side:")
        processes = run_process_rounds(args.data_root, steps=args.steps, repeats=args.process_repeats,
                                       gate=gate, log=log)
    meta["loadavg_end"] = loadavg()
    meta["quiet_wait_seconds"] = round(gate.waited, 1)
    meta["wall_seconds"] = round(time.perf_counter() - began, 1)
    checks = derive(timings, processes, pairs)
    print()
    print(table(meta, timings, processes, checks))
    print(f"\nwall time {meta['wall_seconds']} s")
    if args.out:
        args.out.write_text(json.dumps({
            "meta": meta,
            "timings": {k: [{**asdict(t), "rate": t.rate} for t in ts] for k, ts in timings.items()},
            "processes": {k: [{**asdict(r), "rate": r.rate} for r in rs] for k, rs in processes.items()},
            "pairs": {k: [{**asdict(t), "rate": t.rate} for t in ts] for k, ts in pairs.items()},
            "derived": [asdict(c) for c in checks],
        }, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
