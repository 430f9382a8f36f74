"""LSP wiring only (pygls 2): capabilities, handlers, position encoding, settings, progress, messages.

The logic lives in plain modules: documents (text + tree), pipeline (the one completion path), scheduler
(debounce, supersession, caches, backoff), autostart, stats. stdout is the protocol channel: logs go to stderr
and `window/logMessage`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import traceback
from collections import deque
from contextvars import ContextVar
from typing import Any

from cattrs.errors import ClassValidationError
from cattrs.v import transform_error
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from copilot_ls import autostart, pipeline
from copilot_ls.backend import BackendClient, BackendError, ModelMeta
from copilot_ls.documents import Document, DocumentStore, Snapshot, from_codepoints, to_codepoints
from copilot_ls.scheduler import Backoff, Debouncer, LRUCache, Shown, Superseded, Supersession, TypedAhead
from copilot_ls.settings import Settings, SettingsError, from_dict
from copilot_ls.stats import Stats, UnknownItem

log = logging.getLogger("copilot_ls")
# Milliseconds the current request spent waiting (debounce, backend startup, backend), shared with the task that
# computes it (tasks copy the context; the list is the same object).
_WAITED: ContextVar[list[float]] = ContextVar("waited")


def _wait_add(ms: float) -> None:
    acc = _WAITED.get(None)
    if acc is not None:
        acc[0] += ms

CMD_ACCEPTED = "copilot-ls.accepted"
CMD_PARTIAL = "copilot-ls.partiallyAccepted"
CMD_REJECTED = "copilot-ls.rejected"
CMD_STATUS = "copilot-ls.status"


class CopilotProtocol(LanguageServerProtocol):
    """pygls's protocol with two changes: utf-8 positions whenever the client offers them, and documents kept
    only in our DocumentStore (pygls's own copy would re-split the whole text on every keystroke)."""

    def structure_message(self, data: dict[str, Any]):
        """pygls drops a request whose params do not validate (a negative position, a wrong type) without any
        response, so the client waits for it forever: answer such a request with the JSON-RPC error."""
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and "method" in data and "error" not in data and "result" not in data:
                cause = exc.__cause__
                detail = "; ".join(transform_error(cause)) if isinstance(cause, ClassValidationError) else cause
                message = f"{exc.message} for {data['method']}" + (f": {detail}" if detail else "")
                self._send_response(data["id"], error=types.ResponseError(code=exc.code, message=message))
            raise

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        general = params.capabilities.general
        offered = list(general.position_encodings or []) if general is not None else []
        if any(str(getattr(e, "value", e)) == "utf-8" for e in offered):
            general.position_encodings = [types.PositionEncodingKind.Utf8]
        return (yield from super().lsp_initialize(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


def line_text(doc: Document | Snapshot, line: int) -> str:
    """One line of a document without its line break ("" past the end)."""
    a = doc.offset(line, 0)
    return doc.text[a: doc.offset(line, 1 << 40)]


class CopilotServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("copilot-ls", "0.1.0", protocol_cls=CopilotProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.store = DocumentStore()
        self.settings = Settings()
        self.stats = Stats()
        self.debouncer = Debouncer(self.settings.debounce_ms)
        self.supersession = Supersession()
        self.typed = TypedAhead()
        self.cache: pipeline.RawCache = LRUCache(self.settings.cache_size)
        self.backoff = Backoff()
        self.counters = {"requests": 0, "items": 0, "backend_calls": 0, "cache_hits": 0, "typed_ahead": 0,
                         "superseded": 0, "cancelled": 0, "stale": 0, "errors": 0, "refused": 0}
        self._refusals_shown: set[int | None] = set()
        self.client: BackendClient | None = None
        self.child: autostart.BackendProcess | None = None
        self._startup: asyncio.Task | None = None
        self._starts = 0
        self._progress_ok = False
        self.tcp = False
        self.exiting = False   # `exit` received: the client is gone, stdout is (being) closed
        self.overhead_ms: deque[float] = deque(maxlen=1000)   # per request: handler time minus waiting

    # -- messages ------------------------------------------------------------------------------------------
    def say(self, level: int, message: str, *, show: bool = False) -> None:
        """Log to stderr and window/logMessage; with show=True also window/showMessage."""
        log.log(level, "%s", message)
        kind = {logging.ERROR: types.MessageType.Error, logging.WARNING: types.MessageType.Warning}.get(
            level, types.MessageType.Info if level >= logging.INFO else types.MessageType.Log)
        try:
            self.window_log_message(types.LogMessageParams(type=kind, message=message))
            if show:
                self.window_show_message(types.ShowMessageParams(type=kind, message=f"copilot-ls: {message}"))
        except Exception:  # no client connected (e.g. during shutdown)
            pass

    def report_server_error(self, error: Exception, source) -> None:
        """pygls reports a failed send with window/showMessage; after `exit` that send fails too and it recursed
        (~200 nested tracebacks, megabytes of stderr, seconds to exit). Nothing reaches the client then: log."""
        if self.exiting:
            log.debug("after exit: %s", error)
            return
        super().report_server_error(error, source)

    # -- settings ------------------------------------------------------------------------------------------
    def apply_settings(self, data: Any) -> None:
        try:
            new = from_dict(data, base=self.settings)
        except SettingsError as exc:
            self.say(logging.ERROR, f"ignored invalid settings: {exc}", show=True)
            return
        old, self.settings = self.settings, new
        self.debouncer.base_ms = new.debounce_ms
        self.cache.capacity = new.cache_size
        if (old.backend_url, old.api_key, old.model, old.timeout) != (new.backend_url, new.api_key, new.model,
                                                                     new.timeout) and self.client is not None:
            stale, self.client = self.client, None
            self._startup = None
            self.backoff.succeeded()
            self.cache.clear()
            # requests in flight still use the old client: close it once they are surely done
            asyncio.get_running_loop().call_later(old.timeout + 5, lambda: asyncio.ensure_future(stale.aclose()))

    # -- backend -------------------------------------------------------------------------------------------
    def backend(self) -> BackendClient:
        if self.client is None:
            s = self.settings
            self.client = BackendClient(s.backend_url, api_key=s.api_key, model=s.model, timeout=s.timeout)
        return self.client

    async def _start_backend(self, client: BackendClient) -> None:
        self._starts += 1
        token = f"copilot-ls/backend/{self._starts}"
        begun = False

        def progress(message: str) -> None:
            nonlocal begun
            log.info("backend: %s", message)
            if not self._progress_ok:
                return
            if not begun:
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                    title="copilot-ls: starting the model backend", message=message, cancellable=False))
                begun = True
            else:
                self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

        if self._progress_ok and self.settings.should_autostart():
            try:
                await self.work_done_progress.create_async(token)
            except Exception:
                self._progress_ok = False
        try:
            if self.child is not None and self.child.alive() and self.child.url == client.base_url:
                await autostart.wait_ready(client, self.child, progress=progress)   # ours, still there
                child = None
            else:
                child = await autostart.ensure_backend(client, self.settings, progress=progress)
        finally:
            if begun:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="backend ready"))
            self.work_done_progress.tokens.pop(token, None)
        if child is not None:
            if self.child is not None:
                self.child.stop()
            self.child = child
            self.say(logging.INFO, f"started copilot-backend (pid {child.popen.pid}) on {client.base_url}")

    async def ready_client(self) -> BackendClient:
        """The backend client, after the (shared, not cancellable by one request) startup check."""
        client = self.backend()
        if self._startup is None or (self._startup.done() and (self._startup.cancelled()
                                                               or self._startup.exception() is not None)):
            self._startup = asyncio.ensure_future(self._start_backend(client))
        await asyncio.shield(self._startup)
        return client

    def backend_failed(self, exc: BackendError) -> None:
        if self.client is not None:
            self.client._meta = None           # the model may differ when it comes back
        if (self.child is not None and not self.child.alive()) or exc.kind == "unreachable":
            self._startup = None                # re-check (and restart our child) on the next try
        if self.backoff.failed(str(exc)):
            self.say(logging.WARNING, f"no completions: {exc}. Retrying in the background.", show=True)
        else:
            log.info("backend still failing (retry in %.1f s): %s", self.backoff.retry_in(), exc)

    def request_refused(self, exc: BackendError) -> None:
        """The backend answered, but refused this one request (a prompt over another server's context, a
        parameter it does not take): no completion for it, no outage for the others. Shown once per status."""
        self.counters["refused"] += 1
        show = exc.status not in self._refusals_shown
        self._refusals_shown.add(exc.status)
        self.say(logging.WARNING, f"the backend refused a completion request: {exc}", show=show)

    # -- completion ----------------------------------------------------------------------------------------
    def encoding(self) -> str:
        enc = self.workspace.position_encoding
        return str(getattr(enc, "value", enc) or "utf-16")

    def to_client(self, snap: Snapshot, pos: tuple[int, int], lines: dict[int, str]) -> types.Position:
        line, col = pos
        if line not in lines:
            lines[line] = line_text(snap, line)
        return types.Position(line=line, character=from_codepoints(lines[line], col, self.encoding()))

    def make_items(self, snap: Snapshot, cursor_pos: tuple[int, int],
                   entries: list[tuple[str, tuple[int, int], tuple[int, int]]]) -> types.InlineCompletionList:
        lines: dict[int, str] = {}
        items = []
        for text, start, end in entries:
            item_id = self.stats.shown(snap.language_id, text)
            items.append(types.InlineCompletionItem(
                insert_text=text,
                range=types.Range(start=self.to_client(snap, start, lines), end=self.to_client(snap, end, lines)),
                command=types.Command(title="copilot-ls: accepted", command=CMD_ACCEPTED, arguments=[item_id])))
        self.counters["items"] += len(items)
        return types.InlineCompletionList(items=items)

    async def compute(self, snap: Snapshot, line: int, col: int, explicit: bool) -> pipeline.CompletionResult | None:
        uri = snap.uri
        delay = 0.0 if explicit else self.debouncer.delay_ms(uri)
        if delay > 0:
            t = time.perf_counter()
            await asyncio.sleep(delay / 1000)
            _wait_add((time.perf_counter() - t) * 1000)
            doc = self.store.get(uri)
            if doc is None or doc.version != snap.version:
                self.counters["stale"] += 1
                return None
        if not self.backoff.ready():
            return None
        try:
            t = time.perf_counter()
            client = await self.ready_client()
            _wait_add((time.perf_counter() - t) * 1000)
            calls = client.requests
            result = await pipeline.complete(snap, line, col, client=client, settings=self.settings,
                                             others=self.store.snapshots(exclude=uri), cache=self.cache)
        except BackendError as exc:
            _wait_add(float("inf"))     # time lost to a failure is not overhead: not recorded
            if exc.status in REFUSED:   # this request was refused; the backend itself works
                self.request_refused(exc)
            else:
                self.backend_failed(exc)
            return None
        _wait_add(result.timings.get("backend_ms", 0.0))
        self.counters["backend_calls"] += client.requests - calls
        self.counters["cache_hits"] += result.cached
        if self.backoff.succeeded():
            self.say(logging.INFO, f"backend at {client.base_url} answers again")
        return result

    async def inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        self.counters["requests"] += 1
        t0 = time.perf_counter()
        waited = [0.0]
        _WAITED.set(waited)
        try:
            result = await self._inline_completion(params)
        finally:   # overhead = our own time: handler total minus debounce, backend startup and backend time
            if waited[0] != float("inf"):
                self.overhead_ms.append(max(0.0, (time.perf_counter() - t0) * 1000 - waited[0]))
        return result

    async def _inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        uri = params.text_document.uri
        doc = self.store.get(uri)
        if doc is None or not self.settings.enabled_for(doc.language_id):
            return None
        snap = doc.snapshot()
        last = len(snap.line_starts()) - 1
        if params.position.line > last:   # past the last line: the end of the document (as didChange reads it)
            line, col = last, len(line_text(snap, last))
        else:
            line = params.position.line
            col = to_codepoints(line_text(snap, line), params.position.character, self.encoding())
        cursor = snap.offset(line, col)

        hits = self.typed.lookup(uri, snap.text, cursor)
        if hits:
            self.counters["typed_ahead"] += 1
            typed = cursor - hits[0][0].cursor
            shown = [Shown(snap.text, cursor, rest, s.end + typed, s.extra) for s, rest in hits]
            self.typed.remember(uri, shown)
            return self.make_items(snap, (line, col), [(s.ghost, (line, col), snap.position(s.end)) for s in shown])

        explicit = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        try:
            result = await self.supersession.run(uri, lambda: self.compute(snap, line, col, explicit))
        except Superseded:
            _wait_add(float("inf"))
            self.counters["superseded"] += 1
            return None
        except asyncio.CancelledError:
            _wait_add(float("inf"))
            self.counters["cancelled"] += 1
            raise
        except Exception as exc:  # a bug must cost one completion, never the server
            self.counters["errors"] += 1
            self.say(logging.ERROR, f"completion failed: {exc!r}\n{traceback.format_exc()}")
            return None
        if result is None:
            return None
        entries, shown = [], []
        for s in result.suggestions:
            entries.append((s.text, s.start, s.end))
            start, end = snap.offset(*s.start), snap.offset(*s.end)
            if start <= cursor <= end and s.text.startswith(snap.text[start:cursor]):
                shown.append(Shown(snap.text, cursor, s.text[cursor - start:], end, s.mean_logprob))
        self.typed.remember(uri, shown)
        return self.make_items(snap, (line, col), entries)

    def status(self) -> dict:
        s = self.settings
        child = self.child
        meta = self.client._meta if self.client is not None else None
        starting = self._startup is not None and not self._startup.done()
        return {
            "version": self.version,
            "backend": {"url": s.backend_url, "model": s.model or (meta.id if meta is not None else None),
                        "state": "failing" if self.backoff.failures else "starting" if starting else "ok",
                        "last_error": self.backoff.last_error,
                        "retry_in_s": round(self.backoff.retry_in(), 2),
                        "autostarted_pid": child.popen.pid if child is not None and child.alive() else None,
                        "fim_template": _fim_name(meta, s.fim_template)},
            "position_encoding": self.encoding(),
            "documents": len(self.store),
            "counters": dict(self.counters, cache_entries=len(self.cache)),
            "overhead_ms": _percentiles(self.overhead_ms),
            "stats": self.stats.summary(),
        }

    def stop_child(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


# HTTP statuses that refuse one request (400 invalid request, 413 too large, 422 TGI's validation error)
REFUSED = (400, 413, 422)


def _fim_name(meta: ModelMeta | None, setting: str) -> str | None:
    """The FIM template family prompts use ("none" for prefix-only), or None before the model is known."""
    if meta is None:
        return None
    tpl = pipeline.fim_template(meta, setting)
    return tpl.family if tpl is not None else "none"


def _percentiles(values) -> dict:
    s = sorted(values)
    if not s:
        return {"n": 0}
    pick = lambda q: round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 3)  # noqa: E731
    return {"n": len(s), "p50": pick(0.5), "p99": pick(0.99), "max": round(s[-1], 3)}


