"""GPU throughput of ticketx's own training path, and issue #17's GPU targets, in one command.

On a machine where torch sees a CUDA device (`--device`, default cuda:0), measures:

1. **Throughput table**: iterations/s and images/s of the vision task's `Task.train` (which calls
   `ticketx.training.fit`) with `Plan(device="cuda:0", precision=..., tf32=...)`, for LeNet-300-100 (MNIST,
   batch 60), Conv-2 (CIFAR-10, batch 60), VGG-19 (CIFAR-10 augmented, batch 64) and ResNet-20 (CIFAR-10
   augmented, batch 128), each with its recipe's optimizer settings (recipes/frankle2019), in three
   arithmetics: **fp32** (TF32 off), **tf32** (fp32 weights, TF32 matmuls and convolutions) and **bf16**
   (autocast). `task.channels_last` stays at its default, "auto" (channels-last batches for the
   convnets under tf32 and bf16 on CUDA). Each timing is one `Task.train` call of `steps` steps with
   `eval_every` = steps, between two `torch.cuda.synchronize()`: fit's one evaluation (512 validation
   and 512 test images) and the optimizer's creation are in it. Every (model, arithmetic) pair is warmed
   up (`--warmup` steps), then timed once per round, `--rounds` rounds, the order rotating by round; the
   figure is the median over rounds.
2. **ResNet-20 IMP level target**: one level of recipes/frankle2019/resnet20_cifar10.toml (30K iterations,
   batch 128, augmentation) in at most 3 minutes on one H100. Projected from the table's ResNet-20 rate
   (500 steps by default): 30,000 / (it/s), plus the level's evaluations timed on the GPU (the recipe's
   5,000 validation images every 1,000 steps: 30 passes; the 10,000 test images twice at the end; the
   45,000 training images once, `score_train`): both parts and their sum are printed, per arithmetic.
3. **VGG-19 target**: at least 10x this project's CPU machine. Give the CPU figure with `--cpu-vgg-its`
   (VGG-19 batch 64 it/s through ticketx on the CPU, e.g. from benchmarks/precision.py); without it the GPU
   figure alone is printed.
4. **find end to end, and the worker pool**: `ticketx find` (the CLI, in a subprocess) of
   recipes/frankle2019/conv2_cifar10.toml shortened with --set (2 pruning levels, 2 replicates,
   `--find-steps` iterations per arm), on `--device`, first with `--workers 1`, then `--workers 2` (two
   arms side by side on one GPU); wall time of each and their ratio. Each job runs in a fresh folder with
   a fresh SQLite MLflow store.

CIFAR-10 is read from `$TICKETX_DATA` (the JPEG tarball `cifar10-jpeg/cifar10-jpeg-q75.tar.gz`, or
torchvision's batches); the tarball is decoded once and cached under `ticketx_vision.data.cache_root()`
($TICKETX_CACHE, else ~/.cache/ticketx), printed at the start: a fresh machine decodes it once (seconds),
the find jobs' workers read the cache. Meant to take under ~8 minutes on an H100 with the defaults, data
loading included; not yet run on a GPU.

Where no CUDA device is visible it prints what torch sees and exits with status 2, measuring nothing.
`--check-on-cpu` runs every section on the CPU with a few steps, to test the script on a machine without
a GPU: its figures mean nothing and it writes JSON only with --out.

    TICKETX_DATA=/path/to/data .venv/bin/python benchmarks/gpu.py --cpu-vgg-its 1.7
    .venv/bin/python benchmarks/gpu.py --skip-find --rounds 3 --out /tmp/gpu.json

Results: JSON to --out (default $OUT/gpu.json where $OUT is set, else benchmarks/gpu-<date>.json);
benchmarks/README.md, "gpu.py".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

ARITHMETICS = {"fp32": ("fp32", False), "tf32": ("fp32", True), "bf16": ("bf16", False)}  # -> precision, tf32
EVAL_IMAGES = 512  # validation and test images fit scores once, at the end of each timed call
LEVEL_STEPS = 30_000  # recipes/frankle2019/resnet20_cifar10.toml
LEVEL_SECONDS_TARGET = 180.0
VGG_TARGET = 10.0  # GPU VGG-19 it/s over the CPU machine's
# one ResNet-20 level's evaluations (recipe: val_size 5000, eval_every 1000, score_train at the end)
LEVEL_EVAL_IMAGES = {"validation (30 passes x 5,000)": 30 * 5000, "test (2 passes x 10,000)": 2 * 10_000,
                     "training split scored once (45,000)": 45_000}
FIND_RECIPE = REPO / "recipes" / "frankle2019" / "conv2_cifar10.toml"


@dataclass(frozen=True, kw_only=True)
class Model:
    key: str
    label: str
    task: str  # vision task
    model: str
    batch: int
    steps: int  # per timing
    train: Mapping[str, Any]  # the recipe's optimizer settings, as Plan fields
    augment: bool


MODELS = {m.key: m for m in (
    Model(key="lenet300_100", label="LeNet-300-100, MNIST, batch 60", task="mnist", model="lenet300_100",
          batch=60, steps=1000, train={"optimizer": "adam", "lr": 1.2e-3}, augment=False),
    Model(key="conv2", label="Conv-2, CIFAR-10, batch 60", task="cifar10", model="conv2", batch=60, steps=500,
          train={"optimizer": "adam", "lr": 2e-4}, augment=False),
    Model(key="vgg19", label="VGG-19, CIFAR-10 augmented, batch 64", task="cifar10", model="vgg19", batch=64,
          steps=200, train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                            "warmup_steps": 10_000, "milestones": (56_000, 84_000)}, augment=True),
    Model(key="resnet20", label="ResNet-20, CIFAR-10 augmented, batch 128", task="cifar10", model="resnet20",
          batch=128, steps=500, train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                                       "warmup_steps": 20_000, "milestones": (20_000, 25_000)}, augment=True),
)}


class Silent:
    def on_step(self, step: int, model: Any) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        pass


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def no_cuda_message(device: str) -> str | None:
    """Why `device` cannot be measured here (None where it can)."""
    from ticketx import devices
    if devices.gpu_count() == 0:
        return f"no CUDA device is visible ({devices.visible()})"
    try:
        devices.resolve(device)
    except devices.DeviceError as e:
        return str(e).replace("train.device is", "--device is")
    return None


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                 str(torch.device(device).index or 0)], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        info["name"] = "CPU (--check-on-cpu: figures mean nothing)"
    return info


# 1. Throughput table


def make_task(m: Model, data_root: Path, **options: Any) -> Any:
    from ticketx import plugins
    opts = {"model": m.model, "score_train": False, "augment": m.augment, "download": False, **options}
    task = plugins.make_task("vision", m.task, opts, available=plugins.discover(), data_root=data_root)
    task.prepare()
    return task


def plan_for(m: Model, arithmetic: str, steps: int, device: str) -> Any:
    from ticketx.task import Plan
    precision, tf32 = ARITHMETICS[arithmetic]
    return Plan(steps=steps, batch_size=m.batch, eval_every=steps, device=device, precision=precision, tf32=tf32,
                **m.train)


def timed_train(task: Any, model: Any, plan: Any) -> float:
    """Seconds for one `Task.train` call, the GPU's queue drained before and after."""
    sync(plan.device)
    start = time.perf_counter()
    task.train(model, {}, plan, Silent())
    sync(plan.device)
    return time.perf_counter() - start


