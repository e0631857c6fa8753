"""kill -9 a find job (20 moments) and a transfer job (5), re-run each: nothing lost, nothing doubled.

Each trial starts the job afresh (its own job folder and MLflow experiment), SIGKILLs its whole process
group (the job and its pool workers) at one moment, checks that no process of the group survived, runs
the same command again to the end, and compares it with an uninterrupted job: the same results.json
(run ids and timings aside); the same live MLflow runs by name, with the same param and metric names,
all FINISHED, the parent's results files and each ticket arm's ticket artifact there; and no run left
RUNNING, deleted ones included. The moments, from a seeded generator:

- at times spread over the measured uninterrupted job, from its start to its last line of output: one at
  a random point of each tenth (a kill that would come after the job already ended is redrawn, up to
  twice, between 55% and 95% of the time that run took to its last line, in a fresh job);
- during a ticket write: the N-th ticket file write of a process writes half its bytes, then the group is
  killed (faulty.py, `ticket-write:N`);
- during MLflow logging: a timer kills the group 0-20 ms after the N-th MLflow call of a process starts
  (`mlflow:N:MS`); N of 1-4 lands in the job's own process while it opens its parent run, larger N in a
  worker training arms.

Find jobs log to the suite's MLflow server (a kill lands between a request and its reply), transfer jobs
to a local sqlite store, MLflow's default (a kill lands inside a database transaction).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness as H

pytestmark = pytest.mark.faults

SEED = 20261203
FIND_KILLS = int(os.environ.get("TICKETX_FAULTS_FIND_KILLS", "20"))
TRANSFER_KILLS = int(os.environ.get("TICKETX_FAULTS_TRANSFER_KILLS", "5"))


@dataclass(frozen=True)
class Moment:
    kind: str  # "time", "ticket-write" or "mlflow"
    at: float = 0.0  # seconds after the start (time)
    n: int = 0  # which write or call of a process (ticket-write, mlflow)
    ms: float = 0.0  # delay into the call (mlflow)

    def fault(self) -> str:
        return {"ticket-write": f"ticket-write:{self.n}", "mlflow": f"mlflow:{self.n}:{self.ms:.1f}"}.get(self.kind, "")

    def __str__(self) -> str:
        return {"time": f"at {self.at:.1f} s", "ticket-write": f"ticket file write #{self.n}",
                "mlflow": f"MLflow call #{self.n} +{self.ms:.0f} ms"}[self.kind]


def find_moments(rng: random.Random, count: int, seconds: float) -> list[Moment]:
    """Half at times spread over the job, a quarter in ticket writes, a quarter in MLflow calls."""
    n_time = count - 2 * (count // 4)
    out = [Moment("time", at=seconds * (i + rng.random()) / n_time) for i in range(n_time)]
    # each worker writes at least two tickets (6 files): the dense level's and the next level's
    out += [Moment("ticket-write", n=n) for n in rng.sample(range(1, 7), count // 4)]
    calls = [rng.randint(1, 4)] + rng.sample(range(5, 19), max(0, count // 4 - 1))  # a worker makes 20+
    out += [Moment("mlflow", n=n, ms=rng.uniform(0, 20)) for n in calls[: count // 4]]
    return out


def transfer_moments(rng: random.Random, count: int, seconds: float) -> list[Moment]:
    n_time = count - min(2, count // 2)
    out = [Moment("time", at=seconds * (i + rng.random()) / n_time) for i in range(n_time)]
    calls = [rng.randint(1, 4), rng.randint(5, 10)][: count - n_time]  # a worker makes 10+
    return out + [Moment("mlflow", n=n, ms=rng.uniform(0, 20)) for n in calls]


def trial(name: str, args: list[str], moment: Moment, uri: str, cwd: Path, log: Path, expected: list,
          reference: H.Record) -> tuple[bool, str]:
    """Kill one job at `moment`, re-run it, compare with the uninterrupted job; (ok, one-line account)."""
    extra = {"TICKETX_FAULT": moment.fault(), "TICKETX_FAULT_LOG": str(log)} if moment.fault() else {}
    at, redraw, first = moment.at, random.Random(f"{name}-redraw"), list(args)
    for attempt in range(3):
        if attempt:  # the job that ended is complete: the next attempt is a fresh job in a folder of its own
            args = [f"{a}-{attempt}" if i and first[i - 1] in ("--out", "--experiment") else a
                    for i, a in enumerate(first)]
        job = H.start(args, H.env(uri, **extra), cwd)
        if moment.kind == "time":
            time.sleep(max(0.0, at - job.seconds()))
            if job.popen.poll() is not None:  # it ended before the moment: redraw, earlier
                H.wait_group_gone(job)
                last = job.out[-1][0] if job.out else job.seconds()
                at = last * redraw.uniform(0.55, 0.95)
                continue
            survivors = H.kill_group(job)
        else:
            job.wait(300)
            survivors = H.wait_group_gone(job) or H.kill_group(job)
        break
    else:
        return False, f"{name}: {moment}: the job ended before every kill moment"
    killed_at = job.seconds()
    last = next((line for _, line in reversed(job.out) if line.startswith("[")), "before any arm started")
    fired = log.read_text().strip().splitlines() if log.exists() else []
    if moment.kind != "time" and not fired:
        return False, f"{name}: {moment}: the hook never fired (job exit {job.popen.returncode})"
    if moment.kind == "time" and job.popen.returncode not in (-9, None):
        return False, f"{name}: {moment}: the job exited {job.popen.returncode} before the kill"
    if survivors:
        return False, f"{name}: {moment}: processes {survivors} of the killed group survived"
    again = H.run(args, H.env(uri), cwd, timeout=300)
    experiment = args[args.index("--experiment") + 1]
    rec = H.record(uri, experiment)
    root = Path(args[args.index("--out") + 1])
    problems = []
    if again.popen.returncode != 0:
        problems.append(f"re-run exited {again.popen.returncode}: {' | '.join(again.err[-3:])}")
    elif H.results(root) != expected:
        problems.append("re-run's results.json differs from the uninterrupted job's")
    if [n for n, _ in rec.active] != [n for n, _ in reference.active]:
        doubled = sorted(set(rec.active) - set(reference.active))
        problems.append(f"{len(rec.active)} live MLflow runs, the uninterrupted job has {len(reference.active)}"
                        + (f" (extra: {doubled})" if doubled else ""))
    elif rec.contents != reference.contents:
        problems.append("runs with other params or metrics than the uninterrupted job's: "
                        + str(sorted(set(rec.contents) - set(reference.contents)))[:200])
    if any(s != "FINISHED" for _, s in rec.active):
        problems.append(f"live runs not FINISHED: {sorted(s for _, s in rec.active if s != 'FINISHED')}")
    if rec.running:
        problems.append(f"{rec.running} run(s) left RUNNING")
    if again.popen.returncode == 0:
        problems += H.incomplete(uri, experiment)
    hit = f" [{fired[0].split(' ', 1)[1]}]" if fired else (f" [redrawn to {at:.1f} s in a fresh job]" if attempt else "")
    account = (f"{name}: {moment}{hit}: killed at {killed_at:.1f} s during '{last[:60]}', re-run "
               f"{again.seconds():.1f} s, {len(rec.active)} runs ({len(rec.deleted)} deleted): "
               + ("ok" if not problems else "FAIL: " + "; ".join(problems)))
    return not problems, account


def test_kill_find_job(reference_find, workdir, figures):
    ref = reference_find
    moments = find_moments(random.Random(SEED), FIND_KILLS, ref.timeline[-1][0])  # start to last line
    began, outcomes = time.monotonic(), []
    for i, moment in enumerate(moments):
        root = workdir / "find-kills" / f"k{i:02d}"
        args = ["find", str(ref.recipe), "--workers", "2", "--out", str(root), "--experiment", f"find-kill-{i:02d}"]
        ok, account = trial(f"find kill {i:02d}", args, moment, ref.uri, workdir, root.with_suffix(".fault"),
                            ref.results, ref.record)
        print(account, flush=True)
        outcomes.append(ok)
    kinds = {k: sum(m.kind == k for m in moments) for k in ("time", "ticket-write", "mlflow")}
    figures.report(f"kills survived: {sum(outcomes)}/{len(moments)} ({kinds['time']} at times spread over "
                   f"the job, {kinds['ticket-write']} during ticket writes, {kinds['mlflow']} during MLflow "
                   f"calls; {time.monotonic() - began:.0f} s)", all(outcomes) and len(moments) >= 20)
    assert all(outcomes), "a killed find job did not resume to the uninterrupted result; see the lines above"


@pytest.fixture(scope="session")
def reference_transfer(reference_find, workdir):
    recipe = workdir / "transfer.toml"
    recipe.write_text(H.TRANSFER_RECIPE)
    source = H.job_dir(reference_find.root)
    root = workdir / "transfer-reference"
    args = ["transfer", str(source), "--to", str(recipe), "--levels", "all", "--workers", "2", "--out", str(root),
            "--experiment", "transfer-reference"]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    job = H.run(args, H.env(uri), workdir)
    assert job.popen.returncode == 0, "\n".join(job.err[-20:])
    rec = H.record(uri, "transfer-reference")
    assert len(rec.active) == H.TRANSFER_RUNS and {s for _, s in rec.active} == {"FINISHED"}, rec
    assert not H.incomplete(uri, "transfer-reference"), H.incomplete(uri, "transfer-reference")
    print(f"\nreference transfer job: {job.seconds():.1f} s, {len(rec.active)} MLflow runs")
    return args, uri, H.results(root), rec, job.out[-1][0]  # start to last line


def test_kill_transfer_job(reference_transfer, workdir, figures):
    base, uri, expected, reference, seconds = reference_transfer
    moments = transfer_moments(random.Random(SEED + 1), TRANSFER_KILLS, seconds)
    began, outcomes = time.monotonic(), []
    for i, moment in enumerate(moments):
        root = workdir / "transfer-kills" / f"k{i:02d}"
        args = [*base[: base.index("--out")], "--out", str(root), "--experiment", f"transfer-kill-{i:02d}"]
        ok, account = trial(f"transfer kill {i}", args, moment, uri, workdir,
                            root.with_suffix(".fault"), expected, reference)
        print(account, flush=True)
        outcomes.append(ok)
    figures.report(f"transfer kills survived: {sum(outcomes)}/{len(moments)} "
                   f"({sum(m.kind == 'time' for m in moments)} at times spread over the job, "
                   f"{sum(m.kind == 'mlflow' for m in moments)} during MLflow calls; "
                   f"{time.monotonic() - began:.0f} s)", all(outcomes) and len(moments) >= 5)
    assert all(outcomes), "a killed transfer job did not resume to the uninterrupted result; see above"
