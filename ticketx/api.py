"""The Python API: what `ticketx find` and `ticketx transfer` do, for notebooks and scripts.

    import ticketx
    found = ticketx.find("recipes/quickstart.toml", {"train.steps": 500})
    found.table()                      # one row per (level, arm): a pandas DataFrame
    moved = ticketx.transfer(found, to="vision/fashion_mnist")
    ticket = ticketx.load_ticket(found.job_dir, level=3)

Each call follows the CLI's rules: datasets in `data_root`, else $TICKETX_DATA, else the user cache
(`ticketx.paths.data_root`); runs in the MLflow store of `tracking_uri`, else $MLFLOW_TRACKING_URI, else
the local default; job folders under `out`; the same job run again resumes. Errors are the CLI's own
exceptions (ConfigError, TaskError, TicketError, ...), each with the one-line message the CLI prints.
Paths may be `str` or `Path`. See docs/API.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Overrides
from .paths import tracking_defaults
from .task import MetricSpec

tracking_defaults()  # before mlflow is imported (where a notebook has not imported it already)

if TYPE_CHECKING:  # pandas comes with MLflow; imported only when a table is asked for
    import pandas

    from .ticket import Ticket

PathLike = str | Path


@dataclass(frozen=True)
class Result:
    """A finished find or transfer job: its records, its summary rows, and where both are kept."""

    kind: str  # "find" | "transfer"
    job_dir: Path  # the job folder: tickets, results.csv, results.json
    run_id: str  # the MLflow parent run
    experiment_id: str
    tracking_uri: str
    metrics: MetricSpec  # which metric is the result (primary) and which picks early stopping
    records: list[dict[str, Any]]  # one per trained arm (find: replicate, level, arm; transfer: + lr)
    rows: list[dict[str, Any]]  # one per (level, arm), means and stds over replicates (results.csv)

    def table(self) -> pandas.DataFrame:
        """The summary rows (what the CLI prints and results.csv holds) as a DataFrame."""
        import pandas
        return pandas.DataFrame(self.rows)

    def frame(self) -> pandas.DataFrame:
        """One row per trained arm, nested fields flattened (`at_early_stop.test_accuracy`, ...)."""
        import pandas
        return pandas.json_normalize(self.records, sep=".")

    def ticket(self, level: int | None = None, arm: str = "ticket") -> Ticket:
        """A ticket of this find job (see `load_ticket`)."""
        if self.kind != "find":
            raise ValueError("a transfer job makes no tickets; load them from the find job it came from")
        return load_ticket(self.job_dir, level=level, arm=arm, tracking_uri=self.tracking_uri,
                           metrics=self.metrics)


def _overrides(overrides: Overrides | None, device: str | None) -> dict[str, Any] | list[str]:
    """The overrides as given, with `device` as the last of them (train.device), as --device is."""
    if overrides is None:
        overrides = {}
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        return {**overrides, **({"train.device": device} if device else {})}
    return [*overrides, *([f"train.device={device}"] if device else [])]


def _out(out: PathLike | None) -> Path:
    """`out`, else $TICKETX_OUT, else ticketx-runs: where the CLI's --out puts job folders."""
    import os
    return Path(out if out is not None else os.environ.get("TICKETX_OUT") or "ticketx-runs").expanduser()


def _reporter(progress: Any, primary: str) -> Any:
    from . import progress as progresslib
    if callable(progress) and not isinstance(progress, (str, bool)):  # the caller's own Progress callable
        return progresslib.reporter(mode="off", printer=progress)
    return progresslib.reporter(mode=progress, metric=f"val_{primary}")


def find(recipe: PathLike | Mapping[str, Any], overrides: Overrides | None = None, *,
         experiment: str | None = None, out: PathLike | None = None, workers: int | None = None,
         device: str | None = None, data_root: PathLike | None = None, tracking_uri: str | None = None,
         progress: Any = "auto") -> Result:
    """Run (or resume) a ticket search: `ticketx find RECIPE --set KEY=VALUE ...`.

    `recipe` is a recipe file or the recipe as a dict (the TOML's tables as nested dicts); `overrides`
    are `{"train.steps": 500}` or `["train.steps=500"]`. Job folders go under `out` (else $TICKETX_OUT,
    else ticketx-runs). `workers` defaults to one process per core (two
    per GPU on CUDA); `device` is `--device`. `progress`: "auto" (a bar in a notebook, a live display on
    a terminal, lines otherwise), "live", "plain", "off" or False, or a callable `(event, info)`.
    """
    from . import config as configlib
    from . import devices, plugins, pool
    from . import findjob as findlib
    from .paths import data_root as resolve_data_root
    from .tracking import Tracker

    changes = _overrides(overrides, device)
    if isinstance(recipe, Mapping):
        cfg = configlib.from_dict(configlib.apply_overrides(recipe, changes))
    else:
        cfg = configlib.load(recipe, changes)
    root = resolve_data_root(data_root)
    task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options, available=plugins.discover(),
                             data_root=root)
    devices.job_device(cfg.train.device, task, precision=cfg.train.precision)  # before any run
    tracker = Tracker(tracking_uri)
    with _reporter(progress, task.metrics.primary) as report:
        result = findlib.run_find(cfg, task, tracker, root=_out(out), experiment=experiment, progress=report,
                                  workers=pool.job_workers(workers, "local", cfg, task), data_root=root)
    rows = findlib.summarise(result.records, result.metrics, order=findlib.ARM_ORDER)
    return Result("find", result.job_dir, result.parent_run_id, result.experiment_id, tracker.uri,
                  result.metrics, result.records, rows)


