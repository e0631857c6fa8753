"""Independent arms side by side: a dependency-ordered pool of one-thread worker processes.

On 2 cores two one-thread processes beat one two-thread process (DESIGN.md), so parallelism comes from
processes. A job is a set of units (one arm of one level of one replicate, say), each naming the units it
needs first; every unit reads its inputs from, and writes its results to, the job folder, so running units
in another process or another order gives the same numbers as running them one at a time. With
`workers=1` nothing is spawned. A worker that raises or dies fails the job with its error after the units
already running have finished; their results stay in the job folder and a re-run skips them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queuelib
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

Key = Hashable
Progress = Callable[[str, Mapping[str, Any]], None]


class Work(Protocol):
    """A picklable description of a job that each worker process turns into a unit runner."""

    def build(self, progress: Progress) -> Callable[[Key], dict[str, Any]]:
        """Set up the task, tracker and job folder in this process; return `run(key) -> record`."""


class WorkerError(RuntimeError):
    """A unit failed in a worker process; the message names the unit and the worker's error."""


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return max(1, os.cpu_count() or 1)


GPU_WORKERS = 2  # default arms per GPU (benchmarks/gpu.py times 1 against 2; not yet run on a GPU)


def _script_hint() -> str:
    """Where the parent is a Python script, the likeliest reason its workers die at once: each worker
    imports the script again (multiprocessing's spawn), and a top-level call to ticketx.find starts
    another job there."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) is None or getattr(main, "__spec__", None) is not None:
        return ""  # a notebook, the REPL, `python -m`, the ticketx command: nothing to guard
    return ("; if this script calls ticketx.find or ticketx.transfer at its top level, put the call under "
            "`if __name__ == \"__main__\":` (each worker process imports the script), or pass workers=1")


def worker_task(config: Any, data_root: Any) -> tuple[Any, str]:
    """In a worker: the job's task rebuilt through its plugin from `config.task`, its data prepared, and
    the device this worker trains on (GPU `worker_index() mod count` under CUDA)."""
    from . import devices, plugins
    c = config
    task = plugins.make_task(c.task.plugin, c.task.name, c.task.options, available=plugins.discover(),
                             data_root=data_root)
    task.prepare()
    return task, devices.job_device(c.train.device, task, worker=worker_index(), precision=c.train.precision)


def job_workers(option: int | None, backend: str = "local", cfg: Any = None, task: Any = None) -> int:
    """How many workers a job runs: `option` (--workers) when given; else one per core, and on CUDA
    GPU_WORKERS per GPU the job may use (at most one per core); on Ray 0, one per CPU of the cluster."""
    if backend == "ray":
        return option or 0
    if option:
        return option
    if cfg is not None:
        from . import devices
        spec = cfg.train.device
        if devices.job_device(spec, task).startswith("cuda"):
            gpus = 1 if spec.startswith("cuda:") else devices.gpu_count()  # cuda:N pins every worker to one
            return max(1, min(default_workers(), GPU_WORKERS * gpus))
    return default_workers()


def _order(units: Mapping[Key, tuple[Key, ...]]) -> list[Key]:
    """Keys with every unit after its dependencies, otherwise as close to the input order as can be."""
    done: set[Key] = set()
    out: list[Key] = []
    pending = list(units)
    while pending:
        k = next((k for k in pending if all(d in done or d not in units for d in units[k])), None)
        if k is None:
            raise ValueError(f"units depend on each other in a cycle: {pending}")
        done.add(k)
        out.append(k)
        pending.remove(k)
    return out


# one worker process serves one job: its runner is built once by the initializer and kept here
_runner: Callable[[Key], dict[str, Any]] | None = None
_worker_index = 0  # this process's number among the pool's workers (0 outside a pool): which GPU it takes


def worker_index() -> int:
    """This process's number among the job's workers, counted from 0 as they start (a worker that replaces
    a dead one takes the next number); 0 in the job's own process and in a Ray actor."""
    return _worker_index


_busy = False  # this worker is training a unit now
_stopping = False


def _on_term(signum: int, frame: Any) -> None:
    """SIGTERM in a worker (the CLI forwards the job's SIGTERM or SIGHUP): a unit in training stops as on
    Ctrl-C (KeyboardInterrupt: its run is marked KILLED); an idle worker ends quietly."""
    global _stopping
    if _stopping:  # again (the pool terminating its workers): the first is being handled, but not forever
        if not _busy:
            os._exit(128 + signum)
        threading.Timer(10.0, os._exit, args=(128 + signum,)).start()  # time to mark the run KILLED
        return
    _stopping = True
    if _busy:
        from .signals import interrupt
        interrupt()  # KeyboardInterrupt now, or once the run being created or ended is known to the arm
        return
    os._exit(128 + signum)


def _on_int(signum: int, frame: Any) -> None:
    """Ctrl-C in a worker (a terminal signals the whole process group): KeyboardInterrupt, held back while
    a run is being created or ended (`ticketx.signals`)."""
    from .signals import interrupt
    interrupt()


