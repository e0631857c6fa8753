"""Iterative magnitude pruning with rewinding and controls (Frankle & Carbin 2019; Frankle et al. 2019).

    θ0 = build_model(seed); train k steps -> θk                     (k = 0: θk = θ0)
    level 0: train the dense network to the end -> θT
    level L >= 1: masks_L = prune(θT of level L-1, masks_L-1)      (oneshot: prune the dense θT once)
                  ticket        = θk ⊙ masks_L, trained from step k
                  random_reinit = fresh init ⊙ masks_L              (same masks, other weights)
                  random_prune  = θk ⊙ random masks of the same per-layer sparsity
                  snip, grasp, ... = θk ⊙ a criterion's masks cut from θk at masks_L's overall density

`prune` is by magnitude, or by LAMP scores (prune.criterion); the arms are `ticketx.arms.FIND`, the
criteria `ticketx.pruning.CRITERIA`. With prune.early_bird the arms whose weights the next masks are cut
from (dense, ticket) watch for their early-bird iteration, and with `stop` end their training there.

Each (replicate, level) has a folder holding its ticket, the trained weights of its ticket arm (from which
the next level's masks are cut), the tickets of the criterion arms (`<arm>.ticket`) and one result per arm;
`jobs.Job` makes re-running a job resume it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from . import analysis, devices
from . import arms as armlib
from . import masks as masklib
from . import pool, pruning
from . import ticket as ticketlib
from .config import ConfigError, FindConfig, config_hash, run_params, to_dict
from .earlybird import EarlyBird
from .jobs import ArmSetup, Job, Progress, Recorder, clone_state, save_state, summarise
from .task import Masks, MetricSpec, Task, check_plan, check_spec
from .tracking import Tracker

DENSE = "dense"
ARM_ORDER = armlib.order("find")


@dataclass(frozen=True)
class FindResult:
    """What a find job produced: one record per (replicate, level, arm), and where it is recorded."""

    job_dir: Path
    experiment_id: str
    parent_run_id: str
    records: list[dict[str, Any]]
    metrics: MetricSpec


class _Search:
    """The IMP algorithm of one find job; files and runs go through its `Job`."""

    def __init__(self, config: FindConfig, task: Task, job: Job) -> None:
        self.config, self.task, self.job = config, task, job

    def check_layers(self) -> None:
        """Fail before any training when the recipe names layers the task does not prune."""
        prunable = self.task.prunable(self.task.build_model(self.config.seed))
        p = self.config.prune
        for key, names in (("prune.exclude", p.exclude), ("prune.layer_rates", list(p.layer_rates))):
            unknown = sorted(set(names) - set(prunable))
            if unknown:
                raise ConfigError(f"{key} names {unknown}, which the task does not prune; "
                                  f"prunable weights: {sorted(prunable)}")

    def check_levels(self) -> None:
        """Refuse, before any training, a search whose last levels would prune a layer (or, in global
        scope, the pooled layers together) to no weight at all: counted exactly as `masks.prune` counts.
        In global scope one layer of the pool may still empty first; `cut` refuses that level when it
        comes (the weights decide it)."""
        c, p = self.config, self.config.prune
        sizes = {n: w.numel() for n, w in self.task.prunable(self.task.build_model(c.seed)).items()
                 if n not in p.exclude}
        groups = {n: ([n], p.layer_rates.get(n, p.rate)) for n in sizes if p.scope == "layerwise" or n in p.layer_rates}
        pooled = [n for n in sizes if n not in groups]
        if pooled:
            groups["the layers ranked together (global scope)"] = (pooled, p.rate)
        empty = []  # (the first level keeping no weight, the layer or pool, its weights, its rate)
        for what, (names, rate) in groups.items():
            total = sum(sizes[n] for n in names)
            level = next((lv for lv in range(1, p.levels + 1)
                          if masklib.kept_after(total, rate, lv, oneshot=p.mode == "oneshot") == 0), None)
            if level is not None:
                empty.append((level, what, total, rate))
        if empty:
            level, what, total, rate = min(empty, key=lambda e: e[0])
            raise ConfigError(f"prune.levels = {p.levels}: at level {level} {what}, {total:,} weights at rate "
                              f"{rate:g}, would keep no weight; at most {level - 1} levels, or a lower rate for "
                              "it (prune.layer_rates)")

    def units(self) -> dict[tuple[int, int, str], tuple[tuple[int, int, str], ...]]:
        """(replicate, level, arm) -> the arm whose trained weights its masks are cut from."""
        c, out = self.config, {}
        for r in range(c.replicates):
            for level in range(c.prune.levels + 1):
                for arm in [DENSE] if level == 0 else c.arms:
                    if level == 0:
                        out[(r, level, arm)] = ()
                    elif level == 1 or c.prune.mode == "oneshot":
                        out[(r, level, arm)] = ((r, 0, DENSE),)
                    else:
                        out[(r, level, arm)] = ((r, level - 1, "ticket"),)
        return out

    def level_dir(self, replicate: int, level: int) -> Path:
        return self.job.folder(f"r{replicate}", f"L{level:02d}")

    def rewind_file(self, replicate: int) -> Path:
        return self.job.folder(f"r{replicate}") / "rewind.safetensors"

    def rewind_state(self, replicate: int) -> dict[str, torch.Tensor]:
        """θk (θ0 where k = 0): the weights every arm of a level >= 1 but the reinitialised ones starts from."""
        return load_file(str(self.rewind_file(replicate)))

    def dense_masks(self, model: nn.Module) -> Masks:
        return masklib.ones({n: p.detach() for n, p in self.task.prunable(model).items()})

    def ticket(self, replicate: int, level: int, model: nn.Module) -> ticketlib.Ticket:
        """The ticket of `level`, read from disk or cut from the previous level's trained weights."""
        path = self.level_dir(replicate, level) / "ticket"
        if (path / ticketlib.META).exists():
            t = ticketlib.load(path)
            ticketlib.check_fits(t, model, self.task.prunable(model))
            return t
        p = self.config.prune
        if level == 0:
            masks = self.dense_masks(model)
        else:
            source = 0 if p.mode == "oneshot" else level - 1
            trained = load_file(str(self.level_dir(replicate, source) / "trained.safetensors"))
            before = (self.dense_masks(model) if p.mode == "oneshot"  # one cut from the dense weights
                      else self.ticket(replicate, level - 1, model).masks)
            masks = self.cut(trained, before, level)
        t = ticketlib.make(masks, self.rewind_state(replicate),
                           **self.meta(replicate, level, "ticket"))
        ticketlib.save(t, path)
        return t

    def meta(self, replicate: int, level: int, arm: str) -> dict[str, Any]:
        """What the tickets of a job record about where they come from."""
        c = self.config
        return dict(task=self.task.spec(), seed=c.init_seed(replicate), replicate=replicate, level=level,
                    rewind_step=c.prune.rewind_step, source_run_id=self.job.parent, config_hash=self.job.hash,
                    train=to_dict(c.train), arm=arm, criterion=armlib.FIND[arm].criterion or c.prune.criterion)

    def cut(self, trained: Mapping[str, torch.Tensor], before: Masks, level: int) -> Masks:
        """The masks of `level`, cut by IMP's criterion from `trained` weights and the masks `before` (the
        previous level's, or the dense ones in oneshot mode)."""
        p = self.config.prune
        if p.mode == "oneshot":
            rate = 1 - (1 - p.rate) ** level
            rates = {n: 1 - (1 - r) ** level for n, r in p.layer_rates.items()}
        else:
            rate, rates = p.rate, dict(p.layer_rates)
        masks = pruning.imp_masks(p.criterion, {n: trained[n] for n in before}, before, rate, scope=p.scope,
                                  layer_rates=rates, exclude=p.exclude)
        emptied = sorted(n for n, m in masks.items() if n not in p.exclude and not bool((m > 0).any()))
        if emptied:  # global scope: the ranking emptied a layer (layer-wise counts are refused up front)
            raise ConfigError(f"prune.levels = {p.levels}: level {level} would prune {', '.join(emptied)} to no "
                              f"weight at all (prune.scope = {p.scope!r}); run with prune.levels = {level - 1}, or "
                              "exclude the layer (prune.exclude)")
        return masks

    def early_bird(self, level: int, before: Masks, capture_at: int | None) -> EarlyBird | None:
        """The early-bird watch of a chain arm at `level` whose masks are `before`: it cuts the next level's
        masks from the current weights. It stops training only where a later level is cut from them."""
        p = self.config.prune
        eb = p.early_bird
        if eb is None or (p.mode == "oneshot" and level > 0):  # oneshot cuts every level from the dense run
            return None
        cut_from = level < p.levels if p.mode == "iterative" else level == 0 < p.levels
        among = sum(int((m > 0).sum()) for n, m in before.items() if n not in p.exclude)
        return EarlyBird(lambda weights: self.cut(weights, before, level + 1), list(before), among,
                         distance=eb.distance, window=eb.window, every=eb.every, stop=eb.stop and cut_from,
                         not_before=capture_at or 0)

    def found(self, replicate: int, level: int, spec: armlib.Arm, ticket: ticketlib.Ticket,
              model: nn.Module) -> tuple[Masks, dict[str, str]]:
        """The masks a criterion arm trains, read from its ticket folder or cut now from `model`'s weights
        (the rewind weights, θ0 or θk) at exactly the ticket's overall density, and the params to record.

        Layers in prune.exclude stay dense; the criterion spreads the ticket's count of kept weights over
        the others as its paper does (layer_rates are IMP's allocation and do not apply). Scoring runs on
        the job's device. The ablations of a criterion score again (deterministic on the CPU) rather than
        share a file, so that arms running side by side never write the same folder.
        """
        c, p = self.config, self.config.prune
        crit = pruning.CRITERIA[spec.criterion]  # type: ignore[index]
        params = {"criterion": crit.name, "ablation": spec.ablation or "none"}
        if "data" in crit.needs:
            params.update(scoring_per_class=str(p.scoring_per_class), scoring_seed=str(c.order_seed(replicate)))
        if crit.iterative:
            params["scoring_rounds"] = str(p.synflow_rounds)
        path = self.level_dir(replicate, level) / str(spec.ticket_dir)
        if (path / ticketlib.META).exists():
            t = ticketlib.load(path)
            ticketlib.check_fits(t, model, self.task.prunable(model))
            return t.masks, {**params, **t.meta.get("scoring", {})}
        candidates = {n: torch.ones_like(m) for n, m in ticket.masks.items() if n not in p.exclude}
        n_keep = sum(int((ticket.masks[n] > 0).sum()) for n in candidates)
        init_seed = c.init_seed(replicate)
        batches, loss, shape = None, None, None
        if "data" in crit.needs:
            batches, loss = pruning.scoring_sample(self.task, p.scoring_per_class, c.order_seed(replicate))
            params["scoring_examples"] = str(sum(int(y.shape[0]) for _, y in batches))
        if "input_shape" in crit.needs:
            shape = tuple(self.task.scoring_input_shape())  # type: ignore[attr-defined]
        masks = pruning.cut(crit, model, candidates, n_keep, device=self.job.device, batches=batches, loss=loss,
                            input_shape=shape, rounds=p.synflow_rounds, invert=spec.ablation == "inverted",
                            generator=torch.Generator().manual_seed(crit.seed_offset + 1_000 * init_seed + level))
        masks = {**self.dense_masks(model), **masks}
        if spec.masks_seed is not None:  # shuffled: the same count per layer, at random places
            g = torch.Generator().manual_seed(spec.masks_seed + 1_000 * init_seed + level)
            masks = masklib.random_like(masks, g)
        return masks, params

    def arm(self, replicate: int, level: int, arm: str) -> dict[str, Any]:
        c, d = self.config, self.level_dir(replicate, level)
        init_seed, k = c.init_seed(replicate), c.prune.rewind_step
        spec = armlib.FIND[arm]

        began: dict[str, Any] = {}  # the weights this arm trains from and its masks, for weight_movement

        def setup() -> ArmSetup:
            s = _setup()
            began.update(weights=clone_state(s.model), masks=s.masks)
            return s

        def _setup() -> ArmSetup:
            model = self.task.build_model(init_seed)
            params = {"init_seed": str(init_seed), "rewind_step": str(k)}
            if level == 0:
                if k == 0:
                    save_state(self.rewind_file(replicate), clone_state(model))
                masks = self.dense_masks(model)
                return ArmSetup(model, masks, c.plan(replicate), params, capture_at=k or None,
                                early_bird=self.early_bird(level, masks, k or None))
            t = self.ticket(replicate, level, model)
            params["criterion"] = spec.criterion or c.prune.criterion
            params["ablation"] = spec.ablation or "none"
            masks = t.masks
            if spec.masks == "random_like_ticket":
                g = torch.Generator().manual_seed(spec.masks_seed + 1_000 * init_seed + level)  # type: ignore[operator]
                masks = masklib.random_like(t.masks, g)
            elif spec.masks == "criterion":
                model.load_state_dict(self.rewind_state(replicate))  # scored from, and trained from
                masks, scoring = self.found(replicate, level, spec, t, model)
                params.update(scoring)
            if spec.weights == "fresh":
                # a fresh draw for every replicate and level, never equal to any replicate's init seed
                seed = spec.weights_seed + 1_000 * init_seed + level  # type: ignore[operator]
                model, params["init_seed"] = self.task.build_model(seed), str(seed)
            elif spec.masks == "ticket":
                model.load_state_dict(t.weights)
            elif spec.masks != "criterion":  # a criterion arm's model holds the rewind weights already
                model.load_state_dict(self.rewind_state(replicate))
            if spec.masks == "criterion" and not (d / str(spec.ticket_dir) / ticketlib.META).exists():
                meta = self.meta(replicate, level, arm)
                meta.update(ablation=spec.ablation or "none",
                            scoring={key: v for key, v in params.items() if key.startswith("scoring")})
                ticketlib.save(ticketlib.make(masks, clone_state(model), **meta), d / str(spec.ticket_dir))
            eb = self.early_bird(level, masks, None) if spec.chain else None
            return ArmSetup(model, masks, c.plan(replicate, start_step=k), params, early_bird=eb)

        def after(model: nn.Module, recorder: Recorder, run_id: str) -> dict[str, Any]:
            moved = analysis.movement_metrics(
                analysis.weight_movement(began["weights"], clone_state(model), began["masks"]))
            self.job.tracker.log_metrics(run_id, moved, c.train.steps)
            extra = {"movement": moved}
            if spec.ticket_dir and not spec.chain:  # a criterion arm's ticket, to transfer like any other
                self.job.tracker.log_artifacts(run_id, d / spec.ticket_dir, "ticket")
            if not spec.chain:
                return extra
            save_state(d / "trained.safetensors", clone_state(model))
            if level == 0 and k > 0:
                if recorder.captured is None:
                    raise RuntimeError(f"the task never reported step {k} to the observer; cannot rewind")
                save_state(self.rewind_file(replicate), recorder.captured)
            self.ticket(replicate, level, model)  # level 0's ticket is the dense one: all-ones masks at θk
            self.job.tracker.log_artifacts(run_id, d / "ticket", "ticket")
            # cut the next tickets now, so the arms that need them never race to write them
            p = c.prune
            nxt = range(1, p.levels + 1) if p.mode == "oneshot" and level == 0 else (
                [level + 1] if p.mode == "iterative" and level < p.levels else [])
            for later in nxt:
                self.ticket(replicate, later, model)
            return extra

        info = {"replicate": replicate, "level": level, "arm": arm, "steps": c.train.steps}
        return self.job.arm(d, arm, info, setup, f"L{level:02d} {arm} r{replicate}", after)


