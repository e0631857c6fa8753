"""Signals that stop a job (Ctrl-C, SIGTERM, SIGHUP), held back while a run is created or ended.

A handler installed by the `ticketx` command or a pool worker calls `interrupt` instead of raising
KeyboardInterrupt itself. Inside a `held()` block (an MLflow run being created and recorded as the job's,
or ended with its result written) the interruption waits and is raised when the block ends, so that a
signal never leaves a run RUNNING that nothing knows to end. Blocking the signal with pthread_sigmask
would not do: a process-directed signal may be taken by any of MLflow's or torch's threads, and Python
runs its handler in the main thread regardless of the main thread's mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: type[BaseException] | None = None


def interrupt(error: type[BaseException] = KeyboardInterrupt) -> None:
    """Raise `error` now, or, inside `held()`, when the outermost block ends."""
    global _pending
    if _depth:
        _pending = _pending or error
        return
    raise error


@contextmanager
def held() -> Iterator[None]:
    """Hold interruptions back for the block; one that came meanwhile is raised as it ends (unless the block
    is already ending in an error, which then goes on as it is)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if not _depth:
            _pending = None  # the error ends what the interruption would have
        raise
    _depth -= 1
    if not _depth and _pending is not None:
        error, _pending = _pending, None
        raise error
