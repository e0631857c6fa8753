from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ticketx import config as C
from ticketx import masks as M
from ticketx import ticket as T
from ticketx import training
from ticketx.findjob import run_find, summarise
from ticketx.task import TaskError
from toy import ToyTask

BASE = {"name": "toy", "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 120, "batch_size": 32, "lr": 0.01, "eval_every": 40},
        "prune": {"levels": 2, "rate": 0.5, "layer_rates": {"4.weight": 0.25}}}


def cfg(**over):
    data = C.apply_overrides(BASE, [f"{k}={v}" for k, v in over.items()])
    return C.from_dict(data)


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("run_id", "seconds")} for r in records]


def live_runs(tracker, result):
    return tracker.client.search_runs([result.experiment_id], max_results=1000)


def test_records_and_mlflow_structure(tmp_path, tracker, experiment):
    c = cfg(replicates=2)
    result = run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert len(result.records) == 2 * (1 + 2 * 3)
    runs = live_runs(tracker, result)
    parent = tracker.client.get_run(result.parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(runs) == 1 + len(children) == 15
    assert parent.info.status == "FINISHED" and parent.data.tags["ticketx.config_hash"] == C.config_hash(c)
    assert parent.data.params["prune.rate"] == "0.5" and parent.data.params["task.plugin"] == "toy"
    assert {r.info.status for r in children} == {"FINISHED"}
    arms = sorted((r.data.params["replicate"], r.data.params["level"], r.data.params["arm"]) for r in children)
    assert arms[:4] == [("0", "0", "dense"), ("0", "1", "random_prune"), ("0", "1", "random_reinit"),
                        ("0", "1", "ticket")]
    ticket_run = next(r for r in children if r.data.params["arm"] == "ticket")
    assert {"early_stop_step", "density", "es_test_accuracy", "final_val_loss"} <= set(ticket_run.data.metrics)
    history = tracker.client.get_metric_history(ticket_run.info.run_id, "val_loss")
    assert [m.step for m in history] == [40, 80, 120]
    artifacts = [a.path for a in tracker.client.list_artifacts(ticket_run.info.run_id, "ticket")]
    assert sorted(artifacts) == ["ticket/masks.safetensors", "ticket/ticket.json", "ticket/weights.safetensors"]
    assert {a.path for a in tracker.client.list_artifacts(result.parent_run_id)} >= {"results.csv", "results.json"}


def test_densities_controls_and_rewind_to_init(tmp_path, tracker, experiment):
    task = ToyTask("gauss", {})
    result = run_find(cfg(), task, tracker, root=tmp_path, experiment=experiment)
    by = {(r["level"], r["arm"]): r for r in result.records}
    # layer-wise 0.5, output layer 0.25 per level
    assert by[(2, "ticket")]["layer_density"] == {"0.weight": 0.25, "2.weight": 0.25, "4.weight": 0.5625}
    for arm in ("random_reinit", "random_prune"):
        assert by[(2, arm)]["layer_density"] == by[(2, "ticket")]["layer_density"]
    t2 = T.load(result.job_dir / "r0" / "L02" / "ticket")
    theta0 = task.build_model(0).state_dict()
    for name, w in t2.weights.items():  # survivors hold exactly θ0, pruned entries are zero
        m = t2.masks.get(name, torch.ones_like(w))
        assert torch.equal(w, theta0[name] * m)
    # level-2 masks are a subset of level-1 masks (iterative)
    t1 = T.load(result.job_dir / "r0" / "L01" / "ticket")
    assert all(bool((t2.masks[n] <= t1.masks[n]).all()) for n in t1.masks)


def test_rewind_to_step_k_restores_exactly_theta_k(tmp_path, tracker, experiment):
    task = ToyTask("gauss", {})
    c = cfg(**{"prune.rewind_step": 30, "prune.levels": 1})
    result = run_find(c, task, tracker, root=tmp_path, experiment=experiment)

    class Capture:
        state = None

        def on_step(self, step, model):
            if step == 30:
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def on_eval(self, step, metrics):
            pass

    model, cap = task.build_model(0), Capture()
    task.train(model, M.ones(task.prunable(model)), c.plan(0), cap)
    t1 = T.load(result.job_dir / "r0" / "L01" / "ticket")
    assert t1.meta["rewind_step"] == 30
    for name, w in t1.weights.items():
        m = t1.masks.get(name, torch.ones_like(w))
        assert torch.equal(w, cap.state[name] * m)
    assert not torch.equal(t1.weights["0.bias"], task.build_model(0).state_dict()["0.bias"])


def test_oneshot_prunes_the_dense_weights_once(tmp_path, tracker, experiment):
    result = run_find(cfg(**{"prune.mode": "oneshot"}), ToyTask("gauss", {}), tracker, root=tmp_path,
                      experiment=experiment)
    dense = load_file(str(result.job_dir / "r0" / "L00" / "trained.safetensors"))
    t2 = T.load(result.job_dir / "r0" / "L02" / "ticket")
    w = {n: dense[n] for n in t2.masks}
    expect = M.magnitude(w, M.ones(w), 0.75, layer_rates={"4.weight": 1 - 0.75**2})
    assert all(torch.equal(expect[n], t2.masks[n]) for n in w)


def test_exclude_and_subset_of_arms(tmp_path, tracker, experiment):
    c = cfg(**{"prune.exclude": "['4.weight']", "arms": "['ticket']", "prune.levels": 1})
    result = run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert [(r["level"], r["arm"]) for r in result.records] == [(0, "dense"), (1, "ticket")]
    assert result.records[1]["layer_density"]["4.weight"] == 1.0


def test_same_config_same_numbers(tmp_path, tracker, experiment):
    a = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "a", experiment=experiment)
    b = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "b", experiment=experiment + "b")
    assert strip(a.records) == strip(b.records)


