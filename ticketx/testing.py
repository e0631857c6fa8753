"""A conformance kit for task plugins, as gymnasium's `check_env` and scikit-learn's `check_estimator` are:
one call that holds a Task to what the core expects of it, on a tiny plan, and says check by check what is
wrong and what to change, before a user meets it half-way through a find job.

    check_task(MyPlugin().make_task("mine", {"small": True}, data_root=root), plugin="mine")

or one test per check (pytest is needed only here):

    @parametrize_with_checks({"mine": lambda: MyPlugin().make_task("mine", {}, data_root=None)})
    def test_conformance(task, check):
        check(task)

Training runs the arms the core trains (dense, ticket, random reinit, and one ended early by an early-bird
observer) for a few optimizer steps each: a small configuration of a task passes in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import masks as masklib
from . import ticket as ticketlib
from .jobs import check_masked
from .task import DataError, MetricSpec, Plan, StopTraining, check_contract, check_plan, check_spec, check_ticket

STOP_AT = 2  # the step at which the early-bird arm's observer raises StopTraining


class ConformanceError(AssertionError):
    """A task fails conformance checks: one line per problem, naming its check; `failures` maps each failed
    check to its problems, `skipped` each check that could not run to why."""

    def __init__(self, where: str, failures: dict[str, list[str]], skipped: dict[str, str]) -> None:
        self.failures, self.skipped = failures, skipped
        lines = [f"[{c}] {p}" for c, problems in failures.items() for p in problems]
        lines += [f"[{c}] not run: {why}" for c, why in skipped.items()]
        super().__init__(f"{where} fails {len(failures)} conformance check(s), {len(skipped)} not run:\n  "
                         + "\n  ".join(lines))


class _Blocked(Exception):
    """A check cannot run: something it needs failed, which check `needs` reports."""

    def __init__(self, needs: str, detail: str) -> None:
        super().__init__(detail)
        self.needs = needs


class _Watcher:
    """An Observer recording what train() reports; raises StopTraining once, at step `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.steps, self.evals = stop_at, [], []
        self.stopped: tuple[int, int] | None = None  # (len(steps), len(evals)) when it raised

    def on_step(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)
        if step == self.stop_at and self.stopped is None:
            self.stopped = (len(self.steps), len(self.evals))
            raise StopTraining

    def on_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.evals.append((step, dict(metrics)))


@dataclass
class _Run:
    """One arm as train() left it, with its masks and its masked weights before training."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    watcher: _Watcher
    error: str | None  # what train() raised, and what to do about it


@dataclass
class _Kit:
    """What the checks share: the task, the names spec() must give, the plan, and what is done once."""

    task: Any
    plugin: str
    name: str
    plan: Plan
    tmp_dir: Path | None
    done: dict[str, Any] = field(default_factory=dict)  # "prepare": its error or None; arm -> _Run

    def need(self, member: str) -> Callable[..., Any]:
        fn = getattr(self.task, member, None)
        if not callable(fn):
            raise _Blocked("contract", f"the task has no callable {member}()")
        return fn

    def ready(self) -> None:
        """prepare(), once: nothing past the contract can run without the data it loads."""
        if "prepare" not in self.done:
            try:
                self.done["prepare"] = None
                self.need("prepare")()
            except _Blocked:
                pass  # the contract reports it
            except Exception as e:  # third-party code: any error, named
                self.done["prepare"] = e
        if (e := self.done["prepare"]) is not None:
            raise _Blocked("prepare", f"prepare() raised {type(e).__name__}: {e}")

    def metrics(self) -> MetricSpec:
        if not isinstance(m := getattr(self.task, "metrics", None), MetricSpec):
            raise _Blocked("contract", "task.metrics is not a ticketx.task.MetricSpec")
        return m

    def build(self, seed: int) -> nn.Module:
        self.ready()
        fn = self.need("build_model")
        try:
            model = fn(seed)
        except Exception as e:
            raise _Blocked("build_model", f"build_model({seed}) raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise _Blocked("build_model", f"build_model({seed}) returned a {type(model).__name__}, not an nn.Module")
        return model

    def masks(self, model: nn.Module, density: float) -> dict[str, torch.Tensor]:
        """Masks over the prunable weights keeping `density` of each, at places fixed by seed 0."""
        if problems := _prunable_problems(self.need("prunable"), model):
            raise _Blocked("parameters", problems[0])
        g, params = torch.Generator().manual_seed(0), dict(model.named_parameters())
        return {n: masklib.random_at_density(torch.ones_like(params[n].detach()), density, g)
                for n in self.task.prunable(model)}

    def run(self, arm: str) -> _Run:
        """Arm `arm` (dense, ticket, reinit, stop) trained for the plan, once, as the core hands it over."""
        if arm in self.done:
            return self.done[arm]
        try:
            check_plan(self.task, self.plan)
        except Exception as e:
            raise _Blocked("plan", f"check_plan refused the kit's plan: {e}") from e
        model = self.build(1 if arm == "reinit" else 0)
        masks = self.masks(model, 1.0 if arm == "dense" else 0.5)
        params = dict(model.named_parameters())
        if arm != "reinit":  # a ticket's pruned entries are zero on entry; a reinit's are not
            with torch.no_grad():
                for n, m in masks.items():
                    params[n].mul_(m)
        before = {n: params[n].detach().clone() for n in masks}
        watcher, error, train = _Watcher(STOP_AT if arm == "stop" else None), None, self.need("train")
        try:  # copies of the masks: what train() does to them cannot hide what it did to the weights
            train(model, {n: m.clone() for n, m in masks.items()}, self.plan, watcher)
        except StopTraining:
            error = ("train() let StopTraining escape: catch it around observer.on_step, evaluate as after the "
                     "last step and return normally (ticketx.training.fit does)")
        except Exception as e:
            error = f"train() raised {type(e).__name__}: {e}"
        self.done[arm] = _Run(model, masks, before, watcher, error)
        return self.done[arm]


def _prunable_problems(prunable: Callable[[nn.Module], Any], model: nn.Module) -> list[str]:
    try:
        out = prunable(model)
    except Exception as e:
        return [f"prunable(model) raised {type(e).__name__}: {e}"]
    if not isinstance(out, Mapping) or not out:
        return [f"prunable(model) must return a non-empty dict of parameter name -> the model's Parameter, got "
                f"{out!r:.80}"]
    params, problems = dict(model.named_parameters()), []
    if unknown := sorted(set(out) - set(params)):
        problems.append(f"prunable(model) names {unknown}, which are not parameters of the model; use names "
                        f"from model.named_parameters() ({sorted(params)[:8]}...)")
    if copies := sorted(n for n in out if n in params and out[n] is not params[n]):
        problems.append(f"prunable(model) maps {copies} to tensors other than the model's own Parameters: return "
                        "the parameters themselves (the core masks them in place)")
    return problems


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _arm_problems(kit: _Kit, arm: str, what: str) -> list[str]:
    """Masks held, weights trained, an early-stop metric reported: what the core checks of every arm."""
    run = kit.run(arm)
    if run.error is not None:
        return [f"{what}: {run.error}"]
    problems = []
    for n, m in run.masks.items():  # the core's own check, weight by weight so that every one is named
        try:
            check_masked(run.model, {n: m}, what)
        except Exception as e:  # its message says what to do
            problems.append(str(e))
    params = dict(run.model.named_parameters())
    # an arm stopped at step 2 may not have updated yet (a replay buffer warming up, say)
    if arm != "stop" and not any(bool((params[n].detach() != run.before[n])[m != 0].any())
                                 for n, m in run.masks.items()):
        problems.append(f"{what}: no unpruned prunable weight changed in {kit.plan.steps} steps: train() must "
                        "train the model it is given, in place (the core reads the weights from it)")
    if (es := kit.metrics().early_stop) not in {k for _, m in run.watcher.evals for k in m}:
        problems.append(f"{what}: train() reported no evaluation holding {es!r} (task.metrics.early_stop) "
                        "through observer.on_eval: the core picks the early-stopping iteration by it")
    return problems


# The checks: each returns its problems, one line each saying what to change, or raises _Blocked.

def check_prepare(kit: _Kit) -> list[str]:
    """prepare() loads the data (or makes the environment) without error."""
    try:
        kit.ready()
    except _Blocked:
        e = kit.done["prepare"]
        if isinstance(e, DataError):
            return [f"prepare() raised DataError (the dataset is missing or unreadable): {e}"]
        return [f"prepare() raised {type(e).__name__}: {e}; raise ticketx.task.DataError naming the path "
                "looked in for missing or unreadable data"]
    return []


def check_task_contract(kit: _Kit) -> list[str]:
    """ticketx.task.check_contract and check_spec: members, metrics, and a JSON-able spec() naming this
    plugin and task."""
    try:
        check_contract(kit.task, kit.plugin, kit.name)
        check_spec(kit.task, kit.plugin, kit.name)
    except Exception as e:
        if e.__cause__ is not None:  # spec() raised: not run, where it needs the data prepare() failed to load
            kit.ready()
        return [str(e)]
    return []


def check_build_model(kit: _Kit) -> list[str]:
    """build_model(seed) depends on the seed alone, and leaves torch's global RNG as it was."""
    kit.ready()
    rng = torch.get_rng_state()
    try:
        a, b, c = (kit.build(s).state_dict() for s in (0, 0, 1))
    except _Blocked as e:
        if e.needs != "build_model":
            raise
        return [str(e)]  # this check's own failure
    problems = []
    if not torch.equal(rng, torch.get_rng_state()):
        problems.append("build_model changed torch's global RNG state: initialise inside "
                        "torch.random.fork_rng(devices=[]) so that the caller's random stream is left as it was")
    if differ := sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k])):
        problems.append(f"build_model(0) twice gave different weights ({differ[:4]}): initialise from the seed "
                        "alone (torch.manual_seed(seed) inside fork_rng, or a torch.Generator), not the global RNG")
    if a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a):
        problems.append("build_model(0) and build_model(1) gave the same weights: the seed must drive the "
                        "initialisation (replicates and the random-reinit arm need other weights)")
    return problems


def check_parameters(kit: _Kit) -> list[str]:
    """prunable(model) maps names to the model's own Parameters (at least one); head(model) names parameters."""
    model = kit.build(0)
    problems = _prunable_problems(kit.need("prunable"), model)
    if callable(getattr(kit.task, "head", None)):  # a missing head is the contract's to report
        names, params = kit.task.head(model), dict(model.named_parameters())
        if not isinstance(names, (set, frozenset)) or not all(isinstance(n, str) for n in names):
            problems.append(f"head(model) must return a set of parameter names, got {names!r:.80}")
        elif unknown := sorted(set(names) - set(params)):
            problems.append(f"head(model) names {unknown}, which are not parameters of the model; use names "
                            "from model.named_parameters()")
    return problems


def check_plan_accepted(kit: _Kit) -> list[str]:
    """The task's check_plan hook, if any, accepts the kit's tiny plan."""
    try:
        check_plan(kit.task, kit.plan)
    except Exception as e:
        p = kit.plan
        return [f"check_plan refused the kit's plan (steps={p.steps}, batch_size={p.batch_size}): {e}. Where "
                "the task needs a bigger plan, pass the kit overrides of the keys named: "
                "check_task(task, plan={'steps': ..., 'batch_size': ...})"]
    return []


def check_train_dense(kit: _Kit) -> list[str]:
    """The dense arm (all-ones masks) trains and reports its early-stop metric."""
    return _arm_problems(kit, "dense", "the dense arm (all-ones masks)")


def check_train_ticket(kit: _Kit) -> list[str]:
    """The ticket arm (random 50% masks, weights already masked) trains with every pruned weight zero."""
    return _arm_problems(kit, "ticket", "the ticket arm (random 50% masks, weights already masked)")


def check_train_reinit(kit: _Kit) -> list[str]:
    """The reinit arm (fresh weights the masks are not yet applied to) is masked by train() itself."""
    return _arm_problems(kit, "reinit", "the reinit arm (weights not yet masked: train() must apply the masks)")


def check_train_stop(kit: _Kit) -> list[str]:
    """StopTraining from observer.on_step ends training there, evaluated, train() returning normally."""
    what = f"the early-bird arm (observer.on_step raises StopTraining at step {STOP_AT})"
    problems, w = _arm_problems(kit, "stop", what), kit.run("stop").watcher
    if kit.run("stop").error is not None:
        return problems
    if w.stopped is None:
        return problems + [f"{what}: train() never called observer.on_step({STOP_AT})"]
    if later := w.steps[w.stopped[0]:]:
        problems.append(f"{what}: train() went on to step {later[-1]} after StopTraining: catch it around "
                        "observer.on_step and end training at that step")
    es = kit.metrics().early_stop
    if not any(es in m for _, m in w.evals[w.stopped[1]:]):
        problems.append(f"{what}: no evaluation holding {es!r} came after StopTraining: evaluate as after the "
                        "last step, so that the early-stop and final metrics exist")
    return problems


def check_reporting(kit: _Kit) -> list[str]:
    """on_step gets increasing 1-based steps; on_eval and evaluate() give the metrics the core reads."""
    spec, run = kit.metrics(), kit.run("dense")
    if run.error is not None:
        raise _Blocked("train_dense", f"the dense arm failed: {run.error}")
    w, problems, first = run.watcher, [], kit.plan.start_step + 1
    if not w.steps or w.steps[0] != first or any(b <= a for a, b in zip(w.steps, w.steps[1:])):
        problems.append(f"observer.on_step must be called after each optimizer step with increasing 1-based "
                        f"step numbers from plan.start_step + 1 = {first}; got {w.steps[:8]}")
    primary = (f"val_{spec.primary}", f"test_{spec.primary}")
    seen = {k for _, m in w.evals for k in m}
    for key in (spec.early_stop, *primary):
        if key not in seen:
            why = "task.metrics.early_stop" if key == spec.early_stop else f"task.metrics.primary is {spec.primary!r}"
            problems.append(f"train() never reported {key!r} ({why}) through observer.on_eval; it reported "
                            f"{sorted(seen)}")
    if bad := sorted({f"{k}={v!r}" for _, m in w.evals for k, v in m.items()
                      if k in (spec.early_stop, *primary) and not _finite(v)}):
        problems.append(f"observer.on_eval got {bad[:3]}: metrics must be finite Python floats")
    out = kit.need("evaluate")(kit.build(0))
    if not isinstance(out, Mapping):
        return problems + [f"evaluate(model) must return a dict of split-prefixed floats, got {out!r:.80}"]
    if missing := [k for k in primary if k not in out]:
        problems.append(f"evaluate(model) lacks {missing} (task.metrics.primary is {spec.primary!r}); it "
                        f"returned {sorted(out)}")
    if bad := sorted(f"{k}={v!r}" for k, v in out.items() if not _finite(v)):
        problems.append(f"evaluate(model) returned {bad[:3]}: metrics must be finite Python floats")
    return problems


def check_ticket_roundtrip(kit: _Kit) -> list[str]:
    """spec() survives a ticket saved and loaded, and check_ticket takes that ticket onto a fresh model."""
    kit.ready()
    spec = kit.need("spec")()
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _Blocked("contract", f"spec() is not JSON-serialisable: {e}") from e
    model = kit.build(0)
    t = ticketlib.make(kit.masks(model, 0.5), model.state_dict(), task=spec, seed=0, level=1, rewind_step=0,
                       arm="ticket")  # the meta a find job writes, in brief (find._Search.meta)
    with tempfile.TemporaryDirectory(dir=kit.tmp_dir) as tmp:
        loaded = ticketlib.load(ticketlib.save(t, Path(tmp) / "ticket"))
    problems = []
    if loaded.meta.get("task") != spec:
        problems.append(f"spec() does not survive a ticket's JSON: saved {spec!r:.120}, read back "
                        f"{loaded.meta.get('task')!r:.120}; use lists (not tuples) and string keys")
    try:
        check_ticket(kit.task, loaded, kit.build(0))
    except Exception as e:
        problems.append(f"a ticket of this task's own spec() and model was refused: {type(e).__name__}: {e}")
    return problems


def check_example_inputs(kit: _Kit) -> list[str]:
    """example_inputs(n), if the task has it: n examples, one tensor, that the model maps to n outputs.

    As `ticketx export` does, the tensor is passed to the model (eval mode) as one argument and the output
    must be one tensor. The batch dimension need not be the first (a (T, B) sequence model): it is the one
    that grows with n, from 2 to 3. A task without the hook passes (export then skips its comparison of the
    exported model with the dense one)."""
    fn = getattr(kit.task, "example_inputs", None)
    if fn is None:
        return []
    model, shapes = kit.build(0).eval(), {}
    for n in (2, 3):
        if not isinstance(x := fn(n), torch.Tensor):
            return [f"example_inputs({n}) returned a {type(x).__name__}: `ticketx export` passes it to the "
                    "model as one argument, so it must be one tensor"]
        try:
            with torch.no_grad():
                y = model(x)
        except Exception as e:
            return [f"the model (eval mode) raised {type(e).__name__} on example_inputs({n}) of shape "
                    f"{tuple(x.shape)}: {e}; return inputs shaped as the model takes them"]
        if not isinstance(y, torch.Tensor):
            return [f"the model's output on example_inputs({n}) is a {type(y).__name__}: `ticketx export` "
                    "compares outputs as one tensor"]
        shapes[n] = (tuple(x.shape), tuple(y.shape))
    problems = []
    for i, what in enumerate(("example_inputs(n)", "the model's output on example_inputs(n)")):
        a, b = shapes[2][i], shapes[3][i]
        if len(a) != len(b) or [(p, q) for p, q in zip(a, b) if p != q] != [(2, 3)]:
            problems.append(f"{what} must hold n examples along one dimension: shape {a} for n = 2, {b} for n = 3")
    return problems


_CHECKS: dict[str, Callable[[_Kit], list[str]]] = {
    "prepare": check_prepare, "contract": check_task_contract, "build_model": check_build_model,
    "parameters": check_parameters, "plan": check_plan_accepted, "train_dense": check_train_dense,
    "train_ticket": check_train_ticket, "train_reinit": check_train_reinit, "train_stop": check_train_stop,
    "reporting": check_reporting, "ticket": check_ticket_roundtrip, "example_inputs": check_example_inputs,
}


def task_checks() -> dict[str, str]:
    """Check name -> what it checks, in the order `check_task` runs them."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in _CHECKS.items()}


def check_task(task: Any, *, plugin: str | None = None, name: str | None = None, steps: int = 4,
               batch_size: int | None = None, plan: Mapping[str, Any] | None = None,
               tmp_dir: Path | str | None = None, checks: Iterable[str] | None = None) -> None:
    """Run every conformance check (or those named in `checks`, from `task_checks()`) on `task`.

    A failing check does not stop the others; a check that cannot run without one that failed (no model
    built, say) is listed as not run.

    Args:
        plugin, name: the plugin's entry-point name and the task's name that spec() must give; by default
            what spec() gives, so that only a given one is checked.
        steps, batch_size: the kit's plan: `steps` optimizer steps (at least 3: the early-bird arm stops at
            step 2), batches of `batch_size` (default 8), Adam at lr 1e-3, an evaluation every 2 steps.
        plan: overrides of any `ticketx.task.Plan` field, for a task whose check_plan refuses that plan.
        tmp_dir: where the ticket check writes its ticket (default: the system's temporary folder).

    Raises:
        ConformanceError: one line per problem, naming its check, what is wrong and what to change.
    """
    fields = {f.name for f in dataclasses.fields(Plan)}
    if unknown := sorted(set(plan or {}) - fields):
        raise TypeError(f"plan overrides {unknown} are not Plan fields; the fields: {sorted(fields)}")
    if unknown := sorted(set(checks or ()) - set(_CHECKS)):
        raise ValueError(f"unknown checks {unknown}; the checks: {', '.join(_CHECKS)}")
    kit_plan = dataclasses.replace(Plan(steps=steps, batch_size=batch_size or 8, optimizer="adam", lr=1e-3,
                                        eval_every=2), **(plan or {}))
    if kit_plan.steps <= STOP_AT:
        raise ValueError(f"steps must be at least {STOP_AT + 1} (the early-bird arm stops at step {STOP_AT}), "
                         f"got {kit_plan.steps}")
    try:
        spec = task.spec()
    except Exception:  # the contract reports it
        spec = None
    spec = spec if isinstance(spec, dict) else {}
    kit = _Kit(task, plugin if plugin is not None else str(spec.get("plugin", "?")),
               name if name is not None else str(spec.get("task", "?")),
               kit_plan, Path(tmp_dir) if tmp_dir is not None else None)
    wanted = set(_CHECKS if checks is None else checks)
    failures: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for check_name in (c for c in _CHECKS if c in wanted):
        try:
            problems = _CHECKS[check_name](kit)
        except _Blocked as e:  # in brief where the check it needs failed in this run, else in full
            skipped[check_name] = (f"needs check {e.needs!r}, which failed" if e.needs in failures
                                   else f"needs check {e.needs!r}: {e}")
            continue
        except Exception as e:  # the task's own error, where the check expected none
            problems = [f"the task raised {type(e).__name__}: {e}"]
        if problems:
            failures[check_name] = problems
    if failures or skipped:
        raise ConformanceError(f"{kit.plugin}/{kit.name} ({type(task).__module__}.{type(task).__qualname__})",
                               failures, skipped)


def run_check(task: Any, check: str, **options: Any) -> None:
    """Run one check on a task, or on the task a zero-argument factory (anything callable without spec) makes."""
    if callable(task) and not hasattr(task, "spec"):
        task = task()
    check_task(task, checks=[check], **options)


def parametrize_with_checks(tasks: Mapping[str, Any] | Sequence[Any], **options: Any) -> Any:
    """A `pytest.mark.parametrize("task, check", ...)` decorator, one test per task and check, ids
    `<task>-<check>`; the test calls `check(task)`.

    `tasks` are tasks or zero-argument factories (a fresh task per test, its data loaded when the test runs
    rather than when it is collected), in a dict for readable ids. `options` go to `check_task`.
    """
    import pytest  # only here: ticketx runs without pytest

    labelled = (tasks.items() if isinstance(tasks, Mapping)
                else ((getattr(t, "__name__", type(t).__name__), t) for t in tasks))
    return pytest.mark.parametrize("task, check", [
        pytest.param(t, functools.partial(run_check, check=c, **options), id=f"{label}-{c}")
        for label, t in labelled for c in _CHECKS])
