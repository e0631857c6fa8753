"""Sharing tickets through the MLflow Model Registry: publish a ticket as a model version, fetch it back.

A published version is an MLflow pyfunc model with no pickled code: its MLmodel names this module as the
loader (`_load_pyfunc`), and its data folder holds the ticket's own files and, for a find job's ticket
arm, the weights it trained to:

    MLmodel, requirements.txt, ...
    data/ticketx/ticket/{masks.safetensors, weights.safetensors, ticket.json}
    data/ticketx/trained.safetensors      (a ticket arm's, when published from its level folder)
    data/ticketx/published.json           (the SHA-256 of trained.safetensors)

`mlflow.pyfunc.load_model("models:/NAME@ALIAS")` rebuilds the task's model through its plugin, loads the
weights and predicts; `fetch` downloads the ticket folder for any command that takes a TICKET, which then
checks it (hashes, shapes, the task's own checks) exactly as a local folder. Versions carry tags to filter
on (task, model, density, level, rewind_step, criterion, source_run, the primary metric at early stop);
`ticketx.ticket = true` marks what is a ticket.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from . import ticket as ticketlib
from .ticket import TicketError

PREFIX = "models:/"
MARK = "ticketx.ticket"  # tag on a registered model and on each of its versions: a ticketx ticket
DATA = "ticketx"  # the model's data folder: data/ticketx/
TRAINED = "trained.safetensors"
PUBLISHED = "published.json"
_VERSION = re.compile(r"^[1-9][0-9]*$")


class RegistryError(LookupError):
    """A registered ticket cannot be published or fetched (unknown name, version or alias; not a ticket;
    a store without a registry); the message names the model and what exists."""


@dataclass(frozen=True)
class Published:
    """A ticket registered as a model version."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str  # the run the model's files were logged to: the ticket arm's, or a new one
    experiment_id: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"{PREFIX}{self.name}/{self.version}"


def is_ref(ref: Any) -> bool:
    """Whether `ref` (a TICKET argument) is a `models:/` URI."""
    return str(ref).startswith(PREFIX)


