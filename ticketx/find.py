"""Iterative magnitude pruning with rewinding and controls (Frankle & Carbin 2019; Frankle et al. 2019).

    θ0 = build_model(seed); train k steps -> θk                     (k = 0: θk = θ0)
    level 0: train the dense network to the end -> θT
    level L >= 1: masks_L = prune(θT of level L-1, masks_L-1)      (oneshot: prune the dense θT once)
                  ticket        = θk ⊙ masks_L, trained from step k
                  random_reinit = fresh init ⊙ masks_L              (same masks, other weights)
                  random_prune  = θk ⊙ random masks of the same per-layer sparsity

Every (replicate, level, arm) leaves files in the job folder when done, and a job run again with the same
config resumes: finished arms are read back, not retrained, and no MLflow run is duplicated (an arm that
was killed half-way has its half-logged run deleted and is trained again from its saved starting point).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import masks as masklib
from . import ticket as ticketlib
from .config import ConfigError, FindConfig, config_hash, to_dict
from .task import Masks, MetricSpec, Task
from .tracking import Tracker, flatten, git_commit

Progress = Callable[[str, Mapping[str, Any]], None]  # (event, info); events listed in `run_find`
DENSE = "dense"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Recorder:
    """The core's Observer: logs each evaluation to MLflow, captures θk, reports progress."""

    def __init__(self, tracker: Tracker, run_id: str, *, capture_at: int | None, progress: Progress,
                 info: Mapping[str, Any]) -> None:
        self.tracker, self.run_id, self.capture_at = tracker, run_id, capture_at
        self.progress, self.info = progress, dict(info)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.captured: dict[str, torch.Tensor] | None = None

    def on_step(self, step: int, model: nn.Module) -> None:
        if step == self.capture_at:
            self.captured = _clone_state(model)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        m = {k: float(v) for k, v in metrics.items()}
        self.history.append((step, m))
        self.tracker.log_metrics(self.run_id, m, step)
        self.progress("eval", {**self.info, "step": step, "metrics": m})

    def summary(self, spec: MetricSpec) -> tuple[int, dict[str, float], dict[str, float]]:
        """(early-stop step, metrics there, metrics at the last evaluation)."""
        if not self.history:
            raise RuntimeError("the task reported no evaluation; Task.train must call observer.on_eval")
        sign = -1.0 if spec.early_stop_higher_is_better else 1.0
        key = spec.early_stop
        scored = [(sign * m[key], i) for i, (_, m) in enumerate(self.history) if key in m]
        if not scored:
            raise RuntimeError(f"the task never reported its early-stop metric {key!r}")
        best = min(scored)[1]  # the first evaluation reaching the best value
        step, at_best = self.history[best]
        # a split evaluated less often than val (test) is taken from the nearest later evaluation
        merged = dict(at_best)
        for _, m in self.history[best:]:
            for k, v in m.items():
                merged.setdefault(k, v)
        return step, merged, self.history[-1][1]


@dataclass(frozen=True)
class FindResult:
    """What a find job produced: one record per (replicate, level, arm), and where it is recorded."""

    job_dir: Path
    experiment_id: str
    parent_run_id: str
    records: list[dict[str, Any]]
    metrics: MetricSpec


