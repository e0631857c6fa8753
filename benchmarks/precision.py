"""CPU training throughput in fp32, bf16 and bf16 + channels_last, through ticketx and through plain torch.

Issue #17 asks that bf16 (and channels-last batches for the convnets) speed CPU training up, and that
"ticketx's own training path be within 10% of these speedups": the speedup fp32 -> bf16 measured through
ticketx at least 0.9x the one plain torch gets on the same model. This script measures both, per model,
on **one torch thread** (`ticketx.training.configure_torch(1)`, as every ticketx process runs):

- **ticketx**: the plugin's `Task.train` (which calls `ticketx.training.fit`) with
  `Plan(device="cpu", precision=...)`, Adam, `eval_every` = the step count, so `fit` evaluates once, at its
  last step, on tiny splits (vision: `task.val_size` = `task.test_subset` = 8 images, `score_train`
  false; LSTM: `task.eval_tokens` = 40). That evaluation is timed with the rest, **not subtracted**, and
  its share of each run is measured (from the observer's calls: last `on_step` to `on_eval`) and printed.
  Everything a `Task.train` call does is in the time: the optimizer made anew (`LeanAdam`, the fused
  kernel called directly), the batches gathered from the stored uint8 images and normalised per batch
  (augmented for VGG-19 and ResNet-20, as recipes/frankle2019 does; not for Conv-2/Conv-6, whose recipes
  set `augment = false`), autocast, the masks' bookkeeping (no masks here). channels_last goes through the
  vision option `task.channels_last` (true/false; the batches are channels-last, the weights stay NCHW, as
  the task does it); the fp32 and bf16 variants set it false. (Under the option's default, "auto", bf16 on
  the CPU is channels-last: ticketx's bf16 is this script's bf16 + channels_last.)
- **plain**: the same model class from the plugin (`ticketx_vision.models.build_model`; the NLP task's
  `build_model`), the same initial weights, 8 real batches already in memory as float tensors (normalised
  images; for the LSTM, consecutive BPTT windows of the training stream, the state carried and detached),
  cycled; forward under `torch.autocast("cpu", dtype=torch.bfloat16)` for bf16, cross-entropy, backward,
  `torch.optim.Adam(fused=True)` step. channels_last the usual way: `model.to(memory_format=
  torch.channels_last)` and channels-last batches. No augmentation.

Models (batch; the learning rate is the recipe's where the recipe uses Adam, else Adam at 1e-3 on both
sides, since the point is speed and the plain way is Adam): LeNet-300-100 on MNIST (batch 60 and 512),
Conv-2 (60), Conv-6 (60), VGG-19 (64), ResNet-20 (128) on CIFAR-10, and the word-level LSTM language model
of recipes/yu2019/lstm_lm.toml (Yu et al. 2019's size: 2 x 650 units, dropout 0.5, BPTT 35, batch 20,
untied, the whole Brown training split, vocabulary 19,402; gradient clipping 0.25 on both sides, as the
recipe). channels_last applies to the convnets only.

Method: per model, every (precision variant, way) pair has its own model and is warmed up, then timed once
per round, `--rounds` rounds, the order rotating every round so that drift in a shared machine's speed
falls on all pairs alike. A rate is the median [min-max] over rounds; a speedup is formed within a round
(bf16 rate / fp32 rate, the same way) and reported as the median [min-max] of those; "ticketx / plain" is
the per-round ratio of the two ways' speedups, and the target passes when its median is at least 0.90.
Before each timing the script waits (at most `--quiet-wait` seconds in all) for other processes to leave
the machine idle, and records the CPU they used meanwhile (benchmarks/throughput.py's method).

Then `LeanAdam` (what `fit` uses on the CPU) against torch's public `torch.optim.Adam(fused=True)`, both
through the vision task's `fit` on LeNet-300-100, fp32, batch 60, dense and at 10% density (layer-wise
magnitude masks, pruned weights pinned by +inf second moments in both: `fit` calls `LeanAdam.pin_zeros`
or `ticketx.training.pin_zeros`): `ticketx.training.make_optimizer` is monkeypatched for the public one.

    .venv/bin/python benchmarks/precision.py                      # everything, ~10-15 min here
    .venv/bin/python benchmarks/precision.py --models conv2 lstm_lm --rounds 3 --steps conv2=4 --out /tmp/p.json

Results: benchmarks/README.md, "precision.py".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402  (this folder's helpers: the machine record, the idle gate)
    QuietGate, Spread, bootstrap_median, default_data_root, loadavg, machine, others_meanwhile,
)

from ticketx import masks as M  # noqa: E402
from ticketx import plugins, training  # noqa: E402
from ticketx.task import Masks, Plan  # noqa: E402
from ticketx.training import configure_torch  # noqa: E402

FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
VARIANTS = ("fp32", "bf16", "bf16_cl")  # bf16_cl: bf16 autocast + channels-last batches
WAYS = ("ticketx", "plain")
SPEEDUP_SHARE_TARGET = 0.90  # ticketx's speedup at least 90% of plain torch's
EVAL_IMAGES = 8  # vision: task.val_size and task.test_subset, the one evaluation fit makes
EVAL_TOKENS = 40  # LSTM: task.eval_tokens (10 columns x 4 rows: one window of 3 tokens each)
PLAIN_BATCHES = 8  # batches held in memory for the plain way, cycled
BUSY_CORES = 0.25  # a timing beside other processes using more than this is counted as disturbed


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One benchmarked model: its task, batch, learning rate, steps per timing and warm-up steps."""

    key: str
    label: str
    plugin: str  # "vision" | "nlp"
    task: str
    options: Mapping[str, Any]
    batch: int
    lr: float
    steps: int
    warmup: int
    clip: float = 0.0

    @property
    def conv(self) -> bool:
        return self.plugin == "vision" and self.options["model"] != "lenet300_100"

    @property
    def variants(self) -> tuple[str, ...]:
        return VARIANTS if self.conv else VARIANTS[:2]


