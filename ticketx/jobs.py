"""What find and transfer jobs share: a job folder, an MLflow parent run, and arms trained idempotently.

Every arm leaves `<arm>.json` in its folder when it finishes; a job run again with the same config reads
those back instead of retraining. An arm killed half-way (its `<arm>.run` written, no result) resumes
from its last checkpoint (`<arm>.ckpt.safetensors`, `ticketx.checkpoint`) in the same MLflow run, logging
no metric step twice; one killed before its first checkpoint has its half-logged run deleted and is
trained again from its saved starting point. Either way no run is duplicated and, on the CPU in fp32,
the numbers are those of an uninterrupted job.

Arms train on the job's device (`ticketx.devices`): the model and masks are moved there when an arm
starts and the model back to the CPU when it ends, so tickets and trained weights on disk are CPU fp32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from . import masks as masklib
from .checkpoint import ArmCheckpoints, CheckpointError
from .earlybird import EarlyBird
from .files import atomic_write, write_csv, write_json
from .signals import held
from .task import Masks, MetricSpec, Plan, StopTraining, Task, TaskError
from .tracking import Tracker, git_commit, metric_tags

Progress = Callable[[str, Mapping[str, Any]], None]  # (event, info): resume, start, eval, done, skip


def save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state on the CPU, wherever the model is."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Recorder:
    """The core's Observer: logs each evaluation to MLflow, captures the weights at one step, reports, and
    watches for the early-bird iteration (`early_bird`), ending training there when it is told to stop.

    `checkpoints` (an `ArmCheckpoints`, or None) is what `ticketx.training.fit` saves to and resumes
    from. A resumed arm's recorder holds the evaluations made before the kill (`restore`) and skips
    logging a metric at a step the run already has (`logged`).
    """

    def __init__(self, tracker: Tracker, run_id: str, *, capture_at: int | None, progress: Progress,
                 info: Mapping[str, Any], logged: Mapping[str, set[int]] | None = None,
                 early_bird: EarlyBird | None = None, masks: Masks | None = None,
                 what: str = "") -> None:
        self.tracker, self.run_id, self.capture_at = tracker, run_id, capture_at
        # checked once, at the first step reported: a train() that does not apply the masks fails there,
        # not after the whole arm (check_masked runs again on the trained model)
        self.masks, self.what = masks, what
        self.early_bird = early_bird
        self.stopped_at: int | None = None  # the step at which StopTraining ended training
        self.progress, self.info = progress, dict(info)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.captured: dict[str, torch.Tensor] | None = None
        self.logged = dict(logged or {})
        self.checkpoints: ArmCheckpoints | None = None

    def on_step(self, step: int, model: nn.Module) -> None:
        if self.masks is not None:
            masks, self.masks = self.masks, None
            check_masked(model, masks, f"{self.what} after step {step}")
        if step == self.capture_at:
            self.captured = clone_state(model)
        if self.early_bird is not None and self.early_bird.observe(step, model):
            self.stopped_at = step
            raise StopTraining

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        m = {k: float(v) for k, v in metrics.items()}
        self.history.append((step, m))
        fresh = {k: v for k, v in m.items() if step not in self.logged.get(k, ())}
        if fresh:
            self.tracker.log_metrics(self.run_id, fresh, step)
        self.progress("eval", {**self.info, "step": step, "metrics": m})

    def core_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this recorder: the evaluations so far and the captured weights."""
        out = {"history": [[step, m] for step, m in self.history], "captured": self.captured}
        if self.early_bird is not None:
            out["early_bird"] = self.early_bird.state()
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        self.history = [(int(step), dict(m)) for step, m in state["history"]]
        self.captured = state["captured"]
        if self.early_bird is not None and "early_bird" in state:
            self.early_bird.restore(state["early_bird"])

    def summary(self, spec: MetricSpec) -> tuple[int, dict[str, float], dict[str, float]]:
        """(early-stop step, metrics there, metrics at the last evaluation)."""
        if not self.history:
            raise TaskError("the task reported no evaluation; Task.train must call observer.on_eval")
        sign = -1.0 if spec.early_stop_higher_is_better else 1.0
        key = spec.early_stop
        scored = [(sign * m[key], i) for i, (_, m) in enumerate(self.history) if key in m]
        reported = sorted({k for _, m in self.history for k in m})
        if not scored:
            raise TaskError(f"the task never reported its early-stop metric {key!r} (MetricSpec.early_stop); "
                            f"it reported {reported}")
        lacking = [k for k in (f"val_{spec.primary}", f"test_{spec.primary}") if k not in reported]
        if lacking:  # without them the results table and every comparison would be empty
            raise TaskError(f"the task never reported {' or '.join(lacking)} (MetricSpec.primary is "
                            f"{spec.primary!r}); it reported {reported}: Task.train must report val_<primary> "
                            "and test_<primary> through observer.on_eval")
        best = min(scored)[1]  # the first evaluation reaching the best value
        step, at_best = self.history[best]
        # a split evaluated less often than val (test) is taken from the nearest later evaluation
        merged = dict(at_best)
        for _, m in self.history[best:]:
            for k, v in m.items():
                merged.setdefault(k, v)
        return step, merged, self.history[-1][1]


