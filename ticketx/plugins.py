"""Plugin discovery through the `ticketx.plugins` entry-point group, loaded only when asked.

Built-in plugins are installed and found exactly like third-party ones. `TICKETX_PLUGINS` adds plugins
that are not installed (`name=module:attr`, comma-separated), for trying out a plugin under development;
the module must be importable (on PYTHONPATH). Every task a plugin makes is checked against the Task
contract (`ticketx.task.check_contract`) before the core uses it.
Every error names the plugin and where it came from; one broken plugin never hides the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .task import Plugin, Task, check_contract

GROUP = "ticketx.plugins"
ENV = "TICKETX_PLUGINS"


class PluginError(LookupError):
    """A plugin is unknown, fails to import, clashes with another, or is not a plugin."""


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return f"{ENV} ({ep.value})"
    return f"distribution {dist.metadata['Name']} {dist.version} ({ep.value})"


def discover(env: Mapping[str, str] | None = None) -> dict[str, list[EntryPoint]]:
    """Plugin name -> entry points declaring it (more than one means a clash). Imports nothing."""
    env = os.environ if env is None else env
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    for item in filter(None, (s.strip() for s in env.get(ENV, "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or ":" not in value:
            raise PluginError(f"{ENV}: expected name=module:attribute, got {item!r}")
        found.setdefault(name.strip(), []).append(EntryPoint(name.strip(), value.strip(), GROUP))
    return found


def load(name: str, available: Mapping[str, list[EntryPoint]]) -> Plugin:
    """Import and instantiate plugin `name`; PluginError says what is installed or what went wrong."""
    if name not in available:
        installed = ", ".join(sorted(available)) or "none (pip install -e plugins/vision, or set " + ENV + ")"
        raise PluginError(f"unknown plugin {name!r}; installed plugins: {installed}")
    eps = available[name]
    if len(eps) > 1:
        raise PluginError(f"plugin name {name!r} is declared more than once, by "
                          f"{' and '.join(_origin(ep) for ep in eps)}; uninstall one of them")
    ep = eps[0]
    try:
        obj = ep.load()
    except Exception as e:  # any import-time failure of third-party code
        hint = ""
        if isinstance(e, ModuleNotFoundError) and getattr(ep, "dist", None) is None:
            hint = (f"; {ENV} names a module, it does not install it: the module must be importable "
                    "(pip install -e the plugin, or put its folder on PYTHONPATH)")
        raise PluginError(f"plugin {name!r} from {_origin(ep)} failed to import: "
                          f"{type(e).__name__}: {e}{hint}") from e
    try:
        # a class or factory is called; an object that already is a plugin is used as it is
        make = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "make_task"))
        plugin = obj() if make else obj
    except Exception as e:
        raise PluginError(f"plugin {name!r} from {_origin(ep)} failed to start: {type(e).__name__}: {e}") from e
    lacking = [a for a in ("tasks", "make_task") if not callable(getattr(plugin, a, None))]
    if lacking:
        raise PluginError(f"plugin {name!r} from {_origin(ep)} is not a ticketx plugin: it lacks "
                          f"{', '.join(lacking)} (see ticketx.task.Plugin)")
    return plugin


def make_task(plugin_name: str, task_name: str, options: Mapping[str, Any], *,
              available: Mapping[str, list[EntryPoint]], data_root: Path | None) -> Task:
    """Build a task through its plugin, checking the name against the plugin's task list and the task
    against the Task contract (`ticketx.task.check_contract`: TaskError, one line)."""
    plugin = load(plugin_name, available)
    tasks = plugin.tasks()
    if task_name not in tasks:
        raise PluginError(f"plugin {plugin_name!r} has no task {task_name!r}; its tasks: {', '.join(sorted(tasks))}")
    task = plugin.make_task(task_name, options, data_root=data_root)
    check_contract(task, plugin_name, task_name)
    return task


def describe(available: Mapping[str, list[EntryPoint]]) -> list[tuple[str, str, dict[str, str] | str]]:
    """(plugin, origin, tasks or the error that stops it loading) for every discovered plugin."""
    rows = []
    for name in sorted(available):
        origin = "; ".join(_origin(ep) for ep in available[name])
        try:
            rows.append((name, origin, load(name, available).tasks()))
        except PluginError as e:
            rows.append((name, origin, str(e)))
    return rows
