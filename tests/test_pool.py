import json
from pathlib import Path

import pytest

from ticketx import config as C
from ticketx import pool
from ticketx.findjob import run_find
from toy import ToyTask

FIND = {"name": "pooltoy", "replicates": 2, "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 100, "batch_size": 32, "lr": 0.01, "eval_every": 50},
        "prune": {"levels": 2, "rate": 0.5}}


def cfg(**task):
    return C.from_dict({**FIND, "task": {**FIND["task"], **task}})


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("run_id", "seconds")} for r in records]


def test_order_keeps_input_order_where_dependencies_allow():
    units = {"a": (), "c": ("b",), "b": ("a",), "d": ()}
    assert pool._order(units) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="cycle"):
        pool._order({"x": ("y",), "y": ("x",)})


def test_workers_give_the_same_numbers_and_runs_as_one_at_a_time(tmp_path, tracker, experiment, toy_env):
    one = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "one", experiment=experiment + "1")
    two = run_find(cfg(), ToyTask("gauss", {}), tracker, root=tmp_path / "two", experiment=experiment + "2",
                   workers=2)
    assert strip(two.records) == strip(one.records)
    runs = [tracker.client.search_runs([r.experiment_id]) for r in (one, two)]
    assert len(runs[0]) == len(runs[1]) == 1 + 2 * 7
    assert {r.info.status for r in runs[1]} == {"FINISHED"}


# both replicates' level-2 random_prune fail; whichever a worker reaches first is the one named
@pytest.mark.parametrize("how, match", [("raise", r"\([01], 2, 'random_prune'\) failed in a worker: "
                                                 r"RuntimeError: toy task told to fail at level 2"),
                                        ("exit", r"a worker process died while running")])
def test_a_failing_worker_fails_the_job_and_keeps_other_results(tmp_path, tracker, experiment, toy_env,
                                                                 how, match):
    c = cfg(fail=f"2/random_prune/{how}")
    with pytest.raises(pool.WorkerError, match=match):
        run_find(c, ToyTask("gauss", {"fail": f"2/random_prune/{how}"}), tracker, root=tmp_path,
                 experiment=experiment, workers=2)
    job = next(tmp_path.glob("pooltoy-*"))
    finished = sorted(p.relative_to(job).as_posix() for p in job.glob("r*/L*/*.json"))
    assert "r0/L00/dense.json" in finished and "r0/L01/ticket.json" in finished
    assert "r0/L02/random_prune.json" not in finished
    exp = tracker.client.get_experiment_by_name(experiment)
    parent = next(r for r in tracker.client.search_runs([exp.experiment_id]) if "ticketx.kind" in r.data.tags)
    assert parent.info.status == "FAILED"
    record = json.loads((job / "r0" / "L01" / "ticket.json").read_text())
    assert record["arm"] == "ticket"  # finished work is intact and would be read back on a re-run


def test_transfer_with_workers_gives_the_same_numbers(tmp_path, tracker, experiment, toy_env):
    from ticketx.task import MetricSpec
    from ticketx.transferjob import resolve, run_transfer
    found = run_find(C.from_dict({**FIND, "replicates": 1}), ToyTask("gauss", {}), tracker, root=tmp_path,
                     experiment=experiment)
    sources = resolve(str(found.job_dir), tracker, MetricSpec(), levels="all", workdir=tmp_path / "f")
    target = C.from_dict({"name": "xf", "task": {"plugin": "toy", "name": "gauss", "classes": 3},
                          "train": {"steps": 60, "batch_size": 32, "lr": [0.01, 0.003], "eval_every": 30}},
                         C.TransferConfig)
    task = ToyTask("gauss", {"classes": 3})
    one = run_transfer(target, task, sources, tracker, root=tmp_path / "one", experiment=experiment + "1")
    two = run_transfer(target, task, sources, tracker, root=tmp_path / "two", experiment=experiment + "2",
                       workers=2)
    assert strip(two.records) == strip(one.records) and len(one.records) == 2 * (1 + 2 * 3)
    assert [r["lr"] for r in two.rows] == [r["lr"] for r in one.rows]
