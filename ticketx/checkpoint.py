"""Checkpoints of one arm's training, so that a long arm killed half-way resumes where it was.

A checkpoint is one safetensors file in the arm's folder, `<arm>.ckpt.safetensors`, written atomically:
every tensor of the state (model, optimizer, RNG states, the early-stop candidate's weights, the
weights captured at the rewind step) under a flat key, and the structure around them (numbers, lists,
dicts with int keys, the evaluation history) as JSON in the file's metadata. No pickle: reading a
checkpoint cannot run code. `ticketx.training.fit` says what to save; the core's `ArmCheckpoints` adds
what the core keeps (the evaluations recorded so far, θk, the seconds trained) and decides when.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_write

EVERY_SECONDS = 300.0  # when train.checkpoint_every is unset: about every 5 minutes of training
FORMAT = "ticketx-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the arm then starts again from its beginning."""


def pack(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors by flat key, a JSON-able skeleton naming them) of a nested state."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().to("cpu").contiguous()
            return {"__tensor__": key}
        if isinstance(v, dict):
            return {"__dict__": [[walk(k), walk(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"__tuple__": [walk(x) for x in v]}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return {"__float__": repr(v)}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot checkpoint a {type(v).__name__}")

    return tensors, walk(state)


def unpack(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The nested state `pack` took apart."""
    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if "__tensor__" in v:
                return tensors[v["__tensor__"]]
            if "__dict__" in v:
                return {walk(k): walk(x) for k, x in v["__dict__"]}
            if "__tuple__" in v:
                return tuple(walk(x) for x in v["__tuple__"])
            if "__float__" in v:
                return float(v["__float__"])
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(skeleton)


def write(path: Path, state: Any) -> None:
    """Save `state` (nested dicts, lists, tuples, numbers, strings, tensors) to `path`, atomically."""
    tensors, skeleton = pack(state)
    meta = {"format": FORMAT, "state": json.dumps(skeleton)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read(path: Path) -> Any:
    """The state saved at `path`; CheckpointError when it is not a readable checkpoint."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a ticketx checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return unpack(tensors, json.loads(meta["state"]))
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read the checkpoint {path}: {e}") from None


class ArmCheckpoints:
    """When one arm saves its training state, and the state it resumes from.

    `fit` (or any Task.train) calls `resume()` once before its first step and `due(step)` /
    `save(step, state)` after each step. The core's own part of the state (`core_state()`, restored
    through `restore`) travels in the same file.
    """

    def __init__(self, path: Path, *, every_steps: int | None, core_state: Callable[[], dict[str, Any]],
                 every_seconds: float = EVERY_SECONDS) -> None:
        self.path, self.every_steps, self.every_seconds = path, every_steps, every_seconds
        self.core_state = core_state
        self.loaded: dict[str, Any] | None = None  # the whole checkpoint resumed from, if any
        self.last = time.monotonic()
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        """The saved checkpoint (core and training parts), or None where there is none."""
        if not self.path.exists():
            return None
        self.loaded = read(self.path)
        return self.loaded

    def resume(self) -> dict[str, Any] | None:
        """The training part of the checkpoint this arm resumes from, or None (start from the beginning)."""
        return None if self.loaded is None else self.loaded["train"]

    def due(self, step: int) -> bool:
        if self.every_steps is not None:
            return step % self.every_steps == 0
        return time.monotonic() - self.last >= self.every_seconds

    def save(self, step: int, state: dict[str, Any]) -> None:
        write(self.path, {"step": step, "core": self.core_state(), "train": state})
        self.last = time.monotonic()
        self.saves += 1

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
