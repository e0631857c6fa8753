"""One job, one owner: a second command on a job folder in use exits at once naming the holder and touches
nothing; the lock dies with its process (kill -9 included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ticketx import config as C
from ticketx.findjob import run_find
from ticketx.jobs import JobBusyError, JobLock
from toy import ToyTask

HOLD = ("import sys, time; from pathlib import Path; from ticketx.jobs import JobLock; "
        "JobLock.take(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")


def test_a_second_owner_is_refused_naming_the_first(tmp_path):
    first = JobLock.take(tmp_path)
    with pytest.raises(JobBusyError, match=rf"job folder {tmp_path} is in use by ticketx \(PID {os.getpid()} on "
                                           r"host .+, since 20\d\d-.+\); wait for that command to end"):
        JobLock.take(tmp_path)
    first.release()
    JobLock.take(tmp_path).release()  # free again


def test_the_lock_dies_with_its_process_even_on_kill_9(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobBusyError, match=f"PID {holder.pid} "):
            JobLock.take(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    JobLock.take(tmp_path).release()  # no stale lock


def test_a_job_in_use_is_left_untouched(tmp_path, tracker, experiment):
    cfg = C.from_dict({"name": "locked", "task": {"plugin": "toy", "name": "gauss"},
                       "train": {"steps": 40, "batch_size": 32, "lr": 0.01, "eval_every": 20},
                       "prune": {"levels": 1, "rate": 0.5}})
    job_dir = tmp_path / f"locked-{C.config_hash(cfg)[:10]}"
    job_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(job_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        began = time.monotonic()
        with pytest.raises(JobBusyError, match=f"in use by ticketx \\(PID {holder.pid} "):
            run_find(cfg, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
        assert time.monotonic() - began < 5
        assert sorted(p.name for p in job_dir.iterdir()) == ["job.lock"]  # no job.json, no level folder
        assert tracker.client.get_experiment_by_name(experiment) is None  # no run, not even the experiment
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    done = run_find(cfg, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert len(done.records) == 4


def test_two_identical_commands_at_once_one_runs_one_is_refused(tmp_path, cli_env):
    """The same recipe twice at the same moment on a fresh local store (no mlflow.db yet): one job runs to
    the end, the other exits 1 at once with one line naming the holder; the store and job are whole."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "twice"\n[task]\nplugin = "toy"\nname = "gauss"\n[train]\nsteps = 400\n'
                      'batch_size = 32\nlr = 0.01\neval_every = 100\n[prune]\nlevels = 1\nrate = 0.5\n')
    env = {**cli_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}"}
    cmd = [sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--workers", "1", "--out", str(tmp_path / "o")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    streams = [p.communicate(timeout=240) for p in procs]
    outs = [(p.returncode, out, err) for p, (out, err) in zip(procs, streams)]
    codes = sorted(code for code, _, _ in outs)
    assert codes == [0, 1], outs
    (refused,) = [err for code, _, err in outs if code == 1]
    assert "Traceback" not in refused and len(refused.strip().splitlines()) == 1
    assert "is in use by ticketx (PID" in refused
    from ticketx.tracking import Tracker
    t = Tracker(env["MLFLOW_TRACKING_URI"])
    runs = t.client.search_runs([t.experiment("twice")], max_results=100)
    assert len(runs) == 1 + 4 and {r.info.status for r in runs} == {"FINISHED"}
