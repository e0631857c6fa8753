"""Shared fixtures for the rl plugin's tests: one torch thread (helpers live in rl_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
torch.set_num_threads(1)  # module-scoped fixtures run before the function-scoped one below


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The build machines have 2 cores shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def scratch_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A store `sqlite:///...` keeps artifacts under ./mlruns: keep them out of the repository."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)
