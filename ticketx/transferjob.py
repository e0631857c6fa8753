"""Tickets onto other tasks: datasets, optimizers, learning rates (Morcos et al. 2019, arXiv 1906.02773).

For every source ticket (one per level) and every learning rate of the grid, each replicate trains on
the target task:

    transferred    the ticket's masks and weights; the target's head re-initialised (dense by default)
    random_ticket  random masks at the same per-layer sparsity, fresh initialisation
    masks_reinit   the ticket's masks, fresh initialisation
    dense          the unpruned network, fresh initialisation (once, not per level)
    target_ticket  with --compare: the ticket a find job on the target itself found at the same level

The learning rate of each (level, arm) is chosen on the target's validation split (mean over replicates
of the validation metric at early stop); the test split only reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import arms as armlib
from . import devices, pool
from . import masks as masklib
from . import ticket as ticketlib
from . import config as configlib
from .config import TransferConfig, hashed, run_params
from .files import write_json
from .jobs import ArmSetup, Job, Progress, summarise
from .task import Masks, MetricSpec, Task, check_plan, check_spec, check_ticket
from .ticket import Ticket, TicketError
from .tracking import Tracker

ARM_ORDER = armlib.order("transfer")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Source:
    """One ticket to transfer: the level it was found at, the ticket, and where it came from."""

    level: int
    ticket: Ticket
    where: str


# ------------------------------------------------------------------------------------- finding tickets

def _pick_levels(found: Mapping[int, Any], scores: Mapping[int, float], levels: str | None,
                 higher_is_better: bool, what: str) -> list[int]:
    """The levels asked for: a list, "all", or (None) the pruned level with the best validation score."""
    if not found:
        raise TicketError(f"{what} holds no tickets")
    if levels == "all":  # every pruned level; level 0's "ticket" is the dense network the dense arm trains
        return sorted(lv for lv in found if lv > 0) or sorted(found)
    if levels:
        try:
            wanted = sorted({int(x) for x in levels.split(",")})
        except ValueError:
            raise TicketError(f"levels must be 'all' or a comma-separated list of integers, got {levels!r}") from None
        missing = [lv for lv in wanted if lv not in found]
        if missing:
            raise TicketError(f"{what} has no level {missing}; its levels: {sorted(found)}")
        return wanted
    pruned = {lv: s for lv, s in scores.items() if lv > 0} or dict(scores)
    if not pruned:
        raise TicketError(f"{what}: no validation score to choose the best level by; name one with --levels")
    return [max(pruned, key=lambda lv: pruned[lv] if higher_is_better else -pruned[lv])]


def resolve(ref: str, tracker: Tracker, spec: MetricSpec, *, levels: str | None, workdir: Path,
            arm: str = "ticket") -> list[Source]:
    """Tickets named by `ref`: a ticket folder, a find job folder, a `runs:/` URI, a registered ticket
    (`models:/NAME/VERSION`, `models:/NAME@ALIAS`), or `RUN_ID[@LEVEL]`.

    A job (folder or parent run id) gives its replicate-0 tickets at `levels` ("all", "1,3"), or at the
    pruned level with the best validation metric when none is named: the IMP tickets, or with `arm` the
    masks (and starting weights) of another find arm that has its own (a criterion arm: snip, ...).
    """
    found_by = armlib.FIND.get(arm)
    if found_by is None or found_by.ticket_dir is None:
        with_masks = [a.name for a in armlib.FIND.values() if a.ticket_dir]
        raise TicketError(f"--arm must be a find arm with masks of its own ({', '.join(with_masks)}), got {arm!r}")
    key = f"es_val_{spec.primary}"  # the MLflow metric of a child run
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / ticketlib.META).exists():
            if levels:
                raise TicketError(f"{ref} is a single ticket; --levels applies to a find job (folder or run id)")
            t = ticketlib.load(path)
            return [Source(int(t.meta.get("level", 0)), t, str(path))]
        if (path / "job.json").exists():
            found, scores = {}, {}
            for d in sorted((path / "r0").glob("L*")):
                lv = int(d.name[1:])
                folder = d / ("ticket" if lv == 0 else found_by.ticket_dir)  # level 0: the dense network
                if (folder / ticketlib.META).exists():
                    found[lv] = folder
                    for name in (found_by.file, "dense"):
                        if (d / f"{name}.json").exists():
                            rec = json.loads((d / f"{name}.json").read_text())
                            es = rec.get("at_early_stop", {})  # split-prefixed names; MLflow adds "es_"
                            if f"val_{spec.primary}" in es:
                                scores[lv] = es[f"val_{spec.primary}"]
            chosen = _pick_levels(found, scores, levels, spec.higher_is_better, f"find job {path}")
            return [Source(lv, ticketlib.load(found[lv]), str(found[lv])) for lv in chosen]
        raise TicketError(f"{path}: neither a ticket folder ({ticketlib.META}) nor a find job folder (job.json)")
    if ref.startswith("models:/"):  # a ticket published to the Model Registry (`ticketx publish`)
        from . import registry
        if levels:
            raise TicketError(f"{ref} is a single registered ticket; --levels applies to a find job (folder or run id)")
        t = registry.load(ref, tracker, workdir / "models")
        return [Source(int(t.meta.get("level", 0)), t, ref)]
    if ref.startswith("runs:/"):
        run_id, _, artifact = ref[len("runs:/"):].partition("/")
        local = tracker.download(tracker.get_run(run_id).info.run_id, artifact or "ticket", workdir / run_id)
        t = ticketlib.load(local)
        return [Source(int(t.meta.get("level", 0)), t, ref)]
    run_id, at, level = ref.partition("@")
    if not _RUN_ID.match(run_id):
        raise TicketError(f"{ref!r} is not a ticket folder, a find job folder, a runs:/ URI or an MLflow run id "
                          "(RUN_ID or RUN_ID@LEVEL, or models:/NAME/VERSION or models:/NAME@ALIAS)")
    if at and levels:
        raise TicketError(f"give the level either as {ref} or with --levels, not both")
    run = tracker.get_run(run_id)
    if "ticketx.arm" in run.data.tags:  # a child run: its own ticket
        t = ticketlib.load(tracker.download(run_id, "ticket", workdir / run_id))
        return [Source(int(t.meta.get("level", 0)), t, f"runs:/{run_id}/ticket")]
    if run.data.tags.get("ticketx.kind") != "find":
        raise TicketError(f"MLflow run {run_id} is not a ticketx find job or one of its ticket runs")
    found, scores = {}, {}
    for child in tracker.child_runs(run.info.experiment_id, run_id):
        p = child.data.params
        if p.get("arm") in (arm, "dense") and p.get("replicate") == "0" and child.info.status == "FINISHED":
            lv = int(p["level"])
            found[lv] = child.info.run_id
            if key in child.data.metrics:
                scores[lv] = child.data.metrics[key]
    chosen = _pick_levels(found, scores, level or levels, spec.higher_is_better, f"find run {run_id}")
    return [Source(lv, ticketlib.load(tracker.download(found[lv], "ticket", workdir / found[lv])),
                   f"runs:/{found[lv]}/ticket") for lv in chosen]


def peek(ref: str, tracker: Tracker, workdir: Path) -> Ticket:
    """One ticket of `ref` (a job's dense level-0 ticket), to read the source's task and training config."""
    path = Path(ref).expanduser()
    run_id, at, _ = ref.partition("@")
    job = (path.is_dir() and (path / "job.json").exists()) or (
        not path.exists() and _RUN_ID.match(run_id) and not at
        and "ticketx.arm" not in tracker.get_run(run_id).data.tags)
    return resolve(ref, tracker, MetricSpec(), levels="0" if job else None, workdir=workdir)[0].ticket


# ------------------------------------------------------------------------------------- the transfer

@dataclass(frozen=True)
class TransferResult:
    """What a transfer job produced, and where it is recorded."""

    job_dir: Path
    experiment_id: str
    parent_run_id: str
    records: list[dict[str, Any]]  # one per (level, lr, arm, replicate)
    rows: list[dict[str, Any]]  # one per (level, arm), at the learning rate chosen on validation
    metrics: MetricSpec
    figure: Path | None


def check_source(source: Source, target: Task, model: nn.Module) -> None:
    """Raise TicketError when a ticket cannot go onto `target`'s model, naming every mismatch."""
    spec, src = target.spec(), source.ticket.meta.get("task", {})
    src_plugin = src.get("plugin") if isinstance(src, dict) else None
    if src_plugin != spec.get("plugin"):
        raise TicketError(f"{source.where} was found on a task of plugin {src_plugin!r} "
                          f"({src.get('task') if isinstance(src, dict) else src}); the target is a "
                          f"{spec.get('plugin')!r} task and cannot take it")
    check = getattr(target, "check_source", None)  # optional hook: what shapes cannot tell (a vocabulary)
    if check is not None:
        check(source.ticket.meta)
    head = target.head(model)
    problems = ticketlib.fit_problems(source.ticket, model, target.prunable(model), ignore=head)
    if problems:
        raise TicketError(f"{source.where} (found on {ticketlib.task_name(source.ticket.meta)}) does not fit "
                          f"the target {spec.get('plugin')}/{spec.get('task')}: {'; '.join(problems)} (the head "
                          f"rule re-initialised {sorted(head)} on the target and did not compare them)")


def _head_masks(source: Ticket, prunable: Mapping[str, torch.Tensor], head: set[str], mode: str,
                generator: torch.Generator) -> Masks:
    """The transferred masks: the ticket's outside the head; the head dense, or random at the ticket's
    density for that layer (the whole ticket's density where the ticket has no such layer)."""
    layer_density = {x["name"]: x["density"] for x in source.meta.get("layers", []) if isinstance(x, dict)}
    masks: Masks = {}
    for name, p in prunable.items():
        if name not in head:
            masks[name] = source.masks[name].to(p.dtype)
        elif mode == "dense":
            masks[name] = torch.ones_like(p.detach())
        else:
            masks[name] = masklib.random_at_density(p.detach(), layer_density.get(name, source.density), generator)
    return masks


class _Transfer:
    def __init__(self, config: TransferConfig, target: Task, sources: list[Source],
                 compare: Mapping[int, Source], job: Job) -> None:
        self.config, self.target, self.sources, self.compare, self.job = config, target, sources, compare, job

    def units(self) -> dict[tuple[int, int, int, str], tuple[()]]:
        """(source index or -1 for dense, lr index, replicate, arm): all independent of each other."""
        c, out = self.config, {}
        for r in range(c.replicates):
            for i in range(len(c.lrs)):
                if "dense" in c.arms:
                    out[(-1, i, r, "dense")] = ()
                for j in range(len(self.sources)):
                    for arm in c.arms:
                        if arm != "dense":
                            out[(j, i, r, arm)] = ()
        return out

    def run_unit(self, key: tuple[int, int, int, str]) -> dict[str, Any]:
        j, i, r, arm = key
        return self.arm(self.sources[j] if j >= 0 else None, i, self.config.lrs[i], r, arm)

    def arm(self, source: Source | None, i: int, lr: float, replicate: int, arm: str) -> dict[str, Any]:
        c, t = self.config, self.target
        level = source.level if source else 0
        seed = c.init_seed(replicate)
        fresh_seed = armlib.FRESH_SEED + 1_000 * seed + level  # never any replicate's init seed

        def setup() -> ArmSetup:
            plan = c.plan(replicate, lr=lr)
            params = {"lr": f"{lr:g}", "init_seed": str(seed)}
            model = t.build_model(seed)
            prunable = t.prunable(model)
            if source is None:
                return ArmSetup(model, masklib.ones({n: p.detach() for n, p in prunable.items()}), plan, params)
            params["source"] = source.where
            if arm == "target_ticket":
                own = self.compare[level].ticket
                model.load_state_dict(own.weights)
                params["source"] = self.compare[level].where
                return ArmSetup(model, dict(own.masks), plan, params)
            head = t.head(model)
            masks_seed = armlib.TRANSFER[arm].masks_seed or 0
            g = torch.Generator().manual_seed(masks_seed + 1_000 * seed + level)
            masks = _head_masks(source.ticket, prunable, head, c.transfer.head, g)
            if arm == "transferred":
                state = model.state_dict()
                state.update({k: v for k, v in source.ticket.weights.items() if k not in head})
                model.load_state_dict(state)
                return ArmSetup(model, masks, plan, params)
            model, params["init_seed"] = t.build_model(fresh_seed), str(fresh_seed)
            if arm == "random_ticket":
                masks = masklib.random_like(masks, g)
            return ArmSetup(model, masks, plan, params)  # masks_reinit: the ticket's masks, fresh weights

        folder = self.job.folder("dense" if source is None else f"L{level:02d}", f"lr{i}", f"r{replicate}")
        info = {"replicate": replicate, "level": level, "arm": arm, "lr": lr, "steps": c.train.steps}
        return self.job.arm(folder, arm, info, setup, f"L{level:02d} {arm} lr={lr:g} r{replicate}")


def choose_lr(records: list[dict[str, Any]], spec: MetricSpec) -> dict[tuple[int, str], float]:
    """Per (level, arm): the learning rate with the best mean validation metric at early stop."""
    key = f"val_{spec.primary}"
    by: dict[tuple[int, str], dict[float, list[float]]] = {}
    for rec in records:
        by.setdefault((rec["level"], rec["arm"]), {}).setdefault(rec["lr"], []).append(rec["at_early_stop"][key])
    sign = 1.0 if spec.higher_is_better else -1.0
    return {k: max(v, key=lambda lr: sign * sum(v[lr]) / len(v[lr])) for k, v in by.items()}


def plot(rows: list[dict[str, Any]], spec: MetricSpec, path: Path, title: str) -> Path:
    """Target test metric at early stop against % of weights remaining (log axis), one line per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = f"es_test_{spec.primary}"
    scale = 100.0 if spec.primary == "accuracy" else 1.0
    for arm in sorted({r["arm"] for r in rows}, key=lambda a: ARM_ORDER.get(a, 9)):
        pts = sorted((r for r in rows if r["arm"] == arm and f"{key}_mean" in r), key=lambda r: -r["density"])
        if not pts:
            continue
        x = [100 * r["density"] for r in pts]
        y = [scale * r[f"{key}_mean"] for r in pts]
        e = [scale * r[f"{key}_std"] for r in pts]
        if arm == "dense":
            ax.axhline(y[0], color="grey", linestyle="--", label=f"dense ({y[0]:.2f})")
        else:
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.invert_xaxis()
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("% of weights remaining")
    ax.set_ylabel(f"test {spec.primary} at early stop" + (" (%)" if scale == 100 else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _title(source: Any, target: Any, c: TransferConfig) -> str:
    """The curves figure's title: source and target as plugin/task with the environment or dataset each
    names (the `env`, `dataset` or `corpus` option, where the task has one), then optimizer and lr."""
    def where(spec: Any) -> str:
        if not isinstance(spec, dict):
            return str(spec)
        opts = spec.get("options") if isinstance(spec.get("options"), dict) else {}
        named = [str(opts[k]) for k in ("env", "dataset", "corpus") if opts.get(k)]
        return f"{spec.get('plugin', '?')}/{spec.get('task', '?')}" + (f" on {', '.join(named)}" if named else "")

    lr = (f"lr {c.lrs[0]:g}" if len(c.lrs) == 1 else
          f"lr chosen on validation from {', '.join(f'{x:g}' for x in c.lrs)}")
    return f"ticket of {where(source)} -> {where(target)}\n{c.train.optimizer}, {lr}"


def source_task_tag(task: Any, limit: int = 5000) -> str:
    """The source ticket's task section as JSON for an MLflow tag: always valid JSON, at most `limit`
    characters. Option values too long to show whole (an NLP vocabulary, say) are replaced by a note
    giving their size; the ticket's ticket.json keeps them whole."""
    if not isinstance(task, dict):
        return json.dumps(task)[:limit]
    out = dict(task)
    options = dict(out.get("options", {})) if isinstance(out.get("options"), dict) else {}
    for key, value in sorted(options.items(), key=lambda kv: -len(json.dumps(kv[1]))):
        text = json.dumps({**out, "options": options}, sort_keys=True)
        if len(text) <= limit:
            return text
        size = f"{len(value)} items" if isinstance(value, (list, dict)) else f"{len(json.dumps(value))} characters"
        options[key] = f"<{size}; whole in the ticket's ticket.json>"
    out["options"] = options
    text = json.dumps(out, sort_keys=True)
    return text if len(text) <= limit else json.dumps({k: out.get(k) for k in ("plugin", "task")})


def _identity(sources: list[Source]) -> list[dict[str, Any]]:
    return [{"level": s.level, "sha256": s.ticket.meta.get("sha256")} for s in sources]


def _job(c: TransferConfig, target: Task, tracker: Tracker, root: Path, experiment: str,
         progress: Progress | None, sources: list[Source], identity: dict[str, Any], digest: str,
         device: str) -> Job:
    first = sources[0].ticket.meta
    src_run = str(first.get("source_run_id", ""))
    return Job(kind="transfer", name=c.name, config_hash=digest, config=identity, task=target, tracker=tracker,
               root=root, experiment=experiment, progress=progress,
               tags={"ticketx.task": f"{c.task.plugin}/{c.task.name}", "ticketx.seed": str(c.seed),
                     "ticketx.source_run_id": src_run, "ticketx.source": sources[0].where,
                     "ticketx.source_task": source_task_tag(first.get("task", {}))},
               device=device, checkpoint_every=c.train.checkpoint_every,
               params={**run_params(c), "source.levels": ",".join(str(s.level) for s in sources),
                       "source.ref": sources[0].where[:500], "source.run_id": src_run})


@dataclass(frozen=True)
class _Work:
    """What a worker process needs to train arms of a transfer job (tickets travel by value)."""

    config: TransferConfig
    sources: list[Source]
    compare: tuple[Source, ...]
    identity: dict[str, Any]
    digest: str
    data_root: Path | None
    tracker_uri: str
    root: Path
    experiment: str
    parent: str
    exp_id: str
    wants_gpu: bool = False  # the job trains on CUDA: the Ray backend gives each actor a share of a GPU

    def build(self, progress: Progress) -> Callable[[Any], dict[str, Any]]:
        c = self.config
        target, device = pool.worker_task(c, self.data_root)
        job = _job(c, target, Tracker(self.tracker_uri), self.root, self.experiment, progress, self.sources,
                   self.identity, self.digest, device)
        job.parent, job.exp_id = self.parent, self.exp_id
        return _Transfer(c, target, self.sources, {s.level: s for s in self.compare}, job).run_unit


def run_transfer(config: TransferConfig, target: Task, sources: list[Source], tracker: Tracker, *, root: Path,
                 compare: list[Source] = (), experiment: str | None = None,
                 progress: Progress | None = None, workers: int = 1,
                 data_root: Path | None = None, backend: pool.Backend | None = None) -> TransferResult:
    """Train `sources` on `target` beside the controls; resume like find; choose lr on validation.

    With `workers` > 1 the arms train side by side in one-thread processes (see `run_find`)."""
    c = config
    if not sources:
        raise TicketError("no ticket to transfer")
    by_level = {s.level: s for s in compare}
    if "target_ticket" in c.arms and not compare:
        raise TicketError("the target_ticket arm needs --compare: a find job on the target to take tickets from")
    if compare:
        missing = sorted({s.level for s in sources} - set(by_level))
        if missing:
            raise TicketError(f"--compare has no ticket at level(s) {missing}; its levels: {sorted(by_level)}")
        c = dataclasses.replace(c, arms=tuple(dict.fromkeys([*c.arms, "target_ticket"])))
    # a GPU that is not there, or fp16 on the CPU, fails before any run
    device = devices.job_device(c.train.device, target, precision=c.train.precision)
    target.prepare()
    check_spec(target, c.task.plugin, c.task.name)
    model = target.build_model(c.seed)
    for s in sources:
        check_source(s, target, model)
    for s in compare:
        check_ticket(target, s.ticket, model)
    for lr in c.lrs:  # a plan the target cannot train with fails before any MLflow run exists
        check_plan(target, c.plan(0, lr=lr))
    # the name and description were always part of a transfer's identity; device and checkpoint interval never
    identity = {"config": {"name": c.name, "description": c.description, **hashed(c)}, "sources": _identity(sources), "compare": _identity(list(compare))}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    src_task = sources[0].ticket.meta.get("task", {})
    src_run = str(sources[0].ticket.meta.get("source_run_id", ""))
    note = f"{c.description}\n\nTickets from `{', '.join(s.where for s in sources)}`"
    if src_run and tracker.exists(src_run):
        note += f" (find run [{src_run}](#/experiments/{tracker.get_run(src_run).info.experiment_id}/runs/{src_run}))"
    job = _job(c, target, tracker, root, experiment or c.name, progress, sources, identity, digest, device)
    job.tags.update({"mlflow.note.content": note})
    try:
        job.open()  # inside: a run it started is marked FAILED (or KILLED) whatever fails after
        transfer = _Transfer(c, target, sources, by_level, job)
        work = _Work(c, sources, tuple(compare), identity, digest, data_root, tracker.uri, Path(root),
                     job.experiment, job.parent, job.exp_id, device.startswith("cuda"))
        records = list(pool.run(transfer.units(), transfer.run_unit, work, workers=workers,
                                progress=job.progress, threads=torch.get_num_threads(),
                                backend=backend).values())
        chosen = choose_lr(records, target.metrics)
        picked = [r for r in records if chosen[(r["level"], r["arm"])] == r["lr"]]
        rows = summarise(picked, target.metrics, order=ARM_ORDER)
        for row in rows:
            row["lr"] = chosen[(row["level"], row["arm"])]
            row["lr_grid"] = " ".join(f"{lr:g}" for lr in c.lrs)
        all_rows = summarise(records, target.metrics, by=("level", "arm", "lr"), order=ARM_ORDER)
        figure = plot(rows, target.metrics, job.dir / "curves.png", _title(src_task, target.spec(), c))
        tracker.log_metrics(job.parent, {f"chosen_lr_L{r['level']:02d}_{r['arm']}": r["lr"] for r in rows})
        write_json(job.dir / "all_learning_rates.json", all_rows, sort_keys=False)
        job.close(rows, records, [figure, job.dir / "all_learning_rates.json"])
    except BaseException as e:
        job.fail(e)
        raise
    return TransferResult(job.dir, job.exp_id, job.parent, records, rows, target.metrics, figure)


def workdir() -> Path:
    """A temporary folder for tickets fetched from MLflow."""
    return Path(tempfile.mkdtemp(prefix="ticketx-fetch-"))


def target_config(to: str, source: Ticket, overrides: list[str] | tuple[str, ...], *,
                  available: Mapping[str, Any] | None = None) -> TransferConfig:
    """The target of `--to`: a recipe file, or `plugin/task`, which keeps the source's task options
    (the model, ...) and training config and changes the task.

    With `plugin/task`, a source option the target task does not take (a ppo-only option on an a2c
    target) is dropped, and a warning (logger `ticketx.transferjob`) and the config's description name it.
    Which options a task takes comes from the optional plugin hook `task_options(name) -> Collection[str]`
    (the `[task]` keys besides plugin and name); a plugin without it (or one that does not load) gets every
    source option, and the plugin's own check of unknown options is then what fails. `--set
    task.KEY=VALUE` applies afterwards.
    `available` is the plugin map (default: `plugins.discover()`).
    """
    path = Path(to).expanduser()
    if path.suffix == ".toml" or path.exists():
        return configlib.load(path, overrides, TransferConfig)
    plugin, sep, name = to.partition("/")
    if not sep or not plugin or not name:
        raise configlib.ConfigError(f"--to takes a recipe file or PLUGIN/TASK (e.g. vision/fashion_mnist), got {to!r}")
    src = source.meta.get("task", {}) if isinstance(source.meta.get("task"), dict) else {}
    train = source.meta.get("train", {}) if isinstance(source.meta.get("train"), dict) else {}
    options = dict(src.get("options", {}))
    description = f"{src.get('plugin')}/{src.get('task')} ticket trained on {plugin}/{name}"
    from . import plugins as pluginlib
    try:
        loaded = pluginlib.load(plugin, pluginlib.discover() if available is None else available)
    except pluginlib.PluginError:
        loaded = None  # an unknown or broken plugin is make_task's error to report, as is an unknown task
    known = getattr(loaded, "task_options", None)
    if known is not None and name in loaded.tasks():
        takes = set(known(name))
        dropped = sorted(k for k in options if k not in takes)
        if dropped:
            options = {k: v for k, v in options.items() if k in takes}
            note = (f"{plugin}/{name} does not take the source {src.get('plugin')}/{src.get('task')} ticket's "
                    f"task option(s) {', '.join(dropped)}: dropped (the target's defaults apply); the other "
                    "task options are the source's (change one with --set task.KEY=VALUE)")
            import logging
            logging.getLogger(__name__).warning(note)
            description += f"; {note}"
    data = {"name": f"transfer-{src.get('task', 'ticket')}-to-{name}", "description": description,
            "task": {**options, "plugin": plugin, "name": name}, "train": dict(train)}
    return configlib.from_dict(configlib.apply_overrides(data, overrides), TransferConfig)
