from pathlib import Path

import pytest
import torch

from ticketx import config as C
from ticketx import masks as M
from ticketx import ticket as T
from ticketx.findjob import run_find
from ticketx.task import MetricSpec
from ticketx.ticket import TicketError
from ticketx.tracking import TrackingError
from ticketx.transferjob import Source, choose_lr, peek, resolve, run_transfer, target_config
from toy import ToyTask

FIND = {"name": "src", "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 100, "batch_size": 32, "lr": 0.01, "eval_every": 50},
        "prune": {"levels": 2, "rate": 0.5}}
TARGET = {"name": "tgt", "task": {"plugin": "toy", "name": "gauss", "classes": 3, "data_seed": 99},
          "train": {"steps": 60, "batch_size": 32, "lr": [0.01, 0.001], "eval_every": 30}}


@pytest.fixture(scope="module")
def found(tmp_path_factory, mlflow_uri):
    """A finished find job on the toy task (4 classes), shared by the tests of this module."""
    from ticketx.tracking import Tracker
    root = tmp_path_factory.mktemp("find")
    return run_find(C.from_dict(FIND), ToyTask("gauss", {}), Tracker(mlflow_uri), root=root,
                    experiment="transfer-source")


def target(**over):
    data = C.apply_overrides(TARGET, [f"{k}={v}" for k, v in over.items()])
    return C.from_dict(data, C.TransferConfig)


def target_task():
    return ToyTask("gauss", {"classes": 3, "data_seed": 99})


def test_resolve_forms(found, tracker, tmp_path):
    spec = MetricSpec()
    job = resolve(str(found.job_dir), tracker, spec, levels="all", workdir=tmp_path)
    assert [s.level for s in job] == [1, 2]
    one = resolve(str(found.job_dir / "r0" / "L02" / "ticket"), tracker, spec, levels=None, workdir=tmp_path)
    assert one[0].level == 2
    by_run = resolve(f"{found.parent_run_id}@2", tracker, spec, levels=None, workdir=tmp_path)
    assert by_run[0].level == 2 and by_run[0].where.startswith("runs:/")
    assert torch.equal(by_run[0].ticket.masks["0.weight"], one[0].ticket.masks["0.weight"])
    uri = resolve(by_run[0].where, tracker, spec, levels=None, workdir=tmp_path)
    assert uri[0].level == 2
    best = resolve(found.parent_run_id, tracker, spec, levels=None, workdir=tmp_path)
    scores = {r["level"]: r["at_early_stop"]["val_accuracy"] for r in found.records
              if r["arm"] == "ticket" and r["replicate"] == 0}
    assert [s.level for s in best] == [max(scores, key=scores.get)]  # best pruned level on validation
    from_folder = resolve(str(found.job_dir), tracker, spec, levels=None, workdir=tmp_path)
    assert [s.level for s in from_folder] == [s.level for s in best]  # the folder's records choose alike
    assert peek(found.parent_run_id, tracker, tmp_path).meta["level"] == 0


@pytest.mark.parametrize("ref, levels, match", [
    ("{job}", "7", r"has no level \[7\]; its levels: \[0, 1, 2\]"),
    ("{job}", "x", "levels must be 'all' or a comma-separated list"),
    ("{run}@9", None, r"find run .* has no level \[9\]"),
    ("0123456789abcdef0123456789abcdef", None, "no MLflow run 0123456789abcdef0123456789abcdef"),
    ("not-a-ticket", None, "is not a ticket folder, a find job folder, a runs:/ URI or an MLflow run id"),
    ("{ticket}", "all", "is a single ticket; --levels applies to a find job"),
])
def test_resolve_errors(found, tracker, tmp_path, ref, levels, match):
    ref = ref.format(job=found.job_dir, run=found.parent_run_id, ticket=found.job_dir / "r0" / "L01" / "ticket")
    with pytest.raises((TicketError, TrackingError), match=match):
        resolve(ref, tracker, MetricSpec(), levels=levels, workdir=tmp_path)


def run(found, tracker, tmp_path, experiment, cfg=None, levels="all", **kw):
    sources = resolve(str(found.job_dir), tracker, MetricSpec(), levels=levels, workdir=tmp_path)
    return run_transfer(cfg or target(), target_task(), sources, tracker, root=tmp_path / "out",
                        experiment=experiment, **kw)


