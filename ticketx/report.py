"""Paper-style figures and tables of a find or transfer job, from its MLflow runs or its job folder.

`ticketx report REF` where REF is a job folder, a parent run id, or an experiment name (every find and
transfer job in it). For each job it writes, into `<out>/<job name>-<run id[:8]>/`:

- `report.csv`: one row per level and arm, mean / min / max over replicates of the density, the
  early-stopping iteration, the primary metric (accuracy, perplexity or return) on test at early stop and
  at the end, the validation metric at early stop, the generalisation gap (training-split minus test
  accuracy, where the task scored its training split), and the weight movement of the surviving weights
  (relative distance from the initial values and sign agreement, all layers together);
- `metric.png`: test metric at early stop and at the end against % of weights remaining (log axis,
  100% on the left as in Frankle & Carbin's figures), one line per arm, bars from the lowest to the
  highest replicate;
- `early_stop.png`: early-stopping iteration against % of weights remaining;
- `gap.png` and `movement.png` where those numbers exist, and `early_bird.png` (the early-bird iteration
  against % of weights remaining) for jobs with prune.early_bird.

Arms are named and ordered as in `ticketx.arms`; a criterion's ablations are drawn in its colour, dotted
(shuffled), dash-dotted (reinit) or dashed (inverted); report.csv names each find arm's criterion and
ablation (the ticket's are IMP's: random_prune is its shuffled, random_reinit its reinit ablation).

For transfer jobs with a learning-rate grid, each (level, arm) is shown at the learning rate whose mean
validation metric at early stop is best (never chosen on test). The figures and the table are also
logged to MLflow as artifacts of the job's parent run, under `report/`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import arms as armlib
from .files import write_csv
from .tracking import Tracker, TrackingError, tagged_metric
# the primary metric by the names a job logs, for jobs recorded before the ticketx.metric tag existed
KNOWN_METRICS = {"accuracy": True, "return": True, "perplexity": False, "loss": False}


class ReportError(ValueError):
    """What to report cannot be found or read; the message says what was looked for and where."""


@dataclass
class JobData:
    """One job's arm records, flattened: level, arm, replicate, lr, density, early_stop_step, es_*, final_*,
    move_*; plus what the figures need to know about the job."""

    kind: str
    name: str
    run_id: str
    primary: str
    higher_is_better: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    experiment_id: str = ""

    @property
    def folder_name(self) -> str:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.name)
        return f"{safe}-{self.run_id[:8]}" if self.run_id else safe


def _flatten_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: rec[k] for k in ("level", "arm", "replicate", "lr", "density", "early_stop_step", "early_bird_step",
                               "steps_trained") if rec.get(k) is not None}
    for prefix, key in (("es", "at_early_stop"), ("final", "final")):
        for k, v in dict(rec.get(key, {})).items():
            out[f"{prefix}_{k}"] = v
    for k, v in dict(rec.get("movement", {})).items():
        out[k] = v
    return out


def _infer_metric(keys: Iterable[str]) -> tuple[str, bool]:
    keys = set(keys)
    for name, higher in KNOWN_METRICS.items():
        if f"es_test_{name}" in keys or f"es_val_{name}" in keys:
            return name, higher
    raise ReportError("cannot tell the job's primary metric: none of "
                      f"{', '.join('es_test_' + k for k in KNOWN_METRICS)} was recorded")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise ReportError(f"{path} is not valid JSON ({e})") from None


def from_job_dir(path: Path, uri: str | None = None) -> JobData:
    """A job folder (`ticketx find/transfer --out`): its job.json and the arms' records (finished arms
    only, so a job still running or killed half-way reports what it has). The run id is the job's parent
    run in the store `uri` when job.json names one there, else the first it names."""
    path = Path(path)
    meta_file = path / "job.json"
    if not meta_file.exists():
        raise ReportError(f"{path} is not a ticketx job folder (no job.json in it)")
    meta = _read_json(meta_file)
    if not isinstance(meta, dict):
        raise ReportError(f"{meta_file}: expected a JSON object")
    results = path / "results.json"
    if results.exists():
        raw = _read_json(results)
    else:
        # arm records sit beside the level's ticket folder (r0/L01/ticket.json is the ticket arm's record;
        # r0/L01/ticket/ticket.json is the ticket itself)
        raw = [_read_json(f) for f in sorted(path.glob("**/*.json"))
               if f.parent != path and f.parent.name != "ticket"]
        raw = [r for r in raw if isinstance(r, dict) and "arm" in r and "early_stop_step" in r]
    records = [_flatten_record(r) for r in raw]
    if not records:
        raise ReportError(f"{path} holds no finished arm yet")
    runs = meta.get("parent_runs", {})
    run_id = (runs.get(uri) or next(iter(runs.values()), "")) if isinstance(runs, dict) and runs else ""
    primary, higher = _infer_metric(k for r in records for k in r)
    return JobData(kind=meta.get("kind", ""), name=path.name, run_id=run_id, primary=primary,
                   higher_is_better=higher, records=records)


def from_run(tracker: Tracker, run_id: str) -> JobData:
    """A job's parent run: its finished child runs' tags and summary metrics."""
    parent = tracker.get_run(run_id)
    tags = parent.data.tags
    if "ticketx.kind" not in tags:
        raise ReportError(f"MLflow run {run_id} is not a ticketx job's parent run (no ticketx.kind tag)")
    exp_id = parent.info.experiment_id
    records = []
    for child in tracker.child_runs(exp_id, run_id):
        m, t = child.data.metrics, child.data.tags
        if "density" not in m or "early_stop_step" not in m or child.info.status != "FINISHED":
            continue
        rec: dict[str, Any] = {k: v for k, v in m.items() if k.startswith(("es_", "final_", "move_"))}
        rec.update(density=m["density"], early_stop_step=m["early_stop_step"], arm=t.get("ticketx.arm", "?"),
                   level=int(t.get("ticketx.level", 0)), replicate=int(t.get("ticketx.replicate", 0)))
        rec.update({k: m[k] for k in ("early_bird_step", "steps_trained") if k in m})
        if "ticketx.lr" in t:
            rec["lr"] = float(t["ticketx.lr"])
        records.append(rec)
    if not records:
        raise ReportError(f"MLflow run {run_id} ({parent.info.run_name}) has no finished arm yet")
    primary, higher = tagged_metric(tags) or _infer_metric(k for r in records for k in r)
    name = (parent.info.run_name or run_id).split(" ", 1)[-1]
    return JobData(kind=tags["ticketx.kind"], name=name, run_id=run_id, primary=primary,
                   higher_is_better=higher, records=records, experiment_id=exp_id)


def needs_store(ref: str, log: bool) -> bool:
    """Whether reporting `ref` talks to the tracking store: to log, or to read a run or an experiment."""
    return log or not Path(ref).expanduser().is_dir()


def resolve(ref: str, tracker: Tracker | None) -> list[JobData]:
    """A job folder, a parent run id, or an experiment name (all its find and transfer jobs); a job folder
    needs no tracker."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return [from_job_dir(path, tracker.uri if tracker is not None else None)]
    if tracker is None:
        raise ReportError(f"{ref!r} is not a job folder; a run id or an experiment needs the MLflow store")
    errors = []
    if len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref):
        try:
            return [from_run(tracker, ref)]
        except TrackingError as e:
            errors.append(str(e))
    exp = tracker.find_experiment(ref)
    if exp is not None:
        jobs = []
        for run in tracker.job_runs(exp.experiment_id):
            try:
                jobs.append(from_run(tracker, run.info.run_id))
            except ReportError:
                continue  # a job with no finished arm yet
        if jobs:
            return jobs
        errors.append(f"experiment {ref!r} has no ticketx job with a finished arm")
    raise ReportError(f"{ref!r} is neither a job folder, nor a ticketx parent run, nor an experiment with "
                      f"ticketx jobs in {tracker.uri}" + (f" ({'; '.join(errors)})" if errors else ""))


