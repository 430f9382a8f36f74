"""Language-server latency benchmark.

    .venv/bin/python benchmarks/ls.py [--backend URL] [--keystrokes 20] [--no-model] [--json OUT]

Measures, on a 5,000-line Python file (the first 5,000 lines of the standard library's `_pydecimal.py`):
  1. incremental reparse per keystroke (Document.apply_change: tree.edit + reparse)            target <= 1 ms
  2. pipeline overhead per request, model excluded: context + post-processing with a backend that answers
     instantly in-process, and the whole LS round trip over stdio (JSON-RPC, position conversion, scheduler,
     loopback HTTP to a backend that answers at once)                                           target p99 <= 5 ms
  3. keystroke-to-items latency with the default model (a real `copilot-backend serve`; started on a free port
     unless --backend is given): cold (a new document, the backend's prefix cache cold) and warm (the next
     keystrokes, whose prompts share the prefix), and a typed-ahead hit (no backend call at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import sysconfig
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

from copilot_ls import pipeline  # noqa: E402
from copilot_ls.backend import BackendClient, ModelMeta, RawCandidate  # noqa: E402
from copilot_ls.context import PromptBudget, build_prompt  # noqa: E402
from copilot_ls.documents import Document  # noqa: E402
from copilot_ls.lsp import autostart  # noqa: E402
from copilot_ls.postprocess import postprocess  # noqa: E402
from copilot_ls.settings import Settings  # noqa: E402

LINES = 5000


def source_file() -> str:
    path = Path(sysconfig.get_paths()["stdlib"]) / "_pydecimal.py"
    lines = path.read_text().split("\n")[:LINES]
    return "\n".join(lines)


def cursor_in(text: str) -> tuple[int, int]:
    """A cursor at the end of a `return` line in the middle of the file (inside a method)."""
    lines = text.split("\n")
    for i in range(len(lines) // 2, len(lines)):
        if lines[i].strip().startswith("return ") and lines[i].endswith(")"):
            return i, len(lines[i]) - 1
    return len(lines) - 1, len(lines[-1])


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 50), 3),
        "p99_ms": round(pct(values, 99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


# -- 1 + 2a: in-process ---------------------------------------------------------------------------------------
class InstantClient:
    """A BackendClient stand-in that answers at once (model and HTTP excluded)."""

    base_url, model, requests = "instant", None, 0

    async def meta(self) -> ModelMeta:
        return ModelMeta("instant", 8192, None, None)

    async def complete(self, prompt: str, **kw) -> list[RawCandidate]:
        return [RawCandidate("self._round(n, context)\n", -0.2)]


def bench_in_process(text: str, iterations: int) -> dict:
    doc = Document("file:///bench/_pydecimal.py", "python", 1, text)
    line, col = cursor_in(text)
    reparse, prompt_ms, post_ms, total = [], [], [], []
    client, settings = InstantClient(), Settings()

    async def run() -> None:
        nonlocal col
        for i in range(iterations):
            ch = "x" if i % 2 == 0 else "\b"
            t = time.perf_counter()
            if ch == "\b":
                doc.apply_change("", (line, col - 1), (line, col))
                col -= 1
            else:
                doc.apply_change(ch, (line, col), (line, col))
                col += 1
            reparse.append((time.perf_counter() - t) * 1000)
            snap = doc.snapshot()
            t = time.perf_counter()
            prompt = build_prompt(snap, line, col, budget=PromptBudget())
            prompt_ms.append((time.perf_counter() - t) * 1000)
            raw = await client.complete(prompt.prompt)
            t = time.perf_counter()
            postprocess(raw, snap, line, col, multiline=prompt.multiline)
            post_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await pipeline.complete(snap, line, col, client=client, settings=settings)
            total.append((time.perf_counter() - t) * 1000)

    asyncio.run(run())
    return {
        "reparse_per_keystroke": summary(reparse),
        "context": summary(prompt_ms),
        "postprocess": summary(post_ms),
        "pipeline_total": summary(total),
    }


# -- 2b: the LS over stdio, against a backend that answers at once ----------------------------------------------
class InstantHTTP:
    def __init__(self) -> None:
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                # headers and body go out as two writes: without TCP_NODELAY the body waits for the client's
                # delayed ACK (~40 ms per request, which is this stand-in's, not the LS's; asyncio transports, hence uvicorn, set it)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send({"data": [{"id": "instant", "context_length": 8192, "fim": None}]})
                elif self.path == "/health":
                    self._send({"status": "ready"})
                else:
                    self._send({"error": {"message": "no"}}, 404)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self._send(
                    {
                        "choices": [
                            {
                                "index": 0,
                                "text": "self._round(n, context)\n",
                                "finish_reason": "stop",
                                "logprobs": {"token_logprobs": [-0.2]},
                            }
                        ]
                    }
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def start_ls(backend_url: str, debounce_ms: int = 0) -> LanguageClient:
    client = LanguageClient("bench", "0")
    await client.start_io(sys.executable, "-m", "copilot_ls.cli", "--log-level", "ERROR", cwd=str(ROOT))
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            process_id=None,
            initialization_options={
                "backendUrl": backend_url,
                "debounceMs": debounce_ms,
                "timeout": 600,
                "maxTokens": 24,
            },
        )
    )
    client.initialized(types.InitializedParams())
    return client


async def stop_ls(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


class Editor:
    """Types into one document of a running LS and asks for items after each keystroke."""

    def __init__(self, client: LanguageClient, uri: str, text: str, pos: tuple[int, int]) -> None:
        self.client, self.uri, self.version = client, uri, 1
        self.line, self.col = pos
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
            )
        )

    def type(self, text: str) -> None:
        self.version += 1
        p = types.Position(self.line, self.col)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                [types.TextDocumentContentChangePartial(range=types.Range(p, p), text=text)],
            )
        )
        self.col += len(text)

    async def ask(self, invoked: bool = True) -> tuple[float, types.InlineCompletionList | None]:
        kind = (
            types.InlineCompletionTriggerKind.Invoked
            if invoked
            else types.InlineCompletionTriggerKind.Automatic
        )
        t = time.perf_counter()
        res = await self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(self.uri),
                position=types.Position(self.line, self.col),
                context=types.InlineCompletionContext(trigger_kind=kind),
            )
        )
        return (time.perf_counter() - t) * 1000, res


async def bench_stdio(text: str, iterations: int) -> dict:
    fake = InstantHTTP()
    client = await start_ls(fake.url)
    ed = Editor(client, "file:///bench/_pydecimal.py", text, cursor_in(text))
    await ed.ask()  # warm up imports and the first parse
    times = []
    for i in range(iterations):
        ed.type("xy"[i % 2])
        ms, res = await ed.ask()
        times.append(ms)
    st = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="copilot-ls.status"))
    await stop_ls(client)
    fake.server.shutdown()
    over = st["overhead_ms"]
    return {
        "ls_round_trip_instant_backend": summary(times),
        "ls_overhead_server_side": {"n": over["n"], "p50_ms": over["p50"], "p99_ms": over["p99"]},
    }


# -- 3: keystroke to items with the default model -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def backend_calls(client: LanguageClient) -> int:
    st = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="copilot-ls.status"))
    return st["counters"]["backend_calls"]


async def start_backend(backend: str | None) -> tuple[str, object | None]:
    """`backend`, or a `copilot-backend serve` started on a free port (the child to stop afterwards)."""
    if backend is not None:
        return backend, None
    backend = f"http://127.0.0.1:{free_port()}"
    print(f"starting copilot-backend on {backend} ...", file=sys.stderr)
    bc = BackendClient(backend)
    child = await autostart.ensure_backend(
        bc,
        Settings(backend_url=backend, autostart=True),
        progress=lambda m: print("  " + m, file=sys.stderr),
    )
    await bc.aclose()
    return backend, child


async def bench_model(text: str, backend: str | None, keystrokes: int) -> dict:
    backend, child = await start_backend(backend)
    client = await start_ls(backend, debounce_ms=0)
    try:
        # a new statement at the start of a method body; then the user types an expression into it
        lines = text.split("\n")
        at = next(
            i
            for i in range(len(lines) // 2, len(lines))
            if lines[i].startswith("    def ")
            and lines[i].rstrip().endswith(":")
            and lines[i + 1].startswith("        ")
        )
        lines.insert(at + 1, "        result = ")
        line, col = at + 1, len(lines[at + 1])
        ed = Editor(client, "file:///bench/model/_pydecimal.py", "\n".join(lines), (line, col))
        cold, res = await ed.ask()
        warm, items = [], 0
        typing = "zeta_9 + omega_4 * phi_7 - psi_2"  # unlikely to match the suggestion: real backend requests
        calls0 = await backend_calls(client)
        for i in range(keystrokes):
            ed.type(typing[i % len(typing)])  # each keystroke a new prompt: a real backend request
            ms, res = await ed.ask(invoked=False)
            warm.append(ms)
            items += bool(res and res.items)
        calls = await backend_calls(client) - calls0
        typed = []
        for _ in range(3):  # type the first character of the suggestion shown: answered from memory
            if res and res.items and len(res.items[0].insert_text) > 1:
                ed.type(res.items[0].insert_text[0])
                ms, _ = await ed.ask(invoked=False)
                typed.append(ms)
                break
            ed.type(" ")
            _, res = await ed.ask(invoked=False)
        return {
            "keystroke_to_items_cold_ms": round(cold, 1),
            "keystroke_to_items_warm": summary(warm),
            "warm_requests_with_items": f"{items}/{keystrokes}",
            "warm_backend_calls": f"{calls}/{keystrokes} (the rest: typed-ahead or cache)",
            "typed_ahead_hit_ms": round(typed[0], 2) if typed else None,
        }
    finally:
        await stop_ls(client)
        if child is not None:
            child.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, help="a running backend (default: start one on a free port)")
    ap.add_argument("--iterations", type=int, default=200, help="keystrokes for the overhead measurements")
    ap.add_argument("--keystrokes", type=int, default=10, help="keystrokes with the real model")
    ap.add_argument("--no-model", action="store_true", help="skip the measurements with the real model")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    text = source_file()
    results: dict = {"file": f"first {LINES} lines of _pydecimal.py ({len(text)} characters)"}
    results.update(bench_in_process(text, args.iterations))
    results.update(asyncio.run(bench_stdio(text, args.iterations)))
    if not args.no_model:
        results.update(asyncio.run(bench_model(text, args.backend, args.keystrokes)))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