def test_arms_masks_weights_and_head(found, tracker, tmp_path, experiment):
    result = run(found, tracker, tmp_path, experiment, cfg=target(**{"train.lr": 0.01}), levels="2")
    src = T.load(found.job_dir / "r0" / "L02" / "ticket")
    by = {r["arm"]: r for r in result.records}
    assert set(by) == {"transferred", "random_ticket", "masks_reinit", "dense"}
    # outside the head, the transferred masks are the ticket's; the re-initialised head stays dense
    assert by["transferred"]["layer_density"]["4.weight"] == 1.0
    for name in ("0.weight", "2.weight"):
        assert by["transferred"]["layer_density"][name] == pytest.approx(src.meta["layers"][0]["density"])
        assert by["random_ticket"]["layer_density"][name] == by["transferred"]["layer_density"][name]
    assert by["dense"]["density"] == 1.0
    # the rows carry the chosen learning rate, and the figure exists
    assert {r["lr"] for r in result.rows} == {0.01} and result.figure.exists()


def test_transferred_model_starts_from_the_ticket(found, tracker, tmp_path, experiment, monkeypatch):
    starts = {}
    original = ToyTask.train

    def spy(self, model, masks, plan, observer):
        starts[observer.info["arm"]] = ({k: v.clone() for k, v in model.state_dict().items()}, masks)
        return original(self, model, masks, plan, observer)

    monkeypatch.setattr(ToyTask, "train", spy)
    run(found, tracker, tmp_path, experiment, cfg=target(**{"train.lr": 0.01, "transfer.head": "pruned"}),
        levels="1")
    src = T.load(found.job_dir / "r0" / "L01" / "ticket")
    state, masks = starts["transferred"]
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(state[name], src.weights[name])  # survivors (and biases) are the ticket's
    fresh = target_task().build_model(0).state_dict()
    assert torch.equal(state["4.weight"], fresh["4.weight"])  # head: the target's own initialisation
    assert state["4.weight"].shape == (3, 32) != src.weights["4.weight"].shape
    head_density = next(x["density"] for x in src.meta["layers"] if x["name"] == "4.weight")
    assert float(masks["4.weight"].mean()) == pytest.approx(head_density, abs=1 / 96)  # "pruned" head
    reinit_state, reinit_masks = starts["masks_reinit"]
    assert torch.equal(reinit_masks["0.weight"], masks["0.weight"])
    assert not torch.equal(reinit_state["0.weight"], src.weights["0.weight"])
    rt_state, rt_masks = starts["random_ticket"]
    assert not torch.equal(rt_masks["0.weight"], masks["0.weight"])
    assert int(rt_masks["0.weight"].sum()) == int(masks["0.weight"].sum())


