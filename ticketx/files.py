"""Files written atomically: through a temporary file beside the target, renamed into place.

A write that fails (disk full, a read-only folder) removes its temporary file and raises FileWriteError,
one line naming the file, and leaves the file it would have replaced as it was. No torch here: `ticketx
report` writes through it too. Tickets (folders of three files, fsynced) have their own writer in
`ticketx.ticket`.

Files and folders get the permissions of the user's umask, as with any other tool (safetensors writes its
files owner-only, `tempfile.mkdtemp` its folders), so a group sharing a job folder can read it.
`check_writable` is what every command calls on its output folder before it trains or opens a run.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError  # the Rust extension only: importing it does not import torch


class FileWriteError(OSError):
    """A file could not be written (disk full, folder read-only); the message names the file. The file it
    would have replaced is untouched, so the same command can run again once the cause is fixed."""


def umask() -> int:
    """The process's umask, read without changing it (os.umask sets it to read it, which races with
    threads creating files): /proc/self/status on Linux, else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """What open() gives a new file: 0o666 less the umask (0o644 under the usual 0o022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """What mkdir gives a new folder: 0o777 less the umask (0o755 under the usual 0o022)."""
    return 0o777 & ~umask()


def check_writable(folder: Path, what: str) -> Path:
    """Check that files can be created in `folder` (or, where it does not exist yet, in the folder that
    will hold it) before a command does any work; FileWriteError, one line naming the folder, the cause,
    and what would have been written there. Creates nothing that stays."""
    folder = probe = Path(folder)
    try:
        probe = folder.absolute()
        while not probe.exists() and probe != probe.parent:  # the nearest folder that exists
            probe = probe.parent
        if not probe.is_dir():
            raise FileWriteError(f"cannot write {what} in {folder}: {probe} is a file, not a folder")
        fd, name = tempfile.mkstemp(prefix=".ticketx-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except FileWriteError:
        raise
    except OSError as e:
        raise FileWriteError(f"cannot write {what} in {folder}: {e.strerror or e}"
                             + (f" (in {probe})" if probe != folder and probe != folder.absolute() else "")
                             + "; choose another folder (--out) or fix this one's permissions") from None
    return folder


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # safetensors creates its files owner-only
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
