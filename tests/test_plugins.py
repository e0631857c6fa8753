import sys
import types
from importlib.metadata import EntryPoint

import pytest

from ticketx import plugins
from ticketx.plugins import GROUP, PluginError
from toy import ToyTask


class _Task(ToyTask):
    """A task of the fake plugin "a": the toy task, named as the plugin it comes from."""

    def __init__(self, name, options, data_root):
        super().__init__("gauss", {})
        self.made = (name, options, data_root)

    def spec(self):
        return {**super().spec(), "plugin": "a", "task": self.made[0]}


def ep(name, value):
    return EntryPoint(name, value, GROUP)


@pytest.fixture()
def fake_modules(monkeypatch: pytest.MonkeyPatch):
    good = types.ModuleType("fake_good")

    class Good:
        def tasks(self):
            return {"t1": "a task"}

        def make_task(self, name, options, *, data_root):
            return _Task(name, dict(options), data_root)

    good.Good = Good
    good.not_a_plugin = object()
    monkeypatch.setitem(sys.modules, "fake_good", good)
    return good


def test_discover_reads_env_without_importing(fake_modules):
    found = plugins.discover({"TICKETX_PLUGINS": "a=fake_good:Good, b=does_not_exist:X"})
    assert found["a"][0].value == "fake_good:Good" and "b" in found  # b not imported yet


def test_bad_env_entry():
    with pytest.raises(PluginError, match="TICKETX_PLUGINS: expected name=module:attribute, got 'junk'"):
        plugins.discover({"TICKETX_PLUGINS": "junk"})


def test_load_and_make_task(fake_modules):
    avail = {"a": [ep("a", "fake_good:Good")]}
    assert plugins.make_task("a", "t1", {"x": 1}, available=avail, data_root=None).made == ("t1", {"x": 1}, None)
    with pytest.raises(PluginError, match=r"plugin 'a' has no task 'zz'; its tasks: t1"):
        plugins.make_task("a", "zz", {}, available=avail, data_root=None)


def test_unknown_plugin_lists_installed():
    with pytest.raises(PluginError, match=r"unknown plugin 'nlp'; installed plugins: a, b"):
        plugins.load("nlp", {"a": [], "b": []})


def test_import_failure_names_plugin_and_error_while_others_work(fake_modules):
    avail = {"broken": [ep("broken", "no_such_module_xyz:P")], "a": [ep("a", "fake_good:Good")]}
    with pytest.raises(PluginError, match=r"plugin 'broken' from TICKETX_PLUGINS \(no_such_module_xyz:P\) "
                                          r"failed to import: ModuleNotFoundError.*the module must be "
                                          r"importable \(pip install -e the plugin, or put its folder on PYTHONPATH\)"):
        plugins.load("broken", avail)
    rows = {name: found for name, _, found in plugins.describe(avail)}
    assert rows["a"] == {"t1": "a task"} and "failed to import" in rows["broken"]


def test_clash_is_detected(fake_modules):
    avail = {"a": [ep("a", "fake_good:Good"), ep("a", "other:Good")]}
    with pytest.raises(PluginError, match="plugin name 'a' is declared more than once"):
        plugins.load("a", avail)


def test_object_that_is_not_a_plugin(fake_modules):
    with pytest.raises(PluginError, match="is not a ticketx plugin: it lacks tasks, make_task"):
        plugins.load("x", {"x": [ep("x", "fake_good:not_a_plugin")]})


def test_installed_vision_plugin_is_found_through_its_entry_point():
    pytest.importorskip("ticketx_vision")
    found = plugins.discover({})
    assert "vision" in found and found["vision"][0].dist is not None
    assert "mnist" in plugins.load("vision", found).tasks()
