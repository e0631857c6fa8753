"""The Ray backend of the worker pool: the same units, on the actors of a Ray cluster.

`pip install "ticketx[ray]"`, then `--backend ray` (a local cluster of `--workers` CPUs) or
`--backend ray --address HOST:PORT` (or `RAY_ADDRESS`) for a running cluster. The core's scheduler
(`ticketx.pool.run`) is the same as for the local process pool: levels of one replicate stay in order,
everything else fans out. Each worker is a Ray actor that builds the job's `Work` once, asking Ray for
one CPU (and `gpus_per_worker` GPUs); a worker process that dies is restarted and its unit retried up to
`max_retries` times, and then the job fails with the unit and the node named. A unit's own error is not
retried: it fails the job at once, as with the local pool. Finished units stay recorded in the job folder
and MLflow, and a re-run skips them.

Workers run in the driver's working folder, so the job folder (`--out`), relative data roots and a local
MLflow store must be visible at the same path on every node: one machine, or a shared file system. An
MLflow server (`MLFLOW_TRACKING_URI=http://...`) is the record to use across machines. The driver's
ticketx and MLflow settings (`TICKETX_*`, `MLFLOW_*`, `PYTHONPATH`) are passed to the workers.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from .pool import Key, Progress, Work, WorkerError

FORWARDED = ("TICKETX_", "MLFLOW_", "PYTHONPATH")


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WorkerError('--backend ray needs Ray: pip install "ticketx[ray]" (or pip install ray)') from None
    return ray


class _Worker:
    """One Ray actor: builds the job once, then runs units. Errors come back as values, so that a unit's
    own error is reported in one line and never retried (Ray retries only a worker that died)."""

    def __init__(self, work: Work, events: str, threads: int, cwd: str) -> None:
        import ray
        self.node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, pid {os.getpid()})"
        self.error = ""
        self.runner = None
        if not os.path.isdir(cwd):
            self.error = (f"the driver's working folder {cwd} does not exist on this node: the job folder, "
                          "data and a local MLflow store must be on storage every node sees")
            return
        os.chdir(cwd)
        queue = ray.get_actor(events)  # by name: a handle passed in would make Ray warn that a restart may fail
        from .training import configure_torch
        configure_torch(threads)

        def progress(event: str, info: Mapping[str, Any]) -> None:
            ray.get(queue.put_nowait.remote((event, dict(info))))

        try:
            self.runner = work.build(progress)
        except Exception as e:  # a plugin missing on this node, a dataset it cannot read, ...
            self.error = f"{type(e).__name__}: {e}"

    def pid(self) -> int:
        return os.getpid()

    def run(self, key: Key) -> tuple[str, Any]:
        if self.runner is None:
            return "error", f"worker {self.node} could not set up the job: {self.error}"
        try:
            return "ok", self.runner(key)
        except Exception as e:
            return "error", f"{key} failed on worker {self.node}: {type(e).__name__}: {e}"


class RayBackend:
    """Units on Ray actors; see the module docstring."""

    def __init__(self, address: str | None = None, *, max_retries: int = 2, gpus_per_worker: float = 0.0,
                 env: Mapping[str, str] | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.env = dict(_forwarded_env() if env is None else env)  # the workers' environment variables
        self.max_retries, self.gpus = max_retries, gpus_per_worker
        self.actors: list[Any] = []
        self.free: list[Any] = []
        self.busy: dict[Future, Any] = {}
        self.events: Any = None
        self.started_here = False

    def check(self, timeout: float = 5.0) -> None:
        """Fail fast, naming the address, when Ray is not installed or the cluster's port does not answer
        (Ray itself retries for minutes); called before a job opens any MLflow run."""
        _import_ray()
        if not self.address or self.address == "auto":
            return
        hostport = self.address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise WorkerError(f"--address takes HOST:PORT (or ray://HOST:PORT), got {self.address!r}")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as e:
            raise WorkerError(f"cannot reach the Ray cluster at {self.address}: {e}; start it with `ray start "
                              "--head` there, or leave --address and RAY_ADDRESS unset for a local one") from None

    def _auth_hint(self, error: Exception) -> str:
        """Why a cluster whose port answered may still refuse us: since Ray 2.59 `ray start` turns token
        authentication on, while a client without RAY_AUTH_MODE=token sends no token (Ray then retries for
        ~20 s and reports only 'Failed to connect')."""
        if not self.address or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return ""
        if not isinstance(error, ConnectionError) and "auth" not in str(error).lower():
            return ""
        return ("; its port answers, so it may require token authentication (Ray >= 2.59 turns it on for "
                "`ray start`): `export RAY_AUTH_MODE=token` here, with the cluster's token in ~/.ray/auth_token, "
                "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it); "
                "`ray status` tells whether this machine gets in")

    def describe(self) -> str:
        return f"Ray cluster at {self.address}" if self.address else "a local Ray cluster"

    def start(self, work: Work, *, workers: int, threads: int) -> int:
        ray = _import_ray()
        if not ray.is_initialized():
            self.check()
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    n = workers or (os.cpu_count() or 1)
                    ray.init(num_cpus=n, num_gpus=int(self.gpus * n + 0.999) or None,
                             include_dashboard=False, log_to_driver=False)
            except Exception as e:  # ConnectionError, RuntimeError, ...: Ray's own words, with the address
                raise WorkerError(f"cannot start or reach {self.describe()}: {type(e).__name__}: {e}"
                                  f"{self._auth_hint(e)}") from None
            self.started_here = True
        cpus = ray.cluster_resources().get("CPU", 0)
        workers = workers or int(cpus)
        if workers < 1 or cpus < workers:
            raise WorkerError(f"{self.describe()} has {cpus:g} CPUs, fewer than --workers {workers}: lower "
                              "--workers or add nodes")
        if getattr(work, "wants_gpu", False) and not self.gpus:
            # the job trains on CUDA: the workers share the cluster's GPUs evenly (Ray shows each actor
            # only its GPU, as cuda:0); several actors on one GPU take a fraction of it each
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus < 1:
                raise WorkerError(f"the job trains on CUDA but {self.describe()} has no GPUs: start its nodes "
                                  "on GPU machines, or set --device cpu")
            self.gpus = min(1.0, int(gpus) / workers)
        from ray.util.queue import Queue
        events = f"ticketx-events-{uuid.uuid4().hex}"
        self.events = Queue(actor_options={"num_cpus": 0, "name": events})
        actor = ray.remote(_Worker).options(num_cpus=1, num_gpus=self.gpus, max_restarts=self.max_retries,
                                            max_task_retries=self.max_retries,
                                            runtime_env={"env_vars": self.env} if self.env else None)
        self.actors = [actor.remote(work, events, threads, os.getcwd()) for _ in range(workers)]
        self.free = list(self.actors)
        return workers

    def submit(self, key: Key) -> Future:
        actor = self.free.pop()
        ref = actor.run.remote(key)
        fut = ref.future()
        self.busy[fut] = actor
        return fut

    def result(self, fut: Future, key: Key) -> dict[str, Any]:
        """The unit's record, or WorkerError naming the unit (and the node, when Ray knows it)."""
        ray = _import_ray()
        actor = self.busy.pop(fut)
        try:
            status, value = fut.result()
        except ray.exceptions.RayActorError as e:
            raise WorkerError(f"a Ray worker died while running {key} and was restarted and retried "
                              f"{self.max_retries} time(s) without success: {str(e).splitlines()[0]}") from None
        except ray.exceptions.RayError as e:
            raise WorkerError(f"Ray failed to run {key}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        self.free.append(actor)
        if status != "ok":
            raise WorkerError(value)
        return value

    def drain(self, progress: Progress) -> None:
        if self.events is None:
            return
        n = self.events.qsize()
        if n:
            for event, info in self.events.get_nowait_batch(n):
                progress(event, info)

    def close(self, progress: Progress) -> None:
        if not self.actors and not self.started_here:
            return  # never started (no Ray, or no cluster): nothing to stop
        ray = _import_ray()
        if ray.is_initialized():
            self.drain(progress)
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors, self.free = [], []
        if self.events is not None:
            ray.kill(self.events.actor)
            self.events = None
        if self.started_here:
            ray.shutdown()
