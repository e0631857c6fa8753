"""The conformance kit (ticketx.testing): the toy task passes; each deliberately broken toy fails its own
check, and only it, with a message naming what is wrong."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from toy import ToyTask
from torch import nn

from ticketx import training
from ticketx.task import DataError, Masks, Observer, Plan, StopTraining, TaskError
from ticketx.testing import ConformanceError, check_task, parametrize_with_checks, run_check, task_checks

TRAINING = {"train_dense", "train_ticket", "train_reinit", "train_stop", "reporting"}


def failed(task: Any, **options: Any) -> ConformanceError:
    """The kit's error for `task`, checked to be about the toy plugin's task."""
    with pytest.raises(ConformanceError) as info:
        check_task(task, plugin="toy", name="gauss", **options)
    assert str(info.value).startswith("toy/gauss (")
    return info.value


class Relay:
    """An observer passing everything on, but for what a broken task changes."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def on_step(self, step: int, model: nn.Module) -> None:
        self.observer.on_step(step, model)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.observer.on_eval(step, metrics)


class NoHead(ToyTask):
    head = None  # type: ignore[assignment]


class OtherPlugin(ToyTask):
    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "plugin": "vision"}


class SetInSpec(ToyTask):
    def spec(self) -> dict[str, Any]:
        s = super().spec()
        return {**s, "options": {**s["options"], "classes": {4}}}


class GlobalRNG(ToyTask):
    def build_model(self, seed: int) -> nn.Module:  # ignores the seed
        return nn.Sequential(nn.Linear(16, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden),
                             nn.ReLU(), nn.Linear(self.hidden, self.classes))


class GhostWeight(ToyTask):
    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {**super().prunable(model), "fc9.weight": nn.Parameter(torch.zeros(2, 2))}


class CopiedWeights(ToyTask):
    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: nn.Parameter(p.detach().clone()) for n, p in super().prunable(model).items()}


class FrozenTrain(ToyTask):
    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        training.apply_masks(model, masks)  # masks held, but no weight ever updated
        for step in range(plan.start_step + 1, plan.steps + 1):
            try:
                observer.on_step(step, model)
            except StopTraining:
                break
        observer.on_eval(step, self.evaluate(model))


class ZeroBasedSteps(ToyTask):
    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        class Shift(Relay):
            def on_step(self, step: int, model: nn.Module) -> None:
                self.observer.on_step(step - 1, model)

        super().train(model, masks, plan, Shift(observer))


class TupleInSpec(ToyTask):
    def spec(self) -> dict[str, Any]:
        s = super().spec()
        return {**s, "options": {**s["options"], "sizes": (32, 32)}}


class RefusesOwnTickets(ToyTask):
    def check_ticket(self, meta: Mapping[str, Any]) -> None:  # expects a key its spec() never writes
        if meta["task"].get("vocab_sha256") != "abc":
            raise TaskError("vocabulary mismatch: the ticket records no vocabulary")


class IgnoresMasks(ToyTask):
    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)  # every weight, masks never applied
        for step in range(plan.start_step + 1, plan.steps + 1):
            loss = nn.functional.cross_entropy(model(self.train_x[:plan.batch_size]), self.train_y[:plan.batch_size])
            sgd.zero_grad()
            loss.backward()
            sgd.step()
            try:
                observer.on_step(step, model)
            except StopTraining:
                break
        observer.on_eval(step, self.evaluate(model))


class NoValAccuracy(ToyTask):
    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        class Drop(Relay):
            def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
                self.observer.on_eval(step, {k: v for k, v in metrics.items() if k != "val_accuracy"})

        super().train(model, masks, plan, Drop(observer))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {k: v for k, v in super().evaluate(model).items() if k != "val_accuracy"}


class NeverStops(ToyTask):
    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        class Swallow(Relay):
            def on_step(self, step: int, model: nn.Module) -> None:
                try:
                    self.observer.on_step(step, model)
                except StopTraining:
                    pass

        super().train(model, masks, plan, Swallow(observer))


class _Escaped(Exception):
    pass


class LetsStopEscape(ToyTask):
    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        class Escape(Relay):
            def on_step(self, step: int, model: nn.Module) -> None:
                try:
                    self.observer.on_step(step, model)
                except StopTraining:
                    raise _Escaped from None  # past fit's handler

        try:
            super().train(model, masks, plan, Escape(observer))
        except _Escaped:
            raise StopTraining from None


class WideInputs(ToyTask):
    def example_inputs(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 15)


