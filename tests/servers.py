"""A real `mlflow server` on 127.0.0.1 for tests: its own sqlite store and artifact folder, started as a
process group and stopped by its PID (the CLI and its uvicorn workers go together)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port that was free a moment ago (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> bool:
    """True once `url` answers 200 within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group `pgid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


class Server:
    """`mlflow server` on 127.0.0.1 over one sqlite store and artifact folder; started and stopped by PID."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.popen: subprocess.Popen | None = None
        self.log = root / "server.log"

    def start(self, timeout: float = 180) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        args = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1"]
        quiet = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners
        with open(self.log, "a") as log:
            self.popen = subprocess.Popen(args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, env=quiet)
        if not wait_http(f"{self.uri}/health", timeout):
            self.stop()
            pytest.fail(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s: "
                        f"{self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the server (its PID's process group: the CLI and its uvicorn workers)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(20)
        deadline = time.monotonic() + 20
        while group_members(self.popen.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.popen = None
