"""Where arms train and in what arithmetic: device strings, their resolution, and autocast.

`train.device` is "auto", "cpu", "cuda" or "cuda:N". A job resolves it once, when it starts: "auto" is
the first CUDA GPU when torch sees one, else the CPU; "cuda" (and "auto" on a CUDA machine) lets the
worker pool spread workers over every visible GPU, round-robin; "cuda:N" pins every worker to GPU N.
`train.precision` is "fp32", "bf16" (autocast to bfloat16 on the CPU or CUDA) or "fp16" (autocast to
float16 with a gradient scaler, CUDA only). Weights, optimizer state, masks and tickets stay fp32.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision cannot be used here; the message names it and what torch sees."""


def check_device_spec(spec: str) -> None:
    """Raise DeviceError unless `spec` has one of the forms train.device takes (not whether it exists)."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise DeviceError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got {spec!r}")


def visible() -> str:
    """What torch sees, in words: for error messages."""
    cuda = torch.version.cuda
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f"; CUDA_VISIBLE_DEVICES={env!r}" if env is not None else ""
    if not cuda:
        return f"torch {torch.__version__} is a CPU-only build{shown}"
    n = torch.cuda.device_count()
    if n == 0:
        return f"torch {torch.__version__} (CUDA {cuda}) sees no CUDA device{shown}"
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(n))
    return f"torch {torch.__version__} (CUDA {cuda}) sees {n} GPU(s): {names}{shown}"


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve(spec: str, *, worker: int = 0) -> str:
    """The concrete device ("cpu", "cuda:N") that `spec` names for worker number `worker` of a job.

    "auto" and "cuda" spread workers over the visible GPUs (worker i on GPU i mod count); "cuda:N" is
    GPU N for every worker. Raises DeviceError, naming what torch sees, for a GPU that is not there.
    """
    check_device_spec(spec)
    if spec == "cpu":
        return "cpu"
    n = gpu_count()
    if spec == "auto":
        return f"cuda:{worker % n}" if n else "cpu"
    if n == 0:
        raise DeviceError(f"train.device is {spec!r} but no CUDA device is visible: {visible()}")
    if spec == "cuda":
        return f"cuda:{worker % n}"
    index = int(spec.split(":")[1])
    if index >= n:
        raise DeviceError(f"train.device is {spec!r} but there is no GPU {index}: {visible()}")
    return spec


def job_device(spec: str, task: Any = None, *, worker: int = 0, precision: str = "fp32") -> str:
    """`resolve(spec)`, except that "auto" gives the CPU for a task whose `default_device` is "cpu" (an RL
    task with a small policy, which trains faster there); DeviceError where that device cannot train in
    `precision` (`check_precision`)."""
    device = "cpu" if spec == "auto" and getattr(task, "default_device", None) == "cpu" else resolve(spec, worker=worker)
    check_precision(precision, device)
    return device


def canonical(device: torch.device | str) -> torch.device:
    """`device` as a torch.device naming its GPU ("cuda" -> "cuda:N", the current one), so that copies kept
    per device (a task's data) are found again whichever way the device is spelled."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_precision(precision: str, device: str) -> None:
    """Raise DeviceError for a precision the device cannot train in (fp16 on the CPU)."""
    if precision == "fp16" and not device.startswith("cuda"):
        raise DeviceError(
            f"train.precision 'fp16' needs a CUDA device (it trains with a gradient scaler), but the job "
            f"trains on {device}; use 'bf16' on the CPU"
        )


def autocast(device: str, precision: str) -> Any:
    """The autocast context for training on `device` in `precision` (nothing for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextmanager
def matmul_precision(device: str, tf32: bool) -> Iterator[None]:
    """On CUDA, allow (or forbid) TF32 in fp32 matrix multiplies and convolutions for the block; the
    previous settings are restored after."""
    if not device.startswith("cuda"):
        yield
        return
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def describe(device: str, precision: str, tf32: bool) -> str:
    """One line for the start of a job: the device, its name, the precision."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return f"{device} ({name}), {precision}" + (", TF32 matmuls" if tf32 and precision == "fp32" else "")
    return f"cpu, {precision}"


def rng_devices(device: str) -> list[int]:
    """The CUDA devices whose RNG `torch.random.fork_rng` must save for work on `device` ([] on the CPU)."""
    return [torch.device(device).index or 0] if device.startswith("cuda") else []