class _Job:
    """One find job: its folder, its MLflow parent run, and the order in which arms train."""

    def __init__(self, config: FindConfig, task: Task, tracker: Tracker, root: Path, experiment: str,
                 progress: Progress) -> None:
        self.config, self.task, self.tracker, self.progress = config, task, tracker, progress
        self.hash = config_hash(config)
        self.dir = Path(root) / f"{config.name}-{self.hash[:10]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.experiment = experiment
        self.exp_id = ""
        self.parent = ""

    # -- MLflow parent run ------------------------------------------------------------------------
    def open(self) -> None:
        self.tracker.check_reachable()
        self.exp_id = self.tracker.experiment(self.experiment)
        state_file = self.dir / "job.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        runs = state.get("parent_runs", {})
        parent = runs.get(self.tracker.uri)
        if parent and self.tracker.exists(parent):
            self.tracker.reopen(parent)
            self.progress("resume", {"job_dir": str(self.dir), "run_id": parent})
        else:
            c = self.config
            tags = {"ticketx.config_hash": self.hash, "ticketx.task": f"{c.task.plugin}/{c.task.name}",
                    "ticketx.seed": str(c.seed), "ticketx.job_dir": str(self.dir.resolve()),
                    "ticketx.kind": "find", "mlflow.note.content": c.description}
            commit = git_commit(Path.cwd())
            if commit:
                tags["mlflow.source.git.commit"] = tags["ticketx.git_commit"] = commit
            parent = self.tracker.start_run(self.exp_id, f"find {c.name}", tags=tags,
                                            params=flatten(to_dict(c)))
            runs[self.tracker.uri] = parent
        self.parent = parent
        _write_json(state_file, {"config": to_dict(self.config), "config_hash": self.hash,
                                 "task": self.task.spec(), "parent_runs": runs,
                                 "experiment": self.experiment})

    # -- files ------------------------------------------------------------------------------------
    def level_dir(self, replicate: int, level: int) -> Path:
        d = self.dir / f"r{replicate}" / f"L{level:02d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rewind_file(self, replicate: int) -> Path:
        return self.dir / f"r{replicate}" / "rewind.safetensors"

    # -- the algorithm ----------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        records = []
        for r in range(self.config.replicates):
            for level in range(self.config.prune.levels + 1):
                arms = [DENSE] if level == 0 else list(self.config.arms)
                for arm in arms:
                    records.append(self.arm(r, level, arm))
        return records

    def check_layers(self) -> None:
        """Fail before any training when the recipe names layers the task does not prune."""
        prunable = self.task.prunable(self.task.build_model(self.config.seed))
        p = self.config.prune
        for key, names in (("prune.exclude", p.exclude), ("prune.layer_rates", list(p.layer_rates))):
            unknown = sorted(set(names) - set(prunable))
            if unknown:
                raise ConfigError(f"{key} names {unknown}, which the task does not prune; "
                                  f"prunable weights: {sorted(prunable)}")

    def prunable_masks(self, model: nn.Module) -> Masks:
        return masklib.ones({n: p.detach() for n, p in self.task.prunable(model).items()})

    def ticket(self, replicate: int, level: int, model: nn.Module) -> ticketlib.Ticket:
        """The ticket of `level`, read from disk or made from the previous level's trained weights."""
        path = self.level_dir(replicate, level) / "ticket"
        if (path / ticketlib.META).exists():
            t = ticketlib.load(path)
            ticketlib.check_fits(t, model, self.task.prunable(model))
            return t
        p = self.config.prune
        rewind = load_file(str(self.rewind_file(replicate)))
        if level == 0:
            masks = self.prunable_masks(model)
        else:
            source = 0 if p.mode == "oneshot" else level - 1
            trained = load_file(str(self.level_dir(replicate, source) / "trained.safetensors"))
            if p.mode == "oneshot":
                before, rate, rates = self.prunable_masks(model), 1 - (1 - p.rate) ** level, {
                    n: 1 - (1 - r) ** level for n, r in p.layer_rates.items()}
            else:
                before = self.ticket(replicate, level - 1, model).masks
                rate, rates = p.rate, dict(p.layer_rates)
            masks = masklib.magnitude({n: trained[n] for n in before}, before, rate, scope=p.scope,
                                      layer_rates=rates, exclude=p.exclude)
        t = ticketlib.make(masks, rewind, task=self.task.spec(), seed=self.config.init_seed(replicate),
                           replicate=replicate, level=level, rewind_step=p.rewind_step,
                           source_run_id=self.parent, config_hash=self.hash)
        ticketlib.save(t, path)
        return t

    def arm(self, replicate: int, level: int, arm: str) -> dict[str, Any]:
        """Train one arm, or read back its result if a previous run of the job finished it."""
        c, d = self.config, self.level_dir(replicate, level)
        result_file, run_file = d / f"{arm}.json", d / f"{arm}.run"
        info = {"replicate": replicate, "level": level, "arm": arm, "steps": c.train.steps}
        if result_file.exists():
            record = json.loads(result_file.read_text())
            self.progress("skip", {**info, "record": record})
            return record
        if run_file.exists():  # killed half-way last time: its half-logged run goes, the arm restarts
            stale = run_file.read_text().strip()
            if self.tracker.exists(stale):
                self.tracker.delete(stale)

        init_seed = c.init_seed(replicate)
        k = c.prune.rewind_step
        model = self.task.build_model(init_seed)
        if level == 0:
            masks = self.prunable_masks(model)
            start, capture = 0, (k if k > 0 else None)
            if k == 0:
                _save_state(self.rewind_file(replicate), _clone_state(model))
        else:
            t = self.ticket(replicate, level, model)
            masks, start, capture = t.masks, k, None
            if arm == "ticket":
                model.load_state_dict(t.weights)
            elif arm == "random_reinit":
                # a fresh draw for every replicate and level, never equal to any replicate's init seed
                model = self.task.build_model(1_000_003 + 1_000 * init_seed + level)
            elif arm == "random_prune":
                g = torch.Generator().manual_seed(2_000_003 + 1_000 * init_seed + level)
                masks = masklib.random_like(t.masks, g)
                model.load_state_dict(load_file(str(self.rewind_file(replicate))))
        dens = masklib.density(masks)
        run_id = self.tracker.start_run(
            self.exp_id, f"L{level:02d} {arm} r{replicate}", parent=self.parent,
            tags={"ticketx.arm": arm, "ticketx.level": str(level), "ticketx.replicate": str(replicate)},
            params={"level": str(level), "arm": arm, "replicate": str(replicate),
                    "init_seed": str(init_seed), "data_seed": str(c.order_seed(replicate)),
                    "density": f"{dens:.6f}", "rewind_step": str(k)})
        run_file.write_text(run_id)
        self.progress("start", {**info, "density": dens, "run_id": run_id})
        recorder = _Recorder(self.tracker, run_id, capture_at=capture, progress=self.progress,
                             info={**info, "density": dens})
        began = time.perf_counter()
        try:
            self.task.train(model, masks, c.plan(replicate, start_step=start), recorder)
        except BaseException as e:
            self.tracker.finish(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        seconds = time.perf_counter() - began
        self._check_masked(model, masks, arm, level)
        es_step, at_es, final = recorder.summary(self.task.metrics)

        if arm in (DENSE, "ticket"):
            _save_state(d / "trained.safetensors", _clone_state(model))
        if level == 0 and k > 0:
            if recorder.captured is None:
                raise RuntimeError(f"the task never reported step {k} to the observer; cannot rewind to it")
            _save_state(self.rewind_file(replicate), recorder.captured)
        if arm in (DENSE, "ticket"):
            ticket_dir = d / "ticket"
            self.ticket(replicate, level, model)
            self.tracker.log_artifacts(run_id, ticket_dir, "ticket")

        record = {**info, "density": dens, "layer_density": masklib.layer_density(masks),
                  "early_stop_step": es_step, "at_early_stop": at_es, "final": final,
                  "seconds": seconds, "run_id": run_id}
        summary = {"density": dens, "early_stop_step": es_step, "seconds": seconds,
                   **{f"es_{k_}": v for k_, v in at_es.items()},
                   **{f"final_{k_}": v for k_, v in final.items()}}
        self.tracker.log_metrics(run_id, summary)
        _write_json(result_file, record)
        self.tracker.finish(run_id)
        self.progress("done", {**info, "record": record})
        return record

    @staticmethod
    def _check_masked(model: nn.Module, masks: Masks, arm: str, level: int) -> None:
        params = dict(model.named_parameters())
        for name, m in masks.items():
            if bool((params[name].detach()[m == 0] != 0).any()):
                raise RuntimeError(f"{arm} at level {level}: pruned weights of {name} are nonzero after "
                                   "training; the task's train() must keep masked weights at zero")


def run_find(config: FindConfig, task: Task, tracker: Tracker, *, root: Path,
             experiment: str | None = None, progress: Progress | None = None) -> FindResult:
    """Run (or resume) a ticket search, recording every arm in MLflow under one parent run.

    `progress(event, info)` is called with events "resume", "start", "eval", "done" (info holds the
    arm's record) and "skip" (an arm finished by an earlier run of the same job).
    """
    job = _Job(config, task, tracker, root, experiment or config.name, progress or (lambda e, i: None))
    task.prepare()  # a missing dataset fails here, before any MLflow run exists
    job.check_layers()
    job.open()
    try:
        records = job.run()
    except BaseException as e:
        tracker.finish(job.parent, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    _log_summary(job, records)
    tracker.finish(job.parent)
    return FindResult(job.dir, job.exp_id, job.parent, records, task.metrics)


def _log_summary(job: _Job, records: list[dict[str, Any]]) -> None:
    """Results table as CSV/JSON artifacts of the parent run, and the last level's numbers as metrics."""
    rows = summarise(records, job.task.metrics)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(job.dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    _write_json(job.dir / "results.json", records)
    for name in ("results.csv", "results.json"):
        job.tracker.log_artifact(job.parent, job.dir / name)
    primary = f"es_test_{job.task.metrics.primary}_mean"
    last = {f"{r['arm']}_es_test_{job.task.metrics.primary}": r[primary] for r in rows
            if r["level"] == job.config.prune.levels and primary in r}
    if last:
        job.tracker.log_metrics(job.parent, last)


def summarise(records: list[dict[str, Any]], spec: MetricSpec) -> list[dict[str, Any]]:
    """One row per (level, arm): mean and std over replicates of density, early-stop step and metrics."""
    keys = [f"val_{spec.primary}", f"test_{spec.primary}"]
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["level"], rec["arm"]), []).append(rec)
    order = {DENSE: 0, "ticket": 1, "random_reinit": 2, "random_prune": 3}
    rows = []
    for (level, arm), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
        row: dict[str, Any] = {"level": level, "arm": arm, "replicates": len(recs),
                               "density": sum(r["density"] for r in recs) / len(recs)}
        values = {"early_stop_step": [r["early_stop_step"] for r in recs]}
        for key in keys:
            values[f"es_{key}"] = [r["at_early_stop"][key] for r in recs if key in r["at_early_stop"]]
            values[f"final_{key}"] = [r["final"][key] for r in recs if key in r["final"]]
        for name, vs in values.items():
            if vs:
                mean = sum(vs) / len(vs)
                row[f"{name}_mean"] = mean
                row[f"{name}_std"] = math.sqrt(sum((v - mean) ** 2 for v in vs) / len(vs))
        rows.append(row)
    return rows