def _stats(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {}
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def rows(job: JobData) -> list[dict[str, Any]]:
    """One row per (level, arm): mean / min / max over replicates (see the module docstring)."""
    p = job.primary
    by: dict[tuple[int, str, float | None], list[dict[str, Any]]] = {}
    for r in job.records:
        by.setdefault((int(r.get("level", 0)), str(r["arm"]), r.get("lr")), []).append(r)
    # one learning rate per (level, arm): the best mean validation metric at early stop
    chosen: dict[tuple[int, str], tuple[float, float | None]] = {}
    sign = 1.0 if job.higher_is_better else -1.0
    for (level, arm, lr), recs in by.items():
        val = _stats([r.get(f"es_val_{p}") for r in recs]).get("mean", -math.inf * sign)
        score = sign * val
        if (level, arm) not in chosen or score > chosen[(level, arm)][0]:
            chosen[(level, arm)] = (score, lr)
    out = []
    order = armlib.order(job.kind)
    for (level, arm), (_, lr) in sorted(chosen.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        recs = by[(level, arm, lr)]
        row: dict[str, Any] = {"level": level, "arm": arm, "replicates": len(recs)}
        spec = armlib.table(job.kind).get(arm)
        if spec is not None and job.kind == "find" and level > 0:
            row.update(criterion=spec.criterion or "imp", ablation=spec.ablation or "none")
        if lr is not None:
            row["lr"] = lr
        series = {
            "density_pct": [100 * r["density"] for r in recs],
            "early_stop_step": [r.get("early_stop_step") for r in recs],
            "early_bird_step": [r.get("early_bird_step") for r in recs],
            "steps_trained": [r.get("steps_trained") for r in recs],
            f"es_test_{p}": [r.get(f"es_test_{p}") for r in recs],
            f"final_test_{p}": [r.get(f"final_test_{p}") for r in recs],
            f"es_val_{p}": [r.get(f"es_val_{p}") for r in recs],
            "es_gap": [r["es_trainset_accuracy"] - r["es_test_accuracy"] for r in recs
                       if "es_trainset_accuracy" in r and "es_test_accuracy" in r],
            "final_gap": [r["final_trainset_accuracy"] - r["final_test_accuracy"] for r in recs
                          if "final_trainset_accuracy" in r and "final_test_accuracy" in r],
            "move_dist": [r.get("move_dist/all") for r in recs],
            "move_sign": [r.get("move_sign/all") for r in recs],
        }
        for name, values in series.items():
            for stat, v in _stats(values).items():
                if stat != "n":
                    row[f"{name}_{stat}"] = v
        out.append(row)
    return out


def _plot(table: list[dict[str, Any]], panels: list[tuple[str, str]], ylabel: str, title: str,
          path: Path, kind: str, percent: bool = False) -> Path | None:
    """One panel per (key, panel title); a line per arm against density; bars span min to max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not any(f"{key}_mean" in row for key, _ in panels for row in table):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 5.2 * len(panels)), 4.2), squeeze=False)
    specs = armlib.table(kind)
    arms = sorted({row["arm"] for row in table}, key=lambda a: specs[a].order if a in specs else 99)
    pruned_arms = [a for a in arms if a != "dense"]
    scale = 100.0 if percent else 1.0
    for ax, (key, panel_title) in zip(axes[0], panels):
        def points(arm: str) -> list[tuple[float, float, float, float]]:
            return sorted(((row["density_pct_mean"], row[f"{key}_mean"], row[f"{key}_min"], row[f"{key}_max"])
                           for row in table if row["arm"] == arm and f"{key}_mean" in row), reverse=True)

        dense = points("dense")
        for arm in pruned_arms or arms:
            # every arm of a find job starts from the dense network, as in Frankle & Carbin's figures
            pts = (dense if arm != "dense" else []) + points(arm)
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [scale * p[1] for p in pts]
            err = [[scale * (p[1] - p[2]) for p in pts], [scale * (p[3] - p[1]) for p in pts]]
            # an ablation is drawn in its criterion's colour, dotted (shuffled), dash-dotted (reinit) or
            # dashed (inverted)
            spec = specs.get(arm)
            ax.errorbar(x, y, yerr=err, marker="o", markersize=3.5, capsize=2.5, label=arm,
                        color=f"C{spec.colour if spec is not None else 5}",
                        linestyle=spec.linestyle if spec is not None else "-")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("% of weights remaining")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8 if len(arms) <= 6 else 6, ncol=1 if len(arms) <= 8 else 2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(job: JobData, out: Path) -> list[Path]:
    """Write the job's table and figures into `out` (created); return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    table = rows(job)
    p = job.primary
    pct = p == "accuracy"
    unit = f"test {p}" + (" (%)" if pct else "")
    reps = max(row["replicates"] for row in table)
    title = f"{job.kind} {job.name}: mean of {reps} replicate(s), bars min to max"
    files = [out / "report.csv"]
    write_csv(files[0], table)
    figures = [
        _plot(table, [(f"es_test_{p}", "at the early-stopping iteration"), (f"final_test_{p}", "at the end")],
              unit, title, out / "metric.png", job.kind, percent=pct),
        _plot(table, [("early_stop_step", "early-stopping iteration")],
              "iteration", title, out / "early_stop.png", job.kind),
        _plot(table, [("es_gap", "at the early-stopping iteration"), ("final_gap", "at the end")],
              "training minus test accuracy (points)", title, out / "gap.png", job.kind, percent=True),
        _plot(table, [("move_dist", "||θ_end − θ_start|| / ||θ_start||, surviving weights"),
                      ("move_sign", "share of surviving weights keeping their initial sign")],
              "", title, out / "movement.png", job.kind),
        _plot(table, [("early_bird_step", "early-bird iteration (prune.early_bird)")],
              "iteration", title, out / "early_bird.png", job.kind),
    ]
    files += [f for f in figures if f is not None]
    return files


def log_files(job: JobData, files: list[Path], tracker: Tracker) -> str:
    """Log a job's report files to its parent run, under report/; returns where they went, or why not."""
    if not job.run_id:
        return "not logged to MLflow: the job folder names no MLflow run"
    if not tracker.exists(job.run_id):
        return (f"not logged to MLflow: {tracker.uri} has no run {job.run_id} (the job was recorded in another "
                "store: set MLFLOW_TRACKING_URI to it, or pass --no-log)")
    for f in files:
        tracker.log_artifact(job.run_id, f, "report")
    return f"logged to MLflow run {job.run_id} under report/ ({tracker.uri})"


def report(ref: str, tracker: Tracker | None, out: Path, *, log: bool = True,
           done: Callable[[JobData, list[Path], str], None] | None = None) -> list[tuple[JobData, list[Path]]]:
    """Render every job `ref` names into `out/<job>/`; log the files to each job's parent run. `done(job,
    files, logged)` is called as each job is written, `logged` saying where its files were logged or why
    they were not."""
    out_jobs = []
    for job in resolve(ref, tracker):
        files = render(job, Path(out) / job.folder_name)
        if not log:
            logged = "not logged to MLflow (--no-log)"
        elif tracker is None:
            raise ReportError("logging a report needs the MLflow store")
        else:
            logged = log_files(job, files, tracker)
        if done is not None:
            done(job, files, logged)
        out_jobs.append((job, files))
    return out_jobs
