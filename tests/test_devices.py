"""train.device, train.precision and train.tf32: parsing, refusals, resolution, recording, bf16 training."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from ticketx import config as C
from ticketx import devices, pool, training
from ticketx.devices import DeviceError
from ticketx.findjob import run_find
from ticketx.task import Plan
from toy import ToyTask

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a CUDA GPU")

TOY = {"name": "toy", "task": {"plugin": "toy", "name": "gauss"},
       "train": {"steps": 120, "batch_size": 32, "lr": 0.01, "eval_every": 40}, "prune": {"levels": 1}}


def cfg(*over: str) -> C.FindConfig:
    return C.from_dict(C.apply_overrides(TOY, list(over)))


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_forms_accepted(spec):
    assert cfg(f"train.device='{spec}'").train.device == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "mps0", ""])
def test_unknown_device_string_is_one_config_error(spec):
    with pytest.raises(C.ConfigError, match=r"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        cfg(f"train.device='{spec}'")


def test_precision_and_checkpoint_keys_checked():
    assert cfg("train.precision=bf16").train.precision == "bf16"
    with pytest.raises(C.ConfigError, match=r"train.precision must be 'fp32' or 'bf16' or 'fp16'"):
        cfg("train.precision=fp8")
    with pytest.raises(C.ConfigError, match="train.checkpoint_every must be >= 1"):
        cfg("train.checkpoint_every=0")


def test_config_hash_ignores_device_and_checkpoint_interval_and_keeps_old_hashes():
    base = C.config_hash(cfg())
    assert C.config_hash(cfg("train.device=cpu")) == base
    assert C.config_hash(cfg("train.device='cuda:1'", "train.checkpoint_every=50")) == base
    assert C.config_hash(cfg("train.precision=bf16")) != base
    assert C.config_hash(cfg("train.tf32=true")) != base
    assert C.config_hash(cfg("train.precision=fp32", "train.tf32=false")) == base
    # a job folder made before these keys existed keeps its name (hash of this config on 2026-12-06)
    assert C.config_hash(C.from_dict({"task": {"plugin": "toy", "name": "gauss"}})).startswith("37998d8fa4")


def test_run_params_leave_out_what_may_change_between_runs_of_a_job():
    params = C.run_params(cfg("train.device=cpu"))
    assert "train.device" not in params and "train.checkpoint_every" not in params
    assert params["train.precision"] == "fp32"


def test_resolve_spreads_workers_over_gpus(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    assert [devices.resolve("cuda", worker=i) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [devices.resolve("auto", worker=i) for i in range(2)] == ["cuda:0", "cuda:1"]
    assert devices.resolve("cuda:1", worker=0) == "cuda:1"
    assert devices.resolve("cpu", worker=1) == "cpu"
    with pytest.raises(DeviceError, match="there is no GPU 2"):
        devices.resolve("cuda:2")


def test_auto_honours_a_task_that_prefers_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)

    class Small:
        default_device = "cpu"

    assert devices.job_device("auto", Small()) == "cpu"
    assert devices.job_device("cuda", Small()) == "cuda:0"  # asked for by name: the GPU it is
    assert devices.job_device("auto", object()) == "cuda:0"


@no_cuda
def test_cuda_without_a_gpu_is_one_line_naming_what_torch_sees():
    assert devices.resolve("auto") == "cpu"
    with pytest.raises(DeviceError) as e:
        devices.resolve("cuda")
    assert "train.device is 'cuda' but no CUDA device is visible: torch " in str(e.value)
    assert "\n" not in str(e.value)


def test_fp16_on_the_cpu_is_refused_before_any_run(tracker, experiment, tmp_path):
    with pytest.raises(DeviceError, match="'fp16' needs a CUDA device .* use 'bf16' on the CPU"):
        run_find(cfg("train.precision=fp16", "train.device=cpu"), ToyTask("gauss", {}), tracker,
                 root=tmp_path, experiment=experiment)
    assert tracker.client.get_experiment_by_name(experiment) is None  # nothing logged
    assert not list(tmp_path.rglob("job.json"))


@no_cuda
def test_cli_refuses_cuda_and_bad_device_strings_in_one_line(recipe, cli_env):
    for device, expected in (("cuda", "no CUDA device is visible"), ("gpu", "train.device must be")):
        out = subprocess.run([sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--device", device],
                             env=cli_env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], out.stderr
    assert not (recipe.parent / "ticketx-runs").exists()  # refused before any job folder or run


def test_device_recorded_on_every_run_and_printed(tmp_path, tracker, experiment, recipe, cli_env):
    result = run_find(cfg("train.device=cpu"), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    runs = tracker.client.search_runs([result.experiment_id], max_results=100)
    assert len(runs) == 1 + 4
    for run in runs:
        assert run.data.tags["ticketx.device"] == "cpu"
        if run.info.run_id != result.parent_run_id:
            assert run.data.params["device"] == "cpu" and run.data.params["precision"] == "fp32"
    assert all(r["device"] == "cpu" for r in result.records)
    out = subprocess.run([sys.executable, "-m", "ticketx.cli", "find", str(recipe), "--device", "cpu",
                          "--set", "train.precision=bf16", "--workers", "1"],
                         env=cli_env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "on cpu, bf16; MLflow store" in out.stdout.splitlines()[0]


def _plan(**over) -> Plan:
    return replace(Plan(steps=150, batch_size=32, optimizer="adam", lr=0.01, eval_every=50), **over)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_bf16_trains_with_masks_exact_and_fp32_weights(optimizer):
    task = ToyTask("gauss", {})
    model = task.build_model(0)
    masks = {n: (torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.7).float()
             for n, p in task.prunable(model).items()}
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    evals = []

    class Obs:
        def on_step(self, step, model): pass
        def on_eval(self, step, metrics): evals.append(metrics)

    plan = _plan(precision="bf16", optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.1, momentum=0.9)
    task.train(model, masks, plan, Obs())
    assert set(seen) == {torch.bfloat16}  # autocast was on for every training forward pass
    train_losses = [m["train_loss"] for m in evals if "train_loss" in m]
    assert train_losses[-1] < 0.7 * train_losses[0]  # it learns
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert params[name].dtype == torch.float32
        assert torch.all(params[name].detach()[m == 0] == 0)  # exactly zero, not merely small


def test_fit_refuses_fp16_on_the_cpu():
    task = ToyTask("gauss", {})
    with pytest.raises(DeviceError, match="'fp16' needs a CUDA device"):
        task.train(task.build_model(0), {}, _plan(precision="fp16"), None)


def test_adam_pinning_works_through_the_public_optimizer_state():
    """torch.optim.Adam (the optimizer used on CUDA) holds pruned weights at zero through +inf second
    moments exactly as LeanAdam does on the CPU: the same weights after 20 steps."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    results = []
    for cls in (torch.optim.Adam, training.LeanAdam):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        mask = (torch.rand(16, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
        with torch.no_grad():
            model[0].weight.mul_(mask)
        opt = cls(list(model.parameters()), lr=0.05, fused=True, weight_decay=0.01)
        pin = opt.pin_zeros if isinstance(opt, training.LeanAdam) else lambda pairs: training.pin_zeros(opt, pairs)
        assert pin([(model[0].weight, mask)]) == [model[0].weight]
        for _ in range(20):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        assert torch.all(model[0].weight.detach()[mask == 0] == 0)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


class _IndexWork:
    def build(self, progress):
        import time

        def run(key):
            time.sleep(0.3)  # both workers busy at once
            return {"worker": pool.worker_index()}
        return run


def test_pool_workers_are_numbered_so_that_gpus_go_round_robin():
    records = pool.run({0: (), 1: (), 2: (), 3: ()}, lambda k: {}, _IndexWork(), workers=2,
                       progress=lambda e, i: None)
    assert {r["worker"] for r in records.values()} == {0, 1}
    assert pool.worker_index() == 0  # the job's own process


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_keeps_masks_exact(precision, tmp_path, tracker, experiment):
    result = run_find(cfg("train.device=cuda", f"train.precision={precision}"), ToyTask("gauss", {}), tracker,
                      root=tmp_path, experiment=experiment)
    assert {r["device"] for r in result.records} == {"cuda:0"}
    dense = [r for r in result.records if r["arm"] == "dense"][0]
    assert dense["at_early_stop"]["test_accuracy"] > 0.5


def test_out_of_memory_is_one_line_naming_arm_batch_and_device_and_the_job_resumes(tmp_path, tracker, experiment,
                                                                                  monkeypatch):
    original = ToyTask.train

    def runs_out(self, model, masks, plan, observer):
        if observer.info["arm"] == "random_reinit":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, model, masks, plan, observer)

    monkeypatch.setattr(ToyTask, "train", runs_out)
    with pytest.raises(Exception) as e:
        run_find(cfg("train.device=cpu"), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    message = str(e.value)
    assert type(e.value).__name__ == "TaskError" and "\n" not in message
    assert message.startswith("L01 random_reinit r0: out of memory on cpu at train.batch_size 32 (fp32)")
    runs = tracker.client.search_runs([tracker.experiment(experiment)], max_results=100)
    assert {r.data.tags.get("ticketx.arm"): r.info.status for r in runs if "ticketx.arm" in r.data.tags}[
        "random_reinit"] == "FAILED"
    monkeypatch.setattr(ToyTask, "train", original)
    again = run_find(cfg("train.device=cpu"), ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert sorted(r["arm"] for r in again.records) == ["dense", "random_prune", "random_reinit", "ticket"]
    live = tracker.client.search_runs([again.experiment_id], max_results=100)
    assert len(live) == 1 + 4 and {r.info.status for r in live} == {"FINISHED"}


def test_default_workers_on_cuda_are_two_per_gpu_the_job_may_use(monkeypatch):
    from ticketx import cli
    monkeypatch.setattr(devices, "gpu_count", lambda: 3)
    monkeypatch.setattr(pool, "default_workers", lambda: 16)
    assert cli._workers(None, "local", cfg("train.device=cuda"), None) == 6
    assert cli._workers(None, "local", cfg("train.device='cuda:1'"), None) == 2  # one GPU for every worker
    assert cli._workers(None, "local", cfg("train.device=cpu"), None) == 16
    assert cli._workers(5, "local", cfg("train.device=cuda"), None) == 5  # --workers wins
    monkeypatch.setattr(pool, "default_workers", lambda: 4)
    assert cli._workers(None, "local", cfg("train.device=auto"), None) == 4  # never more than the cores
