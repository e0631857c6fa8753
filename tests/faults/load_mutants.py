"""Child process of test_tickets.py: mutate tickets, load each one, classify, measure what the load allocated.

    python load_mutants.py OUT COUNT SEED    -> OUT/summary.json

Every mutant goes through `ticketx.ticket.load` followed by `check_ticket` against the toy model (what
`show`, `export` and a resumed find do) and through `ticketx show` (click's CliRunner, in this process).
Outcomes: `rejected` (TicketError/TaskError, one line naming the ticket folder), `unclear` (rejected, but
the message is several lines or does not name the folder), `traceback` (any other exception), `silent`
(loaded, and what loaded differs from the original), `equivalent` (loaded, and equal to the original in
every tensor and metadata entry: the bytes changed, the ticket did not; such a draw is replaced, not
counted). Allocation: tracemalloc's peak (Python objects: file bytes, parsed JSON, tensor data copies)
and ru_maxrss growth (everything, torch's allocator included) during each load, under an address-space
limit (RLIMIT_AS) 1 GiB above what the process held after a warm-up, so an absurd allocation fails
instead of swapping.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import torch
from click.testing import CliRunner

import mutations as MU
from ticketx import ticket as T
from ticketx.cli import main as cli
from ticketx.task import TaskError, check_ticket
from toy import ToyTask

BUDGET_FACTOR, BUDGET_SLACK = 4, 1 << 20  # a load may hold 4x the ticket's bytes, plus 1 MiB
RSS_SLACK_KB = 64 * 1024


def maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def same(a: T.Ticket, b: T.Ticket) -> bool:
    def eq(x: dict, y: dict) -> bool:
        return sorted(x) == sorted(y) and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                                          and torch.equal(x[k], y[k]) for k in x)
    strip = lambda m: {k: v for k, v in m.items() if k != "sha256"}  # noqa: E731
    return eq(a.masks, b.masks) and eq(a.weights, b.weights) and strip(a.meta) == strip(b.meta)


def through_library(path: Path, base: T.Ticket, task: ToyTask, model: torch.nn.Module) -> tuple[str, str]:
    try:
        loaded = T.load(path)
        check_ticket(task, loaded, model)
    except (T.TicketError, TaskError) as e:
        msg = str(e)
        return ("rejected" if "\n" not in msg and str(path) in msg else "unclear"), msg
    except BaseException as e:  # noqa: BLE001 (the CLI would print a traceback for any of these)
        return "traceback", f"{type(e).__name__}: {e}"[:300]
    return ("equivalent" if same(loaded, base) else "silent"), ""


def through_cli(runner: CliRunner, path: Path) -> tuple[str, str]:
    r = runner.invoke(cli, ["show", str(path)])
    if r.exit_code == 0 and r.exception is None:
        return "loaded", ""
    err = [line for line in r.stderr.splitlines() if line.strip()]
    if not isinstance(r.exception, SystemExit):
        return "traceback", f"{type(r.exception).__name__}: {r.exception}"[:300]
    clean = (r.exit_code == 1 and not r.stdout.strip() and len(err) == 1 and err[0].startswith("Error: ")
             and str(path) in err[0] and "Traceback" not in r.output)
    return ("rejected" if clean else "unclear"), r.stderr.strip()[:300]


def main(out: Path, count: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    base_dir = MU.make_base(out / "base")
    base = T.load(base_dir)
    task = ToyTask("gauss", {})
    model = task.build_model(0)
    runner = CliRunner()
    # the control: the unmutated ticket loads, through the library and the CLI
    control = (through_library(base_dir, base, task, model)[0], through_cli(runner, base_dir)[0])
    if control != ("equivalent", "loaded"):
        raise SystemExit(f"the unmutated ticket does not load: {control}")
    (out / "empty").mkdir(exist_ok=True)  # and the CLI's error path is warm: its first use imports modules
    if through_cli(runner, out / "empty")[0] != "rejected":
        raise SystemExit("`ticketx show` of an empty folder is not a one-line error")
    tracemalloc.start()
    through_library(base_dir, base, task, model)
    _, base_peak = tracemalloc.get_traced_memory()
    limit = vm_size() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rss_start = maxrss_kb()

    families = list(MU.FAMILIES)
    lib, cli_out = Counter(), Counter()
    per_family: dict[str, Counter] = defaultdict(Counter)
    problems: list[dict] = []
    examples: dict[str, dict] = {}
    equivalents: list[str] = []
    worst = {"ratio": 0.0}
    work = out / "mutant"
    counted = draws = 0
    while counted < count and draws < 3 * count:
        family = families[draws % len(families)]
        rng = random.Random(f"{seed}-{draws}")
        draws += 1
        what = MU.mutate(base_dir, work, family, rng)
        size = sum((work / f).stat().st_size for f in (T.MASKS, T.WEIGHTS, T.META) if (work / f).is_file())
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        rss_before = maxrss_kb()
        outcome, msg = through_library(work, base, task, model)
        peak = tracemalloc.get_traced_memory()[1] - before
        grew = maxrss_kb() - rss_before
        if outcome == "equivalent":
            per_family[family]["equivalent (replaced)"] += 1
            equivalents.append(f"{family}: {what}")
            continue
        counted += 1
        cli_outcome, cli_msg = through_cli(runner, work)
        over = peak > BUDGET_FACTOR * size + BUDGET_SLACK or grew > RSS_SLACK_KB
        worst = max(worst, {"ratio": peak / size, "peak": peak, "size": size, "what": what}, key=lambda w: w["ratio"])
        lib[outcome] += 1
        cli_out[cli_outcome] += 1
        per_family[family][outcome] += 1
        if over:
            lib["over budget"] += 1
        ok = outcome == "rejected" and cli_outcome == "rejected" and not over
        if not ok:
            problems.append({"family": family, "what": what, "library": outcome, "message": msg[:300],
                             "cli": cli_outcome, "cli_message": cli_msg, "peak": peak, "size": size,
                             "maxrss_growth_kb": grew})
        if ok and family not in examples:  # kept for the docs and for the subprocess check
            keep = out / "examples" / f"{len(examples):02d}"
            keep.parent.mkdir(exist_ok=True)
            work.rename(keep)
            examples[family] = {"what": what, "message": msg.replace(str(work), str(keep)), "path": str(keep)}
    return {"count": counted, "draws": draws, "library": dict(lib), "cli": dict(cli_out),
            "families": {f: dict(c) for f, c in per_family.items()}, "problems": problems,
            "examples": examples, "equivalents": equivalents, "base_bytes": sum((base_dir / f).stat().st_size for f in (T.MASKS, T.WEIGHTS, T.META)),
            "base_peak": base_peak, "worst_ratio": worst, "rlimit_as": limit,
            "maxrss_growth_kb": maxrss_kb() - rss_start}


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    (Path(sys.argv[1]) / "summary.json").write_text(json.dumps(result, indent=2))
