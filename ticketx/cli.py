"""The `ticketx` command: each subcommand parses, calls one library function, and prints."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from . import __version__

from .paths import DATA_ENV
from .paths import data_root as resolve_data_root  # --data-root, else $TICKETX_DATA, else the user cache


_ERRORS = (("config", "ConfigError"), ("devices", "DeviceError"), ("masks", "MaskError"),
           ("plugins", "PluginError"), ("task", "TaskError"), ("ticket", "TicketError"),
           ("tracking", "TrackingError"), ("pool", "WorkerError"), ("report", "ReportError"),
           ("analysis", "AnalysisError"), ("files", "FileWriteError"), ("jobs", "JobBusyError"),
           ("registry", "RegistryError"))


def _errors() -> tuple[type[BaseException], ...]:
    """The errors a command prints as one line. An error can only have been raised by a module that was
    imported, so only those are looked at: an early error never waits for torch or MLflow to import."""
    found = [getattr(sys.modules[f"ticketx.{m}"], name) for m, name in _ERRORS if f"ticketx.{m}" in sys.modules]
    return (*found, OSError)  # last: any other file or network error, in one line naming the path


class _LocalTicket:
    """TICKET as a local folder, in a `with`: a folder as it is, or a `models:/NAME/VERSION` /
    `models:/NAME@ALIAS` URI's registered ticket downloaded into a temporary folder (removed after). Ticket
    errors inside name the URI, not the temporary folder."""

    def __init__(self, ref: str | Path) -> None:
        self.ref, self.tmp = str(ref), None

    def __enter__(self) -> Path:
        from . import registry
        if not registry.is_ref(self.ref):
            return Path(self.ref)
        import tempfile

        from .tracking import Tracker
        tracker = Tracker.checked()
        self.tmp = Path(tempfile.mkdtemp(prefix="ticketx-models-"))
        try:
            self.folder = registry.fetch(self.ref, tracker, self.tmp)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self.folder

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if self.tmp is None:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        from .ticket import TicketError
        if isinstance(error, TicketError):
            raise type(error)(str(error).replace(str(self.folder), self.ref)) from None


def _workers(option: int | None, backend: str = "local", cfg: Any = None, task: Any = None) -> int:
    """--workers, else `ticketx.pool.job_workers`'s default (one per core; on CUDA, two per GPU)."""
    from .pool import job_workers
    return job_workers(option, backend, cfg, task)


def _backend(name: str, address: str | None) -> Any:
    """None for the local process pool, else the Ray backend (joining `address`, or a local cluster)."""
    if name == "local":
        if address:
            raise click.UsageError("--address is for --backend ray")
        return None
    from .raypool import RayBackend
    backend = RayBackend(address)
    backend.check()  # before any MLflow run: Ray missing, or a cluster that does not answer
    return backend


class _Printer:
    """Progress lines: one when an arm starts and ends, evaluation lines at most every few seconds."""

    def __init__(self, primary: str, early_stop: str = "val_loss", every_s: float = 5.0) -> None:
        self.primary, self.early_stop, self.every_s, self.last = primary, early_stop, every_s, 0.0

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        tag = f"[r{info.get('replicate', 0)} L{info.get('level', 0):02d} {info.get('arm', '')}]"
        if event == "resume":
            click.echo(f"resuming {info['job_dir']} (MLflow run {info['run_id']})")
        elif event == "start":
            resumed = info.get("resumed_at")
            what = (f"resuming from its checkpoint at step {resumed} of {info['steps']}" if resumed is not None
                    else f"training {info['steps']} steps")
            click.echo(f"{tag} density {100 * info['density']:.2f}%  {what}")
            self.last = time.monotonic()
        elif event == "recorded":  # a moved job's finished arms, recorded in this store
            click.echo(info["message"])
        elif event == "warning":
            click.echo(f"warning: {info['message']}", err=True)
        elif event == "eval" and self.early_stop in info["metrics"]:  # not the early-stop weights' test score
            now = time.monotonic()
            if now - self.last >= self.every_s or info["step"] == info["steps"]:
                self.last = now
                m = info["metrics"]
                val = m.get(f"val_{self.primary}")
                shown = (f"  val_{self.primary} {_fmt(self.primary, val)}"
                         if val is not None and self.early_stop != f"val_{self.primary}" else "")
                click.echo(f"{tag}   step {info['step']:>6}/{info['steps']}  "
                           f"{self.early_stop} {m.get(self.early_stop, float('nan')):.4f}{shown}")
        elif event in ("done", "skip"):
            r = info["record"]
            test = r["at_early_stop"].get(f"test_{self.primary}")
            what = "done" if event == "done" else "already done"
            click.echo(f"{tag} {what}: early stop at {r['early_stop_step']}, "
                       f"test_{self.primary} there {_fmt(self.primary, test)}"
                       + (f" ({r['seconds']:.1f} s)" if event == "done" else ""))