class FourInputs(ToyTask):
    def example_inputs(self, n: int) -> torch.Tensor:
        return self.splits["test"][0][:4]


class TupleInputs(ToyTask):
    def example_inputs(self, n: int) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return (self.splits["test"][0][:n],)


class SmallBatchesRefused(ToyTask):
    def check_plan(self, plan: Plan) -> None:
        if plan.batch_size < 32:
            raise TaskError(f"train.batch_size must be at least 32, got {plan.batch_size}")


class NoData(ToyTask):
    def prepare(self) -> None:
        raise DataError("no gauss.npz in /nowhere: expected a file with arrays x and y")


def test_the_toy_task_passes(tmp_path) -> None:
    assert check_task(ToyTask("gauss", {}), plugin="toy", name="gauss", tmp_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the ticket check cleans up after itself
    assert check_task(ToyTask("gauss", {"dropout": 0.2})) is None  # plugin and name from spec()


BROKEN = [
    (NoHead, "contract", r"does not meet the Task contract: it lacks head"),
    (OtherPlugin, "contract", r"spec\(\) names plugin 'vision', task 'gauss'; it must name the plugin's "
                              r"entry-point name 'toy'"),
    (SetInSpec, "contract", r"spec\(\) must be JSON-serialisable .*set is not JSON serializable"),
    (GlobalRNG, "build_model", r"build_model\(0\) twice gave different weights \(\['0.bias', '0.weight'"),
    (GlobalRNG, "build_model", r"build_model changed torch's global RNG state: initialise inside .*fork_rng"),
    (GhostWeight, "parameters", r"prunable\(model\) names \['fc9.weight'\], which are not parameters of the model"),
    (CopiedWeights, "parameters", r"prunable\(model\) maps \['0.weight', '2.weight', '4.weight'\] to tensors "
                                  r"other than the model's own Parameters"),
    (ZeroBasedSteps, "reporting", r"observer.on_step must be called after each optimizer step with increasing "
                                  r"1-based step numbers from plan.start_step \+ 1 = 1; got \[0, 1, 2, 3\]"),
    (TupleInSpec, "ticket", r"spec\(\) does not survive a ticket's JSON: saved .*'sizes': \(32, 32\).* read back "
                            r".*'sizes': \[32, 32\].*; use lists \(not tuples\)"),
    (RefusesOwnTickets, "ticket", r"a ticket of this task's own spec\(\) and model was refused: TaskError: "
                                  r"vocabulary mismatch"),
    (NeverStops, "train_stop", r"train\(\) went on to step 4 after StopTraining: catch it around observer.on_step"),
    (LetsStopEscape, "train_stop", r"train\(\) let StopTraining escape: catch it around observer.on_step"),
    (WideInputs, "example_inputs", r"the model \(eval mode\) raised RuntimeError on example_inputs\(2\) of "
                                   r"shape \(2, 15\)"),
    (FourInputs, "example_inputs", r"example_inputs\(n\) must hold n examples along one dimension: shape "
                                   r"\(4, 16\) for n = 2, \(4, 16\) for n = 3"),
    (TupleInputs, "example_inputs", r"example_inputs\(2\) returned a tuple: `ticketx export` passes it to the "
                                    r"model as one argument"),
    (SmallBatchesRefused, "plan", r"check_plan refused the kit's plan \(steps=4, batch_size=8\): train.batch_size "
                                  r"must be at least 32, got 8\. .*check_task\(task, plan="),
    (NoData, "prepare", r"prepare\(\) raised DataError \(the dataset is missing or unreadable\): no gauss.npz"),
]


@pytest.mark.parametrize("task, check, expected", BROKEN, ids=[f"{t.__name__}-{c}" for t, c, _ in BROKEN])
def test_a_broken_task_fails_its_own_check(task: type[ToyTask], check: str, expected: str) -> None:
    e = failed(task("gauss", {}))
    assert set(e.failures) == {check}
    assert any(re.search(expected, p) for p in e.failures[check]), e.failures[check]
    assert f"[{check}] " in str(e)


def test_checks_that_need_a_failed_one_say_so_instead_of_failing() -> None:
    assert failed(SetInSpec("gauss", {})).skipped == {"ticket": "needs check 'contract', which failed"}
    ghost = failed(GhostWeight("gauss", {}))
    assert set(ghost.skipped) == TRAINING | {"ticket"}
    assert "[train_ticket] not run: needs check 'parameters', which failed" in str(ghost)
    assert set(failed(SmallBatchesRefused("gauss", {})).skipped) == TRAINING
    assert set(failed(NoData("gauss", {})).skipped) == set(task_checks()) - {"prepare", "contract", "plan"}
    # run alone, a blocked check says what blocked it
    with pytest.raises(ConformanceError, match=r"\[train_dense\] not run: needs check 'parameters': prunable"
                                               r"\(model\) names \['fc9.weight'\]"):
        check_task(GhostWeight("gauss", {}), checks=["train_dense"])


def test_plan_overrides_let_a_task_with_a_bigger_plan_pass() -> None:
    assert check_task(SmallBatchesRefused("gauss", {}), plan={"batch_size": 32}) is None
    assert check_task(SmallBatchesRefused("gauss", {}), batch_size=32) is None
    with pytest.raises(TypeError, match=r"plan overrides \['batch'\] are not Plan fields"):
        check_task(ToyTask("gauss", {}), plan={"batch": 32})
    with pytest.raises(ValueError, match="steps must be at least 3"):
        check_task(ToyTask("gauss", {}), steps=2)
    with pytest.raises(ValueError, match=r"unknown checks \['trian_dense'\]"):
        check_task(ToyTask("gauss", {}), checks=["trian_dense"])


def test_a_train_that_ignores_masks_fails_every_masked_arm() -> None:
    e = failed(IgnoresMasks("gauss", {}))
    assert set(e.failures) == {"train_ticket", "train_reinit", "train_stop"}  # dense has nothing to hold
    for check in e.failures:
        for name in ("0.weight", "2.weight", "4.weight"):  # every weight named, not the first alone
            assert any(f"pruned weights of {name} are nonzero" in p and "keep masked weights at zero" in p
                       for p in e.failures[check])
    assert any("the reinit arm (weights not yet masked: train() must apply the masks)" in p
               for p in e.failures["train_reinit"])


def test_a_train_that_never_updates_the_weights_fails_every_full_arm() -> None:
    e = failed(FrozenTrain("gauss", {}))
    assert set(e.failures) == {"train_dense", "train_ticket", "train_reinit"}  # the stopped arm may not have
    for problems in e.failures.values():
        assert len(problems) == 1 and problems[0].endswith(
            "): no unpruned prunable weight changed in 4 steps: train() must train the model it is given, in place "
            "(the core reads the weights from it)")
    assert e.failures["train_dense"][0].startswith("the dense arm (all-ones masks): ")


def test_a_task_that_never_reports_val_accuracy_fails_reporting() -> None:
    e = failed(NoValAccuracy("gauss", {}))
    assert set(e.failures) == {"reporting"}
    assert e.failures["reporting"] == [
        "train() never reported 'val_accuracy' (task.metrics.primary is 'accuracy') through observer.on_eval; it "
        "reported ['lr', 'test_accuracy', 'test_loss', 'train_loss', 'trainset_accuracy', 'trainset_loss', "
        "'val_loss']",
        "evaluate(model) lacks ['val_accuracy'] (task.metrics.primary is 'accuracy'); it returned "
        "['test_accuracy', 'test_loss', 'val_loss']",
    ]


def test_task_checks_lists_every_check_with_what_it_checks() -> None:
    checks = task_checks()
    assert list(checks) == ["prepare", "contract", "build_model", "parameters", "plan", "train_dense",
                            "train_ticket", "train_reinit", "train_stop", "reporting", "ticket", "example_inputs"]
    assert all(text and "\n" not in text for text in checks.values())


@parametrize_with_checks({"toy": lambda: ToyTask("gauss", {})}, plugin="toy")
def test_the_toy_task_check_by_check(task: Any, check: Any) -> None:
    check(task)


def test_the_pytest_form_gives_one_test_per_check_and_fails_only_the_broken_one() -> None:
    mark = parametrize_with_checks({"nohead": lambda: NoHead("gauss", {})}, plugin="toy")
    assert mark.args[0] == "task, check"
    params = mark.args[1]
    assert [p.id for p in params] == [f"nohead-{c}" for c in task_checks()]
    outcome = {}
    for p in params:
        task, check = p.values
        try:
            check(task)
            outcome[p.id] = "passed"
        except ConformanceError as e:
            outcome[p.id] = str(e)
    assert [i for i, o in outcome.items() if o != "passed"] == ["nohead-contract"]
    assert "it lacks head" in outcome["nohead-contract"]
    with pytest.raises(ConformanceError, match="lacks head"):
        run_check(NoHead("gauss", {}), "contract")  # a task, not a factory: used as it is


def test_ticketx_testing_imports_without_pytest() -> None:
    code = "import sys, ticketx.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
