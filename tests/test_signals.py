"""SIGTERM and SIGHUP end a job as Ctrl-C does: workers stopped, runs KILLED, exit status 128 + signal, and
the job resumes to the uninterrupted numbers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from ticketx.tracking import Tracker

RECIPE = """
name = "sig"
[task]
plugin = "toy"
name = "gauss"
[train]
steps = 3000
batch_size = 32
lr = 0.01
eval_every = 500
[prune]
levels = 1
rate = 0.5
"""
KEEP = ("level", "arm", "early_stop_step", "at_early_stop", "final")


def _find(recipe, out, experiment, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--workers", "2",
                             "--out", str(out), "--experiment", experiment],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_the_job_as_ctrl_c_and_it_resumes(sig, tmp_path, cli_env, mlflow_uri):
    recipe = tmp_path / "sig.toml"
    recipe.write_text(RECIPE)
    job = _find(recipe, tmp_path / "job", f"sig-{sig.name}", cli_env)
    seen = []
    for line in job.stdout:  # the dense arm done, the three arms of level 1 running on 2 workers
        seen.append(line)
        if "[r0 L01 " in line and "training 3000 steps" in line:
            break
    time.sleep(0.5)
    job.send_signal(sig)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 128 + sig, (seen, out, err)
    assert "Traceback" not in err
    tracker = Tracker(mlflow_uri)
    runs = tracker.client.search_runs([tracker.experiment(f"sig-{sig.name}")], max_results=100)
    statuses = sorted(r.info.status for r in runs)
    assert "RUNNING" not in statuses and statuses.count("KILLED") >= 2, statuses  # the parent and an arm

    again = subprocess.run([sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--workers", "2",
                            "--out", str(tmp_path / "job"), "--experiment", f"sig-{sig.name}"],
                           env=cli_env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    ref = subprocess.run([sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--workers", "1",
                          "--out", str(tmp_path / "ref"), "--experiment", f"sig-ref-{sig.name}"],
                         env=cli_env, capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr
    (job_dir,), (ref_dir,) = (tmp_path / "job").iterdir(), (tmp_path / "ref").iterdir()
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (job_dir, ref_dir))
    assert [{k: r[k] for k in KEEP} for r in ours] == [{k: r[k] for k in KEEP} for r in theirs]
    live = [r for r in tracker.client.search_runs([tracker.experiment(f"sig-{sig.name}")], max_results=100)
            if r.info.lifecycle_stage == "active"]
    assert sorted(r.info.status for r in live).count("FINISHED") == 1 + 4


def test_an_interruption_waits_for_the_held_block_to_end():
    from ticketx import signals
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.held():
            with signals.held():
                signals.interrupt()  # as a handler does while a run is being created
                done.append("inner")
            done.append("outer")  # the run is known to the job: now the interruption may come
    assert done == ["inner", "outer"]
    with pytest.raises(ValueError):  # a block ending in an error keeps it; the held interruption goes with it
        with signals.held():
            signals.interrupt()
            raise ValueError("the block's own error")
    with signals.held():
        pass  # nothing left pending from the block that ended in an error
    with pytest.raises(KeyboardInterrupt):
        signals.interrupt()  # outside any block: at once