def _progress(mode: str, task: Any) -> Any:
    """A find or transfer job's progress: `_Printer`'s lines, and arms done of the total with elapsed time
    and ETA (`ticketx.progress`: redrawn under the lines on a terminal, a line per finished arm otherwise)."""
    from . import progress
    return progress.reporter(mode=mode, printer=_Printer(task.metrics.primary, task.metrics.early_stop),
                             metric=f"val_{task.metrics.primary}")


def _rewind_progress() -> Any:
    """instability's reporter: its lines as they are, and rewind steps done of the total with elapsed time
    and ETA (`ticketx.instability.run` sends the events)."""
    from . import progress
    return progress.reporter(printer=lambda event, info: click.echo(info["line"]) if event == "line" else None)


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4g}"


def _table(rows: list[dict[str, Any]], primary: str, lr: bool = False) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        if f"{key}_mean" not in row:
            return "-"
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        if key in ("early_stop_step", "early_bird_step", "steps_trained"):
            return f"{mean:.0f}" + (f"±{std:.0f}" if row["replicates"] > 1 else "")
        text = _fmt(primary, mean)
        if row["replicates"] > 1:
            text += f"±{_fmt(primary, std).rstrip('%')}"
        return text

    early_bird = any("steps_trained_mean" in r for r in rows)  # a job with prune.early_bird
    head = ["level", "density", "arm", *(["lr"] if lr else []), "early-stop it",
            *(["early-bird it", "steps"] if early_bird else []), f"val {primary}", f"test {primary} @es",
            f"test {primary} @end"]
    eb_cells = ("early_bird_step", "steps_trained") if early_bird else ()
    body = [[str(r["level"]), f"{100 * r['density']:.2f}%", r["arm"], *([f"{r['lr']:g}"] if lr else []),
             cell(r, "early_stop_step"), *(cell(r, k) for k in eb_cells), cell(r, f"es_val_{primary}"),
             cell(r, f"es_test_{primary}"), cell(r, f"final_test_{primary}")] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _gap_line(rows: list[dict[str, Any]], primary: str, higher_is_better: bool) -> str:
    """The ticket against every other arm at the sparsest level (in the arms table's order), in points of
    the primary test metric."""
    last = max((r["level"] for r in rows), default=0)
    at = {r["arm"]: r for r in rows if r["level"] == last}
    key = f"es_test_{primary}_mean"
    if last == 0 or key not in at.get("ticket", {}):
        return ""
    ticket = at["ticket"][key]
    parts = []
    for arm in at:
        if arm != "ticket" and key in at[arm]:
            diff = (ticket - at[arm][key]) * (1 if higher_is_better else -1)
            scale, unit = (100, " points") if primary == "accuracy" else (1, "")
            shown = round(scale * diff, 2) + 0.0  # + 0.0: no "-0.00"
            verb = "ties" if shown == 0 else "beats" if diff > 0 else "does not beat"
            parts.append(f"{verb} {arm} ({shown:+.2f}{unit})" if shown == 0 else f"{verb} {arm} by {shown:+.2f}{unit}")
    if not parts:  # the ticket trained alone: nothing to compare it with
        return ""
    density = 100 * at["ticket"]["density"]
    return f"\nat {density:.2f}% of weights, the ticket (test {primary} at early stop) " + ", ".join(parts)


def _early_bird_line(rows: list[dict[str, Any]], steps: int, rewind: int) -> str:
    """Where the early-bird iterations fell, and the share of the training budget the arms whose weights
    the masks are cut from (dense, ticket) did not use: the compute early-bird tickets save."""
    chain = [r for r in rows if r["arm"] in ("dense", "ticket") and "steps_trained_mean" in r]
    if not chain:
        return ""
    found = ", ".join(f"L{r['level']} {r['early_bird_step_mean']:.0f}" for r in chain if "early_bird_step_mean" in r)
    trained = sum(r["steps_trained_mean"] for r in chain)
    budget = sum(steps - (0 if r["level"] == 0 else rewind) for r in chain)
    return (f"\nearly-bird iteration per level: {found or 'never reached'}; the dense and ticket arms trained "
            f"{trained:,.0f} of {budget:,} steps ({100 * (1 - trained / budget):.1f}% saved)")


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the job's runs end KILLED and it can be resumed."""


class _Main(click.Group):
    """The `ticketx` group: SIGTERM (timeout, batch schedulers, kill) and SIGHUP (a closed terminal) end a
    command as Ctrl-C does, and the exit status is 128 + the signal's number, as shells report it."""

    signalled: int | None = None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        import signal

        from .signals import interrupt

        def on_interrupt(signum: int, frame: Any) -> None:  # Ctrl-C: held back as the others are
            interrupt(KeyboardInterrupt)

        def on_signal(signum: int, frame: Any) -> None:
            if _Main.signalled is not None:
                return  # already stopping: let the runs be marked
            _Main.signalled = signum
            import multiprocessing
            for child in multiprocessing.active_children():  # the job's workers, which a terminal's
                try:  # Ctrl-C reaches through the process group but a signal to this process does not
                    os.kill(child.pid, signal.SIGTERM)  # ticketx.pool: a unit in training stops as on Ctrl-C
                except ProcessLookupError:
                    pass
            interrupt(_Signalled)  # now, or once the run being created or ended is known to the job

        before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
        before[signal.SIGINT] = signal.signal(signal.SIGINT, on_interrupt)
        _Main.signalled = None
        try:
            return super().main(*args, **kwargs)
        except SystemExit:
            if _Main.signalled is not None:
                raise SystemExit(128 + _Main.signalled) from None
            raise
        finally:
            for sig, handler in before.items():  # as they were (the CLI run inside a test, say)
                signal.signal(sig, handler)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ticketx")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads per process (two cores are better used by two processes)")
