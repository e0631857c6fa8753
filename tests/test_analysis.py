"""Analyses on cases with known answers, the report from a temporary MLflow store, instability on the toy."""

import csv
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ticketx import analysis as A
from ticketx import config as C
from ticketx import instability, report
from ticketx.cli import main
from ticketx.findjob import run_find
from toy import ToyTask


def test_mask_overlap_known_answers():
    a = {"w": torch.tensor([[1, 1, 0, 0]]), "v": torch.tensor([1, 0])}
    assert A.mask_overlap(a, a)["all"] == 1.0 and A.mask_overlap(a, a)["w"] == 1.0
    b = {"w": torch.tensor([[0, 0, 1, 1]]), "v": torch.tensor([1, 0])}
    r = A.mask_overlap(a, b)
    assert r["w"] == 0.0 and r["v"] == 1.0 and r["all"] == pytest.approx(1 / 5)
    c = {"w": torch.tensor([[1, 0, 1, 0]]), "v": torch.tensor([0, 0])}
    r = A.mask_overlap(a, c)
    assert r["w"] == pytest.approx(1 / 3) and r["v"] == 0.0  # v: a keeps one, c none: union 1, overlap 0
    # the random baseline: densities 1/2 and 1/2 -> 1/3
    assert r["random"] == pytest.approx((0.5 * 1 / 3) / (0.5 + 1 / 3 - 0.5 * 1 / 3))
    with pytest.raises(A.AnalysisError, match="only in the second"):
        A.mask_overlap(a, {**a, "extra": torch.ones(2)})
    with pytest.raises(A.AnalysisError, match="shape"):
        A.mask_overlap(a, {"w": torch.ones(1, 3), "v": a["v"]})


def test_random_masks_overlap_near_the_baseline():
    g = torch.Generator().manual_seed(0)
    a = {"w": (torch.rand(200, 200, generator=g) < 0.2).int()}
    b = {"w": (torch.rand(200, 200, generator=g) < 0.2).int()}
    r = A.mask_overlap(a, b)
    assert abs(r["all"] - r["random"]) < 0.01 and r["random"] == pytest.approx(0.04 / 0.36, abs=0.005)


def test_weight_movement_known_answers():
    w0 = {"w": torch.tensor([1.0, -2.0, 3.0, 4.0])}
    m = {"w": torch.tensor([1.0, 1.0, 1.0, 0.0])}
    same = A.weight_movement(w0, w0, m)["w"]
    assert same.relative_distance == 0.0 and same.sign_agreement == 1.0
    flipped = A.weight_movement(w0, {"w": -w0["w"]}, m)
    assert flipped["w"].relative_distance == pytest.approx(2.0) and flipped["w"].sign_agreement == 0.0
    # only surviving weights count: the pruned 4.0 moving to 0 changes nothing
    half = A.weight_movement(w0, {"w": torch.tensor([1.0, 2.0, 3.0, 0.0])}, m)["all"]
    assert half.relative_distance == pytest.approx(math.sqrt(16 / 14)) and half.sign_agreement == pytest.approx(2 / 3)
    assert set(A.movement_metrics(half and flipped)) == {"move_dist/w", "move_sign/w", "move_dist/all", "move_sign/all"}


def _line_model():
    model = nn.Linear(1, 1, bias=False)
    return model, {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}


def test_identical_networks_have_zero_barrier():
    model, a, _ = _line_model()
    curve = A.interpolation(model, a, a, lambda m: float(m.weight.detach()) ** 2 + 0.3)
    assert [alpha for alpha, _ in curve] == pytest.approx([i / 10 for i in range(11)])
    assert A.error_barrier(curve) == pytest.approx(0.0, abs=1e-12)


