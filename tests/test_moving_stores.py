"""A job folder recorded in one MLflow store, run again against another: the new store gets the whole
record (a parent with one FINISHED child per finished arm, its params, summary metrics and ticket), and
nothing is trained again."""

from __future__ import annotations

import json

import pytest

from ticketx import config as C
from ticketx.findjob import run_find
from ticketx.tracking import Tracker
from ticketx.transferjob import resolve
from ticketx.task import MetricSpec
from toy import ToyTask

RECIPE = {"name": "moved", "task": {"plugin": "toy", "name": "gauss"},
          "train": {"steps": 60, "batch_size": 32, "lr": 0.01, "eval_every": 30},
          "prune": {"levels": 2, "rate": 0.5}}


def _children(tracker, result):
    return [r for r in tracker.client.search_runs([result.experiment_id], max_results=100)
            if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]


def test_a_job_moved_to_another_store_is_recorded_there_whole(tmp_path, monkeypatch):
    cfg = C.from_dict(RECIPE)
    first = Tracker(f"sqlite:///{tmp_path / 'local.db'}")
    before = run_find(cfg, ToyTask("gauss", {}), first, root=tmp_path / "runs", experiment="moved")
    events = []
    monkeypatch.setattr(ToyTask, "train", lambda *a: pytest.fail("a finished arm was trained again"))
    team = Tracker(f"sqlite:///{tmp_path / 'team.db'}")
    after = run_find(cfg, ToyTask("gauss", {}), team, root=tmp_path / "runs", experiment="moved",
                     progress=lambda e, i: events.append((e, dict(i))))
    assert after.job_dir == before.job_dir
    assert [m["message"] for e, m in events if e == "recorded"] == [
        f"recorded 7 finished arm(s) of {after.job_dir.name} in {team.uri} from the job folder (their per-step "
        "curves stay in the store they trained in)"]
    parent = team.client.get_run(after.parent_run_id)
    assert parent.info.status == "FINISHED"
    kids = _children(team, after)
    assert len(kids) == 7 and {k.info.status for k in kids} == {"FINISHED"}
    old = {(r["level"], r["arm"]): r for r in before.records}
    for kid in kids:
        p = kid.data.params
        rec = old[(int(p["level"]), p["arm"])]
        assert kid.data.metrics["es_test_accuracy"] == rec["at_early_stop"]["test_accuracy"]
        assert p["init_seed"] == rec["init_seed"] and p["density"] == f"{rec['density']:.6f}"
        assert kid.data.tags["ticketx.recorded_from"].endswith(f"(run {rec['run_id']})")
        if p["arm"] in ("dense", "ticket"):
            assert [a.path for a in team.client.list_artifacts(kid.info.run_id)] == ["ticket"]
    # the result files now name the new runs; the first store keeps its own record untouched
    records = json.loads((after.job_dir / "results.json").read_text())
    assert {r["run_id"] for r in records} == {k.info.run_id for k in kids}
    assert len(_children(first, before)) == 7
    # the moved job's tickets resolve from the new store by run id, as any find job's do
    (source,) = resolve(after.parent_run_id, team, MetricSpec(), levels="2", workdir=tmp_path / "fetch")
    assert source.level == 2 and source.ticket.meta["level"] == 2
    # and run again there, nothing more is recorded
    again = run_find(cfg, ToyTask("gauss", {}), team, root=tmp_path / "runs", experiment="moved")
    assert again.parent_run_id == after.parent_run_id and len(_children(team, again)) == 7
