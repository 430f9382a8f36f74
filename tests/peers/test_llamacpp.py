"""The language server and `eval humaneval` against llama.cpp's own OpenAI server (a real foreign server with
the bundled GGUF), for both endpoints. What differs from copilot-backend is written in docs/backend.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import pytest_lsp
from lsp_testing import (
    COMMON_PREFIX_BUFFER,
    LS_COMMAND,
    capabilities,
    close_all,
    end_position,
    inline,
    open_doc,
)
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

OPTIONS = {"maxTokens": 48, "timeout": 600, "debounceMs": 0, "autostart": False}
FIB = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    '
NOT_CODE = ("```", "Here is", "<|im_end|>", "<|im_start|>", "<HOLE>")


def _client(endpoint: str):
    @pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
    async def fixture(lsp_client: LanguageClient, llamacpp_url):
        await lsp_client.initialize_session(
            types.InitializeParams(
                capabilities=capabilities(),
                initialization_options={"backendUrl": llamacpp_url, "endpoint": endpoint, **OPTIONS},
            )
        )
        yield
        await lsp_client.shutdown_session()

    return fixture


completions_client = _client("completions")
chat_client = _client("chat")


async def _ghost_text(client, uri: str, text: str) -> str:
    open_doc(client, uri, text)
    try:
        result = await inline(client, uri, *end_position(text))
    finally:
        close_all(client)
    assert result is not None and result.items, f"no inline item for {uri}"
    item = result.items[0].insert_text
    assert item.strip()
    for bad in NOT_CODE:
        assert bad not in item, f"{bad!r} reached the editor: {item!r}"
    return item


async def test_completions_endpoint(completions_client):
    text = await _ghost_text(completions_client, "file:///tmp/peers/common_prefix.py", COMMON_PREFIX_BUFFER)
    assert "\n" not in text.strip()  # single-line after an open call
    # llama.cpp's greedy text differs from copilot-backend's (no token healing, other kernels): what must hold
    # for any server is code-only ghost text, checked by _ghost_text
    await _ghost_text(completions_client, "file:///tmp/peers/fib.py", FIB)


async def test_chat_endpoint(chat_client):
    await _ghost_text(chat_client, "file:///tmp/peers/fib_chat.py", FIB)
    # (the common_prefix buffer, mid-call, gets no suggestion through llama.cpp's chat: not yet handled)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_short_humaneval(llamacpp_url, tmp_path, endpoint):
    out = tmp_path / f"he-{endpoint}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "copilot_ls.cli",
            "eval",
            "humaneval",
            "--limit",
            "5",
            "--n",
            "1",
            "--k",
            "1",
            "--temperature",
            "0",
            "--no-greedy",
            "--max-tokens",
            "160",
            "--backend",
            llamacpp_url,
            "--endpoint",
            endpoint,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["problems"] == 5 and 0.0 <= results["pass_at_k"]["pass@1"] <= 1.0
    print(f"llama.cpp, endpoint {endpoint}: pass@1 {results['pass_at_k']['pass@1']:.2f} on 5 problems")