def _init_worker(work: Work, events: Any, threads: int, parent: int, counter: Any = None) -> None:
    global _runner, _worker_index
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_int)
    _exit_with_parent(parent)  # first: the parent may have died while this process was importing
    if counter is not None:
        with counter.get_lock():
            _worker_index = counter.value
            counter.value += 1
    from .training import configure_torch
    configure_torch(threads)
    _runner = work.build(lambda event, info: events.put((event, dict(info))))


def _exit_with_parent(parent: int) -> None:
    """End this worker when the job's process is gone (killed with -9, say), instead of idling forever."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="ticketx-parent-watch").start()


def _run_unit(key: Key) -> dict[str, Any]:
    global _busy
    assert _runner is not None, "worker used before its initializer ran"
    _busy = True
    try:
        return _runner(key)
    finally:
        _busy = False
        if _stopping:  # told to stop: never back to waiting for work, which the pool may never send
            os._exit(128 + signal.SIGTERM)


class Backend(Protocol):
    """Where units run when they run side by side: the local process pool, or Ray (`ticketx.raypool`)."""

    def start(self, work: Work, *, workers: int, threads: int) -> int:
        """Start the workers, each building `work` once; return how many there are."""

    def submit(self, key: Key) -> Future:
        """Run unit `key` on a free worker (the scheduler never has more running than workers)."""

    def result(self, fut: Future, key: Key) -> dict[str, Any]:
        """The finished unit's record, or WorkerError naming the unit and what went wrong."""

    def drain(self, progress: Progress) -> None:
        """Hand the workers' progress events received so far to `progress`."""

    def close(self, progress: Progress) -> None:
        """Stop the workers (the running units have finished or failed); hand over the last events."""


class LocalBackend:
    """One-thread worker processes on this machine (spawned, never forked)."""

    def start(self, work: Work, *, workers: int, threads: int) -> int:
        ctx = mp.get_context("spawn")  # fork after torch and mlflow started threads can deadlock
        self.events = ctx.Queue()  # progress from the workers, handed to them when they start
        counter = ctx.Value("i", 0)  # numbers the workers as they start: worker i trains on GPU i mod count
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(work, self.events, threads, os.getpid(), counter))
        return workers

    def submit(self, key: Key) -> Future:
        return self.pool.submit(_run_unit, key)

    def result(self, fut: Future, key: Key) -> dict[str, Any]:
        try:
            return fut.result()
        except BrokenProcessPool as e:
            raise WorkerError(f"a worker process died while running {key} (killed, or out of memory): {e}"
                              f"{_script_hint()}") from None
        except Exception as e:  # the unit's own error, raised in the worker
            raise WorkerError(f"{key} failed in a worker: {type(e).__name__}: {e}") from e

    def drain(self, progress: Progress) -> None:
        _drain(self.events, progress)

    def close(self, progress: Progress) -> None:
        if not hasattr(self, "pool"):
            return
        try:
            self.pool.shutdown(wait=True)
            _drain(self.events, progress)
        finally:
            self.events.close()


def run(units: Mapping[Key, tuple[Key, ...]], local: Callable[[Key], dict[str, Any]], work: Work, *,
        workers: int, progress: Progress, first: Callable[[Key], Any] = lambda k: 0,
        threads: int = 1, backend: Backend | None = None) -> dict[Key, dict[str, Any]]:
    """Run every unit once its dependencies are done; return records by key, in the units' order.

    Without a `backend` and with `workers` <= 1 the units run here, through `local`, in dependency
    order. Otherwise `work` is built in each of the backend's workers (`workers` of them; for Ray, 0
    asks for one per CPU of the cluster); among the units ready to start, those with the smallest
    `first(key)` start first (the chain other units wait for, say). Before any unit runs, `progress`
    gets the event "plan" with {"total": the number of units, "workers": how many run at once}.
    """
    order = _order(units)
    if backend is None and (workers <= 1 or len(units) <= 1):
        progress("plan", {"total": len(units), "workers": 1})
        results = {k: local(k) for k in order}
        return {k: results[k] for k in units}
    backend = backend or LocalBackend()
    results: dict[Key, dict[str, Any]] = {}
    running: dict[Future, Key] = {}
    failure: WorkerError | None = None
    try:
        slots = backend.start(work, workers=workers, threads=threads)
        progress("plan", {"total": len(units), "workers": slots})
        waiting = list(order)
        while waiting or running:
            if failure is None:
                ready = [k for k in waiting if all(d in results or d not in units for d in units[k])]
                for k in sorted(ready, key=first):  # stable: the units' order among equals
                    if len(running) >= slots:
                        break
                    running[backend.submit(k)] = k
                    waiting.remove(k)
            finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            backend.drain(progress)
            for fut in finished:
                key = running.pop(fut)
                try:
                    results[key] = backend.result(fut, key)
                except WorkerError as e:
                    failure = failure or e
            if failure is not None:
                waiting.clear()  # let the running units finish and keep their results
    finally:
        backend.close(progress)
    if failure is not None:
        raise failure
    return {k: results[k] for k in units}


def _drain(events: Any, progress: Progress) -> None:
    while True:
        try:
            event, info = events.get_nowait()
        except (queuelib.Empty, EOFError, OSError):
            return
        progress(event, info)
