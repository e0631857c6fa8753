"""Data augmentation on whole batches of tensors: one gather per batch, no per-image transforms."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, *, padding: int = 4,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Random crop of each image from its zero-padded copy, then a random horizontal flip.

    The standard CIFAR augmentation (He et al. 2016, sec. 4.2), as Frankle & Carbin use for VGG and
    ResNet. `x` is (B, C, H, W), already normalised, so the zero padding is each channel's mean. Offsets
    and flips come from `generator` alone, a CPU generator: the same generator state gives the same batch
    on every device. The B offsets and flips are drawn on the CPU and copied to `x`'s device in one small
    asynchronous copy; the padding and the gather run where `x` is. The result is in `memory_format` (the gather makes
    it channels-last ordered, so torch.channels_last costs no copy).
    """
    b, _, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)  # (B,) crop's top row
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)  # (B,) crop's left column
    flip = torch.randint(0, 2, (b,), generator=generator)  # (B,) 1: flip
    draws = torch.stack((dy, dx, flip))  # (3, B)
    if device.type == "cuda":  # one small copy, from pinned memory so that it does not wait for the GPU
        draws = draws.pin_memory().to(device, non_blocking=True)  # torch keeps the block until it is done
    else:
        draws = draws.to(device)
    dy, dx, flip = draws[0], draws[1], draws[2].bool()
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device).expand(b, w)  # (B, W)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # a flip reads columns backwards
    batch = torch.arange(b, device=device)[:, None, None]  # (B, 1, 1)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced dims go first
    return out.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)  # (B, C, H, W)