def test_resume_after_kill_retrains_nothing_finished_and_duplicates_no_run(tmp_path, tracker, experiment,
                                                                          monkeypatch):
    reference = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "ref",
                         experiment=experiment + "ref")
    calls = []
    original = ToyTask.train

    def dies_on_fourth_arm(self, model, masks, plan, observer):
        calls.append(1)
        if len(calls) == 4:
            observer.on_eval(40, {"val_loss": 1.0})  # half-logged when the kill comes
            raise KeyboardInterrupt
        return original(self, model, masks, plan, observer)

    monkeypatch.setattr(ToyTask, "train", dies_on_fourth_arm)
    with pytest.raises(KeyboardInterrupt):
        run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "job", experiment=experiment)
    monkeypatch.setattr(ToyTask, "train", original)

    trained = []
    monkeypatch.setattr(ToyTask, "train", lambda self, *a: (trained.append(1), original(self, *a))[1])
    events = []
    result = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "job", experiment=experiment,
                      progress=lambda e, i: events.append(e))
    assert len(trained) == 7 - 3  # the three finished arms were read back
    assert events.count("skip") == 3 and events[0] == "resume"
    assert strip(result.records) == strip(reference.records)
    runs = live_runs(tracker, result)
    assert len(runs) == 1 + 7 and {r.info.status for r in runs} == {"FINISHED"}
    # running it a third time trains nothing and adds nothing
    again = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "job", experiment=experiment)
    assert len(trained) == 4 and len(live_runs(tracker, again)) == 8


def test_resume_after_kills_between_mlflow_and_the_job_folder(tmp_path, tracker, experiment):
    """The three moments where MLflow knows a run the job folder does not: a parent created before job.json
    named it, an arm's run created before its .run file, an arm's run ended after its result was written."""
    import json
    first = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    state = first.job_dir / "job.json"
    tracker.reopen(first.parent_run_id)  # the parent RUNNING, and job.json never told of it
    state.write_text(json.dumps({**json.loads(state.read_text()), "parent_runs": {}}))
    stray = tracker.start_run(first.experiment_id, "L01 ticket r0", parent=first.parent_run_id)  # no .run file
    (first.job_dir / "r0" / "L02" / "random_prune.json").unlink()  # killed before its result was written
    again = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert again.parent_run_id == first.parent_run_id  # adopted, not a second parent
    assert strip(again.records) == strip(first.records)
    runs = live_runs(tracker, again)
    assert len(runs) == 1 + 7 and {r.info.status for r in runs} == {"FINISHED"}
    assert not tracker.exists(stray)


