"""Where a command writes and where it records: unwritable folders, tracking stores that cannot be used,
two jobs creating one store, and the permissions of what a job writes.

Every command checks its output folder and its tracking store before it trains or opens a run, and says
what is wrong in one line (exit status 1, `Error: ...`, no traceback). Run as root, `chmod 0o555` stops
nothing, so a read-only folder here is a read-only tmpfs mounted for the test (EROFS), a path under a
regular file (ENOTDIR), and, in real processes, a 0o555 folder written to as the user nobody (EACCES).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import HERE, RECIPE, TOY_ENV
from ticketx import checkpoint
from ticketx import config as C
from ticketx import ticket as T
from ticketx.cli import main
from ticketx.files import FileWriteError, check_writable, umask
from ticketx.findjob import run_find
from ticketx.tracking import Tracker, TrackingError
from toy import ToyTask

FIND = {"name": "toystore", "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 40, "batch_size": 32, "lr": 0.01, "eval_every": 20},
        "prune": {"levels": 1, "rate": 0.5}}


def invoke(*args: str):
    """The CLI in this process; an exception that escapes it fails the test (it would be a traceback)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_error_line(r, *contains: str) -> str:
    """The single `Error: ...` line a refused command prints, checked."""
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 1, r.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    for text in contains:
        assert text in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str):
    root = tmp_path_factory.mktemp("store-find")
    return run_find(C.from_dict(FIND), ToyTask("gauss", {}), Tracker(mlflow_uri), root=root,
                    experiment="storage-errors-source")


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy task refuses to train: a command refused up front never gets there (--workers 1 trains in
    this process)."""
    def refuse(*args, **kwargs):
        raise AssertionError("trained before the command was refused")
    monkeypatch.setattr(ToyTask, "train", refuse)


@contextlib.contextmanager
def read_only_folder(parent: Path) -> Iterator[Path]:
    """A folder nobody can write in: a read-only tmpfs as root (where chmod stops nothing), else 0o555."""
    folder = parent / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"root cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(params=["read-only", "under-a-file"])
def unwritable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An --out that cannot be written: in a read-only folder (EROFS or EACCES), or under a regular file
    (ENOTDIR). Neither exists yet, as with a fresh --out."""
    if request.param == "under-a-file":
        (tmp_path / "afile").write_text("")
        yield tmp_path / "afile" / "out"
        return
    with read_only_folder(tmp_path) as folder:
        yield folder / "out"


def command(name: str, job, out: Path, recipe: Path, experiment: str) -> list[str]:
    ticket = job.job_dir / "r0" / "L01" / "ticket"
    return {
        "find": ["find", str(recipe), "--workers", "1", "--experiment", experiment, "--out", str(out)],
        "transfer": ["transfer", str(job.job_dir), "--to", "toy/gauss", "--workers", "1", "--experiment",
                     experiment, "--out", str(out)],
        "report": ["report", str(job.job_dir), "--out", str(out)],
        "instability": ["instability", str(recipe), "--rewind", "0", "--points", "3", "--experiment", experiment,
                        "--out", str(out)],
        "export": ["export", str(ticket), "--out", str(out / "model.pt")],
    }[name]


# --- an output folder that cannot be written ---------------------------------------------------------

@pytest.mark.parametrize("name", ["find", "transfer", "report", "instability", "export"])
def test_an_unwritable_out_is_one_line_before_any_run_or_training(name, job, unwritable, cli_env, recipe,
                                                                  experiment, mlflow_uri, no_training):
    r = invoke(*command(name, job, unwritable, recipe, experiment))
    one_error_line(r, "cannot write", str(unwritable.parent))
    assert not unwritable.exists()
    assert Tracker(mlflow_uri).find_experiment(experiment) is None  # no run opened, none left RUNNING


