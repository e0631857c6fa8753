"""Wall time and peak memory of a real `ticketx find` job, one arm at a time against the worker pool.

Runs Frankle & Carbin's LeNet-300-100 recipe (recipes/frankle2019/lenet300_100_mnist.toml) on real MNIST
at a reduced budget (default: 5 levels x 3 arms x 2 replicates at 2,000 iterations per level) as a
subprocess of the installed CLI, with `--workers 1` and then `--workers N`, each in a fresh folder and a
fresh MLflow store, sampling the summed resident memory of the whole process tree every 0.2 s.

Projection of the full paper recipe (20 levels x 3 arms x 5 replicates at 50K iterations):
the measured seconds per training iteration of each arm (the job's own `seconds` per arm divided by its
iterations, evaluation included, median over arms) times the paper's iteration count, divided by the
measured speedup of the pool over one-at-a-time (whole-job wall times) — a projection, not a run; the
setup (data loading, process start, MLflow) is left out since it does not grow with the budget.
Run by hand: `.venv/bin/python benchmarks/find_speed.py [--levels 5 --replicates 2 --steps 2000]`.
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


def run_job(workers: int, args: argparse.Namespace, data: str) -> dict[str, float]:
    """One find job in a fresh folder; wall time, peak tree memory, and per-arm seconds per iteration."""
    work = Path(tempfile.mkdtemp(prefix=f"ticketx-bench-w{workers}-"))
    cmd = [str(ROOT / ".venv" / "bin" / "ticketx"), "find", str(RECIPE), "--workers", str(workers),
           "--set", f"prune.levels={args.levels}", "--set", f"replicates={args.replicates}",
           "--set", f"train.steps={args.steps}", "--out", str(work / "runs")]
    env = {**os.environ, "TICKETX_DATA": data, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
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
    per_it = [r["seconds"] / r["steps"] for r in records]  # the recipe rewinds to 0: every arm trains all steps
    return {"workers": workers, "wall_s": wall, "peak_rss_mib": peak / 1024, "arms": len(records),
            "s_per_iteration_median": statistics.median(per_it),
            "train_s_total": sum(r["seconds"] for r in records)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    data = os.environ.get("TICKETX_DATA") or str((ROOT.parent / "shared" / "data").resolve())
    results = [run_job(1, args, data), run_job(args.workers, args, data)]
    one, pool = results
    speedup = one["wall_s"] / pool["wall_s"]
    paper_iterations = (1 + PAPER["levels"] * PAPER["arms"]) * PAPER["replicates"] * PAPER["steps"]
    projected_one = paper_iterations * one["s_per_iteration_median"]
    projected_pool = projected_one / speedup
    print(f"LeNet-300-100 on MNIST, {args.levels} levels x 3 arms x {args.replicates} replicates, "
          f"{args.steps} iterations per arm ({one['arms']} arms)")
    print(f"{'workers':>8} {'wall s':>8} {'peak MiB':>9} {'ms/iteration (median arm)':>26}")
    for r in results:
        print(f"{r['workers']:>8} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>9.0f} "
              f"{1000 * r['s_per_iteration_median']:>26.3f}")
    print(f"pool speedup over one at a time: {speedup:.2f}x")
    print(f"paper recipe ({paper_iterations:,} iterations): projected {projected_one / 3600:.2f} h one at a time, "
          f"{projected_pool / 3600:.2f} h with {args.workers} workers (target <= 3 h)")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "speedup": speedup,
                                        "projected_hours_one": projected_one / 3600,
                                        "projected_hours_pool": projected_pool / 3600, "args": vars(args) | {"out": str(args.out)}},
                                       indent=2))


if __name__ == "__main__":
    main()
