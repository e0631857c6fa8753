import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ticketx import ticket as T
from conftest import RECIPE
from ticketx.cli import main

def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_find_prints_progress_table_and_mlflow_link(cli_env, recipe, experiment):
    r = invoke("find", str(recipe), "--experiment", experiment, "--set", "train.steps=60")
    assert r.exit_code == 0, r.output
    assert "[r0 L00 dense] density 100.00%" in r.output
    assert "[r0 L01 random_prune] done: early stop at" in r.output
    lines = r.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("level  density"))
    assert [line.split()[2] for line in lines[header + 2 : header + 6]] == [
        "dense", "ticket", "random_reinit", "random_prune"]
    assert "#/experiments/" in r.output and "runs?workflowType=machine_learning" in r.output
    ticket_dir = next(Path("ticketx-runs").glob("toycli-*/r0/L01/ticket"))
    shown = invoke("show", str(ticket_dir))
    assert shown.exit_code == 0 and "density" in shown.output and "0.weight" in shown.output
    assert "50.00%" in shown.output


def test_tasks_lists_plugins(cli_env):
    r = invoke("tasks")
    assert r.exit_code == 0 and "toy  (TICKETX_PLUGINS (toy:ToyPlugin))" in r.output
    assert "gauss" in r.output


@pytest.mark.parametrize("args, match", [
    (["--set", "prune.rate=1.5"], "prune.rate must be in (0, 1), got 1.5"),
    (["--set", "train.stpes=5"], "did you mean train.steps?"),
    (["--set", "task.plugin=audio"], "unknown plugin 'audio'; installed plugins:"),
    (["--set", "task.name=cifar"], "plugin 'toy' has no task 'cifar'; its tasks: gauss"),
    (["--set", "task.colour=red"], "unknown toy option(s): ['colour']"),
    (["--set", "train.lr=[0.1,"], "is not a valid TOML value"),
])
def test_find_bad_input_clear_error_nonzero_exit(cli_env, recipe, args, match):
    r = invoke("find", str(recipe), *args)
    assert r.exit_code == 1 and match in r.output and "Traceback" not in r.output


