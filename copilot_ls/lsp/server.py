"""LSP wiring only (pygls 2): capabilities, handlers, position mapping, messages, `$/progress`.

Each handler maps LSP types to plain values and calls the session (session.py), which owns the documents,
settings, completion requests and, through the supervisor, the backend. stdout is the protocol channel: logs go
to stderr and `window/logMessage`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from cattrs.errors import ClassValidationError
from cattrs.v import transform_error
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from copilot_ls.documents import Document, Snapshot, from_codepoints, to_codepoints
from copilot_ls.lsp.session import Item, Pos, Session
from copilot_ls.lsp.stats import UnknownItem

log = logging.getLogger("copilot_ls")

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
                detail = (
                    "; ".join(transform_error(cause)) if isinstance(cause, ClassValidationError) else cause
                )
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


class WorkDoneProgress:
    """The supervisor's progress sink: `$/progress` with work-done tokens."""

    def __init__(self, ls: LanguageServer) -> None:
        self.ls = ls

    async def create(self, token: str) -> None:
        await self.ls.work_done_progress.create_async(token)

    def begin(self, token: str, title: str, message: str) -> None:
        self.ls.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title=title, message=message, cancellable=False)
        )

    def report(self, token: str, message: str) -> None:
        self.ls.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

    def end(self, token: str, message: str | None) -> None:
        if message is not None:
            self.ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        self.ls.work_done_progress.tokens.pop(token, None)


class CopilotServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(
            "copilot-ls",
            "0.1.0",
            protocol_cls=CopilotProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.session = Session(say=self.say)
        self.tcp = False
        self.exiting = False  # `exit` received: the client is gone, stdout is (being) closed

    def say(self, level: int, message: str, *, show: bool = False) -> None:
        """Log to stderr and window/logMessage; with show=True also window/showMessage."""
        log.log(level, "%s", message)
        kind = {logging.ERROR: types.MessageType.Error, logging.WARNING: types.MessageType.Warning}.get(
            level, types.MessageType.Info if level >= logging.INFO else types.MessageType.Log
        )
        try:
            self.window_log_message(types.LogMessageParams(type=kind, message=message))
            if show:
                self.window_show_message(types.ShowMessageParams(type=kind, message=f"copilot-ls: {message}"))
        except Exception:  # no client connected (e.g. during shutdown)
            pass

    def report_server_error(self, error: Exception, source) -> None:
        """After `exit` the client is gone: pygls's report of a failed send (window/showMessage) would fail and
        recurse, so it is only logged (docs/language-server.md, "Exit")."""
        if self.exiting:
            log.debug("after exit: %s", error)
            return
        super().report_server_error(error, source)

    def encoding(self) -> str:
        enc = self.workspace.position_encoding
        return str(getattr(enc, "value", enc) or "utf-16")

    def status(self) -> dict:
        status = self.session.status()
        return {
            "version": self.version,
            "backend": status.pop("backend"),
            "position_encoding": self.encoding(),
            **status,
        }


# -- position mapping: client units (utf-8 / utf-16 / utf-32) <-> code points ------------------------------------
def line_text(doc: Document | Snapshot, line: int) -> str:
    """One line of a document without its line break ("" past the end)."""
    a = doc.offset(line, 0)
    return doc.text[a : doc.offset(line, 1 << 40)]


def from_client(doc: Document | Snapshot, pos: types.Position, encoding: str) -> Pos:
    """A client position as (line, code-point column); past the last line is the end of the document."""
    last = len(doc.line_starts()) - 1
    if pos.line > last:
        return last, len(line_text(doc, last))
    return pos.line, to_codepoints(line_text(doc, pos.line), pos.character, encoding)


def to_client(snap: Snapshot, pos: Pos, encoding: str, lines: dict[int, str]) -> types.Position:
    """(line, code-point column) as a client position; `lines` caches the line texts of one answer."""
    line, col = pos
    if line not in lines:
        lines[line] = line_text(snap, line)
    return types.Position(line=line, character=from_codepoints(lines[line], col, encoding))


def to_lsp_items(snap: Snapshot, items: list[Item], encoding: str) -> types.InlineCompletionList:
    lines: dict[int, str] = {}
    return types.InlineCompletionList(
        items=[
            types.InlineCompletionItem(
                insert_text=item.text,
                range=types.Range(
                    start=to_client(snap, item.start, encoding, lines),
                    end=to_client(snap, item.end, encoding, lines),
                ),
                command=types.Command(
                    title="copilot-ls: accepted", command=CMD_ACCEPTED, arguments=[item.id]
                ),
            )
            for item in items
        ]
    )


# -- handlers ----------------------------------------------------------------------------------------------------
server = CopilotServer()


@server.feature(types.INITIALIZE)
def on_initialize(ls: CopilotServer, params: types.InitializeParams) -> None:
    if params.capabilities.window and params.capabilities.window.work_done_progress:
        ls.session.backend.progress = WorkDoneProgress(ls)
    if params.initialization_options is not None:
        ls.session.apply_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
async def on_initialized(ls: CopilotServer, params: types.InitializedParams) -> None:
    # start (or find) the backend now, so the model loads while the user opens files; "ready" only once it answers
    url = ls.session.settings.backend_url
    if await ls.session.backend.start():
        ls.say(logging.INFO, f"copilot-ls ready; backend {url} answers, positions in {ls.encoding()}")
    else:
        ls.say(
            logging.INFO,
            f"copilot-ls started, but the backend {url} does not answer: no completions until "
            f"it does; positions in {ls.encoding()}",
        )


@server.feature(types.SHUTDOWN)
def on_shutdown(ls: CopilotServer, *args) -> None:
    ls.session.backend.stop()


@server.feature(types.EXIT)
def on_exit(ls: CopilotServer, *args) -> None:
    ls.exiting = True
    ls.session.backend.stop()
    if ls.tcp:  # pygls's sys.exit inside a TCP connection callback only produces a traceback: leave directly
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0 if ls.protocol._shutdown else 1)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def on_configuration(ls: CopilotServer, params: types.DidChangeConfigurationParams) -> None:
    data = params.settings
    if data is None and ls.client_capabilities.workspace and ls.client_capabilities.workspace.configuration:
        try:  # pull-style clients send null and expect us to ask
            result = await ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section="copilot-ls")])
            )
            data = result[0] if result else None
        except Exception as exc:
            log.warning("workspace/configuration failed: %s", exc)
    if data is not None:
        ls.session.apply_settings(data)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def on_open(ls: CopilotServer, params: types.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    ls.session.store.open(d.uri, d.language_id, d.version, d.text)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def on_change(ls: CopilotServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.session.store.get(uri)
    if doc is None:
        log.warning("didChange for a document that is not open: %s", uri)
        return
    enc = ls.encoding()
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            r = change.range
            start = (r.start.line, to_codepoints(line_text(doc, r.start.line), r.start.character, enc))
            end = (r.end.line, to_codepoints(line_text(doc, r.end.line), r.end.character, enc))
            ls.session.edited(uri, doc.apply_change(change.text, start, end))
        else:
            ls.session.edited(uri, doc.apply_change(change.text))
    doc.version = params.text_document.version
    ls.session.changed(uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def on_close(ls: CopilotServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.session.close(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline_completion(ls: CopilotServer, params: types.InlineCompletionParams):
    session = ls.session
    with session.request() as waits:
        doc = session.store.get(params.text_document.uri)
        if doc is None or not session.settings.enabled_for(doc.language_id):
            return None
        snap = doc.snapshot()
        enc = ls.encoding()
        explicit = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        items = await session.complete(snap, from_client(snap, params.position, enc), explicit, waits)
        return None if items is None else to_lsp_items(snap, items, enc)


# -- bookkeeping commands ----------------------------------------------------------------------------------------
def _item_id(arg: Any) -> str:
    if isinstance(arg, dict):
        arg = arg.get("id", arg.get("itemId"))
    if not isinstance(arg, str):
        raise ValueError(f"expected an item id string, got {arg!r}")
    return arg


def _record(action, *args) -> dict:
    try:
        action(*args)
    except UnknownItem as exc:
        log.info("bookkeeping for an unknown or already reported item %s", exc)
        return {"ok": False, "reason": f"unknown item {exc}"}
    return {"ok": True}


def _only_item_id(command: str, args: tuple) -> str:
    """The item id of a command that takes nothing else."""
    if not args:
        raise ValueError(f"{command} takes the item id")
    return _item_id(args[0])


@server.command(CMD_ACCEPTED)
def cmd_accepted(ls: CopilotServer, *args) -> dict:
    return _record(ls.session.stats.accepted, _only_item_id(CMD_ACCEPTED, args))


@server.command(CMD_PARTIAL)
def cmd_partial(ls: CopilotServer, *args) -> dict:
    if not args:
        raise ValueError(f"{CMD_PARTIAL} takes the item id and the accepted length")
    length = (
        args[1] if len(args) > 1 else (args[0].get("acceptedLength") if isinstance(args[0], dict) else None)
    )
    if not isinstance(length, int) or isinstance(length, bool):
        raise ValueError(f"{CMD_PARTIAL}: expected an integer accepted length, got {length!r}")
    return _record(ls.session.stats.partially_accepted, _item_id(args[0]), length)


@server.command(CMD_REJECTED)
def cmd_rejected(ls: CopilotServer, *args) -> dict:
    return _record(ls.session.stats.rejected, _only_item_id(CMD_REJECTED, args))


@server.command(CMD_STATUS)
def cmd_status(ls: CopilotServer, *args) -> dict:
    return ls.status()