def _vision(model: str, task: str, *, augment: bool) -> dict[str, Any]:
    return {"model": model, "val_size": EVAL_IMAGES, "test_subset": EVAL_IMAGES, "score_train": False,
            "augment": augment, "download": False}


# recipes/yu2019/lstm_lm.toml's model and data, evaluation cut to EVAL_TOKENS
LSTM_OPTIONS = {"corpus": "text/brown", "emb_size": 650, "hidden_size": 650, "layers": 2, "dropout": 0.5,
                "tie_weights": False, "bptt": 35, "min_freq": 3, "eval_tokens": EVAL_TOKENS}

SPECS = {s.key: s for s in (
    Spec(key="lenet-b60", label="LeNet-300-100, MNIST, batch 60", plugin="vision", task="mnist",
         options=_vision("lenet300_100", "mnist", augment=False), batch=60, lr=1.2e-3, steps=1500, warmup=200),
    Spec(key="lenet-b512", label="LeNet-300-100, MNIST, batch 512", plugin="vision", task="mnist",
         options=_vision("lenet300_100", "mnist", augment=False), batch=512, lr=1.2e-3, steps=400, warmup=50),
    Spec(key="conv2", label="Conv-2, CIFAR-10, batch 60", plugin="vision", task="cifar10",
         options=_vision("conv2", "cifar10", augment=False), batch=60, lr=2e-4, steps=12, warmup=3),
    Spec(key="conv6", label="Conv-6, CIFAR-10, batch 60", plugin="vision", task="cifar10",
         options=_vision("conv6", "cifar10", augment=False), batch=60, lr=3e-4, steps=5, warmup=2),
    Spec(key="vgg19", label="VGG-19, CIFAR-10 augmented, batch 64", plugin="vision", task="cifar10",
         options=_vision("vgg19", "cifar10", augment=True), batch=64, lr=1e-3, steps=3, warmup=2),
    Spec(key="resnet20", label="ResNet-20, CIFAR-10 augmented, batch 128", plugin="vision", task="cifar10",
         options=_vision("resnet20", "cifar10", augment=True), batch=128, lr=1e-3, steps=6, warmup=2),
    Spec(key="lstm_lm", label="LSTM LM 2x650 (yu2019/lstm_lm), Brown, batch 20 x 35", plugin="nlp",
         task="word_lm", options=LSTM_OPTIONS, batch=20, lr=1e-3, steps=4, warmup=2, clip=0.25),
)}


