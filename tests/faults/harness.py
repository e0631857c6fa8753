"""Helpers of the fault suite: run `ticketx` as its own process group, kill it, read what a job left.

Every job runs as `python -m ticketx ...` in a new session, so its process group holds the job and its
pool workers and `os.killpg` kills them all, as `kill -9 -PGID` would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from servers import Server, free_port, group_members, wait_http  # noqa: F401 (H.free_port in the tests)

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent

# 2 replicates x (the dense level 0, the tickets of levels 1 and 2) = 6 arms, two chains side by side on the
# two workers: a second of training each on the toy task, so the suite's time goes to what a job does around it
FIND_RECIPE = """
name = "faults"
replicates = 2
arms = ["ticket"]
[task]
plugin = "toy"
name = "gauss"
[train]
steps = 20
batch_size = 32
lr = 0.01
eval_every = 10
checkpoint_every = 5  # kills inside an arm's MLflow logging resume it from a checkpoint, in the same run
[prune]
levels = 2
rate = 0.5
"""
FIND_RUNS = 1 + 2 * 3  # parent + per replicate: dense, level 1, level 2

# levels 1 and 2 of the find job onto a 3-class toy task, beside a random ticket and the dense network: 5 arms
TRANSFER_RECIPE = """
name = "faults-transfer"
arms = ["transferred", "random_ticket", "dense"]
[task]
plugin = "toy"
name = "gauss"
classes = 3
data_seed = 7
[train]
steps = 20
batch_size = 32
lr = 0.01
eval_every = 10
"""
TRANSFER_RUNS = 1 + 1 + 2 * 2  # parent + dense + 2 levels x 2 arms


def env(uri: str, **extra: str) -> dict[str, str]:
    """The environment of a job: the toy plugin with fault hooks, one MLflow store, no fault armed."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("TICKETX_FAULT", "MLFLOW_HTTP"))}
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]  # a checkout under test first
    out.update(TICKETX_PLUGINS="toy=faulty:ToyPlugin", PYTHONPATH=os.pathsep.join([*path, str(HERE), str(TESTS)]),
               MLFLOW_TRACKING_URI=uri, MLFLOW_LOGGING_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    out.pop("TICKETX_FAULTS", None)
    out.update(extra)
    return out


@dataclass
class Job:
    """A running `ticketx` process group and the lines it printed, each with seconds since its start."""

    popen: subprocess.Popen
    began: float
    out: list[tuple[float, str]] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    ended: float | None = None
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float) -> int:
        """Wait for the job to end; kill its group and fail the test if it takes longer than `timeout` s."""
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self)
            pytest.fail(f"ticketx {' '.join(self.popen.args[3:])} ran past {timeout:.0f} s; killed")
        self.ended = self.ended or time.monotonic()
        for t in self.readers:
            t.join(10)
        return rc

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.began

    def text(self) -> str:
        return "\n".join(line for _, line in self.out)

    def wait_for_line(self, needle: str, timeout: float) -> float:
        """Seconds since start at which a stdout line containing `needle` appeared (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.out):
                if needle in line:
                    return t
            if self.popen.poll() is not None and not any(r.is_alive() for r in self.readers):
                break
            time.sleep(0.05)
        pytest.fail(f"no line with {needle!r} within {timeout:.0f} s; stderr: {' | '.join(self.err[-5:])}")


def start(args: list[str], job_env: dict[str, str], cwd: Path) -> Job:
    """Start `python -m ticketx ARGS` as the leader of a new process group."""
    popen = subprocess.Popen([sys.executable, "-m", "ticketx", *args], env=job_env, cwd=cwd, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    job = Job(popen, time.monotonic())

    def read(stream: Any, sink: Any) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        if stream is popen.stdout:
            job.ended = job.ended or time.monotonic()

    job.readers = [threading.Thread(target=read, args=(popen.stdout, lambda s: job.out.append((job.seconds(), s))),
                                    daemon=True),
                   threading.Thread(target=read, args=(popen.stderr, job.err.append), daemon=True)]
    for t in job.readers:
        t.start()
    return job


def run(args: list[str], job_env: dict[str, str], cwd: Path, timeout: float = 300) -> Job:
    """Run `ticketx ARGS` to the end."""
    job = start(args, job_env, cwd)
    job.wait(timeout)
    return job


def kill_group(job: Job, timeout: float = 30) -> list[int]:
    """SIGKILL the job's whole process group; return the processes still alive after `timeout` s."""
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return wait_group_gone(job, timeout)


