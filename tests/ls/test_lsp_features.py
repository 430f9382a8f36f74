"""LSP features over stdio against the small fake backend of lsp_testing.py (deterministic answers and
timing): capabilities, typed-ahead reuse, the LRU cache, supersession, $/cancelRequest, bookkeeping commands,
configuration, an unknown language, several candidates. The same behaviour with the real model is covered in
test_lsp_e2e.py."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_lsp
from lsp_testing import (
    LS_COMMAND,
    FakeBackend,
    apply_item,
    capabilities,
    change,
    inline,
    inline_params,
    open_doc,
    status,
)
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def fake():
    fb = FakeBackend(reply='"flower", "flow")')
    yield fb
    fb.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient, fake):
    result = await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(),
            # one candidate per request, explicit or not: these tests count backend requests (explicit ranking:
            # test_explicit_request_asks_for_ranked_candidates_in_one_round_trip)
            initialization_options={
                "copilot-ls": {"backendUrl": fake.url, "debounceMs": 30, "explicitCandidates": 1}
            },
        )
    )
    lsp_client.server_caps = result.capabilities
    yield
    await lsp_client.shutdown_session()


@pytest.fixture(autouse=True)
def reset_fake(fake):
    fake.mode, fake.reply, fake.delay = "echo", '"flower", "flow")', 0.0


async def test_capabilities(client):
    caps = client.server_caps
    assert caps.inline_completion_provider is not None
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert set(caps.execute_command_provider.commands) >= {
        "copilot-ls.accepted",
        "copilot-ls.partiallyAccepted",
        "copilot-ls.rejected",
        "copilot-ls.status",
    }


async def test_typed_ahead_and_cache_make_no_backend_call(client, fake):
    uri = "file:///tmp/typed.py"
    text = "def f():\n    return common_prefix(\n"
    open_doc(client, uri, text)
    n0 = len(fake.requests)
    first = await inline(client, uri, 1, 25)
    assert first.items[0].insert_text == '"flower", "flow")'
    assert len(fake.requests) == n0 + 1
    # the user types the first three characters of the suggestion, one by one
    line = "    return common_prefix("
    for i, ch in enumerate('"fl', start=1):
        change(client, uri, 1 + i, (1, 25 + i - 1), (1, 25 + i - 1), ch)
        res = await inline(client, uri, 1, 25 + i, invoked=False)
        assert res.items[0].insert_text == '"flower", "flow")'[i:]
        assert res.items[0].range.start == types.Position(1, 25 + i)
        doc = text.replace(line, line + '"flower", "flow")'[:i])
        assert apply_item(doc, res.items[0], "utf-16") == text.replace(line, line + '"flower", "flow")')
    assert len(fake.requests) == n0 + 1  # no backend call while typing into the suggestion
    st = await status(client)
    assert st["counters"]["typed_ahead"] >= 3
    # typing something else -> a real request again; asking again for the same context -> the LRU cache
    change(client, uri, 5, (1, 28), (1, 28), "x")
    await inline(client, uri, 1, 29)
    assert len(fake.requests) == n0 + 2
    change(client, uri, 6, (1, 28), (1, 29), "")
    change(client, uri, 7, (1, 28), (1, 28), "x")
    await inline(client, uri, 1, 29)
    assert len(fake.requests) == n0 + 2
    assert (await status(client))["counters"]["cache_hits"] >= 1


async def test_explicit_request_asks_for_ranked_candidates_in_one_round_trip(client, fake):
    uri = "file:///tmp/explicit.py"
    open_doc(client, uri, "x = f(\n")
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"explicitCandidates": 4})
    )
    try:
        n0 = len(fake.requests)
        await inline(client, uri, 0, 6, invoked=False)  # typing: n = 1
        assert [r.get("n", 1) for r in fake.requests[n0:]] == [1]
        n1 = len(fake.requests)
        await inline(client, uri, 0, 6, invoked=True)  # asked: the greedy one + 3 samples, sent together
        sent = fake.requests[n1:]
        assert sorted((r.get("n", 1), r["temperature"] > 0) for r in sent) == [(1, False), (3, True)]
    finally:
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"explicitCandidates": 1})
        )


async def test_newer_request_supersedes_older_and_aborts_its_http_call(client, fake):
    fake.mode, fake.delay = "slow", 5.0
    uri = "file:///tmp/supersede.py"
    open_doc(client, uri, "x = f(\n")
    d0 = fake.disconnects
    older = asyncio.ensure_future(inline(client, uri, 0, 6))
    await asyncio.sleep(0.5)  # the older one is now waiting on the backend
    fake.mode = "echo"
    change(client, uri, 2, (0, 6), (0, 6), "1")
    newer = await inline(client, uri, 0, 7)
    t0 = time.monotonic()
    old_result = await older
    assert time.monotonic() - t0 < 2  # answered at once, not after the slow backend
    assert old_result is None or old_result.items == []
    assert newer.items[0].insert_text == '"flower", "flow")'
    for _ in range(50):  # the fake notices the closed connection
        if fake.disconnects > d0:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == d0 + 1
    assert (await status(client))["counters"]["superseded"] >= 1


async def test_cancel_request_aborts_the_backend_call(client, fake):
    fake.mode, fake.delay = "slow", 5.0
    uri = "file:///tmp/cancel.py"
    open_doc(client, uri, "y = g(\n")
    d0 = fake.disconnects
    msg_id = 424242
    fut = asyncio.ensure_future(
        client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 0, 6), msg_id=msg_id
        )
    )
    await asyncio.sleep(0.5)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(fut, 3)
    for _ in range(50):
        if fake.disconnects > d0:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == d0 + 1
    fake.mode = "echo"
    assert (await inline(client, uri, 0, 6)).items  # the server is fine afterwards


async def test_bookkeeping_commands_and_status(client, fake):
    uri = "file:///tmp/stats.py"
    open_doc(client, uri, "z = h(\n")
    items = []
    for text in ("z = h(\n", "z = h(1\n", "z = h(12\n"):
        change(client, uri, len(items) + 2, (0, 0), (1, 0), text)
        items.append((await inline(client, uri, 0, len(text) - 1)).items[0])
    before = (await status(client))["stats"]

    async def cmd(name, *args):
        return await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(args))
        )

    accepted = items[0].command
    assert accepted.command == "copilot-ls.accepted"
    assert await cmd(accepted.command, *accepted.arguments) == {"ok": True}
    assert (await cmd("copilot-ls.partiallyAccepted", items[1].command.arguments[0], 3)) == {"ok": True}
    assert (await cmd("copilot-ls.rejected", items[2].command.arguments[0])) == {"ok": True}
    assert (await cmd("copilot-ls.rejected", items[2].command.arguments[0]))["ok"] is False  # twice
    after = (await status(client))["stats"]
    assert after["accepted"] == before["accepted"] + 1
    assert after["partially_accepted"] == before["partially_accepted"] + 1
    assert after["rejected"] == before["rejected"] + 1
    assert after["by_language"]["python"]["accepted"] >= 1
    with pytest.raises(Exception, match="accepted length"):
        await cmd("copilot-ls.partiallyAccepted", items[1].command.arguments[0], "three")


async def test_configuration_disables_a_language_and_n_candidates(client, fake):
    uri = "file:///tmp/config.py"
    open_doc(client, uri, "w = k(\n")
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"copilot-ls": {"languages": {"python": False}}})
    )
    n0 = len(fake.requests)
    assert await inline(client, uri, 0, 6) is None
    assert len(fake.requests) == n0
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"copilot-ls": {"languages": {"python": True}, "n": 3, "temperature": 0.5}}
        )
    )
    fake.reply = "1, 2)"
    res = await inline(client, uri, 0, 6)
    assert fake.requests[-1]["n"] == 3 and fake.requests[-1]["logprobs"]
    assert res.items and len(res.items) <= 3  # equal replies are de-duplicated by post-processing
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"copilot-ls": {"n": 1, "temperature": 0, "debounceMs": "soon"}}
        )
    )  # invalid: ignored
    await asyncio.sleep(0.2)
    assert any("debounce" in m.message for m in client.messages)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"copilot-ls": {"n": 1, "temperature": 0}})
    )


async def test_unknown_language_gets_text_only_completions(client, fake):
    uri = "file:///tmp/notes.weird"
    open_doc(client, uri, "Dear diary, today I wrote common_prefix(", language_id="weirdlang")
    fake.reply = "x, y)"
    res = await inline(client, uri, 0, 40)
    assert res.items and res.items[0].insert_text == "x, y)"
    assert fake.requests[-1]["prompt"].endswith("common_prefix(")


async def test_request_for_unopened_document(client):
    assert await inline(client, "file:///tmp/never-opened.py", 0, 0) is None


async def test_request_with_invalid_params_is_answered_with_an_error(fake):
    """A negative position (or a missing field) failed validation and pygls dropped the request without a
    response: the client waited forever. It is answered with InvalidParams; the server goes on answering. (A raw
    client: pygls's own client cannot send such params.)"""
    import json
    import subprocess

    proc = await asyncio.create_subprocess_exec(
        *LS_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )

    def send(msg: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
        proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def response(msg_id: int) -> dict:
        while True:
            length = 0
            while (line := await proc.stdout.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            msg = json.loads(await proc.stdout.readexactly(length))
            if msg.get("id") == msg_id and "method" not in msg:
                return msg

    uri = "file:///tmp/invalid_params.py"
    try:
        send(
            {
                "id": 1,
                "method": "initialize",
                "params": {
                    "capabilities": {},
                    "initializationOptions": {"backendUrl": fake.url, "debounceMs": 0},
                },
            }
        )
        await asyncio.wait_for(response(1), 60)
        send({"method": "initialized", "params": {}})
        send(
            {
                "method": "textDocument/didOpen",
                "params": {
                    "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "x = f(\n"}
                },
            }
        )
        ctx = {"triggerKind": 1}
        bad = [
            {"textDocument": {"uri": uri}, "position": {"line": -1, "character": 0}, "context": ctx},
            {"textDocument": {"uri": uri}, "position": {"line": 0, "character": -5}, "context": ctx},
            {"textDocument": {"uri": uri}},
        ]
        for i, params in enumerate(bad, 2):
            send({"id": i, "method": "textDocument/inlineCompletion", "params": params})
            msg = await asyncio.wait_for(response(i), 30)
            assert msg["error"]["code"] == -32602 and "position" in msg["error"]["message"], msg
        send(
            {
                "id": 9,
                "method": "textDocument/inlineCompletion",
                "params": {
                    "textDocument": {"uri": uri},
                    "position": {"line": 0, "character": 6},
                    "context": ctx,
                },
            }
        )
        msg = await asyncio.wait_for(response(9), 30)
        assert msg["result"]["items"][0]["insertText"] == '"flower", "flow")'
    finally:
        proc.kill()
        await proc.wait()


async def test_huge_one_line_document_does_not_block_the_others(client, fake):
    """A 3 MB one-line document (an unterminated string: tree-sitter's worst case) took ~10 s to open and again
    per keystroke, the server answering nothing else meanwhile; it is now text-only (MAX_TREE_BYTES)."""
    big, small = "file:///tmp/huge_line.py", "file:///tmp/next_to_huge.py"
    open_doc(client, small, "x = f(\n")
    await inline(client, small, 0, 6)
    t0 = time.monotonic()
    open_doc(client, big, "s = '" + "😀a中" * 300_000)
    for k in range(3):
        change(client, big, 2 + k, (0, 5 + k), (0, 5 + k), "z")
    res = await inline(client, small, 0, 6)
    assert res.items[0].insert_text == '"flower", "flow")'
    res = await inline(client, big, 0, 8)
    assert res.items and res.items[0].range.start == types.Position(0, 8)
    assert time.monotonic() - t0 < 8.0
    for uri in (big, small):
        client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )


async def test_tcp_mode_for_debugging(fake):
    import subprocess
    import sys

    from lsp_testing import REPO, free_port
    from pygls.lsp.client import LanguageClient as PlainClient

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "copilot_ls.cli", "--tcp", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lsp = PlainClient("tcp-test", "0")
        for _ in range(150):  # one client per server: connect with the real client directly
            try:
                await lsp.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.2)
        result = await lsp.initialize_async(
            types.InitializeParams(
                capabilities=capabilities(), initialization_options={"backendUrl": fake.url, "debounceMs": 0}
            )
        )
        assert result.capabilities.inline_completion_provider is not None
        lsp.initialized(types.InitializedParams())
        open_doc(lsp, "file:///tmp/tcp.py", "x = f(\n")
        res = await lsp.text_document_inline_completion_async(inline_params("file:///tmp/tcp.py", 0, 6))
        assert res.items[0].insert_text == '"flower", "flow")'
        await lsp.shutdown_async(None)
        lsp.exit(None)
        await lsp.stop()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert out == b"" and b"Traceback" not in err  # nothing on stdout, a clean exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("shutdown", "code"), [(True, 0), (False, 1)])
async def test_exit_code_says_whether_shutdown_came_first(fake, shutdown, code):
    """LSP: `exit` after `shutdown` exits with 0, `exit` without it with 1 (it was 0 either way over stdio)."""
    import json
    import subprocess

    messages = [
        {
            "id": 1,
            "method": "initialize",
            "params": {"capabilities": {}, "initializationOptions": {"backendUrl": fake.url}},
        },
        {"method": "initialized", "params": {}},
    ]
    if shutdown:
        messages.append({"id": 2, "method": "shutdown"})
    messages.append({"method": "exit"})
    data = b""
    for msg in messages:
        body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
        data += b"Content-Length: %d\r\n\r\n" % len(body) + body
    proc = subprocess.Popen(
        LS_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    proc.stdin.write(data)
    proc.stdin.flush()  # stdin stays open: the server leaves because of `exit`, not at end of input
    try:
        assert await asyncio.to_thread(proc.wait, 60) == code
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


async def test_exit_without_shutdown_while_a_request_is_in_flight(fake):
    """The cancelled request's answer failed on the closed stdout and pygls reported that failure with a
    window/showMessage through the same closed stdout, recursively: ~200 nested tracebacks (megabytes of stderr)
    and seconds before the process ended."""
    import json
    import subprocess

    fake.mode, fake.delay = "slow", 30.0
    uri = "file:///tmp/exit_in_flight.py"
    messages = [
        {
            "id": 1,
            "method": "initialize",
            "params": {
                "capabilities": {},
                "initializationOptions": {"backendUrl": fake.url, "debounceMs": 0},
            },
        },
        {"method": "initialized", "params": {}},
        {
            "method": "textDocument/didOpen",
            "params": {
                "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "x = f(\n"}
            },
        },
        {
            "id": 2,
            "method": "textDocument/inlineCompletion",
            "params": {
                "textDocument": {"uri": uri},
                "position": {"line": 0, "character": 6},
                "context": {"triggerKind": 1},
            },
        },
    ]

    def frame(msg: dict) -> bytes:
        body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
        return b"Content-Length: %d\r\n\r\n" % len(body) + body

    sent = len(fake.requests)
    proc = subprocess.Popen(
        LS_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        proc.stdin.write(b"".join(frame(m) for m in messages))
        proc.stdin.flush()
        for _ in range(300):  # until the completion request is at the backend
            if len(fake.requests) > sent:
                break
            await asyncio.sleep(0.05)
        assert len(fake.requests) > sent
        t0 = time.monotonic()
        proc.stdin.write(frame({"method": "exit"}))
        proc.stdin.flush()
        err = (await asyncio.to_thread(proc.communicate, timeout=60))[1]
        assert proc.returncode == 1
        assert time.monotonic() - t0 < 5.0
        assert err.count(b"Error sending data") <= 1 and len(err) < 50_000, err[-3000:].decode(
            errors="replace"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_stray_output_cannot_reach_the_protocol_stream():
    import subprocess
    import sys

    from lsp_testing import REPO

    code = (
        "import os, sys\nfrom copilot_ls.lsp.cli import protocol_stdout\nout = protocol_stdout()\n"
        "print('a stray print')\nos.write(1, b'a C-level write')\nout.write(b'PROTOCOL'); out.flush()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"PROTOCOL"
    assert b"a stray print" in r.stderr and b"a C-level write" in r.stderr
