"""Where ticketx keeps data and caches by default, and the environment defaults it runs MLflow with: one
rule for the CLI, the Python API and every plugin."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    """$XDG_CACHE_HOME/ticketx, else ~/.cache/ticketx."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ticketx"


DATA_ENV = "TICKETX_DATA"


def data_root(option: str | Path | None = None) -> Path:
    """Where datasets are read: `option` (--data-root, the API's data_root), else $TICKETX_DATA, else the
    user cache folder. The CLI and the Python API both use this rule; the Makefile sets TICKETX_DATA to
    ../shared/data beside the checkout when that folder exists."""
    if option:
        return Path(option).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return default_data_root()


def default_data_root() -> Path:
    """Where datasets live when neither --data-root nor $TICKETX_DATA names a folder."""
    return user_cache() / "data"


def tracking_defaults() -> None:
    """MLflow's environment defaults for ticketx (a variable already set wins), before mlflow is imported:
    a tracking server that dies mid-job fails the job in bounded time instead of retrying for minutes, and
    MLflow's own INFO lines (store creation) stay out of the job's output."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
