"""Listing the vision tasks and refusing a bad option import neither torchvision nor the task, model and
data modules, so that `ticketx tasks` and a recipe's errors answer without them. Each check runs in a
fresh interpreter: this test session has imported all of them already."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torchvision", "ticketx_vision.task", "ticketx_vision.data", "ticketx_vision.models")

SCRIPT = """
import json, sys
from ticketx.task import TaskError
from ticketx_vision.plugin import VisionPlugin

def loaded():
    return sorted(m for m in sys.modules if m in HEAVY)

plugin = VisionPlugin()
assert "mnist" in plugin.tasks()
stages = {"tasks": loaded()}
for options in ({"bogus": 1}, {"model": "nope"}, {"path": "x"}):
    try:
        plugin.make_task("mnist", options, data_root=None)
    except TaskError:
        pass
    else:
        raise SystemExit(f"options {options} were not refused")
stages["refused"] = loaded()
plugin.make_task("mnist", {}, data_root=None)  # a good recipe builds the task: its module is imported now
stages["built"] = loaded()
print(json.dumps(stages))
"""


def test_tasks_and_refused_options_import_no_torchvision() -> None:
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{SCRIPT}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    stages = json.loads(done.stdout.splitlines()[-1])
    assert stages["tasks"] == [], "importing the plugin and listing its tasks imported these"
    assert stages["refused"] == [], "refusing an unknown option or a bad value imported these"
    assert "ticketx_vision.task" in stages["built"]  # the check sees imports where there are some
