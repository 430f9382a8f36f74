"""The backend supervisor seen from an editor: "ready" is logged only for a backend that answers, a lost
backend is retried in the background (not on the next keystroke) and reported when it is back, and `$/progress`
goes only to a token the client created."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_lsp
from lsp_testing import LS_COMMAND, FakeBackend, capabilities, free_port, inline, open_doc, status
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


def logs(client) -> list[str]:
    return [m.message for m in client.log_messages]


def warnings_of(client) -> list[str]:
    return [
        m.message for m in client.messages if m.type in (types.MessageType.Warning, types.MessageType.Error)
    ]


async def wait_for_log(client, words: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in logs(client) if words in m]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no log message with {words!r}: {logs(client)}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def fake():
    fb = FakeBackend(reply="x, y)")
    yield fb
    fb.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client_loading(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client_lost(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


async def test_ready_is_logged_once_the_backend_answers(client, fake):
    await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(), initialization_options={"backendUrl": fake.url, "debounceMs": 0}
        )
    )
    message = await wait_for_log(client, "copilot-ls ready", 30)
    assert f"backend {fake.url} answers" in message
    assert not warnings_of(client)


async def test_a_silent_backend_is_not_called_ready_and_is_found_when_it_comes(client_lost):
    port = free_port()
    url = f"http://127.0.0.1:{port}"  # not the default URL: no autostart
    await client_lost.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(), initialization_options={"backendUrl": url, "debounceMs": 0}
        )
    )
    message = await wait_for_log(client_lost, "does not answer", 30)
    assert url in message
    assert not [m for m in logs(client_lost) if "ready" in m], logs(client_lost)
    await asyncio.sleep(0.2)
    warnings = warnings_of(client_lost)
    assert len(warnings) == 1 and "cannot reach" in warnings[0], warnings
    assert (await status(client_lost))["backend"]["state"] == "failing"

    # the backend comes up; no keystroke, no completion request: the LS finds it by itself and says so
    with FakeBackend(reply="x, y)", port=port) as fake:
        await wait_for_log(client_lost, f"backend at {url} answers again", 20)
        assert (await status(client_lost))["backend"]["state"] == "ok"
        assert fake.requests == []
        uri = "file:///tmp/supervisor/back.py"
        open_doc(client_lost, uri, "value = compute(\n")
        res = await inline(client_lost, uri, 0, 16)  # the first keystroke after it came back is served
        assert res is not None and res.items and res.items[0].insert_text == "x, y)"
    assert len(warnings_of(client_lost)) == 1


async def test_a_loading_backend_is_waited_for_without_progress_on_an_uncreated_token(client_loading):
    """Progress is reported when the LS may start its own backend (it creates the token first); for another
    backend that is still loading, the LS waits and logs, and sends no `$/progress` for a token the client never
    created (pytest-lsp records such reports, with an "Unknown progress token" warning)."""
    with FakeBackend(reply="x, y)") as fake:
        fake.loading = True
        await client_loading.initialize_session(
            types.InitializeParams(
                capabilities=capabilities(), initialization_options={"backendUrl": fake.url, "debounceMs": 0}
            )
        )
        await asyncio.sleep(1.0)  # the LS polls /health meanwhile
        assert not [m for m in logs(client_loading) if "ready" in m], logs(client_loading)
        assert (await status(client_loading))["backend"]["state"] == "starting"
        fake.loading = False
        await wait_for_log(client_loading, f"copilot-ls ready; backend {fake.url} answers", 30)
        assert client_loading.progress_reports == {}
        assert not warnings_of(client_loading)