def measure_table(models: Sequence[Model], *, rounds: int, warmup: int, scale: float, device: str, data_root: Path,
                  log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in models:
        began = time.perf_counter()
        task = make_task(m, data_root, val_size=EVAL_IMAGES, test_subset=EVAL_IMAGES)
        steps = max(2, int(m.steps * scale))
        nets = {a: task.build_model(0).to(device) for a in ARITHMETICS}
        for a in ARITHMETICS:
            timed_train(task, nets[a], plan_for(m, a, warmup, device))
        log(f"  {m.key}: data, models and warm-up in {time.perf_counter() - began:.1f} s")
        seconds: dict[str, list[float]] = {a: [] for a in ARITHMETICS}
        order = list(ARITHMETICS)
        for r in range(rounds):
            k = r % len(order)
            for a in order[k:] + order[:k]:
                seconds[a].append(timed_train(task, nets[a], plan_for(m, a, steps, device)))
            log(f"  {m.key} round {r + 1}/{rounds}: " + ", ".join(f"{a} {steps / seconds[a][-1]:.1f} it/s"
                                                                    for a in ARITHMETICS))
        its = {a: statistics.median(steps / s for s in seconds[a]) for a in ARITHMETICS}
        out[m.key] = {"label": m.label, "batch": m.batch, "steps": steps, "rounds": rounds, "seconds": seconds,
                      "its": its, "images_per_s": {a: v * m.batch for a, v in its.items()},
                      "its_range": {a: [min(steps / s for s in seconds[a]), max(steps / s for s in seconds[a])]
                                    for a in ARITHMETICS}}
        del nets, task
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


# 2. ResNet-20 level projection


def level_projection(table: Mapping[str, Any], *, device: str, data_root: Path, check: bool) -> dict[str, Any]:
    """30K steps at the measured rate plus the level's evaluations, timed on the recipe's splits."""
    from ticketx import devices
    m = MODELS["resnet20"]
    # the recipe's splits: 5,000 validation and the 10,000 test images (a few for --check-on-cpu)
    task = make_task(m, data_root, **({"val_size": 64, "test_subset": 64} if check else {}))
    s = task.splits()
    evaluated = s.val_y.shape[0] + s.test_y.shape[0]
    eval_rates: dict[str, float] = {}
    for a, (precision, tf32) in ARITHMETICS.items():
        model = task.build_model(0).to(device)
        with devices.autocast(device, precision), devices.matmul_precision(device, tf32):
            task.evaluate(model)  # warm-up
            sync(device)
            start = time.perf_counter()
            task.evaluate(model)  # the validation and test splits, as fit scores them
            sync(device)
        eval_rates[a] = evaluated / (time.perf_counter() - start)
    images = sum(LEVEL_EVAL_IMAGES.values())
    rows = {}
    for a in ARITHMETICS:
        its = table["resnet20"]["its"][a]
        train_s, eval_s = LEVEL_STEPS / its, images / eval_rates[a]
        rows[a] = {"its": its, "train_seconds": train_s, "eval_images_per_s": eval_rates[a], "eval_seconds": eval_s,
                   "level_seconds": train_s + eval_s,
                   "passed": None if check else train_s + eval_s <= LEVEL_SECONDS_TARGET}
    return {"steps": LEVEL_STEPS, "eval_images": dict(LEVEL_EVAL_IMAGES), "target_seconds": LEVEL_SECONDS_TARGET,
            "by_arithmetic": rows}


# 4. find end to end and the worker pool


def run_find(workers: int, *, steps: int, device: str, data_root: Path, sets: Sequence[str],
             log: Callable[[str], None]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"ticketx-gpu-find-w{workers}-"))
    cmd = [str(REPO / ".venv" / "bin" / "ticketx"), "find", str(FIND_RECIPE), "--device", device,
           "--workers", str(workers), "--out", str(work / "runs"),
           "--set", "prune.levels=2", "--set", "replicates=2", "--set", f"train.steps={steps}",
           "--set", f"train.eval_every={max(1, steps // 4)}"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "TICKETX_DATA": str(data_root), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    log(f"  ticketx find --workers {workers} ({work}) ...")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = {"workers": workers, "command": " ".join(cmd), "wall_seconds": wall, "returncode": proc.returncode}
    if proc.returncode != 0:
        out["error"] = (proc.stderr or proc.stdout)[-3000:]
        out["folder"] = str(work)
        log(f"  --workers {workers} FAILED (status {proc.returncode}):\n{out['error']}")
    else:
        out["stdout_tail"] = proc.stdout[-3000:]
        log(f"  --workers {workers}: {wall:.1f} s")
        shutil.rmtree(work, ignore_errors=True)  # kept only where the job failed
    return out


# Output


def report(meta: Mapping[str, Any], table: Mapping[str, Any], level: Mapping[str, Any] | None,
           vgg: Mapping[str, Any] | None, finds: Sequence[Mapping[str, Any]]) -> str:
    d = meta["device_info"]
    lines = [f"ticketx on {d['device']} ({d.get('name')}), torch {d['torch']}, CUDA {d['cuda']}, "
             f"cuDNN {d.get('cudnn')}, driver {d.get('driver')}; {meta['date']}, commit {meta['commit']}"]
    if meta["check_on_cpu"]:
        lines.append("--check-on-cpu: a test of the script; these figures mean nothing")
    lines += ["", f"{'it/s (images/s), median of rounds':<48}" + "".join(f"{a:>24}" for a in ARITHMETICS)]
    for r in table.values():
        lines.append(f"{r['label'] + ', ' + str(r['steps']) + ' steps':<48}" + "".join(
            f"{r['its'][a]:>11.1f} ({r['images_per_s'][a]:>9.0f})" for a in ARITHMETICS))
    if level:
        lines += ["", f"one ResNet-20 IMP level: {level['steps']:,} steps at batch 128, augmented, plus its "
                      f"evaluations ({sum(level['eval_images'].values()):,} images); target <= "
                      f"{level['target_seconds']:.0f} s on one H100"]
        for a, r in level["by_arithmetic"].items():
            verdict = "" if r["passed"] is None else ("  PASS" if r["passed"] else "  FAIL")
            lines.append(f"  {a:<5} {r['its']:8.1f} it/s -> training {r['train_seconds']:7.1f} s + evaluation "
                         f"{r['eval_seconds']:6.1f} s ({r['eval_images_per_s']:,.0f} images/s) = "
                         f"{r['level_seconds']:7.1f} s{verdict}")
    if vgg:
        lines += [""]
        if vgg.get("cpu_its"):
            for a, ratio in vgg["ratio"].items():
                lines.append(f"VGG-19 {a}: {vgg['gpu_its'][a]:.1f} it/s on the GPU / {vgg['cpu_its']:.3g} it/s on the "
                             f"CPU = {ratio:.1f}x")
            best = max(vgg["ratio"], key=vgg["ratio"].get)
            lines.append(f"VGG-19 target >= {VGG_TARGET:g}x the CPU (best arithmetic, {best}): "
                         f"{vgg['ratio'][best]:.1f}x  {'PASS' if vgg['passed'] else 'FAIL'}")
        else:
            lines.append("VGG-19: " + ", ".join(f"{a} {v:.1f} it/s" for a, v in vgg["gpu_its"].items())
                         + " (no --cpu-vgg-its given: the 10x target not judged)")
    if finds:
        lines.append("")
        for f in finds:
            state = f"{f['wall_seconds']:.1f} s" if f["returncode"] == 0 else f"FAILED (status {f['returncode']})"
            lines.append(f"ticketx find (conv2_cifar10, 2 levels x 3 arms x 2 replicates) --workers {f['workers']}: "
                         f"{state}")
        ok = [f for f in finds if f["returncode"] == 0]
        if len(ok) == 2:
            lines.append(f"--workers 1 / --workers 2 wall time: {ok[0]['wall_seconds'] / ok[1]['wall_seconds']:.2f}x")
    return "\n".join(lines)


def default_out(date: str) -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu.json" if out else REPO / "benchmarks" / f"gpu-{date}.json"


def main(argv: Sequence[str] | None = None) -> int:
    from throughput import default_data_root, machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--device", default="cuda:0", help="the GPU (default cuda:0)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
                    help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=2, help="timings per model and arithmetic (default 2)")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps per model and arithmetic (default 30)")
    ap.add_argument("--cpu-vgg-its", type=float, default=None,
                    help="VGG-19 batch 64 it/s of the CPU machine, for the 10x target (default: not judged)")
    ap.add_argument("--find-steps", type=int, default=1000, help="iterations per arm of the find jobs (default 1000)")
    ap.add_argument("--find-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a further --set for the find jobs (e.g. train.precision=bf16; repeatable)")
    ap.add_argument("--skip-find", action="store_true", help="leave out the find jobs")
    ap.add_argument("--data-root", type=Path, default=default_data_root(),
                    help="default $TICKETX_DATA, else ../shared/data")
    ap.add_argument("--out", type=Path, help="JSON results (default $OUT/gpu.json, else benchmarks/gpu-<date>.json)")
    ap.add_argument("--check-on-cpu", action="store_true",
                    help="run every section on the CPU with a few steps, to test this script without a GPU")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1 or args.find_steps < 1:
        ap.error("--rounds, --warmup and --find-steps must be at least 1")

    device = "cpu" if args.check_on_cpu else args.device
    if not args.check_on_cpu:
        why = no_cuda_message(device) if device.startswith("cuda") else (
            f"--device {device!r} is not a CUDA device (use --check-on-cpu to test the script on the CPU)")
        if why:
            print(f"gpu.py: nothing measured: {why}", file=sys.stderr)
            return 2

    from ticketx.training import configure_torch
    from ticketx_vision.data import cache_root
    configure_torch(1)  # as ticketx processes run (the CPU side of the loop: one thread)
    began = time.perf_counter()
    now = datetime.datetime.now().astimezone()
    meta = {**machine(), "device_info": device_info(device), "check_on_cpu": args.check_on_cpu,
            "data_root": str(args.data_root), "decode_cache": str(cache_root())}
    print(f"{meta['date']}: {meta['device_info'].get('name')} ({device}); data {args.data_root}; CIFAR-10 decode "
          f"cache {meta['decode_cache']} (TICKETX_CACHE moves it)", flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    scale = 0.01 if args.check_on_cpu else 1.0
    warmup = 2 if args.check_on_cpu else args.warmup
    models = [MODELS[k] for k in args.models]
    log("throughput (Task.train -> fit):")
    table = measure_table(models, rounds=args.rounds, warmup=warmup, scale=scale, device=device,
                          data_root=args.data_root, log=log)
    level = None
    if "resnet20" in table:
        log("ResNet-20 level: evaluation speed on the recipe's splits ...")
        level = level_projection(table, device=device, data_root=args.data_root, check=args.check_on_cpu)
    vgg = None
    if "vgg19" in table:
        gpu_its = table["vgg19"]["its"]
        vgg = {"gpu_its": gpu_its, "cpu_its": args.cpu_vgg_its}
        if args.cpu_vgg_its:
            vgg["ratio"] = {a: v / args.cpu_vgg_its for a, v in gpu_its.items()}
            vgg["passed"] = None if args.check_on_cpu else max(vgg["ratio"].values()) >= VGG_TARGET
    finds = []
    if not args.skip_find:
        log("find end to end, one worker then two on the same device:")
        sets = list(args.find_set)
        if args.check_on_cpu:  # small splits, so that the CPU gets through it in a minute or two
            sets = ["task.val_size=100", "task.test_subset=100", "task.score_train=false", *sets]
        for w in (1, 2):
            finds.append(run_find(w, steps=max(4, int(args.find_steps * scale)), device=device,
                                  data_root=args.data_root, sets=sets, log=log))
    meta["wall_seconds"] = round(time.perf_counter() - began, 1)
    print()
    print(report(meta, table, level, vgg, finds))
    print(f"\nwall time {meta['wall_seconds']} s")
    out = args.out or (None if args.check_on_cpu else default_out(now.strftime("%Y-%m-%d")))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "throughput": table, "resnet20_level": level, "vgg19": vgg,
                                   "find": finds}, indent=2, default=str) + "\n")
        print(f"results written to {out}")
    failed = any(f["returncode"] != 0 for f in finds)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
