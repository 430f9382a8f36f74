"""Helpers of the language-server tests (imported by the test modules and conftest.py).

- `FakeBackend`: a tiny OpenAI-compatible HTTP server on a free loopback port for the cases the real backend
  cannot produce on demand (garbage answers, a fixed reply to check positions exactly, a slow answer to
  cancel). The end-to-end tests use the real backend through the session fixture `backend_url`
  (tests/conftest.py).
- Helpers to drive the LS over stdio with pytest-lsp.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lsprotocol import types

REPO = Path(__file__).resolve().parents[2]
LS_COMMAND = [sys.executable, "-m", "copilot_ls.cli", "--log-level", "INFO"]

COMMON_PREFIX_BUFFER = '''def common_prefix(a, b):
    """Return the longest common prefix of the strings a and b."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_common_prefix():
    assert common_prefix('''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeBackend:
    """mode: "echo" (answer `reply`), "garbage" (200 with junk), "slow" (answer after `delay` s); `port` 0: a
    free one."""

    def __init__(
        self,
        mode: str = "echo",
        reply: str = "a, b)",
        delay: float = 0.0,
        models: list[dict] | None = None,
        port: int = 0,
    ) -> None:
        self.mode, self.reply, self.delay = mode, reply, delay
        # /v1/models entries; the default one reports `fim` like copilot-backend, other servers don't
        self.models = models or [{"id": "fake", "object": "model", "context_length": 2048, "fim": None}]
        self.requests: list[dict] = []  # bodies of /v1/completions
        self.headers: list[dict] = []  # and their headers
        self.disconnects = 0  # slow requests whose client went away before the answer
        self.answer: tuple[int, bytes] | None = None  # set: POST answers this (status, JSON body) instead
        self.loading = False  # True: /health answers 503 "loading", like a backend loading its model
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health" and fake.loading:
                    self._send(503, b'{"status": "loading"}')
                elif self.path == "/health":
                    self._send(200, b'{"status": "ready"}')
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": fake.models}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                if fake.answer is not None:
                    self._send(*fake.answer)
                    return
                if fake.mode == "garbage":
                    self._send(200, b"<html>\x00\xff this is not JSON", "text/html")
                    return
                if fake.mode == "slow":
                    end = time.monotonic() + fake.delay
                    while time.monotonic() < end:
                        time.sleep(0.02)
                        try:  # a closed client connection reads as EOF
                            self.connection.setblocking(False)
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                fake.disconnects += 1
                                return
                        except BlockingIOError:
                            pass
                        finally:
                            self.connection.setblocking(True)
                n = int(body.get("n", 1))
                choices = [
                    {
                        "index": i,
                        "text": fake.reply,
                        "finish_reason": "stop",
                        "logprobs": {"token_logprobs": [-0.1 * (i + 1)] * 3},
                    }
                    for i in range(n)
                ]
                self._send(200, json.dumps({"object": "text_completion", "choices": choices}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def capabilities(encodings: list[str] | None = None, progress: bool = True) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
        window=types.WindowClientCapabilities(work_done_progress=progress, show_message=None),
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(),
            inline_completion=types.InlineCompletionClientCapabilities(),
        ),
        workspace=types.WorkspaceClientCapabilities(
            configuration=True, did_change_configuration=(types.DidChangeConfigurationClientCapabilities())
        ),
    )


def open_doc(client, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text)
        )
    )
    client.__dict__.setdefault("opened", []).append(uri)


def close_all(client) -> None:
    """didClose every document `open_doc` opened (other open documents feed the context of the next test)."""
    for uri in client.__dict__.pop("opened", []):
        client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )


def change(client, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(start=types.Position(*start), end=types.Position(*end)), text=text
                )
            ],
        )
    )


def inline_params(uri: str, line: int, character: int, invoked: bool = True) -> types.InlineCompletionParams:
    kind = (
        types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    )
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=kind),
    )


async def inline(client, uri: str, line: int, character: int, invoked: bool = True):
    return await client.text_document_inline_completion_async(inline_params(uri, line, character, invoked))


async def status(client) -> dict:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="copilot-ls.status", arguments=[])
    )


def end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


def apply_item(text: str, item: types.InlineCompletionItem, encoding: str) -> str:
    """The document after accepting `item` (its range is in client units of `encoding`)."""
    lines = text.split("\n")

    def offset(pos: types.Position) -> int:
        line = lines[pos.line]
        if encoding == "utf-8":
            col = len(line.encode("utf-8")[: pos.character].decode("utf-8"))
        elif encoding == "utf-16":
            col = len(line.encode("utf-16-le")[: 2 * pos.character].decode("utf-16-le"))
        else:
            col = pos.character
        return sum(len(x) + 1 for x in lines[: pos.line]) + col

    a, b = offset(item.range.start), offset(item.range.end)
    insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    return text[:a] + insert + text[b:]