@dataclass(frozen=True)
class Timing:
    """One timed run: `steps` steps in `seconds`, `eval_seconds` of it in fit's evaluation."""

    steps: int
    seconds: float
    eval_seconds: float = 0.0
    other_cores: float = math.nan

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def cast(precision: str) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def precision_of(variant: str) -> str:
    return "bf16" if variant.startswith("bf16") else "fp32"


# The two ways


class Clock:
    """An Observer that notes when the last step ended and when the evaluation after it was reported."""

    def __init__(self, last: int) -> None:
        self.last = last
        self.step_end = self.eval_end = math.nan

    def on_step(self, step: int, model: nn.Module) -> None:
        if step == self.last:
            self.step_end = time.perf_counter()

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.eval_end = time.perf_counter()


def channels_last_option_exists() -> bool:
    from ticketx_vision.options import VisionOptions
    return any(f.name == "channels_last" for f in fields(VisionOptions))


class TicketxWay:
    """`Task.train` (fit) of one model in one variant; each timing is one call of `steps` steps."""

    def __init__(self, spec: Spec, variant: str, data_root: Path, available: Any) -> None:
        options = dict(spec.options)
        self.converted_model = False
        if spec.conv:
            if channels_last_option_exists():
                options["channels_last"] = variant == "bf16_cl"
            elif variant == "bf16_cl":  # an older plugin: convert the model, the batches stay NCHW
                self.converted_model = True
        self.task: Any = plugins.make_task(spec.plugin, spec.task, options, available=available, data_root=data_root)
        self.task.prepare()
        self.model = self.task.build_model(0)
        if self.converted_model:
            self.model.to(memory_format=torch.channels_last)
        self.spec, self.precision = spec, precision_of(variant)

    def run(self, steps: int) -> Timing:
        plan = Plan(steps=steps, batch_size=self.spec.batch, optimizer="adam", lr=self.spec.lr, eval_every=steps,
                    clip_grad_norm=self.spec.clip, device="cpu", precision=self.precision)
        clock = Clock(steps)
        start = time.perf_counter()
        self.task.train(self.model, {}, plan, clock)
        seconds = time.perf_counter() - start
        return Timing(steps, seconds, clock.eval_end - clock.step_end)


class PlainWay:
    """The same model class trained the plain torch way on batches already in memory as floats."""

    def __init__(self, spec: Spec, variant: str, source: Any) -> None:
        self.spec, self.precision = spec, precision_of(variant)
        fmt = torch.channels_last if variant == "bf16_cl" else torch.contiguous_format
        self.model = source.build_model(0)  # the task's model class and initial weights
        self.lm = spec.plugin == "nlp"
        if self.lm:
            from ticketx_nlp.batching import batchify
            data = batchify(source.data().train, spec.batch)  # (rows, B) ids
            t = spec.options["bptt"]
            self.batches = [(data[i * t:(i + 1) * t], data[i * t + 1:(i + 1) * t + 1]) for i in range(PLAIN_BATCHES)]
        else:
            s = source.splits()
            b = spec.batch
            self.batches = [(s.normalise(s.train_x[i * b:(i + 1) * b]).contiguous(memory_format=fmt),
                             s.train_y[i * b:(i + 1) * b]) for i in range(PLAIN_BATCHES)]
            if variant == "bf16_cl":
                self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=spec.lr, fused=True)
        self.state: Any = None
        self.i = 0

    def run(self, steps: int) -> Timing:
        start = time.perf_counter()
        for _ in range(steps):
            x, y = self.batches[self.i % len(self.batches)]
            with cast(self.precision):
                if self.lm:
                    if self.i % len(self.batches) == 0:
                        self.state = None
                    logits, state = self.model(x, self.state)
                    self.state = (state[0].detach(), state[1].detach())
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                else:
                    loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.spec.clip > 0:
                nn.utils.clip_grad_norm_(self.params, self.spec.clip, foreach=True)
            self.optimizer.step()
            self.i += 1
        float(loss.detach())
        return Timing(steps, time.perf_counter() - start)


# Measuring


