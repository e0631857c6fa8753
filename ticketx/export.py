"""Tickets that run faster: a trained ticket as a compact TorchScript inference model.

Each masked `nn.Linear` at or below `max_density` becomes a `SparseLinear` holding its weight in CSR form
(compressed sparse rows: zero rows and columns cost nothing); every other layer stays dense, its pruned
entries zero. The result is scripted and saved with `torch.jit.save`, so `torch.jit.load(path)` runs it
with plain PyTorch, no ticketx. Measured on this project's CPU (benchmarks/README.md): CSR wins over a
dense matmul below about 18% density at batch 256 and loses at batch 1 at every density, hence the
`max_density` default and the advice to pass 0 for batch-1 serving.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


DEFAULT_MAX_DENSITY = 0.18


@contextmanager
def _quiet() -> Iterator[None]:
    # TorchScript is deprecated in favour of torch.export, which cannot carry sparse CSR tensors yet, and
    # CSR support is flagged beta: both warnings are known and chosen, not news to the user
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(deprecated|Sparse CSR tensor support).*")
        yield


class SparseLinear(nn.Module):
    """y = x W^T + b with W (out, in) stored as a CSR tensor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", (bias.detach().clone() if bias is not None
                                      else torch.zeros(self.out_features, dtype=weight.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (N, in)
        y = torch.mm(self.weight, flat.t()).t() + self.bias  # (out, in) @ (in, N) -> (N, out)
        return y.reshape(x.shape[:-1] + (self.out_features,))


@dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, ...]
    density: float
    storage: str  # "csr" or "dense"


def compact(model: nn.Module, masks: Mapping[str, torch.Tensor], *,
            max_density: float = DEFAULT_MAX_DENSITY) -> tuple[nn.Module, list[LayerReport]]:
    """A copy of `model` (masks applied) with sparse-enough Linear layers in CSR form, in eval mode."""
    import copy
    out = copy.deepcopy(model).eval()
    params = dict(out.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].dtype))
    report = []
    for module_name, module in list(out.named_modules()):
        key = f"{module_name}.weight" if module_name else "weight"
        if key not in masks:
            continue
        density = float((masks[key] > 0).float().mean())
        sparse = isinstance(module, nn.Linear) and density <= max_density
        report.append(LayerReport(key, tuple(module.weight.shape), density, "csr" if sparse else "dense"))
        if sparse:
            parent_name, _, child = module_name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            with _quiet():
                setattr(parent, child, SparseLinear(module.weight, module.bias))
    return out, report


def save(model: nn.Module, path: Path) -> Path:
    """Compile `model` with torch.jit.script and write it atomically with torch.jit.save."""
    try:
        with _quiet():
            scripted = torch.jit.script(model)
    except Exception as e:  # TorchScript's own errors are of many types
        raise ValueError(f"the ticket's model cannot be compiled with torch.jit.script: {e}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with _quiet():
        torch.jit.save(scripted, str(tmp))
    tmp.replace(path)
    return path


def load(path: Path) -> torch.jit.ScriptModule:
    """What users do with plain PyTorch: torch.jit.load (its deprecation warning silenced here)."""
    with _quiet():
        return torch.jit.load(str(path))


def throughput(model: nn.Module, inputs: torch.Tensor, *, seconds: float = 1.0) -> float:
    """Forward passes per second on `inputs` (a warm-up pass first), no gradients."""
    with torch.no_grad():
        model(inputs)
        n, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            model(inputs)
            n += 1
    return n / (time.perf_counter() - began)


def max_difference(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between two models' outputs on `inputs`."""
    with torch.no_grad():
        return float((a(inputs) - b(inputs)).abs().max())