def test_constructed_pair_with_a_known_barrier():
    model, a, b = _line_model()
    before = model.weight.detach().clone()
    # error 1 - w^2: 0 at both ends (w = -1, 1), 1 at the midpoint (w = 0): barrier exactly 1
    curve = A.interpolation(model, a, b, lambda m: 1 - float(m.weight.detach()) ** 2, points=11)
    assert A.error_barrier(curve) == pytest.approx(1.0)
    assert torch.equal(model.weight, before)  # the model's own weights are restored
    # a convex error along the line lies under the chord: no barrier
    assert A.error_barrier(A.interpolation(model, a, b, lambda m: float(m.weight.detach()) ** 2)) == 0.0
    # the chord, not the mean of the ends: ends 0 and 1, linear error in between: no barrier
    assert A.error_barrier([(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]) == 0.0
    with pytest.raises(A.AnalysisError):
        A.interpolation(model, a, b, lambda m: 0.0, points=1)


FIND = {"name": "toyreport", "seed": 0, "replicates": 2,
        "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 100, "batch_size": 32, "lr": 0.01, "eval_every": 25},
        "prune": {"levels": 2, "rate": 0.5}}


@pytest.fixture(scope="module")
def job(tmp_path_factory, mlflow_uri):
    from ticketx.tracking import Tracker
    root = tmp_path_factory.mktemp("report-find")
    return run_find(C.from_dict(FIND), ToyTask("gauss", {}), Tracker(mlflow_uri), root=root,
                    experiment="report-source")


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_from_the_mlflow_store_and_from_the_job_folder(job, tracker, tmp_path):
    by_run = report.report(job.parent_run_id, tracker, tmp_path / "a")
    by_dir = report.report(str(job.job_dir), tracker, tmp_path / "b", log=False)
    (j1, files1), (j2, files2) = by_run[0], by_dir[0]
    names = {f.name for f in files1}
    assert names == {"report.csv", "metric.png", "early_stop.png", "gap.png", "movement.png"}
    assert {f.name for f in files2} == names
    rows1, rows2 = _csv(files1[0]), _csv(next(f for f in files2 if f.name == "report.csv"))
    assert [(r["level"], r["arm"]) for r in rows1] == [("0", "dense")] + [
        (str(level), arm) for level in (1, 2) for arm in ("ticket", "random_reinit", "random_prune")]
    # the same numbers whichever source they were read from
    for r1, r2 in zip(rows1, rows2):
        for key in ("density_pct_mean", "es_test_accuracy_mean", "early_stop_step_max", "es_gap_mean",
                    "move_dist_mean"):
            assert float(r1[key]) == pytest.approx(float(r2[key]))
    # means over the two replicates, of what each arm's record says
    ticket1 = [r for r in job.records if r["level"] == 1 and r["arm"] == "ticket"]
    row = next(r for r in rows1 if (r["level"], r["arm"]) == ("1", "ticket"))
    assert float(row["es_test_accuracy_mean"]) == pytest.approx(
        sum(r["at_early_stop"]["test_accuracy"] for r in ticket1) / 2)
    gap = [r["at_early_stop"]["trainset_accuracy"] - r["at_early_stop"]["test_accuracy"] for r in ticket1]
    assert float(row["es_gap_min"]) == pytest.approx(min(gap))
    assert float(row["density_pct_mean"]) == pytest.approx(50.0, abs=1)
    # logged to the parent run
    logged = {a.path for a in tracker.client.list_artifacts(job.parent_run_id, "report")}
    assert "report/metric.png" in logged and "report/report.csv" in logged


def test_report_by_experiment_and_errors(job, tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    r = CliRunner().invoke(main, ["report", "report-source", "--out", str(tmp_path), "--no-log"])
    assert r.exit_code == 0, r.output
    assert "find toyreport" in r.output and "metric.png" in r.output
    r = CliRunner().invoke(main, ["report", "no-such-experiment", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "neither a job folder" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, ["report", str(empty)])
    assert r.exit_code != 0 and "no job.json" in r.output


def test_movement_recorded_for_every_arm(job):
    for rec in job.records:
        assert 0 < rec["movement"]["move_dist/all"] < 10 and 0 <= rec["movement"]["move_sign/all"] <= 1


def test_overlap_command(job):
    a = job.job_dir / "r0" / "L02" / "ticket"
    b = job.job_dir / "r1" / "L02" / "ticket"
    r = CliRunner().invoke(main, ["overlap", str(a), str(a)])
    assert r.exit_code == 0, r.output
    same = {x.split()[0]: x.split()[1] for x in r.output.splitlines()[3:]}
    assert set(same) == {"0.weight", "2.weight", "4.weight", "all", "random"}
    assert all(same[k] == "1.0000" for k in ("0.weight", "2.weight", "4.weight", "all"))
    r = CliRunner().invoke(main, ["overlap", str(a), str(b)])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("all"))
    assert 0 < float(line.split()[1]) < 1


def test_instability_on_the_toy_task(tmp_path):
    cfg = C.from_dict({**FIND, "train": {**FIND["train"], "steps": 60}})
    task = ToyTask("gauss", {})
    results = instability.run(cfg, task, [0, 30], points=5)
    assert [p.k for p in results] == [0, 30]
    for p in results:
        assert p.barrier >= 0 and len(p.curve) == 5
        assert p.curve[0][1] == pytest.approx(p.end_errors[0])
    files = instability.write(results, "1 - val_accuracy", tmp_path, "toy")
    assert [f.name for f in files] == ["instability.csv", "instability.png"]
    assert len(_csv(files[0])) == 10
    with pytest.raises(Exception, match="rewind steps must be in"):
        instability.run(cfg, task, [60])
    with pytest.raises(Exception, match="different data orders"):
        instability.run(cfg, task, [0], data_seeds=(1, 1))


def test_instability_command(cli_env, recipe, tmp_path):
    r = CliRunner().invoke(main, ["instability", str(recipe), "--rewind", "0,50", "--points", "3",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    lines = [x.split() for x in r.output.splitlines() if x.strip().startswith(("0 ", "50 "))]
    assert [x[0] for x in lines] == ["0", "50"] and all(float(x[1]) >= 0 for x in lines)
    (first,) = (tmp_path / "out").glob("instability-toycli-*")
    assert (first / "instability.png").exists()
    csv_before = (first / "instability.csv").read_text()
    r = CliRunner().invoke(main, ["instability", str(recipe), "--rewind", "50", "--points", "3",
                                  "--out", str(tmp_path / "out")])  # another question: another folder
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").glob("instability-toycli-*"))) == 2
    assert (first / "instability.csv").read_text() == csv_before  # the first run's results kept
    r = CliRunner().invoke(main, ["instability", str(recipe), "--rewind", "zero"])
    assert r.exit_code != 0 and "comma-separated integers" in r.output
    r = CliRunner().invoke(main, ["instability", str(recipe), "--rewind", "100"])
    assert r.exit_code != 0 and "rewind steps must be in [0, train.steps = 100)" in r.output