@dataclass(frozen=True)
class _Work:
    """What a worker process needs to train arms of a find job: everything by value, the task rebuilt."""

    config: FindConfig
    data_root: Path | None
    tracker_uri: str
    root: Path
    experiment: str
    parent: str
    exp_id: str
    wants_gpu: bool = False  # the job trains on CUDA: the Ray backend gives each actor a share of a GPU

    def build(self, progress: Progress) -> Callable[[Any], dict[str, Any]]:
        c = self.config
        task, device = pool.worker_task(c, self.data_root)
        job = _job(c, task, Tracker(self.tracker_uri), self.root, self.experiment, progress, device)
        job.parent, job.exp_id = self.parent, self.exp_id
        search = _Search(c, task, job)
        return lambda key: search.arm(*key)


def _job(c: FindConfig, task: Task, tracker: Tracker, root: Path, experiment: str,
         progress: Progress | None, device: str) -> Job:
    return Job(kind="find", name=c.name, config_hash=config_hash(c), config=to_dict(c), task=task,
               tracker=tracker, root=root, experiment=experiment, progress=progress,
               tags={"ticketx.task": f"{c.task.plugin}/{c.task.name}", "ticketx.seed": str(c.seed),
                     "mlflow.note.content": c.description},
               params=run_params(c), device=device, checkpoint_every=c.train.checkpoint_every)


