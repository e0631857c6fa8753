"""The Ray backend on a real local Ray cluster of two workers: the same numbers and MLflow record as the
local pool, a worker killed mid-job restarted and its unit retried, a plugin missing on the workers named."""

import os
import signal
import threading
import time

import pytest

from ticketx import config as C
from ticketx import pool
from ticketx.findjob import run_find
from toy import ToyTask

ray = pytest.importorskip("ray", reason='the Ray backend needs pip install "ticketx[ray]"')
from ticketx.raypool import RayBackend  # noqa: E402

FIND = {"name": "raytoy", "replicates": 2, "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 100, "batch_size": 32, "lr": 0.01, "eval_every": 50},
        "prune": {"levels": 2, "rate": 0.5}}


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("run_id", "seconds")} for r in records]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for the module (starting one takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mlflow_uri):
    """The same job one unit at a time, in this process."""
    from ticketx.tracking import Tracker
    tracker = Tracker(mlflow_uri)
    found = run_find(C.from_dict(FIND), ToyTask("gauss", {}), tracker, root=tmp_path_factory.mktemp("one"),
                     experiment="ray-reference")
    return found, len(tracker.client.search_runs([found.experiment_id]))


def runs_of(tracker, result):
    return tracker.client.search_runs([result.experiment_id], max_results=1000)


def test_ray_gives_the_same_numbers_and_runs_as_one_at_a_time(cluster, reference, tmp_path, tracker, experiment,
                                                              toy_env):
    found, n_runs = reference
    events = []
    got = run_find(C.from_dict(FIND), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment,
                   workers=2, backend=RayBackend(), progress=lambda e, i: events.append(e))
    assert strip(got.records) == strip(found.records)
    runs = runs_of(tracker, got)
    assert len(runs) == n_runs == 1 + 2 * 7 and {r.info.status for r in runs} == {"FINISHED"}
    assert events.count("done") == 14  # progress from the workers reaches the driver


def test_a_killed_ray_worker_is_restarted_and_its_unit_retried(cluster, reference, tmp_path, tracker,
                                                               experiment, toy_env):
    found, n_runs = reference
    backend = RayBackend(max_retries=2)
    killed = []

    def kill_one() -> None:  # once the first arm is running, kill -9 the worker process running it
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if list(tmp_path.glob("raytoy-*/r*/L*/*.run")) and backend.busy:
                pid = ray.get(next(iter(backend.busy.values())).pid.remote())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    threading.Thread(target=kill_one, daemon=True).start()
    got = run_find(C.from_dict(FIND), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment,
                   workers=2, backend=backend)
    assert killed, "no worker was killed: the test did not test anything"
    assert strip(got.records) == strip(found.records)
    runs = runs_of(tracker, got)  # the killed arm's half-logged run was deleted and the arm redone once
    assert len(runs) == n_runs and {r.info.status for r in runs} == {"FINISHED"}


def test_a_unit_error_on_ray_names_the_unit_and_the_worker(cluster, tmp_path, tracker, experiment, toy_env):
    task = {**FIND["task"], "fail": "2/random_prune/raise"}
    with pytest.raises(pool.WorkerError, match=r"\([01], 2, 'random_prune'\) failed on worker .*\(.*pid \d+\): "
                                               r"RuntimeError: toy task told to fail at level 2"):
        run_find(C.from_dict({**FIND, "task": task}), ToyTask("gauss", {"fail": "2/random_prune/raise"}), tracker,
                 root=tmp_path, experiment=experiment, workers=2, backend=RayBackend())


def test_a_plugin_missing_on_the_workers_is_named(cluster, tmp_path, tracker, experiment, toy_env):
    backend = RayBackend(env={"TICKETX_PLUGINS": ""})  # the driver has the toy plugin, the workers do not
    with pytest.raises(pool.WorkerError, match=r"worker .* could not set up the job: PluginError: .*toy"):
        run_find(C.from_dict(FIND), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment,
                 workers=2, backend=backend)


def test_an_unreachable_cluster_fails_fast_before_any_run(tmp_path, monkeypatch, toy_env):
    from click.testing import CliRunner

    from ticketx.cli import main
    from ticketx.tracking import Tracker
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "r.toml").write_text('name = "raycli"\n[task]\nplugin = "toy"\nname = "gauss"\n'
                                     "[train]\nsteps = 60\n[prune]\nlevels = 1\n")
    started = time.time()
    r = CliRunner().invoke(main, ["find", "r.toml", "--backend", "ray", "--address", "127.0.0.1:9"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in r.output
    assert time.time() - started < 30
    assert Tracker(uri).client.get_experiment_by_name("raycli") is None  # nothing recorded


def test_a_cluster_that_refuses_the_client_names_token_authentication(tmp_path, monkeypatch):
    """A port that answers, then ray.init refusing (what Ray >= 2.59 does to a client without its token):
    the error says how to pass the token instead of Ray's bare 'Failed to connect'."""
    import socket

    from ticketx.pool import WorkerError
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def refuse(**kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with listener:
        with pytest.raises(WorkerError) as e:
            RayBackend(address).start(None, workers=1, threads=1)
        assert f"cannot start or reach Ray cluster at {address}: ConnectionError" in str(e.value)
        assert "export RAY_AUTH_MODE=token" in str(e.value)
        monkeypatch.setenv("RAY_AUTH_MODE", "token")  # already sending a token: no such advice
        with pytest.raises(WorkerError) as e:
            RayBackend(address).start(None, workers=1, threads=1)
        assert f"cannot start or reach Ray cluster at {address}: ConnectionError" in str(e.value)
        assert "RAY_AUTH_MODE" not in str(e.value)
