"""Criterion arms and early-bird tickets in a find job: exact densities, the same starting weights, the
ablations, what MLflow, the job folder, transfer, report and the CLI show of them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ticketx import arms as A
from ticketx import config as C
from ticketx import masks as M
from ticketx import pruning as P
from ticketx import ticket as T
from ticketx.cli import _early_bird_line, _gap_line, _table
from ticketx.findjob import ARM_ORDER, run_find, summarise
from ticketx.report import from_job_dir, rows as report_rows
from ticketx.task import MetricSpec, Plan, TaskError
from ticketx.transferjob import resolve
from toy import ToyTask

BASE = {"name": "criteria", "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 60, "batch_size": 32, "lr": 0.01, "eval_every": 30},
        "prune": {"levels": 1, "rate": 0.7, "layer_rates": {"4.weight": 0.25}, "scoring_per_class": 5}}
ARMS = ["ticket", "snip", "snip:shuffled", "snip:reinit", "synflow:inverted", "random_erk"]


@pytest.fixture(scope="module")
def job(tmp_path_factory, mlflow_uri):
    from ticketx.tracking import Tracker
    cfg = C.from_dict(C.apply_overrides(BASE, [f"arms={ARMS}"]))
    root = tmp_path_factory.mktemp("criteria")
    tracker = Tracker(mlflow_uri)
    result = run_find(cfg, ToyTask("gauss", {}), tracker, root=root, experiment="criteria-arms")
    return cfg, result, tracker


def level1(result) -> dict[str, dict]:
    return {r["arm"]: r for r in result.records if r["level"] == 1}


def kept(layer_density: dict[str, float], model) -> int:
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    return sum(round(d * sizes[n]) for n, d in layer_density.items())


def test_every_criterion_arm_keeps_exactly_the_tickets_count_with_its_own_allocation(job):
    _, result, _ = job
    model = ToyTask("gauss", {}).build_model(0)
    by = level1(result)
    counts = {arm: kept(r["layer_density"], model) for arm, r in by.items()}
    assert set(counts.values()) == {counts["ticket"]}, counts
    # each criterion spreads the count its own way (IMP's layer_rates are not theirs)
    assert by["snip"]["layer_density"] != by["ticket"]["layer_density"]
    assert by["random_erk"]["layer_density"] != by["snip"]["layer_density"]


def test_criterion_masks_are_cut_from_the_rewind_weights_with_the_recorded_sample(job):
    cfg, result, _ = job
    task = ToyTask("gauss", {})
    snip = T.load(result.job_dir / "r0" / "L01" / "snip.ticket")
    theta0 = load_file(str(result.job_dir / "r0" / "rewind.safetensors"))
    model = task.build_model(0)
    model.load_state_dict(theta0)
    batches, loss = P.scoring_sample(task, 5, seed=cfg.order_seed(0))
    ticket = T.load(result.job_dir / "r0" / "L01" / "ticket")
    n_keep = sum(int(m.sum()) for m in ticket.masks.values())
    again = P.cut(P.CRITERIA["snip"], model, M.ones(task.prunable(model)), n_keep, batches=batches, loss=loss)
    assert all(torch.equal(again[n], snip.masks[n]) for n in again)
    for name, w in snip.weights.items():  # the arm starts from θ0 (masked), as the ticket does
        assert torch.equal(w, theta0[name] * snip.masks.get(name, torch.ones_like(w)))
    assert snip.meta["arm"] == "snip" and snip.meta["criterion"] == "snip"
    assert snip.meta["scoring"] == {"scoring_per_class": "5", "scoring_seed": "0", "scoring_examples": "20"}


def test_ablations_shuffle_within_layers_and_reinitialise(job):
    _, result, _ = job
    d = result.job_dir / "r0" / "L01"
    snip, shuffled, reinit = (T.load(d / f"{a}.ticket") for a in ("snip", "snip-shuffled", "snip-reinit"))
    assert M.layer_density(shuffled.masks) == M.layer_density(snip.masks)  # every layer's count kept
    assert not all(torch.equal(shuffled.masks[n], snip.masks[n]) for n in snip.masks)
    assert all(torch.equal(reinit.masks[n], snip.masks[n]) for n in snip.masks)
    assert not torch.equal(reinit.weights["0.bias"], snip.weights["0.bias"])  # fresh weights
    assert level1(result)["snip:reinit"]["init_seed"] == str(A.FRESH_SEED + 1)  # random_reinit's fresh draw


def test_child_runs_record_criterion_ablation_and_scoring_sample_and_log_the_ticket(job):
    _, result, tracker = job
    children = {r.data.params["arm"]: r for r in tracker.child_runs(result.experiment_id, result.parent_run_id)
                if r.data.params.get("level") == "1"}
    p = children["snip:shuffled"].data.params
    assert (p["criterion"], p["ablation"], p["scoring_per_class"], p["scoring_examples"]) == (
        "snip", "shuffled", "5", "20")
    assert children["synflow:inverted"].data.params["scoring_rounds"] == "100"
    assert children["ticket"].data.params["criterion"] == "magnitude"
    artifacts = [a.path for a in tracker.client.list_artifacts(children["snip"].info.run_id, "ticket")]
    assert "ticket/masks.safetensors" in artifacts


def test_a_criterion_arms_masks_transfer_like_a_ticket(job, tmp_path):
    _, result, tracker = job
    (source,) = resolve(str(result.job_dir), tracker, MetricSpec(), levels="1", workdir=tmp_path, arm="snip")
    snip = T.load(result.job_dir / "r0" / "L01" / "snip.ticket")
    assert all(torch.equal(source.ticket.masks[n], snip.masks[n]) for n in snip.masks)
    (by_run,) = resolve(result.parent_run_id, tracker, MetricSpec(), levels="1", workdir=tmp_path, arm="snip")
    assert all(torch.equal(by_run.ticket.masks[n], snip.masks[n]) for n in snip.masks)
    with pytest.raises(T.TicketError, match=r"--arm must be a find arm with masks of its own \(ticket, snip, "):
        resolve(str(result.job_dir), tracker, MetricSpec(), levels="1", workdir=tmp_path, arm="random_prune")


def test_show_names_the_arm_and_export_refuses_the_ticket_arms_trained_weights(job, toy_env):
    from click.testing import CliRunner

    from ticketx.cli import main
    _, result, _ = job
    folder = result.job_dir / "r0" / "L01" / "synflow-inverted.ticket"
    shown = CliRunner().invoke(main, ["show", str(folder)])
    assert shown.exit_code == 0 and "arm             synflow:inverted" in shown.output
    assert "ablation        inverted" in shown.output
    r = CliRunner().invoke(main, ["export", str(folder), "--out", str(result.job_dir / "x.pt"), "--weights", "trained"])
    assert r.exit_code == 1 and "is the synflow:inverted arm's ticket, whose trained weights" in r.output


def test_report_table_and_cli_summary_name_every_arm(job):
    _, result, _ = job
    rows = report_rows(from_job_dir(result.job_dir))
    at1 = {r["arm"]: r for r in rows if r["level"] == 1}
    assert list(at1) == ARMS  # in the arms table's order
    assert (at1["snip:shuffled"]["criterion"], at1["snip:shuffled"]["ablation"]) == ("snip", "shuffled")
    assert (at1["ticket"]["criterion"], at1["ticket"]["ablation"]) == ("imp", "none")
    summary = summarise(result.records, result.metrics, order=ARM_ORDER)
    gap = _gap_line(summary, "accuracy", True)
    assert all(f" {arm} by " in gap or f"ties {arm} (" in gap for arm in ARMS[1:])
    alone = [r for r in summary if r["arm"] in ("dense", "ticket")]
    assert _gap_line(alone, "accuracy", True) == ""  # a ticket with nothing to compare is no summary line


def test_the_summary_line_says_ties_beats_and_does_not_beat():
    rows = [{"level": 1, "arm": arm, "density": 0.5, "es_test_accuracy_mean": acc}
            for arm, acc in (("ticket", 0.9), ("snip", 0.9), ("synflow", 0.95), ("random_prune", 0.85))]
    assert _gap_line(rows, "accuracy", True) == (
        "\nat 50.00% of weights, the ticket (test accuracy at early stop) ties snip (+0.00 points), "
        "does not beat synflow by -5.00 points, beats random_prune by +5.00 points")


EARLY = ["arms=['ticket', 'random_prune']", "prune.levels=2", "train.steps=300", "train.eval_every=100",
         "prune.early_bird={every=20, window=3, distance=0.15, stop=true}"]


def test_early_bird_stops_the_chain_and_prunes_from_those_weights(tmp_path, tracker, experiment):
    cfg = C.from_dict(C.apply_overrides(BASE, EARLY))
    task = ToyTask("gauss", {})
    result = run_find(cfg, task, tracker, root=tmp_path, experiment=experiment)
    by = {(r["level"], r["arm"]): r for r in result.records}
    dense, t1, t2 = by[(0, "dense")], by[(1, "ticket")], by[(2, "ticket")]
    assert dense["early_bird_step"] is not None and dense["steps_trained"] == dense["early_bird_step"] < 300
    assert t1["steps_trained"] == t1["early_bird_step"] < 300
    assert t2["steps_trained"] == 300  # the last level's ticket: nothing is cut from it, it trains in full
    assert "steps_trained" not in by[(1, "random_prune")]  # controls train in full and watch nothing
    # level 1 is cut from the dense weights of the early-bird iteration: those of a run told to stop there
    short = task.build_model(0)
    task.train(short, {}, Plan(**{**cfg.plan(0).__dict__, "steps": dense["early_bird_step"]}), _Quiet())
    trained = load_file(str(result.job_dir / "r0" / "L00" / "trained.safetensors"))
    assert all(torch.equal(trained[k], v) for k, v in short.state_dict().items())
    run = tracker.client.get_run(dense["run_id"])
    assert run.data.metrics["early_bird_step"] == dense["early_bird_step"]
    rows = summarise(result.records, result.metrics, order=ARM_ORDER)
    line = _early_bird_line(rows, 300, 0)
    spent = dense["steps_trained"] + t1["steps_trained"] + 300
    assert f"trained {spent:,} of 900 steps ({100 * (1 - spent / 900):.1f}% saved)" in line
    assert "early-bird it" in _table(rows, "accuracy").splitlines()[0]


class _Quiet:
    def on_step(self, step, model):
        pass

    def on_eval(self, step, metrics):
        pass


def test_an_rl_like_task_without_data_refuses_snip_before_any_run(tmp_path, tracker, experiment, monkeypatch):
    monkeypatch.delattr(ToyTask, "scoring_batches")
    cfg = C.from_dict(C.apply_overrides(BASE, ["arms=['ticket', 'random_erk', 'snip']"]))
    with pytest.raises(TaskError, match=r"^toy/gauss offers no scoring data"):
        run_find(cfg, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert tracker.client.get_experiment_by_name(experiment) is None
