"""Listing the nlp tasks and refusing a bad option import neither the task nor the model and data modules,
so that `ticketx tasks` and a recipe's errors answer without them. Each check runs in a fresh interpreter:
this test session has imported all of them already."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("ticketx_nlp.task", "ticketx_nlp.models", "ticketx_nlp.data", "ticketx_nlp.batching", "ticketx.training")

SCRIPT = """
import json, sys
from ticketx.task import TaskError
from ticketx_nlp.plugin import NLPPlugin

def loaded():
    return sorted(m for m in sys.modules if m in HEAVY)

plugin = NLPPlugin()
assert "word_lm" in plugin.tasks()
stages = {"tasks": loaded()}
for name, options in (("word_lm", {"corpus": "c", "bogus": 1}), ("word_lm", {"corpus": "c", "bptt": 0}),
                      ("classify", {"bogus": 1}), ("classify", {"dataset": "sst3"})):
    try:
        plugin.make_task(name, options, data_root=None)
    except TaskError:
        pass
    else:
        raise SystemExit(f"{name} options {options} were not refused")
stages["refused"] = loaded()
plugin.make_task("word_lm", {"corpus": "c"}, data_root=None)  # builds the task (reads nothing yet)
stages["built"] = loaded()
print(json.dumps(stages))
"""


def test_tasks_and_refused_options_import_no_task_module() -> None:
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{SCRIPT}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    stages = json.loads(done.stdout.splitlines()[-1])
    assert stages["tasks"] == [], "importing the plugin and listing its tasks imported these"
    assert stages["refused"] == [], "refusing an unknown option or a bad value imported these"
    assert "ticketx_nlp.task" in stages["built"]  # the check sees imports where there are some