def test_check_writable_names_the_folder_and_creates_nothing(tmp_path: Path):
    target = tmp_path / "a" / "b"
    assert check_writable(target, "things") == target
    assert list(tmp_path.iterdir()) == []  # checked in tmp_path, the nearest folder that exists
    (tmp_path / "f").write_text("")
    with pytest.raises(FileWriteError, match=rf"cannot write things in {tmp_path / 'f' / 'x'}: .*f is a file"):
        check_writable(tmp_path / "f" / "x", "things")
    with read_only_folder(tmp_path) as folder:
        with pytest.raises(FileWriteError, match=rf"cannot write things in {folder}: (Read-only file system|"
                                                 "Permission denied)"):
            check_writable(folder, "things")


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
@pytest.mark.parametrize("name", ["find", "instability"])
def test_a_folder_without_write_permission_as_a_real_process(name, job):
    """EACCES, which root never meets: the command runs as the user nobody (or as this user, not root)."""
    base = Path(tempfile.mkdtemp(prefix="ticketx-perm-"))  # outside pytest's owner-only tmp folders
    try:
        base.chmod(0o777)  # nobody needs to create the MLflow store here
        recipe = base / "toy.toml"
        recipe.write_text(RECIPE.format(steps=40))
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        out = locked / "out"
        env = {**os.environ, **TOY_ENV, "HOME": str(base), "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
               "TICKETX_DATA": str(base / "data")}
        prefix = NOBODY if os.geteuid() == 0 else []
        args = {"find": ["find", str(recipe), "--workers", "1", "--out", str(out)],
                "instability": ["instability", str(recipe), "--rewind", "0", "--points", "3", "--out", str(out)]}
        done = subprocess.run([*prefix, sys.executable, "-m", "ticketx", *args[name]], cwd=base, env=env,
                              capture_output=True, text=True, timeout=120)
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        assert done.returncode == 1, done.stderr
        assert len(lines) == 1 and lines[0].startswith("Error: cannot write"), done.stderr
        assert str(out) in lines[0] and "Permission denied" in lines[0] and done.stdout == ""
        assert not (base / "mlflow.db").exists()  # refused before the store was opened
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- a tracking store that cannot be used ------------------------------------------------------------

STORE_COMMANDS = ["find", "transfer", "report", "report-experiment", "instability"]


@pytest.mark.parametrize("uri_kind", ["closed-port", "bogus-scheme"])
@pytest.mark.parametrize("name", STORE_COMMANDS)
def test_a_store_that_cannot_be_used_is_one_line_naming_it(name, uri_kind, job, cli_env, recipe, experiment,
                                                           tmp_path, monkeypatch, no_training):
    uri = f"http://127.0.0.1:{free_port()}" if uri_kind == "closed-port" else "bogus://x"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = (["report", "storage-errors-source", "--out", str(tmp_path / "r")] if name == "report-experiment"
            else command(name, job, tmp_path / "out", recipe, experiment))
    began = time.monotonic()
    r = invoke(*args)
    line = one_error_line(r, uri)
    assert time.monotonic() - began < 10
    if uri_kind == "bogus-scheme":
        assert "'bogus' is not a scheme MLflow supports" in line and "sqlite:///" in line
    else:
        assert "unreachable" in line
    if name == "report":  # a job folder: the report can still be written without the store
        assert "--no-log" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["show", "export"])
def test_commands_that_never_use_the_store_ignore_a_bad_one(name, job, cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    ticket = job.job_dir / "r0" / "L01" / "ticket"
    r = invoke(name, str(ticket), *(["--out", str(tmp_path / "m.pt")] if name == "export" else []))
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output


def test_instability_against_a_silent_server_fails_before_training(cli_env, recipe, experiment, tmp_path,
                                                                    monkeypatch, no_training):
    """A server that accepts connections and never answers: the reachability check's 5 s, not MLflow's
    retries after training (8.9 s of urllib3's text before)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        began = time.monotonic()
        r = invoke("instability", str(recipe), "--rewind", "0", "--points", "3", "--out", str(tmp_path / "o"))
        one_error_line(r, uri, "unreachable", "timed out")
        assert time.monotonic() - began < 15
    assert "urllib3" not in r.output and "Max retries" not in r.output


@pytest.mark.parametrize("where", ["under-a-file", "read-only", "a-folder"])
def test_a_sqlite_store_that_cannot_be_created_or_opened_is_one_line_at_once(where, tmp_path):
    if where == "under-a-file":
        (tmp_path / "afile").write_text("")
        db, ctx = tmp_path / "afile" / "mlflow.db", contextlib.nullcontext(tmp_path)
    elif where == "read-only":
        ctx = read_only_folder(tmp_path)
    else:
        (tmp_path / "mlflow.db").mkdir()
        db, ctx = tmp_path / "mlflow.db", contextlib.nullcontext(tmp_path)
    with ctx as folder:
        if where == "read-only":
            db = folder / "mlflow.db"
        began = time.monotonic()
        with pytest.raises(TrackingError, match=rf"cannot open the MLflow tracking store 'sqlite:///{db}'") as e:
            Tracker(f"sqlite:///{db}")
        assert time.monotonic() - began < 5  # not MLflow's ~100 s of retries
        assert "\n" not in str(e.value) and "[SQL:" not in str(e.value)


def test_bogus_uri_through_the_environment_says_where_it_came_from(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    with pytest.raises(TrackingError, match=r"'bogus://x' \(from MLFLOW_TRACKING_URI\): 'bogus' is not a scheme "
                                            r"MLflow supports; use sqlite:///"):
        Tracker()


# --- report says where it logged ---------------------------------------------------------------------

def test_report_says_where_it_logged_or_why_not(job, cli_env, tmp_path, monkeypatch, mlflow_uri):
    r = invoke("report", str(job.job_dir), "--out", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert f"logged to MLflow run {job.parent_run_id} under report/ ({mlflow_uri})" in r.output
    r = invoke("report", str(job.job_dir), "--out", str(tmp_path / "b"), "--no-log")
    assert r.exit_code == 0 and "not logged to MLflow (--no-log)" in r.output, r.output
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    r = invoke("report", str(job.job_dir), "--out", str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    assert f"not logged to MLflow: {other} has no run {job.parent_run_id}" in r.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")  # a job folder with --no-log needs no store
    r = invoke("report", str(job.job_dir), "--out", str(tmp_path / "d"), "--no-log")
    assert r.exit_code == 0 and (tmp_path / "d").is_dir(), r.output


# --- two jobs creating one store ---------------------------------------------------------------------

CREATE = """
import os, sys, time
from pathlib import Path
from ticketx.tracking import Tracker
ready = Path(sys.argv[2])
(ready / str(os.getpid())).touch()
deadline = time.monotonic() + 60
while len(list(ready.iterdir())) < int(sys.argv[3]) and time.monotonic() < deadline:
    time.sleep(0.001)  # every process past its imports, then all at once
try:
    Tracker(f"sqlite:///{sys.argv[1]}").experiment("together")
    print("ok")
except Exception as e:
    print("FAILED", type(e).__name__, e)
"""


@pytest.mark.parametrize("trial", range(2))
def test_four_processes_creating_one_sqlite_store_together_all_succeed(trial, tmp_path):
    """Without the lock, 34 of 40 such processes failed in 10 trials here (every trial had failures):
    alembic's `duplicate column name: step`, `table experiments already exists`, ..."""
    db, ready = tmp_path / "mlflow.db", tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(HERE)}
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(db), str(ready), "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [out.strip() for out, _ in results] == ["ok"] * 4, results
    assert [e.name for e in Tracker(f"sqlite:///{db}").client.search_experiments()].count("together") == 1


