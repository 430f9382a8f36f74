"""Shared fixtures: ONE real `copilot-backend serve --model default` process per pytest session.

    def test_x(backend_url):             # "http://127.0.0.1:PORT", /health already 200
    def test_y(start_backend):           # start_backend("--api-key", "k") -> BackendServer (stopped at the end)
    start_backend_module                 # the same, for a server shared by one module's tests

The server binds port 0; its one stdout line ("copilot-backend: listening on http://127.0.0.1:PORT") gives the
real port. Its stderr (loading progress, errors) goes to a log file whose tail is shown when something fails.
"""

from __future__ import annotations

import os

# Before anything imports torch (here and in every child process): OpenMP threads that spin-wait make torch
# 10-30x slower when the test machine's cores are shared with other busy processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(r"listening on (http://\S+)")
READY_TIMEOUT = float(os.environ.get("COPILOT_TEST_BACKEND_TIMEOUT", "600"))


class BackendServer:
    """A `copilot-backend serve` child process on a free loopback port."""

    def __init__(self, *args: str, model: str = "default", env: dict[str, str] | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="copilot-backend-", suffix=".log")[1])
        self.command = [
            sys.executable,
            "-m",
            "model_backend.cli",
            "serve",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ]
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.stdout_lines: list[str] = []
        self.url = self._read_url(timeout=120)

    def _read_url(self, timeout: float) -> str:
        found: list[str] = []

        def reader() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                m = LISTEN_RE.search(line)
                if m and not found:
                    found.append(m.group(1))

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"backend did not print its address (exit {self.proc.returncode}):\n{tail}"
                )
            time.sleep(0.02)
        return found[0]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"backend not ready (exit {self.proc.poll()}):\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self._log_file.close()
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def backend_server() -> Iterator[BackendServer]:
    server = BackendServer()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def backend_url(backend_server: BackendServer) -> str:
    """Base URL of the session's `copilot-backend serve --model default` (ready)."""
    return backend_server.url


def _starter() -> Iterator[Callable[..., BackendServer]]:
    started: list[BackendServer] = []

    def start(*args: str, model: str = "default", env: dict[str, str] | None = None) -> BackendServer:
        server = BackendServer(*args, model=model, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_backend() -> Iterator[Callable[..., BackendServer]]:
    """Start extra servers with other flags: start_backend("--api-key", "k", model="default"). Not yet ready;
    call .wait_ready(). Stopped at the end of the test."""
    yield from _starter()


@pytest.fixture(scope="module")
def start_backend_module() -> Iterator[Callable[..., BackendServer]]:
    """Like start_backend, for servers shared by the tests of one module (stopped at its end)."""
    yield from _starter()
