"""One training step of the vision plugin's convnets, NCHW against channels_last, fp32 against bf16 autocast.

Conv-2 at batch 60, Conv-6 and ResNet-20 at batch 128 (the batch sizes of Frankle & Carbin's recipes), on
CIFAR-shaped inputs (3 x 32 x 32, standard-normal floats, random labels: the speed of a step does not
depend on the values), one torch thread, denormals flushed as every ticketx process runs. A step is what
`ticketx.training.fit` does: forward and cross-entropy (under `torch.autocast("cpu", dtype=torch.bfloat16)`
for bf16), backward, torch's fused Adam. Three layouts:
- `nchw`: PyTorch's default (contiguous) format throughout;
- `channels_last`: the model converted with `model.to(memory_format=torch.channels_last)` and each batch
  with `.contiguous(memory_format=torch.channels_last)` (inside the timed step);
- `inputs_only`: the batches converted, the model's weights left contiguous (the convolutions still run
  channels-last, as their input is; this is what the vision task does, see plugins/vision/README.md).

The six variants of a model are timed in interleaved rounds (round r times each of them once, in an order
that rotates with r), so slow drifts of a shared machine fall on all of them alike; each timing is the mean
of `--steps` steps after `--warmup` untimed ones; the figure is the median over rounds, and the speed-up
of a layout is the median of its per-round ratios to NCHW at the same precision. The script also says
whether the first step's loss, and the weights after the warm-up steps, are bit for bit those of NCHW.

    .venv/bin/python benchmarks/channels_last.py            # all three models, ~5-10 min on one thread
    .venv/bin/python benchmarks/channels_last.py --models conv2 --rounds 3 --out /tmp/cl.json

Results are in plugins/vision/README.md ("channels_last").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from ticketx_vision.models import InputShape, build_model

BATCH = {"conv2": 60, "conv6": 128, "resnet20": 128}
CIFAR = InputShape(channels=3, height=32, width=32, classes=10)
LAYOUTS = ("nchw", "channels_last", "inputs_only")
VARIANTS = tuple((p, layout) for p in ("fp32", "bf16") for layout in LAYOUTS)


class Stepper:
    """One model, optimizer and batch for one variant; `step()` is one training step."""

    def __init__(self, name: str, precision: str, layout: str, seed: int = 0) -> None:
        self.model = build_model(name, CIFAR, dropout=0.0, seed=seed)
        self.format = torch.contiguous_format if layout == "nchw" else torch.channels_last
        if layout == "channels_last":
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(BATCH[name], 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (BATCH[name],), generator=g)
        self.precision = precision

    def step(self) -> float:
        x = self.x.contiguous(memory_format=self.format)
        cast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                else contextlib.nullcontext())
        with cast:
            loss = nn.functional.cross_entropy(self.model(x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def timed(self, steps: int) -> float:
        """Seconds per step, the mean over `steps` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - start) / steps


def cpu_info() -> dict[str, object]:
    """The CPU's model name and the bf16 instruction flags that decide how fast autocast is."""
    name = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model_name": name, **{f: f in flags for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")},
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def measure(name: str, *, rounds: int, steps: int, warmup: int) -> dict[str, object]:
    steppers = {v: Stepper(name, *v) for v in VARIANTS}
    first = {v: s.step() for v, s in steppers.items()}  # the same weights and batch: compare the losses
    for s in steppers.values():
        for _ in range(warmup - 1):
            s.step()
    # after `warmup` steps from the same weights: are each layout's weights still bit for bit NCHW's?
    same_weights = {f"{p}_{layout}": all(
        torch.equal(a, b) for a, b in zip(steppers[(p, "nchw")].model.state_dict().values(),
                                          steppers[(p, layout)].model.state_dict().values()))
        for p in ("fp32", "bf16") for layout in LAYOUTS[1:]}
    times: dict[tuple[str, str], list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            times[v].append(steppers[v].timed(steps))
        print(f"  {name} round {r + 1}/{rounds}: " + ", ".join(
            f"{p} {layout} {1e3 * times[(p, layout)][-1]:.0f} ms" for p, layout in VARIANTS), flush=True)
    out: dict[str, object] = {
        "batch": BATCH[name], "ms_per_step": {f"{p}_{layout}": 1e3 * statistics.median(times[(p, layout)])
                                              for p, layout in VARIANTS},
        "speedup_over_nchw": {}, "same_first_loss_as_nchw": {}, f"same_weights_after_{warmup}_steps": same_weights,
    }
    for p in ("fp32", "bf16"):
        for layout in LAYOUTS[1:]:
            ratios = [a / b for a, b in zip(times[(p, "nchw")], times[(p, layout)])]
            out["speedup_over_nchw"][f"{p}_{layout}"] = statistics.median(ratios)
            out["same_first_loss_as_nchw"][f"{p}_{layout}"] = first[(p, "nchw")] == first[(p, layout)]
    out["bf16_speedup_nchw"] = statistics.median(
        a / b for a, b in zip(times[("fp32", "nchw")], times[("bf16", "nchw")]))
    out["times_s"] = {f"{p}_{layout}": t for (p, layout), t in times.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timing")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (at least 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write every timing as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    info = cpu_info()
    print(json.dumps(info), flush=True)
    results = {"cpu": info, "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "models": {}}
    for name in args.models:
        r = measure(name, rounds=args.rounds, steps=args.steps, warmup=max(1, args.warmup))
        results["models"][name] = r
        ms, speed = r["ms_per_step"], r["speedup_over_nchw"]
        for p in ("fp32", "bf16"):
            print(f"{name} (batch {r['batch']}) {p}: nchw {ms[f'{p}_nchw']:.0f} ms; " + "; ".join(
                f"{layout} {ms[f'{p}_{layout}']:.0f} ms ({speed[f'{p}_{layout}']:.2f}x, first loss "
                f"{'same' if r['same_first_loss_as_nchw'][f'{p}_{layout}'] else 'differs'}, weights "
                f"{'same' if r[f'same_weights_after_{max(1, args.warmup)}_steps'][f'{p}_{layout}'] else 'differ'})"
                for layout in LAYOUTS[1:]), flush=True)
        print(f"{name}: bf16 over fp32, NCHW: {r['bf16_speedup_nchw']:.2f}x", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
