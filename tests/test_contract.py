"""The Task contract as the core enforces it: checked when a task is made, and what a task does wrong while
training (masks not applied, metrics not reported, spec() raising) ends the job in one line with no run
left RUNNING."""

from __future__ import annotations

import subprocess
import sys
import types
from importlib.metadata import EntryPoint

import pytest
import torch

from ticketx import config as C
from ticketx import plugins, training
from ticketx.findjob import run_find
from ticketx.task import TaskError, check_contract, check_spec
from toy import ToyTask

BASE = {"name": "contract", "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 60, "batch_size": 32, "lr": 0.01, "eval_every": 30},
        "prune": {"levels": 1, "rate": 0.5}}


class NoHead(ToyTask):
    head = None  # type: ignore[assignment]  # as if the method were never written


class Misnamed(ToyTask):
    def spec(self):
        return {**super().spec(), "plugin": "vision"}


class NotJson(ToyTask):
    def spec(self):
        return {**super().spec(), "options": {"size": torch.tensor(3)}}


class NoValAccuracy(ToyTask):
    def _evaluate(self, model, split):
        m = super()._evaluate(model, split)
        return {"loss": m["loss"]} if split == "val" else m


class IgnoresMasks(ToyTask):
    """Trains every weight with a plain loop and never applies the masks."""

    def train(self, model, masks, plan, observer):
        opt = torch.optim.SGD(model.parameters(), lr=plan.lr)
        for step in range(plan.start_step + 1, plan.steps + 1):
            i = torch.arange(step * plan.batch_size, (step + 1) * plan.batch_size) % len(self.train_x)
            loss = torch.nn.functional.cross_entropy(model(self.train_x[i]), self.train_y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            observer.on_step(step, model)
            if step % plan.eval_every == 0:
                observer.on_eval(step, {**training.prefixed(self._evaluate(model, "val"), "val"),
                                        **training.prefixed(self._evaluate(model, "test"), "test")})


class SpecFails(ToyTask):
    def spec(self):
        raise OSError("the dataset's index went away")


def statuses(tracker, experiment):
    exp = tracker.client.get_experiment_by_name(experiment)
    return [] if exp is None else [r.info.status for r in tracker.client.search_runs([exp.experiment_id])]


def test_the_toy_task_meets_the_contract():
    check_contract(ToyTask("gauss", {}), "toy", "gauss")  # raise on any breach: the cases below
    check_spec(ToyTask("gauss", {}), "toy", "gauss")


@pytest.mark.parametrize("task, says", [
    (NoHead("gauss", {}), "lacks head"),
    (Misnamed("gauss", {}), "spec() names plugin 'vision', task 'gauss'; it must name the plugin's entry-point "
                            "name 'toy'"),
    (NotJson("gauss", {}), "spec() must be JSON-serialisable"),
])
def test_a_breach_is_one_line_naming_plugin_task_and_what_is_wrong(task, says):
    with pytest.raises(TaskError) as e:
        check_contract(task, "toy", "gauss")
        check_spec(task, "toy", "gauss")
    msg = str(e.value)
    assert msg.startswith(f"plugin 'toy', task 'gauss' (test_contract.{type(task).__name__})") and says in msg
    assert "\n" not in msg


def test_make_task_checks_the_contract(monkeypatch):
    mod = types.ModuleType("contract_fake")

    class Plugin:
        def tasks(self):
            return {"gauss": "toy data"}

        def make_task(self, name, options, *, data_root):
            return NoHead(name, options)

    mod.Plugin = Plugin
    monkeypatch.setitem(sys.modules, "contract_fake", mod)
    available = {"toy": [EntryPoint("toy", "contract_fake:Plugin", plugins.GROUP)]}
    with pytest.raises(TaskError, match="does not meet the Task contract: it lacks head"):
        plugins.make_task("toy", "gauss", {}, available=available, data_root=None)


def test_cli_names_the_missing_member_in_one_line_without_a_traceback(tmp_path, cli_env):
    (tmp_path / "contract_plugin.py").write_text(
        "from toy import ToyTask, ToyPlugin\n"
        "class Headless(ToyTask):\n    head = None\n"
        "class Plugin(ToyPlugin):\n"
        "    def make_task(self, name, options, *, data_root):\n        return Headless(name, options)\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "c"\n[task]\nplugin = "toy"\nname = "gauss"\n[train]\nsteps = 20\nbatch_size = 8\n'
                      'lr = 0.01\n[prune]\nlevels = 1\nrate = 0.5\n')
    env = {**cli_env, "TICKETX_PLUGINS": "toy=contract_plugin:Plugin",
           "PYTHONPATH": f"{tmp_path}:{cli_env['PYTHONPATH']}"}
    r = subprocess.run([sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--out", str(tmp_path / "o")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "Error: plugin 'toy', task 'gauss' (contract_plugin.Headless) does not meet the Task contract: it lacks "
        "head (see docs/PLUGINS.md)"]
    assert not (tmp_path / "o").exists()


def test_a_train_that_ignores_the_masks_fails_at_its_first_step_in_the_ticket_arm(tmp_path, tracker, experiment):
    c = C.from_dict({**BASE, "arms": ["ticket"]})
    with pytest.raises(TaskError, match=r"ticket \(L01 ticket r0\) after step 1: pruned weights of 0.weight are "
                                        r"nonzero; the task's train\(\) must apply the masks"):
        run_find(c, IgnoresMasks("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert sorted(statuses(tracker, experiment)) == ["FAILED", "FAILED", "FINISHED"]  # parent, ticket; dense


def test_a_task_that_never_reports_val_primary_is_refused_naming_it(tmp_path, tracker, experiment):
    c = C.from_dict(BASE)
    with pytest.raises(TaskError) as e:
        run_find(c, NoValAccuracy("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    msg = str(e.value)
    assert msg.startswith("L00 dense r0: the task never reported val_accuracy (MetricSpec.primary is 'accuracy')")
    assert "'test_accuracy'" in msg and "'val_loss'" in msg and "report val_<primary> and test_<primary>" in msg
    assert statuses(tracker, experiment) == ["FAILED", "FAILED"]


def test_a_misnamed_spec_fails_a_find_before_any_run(tmp_path, tracker, experiment):
    with pytest.raises(TaskError, match="spec\\(\\) names plugin 'vision'"):
        run_find(C.from_dict(BASE), Misnamed("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert statuses(tracker, experiment) == [] and not list(tmp_path.iterdir())


def test_spec_raising_leaves_no_run_running(tmp_path, tracker, experiment):
    with pytest.raises(TaskError, match="spec\\(\\) raised OSError: the dataset's index went away"):
        run_find(C.from_dict(BASE), SpecFails("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert "RUNNING" not in statuses(tracker, experiment)