def main(threads: int) -> None:
    """Find lottery tickets and transfer them; every run is recorded in MLflow."""
    from .training import configure_torch
    configure_torch(threads)
    from .paths import tracking_defaults
    tracking_defaults()


_device_option = click.option(
    "--device", metavar="DEVICE",
    help="where arms train: auto, cpu, cuda or cuda:N; overrides train.device (not part of the job's hash, "
         "so a job may resume on another device) [default: the recipe's train.device, auto]")


def _with_device(overrides: tuple[str, ...], device: str | None) -> tuple[str, ...]:
    """--device as the last override of train.device."""
    return (*overrides, f"train.device={device}") if device else overrides


def _job_device(cfg: Any, task: Any) -> tuple[str, str]:
    """(the device a job's arms train on, that and the precision in words for its first line); DeviceError
    (before any run) where that device is not there or cannot train in the precision asked."""
    from . import devices
    device = devices.job_device(cfg.train.device, task, precision=cfg.train.precision)
    return device, devices.describe(device, cfg.train.precision, cfg.train.tf32)


def _job_options(command: Any) -> Any:
    """The options find and transfer share: where results go, where data is, how many workers."""
    for option in reversed([
        click.option("--experiment", help="MLflow experiment (default: the recipe's name)"),
        click.option("--data-root", help=f"dataset folder (default: ${DATA_ENV}, else ~/.cache/ticketx/data)"),
        click.option("--out", type=click.Path(path_type=Path), default=Path("ticketx-runs"), show_default=True,
                     envvar="TICKETX_OUT", help="where job folders (tickets, results) are written"),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="one-thread processes training arms side by side [default: the number of cores; "
                          "on CUDA, 2 per GPU; with --backend ray, the cluster's CPUs]"),
        click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     envvar="TICKETX_BACKEND", help="where arms run: this machine's process pool, or Ray "
                                                    '(pip install "ticketx[ray]")'),
        click.option("--address", metavar="HOST:PORT", envvar="RAY_ADDRESS",
                     help="the Ray cluster to join [default: $RAY_ADDRESS, else a local one]"),
        _device_option,
        click.option("--progress", "progress_mode", type=click.Choice(["auto", "live", "plain", "off"]),
                     default="auto", show_default=True, envvar="TICKETX_PROGRESS",
                     help="arms done, elapsed time and ETA: redrawn in place (live), a line after each arm "
                          "(plain), or neither (off); auto: live on a terminal, else plain"),
    ]):
        command = option(command)
    return command


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a recipe key, e.g. --set train.steps=500 (repeatable; values are TOML)")
@_job_options
def find(recipe: Path, overrides: tuple[str, ...], experiment: str | None, data_root: str | None,
         out: Path, workers: int | None, backend: str, address: str | None, device: str | None,
         progress_mode: str) -> None:
    """Search for winning tickets by iterative magnitude pruning, with random-reinit and random-prune
    controls at every level, and any other arms the recipe lists (masks found at initialisation by SNIP,
    GraSP, SynFlow, ... at the ticket's density, and their ablations). Running the same recipe again
    resumes where it stopped."""
    from . import config as configlib
    from . import plugins
    from .files import check_writable

    try:
        check_writable(out, "job folders")  # before anything trains or opens a run
        cfg = configlib.load(recipe, _with_device(overrides, device))
        task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options,
                                 available=plugins.discover(), data_root=resolve_data_root(data_root))
        _, where = _job_device(cfg, task)
        from . import findjob as findlib  # MLflow: imported once the recipe and task are known good
        from .tracking import Tracker
        tracker = Tracker.checked()
        click.echo(f"ticketx find {cfg.name}: {cfg.task.plugin}/{cfg.task.name}, {cfg.prune.levels} levels "
                   f"x {len(cfg.arms)} arms x {cfg.replicates} replicate(s), {cfg.train.steps} steps each, "
                   f"on {where}; MLflow store {tracker.uri}")
        with _progress(progress_mode, task) as report:
            result = findlib.run_find(cfg, task, tracker, root=out, experiment=experiment, progress=report,
                                      workers=_workers(workers, backend, cfg, task),
                                      backend=_backend(backend, address), data_root=resolve_data_root(data_root))
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    rows = findlib.summarise(result.records, result.metrics, order=findlib.ARM_ORDER)
    click.echo("\n" + _table(rows, result.metrics.primary))
    for line in (_gap_line(rows, result.metrics.primary, result.metrics.higher_is_better),
                 _early_bird_line(rows, cfg.train.steps, cfg.prune.rewind_step)):
        if line:
            click.echo(line)
    click.echo(f"\njob folder:  {result.job_dir}  (tickets in r*/L*/ticket, results.csv)")
    click.echo(f"MLflow run:  {result.parent_run_id} (experiment {result.experiment_id})")
    if tracker.ui_command():
        click.echo(f"open it:     {tracker.ui_command()}")
    click.echo(f"then:        {tracker.ui_link(result.experiment_id)}")