def _order(key: tuple[int, int, str]) -> tuple[bool, int]:
    """Which ready arm a free worker takes first: the ticket chain (each level waits for the last), level by
    level; then the controls, sparsest level first, where a ticket and its controls differ most, so that a
    job stopped early has its most telling comparisons."""
    _, level, arm = key
    chain = armlib.FIND[arm].chain
    return (not chain, level if chain else -level)


def run_find(config: FindConfig, task: Task, tracker: Tracker, *, root: Path,
             experiment: str | None = None, progress: Progress | None = None, workers: int = 1,
             data_root: Path | None = None, backend: pool.Backend | None = None) -> FindResult:
    """Run (or resume) a ticket search, recording every arm in MLflow under one parent run.

    `progress(event, info)` is called with events "resume", "start", "eval", "done" (info holds the
    arm's record) and "skip" (an arm finished by an earlier run of the same job). With `workers` > 1,
    arms whose masks are known train side by side in that many one-thread processes, each rebuilding
    the task from `config.task` through its plugin (with `data_root`); the numbers are the same.
    `backend` runs them elsewhere (`ticketx.raypool.RayBackend`: a Ray cluster), with the same numbers.
    """
    c = config
    # a GPU that is not there, or fp16 on the CPU, fails here, before any run
    device = devices.job_device(c.train.device, task, precision=c.train.precision)
    job = _job(c, task, tracker, root, experiment or c.name, progress, device)
    search = _Search(c, task, job)
    task.prepare()  # a missing dataset fails here, before any MLflow run exists
    check_spec(task, c.task.plugin, c.task.name)  # what every ticket saves to rebuild the task
    search.check_layers()
    search.check_levels()
    for replicate in range(c.replicates):  # a plan the task cannot train with, likewise
        check_plan(task, c.plan(replicate))
        check_plan(task, c.plan(replicate, start_step=c.prune.rewind_step))
    # and criteria the task cannot give what they need (scoring data, an input shape)
    pruning.check_task(task, {a: armlib.FIND[a].criterion for a in c.arms if armlib.FIND[a].criterion},
                       per_class=c.prune.scoring_per_class)
    try:
        job.open()  # inside: a run it started is marked FAILED (or KILLED) whatever fails after
        units = search.units()
        work = _Work(c, data_root, tracker.uri, Path(root), job.experiment, job.parent, job.exp_id,
                     device.startswith("cuda"))
        done = pool.run(units, lambda key: search.arm(*key), work, workers=workers, progress=job.progress,
                        threads=torch.get_num_threads(), first=_order, backend=backend)
        records = list(done.values())
        rows = summarise(records, task.metrics, order=ARM_ORDER)
        primary = f"es_test_{task.metrics.primary}_mean"
        tracker.log_metrics(job.parent, {f"{r['arm']}_es_test_{task.metrics.primary}": r[primary]
                                         for r in rows if r["level"] == c.prune.levels and primary in r})
        job.close(rows, records)
    except BaseException as e:
        job.fail(e)
        raise
    return FindResult(job.dir, job.exp_id, job.parent, records, task.metrics)
