"""One job, one owner; SIGTERM as a scheduler sends it; a job moved between two stores.

- 20 pairs of identical find jobs started at the same moment, each pair on a fresh local store (no
  mlflow.db yet): one job of each pair runs to the end, the other exits 1 at once with one line naming the
  holder; the survivor's results equal the uninterrupted job's, its runs are all there once, none deleted.
- SIGTERM to the job's own process (as `timeout`, Slurm or `kill` send it; its workers are not signalled)
  at 20 moments spread over the job: it exits 143 with no run left RUNNING, and the same command resumes
  it to the uninterrupted job's results and runs.
- A job run to the end against the suite's MLflow server, then run again against a local store: the local
  store gets the whole record (parent, one FINISHED child per arm with its metrics and ticket), nothing is
  trained again, and the server's record is untouched.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time

import pytest

import harness as H

pytestmark = pytest.mark.faults

SEED = 20261207
PAIRS = int(os.environ.get("TICKETX_FAULTS_PAIRS", "20"))
TERMS = int(os.environ.get("TICKETX_FAULTS_TERMS", "20"))


def test_identical_jobs_started_together(reference_find, workdir, figures):
    ref = reference_find
    began, outcomes = time.monotonic(), []
    for i in range(PAIRS):
        root, uri = workdir / "pairs" / f"p{i:02d}", f"sqlite:///{workdir / 'pairs' / f'p{i:02d}.db'}"
        root.parent.mkdir(exist_ok=True)
        args = ["find", str(ref.recipe), "--workers", "2", "--out", str(root), "--experiment", "pair"]
        jobs = [H.start(args, H.env(uri), workdir) for _ in range(2)]
        codes = sorted(job.wait(300) for job in jobs)
        for job in jobs:
            H.wait_group_gone(job)
        refused = [job for job in jobs if job.popen.returncode == 1]
        rec = H.record(uri, "pair")
        problems = []
        if codes != [0, 1]:
            problems.append(f"exit codes {codes}: {' | '.join(e for j in jobs for e in j.err[-2:])}")
        elif "is in use by ticketx (PID" not in (H.one_error_line(refused[0]) or ""):
            problems.append(f"the refused job printed {refused[0].err[-3:]}")
        if H.results(root) != ref.results:
            problems.append("the survivor's results.json differs from the uninterrupted job's")
        if [n for n, _ in rec.active] != [n for n, _ in ref.record.active] or rec.deleted:
            problems.append(f"{len(rec.active)} live runs (the uninterrupted job has {len(ref.record.active)}), "
                            f"{len(rec.deleted)} deleted")
        if any(s != "FINISHED" for _, s in rec.active):
            problems.append(f"runs not FINISHED: {sorted(s for _, s in rec.active)}")
        problems += H.incomplete(uri, "pair") if rec.active else []
        print(f"pair {i:02d}: exits {codes}: " + ("ok" if not problems else "FAIL: " + "; ".join(problems)),
              flush=True)
        outcomes.append(not problems)
    figures.report(f"identical jobs started together: {sum(outcomes)}/{PAIRS} pairs with one owner, 0 corrupted "
                   f"folders or stores, 0 duplicated or deleted runs ({time.monotonic() - began:.0f} s)",
                   all(outcomes) and PAIRS >= 20)
    assert all(outcomes), "see the lines above"


def test_sigterm_then_rerun(reference_find, workdir, figures):
    ref = reference_find
    rng = random.Random(SEED)
    seconds = ref.timeline[-1][0]  # start to its last line
    moments = [0.9 * seconds * (i + rng.random()) / TERMS for i in range(TERMS)]  # a job may run faster
    began, outcomes, ended_first = time.monotonic(), [], 0
    for i, at in enumerate(moments):
        root = workdir / "terms" / f"t{i:02d}"
        args = ["find", str(ref.recipe), "--workers", "2", "--out", str(root), "--experiment", f"term-{i:02d}"]
        job = H.start(args, H.env(ref.uri), workdir)
        time.sleep(max(0.0, at - job.seconds()))
        ended_before = job.popen.poll() is not None
        if not ended_before:
            os.kill(job.pid, signal.SIGTERM)  # the job's process alone, as a scheduler or `timeout` does
        ended_first += ended_before
        code = job.wait(120)
        survivors = H.wait_group_gone(job)
        rec_killed = H.record(ref.uri, f"term-{i:02d}")
        again = H.run(args, H.env(ref.uri), workdir, timeout=300)
        rec = H.record(ref.uri, f"term-{i:02d}")
        problems = []
        if not ended_before and code != 128 + signal.SIGTERM:
            problems.append(f"exit {code}, not 143: {' | '.join(job.err[-3:])}")
        if "Traceback" in "\n".join(job.err):
            problems.append("a traceback on stderr")
        if survivors:
            problems.append(f"processes {survivors} outlived the job")
        if rec_killed.running:
            problems.append(f"{rec_killed.running} run(s) left RUNNING by the signal")
        if again.popen.returncode != 0:
            problems.append(f"re-run exited {again.popen.returncode}: {' | '.join(again.err[-3:])}")
        elif H.results(root) != ref.results:
            problems.append("re-run's results.json differs from the uninterrupted job's")
        if [n for n, _ in rec.active] != [n for n, _ in ref.record.active] or rec.running:
            problems.append(f"{len(rec.active)} live runs after the re-run, {rec.running} RUNNING")
        last = next((line for _, line in reversed(job.out) if line.startswith("[")), "before any arm started")
        what = "ended before the signal" if ended_before else f"SIGTERM at {at:.1f} s during '{last[:50]}'"
        print(f"term {i:02d}: {what}: " + ("ok" if not problems else "FAIL: " + "; ".join(problems)), flush=True)
        outcomes.append(not problems)
    figures.report(f"SIGTERM then re-run: {sum(outcomes)}/{TERMS} resumed to the uninterrupted numbers with "
                   f"0 RUNNING runs, exit 143 each ({ended_first} of the jobs ended before their moment; "
                   f"{time.monotonic() - began:.0f} s)", all(outcomes) and TERMS >= 20 and ended_first <= TERMS // 4)
    assert all(outcomes), "see the lines above"


def test_a_job_moved_between_stores(reference_find, workdir, figures):
    ref = reference_find
    local = f"sqlite:///{workdir / 'moved.db'}"
    root = workdir / "moved"
    shutil.copytree(ref.root, root)  # the reference job's folder, as another user would copy it
    args = ["find", str(ref.recipe), "--workers", "2", "--out", str(root), "--experiment", "find-reference"]
    before = H.record(ref.uri, "find-reference")
    job = H.run(args, H.env(local), workdir)
    moved, after = H.record(local, "find-reference"), H.record(ref.uri, "find-reference")
    problems = []
    if job.popen.returncode != 0:
        problems.append(f"exit {job.popen.returncode}: {' | '.join(job.err[-3:])}")
    if "training" in job.text():
        problems.append("an arm was trained again")
    if [n for n, _ in moved.active] != [n for n, _ in ref.record.active] or any(s != "FINISHED" for _, s in moved.active):
        problems.append(f"the new store holds {moved.active}")
    problems += H.incomplete(local, "find-reference")
    if after != before:
        problems.append("the first store's record changed")
    figures.report(f"a job moved between two stores: the record complete in both ({len(moved.active)} runs in the "
                   f"new one, {len(after.active)} in the first): " + ("ok" if not problems else "; ".join(problems)),
                   not problems)
    assert not problems, problems
