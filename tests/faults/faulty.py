"""The toy plugin with fault hooks, armed by TICKETX_FAULT in the one job process group meant to fail.

A plugin module is imported by the job's process and by every pool worker (each builds the task through
its plugin), so hooks installed here run wherever tickets are written and MLflow is called. With
TICKETX_FAULT unset this is exactly the toy plugin (tests/toy.py). When a hook fires it appends one line
to the file named by TICKETX_FAULT_LOG (fsynced), so the suite knows the moment was hit.

TICKETX_FAULT values:

    ticket-write:N          the N-th ticket file write (masks, weights, ticket.json in turn) of a process
                            writes the first half of its bytes, then SIGKILLs the process group
    mlflow:N:MS             when the N-th MLflow call of a process (create a run, log params, metrics,
                            artifacts, end a run, ...) starts, a timer SIGKILLs the group MS ms later,
                            inside that call or just after it
    disk-full:TICKET:FILE   just before the ticket folder ending in TICKET (e.g. r0/L02/ticket) is
                            saved, FILE grows until the file system is full, then gives back one page:
                            the ticket's first file fits, the next one does not (ENOSPC)
    fsize:TICKET:BYTES      without a small file system: that ticket is saved under a file-size limit
                            of BYTES (RLIMIT_FSIZE, SIGXFSZ ignored): the write fails with EFBIG
"""

from __future__ import annotations

import os
import resource
import signal
import threading

from toy import ToyPlugin, ToyTask  # noqa: F401  (the plugin this module provides)

PAGE = os.sysconf("SC_PAGE_SIZE")


def _log(text: str) -> None:
    path = os.environ.get("TICKETX_FAULT_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {text}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _kill_group() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _ticket_write(n: int) -> None:
    from ticketx import ticket

    original, count = ticket._fsync_write, [0]

    def write(path, data: bytes) -> None:
        count[0] += 1
        if count[0] != n:
            return original(path, data)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        _log(f"ticket-write {n}: killed after {len(data) // 2} of {len(data)} bytes of {path}")
        _kill_group()

    ticket._fsync_write = write


def _mlflow(n: int, ms: float) -> None:
    from ticketx.tracking import Tracker

    original, count = Tracker._call, [0]

    def call(self, what, fn, *args, **kwargs):
        count[0] += 1
        if count[0] == n:
            _log(f"mlflow {n}: kill {ms:g} ms into '{what}'")
            threading.Timer(ms / 1000, _kill_group).start()
        return original(self, what, fn, *args, **kwargs)

    Tracker._call = call


def fill(path: str, leave: int) -> int:
    """Grow `path` until its file system is full, then shrink it by `leave` bytes; return its size."""
    with open(path, "ab") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    size = os.path.getsize(path)
    os.truncate(path, max(0, size - leave))
    return size - leave


def _disk_full(target: str, ballast: str) -> None:
    from ticketx import ticket

    original = ticket.save

    def save(t, path):
        if str(path).endswith(target):
            size = fill(ballast, PAGE)
            _log(f"disk-full: {ballast} grown to {size} bytes before saving {path}")
        return original(t, path)

    ticket.save = save


def _fsize(target: str, limit: int) -> None:
    from ticketx import ticket

    original = ticket.save

    def save(t, path):
        if not str(path).endswith(target):
            return original(t, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
        _log(f"fsize: saving {path} with files limited to {limit} bytes")
        try:
            return original(t, path)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, before)

    ticket.save = save


def _install(spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "ticket-write":
        _ticket_write(int(rest))
    elif kind == "mlflow":
        n, ms = rest.split(":")
        _mlflow(int(n), float(ms))
    elif kind == "disk-full":
        target, ballast = rest.split(":", 1)
        _disk_full(target, ballast)
    elif kind == "fsize":
        target, limit = rest.split(":")
        _fsize(target, int(limit))
    else:
        raise ValueError(f"TICKETX_FAULT: unknown fault {spec!r}")


if os.environ.get("TICKETX_FAULT"):
    _install(os.environ["TICKETX_FAULT"])
