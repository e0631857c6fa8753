"""Files written atomically: through a temporary file beside the target, renamed into place.

A write that fails (disk full, a read-only folder) removes its temporary file and raises FileWriteError,
one line naming the file, and leaves the file it would have replaced as it was. No torch here: `ticketx
report` writes through it too. Tickets (folders of three files, fsynced) have their own writer in
`ticketx.ticket`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError  # the Rust extension only: importing it does not import torch


class FileWriteError(OSError):
    """A file could not be written (disk full, folder read-only); the message names the file. The file it
    would have replaced is untouched, so the same command can run again once the cause is fixed."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        raise FileWriteError(f"cannot write {path}: {why}; the files written before it are intact: free the "
                             "space (or fix the folder) and run the same command again (a job resumes where "
                             "it stopped)") from e


def write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    """Write JSON (indented) atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys)))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as CSV atomically; the columns are the union of the rows' keys, in first-seen order."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)