@main.command()
@click.argument("ticket_ref", metavar="TICKET")
@click.option("--to", "to", required=True, metavar="TARGET",
              help="a transfer recipe (.toml) or PLUGIN/TASK, e.g. vision/fashion_mnist")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a target key, e.g. --set train.optimizer=sgd --set 'train.lr=[0.1,0.03,0.01]'")
@click.option("--levels", help="levels of a find job to transfer: 'all' or e.g. '2,4' "
                               "(default: the pruned level with the best validation metric)")
@click.option("--compare", "compare_ref", metavar="FIND_JOB",
              help="a find job on the target (folder or run id): its tickets train as the target_ticket arm")
@click.option("--arm", "source_arm", default="ticket", show_default=True,
              help="from a find job: whose masks to transfer, the IMP ticket or a criterion arm (snip, synflow, ...)")
@_job_options
def transfer(ticket_ref: str, to: str, overrides: tuple[str, ...], levels: str | None, compare_ref: str | None,
             source_arm: str, experiment: str | None, data_root: str | None, out: Path, workers: int | None,
             backend: str, address: str | None, device: str | None, progress_mode: str) -> None:
    """Train a ticket (a ticket folder, a find job folder, runs:/RUN_ID/ticket, or RUN_ID[@LEVEL]) on
    another dataset, optimizer or learning rate, beside a random ticket, the ticket's masks with fresh
    weights, and the dense network. A list of learning rates is a grid: validation picks one per arm."""
    from . import plugins
    from . import transferjob as transferlib
    from .files import check_writable
    from .tracking import Tracker

    fetch = None
    try:
        check_writable(out, "job folders")  # before anything trains or opens a run
        fetch = transferlib.workdir()  # an unwritable $TMPDIR is an error like any other
        tracker = Tracker.checked()
        available = plugins.discover()
        cfg = transferlib.target_config(to, transferlib.peek(ticket_ref, tracker, fetch),
                                        _with_device(overrides, device))
        task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options, available=available,
                                 data_root=resolve_data_root(data_root))
        _, where = _job_device(cfg, task)
        # "the best level" is judged by the target's metric and direction (accuracy up, perplexity down)
        sources = transferlib.resolve(ticket_ref, tracker, task.metrics, levels=levels, workdir=fetch,
                                      arm=source_arm)
        compare = (transferlib.resolve(compare_ref, tracker, task.metrics, levels="all", workdir=fetch)
                   if compare_ref else [])
        click.echo(f"ticketx transfer {cfg.name}: {len(sources)} ticket(s) from {ticket_ref} "
                   f"(levels {', '.join(str(s.level) for s in sources)}) onto {cfg.task.plugin}/{cfg.task.name}, "
                   f"{cfg.train.optimizer} lr {' '.join(f'{x:g}' for x in cfg.lrs)}, {cfg.replicates} replicate(s), "
                   f"on {where}; MLflow store {tracker.uri}")
        with _progress(progress_mode, task) as report:
            result = transferlib.run_transfer(cfg, task, sources, tracker, root=out, compare=compare,
                                              experiment=experiment, progress=report,
                                              workers=_workers(workers, backend, cfg, task),
                                              backend=_backend(backend, address),
                                              data_root=resolve_data_root(data_root))
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    finally:
        if fetch is not None:
            shutil.rmtree(fetch, ignore_errors=True)  # tickets fetched from MLflow: loaded, no longer needed
    primary = result.metrics.primary
    click.echo("\n" + _table(result.rows, primary, lr=True))
    gaps = _transfer_gaps(result.rows, primary, result.metrics.higher_is_better)
    if gaps:
        click.echo(gaps)
    click.echo(f"\njob folder:  {result.job_dir}  (results.csv, curves.png)")
    click.echo(f"figure:      {result.figure}")
    click.echo(f"MLflow run:  {result.parent_run_id} (experiment {result.experiment_id})")
    if tracker.ui_command():
        click.echo(f"open it:     {tracker.ui_command()}")
    click.echo(f"then:        {tracker.ui_link(result.experiment_id)}")


