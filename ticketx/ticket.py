"""Tickets on disk: masks + rewind weights + metadata, as safetensors and JSON.

A ticket is a directory holding `masks.safetensors` (bool), `weights.safetensors` (the model's full state
at the rewind point, pruned entries zero) and `ticket.json` (task spec, seed, level, rewind step, per-layer
density, source run, ticketx version, and the SHA-256 of both tensor files). safetensors, not pickle:
loading someone else's ticket never runs their code. Writing is atomic (a temporary directory renamed into
place), and loading checks every hash, name, shape and dtype, saying exactly what does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from . import __version__
from .files import dir_mode
from .masks import layer_density

FORMAT = 1
MASKS, WEIGHTS, META = "masks.safetensors", "weights.safetensors", "ticket.json"


class TicketError(ValueError):
    """A ticket cannot be read, is corrupted, or does not fit a model; the message says which tensor."""


class TicketWriteError(TicketError, OSError):
    """A ticket could not be written (disk full, no permission); the ticket already there is unchanged."""


@dataclass(frozen=True)
class Ticket:
    """Masks over the prunable weights, the full state to rewind to, and what produced them."""

    masks: dict[str, torch.Tensor]  # name -> 0/1 float tensor, prunable weights only
    weights: dict[str, torch.Tensor]  # name -> tensor, every entry of the model's state_dict
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)  # the folder it was loaded from, for errors

    @property
    def density(self) -> float:
        kept = sum(int((m > 0).sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return kept / total if total else 1.0


def make(masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], **meta: Any) -> Ticket:
    """A ticket from masks and rewind weights (a state_dict), pruned entries zeroed; `meta` is JSON-able."""
    state = {k: v.detach().clone() for k, v in weights.items()}
    for name, m in masks.items():
        state[name].mul_(m.to(state[name].dtype))
    dens = layer_density(masks)
    # a list, not a table, so the model's layer order survives sorted JSON keys
    layers = [{"name": n, "shape": list(m.shape), "density": dens[n]} for n, m in masks.items()]
    full_meta = {"format": FORMAT, "ticketx_version": __version__, **meta, "layers": layers}
    ticket = Ticket({k: v.detach().clone().float() for k, v in masks.items()}, state, full_meta)
    full_meta["density"] = ticket.density
    return ticket


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(ticket: Ticket, path: Path) -> Path:
    """Write `ticket` to directory `path` atomically: readers see the old ticket or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masks_bytes = st_save({k: (v > 0).contiguous() for k, v in ticket.masks.items()})
    weights_bytes = st_save({k: v.contiguous() for k, v in ticket.weights.items()})
    meta = dict(ticket.meta)
    meta["sha256"] = {MASKS: hashlib.sha256(masks_bytes).hexdigest(),
                      WEIGHTS: hashlib.sha256(weights_bytes).hexdigest()}
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        os.chmod(tmp, dir_mode())  # mkdtemp makes it owner-only; a ticket is read as any folder is
        _fsync_write(tmp / MASKS, masks_bytes)
        _fsync_write(tmp / WEIGHTS, weights_bytes)
        _fsync_write(tmp / META, json.dumps(meta, indent=2, sort_keys=True).encode())
        if path.exists():
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # failed between the two renames: put the old one back
            os.replace(old, path)
        if isinstance(e, OSError):  # disk full, read-only: a TicketError the CLI reports in one line
            raise TicketWriteError(f"{path}: cannot write the ticket ({e.strerror or e}); "
                                   "the ticket that was there, if any, is unchanged") from e
        raise
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """The parsed `ticket.json` of ticket directory `path`, checked to be a JSON object."""
    path = Path(path)
    if not path.is_dir():
        raise TicketError(f"{path}: not a ticket directory (expected a folder with {MASKS}, {WEIGHTS}, {META})")
    missing = [f for f in (MASKS, WEIGHTS, META) if not (path / f).is_file()]
    if missing:
        raise TicketError(f"{path}: incomplete ticket, missing {', '.join(missing)}")
    try:
        meta = json.loads((path / META).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TicketError(f"{path / META}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TicketError(f"{path / META}: not valid JSON ({e})") from None
    except RecursionError:
        raise TicketError(f"{path / META}: not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise TicketError(f"{path / META}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise TicketError(f"{path / META}: unsupported ticket format {meta.get('format')!r} "
                          f"(this ticketx reads format {FORMAT})")
    problems = _meta_problems(meta)
    if problems:
        raise TicketError(f"{path / META}: " + "; ".join(problems))
    return meta


def _is_int(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < high


def _is_density(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def _meta_problems(meta: Mapping[str, Any]) -> list[str]:
    """What is wrong with the types of the entries ticketx reads from a ticket.json (none: an empty list).

    Entries are checked only where present, except `layers`; what they must agree with (the tensors) is
    checked by `load`.
    """
    out = []
    for key, low, high in (("seed", -(2**63), 2**63), ("level", 0, 2**31), ("replicate", 0, 2**31),
                           ("rewind_step", 0, 2**63)):
        if key in meta and not _is_int(meta[key], low, high):
            out.append(f"{key} must be an integer in [{low}, {high}), got {str(meta[key])[:40]!r}")
    task = meta.get("task", {})
    if not isinstance(task, dict):
        out.append(f"task must be an object, got {type(task).__name__}")
    else:
        out += [f"task.{k} must be a string, got {type(task[k]).__name__}"
                for k in ("plugin", "task") if k in task and not isinstance(task[k], str)]
        if "options" in task and not isinstance(task["options"], dict):
            out.append(f"task.options must be an object, got {type(task['options']).__name__}")
    for key in ("train", "sha256"):
        if key in meta and not isinstance(meta[key], dict):
            out.append(f"{key} must be an object, got {type(meta[key]).__name__}")
    if "density" in meta and not _is_density(meta["density"]):
        out.append(f"density must be a number in [0, 1], got {str(meta['density'])[:40]!r}")
    layers = meta.get("layers")
    if not isinstance(layers, list):
        return out + [f"layers must be a list of {{name, shape, density}}, got {type(layers).__name__}"]
    for i, x in enumerate(layers):
        ok = (isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("shape"), list)
              and all(_is_int(d, 0, 2**63) for d in x["shape"]) and _is_density(x.get("density")))
        if not ok:
            out.append(f"layers[{i}] must be {{name: string, shape: list of integers >= 0, density: number in "
                       f"[0, 1]}}, got {str(x)[:80]}")
    return out


def _read_tensors(file: Path, expected_sha: Any) -> dict[str, torch.Tensor]:
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha:
        raise TicketError(f"{file}: SHA-256 {digest[:12]}... does not match ticket.json "
                          f"({str(expected_sha)[:12]}...): the file is corrupted or was edited")
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise TicketError(f"{file}: not a readable safetensors file ({e})") from None


def load(path: Path) -> Ticket:
    """Read and check a ticket directory; raises TicketError naming the file and what is wrong."""
    path = Path(path)
    meta = read_meta(path)
    sha = meta.get("sha256")
    if not isinstance(sha, dict):
        raise TicketError(f"{path / META}: missing the sha256 table of the tensor files")
    raw_masks = _read_tensors(path / MASKS, sha.get(MASKS))
    weights = _read_tensors(path / WEIGHTS, sha.get(WEIGHTS))
    problems = []
    masks: dict[str, torch.Tensor] = {}
    for name, m in raw_masks.items():
        if m.dtype != torch.bool:
            problems.append(f"mask {name} has dtype {m.dtype}, expected torch.bool")
        elif bool((m.view(torch.uint8) > 1).any()):  # a bool byte other than 0 or 1: no mask ticketx writes
            problems.append(f"mask {name} holds byte values other than 0 and 1")
        elif name not in weights:
            problems.append(f"mask {name} has no weight in {WEIGHTS}")
        elif not weights[name].is_floating_point():
            problems.append(f"weight {name} has dtype {weights[name].dtype}; a masked weight must be floating point")
        elif m.shape != weights[name].shape:
            problems.append(f"mask {name} has shape {tuple(m.shape)} but its weight {tuple(weights[name].shape)}")
        elif bool((weights[name][~m] != 0).any()):
            problems.append(f"weight {name} is nonzero where its mask prunes it")
        else:
            masks[name] = m.to(weights[name].dtype)
    layers = meta["layers"]  # a list of {name, shape, density}: read_meta checked
    names = [x["name"] for x in layers]
    if sorted(names) != sorted(raw_masks) or len(set(names)) != len(names):
        problems.append(f"{META} lists layers {names} but {MASKS} holds {sorted(raw_masks)}")
    for x in layers:  # what ticket.json says of each layer must be what the masks hold
        m = raw_masks.get(x["name"])
        if m is None or x["name"] not in masks:
            continue
        if list(m.shape) != x["shape"]:
            problems.append(f"{META} gives layer {x['name']} shape {x['shape']} but its mask has {list(m.shape)}")
        elif abs(x["density"] * m.numel() - int(m.sum())) > 0.5:
            problems.append(f"{META} gives layer {x['name']} density {x['density']} but its mask keeps "
                            f"{int(m.sum())} of {m.numel()}")
    if problems:
        raise TicketError(f"{path}: " + "; ".join(problems))
    return Ticket({n: masks[n] for n in names}, weights, meta, path)


def check_fits(ticket: Ticket, model: nn.Module, prunable: Mapping[str, torch.Tensor],
               *, ignore: set[str] = frozenset()) -> None:
    """Raise TicketError listing every tensor of `ticket` that does not match `model` (names, shapes, dtypes).

    `ignore` names parameters (e.g. a task's head) the caller will re-initialise instead of loading.
    """
    problems = fit_problems(ticket, model, prunable, ignore=ignore)
    if problems:
        where = f"ticket {ticket.path}" if ticket.path else "ticket"
        raise TicketError(f"{where} (task {task_name(ticket.meta)}) does not fit this model: " + "; ".join(problems))


def fit_problems(ticket: Ticket, model: nn.Module, prunable: Mapping[str, torch.Tensor],
                 *, ignore: set[str] = frozenset()) -> list[str]:
    """Every way `ticket` does not match `model`, one phrase each (empty: it fits); see `check_fits`."""
    state = model.state_dict()
    problems = []
    for name in sorted(set(state) - set(ticket.weights) - ignore):
        problems.append(f"{name}: in the model {tuple(state[name].shape)}, missing from the ticket")
    for name in sorted(set(ticket.weights) - set(state) - ignore):
        problems.append(f"{name}: in the ticket {tuple(ticket.weights[name].shape)}, not in the model")
    for name in sorted((set(state) & set(ticket.weights)) - ignore):
        a, b = ticket.weights[name], state[name]
        if a.shape != b.shape:
            problems.append(f"{name}: ticket shape {tuple(a.shape)}, model shape {tuple(b.shape)}")
        elif a.dtype != b.dtype:
            problems.append(f"{name}: ticket dtype {a.dtype}, model dtype {b.dtype}")
    want, have = set(prunable) - ignore, set(ticket.masks) - ignore
    if want != have:
        problems.append(f"masks cover {sorted(have)} but the task prunes {sorted(want)}")
    return problems


def task_name(meta: Mapping[str, Any]) -> str:
    """`plugin/task` of the task a ticket was found on, as its metadata records it ('?' where it does not)."""
    src = meta.get("task")
    if not isinstance(src, Mapping):
        return "?"
    return f"{src.get('plugin', '?')}/{src.get('task', '?')}"
