"""Sharing tickets through the MLflow Model Registry (`ticketx publish`, `ticketx tickets`, `models:/` URIs):
against the session's sqlite store and a real `mlflow server` over HTTP. A toy find job is published with an
alias; the version loads with plain `mlflow.pyfunc.load_model` and predicts what the masked model built
directly predicts; `show`, `transfer`, `load_ticket` take the URI; a tampered registered file and every
registry error are refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import ticketx
from servers import Server, free_port
from ticketx import registry
from ticketx.cli import main
from ticketx.tracking import Tracker
from toy import ToyTask

RECIPE = {"name": "registry", "task": {"plugin": "toy", "name": "gauss"},
          "train": {"steps": 40, "batch_size": 32, "lr": 0.01, "eval_every": 20},
          "prune": {"levels": 1, "rate": 0.5}}


def _find(uri: str, out: Path, experiment: str) -> ticketx.Result:
    return ticketx.find(RECIPE, {"replicates": 1}, out=out, workers=1, tracking_uri=uri, experiment=experiment,
                        progress=False)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _masked_model(level_dir: Path) -> torch.nn.Module:
    """The ticket arm's trained network at this level, built directly: what the published model must run."""
    t = ticketx.load_ticket(level_dir / "ticket")
    model = ToyTask("gauss", {}).build_model(int(t.meta["seed"]))
    state = load_file(str(level_dir / "trained.safetensors"))
    model.load_state_dict({k: v * t.masks[k] if k in t.masks else v for k, v in state.items()})
    return model.eval()


def _check_published(uri: str, name: str, found: ticketx.Result, tmp_path: Path, monkeypatch) -> None:
    """Publish level 1 of `found` as NAME@champion and check everything a colleague does with it."""
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    level = found.job_dir / "r0" / "L01"
    code, out = _cli("publish", str(level / "ticket"), "--name", name, "--alias", "champion")
    assert code == 0, out
    assert f"as models:/{name}/1 (toy/gauss, density 50.00%, level 1, test accuracy at early stop" in out
    assert f"models:/{name}@champion" in out and f"#/models/{name}/versions/1" in out

    tracker = Tracker(uri)
    mv = tracker.client.get_model_version_by_alias(name, "champion")
    record = next(r for r in found.records if r["level"] == 1 and r["arm"] == "ticket")
    assert str(mv.version) == "1" and mv.run_id == record["run_id"]  # the ticket arm's run: the UI links back
    tags = mv.tags
    assert tags["ticketx.ticket"] == "true" and tags["task"] == "toy/gauss" and tags["density"] == "0.5"
    assert (tags["level"], tags["rewind_step"], tags["criterion"]) == ("1", "0", "magnitude")
    assert tags["source_run"] == found.run_id and tags["metric"] == "accuracy"
    assert float(tags["test_accuracy"]) == pytest.approx(record["at_early_stop"]["test_accuracy"], abs=1e-5)
    assert float(tags["val_accuracy"]) == pytest.approx(record["at_early_stop"]["val_accuracy"], abs=1e-5)

    # plain MLflow: the masked network, trained, on the inputs given
    assert mlflow.get_tracking_uri() == uri
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    got = model.predict(x.numpy())
    assert isinstance(got, np.ndarray) and got.shape == (8, 4)
    with torch.no_grad():
        want = _masked_model(level)(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # every command that takes TICKET takes the URI, checked as a local ticket is
    code, out = _cli("show", f"models:/{name}/1")
    assert code == 0, out
    assert f"models:/{name}/1" in out and "yes: every tensor matches toy/gauss" in out and "50.00%" in out
    code, out = _cli("tickets", "--task", "toy/gauss")
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith(name + " "))
    assert re.search(r"\b1\s+champion\s+toy/gauss\s+50\.00%\s+1\s+accuracy \d", row), out
    code, out = _cli("tickets", "--max-density", "0.25")
    assert code == 0 and name not in out, out
    ticket = ticketx.load_ticket(f"models:/{name}@champion", tracking_uri=uri)
    mine = ticketx.load_ticket(level / "ticket")
    assert all(torch.equal(ticket.masks[k], mine.masks[k]) for k in mine.masks)


def test_publish_load_and_use_a_ticket_in_a_sqlite_store(tmp_path, toy_env, mlflow_uri, experiment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = _find(mlflow_uri, tmp_path / "runs", experiment)
    _check_published(mlflow_uri, f"toy-{experiment}", found, tmp_path, monkeypatch)
    moved = ticketx.transfer(f"models:/toy-{experiment}@champion", to="toy/gauss",
                             overrides={"task.data_seed": 7, "train.steps": 20, "train.eval_every": 10},
                             out=tmp_path / "moved", workers=1, tracking_uri=mlflow_uri, progress=False,
                             arm="ticket")
    transferred = [r for r in moved.records if r["arm"] == "transferred"]
    assert [r["level"] for r in transferred] == [1]
    run = Tracker(mlflow_uri).get_run(transferred[0]["run_id"])
    assert run.data.params["source"] == f"models:/toy-{experiment}@champion" and run.info.status == "FINISHED"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("registry-server"))
    srv.start()
    yield srv.uri
    srv.stop()


