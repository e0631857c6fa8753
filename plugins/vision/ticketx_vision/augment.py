"""Data augmentation on whole batches of tensors: one gather per batch, no per-image transforms."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Random crop of each image from its zero-padded copy, then a random horizontal flip.

    The standard CIFAR augmentation (He et al. 2016, sec. 4.2), as Frankle & Carbin use for VGG and
    ResNet. `x` is (B, C, H, W), already normalised, so the zero padding is each channel's mean. Offsets
    and flips come from `generator` alone: the same generator state gives the same batch.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)  # (B,) crop's top row
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)  # (B,) crop's left column
    flip = torch.randint(0, 2, (b,), generator=generator).bool()  # (B,)
    rows = dy[:, None] + torch.arange(h)  # (B, H)
    cols = torch.arange(w).expand(b, w)  # (B, W)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # a flip reads columns backwards
    batch = torch.arange(b)[:, None, None]  # (B, 1, 1)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced dims go first
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
