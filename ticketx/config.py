"""Configs: frozen dataclasses checked when built, read from TOML recipes, changed by `--set KEY=VALUE`.

*What* to run lives here (open_lth's hyperparameter descriptions); *how* lives in `findjob.py`. A config's
hash names its job folder, so running the same config again resumes it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import arms as armlib
from .devices import DeviceError, check_device_spec
from .pruning import DEFAULT_PER_CLASS, DEFAULT_SYNFLOW_ROUNDS, IMP_CRITERIA
from .task import Plan


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key, what it got and what it allows."""


ARMS = armlib.DEFAULT_FIND_ARMS
SEED_LIMIT = 2**31  # seeds and data seeds; replicate r adds r, and every library takes the sum


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Which plugin and task; every other key of `[task]` is an option the plugin checks."""

    plugin: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How each arm trains at each level."""

    steps: int = 2000  # optimizer steps per level (Frankle & Carbin's "iterations")
    batch_size: int = 60
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1.2e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warmup (F&C section 4: VGG-19, ResNet-20)
    milestones: tuple[int, ...] = ()  # steps where lr is multiplied by gamma
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # clip the global gradient norm (surviving weights) to this; 0 = off
    eval_every: int = 100  # validation every this many steps; the early-stop iteration is one of them
    # where and how precisely to train (ticketx.devices): not part of the config hash, so that a job may
    # resume on another machine; precision and tf32 are, where they are not at their defaults
    device: str = "auto"  # "auto" (the first CUDA GPU when one is visible, else the CPU), "cpu", "cuda", "cuda:N"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    tf32: bool = False  # on CUDA, let fp32 matrix multiplies and convolutions use TF32
    # an arm saves a checkpoint every this many steps (None: about every 5 minutes of training), and a
    # re-run resumes it from there; not part of the hash (it does not change results)
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        try:
            check_device_spec(self.device)  # the form only; whether it exists is checked when a job starts
        except DeviceError as e:
            raise ConfigError(str(e)) from None
        if self.checkpoint_every is not None:
            _positive("train.checkpoint_every", self.checkpoint_every)
        _positive("train.steps", self.steps)
        _positive("train.batch_size", self.batch_size)
        _positive("train.eval_every", self.eval_every)
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        for name in ("momentum", "weight_decay", "warmup_steps", "clip_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"train.milestones must be increasing, got {list(self.milestones)}")
        if self.milestones and self.milestones[0] < 0:
            raise ConfigError(f"train.milestones must be steps >= 0, got {list(self.milestones)}")
        if not self.gamma > 0:
            raise ConfigError(f"train.gamma must be > 0 (the lr is multiplied by it), got {self.gamma}")


@dataclass(frozen=True, kw_only=True)
class EarlyBird:
    """Early-bird tickets (You et al. 2020, arXiv 1909.11957): while a level trains, the mask it would prune
    to is computed every `every` steps; the early-bird iteration is the first step at which the largest
    normalised Hamming distance among the last `window` such masks is at most `distance`."""

    distance: float = 0.1
    window: int = 5
    every: int = 100
    stop: bool = False  # stop the level's training there and prune from those weights

    def __post_init__(self) -> None:
        if not 0.0 <= self.distance <= 1.0:
            raise ConfigError(f"prune.early_bird.distance must be in [0, 1], got {self.distance}")
        if self.window < 2:
            raise ConfigError(f"prune.early_bird.window must be >= 2 (masks to compare), got {self.window}")
        _positive("prune.early_bird.every", self.every)


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """How masks are made from level to level."""

    levels: int = 5  # pruning rounds after the dense level 0
    rate: float = 0.2  # share of the surviving weights removed per level
    scope: Literal["layerwise", "global"] = "layerwise"
    layer_rates: Mapping[str, float] = field(default_factory=dict)  # per-layer overrides by parameter name
    exclude: tuple[str, ...] = ()  # parameter names never pruned
    rewind_step: int = 0  # k: survivors are reset to θk (0 = initialisation)
    mode: Literal["iterative", "oneshot"] = "iterative"  # oneshot: level L prunes the dense weights once
    # added after jobs existed: left out of the hash at their defaults (HASHED_WHEN_SET)
    criterion: str = "magnitude"  # IMP's own: "magnitude" or "lamp" (ticketx.pruning)
    early_bird: EarlyBird | None = None
    scoring_per_class: int = DEFAULT_PER_CLASS  # scoring sample of SNIP and GraSP: examples per class
    synflow_rounds: int = DEFAULT_SYNFLOW_ROUNDS

    def __post_init__(self) -> None:
        if self.criterion not in IMP_CRITERIA:
            raise ConfigError(f"prune.criterion must be one of {', '.join(map(repr, IMP_CRITERIA))}, "
                              f"got {self.criterion!r}")
        if self.criterion == "lamp" and self.scope != "global":
            raise ConfigError("prune.criterion = 'lamp' ranks all layers together (Lee et al. 2021): set "
                              "prune.scope = 'global' (layer-wise, LAMP keeps exactly what magnitude keeps)")
        _positive("prune.scoring_per_class", self.scoring_per_class)
        _positive("prune.synflow_rounds", self.synflow_rounds)
        if self.levels < 0:
            raise ConfigError(f"prune.levels must be >= 0, got {self.levels}")
        if not 0.0 < self.rate < 1.0:
            raise ConfigError(f"prune.rate must be in (0, 1), got {self.rate}")
        for name, r in self.layer_rates.items():
            if not 0.0 <= r < 1.0:
                raise ConfigError(f"prune.layer_rates.{name} must be in [0, 1), got {r}")
        if self.rewind_step < 0:
            raise ConfigError(f"prune.rewind_step must be >= 0, got {self.rewind_step}")

    def density_after(self, level: int, layer: str | None = None) -> float:
        """Share of a layer's weights kept after `level` levels (the pooled rate when `layer` is None)."""
        rate = self.layer_rates.get(layer, self.rate) if layer else self.rate
        return (1.0 - rate) ** level


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What find and transfer jobs share: a task, how to train, seeds and replicates."""

    name: str = "ticketx"  # also the default MLflow experiment
    description: str = ""  # the paper, figure and deviations a recipe reproduces
    seed: int = 0  # init seed of replicate 0; replicate r uses seed + r
    data_seed: int | None = None  # data-order seed of replicate 0 (default: seed); replicate r adds r
    replicates: int = 1
    task: TaskConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _positive("replicates", self.replicates)
        for key in ("seed", "data_seed"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < SEED_LIMIT:  # numpy, and so gymnasium, take < 2**32
                raise ConfigError(f"{key} must be in [0, {SEED_LIMIT}), got {value}")

    def init_seed(self, replicate: int) -> int:
        return self.seed + replicate

    def order_seed(self, replicate: int) -> int:
        return (self.seed if self.data_seed is None else self.data_seed) + replicate

    def plan(self, replicate: int, start_step: int = 0, lr: float | None = None) -> Plan:
        """The training plan of one arm of `replicate`, starting at `start_step` (at `lr` if given)."""
        t = self.train
        return Plan(
            steps=t.steps, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr if lr is None else lr,
            momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay,
            warmup_steps=t.warmup_steps, milestones=t.milestones, gamma=t.gamma, eval_every=t.eval_every,
            clip_grad_norm=t.clip_grad_norm,
            start_step=start_step, data_seed=self.order_seed(replicate), precision=t.precision, tf32=t.tf32,
        )


@dataclass(frozen=True, kw_only=True)
class FindConfig(RunConfig):
    """One ticket search: a task, how to train, how to prune, which arms, how many replicates."""

    arms: tuple[str, ...] = ARMS  # which arms train at levels >= 1 (level 0 trains the dense network)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        why = armlib.check_find_arms(self.arms)
        if why:
            raise ConfigError(why)
        if self.prune.rewind_step >= self.train.steps:
            raise ConfigError(
                f"prune.rewind_step ({self.prune.rewind_step}) must be below train.steps ({self.train.steps})"
            )


TRANSFER_ARMS = armlib.DEFAULT_TRANSFER_ARMS


@dataclass(frozen=True, kw_only=True)
class TransferOptions:
    """How a ticket is put onto the target task."""

    # the target's head (Task.head: classifier, vocabulary layers) is always re-initialised; "dense" keeps
    # it unpruned, "pruned" prunes it at random to the density the source ticket had in that layer
    head: Literal["dense", "pruned"] = "dense"


@dataclass(frozen=True, kw_only=True)
class TransferConfig(RunConfig):
    """Train tickets from a source task on a target task, beside the controls that give them meaning."""

    arms: tuple[str, ...] = TRANSFER_ARMS  # "target_ticket" is added by --compare
    lr_grid: tuple[float, ...] = ()  # set by `train.lr = [..]`; the best is chosen on validation
    transfer: TransferOptions = field(default_factory=TransferOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [a for a in self.arms if a not in (*TRANSFER_ARMS, "target_ticket")]
        if bad or not self.arms:
            raise ConfigError(f"arms must be a non-empty list of {list(TRANSFER_ARMS)}, got {list(self.arms)}")
        if any(not lr > 0 for lr in self.lr_grid):
            raise ConfigError(f"train.lr values must be > 0, got {list(self.lr_grid)}")

    @property
    def lrs(self) -> tuple[float, ...]:
        return self.lr_grid or (self.train.lr,)


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


# ----------------------------------------------------------------------------- building from dicts

def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-able data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(config)


# train keys that never change results: a job resumes whatever they are
UNHASHED_TRAIN_KEYS = ("device", "checkpoint_every")
# keys added after jobs existed: left out of the hash at these defaults, so older jobs still resume
HASHED_WHEN_SET = {
    "train": {"precision": "fp32", "tf32": False},
    "prune": {"criterion": "magnitude", "early_bird": None, "scoring_per_class": DEFAULT_PER_CLASS,
              "synflow_rounds": DEFAULT_SYNFLOW_ROUNDS},
}


def hashed(config: RunConfig) -> dict[str, Any]:
    """What of a config changes results, as plain data: all of it but the name, the description, the
    device and the checkpoint interval (and the keys of HASHED_WHEN_SET at their defaults)."""
    data = to_dict(config)
    data.pop("name"), data.pop("description")
    for key in UNHASHED_TRAIN_KEYS:
        data["train"].pop(key)
    for section, defaults in HASHED_WHEN_SET.items():
        for key, default in defaults.items():
            if section in data and data[section][key] == default:
                data[section].pop(key)
    return data


def config_hash(config: RunConfig) -> str:
    """Hash of `hashed(config)`, as hex: a job's name."""
    return hashlib.sha256(json.dumps(hashed(config), sort_keys=True).encode()).hexdigest()


def run_params(config: RunConfig) -> dict[str, str]:
    """A job's parent-run params: the config flattened, less the keys that may differ between runs of
    the same job (the device, the checkpoint interval; the device is a tag of every run instead)."""
    from .tracking import flatten
    params = flatten(to_dict(config))
    for key in UNHASHED_TRAIN_KEYS:
        params.pop(f"train.{key}", None)
    return params


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list, Sequence):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "nothing"}.get(tp, str(tp))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against type `tp`; return it in the config's own form (lists become tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(key, a, value)
            except ConfigError:
                pass
        raise bad
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise bad
        return {str(k): _coerce(f"{key}.{k}", args[1], v) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if dataclasses.is_dataclass(tp):  # a table was built by _build; anything else is not one
        raise bad
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        number = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
        if not math.isfinite(number):  # TOML has inf and nan, and integers too large for a float
            raise ConfigError(f"{key} must be a finite number, got {value}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp}")  # a bug in a config class, not user input


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        parts = []
        for k in unknown:
            near = difflib.get_close_matches(k, list(fields), n=1)
            parts.append(f"{prefix}{k}" + (f" (did you mean {prefix}{near[0]}?)" if near else ""))
        raise ConfigError(f"unknown key(s): {', '.join(parts)}; valid keys here: "
                          f"{', '.join(prefix + f for f in fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        optional = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if optional and isinstance(value, Mapping):  # a table for an optional section (prune.early_bird)
            tp = optional[0]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} must be a table, got {value!r}")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, tp, value)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key(s): {', '.join(prefix + m for m in missing)}")
    return cls(**kwargs)