def transfer(ticket: PathLike | Result, to: PathLike | Mapping[str, Any], overrides: Overrides | None = None, *,
             levels: str | int | Sequence[int] | None = None, compare: PathLike | Result | None = None,
             arm: str = "ticket", experiment: str | None = None, out: PathLike | None = None,
             workers: int | None = None, device: str | None = None, data_root: PathLike | None = None,
             tracking_uri: str | None = None, progress: Any = "auto") -> Result:
    """Train tickets on another task, optimizer or learning rate: `ticketx transfer TICKET --to TO`.

    `ticket`: a find `Result`, a find job folder, a ticket folder, `runs:/RUN_ID/ticket`, `RUN_ID[@LEVEL]`, or
    `models:/NAME/VERSION` / `models:/NAME@ALIAS` (a published ticket).
    `to`: a transfer recipe file, `"plugin/task"` (the source's options and training config, another task),
    or a recipe dict. `levels`: "all", a level or a list of them (default: the pruned level with the best
    validation metric). `compare`: a find job on the target whose tickets train as the target_ticket arm.
    The rest as in `find`.
    """
    from . import config as configlib
    from . import devices, plugins, pool
    from . import transferjob as transferlib
    from .paths import data_root as resolve_data_root
    from .tracking import Tracker

    ref = str(ticket.job_dir if isinstance(ticket, Result) else ticket)
    compare_ref = str(compare.job_dir if isinstance(compare, Result) else compare) if compare is not None else None
    if isinstance(levels, int):
        levels = str(levels)
    elif levels is not None and not isinstance(levels, str):
        levels = ",".join(str(x) for x in levels)
    tracker = Tracker.checked(tracking_uri)
    changes = _overrides(overrides, device)
    fetch = transferlib.workdir()
    try:
        if isinstance(to, Mapping):
            cfg = configlib.from_dict(configlib.apply_overrides(to, changes), configlib.TransferConfig)
        else:
            cfg = transferlib.target_config(str(to), transferlib.peek(ref, tracker, fetch), changes)
        root = resolve_data_root(data_root)
        task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options, available=plugins.discover(),
                                 data_root=root)
        devices.job_device(cfg.train.device, task, precision=cfg.train.precision)
        sources = transferlib.resolve(ref, tracker, task.metrics, levels=levels, workdir=fetch, arm=arm)
        against = (transferlib.resolve(compare_ref, tracker, task.metrics, levels="all", workdir=fetch)
                   if compare_ref else [])
        with _reporter(progress, task.metrics.primary) as report:
            result = transferlib.run_transfer(cfg, task, sources, tracker, root=_out(out), compare=against,
                                              experiment=experiment, progress=report,
                                              workers=pool.job_workers(workers, "local", cfg, task), data_root=root)
    finally:
        shutil.rmtree(fetch, ignore_errors=True)
    return Result("transfer", result.job_dir, result.parent_run_id, result.experiment_id, tracker.uri,
                  result.metrics, result.records, result.rows)


def load_ticket(ref: PathLike, *, level: int | None = None, arm: str = "ticket", tracking_uri: str | None = None,
                metrics: MetricSpec | None = None) -> Ticket:
    """One ticket: masks, rewind weights and metadata (`ticketx.ticket.Ticket`), checked as it is read.

    `ref` is what `transfer` takes: a ticket folder, a find job folder, `runs:/RUN_ID/ticket`,
    `RUN_ID[@LEVEL]`, or a ticket published to the Model Registry, `models:/NAME/VERSION` or
    `models:/NAME@ALIAS` (`ticketx publish`). From a job, `level` picks the level (default: the pruned level with the best
    validation metric, judged by `metrics`, else by the job's own metric) and `arm` whose masks (the IMP
    ticket, or a criterion arm such as "snip"). Tickets fetched from MLflow are read into memory.
    """
    from . import transferjob as transferlib
    from .tracking import Tracker

    tracker = Tracker(tracking_uri)
    ref = str(ref)
    fetch = transferlib.workdir()
    try:
        spec = metrics or _job_metrics(ref, tracker)
        (source,) = transferlib.resolve(ref, tracker, spec, levels=None if level is None else str(level),
                                        workdir=fetch, arm=arm)
        return source.ticket
    finally:
        shutil.rmtree(fetch, ignore_errors=True)


def _job_metrics(ref: str, tracker: Any) -> MetricSpec:
    """The metric a find job was judged by, as its parent run's tags record it (accuracy, higher, else)."""
    import json

    from .tracking import tagged_metric
    from .transferjob import _RUN_ID
    run_id = ""
    path = Path(ref).expanduser()
    if (path / "job.json").exists():
        runs = json.loads((path / "job.json").read_text()).get("parent_runs", {})
        run_id = runs.get(tracker.uri, "")
    elif _RUN_ID.match(ref.partition("@")[0]):
        run_id = ref.partition("@")[0]
    if run_id and tracker.exists(run_id):
        tags = tracker.get_run(run_id).data.tags
        found = tagged_metric(tags)
        if found is not None:
            return MetricSpec(primary=found[0], higher_is_better=found[1])
    return MetricSpec()
