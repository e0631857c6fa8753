"""bf16 autocast in stable-baselines3's loop: masks held exactly, the agent still learns; fp16 refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from rl_helpers import Recorder, plan

from ticketx import masks as masklib
from ticketx.jobs import check_masked
from ticketx.task import TaskError
from ticketx_rl.plugin import RLPlugin

PPO = {"env": "CartPole-v1", "net_arch": [32, 32], "n_envs": 4, "n_steps": 64, "n_epochs": 4, "eval_episodes": 5}


def test_bf16_ppo_learns_with_masks_exact():
    task = RLPlugin().make_task("ppo", PPO, data_root=None)
    model = task.build_model(0)
    weights = {n: p.detach() for n, p in task.prunable(model).items()}
    masks = masklib.random_like({n: (torch.rand_like(w) < 0.5).float() for n, w in weights.items()},
                                torch.Generator().manual_seed(0))
    untrained = task.evaluate(model)["val_return"]
    rec = Recorder()
    seen: set[torch.dtype] = set()  # output dtypes of Linear layers in forward passes that build a graph

    def hook(module, args, out):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        task.train(model, masks, replace(plan(12_288, eval_every=2_048, batch_size=64, lr=3e-3), precision="bf16"),
                   rec)
    finally:
        handle.remove()
    check_masked(model, masks, "ppo bf16")  # every pruned entry exactly zero
    assert seen == {torch.bfloat16}  # every gradient update ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    returns = [m["val_return"] for _, m in rec.evals]
    assert returns[-1] > 4 * untrained  # CartPole's return rises as the policy learns


def test_fp16_is_refused_for_rl_in_one_line():
    task = RLPlugin().make_task("ppo", PPO, data_root=None)
    with pytest.raises(TaskError, match="'fp16' needs a gradient scaler"):
        task.check_plan(replace(plan(256, batch_size=64), precision="fp16"))
