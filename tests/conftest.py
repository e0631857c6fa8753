"""Shared fixtures: one torch thread, the toy plugin on the path, a temporary MLflow store per session."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # `toy` importable here and in subprocesses through PYTHONPATH
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
torch.set_num_threads(1)

TOY_ENV = {"TICKETX_PLUGINS": "toy=toy:ToyPlugin", "PYTHONPATH": str(HERE)}


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def tracker(mlflow_uri: str):
    from ticketx.tracking import Tracker
    return Tracker(mlflow_uri)


_counter = itertools.count()


@pytest.fixture()
def experiment(request: pytest.FixtureRequest) -> str:
    """A fresh experiment name per test, so runs of different tests never mix."""
    return f"{request.node.name}-{next(_counter)}"


@pytest.fixture()
def toy_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in TOY_ENV.items():
        monkeypatch.setenv(k, v)
    return TOY_ENV


RECIPE = """
name = "toycli"
[task]
plugin = "toy"
name = "gauss"
[train]
steps = {steps}
batch_size = 32
lr = 0.01
eval_every = 50
[prune]
levels = 1
rate = 0.5
"""


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "toy.toml"
    p.write_text(RECIPE.format(steps=100))
    return p


@pytest.fixture()
def cli_env(toy_env, mlflow_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.chdir(tmp_path)
    return {**os.environ}
