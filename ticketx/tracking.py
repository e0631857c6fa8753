"""MLflow as the record: a parent run per job, a nested child run per level, arm and replicate.

Everything goes through an explicit `MlflowClient` held by a `Tracker` that the CLI builds and passes
down: library code never starts a fluent `mlflow.start_run` behind the caller's back. Metrics are sent
with `log_batch` once per evaluation (per-step `log_metric` is ~6x slower); tickets are logged as
artifact folders, not `mlflow.pytorch.log_model` (3-10 s a call).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; two jobs creating one store at once may still collide there
    fcntl = None  # type: ignore[assignment]

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# Against a tracking server MLflow prints two "View run ... at" lines each time a run ends: dozens per job,
# burying ticketx's progress and the one runs-page link it prints at the end. Users can set it back to false.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM = 6000  # MLflow's limit on a param value's length


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or refused a write; the message names the URI."""


def git_commit(cwd: Path | None = None) -> str:
    """HEAD's commit of the git checkout at `cwd` (or of ticketx's own source), or '' outside git."""
    here = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config data -> dotted MLflow params (`{'train': {'lr': 0.1}}` -> `{'train.lr': '0.1'}`)."""
    out: dict[str, str] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:MAX_PARAM]
    return out


URI_HELP = ("use sqlite:///path/to/mlflow.db (a local store), http(s)://host:port (a tracking server), or "
            "unset MLFLOW_TRACKING_URI for ./mlflow.db")


def _one_line(text: str, limit: int = 400) -> str:
    """MLflow's message on one line, cut at `limit` characters; sqlalchemy's statement, parameters and
    links left out."""
    text = str(text).split("[SQL:", 1)[0]
    text = re.sub(r"\((raised as a result of|Background on this error)[^)]*\)", "", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unanswered(message: str) -> bool:
    """Whether an MLflow error says the server never answered (refused, unreachable, timed out)."""
    text = str(message)
    return any(x in text for x in ("Max retries exceeded", "NewConnectionError", "ConnectionError",
                                   "ConnectTimeout", "ReadTimeout")) or "timed out" in text.lower()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other URIs and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class _NoTraceback(logging.Filter):
    """Drops MLflow's log of a database error with its traceback (it raises the error next, which ticketx
    reports in one line); keeps its other lines, such as the retries while a database cannot be opened."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


def _quiet_db_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoTraceback) for f in logger.filters):
        logger.addFilter(_NoTraceback())


def _check_sqlite(db: Path | None) -> None:
    """OSError naming `db` where an existing store cannot be opened: MLflow would retry opening it for
    about 100 s (sqlalchemy's `unable to open database file`), logging each try."""
    if db is None or not (db.exists() or db.is_symlink()):
        return
    if not db.is_file():
        raise OSError(errno.EISDIR, f"{db} is not a file" + (" but a folder" if db.is_dir() else ""))
    with open(db, "rb"):  # PermissionError naming the file
        pass


