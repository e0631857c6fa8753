"""Batch augmentation: random crop from a zero-padded image plus horizontal flip, seeded by a generator."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ticketx_vision.augment import random_crop_flip


def candidates(image: torch.Tensor, padding: int = 4) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop (dy, dx) of the zero-padded image, flipped or not: what one output may be."""
    _, h, w = image.shape
    padded = F.pad(image, (padding,) * 4)
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [(dy, dx, False, crop), (dy, dx, True, crop.flip(-1))]
    return out


def test_each_output_is_a_padded_crop_maybe_flipped() -> None:
    x = torch.randn(64, 3, 8, 8)  # distinct values: at most one candidate matches
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen: list[tuple[int, int, bool]] = []
    for image, augmented in zip(x, out):
        matches = [(dy, dx, f) for dy, dx, f, c in candidates(image) if torch.equal(c, augmented)]
        assert len(matches) == 1
        seen.append(matches[0])
    flips = {f for _, _, f in seen}
    offsets = {(dy, dx) for dy, dx, _ in seen}
    assert flips == {False, True}
    assert len(offsets) > 20  # 81 possible offsets, 64 draws
    assert any(dy != 4 or dx != 4 for dy, dx, _ in seen)  # (4, 4) unflipped is the identity


def test_deterministic_for_a_generator_seed() -> None:
    x = torch.randn(32, 1, 28, 28)
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_changes_most_images_and_leaves_the_input_alone() -> None:
    x = torch.randn(100, 3, 32, 32)
    before = x.clone()
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(x, before)
    unchanged = sum(torch.equal(a, b) for a, b in zip(x, out))
    assert unchanged < 5  # P(identity) = 1/162 per image


def test_padding_is_zero() -> None:
    x = torch.ones(200, 1, 6, 6)
    out = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out == 0).any(dim=(1, 2, 3)).float().mean() > 0.8  # most crops reach into the padding
