"""End to end: guided decoding through the language server over stdio against the REAL backend (the session's
default model): after `self.` in a method of a class whose members are all known, the suggestion starts with one
of them."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsp_testing import LS_COMMAND, capabilities, close_all, inline, open_doc
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

OPTIONS = {"maxTokens": 12, "timeout": 600, "debounceMs": 0}
# members the model would not guess: it must pick one of these (or one of object's) when guided
DOC = (
    "class Tank:\n"
    "    def __init__(self, litres):\n"
    "        self.zq_level = litres\n"
    "        self.zq_cap = 2 * litres\n"
    "\n"
    "    def vq_spare(self):\n"
    "        return self.zq_cap - self.zq_level\n"
    "\n"
    "    def describe(self):\n"
    "        print('spare', self.)\n"
)
LINE, COL = 9, len("        print('spare', self.")
MEMBERS = {"zq_level", "zq_cap", "vq_spare", "describe", "__init__", *dir(object)}


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient, backend_url):
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(), initialization_options={"backendUrl": backend_url, **OPTIONS}
        )
    )
    yield
    await lsp_client.shutdown_session()


def first_identifier(text: str) -> str:
    out = ""
    for ch in text:
        if not (ch.isalnum() or ch == "_"):
            break
        out += ch
    return out


async def test_suggestion_after_self_dot_is_a_member(client):
    uri = "file:///tmp/e2e-guided/tank.py"
    open_doc(client, uri, DOC)
    try:
        result = await inline(client, uri, LINE, COL)
        assert result is not None and result.items, "no inline item"
        text = result.items[0].insert_text
        assert first_identifier(text) in MEMBERS, text
    finally:
        close_all(client)
