"""Wall time and peak memory of a real `ticketx find` job, one arm at a time against the worker pool.

Runs Frankle & Carbin's LeNet-300-100 recipe (recipes/frankle2019/lenet300_100_mnist.toml) on real MNIST
at a reduced budget (default: 5 levels x 3 arms x 2 replicates) as a subprocess of the installed CLI, with
`--workers 1` and then `--workers N`, each in a fresh folder and a fresh MLflow store, sampling the summed
resident memory of the whole process tree every 0.2 s. Each of the two is run at two budgets per arm
(default 1,000 and 2,000 iterations), so that what an arm costs once (the final test evaluations, the
optimizer's first step, MLflow runs opened and closed) is told apart from what each iteration costs.

Projection of the full paper recipe (20 levels x 3 arms x 5 replicates at 50K iterations, 305 arms):
1. per arm, seconds = fixed + per_iteration x iterations, from the job's own `seconds` of the same arm
   (same replicate, level and arm) at the two budgets; median over arms of each term. The per-iteration
   term includes everything done every `eval_every` steps (validation pass, MLflow logging).
2. one at a time: 305 x fixed + 15.25M x per_iteration, both measured with `--workers 1`;
   pool: the same with the terms measured in the pool job (so the two workers' contention for memory
   bandwidth is counted), divided by the number of workers: the paper recipe's 5 independent replicates
   keep every worker busy, which the reduced job (2 replicates) cannot show; its occupancy (train
   seconds summed over arms / (workers x wall)) is printed for reference.
3. against the usual way: the paper's iterations at the usual way's rate, `--usual-rate` it/s (the
   `usual: DataLoader + prune hooks` rate at 100% from `throughput.py` on the same machine), with no
   evaluation at all counted for it.
Setup that does not grow with the budget (process start, data loading, the parent run) is left out.
The previous projection (median seconds per iteration of an arm at one budget, divided by the whole-job
speedup of the pool) is printed as well, for comparison with earlier runs.
Run by hand: `.venv/bin/python benchmarks/find_speed.py [--levels 5 --replicates 2 --steps 2000
--short-steps 1000 --usual-rate R --out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "frankle2019" / "lenet300_100_mnist.toml"
PAPER = {"levels": 20, "arms": 3, "replicates": 5, "steps": 50_000}


def _tree_rss_kib(pid: int) -> int:
    """Summed VmRSS (KiB) of `pid` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def run_job(workers: int, steps: int, args: argparse.Namespace, data: str) -> dict:
    """One find job in a fresh folder: wall time, peak tree memory, and each arm's training seconds."""
    work = Path(tempfile.mkdtemp(prefix=f"ticketx-bench-w{workers}-s{steps}-"))
    cmd = [str(ROOT / ".venv" / "bin" / "ticketx"), "find", str(RECIPE), "--workers", str(workers),
           "--set", f"prune.levels={args.levels}", "--set", f"replicates={args.replicates}",
           "--set", f"train.steps={steps}", "--out", str(work / "runs")]
    env = {**os.environ, "TICKETX_DATA": data, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    print(f"running: --workers {workers}, {steps} iterations per arm ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - began
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"ticketx find --workers {workers} failed:\n{err}")
    records = json.loads(next((work / "runs").glob("*/results.json")).read_text())
    # the recipe rewinds to 0: every arm trains all its steps
    arms = {f"r{r['replicate']}/L{r['level']}/{r['arm']}": r["seconds"] for r in records}
    return {"workers": workers, "steps": steps, "wall_s": wall, "peak_rss_mib": peak / 1024,
            "arms": arms, "s_per_iteration_median": statistics.median(v / steps for v in arms.values()),
            "occupancy": sum(arms.values()) / (workers * wall)}


def cost_model(short: dict, long: dict) -> tuple[float, float]:
    """(fixed seconds per arm, seconds per iteration): medians over arms of the line through each arm's
    seconds at the two budgets."""
    ds = long["steps"] - short["steps"]
    slopes = {k: (long["arms"][k] - short["arms"][k]) / ds for k in long["arms"]}
    fixed = [short["arms"][k] - slope * short["steps"] for k, slope in slopes.items()]
    return statistics.median(fixed), statistics.median(slopes.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--short-steps", type=int, default=1000,
                    help="the second, shorter budget per arm for the cost model")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--usual-rate", type=float,
                    help="the usual way's it/s at 100%% density from throughput.py on this machine")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if not 0 < args.short_steps < args.steps:
        sys.exit("--short-steps must be positive and below --steps")
    data = os.environ.get("TICKETX_DATA") or str((ROOT.parent / "shared" / "data").resolve())
    one = run_job(1, args.steps, args, data)
    pool = run_job(args.workers, args.steps, args, data)
    one_short = run_job(1, args.short_steps, args, data)
    pool_short = run_job(args.workers, args.short_steps, args, data)
    n_arms = (1 + PAPER["levels"] * PAPER["arms"]) * PAPER["replicates"]
    iterations = n_arms * PAPER["steps"]
    fixed1, per1 = cost_model(one_short, one)
    fixedp, perp = cost_model(pool_short, pool)
    projected_one = n_arms * fixed1 + iterations * per1
    projected_pool = (n_arms * fixedp + iterations * perp) / args.workers
    speedup = one["wall_s"] / pool["wall_s"]
    old_one = iterations * one["s_per_iteration_median"]
    print(f"LeNet-300-100 on MNIST, {args.levels} levels x 3 arms x {args.replicates} replicates "
          f"({len(one['arms'])} arms), at {args.short_steps} and {args.steps} iterations per arm")
    print(f"{'workers':>8} {'iterations':>10} {'wall s':>8} {'peak MiB':>9} {'occupancy':>10} "
          f"{'ms/iteration (median arm)':>26}")
    for r in (one, one_short, pool, pool_short):
        print(f"{r['workers']:>8} {r['steps']:>10} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>9.0f} "
              f"{r['occupancy']:>10.2f} {1000 * r['s_per_iteration_median']:>26.3f}")
    print(f"cost per arm, one at a time: {fixed1:.2f} s + {1000 * per1:.3f} ms/iteration")
    print(f"cost per arm, {args.workers} workers:    {fixedp:.2f} s + {1000 * perp:.3f} ms/iteration "
          f"(each worker)")
    print(f"paper recipe ({n_arms} arms, {iterations:,} iterations): projected {projected_one / 3600:.2f} h "
          f"one at a time, {projected_pool / 3600:.2f} h with {args.workers} workers (target <= 3 h: "
          f"{'PASS' if projected_pool <= 3 * 3600 else 'FAIL'})")
    usual = None
    if args.usual_rate:
        usual = iterations / args.usual_rate
        print(f"the usual way at {args.usual_rate:.1f} it/s, no evaluation: {usual / 3600:.1f} h; "
              f"the pool is {usual / projected_pool:.2f}x faster (target >= 8x: "
              f"{'PASS' if usual / projected_pool >= 8 else 'FAIL'})")
    print(f"previous method (median ms/iteration at {args.steps} x iterations, / whole-job pool speedup "
          f"{speedup:.2f}x): {old_one / 3600:.2f} h one at a time, {old_one / speedup / 3600:.2f} h pooled")
    if args.out:
        args.out.write_text(json.dumps({
            "runs": [one, pool, one_short, pool_short], "args": vars(args) | {"out": str(args.out)},
            "cost_one": {"fixed_s": fixed1, "s_per_iteration": per1},
            "cost_pool": {"fixed_s": fixedp, "s_per_iteration": perp},
            "projected_hours_one": projected_one / 3600, "projected_hours_pool": projected_pool / 3600,
            "usual_hours": usual / 3600 if usual else None, "whole_job_speedup": speedup,
        }, indent=2))


if __name__ == "__main__":
    main()
