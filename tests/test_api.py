"""The Python API (`ticketx.find`, `ticketx.transfer`, `ticketx.load_ticket`) on the toy plugin: the CLI's
numbers, records and tables as DataFrames, str or Path, and the CLI's data-root and tracking rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ticketx
from ticketx import plugins
from ticketx.config import ConfigError

RECIPE = {"name": "api", "task": {"plugin": "toy", "name": "gauss"},
          "train": {"steps": 80, "batch_size": 32, "lr": 0.01, "eval_every": 40},
          "prune": {"levels": 2, "rate": 0.5}}


@pytest.fixture()
def found(tmp_path, toy_env, mlflow_uri):
    return ticketx.find(RECIPE, {"replicates": 1}, out=str(tmp_path / "runs"), workers=1, tracking_uri=mlflow_uri,
                        progress=False)


def test_find_from_a_dict_gives_records_a_table_and_a_frame(found, tracker):
    assert found.kind == "find" and found.job_dir.parent.name == "runs"
    assert len(found.records) == 1 + 2 * 3
    table = found.table()
    assert list(table["arm"]) == ["dense", "ticket", "random_reinit", "random_prune"] * 1 + \
        ["ticket", "random_reinit", "random_prune"] and set(table["level"]) == {0, 1, 2}
    assert table.loc[table["level"] == 2, "density"].round(4).tolist() == [0.25] * 3
    frame = found.frame()
    assert len(frame) == 7 and "at_early_stop.test_accuracy" in frame.columns
    assert frame["at_early_stop.test_accuracy"].between(0, 1).all()
    # the same job as results.json and the MLflow parent run say
    assert json.loads((found.job_dir / "results.json").read_text()) == found.records
    assert tracker.client.get_run(found.run_id).info.status == "FINISHED"


def test_find_from_a_recipe_file_matches_the_dict_and_resumes(found, tmp_path, toy_env, mlflow_uri):
    recipe = tmp_path / "api.toml"
    recipe.write_text('name = "api"\n[task]\nplugin = "toy"\nname = "gauss"\n[train]\nsteps = 80\nbatch_size = 32\n'
                      'lr = 0.01\neval_every = 40\n[prune]\nlevels = 2\nrate = 0.5\n')
    again = ticketx.find(recipe, ["replicates=1"], out=tmp_path / "runs", workers=1, tracking_uri=mlflow_uri,
                         progress=False)  # the same job: read back, nothing trained
    assert again.job_dir == found.job_dir and again.run_id == found.run_id
    assert again.records == found.records


def test_load_ticket_picks_the_best_validated_level_or_the_one_named(found):
    by_level = {r["level"]: r for r in found.records if r["arm"] in ("ticket", "dense")}
    best = max((lv for lv in by_level if lv > 0), key=lambda lv: by_level[lv]["at_early_stop"]["val_accuracy"])
    ticket = ticketx.load_ticket(str(found.job_dir))
    assert ticket.meta["level"] == best
    two = found.ticket(level=2)
    assert two.meta["level"] == 2 and two.density == pytest.approx(0.25, abs=0.01)
    assert all(torch.equal(two.masks[k], ticketx.load_ticket(found.job_dir / "r0" / "L02" / "ticket").masks[k])
               for k in two.masks)


def test_transfer_from_a_find_result(found, tmp_path, toy_env, mlflow_uri):
    moved = ticketx.transfer(found, to="toy/gauss", overrides={"task.data_seed": 7, "train.steps": 40},
                             levels=[1, 2], out=tmp_path / "runs", workers=1, tracking_uri=mlflow_uri,
                             progress=False)
    assert moved.kind == "transfer"
    assert {r["level"] for r in moved.records if r["arm"] == "transferred"} == {1, 2}
    assert set(moved.table()["arm"]) == {"transferred", "random_ticket", "masks_reinit", "dense"}
    with pytest.raises(ValueError, match="a transfer job makes no tickets"):
        moved.ticket()


def test_the_data_root_follows_the_cli_rule(found, tmp_path, toy_env, mlflow_uri, monkeypatch):
    seen = []
    make = plugins.make_task

    def spy(*args, **kwargs):
        seen.append(kwargs["data_root"])
        return make(*args, **kwargs)

    monkeypatch.setattr(plugins, "make_task", spy)
    monkeypatch.setenv("TICKETX_DATA", str(tmp_path / "datasets"))
    ticketx.find(RECIPE, {"replicates": 1}, out=tmp_path / "runs", workers=1, tracking_uri=mlflow_uri, progress=False)
    ticketx.find(RECIPE, {"replicates": 1}, out=tmp_path / "runs", workers=1, tracking_uri=mlflow_uri, progress=False,
                 data_root="~/elsewhere")
    assert seen == [tmp_path / "datasets", Path.home() / "elsewhere"]


def test_errors_are_the_clis_one_line_errors(tmp_path, toy_env, mlflow_uri):
    with pytest.raises(ConfigError, match=re.escape("recipe not found: missing.toml")):
        ticketx.find("missing.toml", tracking_uri=mlflow_uri)
    with pytest.raises(ConfigError, match="prune.rate"):
        ticketx.find(RECIPE, {"prune.rate": 2.0}, tracking_uri=mlflow_uri)


def test_a_progress_callable_sees_every_arm(tmp_path, toy_env, mlflow_uri):
    events = []
    ticketx.find({**RECIPE, "prune": {"levels": 1, "rate": 0.5}}, out=tmp_path / "runs", workers=1,
                 tracking_uri=mlflow_uri, progress=lambda event, info: events.append((event, info.get("arm"))))
    assert sorted(arm for event, arm in events if event == "done") == [
        "dense", "random_prune", "random_reinit", "ticket"]


def _doc_example() -> str:
    text = (Path(__file__).parents[1] / "docs" / "API.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_docs_example_runs_as_pasted(tmp_path, mlflow_uri):
    """docs/API.md's first example, run as a script from the repository root on the real MNIST and
    Fashion-MNIST (TICKETX_DATA as `make test` sets it), its job folder in a temporary folder."""
    import os
    import subprocess
    import sys

    data = os.environ.get("TICKETX_DATA") or str(Path(__file__).parents[2] / "shared" / "data")
    if not (Path(data) / "MNIST").exists() or not (Path(data) / "FashionMNIST").exists():
        pytest.skip(f"MNIST and Fashion-MNIST are not under {data}")
    script = tmp_path / "example.py"
    script.write_text(_doc_example())
    env = {**os.environ, "TICKETX_DATA": data, "MLFLOW_TRACKING_URI": mlflow_uri, "TICKETX_OUT": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, str(script)], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"ticket: 50\.\d% of weights, level 1", out), out
    for arm in ("dense", "ticket", "random_reinit", "random_prune", "transferred", "random_ticket", "masks_reinit"):
        assert re.search(rf"\b{arm}\b", out), arm
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the find job and the transfer job