def test_unreachable_tracking_server_fails_fast(cli_env, recipe, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    began = time.monotonic()
    r = invoke("find", str(recipe))
    assert r.exit_code == 1 and "MLflow tracking server http://127.0.0.1:9 is unreachable" in r.output
    assert time.monotonic() - began < 30


def test_show_rejects_a_broken_ticket(cli_env, tmp_path):
    (tmp_path / "t").mkdir()
    r = invoke("show", str(tmp_path / "t"))
    assert r.exit_code == 1 and "incomplete ticket, missing masks.safetensors" in r.output


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid`, from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in kids.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def run_cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "ticketx", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_subprocess_find_and_error(cli_env, recipe, tmp_path, experiment):
    r = run_cli(["find", str(recipe), "--experiment", experiment, "--set", "train.steps=60"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "random_reinit" in r.stdout and "MLflow run:" in r.stdout
    bad = run_cli(["find", str(tmp_path / "missing.toml")], cli_env, tmp_path)
    assert bad.returncode == 1 and "recipe not found" in bad.stderr and "Traceback" not in bad.stderr


def test_kill_9_then_rerun_resumes_to_the_same_results(cli_env, tmp_path, experiment):
    from mlflow import MlflowClient
    recipe = tmp_path / "long.toml"
    recipe.write_text(RECIPE.format(steps=1500))
    args = ["find", str(recipe), "--experiment", experiment]
    ref = run_cli([*args[:-1], experiment + "-ref", "--out", str(tmp_path / "ref")], cli_env, tmp_path)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen([sys.executable, "-m", "ticketx", *args, "--out", str(tmp_path / "job")],
                            env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # kill while level 1 trains: the dense arm is done, the ticket is not
        if "[r0 L01 ticket] density" in line:
            break
    workers = descendants(proc.pid)
    assert workers, "the default --workers (the core count) runs arms in worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "workers outlived the killed job"
    again = run_cli([*args, "--out", str(tmp_path / "job")], cli_env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "[r0 L00 dense] already done" in again.stdout

    def results(root):
        recs = json.loads(next(Path(root).glob("toycli-*/results.json")).read_text())
        return [{k: v for k, v in r.items() if k not in ("run_id", "seconds")} for r in recs]

    assert results(tmp_path / "job") == results(tmp_path / "ref")
    client = MlflowClient(cli_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 + 4 and {r.info.status for r in runs} == {"FINISHED"}
    ticket = T.load(next((tmp_path / "job").glob("toycli-*/r0/L01/ticket")))
    assert ticket.density == pytest.approx(0.5, abs=0.01)


def test_show_checks_the_ticket_against_its_model(cli_env, recipe, experiment, tmp_path):
    assert invoke("find", str(recipe), "--experiment", experiment, "--set", "train.steps=50").exit_code == 0
    ticket_dir = next(Path("ticketx-runs").glob("toycli-*/r0/L01/ticket"))
    r = invoke("show", str(ticket_dir))
    assert "fits model      yes: every tensor matches toy/gauss's model" in r.output
    # the same ticket claimed for a toy model of another width: every mismatch is named
    meta = json.loads((ticket_dir / T.META).read_text())
    meta["task"]["options"]["hidden"] = 16
    (ticket_dir / T.META).write_text(json.dumps(meta))
    r = invoke("show", str(ticket_dir))
    assert r.exit_code == 1 and "does not fit this model" in r.output
    assert "0.weight: ticket shape (32, 16), model shape (16, 16)" in r.output


def test_missing_dataset_names_path_and_layout_and_records_no_run(cli_env, tmp_path, experiment):
    pytest.importorskip("ticketx_vision")
    from mlflow import MlflowClient
    quickstart = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
    r = invoke("find", str(quickstart), "--experiment", experiment, "--data-root", str(tmp_path / "nodata"),
               "--set", "task.download=false")
    assert r.exit_code == 1
    assert f"MNIST not found in {tmp_path / 'nodata' / 'MNIST' / 'raw'}" in r.output
    assert "train-images-idx3-ubyte" in r.output and "TICKETX_DATA" in r.output
    assert MlflowClient(cli_env["MLFLOW_TRACKING_URI"]).get_experiment_by_name(experiment) is None


TRANSFER_RECIPE = """
name = "toyxfer"
description = "toy transfer onto 3 classes"
[task]
plugin = "toy"
name = "gauss"
classes = 3
data_seed = 7
[train]
steps = 60
batch_size = 32
lr = 0.01
eval_every = 30
"""


def test_transfer_by_run_id_and_errors(cli_env, recipe, tmp_path, experiment):
    from mlflow import MlflowClient
    assert invoke("find", str(recipe), "--experiment", experiment, "--set", "train.steps=60").exit_code == 0
    client = MlflowClient(cli_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("ticketx.kind") == "find")
    target = tmp_path / "xfer.toml"
    target.write_text(TRANSFER_RECIPE)
    r = invoke("transfer", f"{parent.info.run_id}@1", "--to", str(target), "--experiment", experiment + "-x",
               "--set", "train.lr=[0.01,0.003]")
    assert r.exit_code == 0, r.output
    assert "transferred - random_ticket" in r.output and "curves.png" in r.output
    header = next(line for line in r.output.splitlines() if line.startswith("level  density"))
    assert " lr " in header
    bad = invoke("transfer", f"{parent.info.run_id}@5", "--to", str(target))
    assert bad.exit_code == 1 and "has no level [5]" in bad.output
    bad = invoke("transfer", f"{parent.info.run_id}@1", "--to", str(target), "--set", "task.hidden=8")
    assert bad.exit_code == 1 and "0.weight: ticket shape (32, 16), model shape (8, 16)" in bad.output
    bad = invoke("transfer", f"{parent.info.run_id}@1", "--to", str(target), "--set", "train.lr=[]")
    assert bad.exit_code == 1 and "empty learning-rate grid" in bad.output


def test_transfer_subprocess_from_job_folder(cli_env, recipe, tmp_path, experiment):
    assert invoke("find", str(recipe), "--experiment", experiment, "--set", "train.steps=60").exit_code == 0
    job = next(Path("ticketx-runs").glob("toycli-*"))
    r = run_cli(["transfer", str(job), "--to", "toy/gauss", "--levels", "all", "--experiment", experiment + "-s",
                 "--set", "train.optimizer=sgd", "--set", "train.lr=0.1"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "masks_reinit" in r.stdout and "at 53.85% of weights" in r.stdout  # the 4-class head is dense