def _transfer_gaps(rows: list[dict[str, Any]], primary: str, higher_is_better: bool) -> str:
    key = f"es_test_{primary}_mean"
    out = []
    for level in sorted({r["level"] for r in rows if r["arm"] == "transferred"}):
        at = {r["arm"]: r for r in rows if r["level"] == level}
        if key in at.get("transferred", {}) and key in at.get("random_ticket", {}):
            diff = (at["transferred"][key] - at["random_ticket"][key]) * (1 if higher_is_better else -1)
            scale, unit = (100, " points") if primary == "accuracy" else (1, "")
            out.append(f"  at {100 * at['transferred']['density']:.2f}% of weights: transferred - random_ticket "
                       f"= {scale * diff:+.2f}{unit}")
    return ("\ntest " + primary + " at early stop, transferred ticket against a random ticket:\n"
            + "\n".join(out)) if out else ""


@main.command()
@click.argument("ticket_dir", metavar="TICKET", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="where to write the TorchScript model (load it with torch.jit.load)")
@click.option("--weights", type=click.Choice(["auto", "trained", "ticket"]), default="auto", show_default=True,
              help="trained: the ticket arm's trained weights beside the ticket in its job folder; ticket: the "
                   "ticket's own (rewind) weights; auto: trained when present")
@click.option("--max-density", type=click.FloatRange(0, 1), default=None,
              help="Linear layers at or below this density are stored as CSR [default: 0.18; 0 keeps all "
                   "dense, which is faster at batch 1]")
@click.option("--data-root", help="dataset folder, for the output check and the speed measurement")
def export(ticket_dir: Path, out: Path, weights: str, max_density: float | None, data_root: str | None) -> None:
    """Write a compact inference model of a ticket: sparse CSR Linear layers where that is faster."""
    from safetensors.torch import load_file

    from . import export as exportlib
    from . import plugins
    from . import ticket as ticketlib
    from .files import FileWriteError, check_writable
    from .task import check_ticket

    try:
        if out.is_dir():
            raise FileWriteError(f"--out {out} is a folder; name the model file to write, e.g. {out / 'model.pt'}")
        check_writable(out.parent, f"the exported model {out.name}")
        with _LocalTicket(ticket_dir) as local:  # a folder, or a models:/ URI fetched into one
            t = ticketlib.load(local)
            spec = t.meta.get("task", {})
            if not isinstance(spec, dict):
                raise ticketlib.TicketError(f"{ticket_dir}: ticket.json has no task description to build the model")
            task = plugins.make_task(spec.get("plugin", "?"), spec.get("task", "?"), spec.get("options", {}),
                                     available=plugins.discover(), data_root=resolve_data_root(data_root))
            model = task.build_model(int(t.meta.get("seed", 0)))
            check_ticket(task, t, model)
            trained = local.parent / "trained.safetensors"  # the ticket arm's, beside its ticket
            arm = t.meta.get("arm", "ticket")
            if weights == "trained" and arm != "ticket":
                raise ticketlib.TicketError(f"{ticket_dir} is the {arm} arm's ticket, whose trained weights a find job "
                                            "does not keep; export its own weights with --weights ticket")
            if weights == "trained" and not trained.exists():
                raise ticketlib.TicketError(f"no trained weights at {trained} (a ticket from a find job folder has them)")
            use_trained = weights != "ticket" and arm == "ticket" and trained.exists()
            model.load_state_dict(load_file(str(trained)) if use_trained else t.weights)
        compact, report = exportlib.compact(model, t.masks, max_density=exportlib.DEFAULT_MAX_DENSITY
                                            if max_density is None else max_density)
        path = exportlib.save(compact, out)
    except (*_errors(), ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes) from the ticket's "
               f"{'trained' if use_trained else 'rewind (untrained)'} weights; load it with torch.jit.load")
    w = max(len(r.name) for r in report)
    for r in report:
        click.echo(f"  {r.name.ljust(w)}  {'x'.join(map(str, r.shape)):>10}  {100 * r.density:6.2f}%  {r.storage}")
    examples = getattr(task, "example_inputs", None)  # optional hook: real inputs to check and time on
    if examples is None:
        click.echo(f"not checked or timed: task {spec.get('plugin')}/{spec.get('task')} has no example_inputs(n) "
                   "hook to give inputs (see docs/PLUGINS.md)")
        return
    dense = model.eval()
    loaded = exportlib.load(path)
    for batch in (256, 1):
        x = examples(batch)
        diff = exportlib.max_difference(dense, loaded, x)
        a, b = exportlib.throughput(dense, x, seconds=0.5), exportlib.throughput(loaded, x, seconds=0.5)
        click.echo(f"batch {batch:>3}: max |exported - masked dense| = {diff:.2e}; {b:,.0f} vs {a:,.0f} "
                   f"forward passes/s ({b / a:.2f}x)")


@main.command()
def tasks() -> None:
    """List installed task plugins and their tasks."""
    from . import plugins

    try:
        rows = plugins.describe(plugins.discover())
    except plugins.PluginError as e:
        raise click.ClickException(str(e)) from None
    if not rows:
        click.echo("no task plugins installed (try: pip install -e plugins/vision)")
    for name, origin, found in rows:
        click.echo(f"{name}  ({origin})")
        if isinstance(found, str):
            click.echo(f"  unavailable: {found}")
            continue
        width = max((len(t) for t in found), default=0)
        for task_name, text in sorted(found.items()):
            click.echo(f"  {task_name.ljust(width)}  {text}")


