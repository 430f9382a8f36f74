"""The backend's lifecycle as the language server sees it: one `BackendClient`, a shared startup check (which may
start our own `copilot-backend serve` child, see autostart.py), the outage state with its backoff, and the
messages and progress of all that, reported through plain callbacks that the LSP server wires to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from copilot_ls import pipeline
from copilot_ls.backend import BackendClient, BackendError, ModelMeta
from copilot_ls.lsp import autostart
from copilot_ls.lsp.timing import Backoff
from copilot_ls.settings import Settings

log = logging.getLogger("copilot_ls")

# (logging level, message, show it to the user too): the server logs it and sends window/logMessage
Say = Callable[..., None]

# HTTP statuses that refuse one request (400 invalid request, 413 too large, 422 TGI's validation error)
REFUSED = (400, 413, 422)
PROGRESS_TITLE = "copilot-ls: starting the model backend"


class ProgressSink(Protocol):
    """Where a backend start reports its progress (the server: `$/progress` with work-done tokens)."""

    async def create(self, token: str) -> None: ...
    def begin(self, token: str, title: str, message: str) -> None: ...
    def report(self, token: str, message: str) -> None: ...
    def end(self, token: str, message: str | None) -> None:
        """Close `token`: with a message when progress was begun, None when nothing was shown."""


class _StartProgress:
    """The progress of one backend start: logged, and with a created token also begun with its first line and
    reported line by line (`$/progress` for a token the client never created is a protocol error)."""

    def __init__(self, sink: ProgressSink | None, token: str) -> None:
        self.sink, self.token, self.begun = sink, token, False

    def __call__(self, message: str) -> None:
        log.info("backend: %s", message)
        if self.sink is None:
            return
        if not self.begun:
            self.sink.begin(self.token, PROGRESS_TITLE, message)
            self.begun = True
        else:
            self.sink.report(self.token, message)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.end(self.token, "backend ready" if self.begun else None)


class Supervisor:
    """Owns the backend client and our child process; requests ask it for a ready client and report failures."""

    def __init__(self, settings: Callable[[], Settings], say: Say) -> None:
        self._settings = settings
        self.say = say
        self.progress: ProgressSink | None = None  # set by the server when the client takes $/progress
        self.backoff = Backoff()
        self.client: BackendClient | None = None
        self.child: autostart.BackendProcess | None = None
        self._startup: asyncio.Task | None = None
        self._starts = 0
        self._refusals_shown: set[int | None] = set()
        self._watcher: asyncio.Task | None = None  # retries a lost backend in the background

    def backend(self) -> BackendClient:
        """The client for the current settings (made on first use)."""
        if self.client is None:
            s = self._settings()
            self.client = BackendClient(
                s.backend_url, api_key=s.api_key, model=s.model, timeout=s.timeout, endpoint=s.endpoint
            )
        return self.client

    async def ready(self) -> BackendClient:
        """The backend client, after the (shared, not cancellable by one request) startup check."""
        client = self.backend()
        if self._startup is None or (
            self._startup.done() and (self._startup.cancelled() or self._startup.exception() is not None)
        ):
            self._startup = asyncio.ensure_future(self._start(client))
        await asyncio.shield(self._startup)
        return client

    def starting(self) -> bool:
        return self._startup is not None and not self._startup.done()

    async def _start(self, client: BackendClient) -> None:
        """Find the backend, or start our child and wait until it answers, with progress."""
        self._starts += 1
        token, sink = f"copilot-ls/backend/{self._starts}", None
        if (
            self.progress is not None and self._settings().should_autostart()
        ):  # starting ours is what takes long
            try:
                await self.progress.create(token)
                sink = self.progress
            except Exception:
                self.progress = None
        progress = _StartProgress(sink, token)
        try:
            if self.child is not None and self.child.alive() and self.child.url == client.base_url:
                await autostart.wait_ready(client, self.child, progress=progress)  # ours, still there
                child = None
            else:
                child = await autostart.ensure_backend(client, self._settings(), progress=progress)
        finally:
            progress.close()
        if child is not None:
            if self.child is not None:
                self.child.stop()
            self.child = child
            self.say(logging.INFO, f"started copilot-backend (pid {child.popen.pid}) on {client.base_url}")

    async def start(self) -> bool:
        """The check at initialization (finds the backend or starts ours); False, and an outage, when it fails."""
        try:
            await self.ready()
        except BackendError as exc:
            self.failed(exc)
            return False
        return True

    def failed(self, exc: BackendError) -> None:
        """A request (or the startup check) failed: an outage, told to the user once."""
        if self.client is not None:
            self.client._meta = None  # the model may differ when it comes back
        lost = (self.child is not None and not self.child.alive()) or exc.kind == "unreachable"
        if lost:
            self._startup = None  # re-check (and restart our child) on the next try
        if self.backoff.failed(str(exc)):
            self.say(logging.WARNING, f"no completions: {exc}. Retrying in the background.", show=True)
        else:
            log.info("backend still failing (retry in %.1f s): %s", self.backoff.retry_in(), exc)
        if lost and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.ensure_future(self._retry_lost(self.backend()))

    async def _retry_lost(self, client: BackendClient) -> None:
        """Retry a lost backend at the backoff's times, without waiting for a keystroke, until it answers
        (reported by `succeeded`), the settings name another backend, or a request finds it back first."""
        while self.backoff.failures and self.client is client:
            await asyncio.sleep(max(self.backoff.retry_in(), 0.05))
            if not self.backoff.failures or self.client is not client:
                return
            if not self.backoff.ready():
                continue  # a request failed meanwhile and pushed the next try back
            try:
                await self.ready()
                state = await client.health()
            except BackendError as exc:
                self.failed(exc)
                continue
            if state == "ready":
                self.succeeded(client)
            else:
                self.failed(BackendError(f"backend at {client.base_url} is {state}", kind="loading"))

    def refused(self, exc: BackendError) -> None:
        """The backend answered, but refused this one request (a prompt over another server's context, a
        parameter it does not take): no outage for the others. Shown once per HTTP status."""
        show = exc.status not in self._refusals_shown
        self._refusals_shown.add(exc.status)
        self.say(logging.WARNING, f"the backend refused a completion request: {exc}", show=show)

    def succeeded(self, client: BackendClient) -> None:
        if self.backoff.succeeded():
            self.say(logging.INFO, f"backend at {client.base_url} answers again")

    def settings_changed(self, old: Settings, new: Settings) -> bool:
        """Drop the client when the backend's address, key, model, timeout or endpoint changed; True when it did."""
        if (old.backend_url, old.api_key, old.model, old.timeout, old.endpoint) == (
            new.backend_url,
            new.api_key,
            new.model,
            new.timeout,
            new.endpoint,
        ) or self.client is None:
            return False
        stale, self.client = self.client, None
        self._startup = None
        self._stop_watching()
        self.backoff.succeeded()
        # requests in flight still use the old client: close it once they are surely done
        asyncio.get_running_loop().call_later(old.timeout + 5, lambda: asyncio.ensure_future(stale.aclose()))
        return True

    def status(self) -> dict:
        """The `backend` part of `copilot-ls.status`."""
        s, child = self._settings(), self.child
        meta = self.client._meta if self.client is not None else None
        return {
            "url": s.backend_url,
            "model": s.model or (meta.id if meta is not None else None),
            "state": "failing" if self.backoff.failures else "starting" if self.starting() else "ok",
            "last_error": self.backoff.last_error,
            "retry_in_s": round(self.backoff.retry_in(), 2),
            "autostarted_pid": child.popen.pid if child is not None and child.alive() else None,
            "fim_template": _fim_name(meta, s.fim_template),
        }

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def stop(self) -> None:
        """At shutdown and exit: no more retries, and our child (if any) stopped."""
        self._stop_watching()
        if self.child is not None:
            self.child.stop()
            self.child = None


def _fim_name(meta: ModelMeta | None, setting: str) -> str | None:
    """The FIM template family prompts use ("none" for prefix-only), or None before the model is known."""
    if meta is None:
        return None
    tpl = pipeline.fim_template(meta, setting)
    return tpl.family if tpl is not None else "none"