def wait_group_gone(job: Job, timeout: float = 30) -> list[int]:
    """Reap the leader and wait until no process of its group is left; return any that are."""
    try:
        job.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while (left := group_members(job.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    job.ended = job.ended or time.monotonic()
    for t in job.readers:
        t.join(5)
    return left


def one_error_line(job: Job) -> str | None:
    """The job's error when stderr is exactly one line `Error: ...` (what the CLI prints), else None."""
    lines = [line for line in job.err if line.strip()]
    if len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in job.text():
        return lines[0]
    return None


def job_dir(root: Path) -> Path:
    found = sorted(p for p in Path(root).iterdir() if p.is_dir() and (p / "job.json").exists())
    assert len(found) == 1, f"expected one job folder in {root}, found {found}"
    return found[0]


def results(root: Path) -> list[dict[str, Any]] | None:
    """The job's results.json, without what differs between runs of the same job (run ids, seconds, the
    step an arm resumed from)."""
    files = list(Path(root).glob("*/results.json"))
    if len(files) != 1:
        return None
    return [{k: v for k, v in r.items() if k not in ("run_id", "seconds", "resumed_at")}
            for r in json.loads(files[0].read_text())]


@dataclass(frozen=True)
class Record:
    """What an experiment holds: its live runs' (name, status) and (name, param names, metric names), and
    the statuses of its deleted runs."""

    active: list[tuple[str, str]]
    deleted: list[str]
    contents: list[tuple[str, tuple[str, ...], tuple[str, ...]]]

    @property
    def running(self) -> int:
        return sum(s == "RUNNING" for _, s in self.active) + self.deleted.count("RUNNING")


def record(uri: str, experiment: str) -> Record:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return Record([], [], [])
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=5000)
    live = [r for r in runs if r.info.lifecycle_stage == "active"]
    active = sorted((r.info.run_name, r.info.status) for r in live)
    deleted = sorted(r.info.status for r in runs if r.info.lifecycle_stage == "deleted")
    contents = sorted((r.info.run_name, tuple(sorted(r.data.params)), tuple(sorted(r.data.metrics))) for r in live)
    return Record(active, deleted, contents)


def incomplete(uri: str, experiment: str) -> list[str]:
    """What a finished job's record lacks: arm summary metrics, ticket artifacts, the parent's results."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out = []
    for run in client.search_runs([exp.experiment_id], max_results=5000):
        tags, name = run.data.tags, run.info.run_name
        if "ticketx.kind" in tags:  # the parent
            files = {f.path for f in client.list_artifacts(run.info.run_id)}
            if not {"results.csv", "results.json"} <= files:
                out.append(f"parent run lacks results files: {sorted(files)}")
            continue
        if "early_stop_step" not in run.data.metrics or not any(k.startswith("es_test_") for k in run.data.metrics):
            out.append(f"{name}: summary metrics missing")
        if tags.get("ticketx.arm") in ("dense", "ticket") and "ticketx.lr" not in tags:  # find arms keep tickets
            files = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run.info.run_id, "ticket")}
            if files != {"masks.safetensors", "weights.safetensors", "ticket.json"}:
                out.append(f"{name}: ticket artifact holds {sorted(files)}")
    return out


@dataclass
class Reference:
    """An uninterrupted find job: its folder, results, MLflow record, duration and output timeline."""

    root: Path
    recipe: Path
    uri: str
    results: list[dict[str, Any]]
    record: Record
    seconds: float
    timeline: list[tuple[float, str]]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def reference_find(workdir: Path, mlflow_server: Server) -> Reference:
    """The find job kills are compared with, run once without faults (--workers 2) on the suite's server."""
    uri = mlflow_server.uri
    recipe = workdir / "find.toml"
    recipe.write_text(FIND_RECIPE)
    root = workdir / "find-reference"
    job = run(["find", str(recipe), "--workers", "2", "--out", str(root), "--experiment", "find-reference"],
              env(uri), workdir)
    assert job.popen.returncode == 0, "\n".join(job.err[-20:])
    rec = record(uri, "find-reference")
    assert len(rec.active) == FIND_RUNS and {s for _, s in rec.active} == {"FINISHED"}, rec
    assert not incomplete(uri, "find-reference"), incomplete(uri, "find-reference")
    print(f"\nreference find job: {job.seconds():.1f} s, {len(rec.active)} MLflow runs")
    return Reference(root, recipe, uri, results(root), rec, job.seconds(), list(job.out))


@pytest.fixture(scope="session")
def mlflow_server(workdir: Path):
    server = Server(workdir / "server")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()