@main.group("plugin")
def plugin_group() -> None:
    """Start a task plugin of your own."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="the folder to write ticketx-NAME/ in")
def plugin_new(name: str, parent: Path) -> None:
    """Write DIR/ticketx-NAME/, a task plugin that installs and runs as it is.

    NAME (lowercase letters, digits, underscores) is the plugin's entry-point name, its recipes'
    task.plugin; the distribution is ticketx-NAME, the package ticketx_NAME. It holds one task, a small
    MLP on synthetic data (no download), a recipe that searches it in seconds, tests that run ticketx's
    conformance kit on it (ticketx.testing.check_task), and a README saying what to change to make it
    yours. An existing folder is never overwritten (an empty one is used).
    """
    from . import plugins, scaffold

    try:
        written = scaffold.new_plugin(name, parent, taken=plugins.discover())
    except (scaffold.ScaffoldError, plugins.PluginError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote plugin {name!r} (task gauss) in {written.root}:")
    for path in written.files:
        click.echo(f"  {path}")
    click.echo("\nnext, install it, search it, test it:")
    for command in scaffold.next_commands(written):
        click.echo(f"  {command}")


@main.command()
@click.argument("ticket_dir", metavar="TICKET", type=click.Path(path_type=Path))
@click.option("--check/--no-check", default=True, show_default=True,
              help="build the ticket's model through its plugin and check every tensor fits it")
@click.option("--data-root", help="dataset folder, for tasks whose model shape depends on the data")
def show(ticket_dir: Path, check: bool, data_root: str | None) -> None:
    """Print a ticket's metadata and per-layer density."""
    from . import plugins
    from . import ticket as ticketlib
    from .task import check_ticket

    try:
        with _LocalTicket(ticket_dir) as local:  # a folder, or a models:/ URI fetched into one
            t = ticketlib.load(local)
        fits = ""
        spec = t.meta.get("task", {})
        if check and isinstance(spec, dict) and spec.get("plugin") in (available := plugins.discover()):
            task = plugins.make_task(spec["plugin"], spec.get("task", ""), spec.get("options", {}),
                                     available=available, data_root=resolve_data_root(data_root))
            model = task.build_model(int(t.meta.get("seed", 0)))
            check_ticket(task, t, model)
            fits = f"yes: every tensor matches {spec['plugin']}/{spec.get('task')}'s model"
        elif check:
            fits = f"not checked: plugin {spec.get('plugin') if isinstance(spec, dict) else spec!r} not installed"
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    m = t.meta
    task = m.get("task", {})
    click.echo(f"{'ticket':<16}{ticket_dir}")
    click.echo(f"{'task':<16}{task.get('plugin', '?')}/{task.get('task', '?')} {task.get('options', '')}")
    for key in ("arm", "criterion", "ablation", "level", "seed", "replicate", "rewind_step", "source_run_id",
                "config_hash", "ticketx_version"):
        if key in m:
            click.echo(f"{key.replace('_', ' '):<16}{m[key]}")
    kept = sum(int((x > 0).sum()) for x in t.masks.values())
    total = sum(x.numel() for x in t.masks.values())
    if fits:
        click.echo(f"{'fits model':<16}{fits}")
    click.echo(f"{'density':<16}{100 * t.density:.2f}% ({kept:,} of {total:,} prunable weights kept)\n")
    rows = [(n, "x".join(map(str, x.shape)), int((x > 0).sum()), x.numel()) for n, x in t.masks.items()]
    w = max([len("layer")] + [len(r[0]) for r in rows])
    click.echo(f"{'layer'.ljust(w)}  {'shape':>14}  {'kept':>10}  {'total':>10}  density")
    for name, shape, k, n in rows:
        click.echo(f"{name.ljust(w)}  {shape:>14}  {k:>10,}  {n:>10,}  {100 * k / n:6.2f}%")


@main.command()
@click.argument("ticket_dir", metavar="TICKET", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="the registered model to add a version to (created if new)")
@click.option("--alias", "aliases", multiple=True, metavar="ALIAS",
              help="point this alias (e.g. champion) at the new version (repeatable)")
