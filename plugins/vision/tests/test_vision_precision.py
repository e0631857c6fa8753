"""bf16 autocast on the CPU: masks held exactly, fp32 weights, the network learns; channels_last under auto."""

from __future__ import annotations

import pytest
import torch
from test_vision_device import Recorder, toy_task

from ticketx.jobs import check_masked
from ticketx.task import Plan
from ticketx_vision.plugin import VisionPlugin


def half_masks(task, model):
    g = torch.Generator().manual_seed(0)
    return {n: (torch.rand(p.shape, generator=g) < 0.5).float() for n, p in task.prunable(model).items()}


def train_bf16(task, model, masks, steps, lr):
    seen: set[tuple[torch.dtype, bool]] = set()  # (output dtype, channels-last input) of training forwards

    def hook(module, args, out):
        if module.training and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            x = args[0]
            seen.add((out.dtype, x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                      and not x.is_contiguous()))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    rec = Recorder()
    plan = Plan(steps=steps, batch_size=60, optimizer="adam", lr=lr, eval_every=steps // 4, precision="bf16")
    task.train(model, masks, plan, rec)
    for h in handles:
        h.remove()
    check_masked(model, masks, "bf16")  # every pruned entry exactly zero
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return seen, [m["train_loss"] for _, m in rec.evals if "train_loss" in m], rec


def test_bf16_lenet_on_mnist_learns(data_root):
    task = VisionPlugin().make_task("mnist", {"train_subset": 6000, "test_subset": 1000, "score_train": False},
                                    data_root=data_root)
    model = task.build_model(0)
    seen, losses, rec = train_bf16(task, model, half_masks(task, model), 400, 1.2e-3)
    assert {dtype for dtype, _ in seen} == {torch.bfloat16}  # autocast on in every training forward pass
    assert losses[-1] < 0.5 * losses[0]
    assert rec.evals[-1][1]["test_accuracy"] > 0.85


def test_bf16_conv2_uses_channels_last_batches_under_auto():
    task = toy_task(model="conv2")  # synthetic 32x32 images; channels_last left at "auto"
    model = task.build_model(0)
    seen, losses, _ = train_bf16(task, model, half_masks(task, model), 40, 1e-3)
    assert {dtype for dtype, _ in seen} == {torch.bfloat16}
    assert any(cl for _, cl in seen)  # the convolutions read channels-last batches
    assert all(p.is_contiguous() for p in model.parameters())  # the weights keep their layout
    assert losses[-1] < losses[0]
