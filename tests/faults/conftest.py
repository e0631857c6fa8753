"""The fault-injection suite (`make faults`): kills, hostile tickets, a dying tracking server, a full disk.

Collected only when TICKETX_FAULTS=1 (the `faults` target sets it), so `make test` and a plain `pytest`
never run it. Each test reports one figure through the `figures` fixture; the figures are printed at the
end of the run, and a test whose figure falls short fails, so `make faults` exits non-zero.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("TICKETX_FAULTS") == "1"

if not ENABLED:
    collect_ignore_glob = ["*"]
else:
    sys.path.insert(0, str(HERE))  # harness, faulty: importable here and, through PYTHONPATH, in subprocesses

_FIGURES: list[tuple[str, bool]] = []


class Figures:
    """Where each fault test records the line it prints at the end, and whether it met its bar."""

    def report(self, line: str, ok: bool) -> None:
        _FIGURES.append((line, ok))
        print(line)


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault figures")
    for line, ok in _FIGURES:
        terminalreporter.write_line(f"{line}{'' if ok else '   <-- FALLS SHORT'}")


if ENABLED:
    from harness import reference_find, mlflow_server, workdir  # noqa: E402,F401  (session fixtures)