def parse(ref: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of `models:/NAME/VERSION` or `models:/NAME@ALIAS` (one of the last two None)."""
    body = ref[len(PREFIX):] if ref.startswith(PREFIX) else ref
    name, at, alias = body.rpartition("@")
    if at and name and alias and "/" not in alias:
        return name, None, alias
    name, slash, version = body.rpartition("/")
    if slash and name and _VERSION.match(version):
        return name, version, None
    raise RegistryError(f"{ref!r} is not a registered ticket URI: use models:/NAME/VERSION or models:/NAME@ALIAS")


# ------------------------------------------------------------------------------------------ publishing

def _level_record(ticket_dir: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The find job's record of the arm that trained this ticket (its level folder's ARM.json), or {}."""
    from .arms import FIND
    arm = str(meta.get("arm", "ticket"))
    stem = "dense" if meta.get("level") == 0 else (FIND[arm].file if arm in FIND else arm)
    f = ticket_dir.parent / f"{stem}.json"
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _primary(tracker: Any, parent: str | None) -> str:
    """The find job's primary metric, as its parent run's tag records it ("accuracy" when unknown)."""
    if parent and tracker.exists(parent):
        from .tracking import tagged_metric
        found = tagged_metric(tracker.get_run(parent).data.tags)
        return found[0] if found is not None else "accuracy"
    return "accuracy"


def requirements(plugin: str | None, available: Mapping[str, list[Any]] | None = None) -> list[str]:
    """pip requirements of a published ticket: ticketx, and the distribution that installs its plugin
    (none for a plugin that comes through TICKETX_PLUGINS)."""
    from . import plugins
    out = [f"ticketx=={__version__}"]
    eps = (plugins.discover() if available is None else available).get(plugin or "", [])
    dist = getattr(eps[0], "dist", None) if len(eps) == 1 else None
    if dist is not None:
        out.append(f"{dist.metadata['Name']}=={dist.version}")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def ticket_tags(ticket: ticketlib.Ticket, record: Mapping[str, Any], primary: str, run_id: str) -> dict[str, str]:
    """The tags of a published version: what a user filters on (`tags.task = 'vision/mnist'`)."""
    m = ticket.meta
    spec = m.get("task", {}) if isinstance(m.get("task"), dict) else {}
    options = spec.get("options", {}) if isinstance(spec.get("options"), dict) else {}
    tags = {MARK: "true", "task": ticketlib.task_name(m), "model": str(options.get("model") or spec.get("task", "?")),
            "density": f"{ticket.density:.6g}", "level": str(m.get("level", "?")),
            "rewind_step": str(m.get("rewind_step", "?")), "criterion": str(m.get("criterion", "magnitude")),
            "arm": str(m.get("arm", "ticket")), "source_run": str(m.get("source_run_id", "")), "run": run_id,
            "metric": primary}
    es = record.get("at_early_stop", {}) if isinstance(record.get("at_early_stop"), dict) else {}
    for split in ("test", "val"):
        if f"{split}_{primary}" in es:
            tags[f"{split}_{primary}"] = _fmt(es[f"{split}_{primary}"])
    return tags


def _client_error(what: str, e: Exception, tracker: Any) -> Exception:
    """One line for a registry call that failed: the store's own words, or that it did not answer."""
    from .tracking import _one_line, _unanswered
    text = _one_line(getattr(e, "message", None) or str(e))
    if _unanswered(text):
        return tracker._error(what, e)
    return RegistryError(f"the model registry of {tracker.uri} failed to {what}: {text}")


def _call(tracker: Any, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from mlflow.exceptions import MlflowException
    try:
        return fn(*args, **kwargs)
    except (MlflowException, OSError) as e:
        raise _client_error(what, e, tracker) from None


def _ensure_model(tracker: Any, name: str) -> None:
    """Create registered model `name` (tagged as tickets), or check the one there holds tickets."""
    from mlflow.exceptions import MlflowException
    client = tracker.client
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise _client_error(f"look up registered model {name!r}", e, tracker) from None
        _call(tracker, f"create registered model {name!r}", client.create_registered_model, name,
              tags={MARK: "true"}, description="ticketx tickets: masks, rewind weights and trained weights")
        return
    if model.tags.get(MARK) != "true":
        raise RegistryError(f"registered model {name!r} in {tracker.uri} exists and is not a ticketx ticket model "
                            "(no ticketx.ticket tag); publish under another --name")


def publish(ticket_dir: Path, name: str, tracker: Any, *, aliases: Iterable[str] = (),
            data_root: Path | None = None) -> Published:
    """Register the ticket folder `ticket_dir` (and, from a find job's level, the ticket arm's trained
    weights) as a new version of registered model `name`, with `aliases` pointing at it.

    The model's files are logged to the ticket arm's run when this store has it (else to a new run in
    experiment "ticketx-published"), so the version links back to the experiment it came from.
    """
    import mlflow.pyfunc

    from . import plugins
    from .task import check_ticket

    ticket_dir = Path(ticket_dir)
    aliases = tuple(aliases)
    for alias in aliases:
        if not re.match(r"^[A-Za-z_][\w-]*$", alias) or re.match(r"^[vV][0-9]+$", alias):
            raise RegistryError(f"alias {alias!r} must be letters, digits, '_' or '-' (not starting with a digit, "
                                "and not v<number>, which MLflow keeps for versions)")
    t = ticketlib.load(ticket_dir)
    spec = t.meta.get("task", {})
    available = plugins.discover()
    if isinstance(spec, dict) and spec.get("plugin") in available:  # what loading it will do: fail now if it will
        task = plugins.make_task(spec["plugin"], spec.get("task", ""), spec.get("options", {}),
                                 available=available, data_root=data_root)
        check_ticket(task, t, task.build_model(int(t.meta.get("seed", 0))))
    record = _level_record(ticket_dir, t.meta)
    parent = str(t.meta.get("source_run_id") or "") or None
    run_id = str(record.get("run_id") or "")
    if not (run_id and tracker.exists(run_id)):
        exp = tracker.experiment("ticketx-published")
        run_id = tracker.start_run(exp, f"publish {name}", tags={"ticketx.kind": "publish"},
                                   params={"ticket": str(ticket_dir.resolve())})
        tracker.finish(run_id)
    experiment_id = tracker.get_run(run_id).info.experiment_id
    tags = ticket_tags(t, record, _primary(tracker, parent), run_id)
    trained = ticket_dir.parent / TRAINED
    with_trained = t.meta.get("arm", "ticket") == "ticket" and ticket_dir.name == "ticket" and trained.is_file()
    _ensure_model(tracker, name)
    stage = Path(tempfile.mkdtemp(prefix="ticketx-publish-"))
    try:
        data = stage / DATA
        shutil.copytree(ticket_dir, data / "ticket")
        published: dict[str, Any] = {"format": 1, "ticketx_version": __version__}
        if with_trained:
            shutil.copyfile(trained, data / TRAINED)
            published["sha256"] = {TRAINED: _sha256(data / TRAINED)}
        (data / PUBLISHED).write_text(json.dumps(published, indent=2, sort_keys=True))
        model_dir = stage / "model"
        mlflow.pyfunc.save_model(str(model_dir), loader_module=__name__, data_path=str(data),
                                 pip_requirements=requirements(spec.get("plugin") if isinstance(spec, dict) else None,
                                                               available))
        # a folder of its own per publish: an earlier version's files are never overwritten
        artifact_path = f"registry/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{uuid.uuid4().hex[:8]}"
        tracker.log_artifacts(run_id, model_dir, artifact_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    source = _call(tracker, "resolve the model's files", RunsArtifactRepository.get_underlying_uri,
                   f"runs:/{run_id}/{artifact_path}")
    mv = _call(tracker, f"create a version of {name!r}", tracker.client.create_model_version, name, source,
               run_id, tags=tags, description=f"ticketx ticket from {ticket_dir}")
    for alias in aliases:
        _call(tracker, f"set alias {alias!r}", tracker.client.set_registered_model_alias, name, alias, mv.version)
    return Published(name, str(mv.version), aliases, run_id, experiment_id, tags)


def ui_link(tracker: Any, name: str, version: str, server: str = "http://127.0.0.1:5000") -> str:
    """Where the version opens in the MLflow UI."""
    from urllib.parse import quote
    base = tracker.uri.rstrip("/") if tracker.uri.startswith("http") else server
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}"


# ------------------------------------------------------------------------------------------ fetching

def version(ref: str, tracker: Any) -> Any:
    """The model version `ref` names, checked to be a ticketx ticket; RegistryError in one line."""
    from mlflow.exceptions import MlflowException
    name, number, alias = parse(ref)
    client = tracker.client
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"{ref}: no registered model {name!r} in {tracker.uri}") from None
        raise _client_error(f"look up registered model {name!r}", e, tracker) from None
    try:
        mv = (client.get_model_version(name, number) if number is not None
              else client.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        if getattr(e, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise _client_error(f"look up {ref}", e, tracker) from None
        if number is not None:
            have = sorted(int(v.version) for v in _call(tracker, "list versions", client.search_model_versions,
                                                         f"name = '{name}'"))
            raise RegistryError(f"{ref}: registered model {name!r} has no version {number} "
                                f"(its versions: {', '.join(map(str, have)) or 'none'})") from None
        have_aliases = sorted(getattr(model, "aliases", {}) or {})
        raise RegistryError(f"{ref}: registered model {name!r} has no alias {alias!r} "
                            f"(its aliases: {', '.join(have_aliases) or 'none'})") from None
    if mv.tags.get(MARK) != "true":
        raise RegistryError(f"{ref}: version {mv.version} of {name!r} is not a ticketx ticket (no ticketx.ticket "
                            "tag); publish tickets with `ticketx publish`")
    return mv


def fetch(ref: str, tracker: Any, workdir: Path) -> Path:
    """Download the registered ticket `ref` (models:/NAME/VERSION or models:/NAME@ALIAS) under `workdir`;
    returns its ticket folder, with trained.safetensors beside it when the version has one. Nothing is
    checked here: load it with `ticketx.ticket.load`, as a local folder."""
    import mlflow.artifacts
    mv = version(ref, tracker)
    dst = Path(workdir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', mv.name)}-v{mv.version}"
    dst.mkdir(parents=True, exist_ok=True)
    local = _call(tracker, f"download {ref}", mlflow.artifacts.download_artifacts,
                  artifact_uri=f"{str(mv.source).rstrip('/')}/data/{DATA}", dst_path=str(dst),
                  tracking_uri=tracker.uri)
    folder = Path(local) / "ticket"
    if not (folder / ticketlib.META).is_file():
        raise RegistryError(f"{ref}: the registered files hold no ticket (expected data/{DATA}/ticket/"
                            f"{ticketlib.META} under {mv.source})")
    return folder


def load(ref: str, tracker: Any, workdir: Path) -> ticketlib.Ticket:
    """The registered ticket `ref`, fetched and checked as a local folder is; errors name `ref`."""
    folder = fetch(ref, tracker, workdir)
    with named(ref, folder):
        return ticketlib.load(folder)


@contextmanager
def named(ref: str, folder: Path) -> Iterator[None]:
    """TicketErrors raised inside name `ref` where they would name its temporary download folder."""
    try:
        yield
    except TicketError as e:
        raise type(e)(str(e).replace(str(folder), ref)) from None


# ------------------------------------------------------------------------------------------ searching

def search(tracker: Any, *, task: str | None = None, max_density: float | None = None) -> list[dict[str, Any]]:
    """The registered ticket versions (newest first per name), filtered on task and density."""
    query = f"tags.`{MARK}` = 'true'"
    if task:
        query += f" and tags.task = '{task}'"
    found = _call(tracker, "search model versions", tracker.client.search_model_versions, query,
                  max_results=10_000)
    rows, aliases = [], {}
    for mv in found:
        if mv.name not in aliases:  # search results do not carry aliases in every store: the model's do
            model = _call(tracker, f"look up registered model {mv.name!r}", tracker.client.get_registered_model,
                          mv.name)
            aliases[mv.name] = dict(getattr(model, "aliases", {}) or {})
        try:
            density = float(mv.tags.get("density", "nan"))
        except ValueError:
            density = float("nan")
        if max_density is not None and not density <= max_density:
            continue
        metric = mv.tags.get("metric", "accuracy")
        rows.append({"name": mv.name, "version": int(mv.version), "aliases": sorted(a for a, v in aliases[mv.name].items() if str(v) == str(mv.version)),
                     "task": mv.tags.get("task", "?"), "density": density, "level": mv.tags.get("level", "?"),
                     "metric": metric, "test": mv.tags.get(f"test_{metric}"), "val": mv.tags.get(f"val_{metric}")})
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


# ------------------------------------------------------------------------------------------ the pyfunc flavor

class TicketModel:
    """The masked network of a published ticket, for `mlflow.pyfunc`: `predict(array) -> array` (outputs)."""

    def __init__(self, folder: Path, data_root: Path | None = None) -> None:
        import torch
        from safetensors.torch import load as st_load

        from . import plugins
        from .paths import data_root as resolve_data_root
        from .task import check_ticket

        t = ticketlib.load(folder / "ticket")
        spec = t.meta.get("task", {})
        if not isinstance(spec, dict) or "plugin" not in spec:
            raise TicketError(f"{folder / 'ticket'}: ticket.json has no task to build the model from")
        task = plugins.make_task(spec["plugin"], spec.get("task", ""), spec.get("options", {}),
                                 available=plugins.discover(), data_root=resolve_data_root(data_root))
        model = task.build_model(int(t.meta.get("seed", 0)))
        check_ticket(task, t, model)
        state = dict(t.weights)
        trained = folder / TRAINED
        if trained.is_file():
            want = json.loads((folder / PUBLISHED).read_text()).get("sha256", {}).get(TRAINED)
            data = trained.read_bytes()
            if hashlib.sha256(data).hexdigest() != want:
                raise TicketError(f"{trained}: SHA-256 does not match {PUBLISHED}: the file is corrupted or was edited")
            state = st_load(data)
        for n, m in t.masks.items():  # pruned weights stay zero, whatever the weights file holds
            state[n] = state[n] * m.to(state[n].dtype)
        model.load_state_dict(state)
        self.model, self.ticket, self.task = model.eval(), t, task
        self._torch = torch

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        torch = self._torch
        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        x = torch.as_tensor(x)
        if x.is_floating_point():
            x = x.to(next(self.model.parameters()).dtype)
        with torch.no_grad():
            out = self.model(x)
        return out.detach().cpu().numpy()


def _load_pyfunc(data_path: str, model_config: Any = None) -> TicketModel:
    """MLflow's entry point for a published ticket (the MLmodel's loader_module)."""
    return TicketModel(Path(data_path))