def measure(spec: Spec, *, rounds: int, steps: int, data_root: Path, gate: QuietGate,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Every (variant, way) of `spec`: built, warmed up, then timed once per round in rotating order."""
    available = plugins.discover()
    began = time.perf_counter()
    runners: dict[tuple[str, str], Any] = {}
    for v in spec.variants:
        runners[(v, "ticketx")] = TicketxWay(spec, v, data_root, available)
    source = runners[("fp32", "ticketx")].task
    for v in spec.variants:
        runners[(v, "plain")] = PlainWay(spec, v, source)
    for r in runners.values():
        r.run(spec.warmup)
    log(f"  {spec.key}: built and warmed up in {time.perf_counter() - began:.1f} s; {rounds} rounds of {steps} "
        f"steps per timing")
    units = list(runners)
    times: dict[tuple[str, str], list[Timing]] = {u: [] for u in units}
    for rnd in range(rounds):
        k = rnd % len(units)
        for u in units[k:] + units[:k]:
            gate.wait()
            t, others = others_meanwhile(lambda u=u: runners[u].run(steps))
            times[u].append(Timing(t.steps, t.seconds, t.eval_seconds, others))
        log(f"  {spec.key} round {rnd + 1}/{rounds}: " + ", ".join(
            f"{w} {v} {times[(v, w)][-1].rate:.2f}" for v, w in units) + " it/s")
    converted = any(getattr(r, "converted_model", False) for r in runners.values())
    runners.clear()  # free the models before the next spec
    source = None
    gc.collect()
    return {"spec": {**asdict(spec), "options": dict(spec.options)}, "steps": steps, "rounds": rounds,
            "channels_last_via": ("model converted by this script (no task.channels_last option)" if converted
                                  else "task.channels_last" if spec.conv else None),
            "timings": {f"{w}/{v}": [{**asdict(t), "rate": t.rate} for t in ts] for (v, w), ts in times.items()}}


def summarise(result: Mapping[str, Any]) -> dict[str, Any]:
    """Rates, per-round speedups of each way and the per-round ratio of ticketx's speedup to plain's."""
    rates = {k: [t["rate"] for t in ts] for k, ts in result["timings"].items()}
    variants = sorted({k.split("/")[1] for k in rates}, key=VARIANTS.index)
    out: dict[str, Any] = {"rates": {k: asdict(Spread.of(v)) for k, v in rates.items()}, "speedups": {}, "ratios": {},
                           "ticketx_over_plain": {}}
    for v in variants:
        t, p = rates[f"ticketx/{v}"], rates[f"plain/{v}"]
        out["ticketx_over_plain"][v] = asdict(Spread.of([a / b for a, b in zip(t, p)]))
    for v in variants[1:]:
        per_way = {}
        for w in WAYS:
            base, fast = rates[f"{w}/fp32"], rates[f"{w}/{v}"]
            per_way[w] = [f / b for f, b in zip(fast, base)]
            out["speedups"][f"{w}/{v}"] = asdict(Spread.of(per_way[w]))
        share = [a / b for a, b in zip(per_way["ticketx"], per_way["plain"])]
        low, high = bootstrap_median(share) if len(share) >= 4 else (min(share), max(share))
        out["ratios"][v] = {**asdict(Spread.of(share)), "ci95_low": low, "ci95_high": high,
                            "passed": statistics.median(share) >= SPEEDUP_SHARE_TARGET}
    # the same ratios with fit's one evaluation taken out of the ticketx timings
    train_rates = {k: [t["steps"] / (t["seconds"] - t["eval_seconds"]) if k.startswith("ticketx") else t["rate"]
                       for t in ts] for k, ts in result["timings"].items()}
    out["ratios_eval_subtracted"] = {}
    for v in variants[1:]:
        sp = {w: [f / b for f, b in zip(train_rates[f"{w}/{v}"], train_rates[f"{w}/fp32"])] for w in WAYS}
        out["ratios_eval_subtracted"][v] = asdict(Spread.of([a / b for a, b in zip(sp["ticketx"], sp["plain"])]))
    evals = [t["eval_seconds"] / t["seconds"] for k, ts in result["timings"].items() if k.startswith("ticketx")
             for t in ts]
    out["eval_share_max"] = max(evals)
    out["eval_share_median"] = statistics.median(evals)
    return out


# LeanAdam against torch.optim.Adam(fused=True), through fit


def _public_adam(params: list[nn.Parameter], plan: Plan) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=plan.lr, weight_decay=plan.weight_decay, fused=True,
                            decoupled_weight_decay=plan.optimizer == "adamw")


@contextlib.contextmanager
def optimizer_made(made: list[str], public: bool) -> Iterator[None]:
    """`fit` as it is (`public` false: `LeanAdam` on the CPU), or with torch.optim.Adam(fused=True) where
    it would make `LeanAdam`; the names of the optimizers made are appended to `made`."""
    original = training.make_optimizer

    def make(params: list[nn.Parameter], plan: Plan) -> torch.optim.Optimizer:
        opt = _public_adam(params, plan) if public else original(params, plan)
        made.append(type(opt).__name__)
        return opt

    training.make_optimizer = make
    try:
        yield
    finally:
        training.make_optimizer = original


def measure_adam(*, rounds: int, steps: int, data_root: Path, gate: QuietGate,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """LeNet-300-100 fp32 batch 60 through the vision task's fit: LeanAdam against the public fused Adam,
    dense and at 10% density, interleaved."""
    spec = SPECS["lenet-b60"]
    way = TicketxWay(spec, "fp32", data_root, plugins.discover())
    weights = {n: p.detach() for n, p in way.task.prunable(way.task.build_model(0)).items()}
    masks: dict[str, Masks] = {"dense": {}, "10%": M.magnitude(weights, M.ones(weights), 0.9, scope="layerwise")}
    models = {(o, d): way.task.build_model(0) for o in ("LeanAdam", "Adam") for d in masks}
    made: dict[str, list[str]] = {"LeanAdam": [], "Adam": []}

    def run(o: str, d: str, n: int) -> Timing:
        plan = Plan(steps=n, batch_size=spec.batch, optimizer="adam", lr=spec.lr, eval_every=n, device="cpu")
        clock = Clock(n)
        with optimizer_made(made[o], public=o != "LeanAdam"):
            start = time.perf_counter()
            way.task.train(models[(o, d)], masks[d], plan, clock)
            seconds = time.perf_counter() - start
        return Timing(n, seconds, clock.eval_end - clock.step_end)

    # the same training either way: 50 steps from the same weights, at 10% density
    same = {}
    for o in ("LeanAdam", "Adam"):
        m = way.task.build_model(0)
        plan = Plan(steps=50, batch_size=spec.batch, optimizer="adam", lr=spec.lr, eval_every=50, device="cpu")
        with optimizer_made(made[o], public=o != "LeanAdam"):
            way.task.train(m, masks["10%"], plan, Clock(50))
        same[o] = m.state_dict()
    identical = all(torch.equal(a, b) for a, b in zip(same["LeanAdam"].values(), same["Adam"].values()))
    units = [(o, d) for d in masks for o in ("LeanAdam", "Adam")]
    for u in units:
        run(*u, spec.warmup)
    times: dict[tuple[str, str], list[Timing]] = {u: [] for u in units}
    for rnd in range(rounds):
        k = rnd % len(units)
        for u in units[k:] + units[:k]:
            gate.wait()
            t, others = others_meanwhile(lambda u=u: run(*u, steps))
            times[u].append(Timing(t.steps, t.seconds, t.eval_seconds, others))
        log(f"  LeanAdam/Adam round {rnd + 1}/{rounds}: " + ", ".join(
            f"{o} {d} {times[(o, d)][-1].rate:.0f}" for o, d in units) + " it/s")
    out: dict[str, Any] = {"steps": steps, "rounds": rounds, "same_weights_after_50_steps": identical,
                           "optimizers_made": {o: sorted(set(v)) for o, v in made.items()},
                           "timings": {f"{o}/{d}": [{**asdict(t), "rate": t.rate} for t in ts]
                                       for (o, d), ts in times.items()}, "ratio": {}}
    for d in masks:
        per_round = [a.rate / b.rate for a, b in zip(times[("LeanAdam", d)], times[("Adam", d)])]
        low, high = bootstrap_median(per_round) if len(per_round) >= 4 else (min(per_round), max(per_round))
        out["ratio"][d] = {**asdict(Spread.of(per_round)), "ci95_low": low, "ci95_high": high}
    return out


# Reporting


def cpu_flags() -> dict[str, Any]:
    """lscpu's model name (else /proc/cpuinfo's) and whether each bf16-relevant flag is present."""
    flags: set[str] = set()
    name = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model_name": name, "flags": {f: f in flags for f in FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def fmt(s: Mapping[str, float] | Spread | None, unit: str = "") -> str:
    if s is None:
        return "n/a"
    if isinstance(s, Spread):
        s = asdict(s)
    digits = 2 if unit == "x" or s["median"] < 100 else 1
    return f"{s['median']:.{digits}f}{unit} [{s['low']:.{digits}f}-{s['high']:.{digits}f}]"


def table(meta: Mapping[str, Any], results: Mapping[str, Any], adam: Mapping[str, Any] | None) -> str:
    cpu = meta["cpu"]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    lines = [
        f"CPU training it/s, 1 torch thread, median [min-max] of {meta['rounds']} interleaved rounds",
        f"cpu: {cpu['model_name']}; {flags}; torch {meta['torch']} (CPU capability "
        f"{cpu['torch_cpu_capability']}); {meta['cores']} cores",
        f"{meta['date']}; commit {meta['commit']}; load average at start {meta['loadavg_start']}, at end "
        f"{meta['loadavg_end']}",
        "",
        f"{'it/s':<44}{'fp32':>24}{'bf16':>24}{'bf16+channels_last':>24}{'bf16/fp32':>24}{'bf16+CL/fp32':>24}",
    ]
    for key, r in results.items():
        s = r["summary"]
        lines.append(f"{SPECS[key].label}, {r['steps']} steps per timing")
        for w in WAYS:
            lines.append(f"  {w:<42}" + "".join(f"{fmt(s['rates'].get(f'{w}/{v}')):>24}" for v in VARIANTS)
                         + "".join(f"{fmt(s['speedups'].get(f'{w}/{v}'), 'x'):>24}" for v in VARIANTS[1:]))
        row = f"  {'ticketx speedup / plain speedup (>= 0.90)':<42}{'':>72}"
        for v in VARIANTS[1:]:
            c = s["ratios"].get(v)
            row += f"{'n/a':>24}" if c is None else f"{fmt(c, 'x') + (' PASS' if c['passed'] else ' FAIL'):>24}"
        lines.append(row)
        lines.append(f"  {'  same, with fit evaluation subtracted':<42}{'':>72}"
                     + "".join(f"{fmt(s['ratios_eval_subtracted'].get(v), 'x'):>24}" for v in VARIANTS[1:]))
        lines.append(f"  {'ticketx it/s / plain it/s':<42}"
                     + "".join(f"{fmt(s['ticketx_over_plain'].get(v), 'x'):>24}" for v in VARIANTS))
    evals = [r["summary"]["eval_share_max"] for r in results.values()]
    if evals:
        lines.append("")
        lines.append(f"fit's one evaluation (tiny splits), not subtracted: at most {max(evals):.2%} of a ticketx "
                     f"timing (" + ", ".join(f"{k} {r['summary']['eval_share_max']:.2%}" for k, r in results.items())
                     + ")")
    others = [t["other_cores"] for r in results.values() for ts in r["timings"].values() for t in ts]
    if adam:
        others += [t["other_cores"] for ts in adam["timings"].values() for t in ts]
    if others:
        disturbed = sum(o > BUSY_CORES for o in others)
        lines.append(f"CPU used by other processes meanwhile: median {statistics.median(others):.2f} cores, max "
                     f"{max(others):.2f}; {disturbed} of {len(others)} timings beside > {BUSY_CORES:g} cores "
                     f"(waited {meta['quiet_wait_seconds']} s in all for idle)")
    if adam:
        lines += ["", f"LeanAdam against torch.optim.Adam(fused=True), LeNet-300-100 fp32 batch 60 through fit, "
                      f"{adam['steps']} steps, {adam['rounds']} rounds (same weights after 50 steps: "
                      f"{'yes' if adam['same_weights_after_50_steps'] else 'NO'}; made: "
                      + ", ".join(f"{k} -> {'/'.join(v)}" for k, v in adam["optimizers_made"].items()) + ")"]
        for d, c in adam["ratio"].items():
            rl = Spread.of([t["rate"] for t in adam["timings"][f"LeanAdam/{d}"]])
            ra = Spread.of([t["rate"] for t in adam["timings"][f"Adam/{d}"]])
            lines.append(f"  {d:<6} LeanAdam {fmt(rl)} it/s, Adam(fused) {fmt(ra)} it/s; LeanAdam / Adam "
                         f"{fmt(c, 'x')}, 95% interval of the median {c['ci95_low']:.3f}-{c['ci95_high']:.3f}")
    return "\n".join(lines)


def parse_steps(items: Sequence[str], models: Sequence[str]) -> dict[str, int]:
    """--steps: N (every model) or MODEL=N, repeatable; the specs' defaults otherwise."""
    steps = {m: SPECS[m].steps for m in models}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--steps: expected N or MODEL=N with N >= 1, got {item!r}")
        if not sep:
            steps = {m: int(value) for m in steps}
        elif name in SPECS:
            if name in steps:
                steps[name] = int(value)
        else:
            raise SystemExit(f"--steps: unknown model {name!r}; models: {', '.join(SPECS)}")
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS), metavar="MODEL",
                    help=f"default: all of {', '.join(SPECS)}")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds per model (default 9)")
    ap.add_argument("--steps", nargs="+", default=[], metavar="N|MODEL=N",
                    help="steps per timing, for every model (N) or one (MODEL=N); defaults: "
                         + ", ".join(f"{k}={s.steps}" for k, s in SPECS.items()))
    ap.add_argument("--adam-rounds", type=int, default=10,
                    help="rounds of the LeanAdam against Adam section (default 10; 0 skips it)")
    ap.add_argument("--adam-steps", type=int, default=1000, help="steps per timing there (default 1000)")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="seconds in all to spend waiting for an idle machine before timings (default 30)")
    ap.add_argument("--data-root", type=Path, default=default_data_root(),
                    help="default $TICKETX_DATA, else ../shared/data")
    ap.add_argument("--out", type=Path, help="write every timing and summary as JSON")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.adam_rounds < 0 or args.adam_steps < 1:
        ap.error("--rounds and --adam-steps must be at least 1, --adam-rounds 0 or more")
    steps = parse_steps(args.steps, args.models)

    configure_torch(1)
    began = time.perf_counter()
    meta: dict[str, Any] = {**machine(), "cpu": cpu_flags(), "loadavg_start": loadavg(), "rounds": args.rounds,
                            "torch_threads": torch.get_num_threads(), "data_root": str(args.data_root),
                            "channels_last_option": channels_last_option_exists()}
    cpu = meta["cpu"]
    print(f"{meta['date']}  load average {meta['loadavg_start']}", flush=True)
    print(f"cpu: {cpu['model_name']}; " + ", ".join(f"{f} {'present' if v else 'absent'}"
                                                   for f, v in cpu["flags"].items())
          + f"; torch {meta['torch']}, CPU capability {cpu['torch_cpu_capability']}", flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    gate = QuietGate(args.quiet_wait)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for key in args.models:
        log(f"{SPECS[key].label}:")
        try:
            r = measure(SPECS[key], rounds=args.rounds, steps=steps[key], data_root=args.data_root, gate=gate, log=log)
        except Exception as e:  # a plugin mid-edit elsewhere: report it, measure the rest
            failed[key] = f"{type(e).__name__}: {e}"
            log(f"  {key} FAILED: {failed[key]}")
            continue
        r["summary"] = summarise(r)
        results[key] = r
    adam = None
    if args.adam_rounds > 0:
        log("LeanAdam against torch.optim.Adam(fused=True):")
        adam = measure_adam(rounds=args.adam_rounds, steps=args.adam_steps, data_root=args.data_root, gate=gate,
                            log=log)
    meta["loadavg_end"] = loadavg()
    meta["quiet_wait_seconds"] = round(gate.waited, 1)
    meta["wall_seconds"] = round(time.perf_counter() - began, 1)
    print()
    print(table(meta, results, adam))
    for key, err in failed.items():
        print(f"{key}: not measured: {err}")
    print(f"\nwall time {meta['wall_seconds']} s")
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "models": results, "failed": failed, "lean_adam": adam},
                                       indent=2) + "\n")
        print(f"results written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