def test_failure_marks_runs_failed(tmp_path, tracker, experiment, monkeypatch):
    def explode(self, model, masks, plan, observer):
        raise RuntimeError("boom")

    monkeypatch.setattr(ToyTask, "train", explode)
    with pytest.raises(RuntimeError, match="boom"):
        run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    exp = tracker.client.get_experiment_by_name(experiment)
    assert {r.info.status for r in tracker.client.search_runs([exp.experiment_id])} == {"FAILED"}


def test_a_task_that_lets_pruned_weights_regrow_is_caught(tmp_path, tracker, experiment, monkeypatch):
    def unmasked(self, model, masks, plan, observer):
        batches = training.EpochBatches(self.train_x, self.train_y, plan.batch_size, plan.data_seed)
        training.fit(model, {}, plan, observer, batch_at=batches, loss_fn=training.cross_entropy_loss,
                     evaluate=self._evaluate)

    monkeypatch.setattr(ToyTask, "train", unmasked)
    with pytest.raises(TaskError, match=r"ticket \(L01 ticket r0\) after step 1: pruned weights of 0.weight are "
                                        "nonzero"):
        run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)


@pytest.mark.parametrize("key, value", [("prune.exclude", "['fc9']"), ("prune.layer_rates", "{fc9 = 0.1}")])
def test_unknown_layer_fails_before_training(tmp_path, tracker, experiment, key, value, monkeypatch):
    monkeypatch.setattr(ToyTask, "train", lambda *a: pytest.fail("trained before checking the recipe"))
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.") + r" names \['fc9'\], which the task does not prune"):
        run_find(cfg(**{key: value}), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)


def test_summarise_means_and_stds():
    recs = [{"level": 1, "arm": "ticket", "density": 0.5, "early_stop_step": s,
             "at_early_stop": {"val_accuracy": a, "test_accuracy": a}, "final": {"test_accuracy": a}}
            for s, a in ((100, 0.9), (200, 0.8))]
    from ticketx.task import MetricSpec
    (row,) = summarise(recs, MetricSpec())
    assert row["early_stop_step_mean"] == 150 and row["es_test_accuracy_mean"] == pytest.approx(0.85)
    assert row["es_test_accuracy_std"] == pytest.approx(0.05) and row["replicates"] == 2


@pytest.mark.parametrize("which", ["safetensors", "json"])
def test_a_full_disk_while_writing_job_files_is_one_line_and_the_job_resumes(recipe, cli_env, tracker, which,
                                                                            monkeypatch):
    """A job file (rewind weights, an arm's result) that cannot be written fails `find --workers 1` in one line
    naming the file, leaves no temporary file and no RUNNING run; the same command then finishes the job."""
    import errno

    from click.testing import CliRunner
    from safetensors import SafetensorError

    from ticketx import jobs
    from ticketx.cli import main
    real_save, real_write = jobs.save_file, Path.write_text
    calls = {"n": 0}

    def failing_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 3:
            real_save(tensors, path)  # a part of the file is written, then the disk is full
            raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")
        real_save(tensors, path)

    def failing_write(self, text, *args, **kwargs):
        if self.name.startswith(".random_reinit.json.tmp-"):
            real_write(self, text[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, text, *args, **kwargs)

    if which == "safetensors":
        monkeypatch.setattr(jobs, "save_file", failing_save)
    else:
        monkeypatch.setattr(Path, "write_text", failing_write)
    args = ["find", str(recipe), "--workers", "1", "--out", "runs", "--experiment", f"diskfull-{which}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "cannot write" in lines[0] and "No space left on device" in lines[0], r.output
    assert "run the same command again" in lines[0]
    job_dir = next(Path("runs").iterdir()).resolve()
    assert not [p for p in job_dir.rglob("*") if ".tmp-" in p.name]
    exp = tracker.client.get_experiment_by_name(f"diskfull-{which}")
    assert "RUNNING" not in {run.info.status for run in tracker.client.search_runs([exp.experiment_id])}

    monkeypatch.undo()  # space freed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cli_env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("TICKETX_PLUGINS", cli_env["TICKETX_PLUGINS"])
    monkeypatch.chdir(job_dir.parent.parent)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert (job_dir / "results.csv").exists() and "resum" in r.output
