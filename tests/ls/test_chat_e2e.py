"""End to end, chat endpoints: the language server over stdio with `endpoint: chat` against copilot-backend's
/v1/chat/completions (the real default model), and `endpoint: auto` against a server that has only chat (a
pass-through to the same real backend that answers 404 on /v1/completions)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import pytest_lsp
from lsp_testing import LS_COMMAND, capabilities, close_all, end_position, inline, open_doc
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# one candidate per request: these tests are about the chat path, not ranking (test_lsp_e2e covers that)
OPTIONS = {"maxTokens": 48, "timeout": 600, "debounceMs": 0, "explicitCandidates": 1}

FIB = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    '
NOT_CODE = ("```", "Here is", "here is", "<|im_end|>", "<|im_start|>", "<HOLE>", "This ")


class ChatOnlyServer:
    """A server with only /v1/chat/completions (and /health, /v1/models, /v1/tokenizer): requests are passed to
    the real backend; /v1/completions answers 404 like a chat-only API. `paths` records each POST."""

    def __init__(self, upstream: str) -> None:
        self.paths: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self, method: str) -> None:
                body = (
                    self.rfile.read(int(self.headers.get("Content-Length", 0))) if method == "POST" else None
                )
                if method == "POST":
                    proxy.paths.append(self.path)
                if self.path not in ("/health", "/v1/models", "/v1/tokenizer", "/v1/chat/completions"):
                    out, status = json.dumps({"error": {"message": "Not Found"}}).encode(), 404
                else:
                    r = httpx.request(
                        method,
                        upstream + self.path,
                        content=body,
                        timeout=600,
                        headers={"Content-Type": "application/json"},
                    )
                    out, status = r.content, r.status_code
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                self._relay("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def chat_only(backend_url):
    server = ChatOnlyServer(backend_url)
    yield server
    server.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient, backend_url):
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(),
            initialization_options={"backendUrl": backend_url, "endpoint": "chat", **OPTIONS},
        )
    )
    yield
    await lsp_client.shutdown_session()


def chat_served(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("copilot_backend_requests_total{") and 'endpoint="/v1/chat/completions"' in line
    )


def assert_code(text: str) -> None:
    assert text.strip(), "empty suggestion"
    for bad in NOT_CODE:
        assert bad not in text, f"{bad!r} reached the editor: {text!r}"


async def test_chat_endpoint_gives_code_ghost_text(client, backend_url):
    uri = "file:///tmp/e2e-chat/fib.py"
    open_doc(client, uri, FIB)
    before = chat_served(backend_url)
    line, col = end_position(FIB)
    try:
        result = await inline(client, uri, line, col)
    finally:
        close_all(client)
    assert result is not None and result.items, "no inline item through the chat endpoint"
    text = result.items[0].insert_text
    assert_code(text)
    assert "fibonacci(" in text or "return" in text, text  # a recursive body, not an echo of the docstring
    assert chat_served(backend_url) > before  # it went through /v1/chat/completions


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def auto_client(lsp_client: LanguageClient, chat_only):
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(),
            initialization_options={
                "backendUrl": chat_only.url,
                "endpoint": "auto",
                "autostart": False,
                **OPTIONS,
            },
        )
    )
    yield
    await lsp_client.shutdown_session()


async def test_auto_endpoint_falls_back_to_chat_on_a_chat_only_server(auto_client, chat_only):
    results = []
    try:
        for i, text in enumerate((FIB, FIB.replace("fibonacci", "fib"))):
            uri = f"file:///tmp/e2e-chat/auto{i}.py"
            open_doc(auto_client, uri, text)
            results.append(await inline(auto_client, uri, *end_position(text)))
    finally:
        close_all(auto_client)
    for res in results:
        assert res is not None and res.items
        assert_code(res.items[0].insert_text)
    # one probe of /v1/completions (404), then only chat
    assert chat_only.paths.count("/v1/completions") == 1, chat_only.paths
    assert chat_only.paths.count("/v1/chat/completions") >= 2, chat_only.paths


async def test_backend_chat_route_answers_the_openai_shape(backend_url):
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.post(backend_url + "/v1/chat/completions", json=body)
        bad_answers = [
            (await http.post(backend_url + "/v1/chat/completions", json=bad), param)
            for bad, param in (
                ({**body, "stream": True}, "stream"),
                ({**body, "messages": []}, "messages"),
                ({**body, "messages": [{"role": "user"}]}, "messages"),
                ({**body, "logprobs": True}, "logprobs"),
            )
        ]
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert "<|im_end|>" not in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length") and data["usage"]["completion_tokens"] <= 4
    for r, param in bad_answers:
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