@click.option("--data-root", help="dataset folder, for tasks whose model shape depends on the data")
def publish(ticket_dir: Path, name: str, aliases: tuple[str, ...], data_root: str | None) -> None:
    """Register a ticket in the MLflow Model Registry as a new version of model NAME.

    TICKET is a ticket folder (a find job's r0/L03/ticket, or its level folder r0/L03). The version holds
    the masks, the rewind weights and ticket.json, and from a find job's level the ticket arm's trained
    weights; it is tagged with task, model, density, level, rewind step, criterion, source run and the
    metric at early stop, and loads with mlflow.pyfunc.load_model("models:/NAME@ALIAS"). Every command
    that takes a TICKET takes models:/NAME/VERSION and models:/NAME@ALIAS.
    """
    from . import registry
    from .tracking import Tracker

    try:
        if (ticket_dir / "ticket" / "ticket.json").is_file() and not (ticket_dir / "masks.safetensors").exists():
            ticket_dir = ticket_dir / "ticket"  # a level folder (its ticket.json is the arm's record): its ticket
        tracker = Tracker.checked()
        done = registry.publish(ticket_dir, name, tracker, aliases=aliases, data_root=resolve_data_root(data_root))
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    t = done.tags
    metric = t.get("metric", "accuracy")
    score = t.get(f"test_{metric}")
    shown = f", test {metric} at early stop {_fmt(metric, float(score))}" if score is not None else ""
    click.echo(f"published {ticket_dir} as {done.uri} ({t['task']}, density {100 * float(t['density']):.2f}%, "
               f"level {t['level']}{shown})")
    for alias in done.aliases:
        click.echo(f"{'alias':<13}{registry.PREFIX}{name}@{alias}")
    click.echo(f"{'source run':<13}{done.run_id} (experiment {done.experiment_id})")
    if tracker.ui_command():
        click.echo(f"{'open it':<13}{tracker.ui_command()}")
    click.echo(f"{'then':<13}{registry.ui_link(tracker, name, done.version)}")
    ref = f"{registry.PREFIX}{name}@{done.aliases[0]}" if done.aliases else done.uri
    click.echo(f"{'use it':<13}ticketx transfer {ref} --to PLUGIN/TASK, or "
               f"mlflow.pyfunc.load_model({ref!r})")


@main.command()
@click.option("--task", "task_name", metavar="PLUGIN/TASK", help="only tickets found on this task")
@click.option("--max-density", type=click.FloatRange(0, 1), default=None,
              help="only tickets at or below this density (a share: 0.1 is 10%)")
def tickets(task_name: str | None, max_density: float | None) -> None:
    """List the tickets published to the MLflow Model Registry (`ticketx publish`)."""
    from . import registry
    from .tracking import Tracker

    try:
        tracker = Tracker.checked()
        rows = registry.search(tracker, task=task_name, max_density=max_density)
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    if not rows:
        click.echo(f"no published tickets{' matching' if task_name or max_density is not None else ''} in "
                   f"{tracker.uri} (publish one with: ticketx publish TICKET --name NAME)")
        return
    head = ["name", "version", "aliases", "task", "density", "level", "test metric @es"]
    body = [[r["name"], str(r["version"]), ",".join(r["aliases"]) or "-", r["task"], f"{100 * r['density']:.2f}%",
             r["level"], f"{r['metric']} {_fmt(r['metric'], float(r['test']))}" if r["test"] is not None else "-"]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    click.echo("\n".join(lines))
    click.echo(f"\nuse one as TICKET: models:/NAME/VERSION or models:/NAME@ALIAS (MLflow store {tracker.uri})")


@main.command()
@click.argument("ref", metavar="JOB")
@click.option("--out", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="folder to write into (one subfolder per job)")
@click.option("--log/--no-log", default=True, show_default=True,
              help="also log the table and figures to each job's MLflow parent run, under report/")
def report(ref: str, out: Path, log: bool) -> None:
    """Paper-style figures and a table of a find or transfer job.

    JOB is a job folder, a job's parent run id, or an MLflow experiment name (every job in it). Writes
    report.csv (per level and arm: density, early-stop iteration, test metric at early stop and at the
    end, generalisation gap, weight movement; mean/min/max over replicates), metric.png, early_stop.png,
    and gap.png / movement.png where the job recorded those numbers.
    """
    from .files import check_writable
    from .report import needs_store
    from .report import report as make_report
    from .tracking import Tracker, TrackingError

    def done(job: Any, files: list[Path], logged: str) -> None:
        click.echo(f"{job.kind} {job.name} ({len(job.records)} finished arm(s)"
                   + (f", run {job.run_id}" if job.run_id else "") + "):")
        for f in files:
            click.echo(f"  {f}")
        click.echo(f"  {logged}")

    try:
        check_writable(out, "the report")
        tracker = None
        if needs_store(ref, log):  # a job folder with --no-log needs no store
            try:
                tracker = Tracker.checked()
            except TrackingError as e:
                if Path(ref).expanduser().is_dir():
                    raise TrackingError(f"{e}; or pass --no-log to write the report without logging it") from None
                raise
        make_report(ref, tracker, out, log=log, done=done)
    except _errors() as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("first", metavar="TICKET_A", type=click.Path(path_type=Path))
@click.argument("second", metavar="TICKET_B", type=click.Path(path_type=Path))
def overlap(first: Path, second: Path) -> None:
    """Mask overlap (Jaccard index of the surviving weights) of two tickets, per layer.

    Compare tickets from different seeds, datasets or optimizers; the `random` line is what two random
    masks at the same overall densities would share.
    """
    from . import ticket as ticketlib
    from .analysis import mask_overlap

    try:
        with _LocalTicket(first) as local_a, _LocalTicket(second) as local_b:  # folders or models:/ URIs
            a, b = ticketlib.load(local_a), ticketlib.load(local_b)
        result = mask_overlap(a.masks, b.masks)
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"A: {first} ({100 * a.density:.2f}% of weights)\nB: {second} ({100 * b.density:.2f}% of weights)")
    w = max(len(k) for k in result)
    click.echo(f"{'layer'.ljust(w)}  Jaccard")
    for name, value in result.items():
        if name in ("all", "random"):
            continue
        click.echo(f"{name.ljust(w)}  {value:.4f}")
    click.echo(f"{'all'.ljust(w)}  {result['all']:.4f}")
    click.echo(f"{'random'.ljust(w)}  {result['random']:.4f}  (two random masks at these densities)")


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rewind", "rewind", required=True,
              help="comma-separated rewind steps k to test, e.g. 0,100,500,2000")