def _task_config(data: Mapping[str, Any]) -> TaskConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"task must be a table with at least plugin and name, got {data!r}")
    missing = [k for k in ("plugin", "name") if k not in data]
    if missing:
        raise ConfigError(f"missing key(s): {', '.join('task.' + m for m in missing)} "
                          "(e.g. [task] plugin = \"vision\", name = \"mnist\")")
    for k in ("plugin", "name"):
        if not isinstance(data[k], str):
            raise ConfigError(f"task.{k} must be a string, got {data[k]!r}")
    options = {k: v for k, v in data.items() if k not in ("plugin", "name")}
    return TaskConfig(plugin=data["plugin"], name=data["name"], options=options)


def from_dict(data: Mapping[str, Any], cls: type[RunConfig] = FindConfig) -> Any:
    """Build and check a FindConfig (or `cls`) from nested plain data (a parsed recipe)."""
    if "task" not in data:
        raise ConfigError("missing key: task (e.g. [task] plugin = \"vision\", name = \"mnist\")")
    rest = {k: v for k, v in data.items() if k != "task"}
    task = _task_config(data["task"])
    if cls is TransferConfig and isinstance(rest.get("train"), Mapping) and isinstance(rest["train"].get("lr"), list):
        grid = rest["train"]["lr"]  # a learning-rate grid: every value trains, validation picks one
        if not grid:
            raise ConfigError("train.lr is an empty learning-rate grid; give at least one value, e.g. [0.01]")
        rest = {**rest, "lr_grid": grid, "train": {**rest["train"], "lr": grid[0]}}
    # build with a placeholder so unknown and ill-typed keys are reported before the task is
    config = _build(cls, {**rest, "task": {"plugin": task.plugin, "name": task.name}}, "")
    return dataclasses.replace(config, task=task)