server = CopilotServer()


@server.feature(types.INITIALIZE)
def on_initialize(ls: CopilotServer, params: types.InitializeParams) -> None:
    ls._progress_ok = bool(params.capabilities.window and params.capabilities.window.work_done_progress)
    if params.initialization_options is not None:
        ls.apply_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
async def on_initialized(ls: CopilotServer, params: types.InitializedParams) -> None:
    ls.say(logging.INFO, f"copilot-ls ready; backend {ls.settings.backend_url}, positions in {ls.encoding()}")
    try:  # start (or find) the backend now, so the model loads while the user opens files
        await ls.ready_client()
    except BackendError as exc:
        ls.backend_failed(exc)


@server.feature(types.SHUTDOWN)
def on_shutdown(ls: CopilotServer, *args) -> None:
    ls.stop_child()


@server.feature(types.EXIT)
def on_exit(ls: CopilotServer, *args) -> None:
    ls.exiting = True
    ls.stop_child()
    if ls.tcp:   # pygls's sys.exit inside a TCP connection callback only produces a traceback: leave directly
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0 if ls.protocol._shutdown else 1)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def on_configuration(ls: CopilotServer, params: types.DidChangeConfigurationParams) -> None:
    data = params.settings
    if data is None and ls.client_capabilities.workspace and ls.client_capabilities.workspace.configuration:
        try:  # pull-style clients send null and expect us to ask
            result = await ls.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section="copilot-ls")]))
            data = result[0] if result else None
        except Exception as exc:
            log.warning("workspace/configuration failed: %s", exc)
    if data is not None:
        ls.apply_settings(data)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def on_open(ls: CopilotServer, params: types.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    ls.store.open(d.uri, d.language_id, d.version, d.text)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def on_change(ls: CopilotServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.store.get(uri)
    if doc is None:
        log.warning("didChange for a document that is not open: %s", uri)
        return
    enc = ls.encoding()
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            r = change.range
            start = (r.start.line, to_codepoints(line_text(doc, r.start.line), r.start.character, enc))
            end = (r.end.line, to_codepoints(line_text(doc, r.end.line), r.end.character, enc))
            doc.apply_change(change.text, start, end)
        else:
            doc.apply_change(change.text)
    doc.version = params.text_document.version
    ls.debouncer.changed(uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def on_close(ls: CopilotServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.supersession.cancel(uri)
    ls.store.close(uri)
    ls.typed.forget(uri)
    ls.debouncer.forget(uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline_completion(ls: CopilotServer, params: types.InlineCompletionParams):
    return await ls.inline_completion(params)


def _item_id(arg: Any) -> str:
    if isinstance(arg, dict):
        arg = arg.get("id", arg.get("itemId"))
    if not isinstance(arg, str):
        raise ValueError(f"expected an item id string, got {arg!r}")
    return arg


def _record(ls: CopilotServer, action, *args) -> dict:
    try:
        action(*args)
    except UnknownItem as exc:
        log.info("bookkeeping for an unknown or already reported item %s", exc)
        return {"ok": False, "reason": f"unknown item {exc}"}
    return {"ok": True}


@server.command(CMD_ACCEPTED)
def cmd_accepted(ls: CopilotServer, *args) -> dict:
    if not args:
        raise ValueError(f"{CMD_ACCEPTED} takes the item id")
    return _record(ls, ls.stats.accepted, _item_id(args[0]))


@server.command(CMD_PARTIAL)
def cmd_partial(ls: CopilotServer, *args) -> dict:
    if not args:
        raise ValueError(f"{CMD_PARTIAL} takes the item id and the accepted length")
    length = args[1] if len(args) > 1 else (args[0].get("acceptedLength") if isinstance(args[0], dict) else None)
    if not isinstance(length, int) or isinstance(length, bool):
        raise ValueError(f"{CMD_PARTIAL}: expected an integer accepted length, got {length!r}")
    return _record(ls, ls.stats.partially_accepted, _item_id(args[0]), length)


@server.command(CMD_REJECTED)
def cmd_rejected(ls: CopilotServer, *args) -> dict:
    if not args:
        raise ValueError(f"{CMD_REJECTED} takes the item id")
    return _record(ls, ls.stats.rejected, _item_id(args[0]))


@server.command(CMD_STATUS)
def cmd_status(ls: CopilotServer, *args) -> dict:
    return ls.status()


# -- command line ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="speak LSP on stdin/stdout (the default)")
    mode.add_argument("--tcp", action="store_true", help="listen for one LSP client on TCP (for debugging)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2087, help="TCP port (default 2087)")
    parser.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level (default WARNING)")


def protocol_stdout():
    """The real stdout, for the protocol only; fd 1 and sys.stdout then point at stderr, so a stray print (ours,
    a library's, or a C extension's) can never corrupt the LSP stream."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level, logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.log_level != "DEBUG":
        for noisy in ("pygls", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.tcp:
            server.tcp = True
            server.start_tcp(args.host, args.port)
        else:
            server.start_io(sys.stdin.buffer, protocol_stdout())
    finally:
        server.stop_child()
    # LSP: exit code 0 only after a shutdown request (pygls swallows its own sys.exit(1) in stdio mode)
    return 0 if server.protocol._shutdown else 1