@contextmanager
def _creating(db: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `.<db name>.lock` beside the sqlite store `db` while MLflow creates or
    migrates it: two processes creating one store at once otherwise both run its migrations, and one dies
    in alembic (`duplicate column name: step`, `table experiments already exists`). The lock file stays
    (removing it would let a third process lock a new file while a second holds the old one)."""
    if db is None or fcntl is None:
        yield
        return
    lock = db.with_name(f".{db.name}.lock")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if not db.exists():  # MLflow would retry creating it for a minute, then fail in sqlalchemy's words
            where = e.filename if e.filename and Path(e.filename) != lock else db.parent
            why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
            raise OSError(e.errno, f"cannot create {db}: {why} ({where})") from None
        yield  # a folder we cannot write: the store is read as it is (a write fails in MLflow's words)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed, or when the process dies
        yield
    finally:
        os.close(fd)


def _store_error(uri: str, e: BaseException) -> TrackingError:
    """One line for a tracking URI MLflow cannot open: the URI, why, and what works."""
    source = " (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""
    if type(e).__name__ == "UnsupportedModelRegistryStoreURIException" or "nsupported URI" in str(e):
        why = f"{uri.split(':', 1)[0]!r} is not a scheme MLflow supports" if ":" in uri else "not a URI MLflow supports"
    elif isinstance(e, ImportError):
        why = f"its driver is not installed ({e})"
    elif isinstance(e, OSError):
        why = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    elif "MLFLOW_ALLOW_FILE_STORE" in str(e):
        why = ("MLflow's file store (a folder path) is switched off; set MLFLOW_ALLOW_FILE_STORE=true to use it, "
               "or move it to sqlite with `mlflow migrate-filestore`")
    else:
        why = _one_line(getattr(e, "message", None) or str(e) or type(e).__name__)
    return TrackingError(f"cannot open the MLflow tracking store {uri!r}{source}: {why}; {URI_HELP}")


def metric_tags(primary: str, higher_is_better: bool) -> dict[str, str]:
    """The tags a job's parent run records its result metric in (read back by `tagged_metric`)."""
    return {"ticketx.metric": primary, "ticketx.metric_higher": str(higher_is_better).lower()}


def tagged_metric(tags: Mapping[str, str]) -> tuple[str, bool] | None:
    """(primary metric, higher is better) as a job's parent run tags record them; None where they do not
    (jobs recorded before the tags existed)."""
    if "ticketx.metric" not in tags:
        return None
    return tags["ticketx.metric"], tags.get("ticketx.metric_higher", "true") == "true"


class Tracker:
    """An MLflow tracking store and the few operations a job needs of it."""

    def __init__(self, uri: str | None = None) -> None:
        import mlflow

        where = uri or mlflow.get_tracking_uri()
        db = sqlite_path(where)
        _quiet_db_errors()
        try:
            _check_sqlite(db)
            with _creating(db):
                self.client = MlflowClient(tracking_uri=where)
                if db is not None:  # create (or migrate) the store now, under the lock
                    self.client.search_experiments(max_results=1)
        except Exception as e:  # MlflowException, sqlalchemy's errors, a missing driver, OSError: all the store's
            raise _store_error(where, e) from None
        self.uri = self.client.tracking_uri

    @classmethod
    def checked(cls, uri: str | None = None) -> Tracker:
        """A Tracker on `uri` (default: MLFLOW_TRACKING_URI, else MLflow's local store) whose server answered:
        what a command opens before it reads or trains anything."""
        tracker = cls(uri)
        tracker.check_reachable()
        return tracker

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Fail fast, naming the URI, when an HTTP tracking server does not answer."""
        if not self.uri.startswith(("http://", "https://")):
            return
        url = self.uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (user's own server)
                r.read()
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise TrackingError(f"MLflow tracking server {self.uri} is unreachable ({e}); start it, or "
                                "unset MLFLOW_TRACKING_URI to use the local store") from None

    def _error(self, what: str, e: Exception) -> TrackingError:
        """One line for a failed call: the URI, what was asked, and why."""
        if isinstance(e, MlflowException):
            text = _one_line(e.message)
            if _unanswered(text):  # urllib3's retry text: say what happened, not how the retries went
                cause = "timed out" if "timed out" in text.lower() else "connection failed"
                return TrackingError(f"MLflow tracking server {self.uri} did not answer ({cause}) when asked to "
                                     f"{what}; start it (or check the network) and run the same command again")
            return TrackingError(f"MLflow at {self.uri} failed to {what}: {text}")
        # OSError: a local store's files (the artifact folder, the database's folder)
        return TrackingError(f"MLflow at {self.uri} failed to {what}: {getattr(e, 'strerror', None) or e}"
                             + (f": {e.filename}" if getattr(e, "filename", None) else ""))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as e:
            raise self._error(what, e) from None

    def find_experiment(self, name: str) -> Any | None:
        """The experiment `name` (live or deleted), or None where this store has none."""
        return self._call("look up the experiment", self.client.get_experiment_by_name, name)

    def job_runs(self, experiment_id: str) -> list[Any]:
        """The top-level runs of ticketx jobs (tagged ticketx.kind) in an experiment."""
        runs = self._call("search runs", self.client.search_runs, [experiment_id],
                          filter_string="tags.`ticketx.kind` != ''", max_results=1000)
        return [r for r in runs if PARENT_TAG not in r.data.tags]

    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (or restored from deleted) if needed."""
        exp = self._call("look up the experiment", self.client.get_experiment_by_name, name)
        if exp is None:
            try:
                return self._call("create the experiment", self.client.create_experiment, name)
            except TrackingError:  # created by another job starting at the same moment?
                exp = self._call("look up the experiment", self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self._call("restore the experiment", self.client.restore_experiment, exp.experiment_id)
        return exp.experiment_id

    def start_run(self, experiment_id: str, name: str, *, parent: str | None = None,
                  tags: Mapping[str, str] = {}, params: Mapping[str, str] = {}) -> str:
        """Create a RUNNING run (nested under `parent` when given) and log its params; return its id."""
        all_tags = dict(tags)
        if parent:
            all_tags[PARENT_TAG] = parent
        run = self._call("create a run", self.client.create_run, experiment_id, run_name=name, tags=all_tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params (again: logging a param with the value it has is a no-op)."""
        items = list(params.items())
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self._call("log params", self.client.log_batch, run_id,
                       params=[Param(k, v) for k, v in items[i : i + 100]])

    def running_runs(self, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
        """The RUNNING top-level runs of an experiment that carry every one of `tags`."""
        runs = self._call("search runs", self.client.search_runs, [experiment_id],
                          filter_string="attributes.status = 'RUNNING'", max_results=5000)
        return [r for r in runs if PARENT_TAG not in r.data.tags
                and all(r.data.tags.get(k) == v for k, v in tags.items())]

    def exists(self, run_id: str) -> bool:
        """Whether `run_id` is a live (not deleted) run in this store; TrackingError when the store does not
        answer (not a False that would start the job's runs again)."""
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as e:
            if _unanswered(e.message):
                raise self._error(f"look up run {run_id}", e) from None
            return False

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed parent)."""
        self._call("reopen a run", self.client.update_run, run_id, status="RUNNING")

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log many metrics in one call, at `step` (none for summary numbers)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._call("log metrics", self.client.log_batch, run_id, metrics=batch)

    def logged_steps(self, run_id: str) -> dict[str, set[int]]:
        """Metric name -> the steps at which `run_id` has a value of it (a resumed arm logs no step twice)."""
        run = self._call("look up a run", self.client.get_run, run_id)
        return {key: {m.step for m in self._call("read a metric's history", self.client.get_metric_history,
                                                  run_id, key)}
                for key in run.data.metrics}

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._call("set tags", self.client.log_batch, run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call("log artifacts", self.client.log_artifacts, run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self._call("log an artifact", self.client.log_artifact, run_id, str(local_file), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run as FINISHED, FAILED or KILLED."""
        self._call("end a run", self.client.set_terminated, run_id, status=status)

    def delete(self, run_id: str) -> None:
        """Delete a run (an unfinished child of a killed job, about to be redone), ended as KILLED first
        so that no run in the store, deleted ones included, stays RUNNING."""
        if self._call("look up a run", self.client.get_run, run_id).info.status == "RUNNING":
            self.finish(run_id, "KILLED")
        self._call("delete a run", self.client.delete_run, run_id)

    def child_runs(self, experiment_id: str, parent: str) -> list[Any]:
        """The live runs nested under `parent`."""
        return self._call("search runs", self.client.search_runs, [experiment_id],
                          filter_string=f"tags.`{PARENT_TAG}` = '{parent}'", max_results=5000)

    def get_run(self, run_id: str) -> Any:
        """The run `run_id`; TrackingError naming it when this store has no such run."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if _unanswered(e.message):
                raise self._error(f"look up run {run_id}", e) from None
            raise TrackingError(f"no MLflow run {run_id} in {self.uri}") from None

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Fetch a run's artifact (file or folder) into `dst`; returns the local path."""
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self._call(f"download {artifact_path} of run {run_id}", self.client.download_artifacts,
                               run_id, artifact_path, str(dst)))

    def ui_link(self, experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
        """Where the runs table (nested runs under their parent) opens in the MLflow UI."""
        base = self.uri.rstrip("/") if self.uri.startswith("http") else server
        return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

    def ui_command(self) -> str:
        """The shell command that serves this store's UI (empty for a remote server)."""
        if self.uri.startswith("http"):
            return ""
        return f"mlflow ui --backend-store-uri {self.uri}"