_BARE = re.compile(r"^[A-Za-z_./~][A-Za-z0-9_.\-/:~]*$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'train.lr=0.1'` -> `(['train', 'lr'], 0.1)`. The value is TOML; a bare word is a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE (e.g. --set train.lr=0.01), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as e:
        if raw in ("true", "false") or not _BARE.match(raw):
            raise ConfigError(f"--set {key}: {raw!r} is not a valid TOML value ({e}); "
                              "quote strings with spaces, e.g. --set name='\"my run\"'") from None
        value = raw
    return key.split("."), value


Overrides = Sequence[str] | Mapping[str, Any]  # ["train.lr=0.1", ...] (TOML values), or {"train.lr": 0.1}


def apply_overrides(data: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
    """A deep copy of `data` with each override set (tables are created as needed): `KEY=VALUE` strings,
    as `--set` takes them, or a mapping of dotted keys to values, as the Python API takes them."""
    out = copy.deepcopy(dict(data))
    pairs = ([(key.split("."), value) for key, value in overrides.items()] if isinstance(overrides, Mapping)
             else [parse_override(text) for text in overrides])
    for path, value in pairs:
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part} is not a table")
            node = child
        node[path[-1]] = value
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Parse a TOML recipe file into plain data."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def load(path: str | Path, overrides: Overrides = (), cls: type[RunConfig] = FindConfig) -> Any:
    """Read a recipe (a `str` or `Path`), apply overrides (`"train.steps=500"` strings or a mapping, see
    `apply_overrides`), and check everything."""
    if isinstance(overrides, str):  # one override given bare would be read letter by letter
        overrides = [overrides]
    data = apply_overrides(read_recipe(path), overrides)
    data.setdefault("name", Path(path).stem)
    return from_dict(data, cls)