def test_lr_grid_mlflow_structure_and_resume(found, tracker, tmp_path, experiment):
    result = run(found, tracker, tmp_path, experiment, cfg=target(replicates=2), levels="1,2")
    # 2 lrs x 2 replicates x (dense + 2 levels x 3 arms)
    assert len(result.records) == 2 * 2 * 7
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.data.tags["ticketx.source_run_id"] == found.parent_run_id
    assert parent.data.params["source.levels"] == "1,2"
    assert f"#/experiments/{found.experiment_id}/runs/{found.parent_run_id}" in parent.data.tags["mlflow.note.content"]
    children = tracker.client.search_runs([result.experiment_id],
                                          f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(children) == 28 and {c.info.status for c in children} == {"FINISHED"}
    assert {"chosen_lr_L01_transferred", "chosen_lr_L02_random_ticket"} <= set(parent.data.metrics)
    again = run(found, tracker, tmp_path, experiment, cfg=target(replicates=2), levels="1,2")
    assert len(tracker.client.search_runs([result.experiment_id])) == 29
    assert [r["run_id"] for r in again.records] == [r["run_id"] for r in result.records]


def test_learning_rate_is_chosen_on_validation_not_test():
    def rec(lr, val, test):
        return {"level": 1, "arm": "transferred", "lr": lr,
                "at_early_stop": {"val_accuracy": val, "test_accuracy": test}}
    records = [rec(0.1, 0.90, 0.99), rec(0.01, 0.95, 0.50), rec(0.1, 0.90, 0.99), rec(0.01, 0.93, 0.50)]
    assert choose_lr(records, MetricSpec()) == {(1, "transferred"): 0.01}
    lower = MetricSpec(primary="perplexity", higher_is_better=False)
    recs = [{"level": 1, "arm": "a", "lr": lr, "at_early_stop": {"val_perplexity": v}} for lr, v in ((1, 50), (2, 40))]
    assert choose_lr(recs, lower) == {(1, "a"): 2}


def test_compare_adds_the_target_ticket(found, tracker, tmp_path, experiment):
    on_target = run_find(C.from_dict({**FIND, "name": "own", "task": TARGET["task"]}), target_task(), tracker,
                         root=tmp_path / "own", experiment=experiment + "-own")
    compare = resolve(str(on_target.job_dir), tracker, MetricSpec(), levels="all", workdir=tmp_path)
    result = run(found, tracker, tmp_path, experiment, cfg=target(**{"train.lr": 0.01}), levels="2",
                 compare=compare)
    own = next(r for r in result.records if r["arm"] == "target_ticket")
    assert own["density"] == pytest.approx(T.load(on_target.job_dir / "r0" / "L02" / "ticket").density)


def test_architecture_mismatch_names_tensors_shapes_and_head(found, tracker, tmp_path, experiment):
    cfg = target(**{"task.hidden": 16})
    sources = resolve(str(found.job_dir), tracker, MetricSpec(), levels="1", workdir=tmp_path)
    with pytest.raises(TicketError) as e:
        run_transfer(cfg, ToyTask("gauss", {"hidden": 16, "classes": 3}), sources, tracker, root=tmp_path,
                     experiment=experiment)
    msg = str(e.value)
    assert "0.weight: ticket shape (32, 16), model shape (16, 16)" in msg
    assert "2.weight: ticket shape (32, 32), model shape (16, 16)" in msg
    assert "the head rule re-initialised ['4.bias', '4.weight']" in msg
    assert "(found on toy/gauss) does not fit the target toy/gauss: 0.bias: ticket shape (32,)" in msg
    assert "{" not in msg  # no task dict pasted in (it was cut at the first ': ' inside its repr)
    assert tracker.client.get_experiment_by_name(experiment) is None  # nothing logged


def test_ticket_from_another_plugin(found, tracker, tmp_path):
    src = T.load(found.job_dir / "r0" / "L01" / "ticket")
    foreign = T.Ticket(src.masks, src.weights, {**src.meta, "task": {"plugin": "vision", "task": "mnist"}})
    with pytest.raises(TicketError, match="found on a task of plugin 'vision' .* cannot take it"):
        run_transfer(target(), target_task(), [Source(1, foreign, "x")], tracker, root=tmp_path)


def test_target_ticket_arm_needs_compare(found, tracker, tmp_path):
    sources = resolve(str(found.job_dir), tracker, MetricSpec(), levels="1", workdir=tmp_path)
    with pytest.raises(TicketError, match="the target_ticket arm needs --compare"):
        run_transfer(target(arms="['transferred', 'target_ticket']"), target_task(), sources, tracker,
                     root=tmp_path)


def test_empty_learning_rate_grid():
    with pytest.raises(C.ConfigError, match="train.lr is an empty learning-rate grid"):
        target(**{"train.lr": "[]"})


def test_failed_transfer_is_marked_failed(found, tracker, tmp_path, experiment, monkeypatch):
    monkeypatch.setattr(ToyTask, "train", lambda *a: (_ for _ in ()).throw(RuntimeError("target broke")))
    with pytest.raises(RuntimeError, match="target broke"):
        run(found, tracker, tmp_path, experiment, cfg=target(**{"train.lr": 0.01}), levels="1")
    exp = tracker.client.get_experiment_by_name(experiment)
    assert {r.info.status for r in tracker.client.search_runs([exp.experiment_id])} == {"FAILED"}


def test_target_by_task_name_keeps_source_options_and_training(found):
    src = T.load(found.job_dir / "r0" / "L01" / "ticket")
    cfg = target_config("toy/gauss", src, ["task.classes=3", "train.optimizer=sgd", "train.lr=[0.1,0.03]"])
    assert cfg.task.options["hidden"] == 32 and cfg.task.options["classes"] == 3
    assert cfg.train.steps == 100 and cfg.train.optimizer == "sgd" and cfg.lrs == (0.1, 0.03)
    with pytest.raises(C.ConfigError, match="--to takes a recipe file or PLUGIN/TASK"):
        target_config("gauss", src, [])


def test_source_task_tag_is_valid_json_within_the_tag_limit():
    import json

    from ticketx.transferjob import source_task_tag
    task = {"plugin": "nlp", "task": "word_lm", "options": {"vocab": [f"w{i}" for i in range(5000)], "hidden": 200}}
    tag = source_task_tag(task)
    assert len(tag) <= 5000
    shown = json.loads(tag)
    assert shown["options"]["hidden"] == 200 and shown["task"] == "word_lm"
    assert shown["options"]["vocab"] == "<5000 items; whole in the ticket's ticket.json>"
    small = {"plugin": "toy", "task": "blobs", "options": {"hidden": 8}}
    assert json.loads(source_task_tag(small)) == small
