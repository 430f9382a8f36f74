"""The LS when the backend misbehaves: garbage, too slow, not there, killed mid-request and restarted; and the
autostart of `copilot-backend serve` with $/progress. Never a crash, never garbage items, ONE message per
outage, recovery with backoff."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import pytest_lsp
from lsp_testing import (
    COMMON_PREFIX_BUFFER,
    LS_COMMAND,
    FakeBackend,
    capabilities,
    end_position,
    free_port,
    inline,
    open_doc,
    status,
)
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


def warnings_of(client) -> list[str]:
    return [
        m.message for m in client.messages if m.type in (types.MessageType.Warning, types.MessageType.Error)
    ]


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


@pytest.fixture(scope="module")
def junk():
    fb = FakeBackend(mode="garbage", reply="x, y)")
    yield fb
    fb.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient, junk):
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(), initialization_options={"backendUrl": junk.url, "debounceMs": 0}
        )
    )
    yield
    await lsp_client.shutdown_session()


async def test_garbage_then_recovery(client, junk):
    uri = "file:///tmp/robust/garbage.py"
    open_doc(client, uri, "value = compute(\n")
    for _ in range(3):
        res = await inline(client, uri, 0, 16)
        assert res is None or res.items == []
    await asyncio.sleep(0.2)
    msgs = warnings_of(client)
    assert len(msgs) == 1, msgs  # ONE message for the outage, with the reason
    assert "not JSON" in msgs[0] or "not a completion" in msgs[0] or "non-JSON" in msgs[0]
    st = await status(client)
    assert st["backend"]["state"] == "failing" and st["backend"]["last_error"]
    junk.mode = "echo"  # the backend is fixed: items again after the backoff

    async def items():
        res = await inline(client, uri, 0, 16)
        return res is not None and res.items and res.items[0].insert_text == "x, y)"

    await wait_for(items, 40, "recovery after the backoff")
    assert len(warnings_of(client)) == 1
    assert (await status(client))["backend"]["state"] == "ok"


async def test_a_refused_request_is_not_an_outage(client, junk):
    # another server refuses one prompt (over its context, a parameter it does not take): that request gets no
    # items, the next one is served at once (no backoff), and the user is told once per status
    junk.mode = "echo"
    ready = "file:///tmp/robust/ready.py"
    open_doc(client, ready, "value = compute(\n")
    await wait_for(lambda: _served(client, ready), 40, "the backend to answer")  # after any earlier backoff
    uri = "file:///tmp/robust/refused.py"  # another text: not answered from the cache
    open_doc(client, uri, "total = compute(\n")
    n0 = len(warnings_of(client))
    junk.answer = (
        400,
        b'{"error": {"message": "This model\'s maximum context length is 2048 tokens", '
        b'"type": "invalid_request_error", "code": "context_length_exceeded"}}',
    )
    try:
        for _ in range(2):
            res = await inline(client, uri, 0, 16)
            assert res is None or res.items == []
    finally:
        junk.answer = None
    assert await _served(client, uri)  # at once: no backoff
    st = await status(client)
    assert st["backend"]["state"] == "ok" and st["counters"]["refused"] >= 2
    await asyncio.sleep(0.2)
    new = warnings_of(client)[n0:]
    assert len(new) == 1 and "maximum context length" in new[0], new


async def _served(client, uri: str) -> bool:
    res = await inline(client, uri, 0, 16)
    return bool(res is not None and res.items and res.items[0].insert_text == "x, y)")


async def test_slow_backend_times_out_without_blocking(client, junk):
    junk.mode, junk.delay = "slow", 5.0
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"timeout": 0.5}))
    uri = "file:///tmp/robust/slow.py"
    open_doc(client, uri, "total = add(\n")
    n0 = len(warnings_of(client))
    t0 = time.monotonic()
    res = await inline(client, uri, 0, 12)
    assert time.monotonic() - t0 < 4
    assert res is None or res.items == []
    await asyncio.sleep(0.2)
    assert len(warnings_of(client)) == n0 + 1 and "did not answer within" in warnings_of(client)[-1]
    junk.mode = "echo"
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"timeout": 30}))


async def test_backend_not_there(client):
    port = free_port()
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"backendUrl": f"http://127.0.0.1:{port}"})
    )  # not the default URL: no autostart
    uri = "file:///tmp/robust/absent.py"
    open_doc(client, uri, "x = f(\n")
    n0 = len(warnings_of(client))
    for _ in range(3):
        res = await inline(client, uri, 0, 6)
        assert res is None or res.items == []
    await asyncio.sleep(0.2)
    assert len(warnings_of(client)) == n0 + 1 and "cannot reach" in warnings_of(client)[-1]


async def test_invalid_bookkeeping_arguments_are_errors_not_crashes(client):
    with pytest.raises(Exception, match="item id"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="copilot-ls.accepted", arguments=[])
        )
    with pytest.raises(Exception, match="not defined"):
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command="copilot-ls.nope"))
    assert (await status(client))["documents"] >= 1


# -- the real backend: killed mid-request, restarted -----------------------------------------------------------
@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client_real(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


@pytest.mark.e2e
async def test_backend_killed_mid_request_and_restarted(client_real, start_backend):
    port = free_port()
    backend = start_backend("--port", str(port))
    url = backend.wait_ready()
    assert url.endswith(f":{port}")
    await client_real.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(),
            initialization_options={"backendUrl": url, "debounceMs": 0, "maxTokens": 128, "timeout": 600},
        )
    )
    uri = "file:///tmp/robust/killed.py"
    open_doc(client_real, uri, COMMON_PREFIX_BUFFER)
    line, col = end_position(COMMON_PREFIX_BUFFER)
    pending = asyncio.ensure_future(inline(client_real, uri, line, col))

    def active() -> float:
        text = httpx.get(url + "/metrics", timeout=30).text
        return sum(
            float(x.split()[-1]) for x in text.splitlines() if x.startswith("copilot_backend_active_requests")
        )

    deadline = time.monotonic() + 120
    while active() < 1:  # the request is being generated
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    os.kill(backend.proc.pid, signal.SIGKILL)
    res = await asyncio.wait_for(pending, 60)
    assert res is None or res.items == []
    for _ in range(2):  # more requests while it is down: no crash, no spam
        res = await inline(client_real, uri, line, col)
        assert res is None or res.items == []
    await asyncio.sleep(0.3)
    assert len(warnings_of(client_real)) == 1, warnings_of(client_real)
    assert (await status(client_real))["backend"]["state"] == "failing"

    restarted = start_backend("--port", str(port))  # the same address again
    restarted.wait_ready()

    async def items():
        res = await inline(client_real, uri, line, col)
        return res is not None and bool(res.items)

    await wait_for(items, 600, "items after the backend came back")
    assert (await status(client_real))["backend"]["state"] == "ok"
    assert len(warnings_of(client_real)) == 1


# -- autostart: the LS starts its own backend child, reports $/progress, stops it on exit ---------------------
@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client_auto(lsp_client: LanguageClient):
    yield
    # shut down inside the test (to check the child is stopped); this is for failures
    if lsp_client.capabilities is not None and lsp_client._server.returncode is None:
        await lsp_client.shutdown_session()


@pytest.mark.e2e
async def test_autostart_reports_progress_and_stops_the_child(client_auto):
    url = f"http://127.0.0.1:{free_port()}"
    await client_auto.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(),
            initialization_options={
                "backendUrl": url,
                "autostart": True,
                "debounceMs": 0,
                "maxTokens": 16,
                "timeout": 600,
            },
        )
    )
    uri = "file:///tmp/robust/autostart.py"
    open_doc(client_auto, uri, COMMON_PREFIX_BUFFER)
    line, col = end_position(COMMON_PREFIX_BUFFER)
    res = await asyncio.wait_for(inline(client_auto, uri, line, col), 900)  # waits for the model to load
    assert res is not None and res.items
    reports = [
        r
        for token, rs in client_auto.progress_reports.items()
        if str(token).startswith("copilot-ls/backend")
        for r in rs
    ]
    kinds = [type(r).__name__ for r in reports]
    assert kinds[0] == "WorkDoneProgressBegin" and kinds[-1] == "WorkDoneProgressEnd", kinds
    pid = (await status(client_auto))["backend"]["autostarted_pid"]
    assert pid is not None and httpx.get(url + "/health", timeout=30).status_code == 200
    await client_auto.shutdown_session()
    deadline = time.monotonic() + 60
    while True:  # the child is gone with the LS
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            pass
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":  # exited, not yet reaped by init
                break
        except FileNotFoundError:
            break
        assert time.monotonic() < deadline, "the autostarted backend outlived the LS"
        await asyncio.sleep(0.2)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=5)