@click.option("--ticket", "ticket_dir", type=click.Path(path_type=Path),
              help="hold this ticket's masks while training (default: the dense network)")
@click.option("--points", type=click.IntRange(min=3), default=11, show_default=True,
              help="evaluation points along the line between the two copies")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
@click.option("--experiment", help="MLflow experiment (default: the recipe's name)")
@click.option("--data-root", help="dataset folder (default: $TICKETX_DATA, else a user cache folder)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("ticketx-runs"), show_default=True,
              help="folder for instability.csv and instability.png (in a subfolder per recipe, rewind "
                   "steps, points and ticket)")
@_device_option
def instability(recipe: Path, rewind: str, ticket_dir: Path | None, points: int, overrides: tuple[str, ...],
                experiment: str | None, data_root: str | None, out: Path, device: str | None) -> None:
    """Linear mode connectivity (Frankle et al. 2020): the error barrier between two copies trained from
    θk with different data orders, for each rewind step k. A barrier near zero means training from θk is
    stable: where rewinding to k finds tickets that rewinding to 0 does not."""
    from . import config as configlib
    from . import instability as inst
    from . import plugins
    from . import ticket as ticketlib
    from .files import check_writable
    from .task import check_spec, check_ticket
    from .tracking import Tracker, TrackingError

    try:
        try:
            ks = [int(x) for x in rewind.split(",") if x.strip()]
        except ValueError:
            raise configlib.ConfigError(f"--rewind takes comma-separated integers, got {rewind!r}") from None
        if not ks:
            raise configlib.ConfigError("--rewind needs at least one step")
        cfg = configlib.load(recipe, _with_device(overrides, device))
        inst.check(cfg, ks)
        # the output folder and the store before anything trains: a failure after training loses it
        folder = check_writable(inst.folder(out, cfg, ks, points, ticket_dir), "instability.csv and .png")
        tracker = Tracker.checked()
        task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options,
                                 available=plugins.discover(), data_root=resolve_data_root(data_root))
        on, where = _job_device(cfg, task)
        masks = None
        if ticket_dir is not None:
            with _LocalTicket(ticket_dir) as local:  # a folder, or a models:/ URI fetched into one
                t = ticketlib.load(local)
            model = task.build_model(cfg.init_seed(0))
            check_ticket(task, t, model)
            masks = t.masks
        task.prepare()
        check_spec(task, cfg.task.plugin, cfg.task.name)
        exp_id = tracker.experiment(experiment or cfg.name)
        what, _ = inst.error_fn(task)
        run_id = tracker.start_run(exp_id, f"instability {cfg.name}",
                                   tags={"ticketx.kind": "instability", "ticketx.task": f"{cfg.task.plugin}/{cfg.task.name}",
                                         "ticketx.device": on},
                                   params={"rewind": ",".join(map(str, ks)), "points": str(points),
                                           "ticket": str(ticket_dir or ""), "error": what, "device": on,
                                           "precision": cfg.train.precision})
        click.echo(f"ticketx instability {cfg.name}: k = {', '.join(map(str, ks))}; "
                   f"{cfg.train.steps} steps per copy, on {where}; error = {what}; MLflow run {run_id}")
        try:
            with _rewind_progress() as report:
                results = inst.run(cfg, task, ks, masks=masks, points=points, progress=report, device=on)
            for p in results:
                tracker.log_metrics(run_id, {"barrier": p.barrier, "error_copy1": p.end_errors[0],
                                             "error_copy2": p.end_errors[1]}, p.k)
            files = inst.write(results, what, folder, f"instability: {cfg.name}, {what}")
            for f in files:
                tracker.log_artifact(run_id, f)
        except BaseException as e:  # no run left RUNNING, whatever stopped it
            try:
                tracker.finish(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            except TrackingError:
                pass  # the store itself failed: the error that stopped the run is the one to report
            raise
        tracker.finish(run_id)
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"\n{'k':>8}  {'barrier':>8}  {'copy 1':>8}  {'copy 2':>8}  ({what})")
    for row in inst.summary(results):
        click.echo(f"{row['k']:>8}  {row['barrier']:8.4f}  {row['error_copy1']:8.4f}  {row['error_copy2']:8.4f}")
    click.echo(f"\nfiles:       {', '.join(str(f) for f in files)}")
    click.echo(f"MLflow run:  {run_id} (experiment {exp_id})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