# --- permissions -------------------------------------------------------------------------------------

def modes(root: Path) -> tuple[set[int], set[int]]:
    """The permission bits of every file and every folder under `root` (itself included)."""
    files, dirs = set(), {stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        (dirs if path.is_dir() else files).add(stat.S_IMODE(path.stat().st_mode))
    return files, dirs


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_a_find_job_writes_with_the_users_umask(mask, file_mode, dir_mode, cli_env, recipe, experiment, tmp_path):
    old = os.umask(mask)
    try:
        assert umask() == mask
        r = invoke("find", str(recipe), "--workers", "1", "--experiment", experiment, "--set", "train.steps=40",
                   "--out", str(tmp_path / "runs"))
        assert r.exit_code == 0, r.output
        (job_dir,) = (tmp_path / "runs").iterdir()
        r = invoke("report", str(job_dir), "--out", str(tmp_path / "report"))
        assert r.exit_code == 0, r.output
        (tmp_path / "ckpt").mkdir()  # an arm's checkpoint, which a finished job has removed
        checkpoint.write(tmp_path / "ckpt" / "arm.ckpt.safetensors", {"step": 3, "w": torch.ones(2, 2)})
    finally:
        os.umask(old)
    names = {p.name for p in job_dir.rglob("*")}
    assert {"job.json", "results.json", "trained.safetensors", "rewind.safetensors", "ticket", "masks.safetensors",
            "weights.safetensors"} <= names
    for root in (tmp_path / "runs", tmp_path / "report", tmp_path / "ckpt"):
        assert modes(root) == ({file_mode}, {dir_mode}), root


def test_a_ticket_saved_over_another_keeps_the_umask(tmp_path):
    masks = {"w": torch.ones(2, 2)}
    ticket = T.make(masks, {"w": torch.ones(2, 2)}, seed=0, level=1)
    old = os.umask(0o027)
    try:
        T.save(ticket, tmp_path / "t")
        T.save(ticket, tmp_path / "t")  # replaced through a new temporary folder
    finally:
        os.umask(old)
    assert modes(tmp_path / "t") == ({0o640}, {0o750})


def test_instability_failing_after_training_ends_its_run_failed(cli_env, recipe, experiment, tmp_path, monkeypatch,
                                                                 mlflow_uri):
    """A write that fails after the checks (the disk filled while training): one line, the run FAILED."""
    from ticketx import instability

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "instability.csv"))
    monkeypatch.setattr(instability, "write", full)
    r = invoke("instability", str(recipe), "--rewind", "0", "--points", "3", "--experiment", experiment,
               "--set", "train.steps=40", "--out", str(tmp_path / "out"))
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.splitlines()[-1].startswith("Error: ") and "No space left on device" in r.output
    tracker = Tracker(mlflow_uri)
    runs = tracker.client.search_runs([tracker.find_experiment(experiment).experiment_id])
    assert [run.info.status for run in runs] == ["FAILED"]
