"""A real MLflow tracking server on 127.0.0.1 (sqlite store, artifacts served by the server from a temporary
folder): a find job with two worker processes logs to it over HTTP, and its runs and tickets are read back
through the server. The server is stopped by its process id afterwards."""

import pytest

from servers import Server
from ticketx import config as C
from ticketx import ticket as T
from ticketx.findjob import run_find
from ticketx.tracking import Tracker
from toy import ToyTask

FIND = {"name": "servertoy", "replicates": 2, "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 60, "batch_size": 32, "lr": 0.01, "eval_every": 30},
        "prune": {"levels": 1, "rate": 0.5}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(uri, artifact folder) of a fresh `mlflow server`, stopped with its workers at the end."""
    srv = Server(tmp_path_factory.mktemp("server"))
    srv.start()
    yield srv.uri, srv.artifacts
    srv.stop()


def test_a_find_job_logs_to_the_server_and_reads_back_through_it(server, tmp_path, monkeypatch, toy_env):
    uri, artifacts = server
    monkeypatch.chdir(tmp_path)  # a client that wrote artifacts locally would leave ./mlruns here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker(uri)
    found = run_find(C.from_dict(FIND), ToyTask("gauss", {}), tracker, root=tmp_path / "out",
                     experiment="over-http", workers=2)
    reader = Tracker(uri)  # a fresh client: everything below comes from the server
    exp = reader.client.get_experiment(found.experiment_id)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location  # the server's store
    runs = reader.client.search_runs([found.experiment_id], max_results=100)
    assert len(runs) == 1 + 2 * 4 and {r.info.status for r in runs} == {"FINISHED"}
    child = next(r for r in runs if r.data.params.get("arm") == "ticket" and r.data.params.get("level") == "1")
    assert child.data.metrics["es_val_accuracy"] > 0.5
    ticket = T.load(reader.download(child.info.run_id, "ticket", tmp_path / "fetched"))
    mine = T.load(found.job_dir / f"r{child.data.params['replicate']}" / "L01" / "ticket")
    assert all((ticket.masks[n] == mine.masks[n]).all() for n in mine.masks)
    assert any(artifacts.rglob("ticket.json")), "the ticket was not stored in the server's artifact folder"
    assert not (tmp_path / "mlruns").exists()