@dataclass
class ArmSetup:
    """What one arm trains: the model as it starts, its masks, its plan, and params to record."""

    model: nn.Module
    masks: Masks
    plan: Plan
    params: dict[str, str] = field(default_factory=dict)
    capture_at: int | None = None  # capture the weights after this step (θk of the dense run)
    early_bird: EarlyBird | None = None  # watch for the early-bird iteration (prune.early_bird)


# (trained model, recorder, run id) -> extra fields for the arm's record (or None)
AfterTrain = Callable[[nn.Module, Recorder, str], "dict[str, Any] | None"]


class Job:
    """A job folder plus its MLflow parent run."""

    def __init__(self, *, kind: str, name: str, config_hash: str, config: Mapping[str, Any], task: Task,
                 tracker: Tracker, root: Path, experiment: str, progress: Progress | None,
                 tags: Mapping[str, str], params: Mapping[str, str], device: str = "cpu",
                 checkpoint_every: int | None = None) -> None:
        self.kind, self.hash, self.config, self.task, self.tracker = kind, config_hash, config, task, tracker
        self.device, self.checkpoint_every = device, checkpoint_every  # device: resolved, "cpu" or "cuda:N"
        self.progress: Progress = progress or (lambda event, info: None)
        self.name = name
        self.dir = Path(root) / f"{name}-{config_hash[:10]}"  # made by open(): a job refused before has none
        self.experiment, self.tags, self.params = experiment, dict(tags), dict(params)
        self.exp_id = ""
        self.parent = ""

    def open(self) -> None:
        """Resume this job's parent run in this tracking store, or start it."""
        task_spec = self.task.spec()  # third-party code: called before any run is started or reopened
        self.tracker.check_reachable()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = JobLock.take(self.dir)  # before anything of the job is read or written
        self.exp_id = self.tracker.experiment(self.experiment)
        state_file = self.dir / "job.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        runs = state.get("parent_runs", {})
        parent = runs.get(self.tracker.uri)
        identity = {"ticketx.job_dir": str(self.dir.resolve()), "ticketx.config_hash": self.hash}
        if not (parent and self.tracker.exists(parent)):  # made by a run of this job killed before job.json
            parent = next((r.info.run_id for r in self.tracker.running_runs(self.exp_id, identity)), None)
            if parent:  # killed while its params were logged, perhaps
                self.tracker.log_params(parent, self.params)
        if parent:
            with held():
                self.tracker.reopen(parent)
                self.parent = parent  # reopened: a failure from here ends it again (Job.fail)
            runs[self.tracker.uri] = parent
            resumable = self._checkpointed_runs()
            for child in self.tracker.child_runs(self.exp_id, parent):
                if child.info.status != "RUNNING":  # no arm of this job runs now
                    continue
                if child.info.run_id in resumable:  # its arm resumes from a checkpoint: continued, not redone
                    self.tracker.finish(child.info.run_id, "KILLED")
                else:  # killed before its .run, or before its first checkpoint
                    self.tracker.delete(child.info.run_id)
            self.progress("resume", {"job_dir": str(self.dir), "run_id": parent})
        else:
            spec = self.task.metrics
            tags = {"ticketx.kind": self.kind, **identity, **metric_tags(spec.primary, spec.higher_is_better),
                    **self.tags}
            commit = git_commit(Path.cwd())
            if commit:
                tags["mlflow.source.git.commit"] = tags["ticketx.git_commit"] = commit
            with held():  # a signal waits until Job.fail can end the run
                parent = self.tracker.start_run(self.exp_id, f"{self.kind} {self.name}",
                                                tags=tags, params=self.params)
                self.parent = parent
            runs[self.tracker.uri] = parent
        self.parent = parent  # from here a failure ends it (Job.fail)
        self.tracker.set_tags(parent, {"ticketx.device": self.device})
        self._record_finished_arms(parent, [uri for uri in runs if uri != self.tracker.uri])
        write_json(state_file, {"kind": self.kind, "config": dict(self.config), "config_hash": self.hash,
                                "task": task_spec, "parent_runs": runs, "experiment": self.experiment})

    RECORD_KEYS = ("replicate", "level", "arm", "lr")  # what names an arm's run among a job's child runs

    def _record_finished_arms(self, parent: str, elsewhere: list[str]) -> None:
        """Give every arm this folder holds a result for a child run in this store, where it has none.

        A job moved to another store (the local one to a team server, say) finds its finished arms
        "already done" but no runs of them there: each gets a FINISHED child run made from its result file,
        with the params, summary metrics and ticket the original run had (the per-step curves stay in the
        store it trained in, named by the tag ticketx.recorded_from), and its result file then names the
        new run. Runs of arms recorded before are left alone, so a move interrupted half-way completes.
        """
        results = [f for f in sorted(self.dir.rglob("*.json")) if f.with_suffix(".run").exists()]
        if not results:
            return
        have = {tuple(str(c.data.params.get(k, "")) for k in self.RECORD_KEYS)
                for c in self.tracker.child_runs(self.exp_id, parent) if c.info.status == "FINISHED"}
        made = 0
        for result_file in results:
            record = json.loads(result_file.read_text())
            key = tuple(str(record.get(k, "")) for k in self.RECORD_KEYS)
            if key in have:
                continue
            summary = {"density", "layer_density", "early_stop_step", "at_early_stop", "final", "seconds",
                       "run_id", "movement", "early_bird_step", "steps_trained", "resumed_at", "device"}
            params = {k: str(v) for k, v in record.items() if k not in summary and not isinstance(v, (dict, list))}
            params["density"] = f"{record['density']:.6f}"
            tags = {f"ticketx.{k}": str(record[k]) for k in self.RECORD_KEYS if k in record}
            tags.update({"ticketx.device": str(record.get("device", "")),
                         "ticketx.recorded_from": f"{' '.join(elsewhere) or 'another store'} (run {record['run_id']})"})
            name = f"L{int(record['level']):02d} {record['arm']} r{record['replicate']}"
            if "lr" in record:
                name += f" lr={record['lr']:g}"
            run_id = self.tracker.start_run(self.exp_id, name, parent=parent, tags=tags, params=params)
            metrics = {"density": record["density"], "early_stop_step": record["early_stop_step"],
                       "seconds": record["seconds"],
                       **{f"es_{k}": v for k, v in record["at_early_stop"].items()},
                       **{f"final_{k}": v for k, v in record["final"].items()},
                       **{k: record[k] for k in ("steps_trained", "early_bird_step") if record.get(k) is not None}}
            self.tracker.log_metrics(run_id, metrics)
            if record.get("movement"):
                self.tracker.log_metrics(run_id, record["movement"], int(record.get("steps", 0)))
            ticket = self._ticket_of(result_file.parent, record["arm"])
            if ticket is not None:
                self.tracker.log_artifacts(run_id, ticket, "ticket")
            self.tracker.finish(run_id)
            write_json(result_file, {**record, "run_id": run_id})
            made += 1
        if made:
            self.progress("recorded", {"message": f"recorded {made} finished arm(s) of {self.dir.name} in "
                                                  f"{self.tracker.uri} from the job folder (their per-step "
                                                  "curves stay in the store they trained in)"})

    def _ticket_of(self, folder: Path, arm: str) -> Path | None:
        """The ticket folder a find arm's run holds as its artifact (as `findjob` logs it), if any."""
        from . import arms as armlib
        spec = armlib.FIND.get(arm) if self.kind == "find" else None
        name = "ticket" if spec is not None and spec.chain else (spec.ticket_dir if spec is not None else None)
        return folder / name if name and (folder / name).is_dir() else None

    def _checkpointed_runs(self) -> set[str]:
        """Run ids of arms that left a checkpoint: their runs are continued when the arm resumes."""
        out = set()
        for run_file in self.dir.rglob("*.run"):
            if run_file.with_suffix(".ckpt.safetensors").exists():
                out.add(run_file.read_text().strip())
        return out

    def folder(self, *parts: str) -> Path:
        d = self.dir.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def arm(self, folder: Path, arm: str, info: Mapping[str, Any], setup: Callable[[], ArmSetup],
            run_name: str, after: AfterTrain | None = None) -> dict[str, Any]:
        """Train one arm on the job's device, resume it from its checkpoint, or read back its result if an
        earlier run of the job finished it."""
        result_file, run_file = folder / f"{arm}.json", folder / f"{arm}.run"
        if result_file.exists():
            record = json.loads(result_file.read_text())
            self.progress("skip", {**info, "record": record})
            return record
        clock: dict[str, float] = {"before": 0.0, "began": time.perf_counter()}
        recorder: Recorder | None = None
        checkpoints = ArmCheckpoints(
            folder / f"{arm}.ckpt.safetensors", every_steps=self.checkpoint_every,
            core_state=lambda: {**recorder.core_state(),  # type: ignore[union-attr]
                                "seconds": clock["before"] + time.perf_counter() - clock["began"]})
        saved, run_id = self._resumable(run_file, checkpoints)
        s = setup()
        plan = dataclasses.replace(s.plan, device=self.device)
        dens = masklib.density(s.masks)
        tags = {f"ticketx.{k}": str(v) for k, v in info.items() if k != "steps"}
        tags["ticketx.device"] = self.device
        opened: str | None = None  # the run this arm holds RUNNING, once it does
        try:
            with held():  # a signal waits until the run is known to this arm (ended below if it comes)
                if run_id is None:
                    params = {**{k: str(v) for k, v in info.items()}, **s.params, "density": f"{dens:.6f}",
                              "data_seed": str(plan.data_seed), "start_step": str(plan.start_step),
                              "device": self.device, "precision": plan.precision}
                    run_id = opened = self.tracker.start_run(self.exp_id, run_name, parent=self.parent, tags=tags,
                                                             params=params)
                    run_file.write_text(run_id)
                else:  # the same run goes on (on this job's device, which may differ from the one it began on)
                    self.tracker.reopen(run_id)
                    opened = run_id
            if saved is None:
                recorder = Recorder(self.tracker, run_id, capture_at=s.capture_at, progress=self.progress,
                                    info={**info, "density": dens}, early_bird=s.early_bird)
                self.progress("start", {**info, "density": dens, "run_id": run_id})
            else:
                self.tracker.set_tags(run_id, {**tags, "ticketx.resumed_at": str(saved["step"])})
                recorder = Recorder(self.tracker, run_id, capture_at=s.capture_at, progress=self.progress,
                                    info={**info, "density": dens}, logged=self.tracker.logged_steps(run_id),
                                    early_bird=s.early_bird)
                recorder.restore(saved["core"])
                clock["before"] = float(saved["core"]["seconds"])
                self.progress("start", {**info, "density": dens, "run_id": run_id, "resumed_at": saved["step"]})
            recorder.checkpoints = checkpoints
            clock["began"] = time.perf_counter()
            model = s.model.to(self.device)  # in place: s.model is this model
            on_device = {n: m.to(self.device) for n, m in s.masks.items()}
            recorder.masks, recorder.what = on_device, f"{arm} ({run_name})"
            try:
                self.task.train(model, on_device, plan, recorder)
            except torch.OutOfMemoryError:
                raise TaskError(
                    f"{run_name}: out of memory on {self.device} at train.batch_size {plan.batch_size} "
                    f"({plan.precision}); lower train.batch_size, use fewer --workers per GPU, or another "
                    "device. Nothing was recorded as finished: running the job again resumes this arm "
                    "from its last checkpoint"
                ) from None
            seconds = clock["before"] + time.perf_counter() - clock["began"]
            model.to("cpu")
            check_masked(model, s.masks, f"{arm} ({run_name}) after training")
            try:
                es_step, at_es, final = recorder.summary(self.task.metrics)
            except TaskError as e:
                raise TaskError(f"{run_name}: {e}") from None
            extra = (after(model, recorder, run_id) if after is not None else None) or {}
        except BaseException as e:
            s.model.to("cpu")
            if opened is not None:
                self.tracker.finish(opened, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        record = {**info, **{k: v for k, v in s.params.items() if k not in info}, "density": dens,
                  "layer_density": masklib.layer_density(s.masks), "early_stop_step": es_step,
                  "at_early_stop": at_es, "final": final, "seconds": seconds, "run_id": run_id,
                  "device": self.device, **extra}
        if saved is not None:
            record["resumed_at"] = saved["step"]
        metrics = {"density": dens, "early_stop_step": es_step, "seconds": seconds}
        if s.early_bird is not None:  # the early-bird iteration (None: never reached) and the steps trained
            record["early_bird_step"] = s.early_bird.found
            record["steps_trained"] = (recorder.stopped_at or plan.steps) - plan.start_step
            metrics["steps_trained"] = record["steps_trained"]
            if s.early_bird.found is not None:
                metrics["early_bird_step"] = s.early_bird.found
        with held():  # a signal waits for the run's end and the result (a kill -9 may not: below)
            self.tracker.log_metrics(run_id, {**metrics, **{f"es_{k}": v for k, v in at_es.items()},
                                              **{f"final_{k}": v for k, v in final.items()}})
            self.tracker.finish(run_id)  # then the result: killed between the two, the arm is redone, none RUNNING
            write_json(result_file, record)
            checkpoints.remove()
        self.progress("done", {**info, "record": record})
        return record

    def _resumable(self, run_file: Path, checkpoints: ArmCheckpoints) -> tuple[dict[str, Any] | None, str | None]:
        """(the checkpoint, the run it continues) of an arm killed after its first checkpoint; else
        (None, None), with the half-logged run of an arm killed before it deleted, so that it restarts."""
        if not run_file.exists():
            checkpoints.remove()  # a checkpoint without its run file is no arm's: never resumed
            return None, None
        stale = run_file.read_text().strip()
        saved = None
        if self.tracker.exists(stale):
            try:
                saved = checkpoints.load()
            except CheckpointError as e:
                self.progress("warning", {"message": f"{e}; the arm starts again"})
        if saved is not None:
            return saved, stale
        if self.tracker.exists(stale):
            self.tracker.delete(stale)
        checkpoints.remove()
        return None, None

    def close(self, rows: list[dict[str, Any]], records: list[dict[str, Any]],
              extra_artifacts: list[Path] = ()) -> None:
        """Write and log the results table, and end the parent run as FINISHED."""
        write_csv(self.dir / "results.csv", rows)
        write_json(self.dir / "results.json", records)
        for path in [self.dir / "results.csv", self.dir / "results.json", *extra_artifacts]:
            self.tracker.log_artifact(self.parent, path)
        self.tracker.finish(self.parent)
        self.release()

    def fail(self, error: BaseException) -> None:
        """End the parent run as KILLED (interrupted) or FAILED."""
        try:
            if self.parent:
                self.tracker.finish(self.parent, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        finally:
            self.release()

    def release(self) -> None:
        """Let another command own this job folder (the OS does it too, when this process ends)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None


class JobBusyError(RuntimeError):
    """Another process owns the job folder: the message names its host and PID."""


class JobLock:
    """One owner per job folder: an exclusive `flock` on `<job>/job.lock`, held for the job's life.

    The kernel drops the lock when its process ends, however it ends (kill -9 included), so a stale lock
    cannot outlive its holder; the file, which names the holder, stays and is taken over by the next owner.
    """

    FILE = "job.lock"

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def take(cls, folder: Path) -> JobLock:
        """Own `folder`, or raise JobBusyError at once, naming the holder, having changed nothing."""
        import fcntl
        import os
        import socket

        path = folder / cls.FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise JobBusyError(f"job folder {folder} is in use by {holder}; wait for that command to end "
                               "(or stop it), then run this one again: it resumes the job") from None
        except BaseException:
            os.close(fd)
            raise
        holder = f"ticketx (PID {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return cls(fd)

    def release(self) -> None:
        import os
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def check_masked(model: nn.Module, masks: Masks, what: str) -> None:
    """Raise TaskError if any pruned weight of `model` is nonzero (a task's train() that does not apply the
    masks, or lets pruned weights regrow)."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if bool((params[name].detach()[m == 0] != 0).any()):
            raise TaskError(f"{what}: pruned weights of {name} are nonzero; the task's train() must apply the "
                            "masks and keep masked weights at zero (ticketx.training.fit does both)")


def summarise(records: list[dict[str, Any]], spec: MetricSpec, by: tuple[str, ...] = ("level", "arm"),
              order: Mapping[str, int] = {}) -> list[dict[str, Any]]:
    """One row per group (default: level and arm): mean and std over replicates of density, early-stop
    step and the primary metric on val and test, at early stop and at the end (and, in early-bird jobs,
    of the early-bird iteration over the replicates that reached one, and of the steps trained)."""
    keys = [f"val_{spec.primary}", f"test_{spec.primary}"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(tuple(rec[k] for k in by), []).append(rec)

    def sort_key(item: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
        return tuple(order.get(v, 99) if isinstance(v, str) else v for v in item[0])

    rows = []
    for group, recs in sorted(groups.items(), key=sort_key):
        row: dict[str, Any] = {**dict(zip(by, group)), "replicates": len(recs),
                               "density": sum(r["density"] for r in recs) / len(recs)}
        values = {"early_stop_step": [r["early_stop_step"] for r in recs]}
        for key in ("early_bird_step", "steps_trained"):  # early-bird jobs: where each replicate found one
            if any(r.get(key) is not None for r in recs):
                values[key] = [r[key] for r in recs if r.get(key) is not None]
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
