"""Start `copilot-backend serve` as a child process when the default loopback backend does not answer.

Used by the language server's backend supervisor (which reports `$/progress` while the model loads), by
`copilot-ls complete` and by the evaluation harness.
The child's output goes to a log file (never to our stdout, which is the LSP channel); the child is stopped
when we exit (explicitly, at interpreter exit, and by the kernel via PR_SET_PDEATHSIG if we are killed).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from copilot_ls.backend import BackendClient, BackendError
from copilot_ls.settings import Settings

Progress = Callable[[str], None]


LOG_KEEP_S = 24 * 3600  # a dead process's log (kept because its backend failed) is removed after a day


def log_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "copilot-ls"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path(tempfile.gettempdir())
    prune_logs(base)
    return base / f"backend-{os.getpid()}.log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def prune_logs(base: Path, *, now: float | None = None) -> None:
    """Remove backend-<pid>.log files of processes that are gone, once older than LOG_KEEP_S."""
    now = time.time() if now is None else now
    for f in base.glob("backend-*.log"):
        pid = f.stem.removeprefix("backend-")
        try:
            if pid.isdigit() and not _pid_alive(int(pid)) and now - f.stat().st_mtime > LOG_KEEP_S:
                f.unlink()
        except OSError:
            continue


def backend_command(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    host = "127.0.0.1" if host == "localhost" else host
    port = parts.port or 80  # where the client will look (a URL without a port means 80, not 8765)
    return [
        sys.executable,
        "-m",
        "model_backend.cli",
        "serve",
        "--model",
        "default",
        "--host",
        host,
        "--port",
        str(port),
    ]


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    for line in reversed(text.replace("\r", "\n").splitlines()):
        if line.strip():
            return line.strip()[:200]
    return ""


class BackendProcess:
    """A `copilot-backend serve` child process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.log = log_path()
        self.command = backend_command(url)
        # the child imports model_backend from where copilot_ls comes from (also when not pip-installed)
        root = str(Path(__file__).resolve().parents[2])
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        )
        try:
            with open(self.log, "wb") as log:
                self.popen = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
        except OSError as exc:
            raise BackendError(
                f"cannot start `copilot-backend serve` ({' '.join(self.command)}): {exc}", kind="unreachable"
            ) from exc
        atexit.register(self.stop)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def last_output(self) -> str:
        return _last_line(_tail(self.log))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child. Its log is removed unless the child had failed on its own (then it stays, for the
        user to read, until prune_logs removes it a day later)."""
        failed = self.popen.poll() not in (None, 0)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if not failed:
            with contextlib.suppress(OSError):
                self.log.unlink()
        atexit.unregister(self.stop)


async def wait_ready(
    client: BackendClient,
    proc: BackendProcess | None,
    *,
    progress: Progress | None = None,
    timeout: float = 900.0,
) -> None:
    """Poll /health until ready; BackendError if the child dies or `timeout` passes."""
    start = time.monotonic()
    shown = ""
    while True:
        try:
            if await client.health() == "ready":
                return
        except BackendError as exc:
            if exc.kind not in ("unreachable", "timeout"):
                raise
        if proc is not None and not proc.alive():
            raise BackendError(
                f"`copilot-backend serve` exited with code {proc.popen.returncode}: "
                f"{proc.last_output() or 'no output'} (log: {proc.log})",
                kind="unreachable",
            )
        if time.monotonic() - start > timeout:
            raise BackendError(
                f"backend at {client.base_url} was not ready after {timeout:.0f} s", kind="timeout"
            )
        line = proc.last_output() if proc is not None else "waiting for the backend"
        if progress is not None and line and line != shown:
            progress(line)
            shown = line
        await asyncio.sleep(0.25)


async def ensure_backend(
    client: BackendClient, settings: Settings, *, progress: Progress | None = None
) -> BackendProcess | None:
    """Make sure the backend answers; start our own when allowed (see Settings.should_autostart).

    Returns the child process we started (the caller stops it on exit), or None when one was already running.
    Raises BackendError when the backend is unreachable and may not or could not be started.
    """
    try:
        state = await client.health()
    except BackendError as exc:
        if exc.kind != "unreachable" or not settings.should_autostart():
            raise
        state = None
    if state == "ready":
        return None
    if state == "loading":  # somebody else's backend is loading: wait for it
        await wait_ready(client, None, progress=progress)
        return None
    if progress is not None:
        progress(f"starting copilot-backend on {settings.backend_url}")
    proc = BackendProcess(settings.backend_url)
    try:
        await wait_ready(client, proc, progress=progress)
    except BaseException:
        proc.stop()
        raise
    return proc