def test_publish_load_and_use_a_ticket_over_http(server, tmp_path, toy_env, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a client that wrote artifacts locally would leave ./mlruns here
    found = _find(server, tmp_path / "runs", "over-http")
    _check_published(server, "toy-http", found, tmp_path, monkeypatch)
    code, out = _cli("transfer", "models:/toy-http@champion", "--to", "toy/gauss", "--set", "train.steps=20",
                     "--set", "train.eval_every=10", "--workers", "1", "--out", str(tmp_path / "moved"),
                     "--progress", "off")
    assert code == 0, out
    assert "1 ticket(s) from models:/toy-http@champion (levels 1)" in out and "transferred" in out
    assert not (tmp_path / "mlruns").exists()


def test_a_ticket_whose_run_is_in_another_store_gets_a_run_of_its_own(tmp_path, toy_env, mlflow_uri, experiment,
                                                                      monkeypatch):
    found = _find(mlflow_uri, tmp_path / "runs", experiment)
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    code, out = _cli("publish", str(found.job_dir / "r0" / "L01"), "--name", "moved")  # a level folder
    assert code == 0, out
    mv = Tracker(elsewhere).client.get_model_version("moved", "1")
    run = Tracker(elsewhere).get_run(mv.run_id)
    assert run.data.tags["ticketx.kind"] == "publish" and mv.tags["source_run"] == found.run_id


def test_a_tampered_registered_file_is_refused_by_its_hash(tmp_path, toy_env, mlflow_uri, experiment, monkeypatch):
    import mlflow.pyfunc

    found = _find(mlflow_uri, tmp_path / "runs", experiment)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    name = f"tampered-{experiment}"
    code, out = _cli("publish", str(found.job_dir / "r0" / "L01" / "ticket"), "--name", name)
    assert code == 0, out
    source = Path(Tracker(mlflow_uri).client.get_model_version(name, "1").source)
    # the toy plugin comes through TICKETX_PLUGINS, not a distribution: ticketx alone is required
    required = (source / "requirements.txt").read_text().split()
    assert f"ticketx=={ticketx.__version__}" in required and [r for r in required if "ticketx" in r] == \
        [f"ticketx=={ticketx.__version__}"]
    masks = source / "data" / "ticketx" / "ticket" / "masks.safetensors"
    data = bytearray(masks.read_bytes())
    data[-1] ^= 1  # one flipped bit of one mask
    masks.write_bytes(bytes(data))
    for command in (["show", f"models:/{name}/1"], ["export", f"models:/{name}/1", "--out", str(tmp_path / "m.pt")]):
        code, out = _cli(*command)
        assert code == 1 and len(out.strip().splitlines()) == 1, out
        assert f"models:/{name}/1/masks.safetensors: SHA-256" in out and "corrupted or was edited" in out
    with pytest.raises(ticketx.ticket.TicketError, match="does not match ticket.json"):
        mlflow.pyfunc.load_model(f"models:/{name}/1")


def test_registry_errors_are_one_line(tmp_path, toy_env, mlflow_uri, experiment, monkeypatch):
    found = _find(mlflow_uri, tmp_path / "runs", experiment)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    client = Tracker(mlflow_uri).client
    name = f"errs-{experiment}"
    assert _cli("publish", str(found.job_dir / "r0" / "L01"), "--name", name, "--alias", "champion")[0] == 0
    plain = f"plain-{experiment}"  # a registered model that is not a ticket
    client.create_registered_model(plain)
    client.create_model_version(plain, str(tmp_path), None)
    free = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["show", f"models:/nope-{experiment}/1"], f"no registered model 'nope-{experiment}'"),
        (["show", f"models:/{name}/7"], f"registered model '{name}' has no version 7 (its versions: 1)"),
        (["show", f"models:/{name}@prod"], "has no alias 'prod' (its aliases: champion)"),
        (["overlap", f"models:/{name}/1", f"models:/{plain}/1"], "is not a ticketx ticket"),
        (["show", f"models:/{name}"], "use models:/NAME/VERSION or models:/NAME@ALIAS"),
        (["publish", str(found.job_dir / "r0" / "L01"), "--name", plain], "is not a ticketx ticket model"),
        (["publish", str(found.job_dir / "r0" / "L01"), "--name", name, "--alias", "v3"], "alias 'v3' must be"),
        (["publish", str(tmp_path), "--name", name], "incomplete ticket, missing masks.safetensors"),
    ]
    for args, message in cases:
        code, out = _cli(*args)
        assert code == 1 and len(out.strip().splitlines()) == 1 and message in out, (args, out)
    with pytest.raises(registry.RegistryError, match="is not a ticketx ticket"):
        ticketx.load_ticket(f"models:/{plain}/1", tracking_uri=mlflow_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", free)  # a server that is not there
    for args in (["show", f"models:/{name}/1"], ["tickets"], ["publish", str(found.job_dir / "r0" / "L01"),
                                                              "--name", name]):
        code, out = _cli(*args)
        assert code == 1 and len(out.strip().splitlines()) == 1 and "unreachable" in out, (args, out)


def test_the_requirements_name_the_plugins_distribution(toy_env):
    from ticketx import plugins
    available = plugins.discover()
    assert registry.requirements("toy", available) == [f"ticketx=={ticketx.__version__}"]
    if "vision" in available and getattr(available["vision"][0], "dist", None) is not None:
        assert registry.requirements("vision", available)[1].startswith("ticketx-vision==")
