"""Long arms survive a kill: checkpoints in the job folder, resumed in the same MLflow run, same numbers."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tomllib

import pytest
import torch
from safetensors.torch import load_file

from ticketx import checkpoint as ck
from ticketx import config as C
from ticketx.findjob import run_find
from ticketx.tracking import Tracker
from toy import ToyTask

RECIPE = """
name = "ckpt"
seed = 3
[task]
plugin = "toy"
name = "gauss"
dropout = 0.2
[train]
steps = 600
batch_size = 32
lr = 0.01
eval_every = 50
checkpoint_every = 40
[prune]
levels = 1
rate = 0.5
"""


def test_pack_and_read_round_trip_every_kind_of_value(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3, 2))], lr=0.1, fused=True)
    opt.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    opt.step()
    state = {"optimizer": opt.state_dict(), "best": math.inf, "nan": -math.inf, "none": None,
             "pairs": [(1, "a"), (2, "b")], "history": [[100, {"val_loss": 0.5}]], "flag": True,
             "rng": torch.get_rng_state()}
    ck.write(tmp_path / "c.safetensors", state)
    back = ck.read(tmp_path / "c.safetensors")
    assert back["best"] == math.inf and back["nan"] == -math.inf and back["none"] is None
    assert back["pairs"] == [(1, "a"), (2, "b")] and back["flag"] is True
    assert back["history"] == [[100, {"val_loss": 0.5}]]
    assert torch.equal(back["rng"], state["rng"])
    saved = opt.state_dict()
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay ints, as load_state_dict needs
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"][0]["betas"] == saved["param_groups"][0]["betas"]


def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "c.safetensors"
    ck.write(path, {"a": torch.zeros(3)})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ck.CheckpointError, match="cannot read the checkpoint"):
        ck.read(path)


# an early-bird watch whose window spans the stop at step 200 (masks at 200, 240, 280: distance 0.061), so
# that a resumed arm without the masks from before its checkpoint would find a later iteration
EARLY_BIRD = "prune.early_bird={every=40, window=3, distance=0.065, stop=true}"


@pytest.mark.parametrize("arm,rewind,over", [("ticket", 0, []), ("dense", 100, []), ("dense", 0, [EARLY_BIRD])])
def test_fit_resumes_from_a_checkpoint_exactly(tmp_path, tracker, experiment, arm, rewind, over):
    """In process: an arm stopped after its checkpoint at step 200 and resumed gives the uninterrupted
    arm's weights and metrics to the last bit (dropout, so the RNG state is part of it); the dense arm
    stopped after it captured θk at step 100 still saves that θk; an early-bird dense arm resumes its watch
    and stops at the same iteration."""
    cfg = C.from_dict(C.apply_overrides(tomllib.loads(RECIPE), ["task.dropout=0.3", f"prune.rewind_step={rewind}",
                                                                *over]))
    whole = run_find(cfg, ToyTask("gauss", {"dropout": 0.3}), tracker, root=tmp_path / "a", experiment=experiment)

    class Stop(Exception):
        pass

    original = ToyTask.train

    def stops_after_checkpoint(self, model, masks, plan, observer):
        if observer.info["arm"] == arm:
            save = observer.checkpoints.save

            def save_then_stop(step, state):
                save(step, state)
                if step == 200:
                    raise Stop
            observer.checkpoints.save = save_then_stop
        return original(self, model, masks, plan, observer)

    ToyTask.train = stops_after_checkpoint
    try:
        with pytest.raises(Stop):
            run_find(cfg, ToyTask("gauss", {"dropout": 0.3}), tracker, root=tmp_path / "b",
                     experiment=experiment + "b")
    finally:
        ToyTask.train = original
    resumed = run_find(cfg, ToyTask("gauss", {"dropout": 0.3}), tracker, root=tmp_path / "b",
                       experiment=experiment + "b")
    stopped = [r for r in resumed.records if r["arm"] == arm][0]
    assert stopped["resumed_at"] == 200
    keep = ("level", "arm", "early_stop_step", "at_early_stop", "final", "movement", "early_bird_step", "steps_trained")
    assert [{k: r.get(k) for k in keep} for r in resumed.records] == [{k: r.get(k) for k in keep} for r in whole.records]
    if over:
        assert stopped["early_bird_step"] == stopped["steps_trained"] == 280
    for name in ("r0/rewind.safetensors", "r0/L00/trained.safetensors", "r0/L01/trained.safetensors"):
        a, b = load_file(str(whole.job_dir / name)), load_file(str(resumed.job_dir / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not list(resumed.job_dir.rglob("*.ckpt.safetensors"))  # deleted once each arm finished


def _run(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "ticketx.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _history(tracker: Tracker, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = tracker.client.get_run(run_id)
    return {k: sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, k))
            for k in run.data.metrics}


def test_kill_9_mid_arm_then_rerun_resumes_from_the_checkpoint(tmp_path, cli_env, mlflow_uri):
    """The process dies (os._exit, as kill -9: nothing flushed) at a random step of the level-1 ticket arm;
    the re-run resumes that arm from its last checkpoint, not from step 0, in the same MLflow run, and
    ends with the uninterrupted job's numbers, run count and metric steps."""
    recipe = tmp_path / "ckpt.toml"
    recipe.write_text(RECIPE)
    step = random.Random().randint(81, 590)  # after at least two checkpoints (every 40 steps)
    base = ["find", str(recipe), "--workers", "1", "--device", "cpu"]
    ref = _run([*base, "--out", str(tmp_path / "ref"), "--experiment", "ckpt-ref"], cli_env)
    assert ref.returncode == 0, ref.stderr
    killed = _run([*base, "--out", str(tmp_path / "job"), "--experiment", "ckpt-job"],
                  {**cli_env, "TICKETX_TOY_EXIT_AT": f"1/ticket/{step}"})
    assert killed.returncode == 9, (step, killed.stdout, killed.stderr)
    (job_dir,) = (tmp_path / "job").iterdir()
    saved = ck.read(job_dir / "r0" / "L01" / "ticket.ckpt.safetensors")
    # the last checkpoint before the kill: fit saves after the observer's on_step, so a kill at a multiple
    # of 40 comes before that step's own checkpoint
    assert saved["step"] == (step - 1) // 40 * 40, step
    again = _run([*base, "--out", str(tmp_path / "job"), "--experiment", "ckpt-job"], cli_env)
    assert again.returncode == 0, again.stderr
    assert f"resuming from its checkpoint at step {saved['step']} of 600" in again.stdout

    (ref_dir,) = (tmp_path / "ref").iterdir()
    keep = ("level", "arm", "early_stop_step", "at_early_stop", "final", "movement")
    ref_records = json.loads((ref_dir / "results.json").read_text())
    records = json.loads((job_dir / "results.json").read_text())
    assert [{k: r[k] for k in keep} for r in records] == [{k: r[k] for k in keep} for r in ref_records]
    ticket = [r for r in records if r["arm"] == "ticket"][0]
    assert ticket["resumed_at"] == saved["step"]

    tracker = Tracker(mlflow_uri)
    runs = {e: tracker.client.search_runs([tracker.experiment(e)], max_results=100) for e in ("ckpt-ref", "ckpt-job")}
    assert len(runs["ckpt-job"]) == len(runs["ckpt-ref"]) == 1 + 4
    assert {r.info.status for r in runs["ckpt-job"]} == {"FINISHED"}
    ref_ticket = [r for r in ref_records if r["arm"] == "ticket"][0]
    ours, theirs = _history(tracker, ticket["run_id"]), _history(tracker, ref_ticket["run_id"])
    assert ours.keys() == theirs.keys()
    for key in ours:  # every metric step once, with the uninterrupted run's values (seconds aside)
        if key != "seconds":
            assert ours[key] == theirs[key], key
    assert not list(job_dir.rglob("*.ckpt.safetensors"))


def test_an_unreadable_checkpoint_restarts_the_arm(tmp_path, cli_env):
    recipe = tmp_path / "ckpt.toml"
    recipe.write_text(RECIPE)
    base = ["find", str(recipe), "--workers", "1", "--out", str(tmp_path / "job")]
    killed = _run(base, {**cli_env, "TICKETX_TOY_EXIT_AT": "1/ticket/300"})
    assert killed.returncode == 9
    (ckpt,) = (tmp_path / "job").rglob("ticket.ckpt.safetensors")
    ckpt.write_bytes(b"not a checkpoint")
    again = _run(base, cli_env)
    assert again.returncode == 0, again.stderr
    assert "cannot read the checkpoint" in again.stderr and "the arm starts again" in again.stderr
    assert "[r0 L01 ticket] density 50.00%  training 600 steps" in again.stdout
