"""End to end: the language server over stdio (pytest-lsp) against the REAL backend with the default model
(the session fixture `backend_url` of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
import pytest_lsp
from lsp_testing import (
    COMMON_PREFIX_BUFFER,
    LS_COMMAND,
    apply_item,
    capabilities,
    change,
    close_all,
    end_position,
    inline,
    inline_params,
    open_doc,
    status,
)
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# Small outputs keep the model time low on a shared CPU; a long timeout because that CPU may be very busy.
OPTIONS = {"maxTokens": 24, "timeout": 600, "debounceMs": 0}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def completions_served(url: str) -> float:
    return metric(url, "copilot_backend_requests_total", endpoint="/v1/completions")


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient, backend_url):
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(), initialization_options={"backendUrl": backend_url, **OPTIONS}
        )
    )
    yield
    await lsp_client.shutdown_session()


@pytest.fixture(autouse=True)
def close_documents(request):
    """Each test starts with no other open documents (they would be part of its prompt)."""
    yield
    for name in ("client", "client8"):
        if name in request.fixturenames:
            close_all(request.getfixturevalue(name))


async def test_common_prefix_buffer_gets_an_inline_item(client):
    uri = "file:///tmp/e2e/common_prefix.py"
    open_doc(client, uri, COMMON_PREFIX_BUFFER)
    line, col = end_position(COMMON_PREFIX_BUFFER)
    result = await inline(client, uri, line, col)
    assert result is not None and result.items, "no inline item for the common_prefix buffer"
    item = result.items[0]
    assert item.insert_text.strip()
    assert item.range.start == types.Position(line, col)
    after = apply_item(COMMON_PREFIX_BUFFER, item, "utf-16")
    assert after.startswith(COMMON_PREFIX_BUFFER) and "\n" not in after[len(COMMON_PREFIX_BUFFER) :].rstrip(
        "\n"
    )
    assert item.command.command == "copilot-ls.accepted"


async def test_several_candidates_are_several_items(client, backend_url):
    uri = "file:///tmp/e2e/candidates.py"
    open_doc(client, uri, COMMON_PREFIX_BUFFER)
    line, col = end_position(COMMON_PREFIX_BUFFER)
    settings = {"n": 3, "explicitCandidates": 3}
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))
    try:
        result = await inline(client, uri, line, col)
    finally:
        settings = {"n": 1, "explicitCandidates": 4}
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))
    assert result is not None and 1 <= len(result.items) <= 3
    texts = [item.insert_text for item in result.items]
    assert len(set(texts)) == len(texts)  # de-duplicated
    assert len({item.command.arguments[0] for item in result.items}) == len(texts)  # one id each


async def test_explicit_request_gets_ranked_candidates_automatic_gets_one(client, backend_url):
    """Typing (automatic trigger) asks for n = 1; asking (Alt+\\, cycling) asks for explicitCandidates (4 by
    default): the greedy candidate and samples, sent together, de-duplicated and ranked."""
    uri = "file:///tmp/e2e/explicit.py"
    text = COMMON_PREFIX_BUFFER + '"flower", '
    open_doc(client, uri, text)
    line, col = end_position(text)
    calls = (await status(client))["counters"]["backend_calls"]
    auto = await inline(client, uri, line, col, invoked=False)
    assert auto is not None and len(auto.items) == 1
    after_auto = (await status(client))["counters"]["backend_calls"]
    assert after_auto == calls + 1
    asked = await inline(client, uri, line, col, invoked=True)
    assert asked is not None and 1 <= len(asked.items) <= 4
    texts = [item.insert_text for item in asked.items]
    assert len(set(texts)) == len(texts)
    # one round trip of two requests (greedy n=1 + 3 samples), not four
    assert (await status(client))["counters"]["backend_calls"] == after_auto + 2
    assert auto.items[0].insert_text in texts  # the greedy text is among them (the engine is batch-invariant)


async def test_typed_ahead_reuse_makes_no_backend_call(client, backend_url):
    # a buffer where the model suggests something at least 3 characters long (the common_prefix one, else
    # with a first argument typed: greedy output depends on the exact prompt)
    for i, typed in enumerate(("", '"flower", ', '"interspecies", "interstellar"')):
        uri = f"file:///tmp/e2e/typed_ahead_{i}.py"
        text = COMMON_PREFIX_BUFFER + typed
        open_doc(client, uri, text)
        line, col = end_position(text)
        first = await inline(client, uri, line, col)
        if first is not None and first.items and len(first.items[0].insert_text) >= 3:
            break
    else:
        pytest.fail("the model suggested nothing long enough to type into")
    suggestion = first.items[0].insert_text
    served = completions_served(backend_url)
    calls = (await status(client))["counters"]["backend_calls"]
    for i in range(1, 3):  # the user types the first two characters of it
        change(client, uri, 1 + i, (line, col + i - 1), (line, col + i - 1), suggestion[i - 1])
        res = await inline(client, uri, line, col + i, invoked=False)
        assert res.items[0].insert_text == suggestion[i:]
        assert res.items[0].range.start == types.Position(line, col + i)
    assert completions_served(backend_url) == served  # the backend's own count
    st = await status(client)
    assert st["counters"]["backend_calls"] == calls  # and the LS's
    assert st["counters"]["typed_ahead"] >= 2
    assert st["backend"]["fim_template"] == "none"  # the default model has no FIM tokens


# A buffer whose greedy continuation is long and contains none of Python's stop strings (the list goes on
# counting, one number per line), so a request for it is still generating when the test interrupts it.
COUNTING_BUFFER = "DATA = [\n" + "".join(f"    {i},\n" for i in range(1, 13)) + "    "


async def running_request(client, backend_url: str, uri: str, state: dict) -> tuple[int, asyncio.Future]:
    """Send an inline request that is being generated by the backend right now (retrying with a new text if
    the model finished too fast): (msg_id, future). Each try renames DATA (line 0), so the prompt is new."""
    deadline = time.monotonic() + 120
    while metric(backend_url, "copilot_backend_active_requests") > 0:  # earlier requests have ended
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    for _ in range(8):
        state["version"] += 1
        change(
            client, uri, state["version"], (0, 4), (0, 4), "_"
        )  # DATA -> DATA_: a new prompt, no cache hit
        state["msg_id"] += 1
        fut = asyncio.ensure_future(
            client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION,
                inline_params(uri, state["line"], state["col"]),
                msg_id=state["msg_id"],
            )
        )
        while not fut.done() and metric(backend_url, "copilot_backend_active_requests") < 1:
            await asyncio.sleep(0.05)
        if not fut.done():
            return state["msg_id"], fut
        await fut
    pytest.fail("the model always finished before the request could be interrupted")


async def test_supersession_and_cancel_abort_the_backend_request(client, backend_url):
    uri = "file:///tmp/e2e/supersede.py"
    open_doc(client, uri, COUNTING_BUFFER)
    line, col = end_position(COUNTING_BUFFER)
    state = {"version": 1, "line": line, "col": col, "msg_id": 777000}
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"maxTokens": 1024})
    )  # long enough to still be running when superseded
    cancelled0 = metric(backend_url, "copilot_backend_cancellations_total")
    # supersession: a newer request for the same document while the older one is being generated
    _, older = await running_request(client, backend_url, uri, state)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"maxTokens": 4}))
    newer = asyncio.ensure_future(inline(client, uri, state["line"], state["col"]))
    t0 = time.monotonic()
    assert await asyncio.wait_for(older, 60) is None  # superseded: answered with nothing, at once
    assert time.monotonic() - t0 < 30
    await asyncio.wait_for(newer, 600)
    # $/cancelRequest while the backend generates
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"maxTokens": 1024})
    )
    msg_id, fut = await running_request(client, backend_url, uri, state)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(fut, 60)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))
    deadline = time.monotonic() + 120  # the backend notices the closed connections
    while metric(backend_url, "copilot_backend_cancellations_total") < cancelled0 + 2:
        assert time.monotonic() < deadline, "the backend never saw the aborted requests"
        await asyncio.sleep(0.5)
    st = await status(client)
    assert st["counters"]["superseded"] >= 1 and st["counters"]["cancelled"] >= 1


async def test_emoji_and_cjk_positions_with_the_real_model(client):
    uri = "file:///tmp/e2e/emoji.py"
    text = 'greeting = "😀 你好"\nprint(greeting + "😀" + '
    open_doc(client, uri, text)
    last = text.split("\n")[-1]
    col16 = len(last.encode("utf-16-le")) // 2
    result = await inline(client, uri, 1, col16)
    assert result is not None
    for item in result.items:
        assert item.range.start == types.Position(1, col16)
        after = apply_item(text, item, "utf-16")
        assert after.startswith(text)


async def test_document_with_a_lone_surrogate_gets_items(client):
    """A lone surrogate in the buffer (JSON can carry "\\ud800") made every request there fail (the tokenizer's
    count raised; the backend answers HTTP 400 to such a prompt); it is sent as U+FFFD."""
    uri = "file:///tmp/e2e/lone_surrogate.py"
    text = 's = "\ud800"\n\n\ndef add(a, b):\n    return '
    open_doc(client, uri, text)
    line, col = end_position(text)
    errors = (await status(client))["counters"]["errors"]
    result = await inline(client, uri, line, col)
    assert result is not None and result.items
    st = await status(client)
    assert st["counters"]["errors"] == errors and st["backend"]["state"] == "ok"


async def test_50000_line_file(client):
    uri = "file:///tmp/e2e/big.py"
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(16_667))
    text = body + "def add(a, b):\n    return "
    n_lines = text.count("\n") + 1
    assert n_lines >= 50_000, n_lines
    t0 = time.monotonic()
    open_doc(client, uri, text)
    line, col = end_position(text)
    change(client, uri, 2, (line, col), (line, col), "a")
    change(client, uri, 3, (line, col + 1), (line, col + 1), " ")
    result = await inline(client, uri, line, col + 2)
    assert result is not None and result.items
    assert result.items[0].range.start == types.Position(line, col + 2)
    # the document state survived: an edit at the top is reflected, and the server still answers fast
    change(client, uri, 4, (0, 4), (0, 6), "g0")
    t1 = time.monotonic()
    st = await status(client)
    assert time.monotonic() - t1 < 5
    assert st["documents"] >= 1
    assert time.monotonic() - t0 < 600


async def test_100_changes_per_second_with_requests_in_between(client):
    uri = "file:///tmp/e2e/storm.py"
    text = "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return "
    open_doc(client, uri, text)
    line, col = end_position(text)
    pending = []
    version = 1
    t0 = time.monotonic()
    for k in range(100):  # 100 didChange in ~1 s, a request after every 10th
        if k < 50:  # type 50 characters, then delete them one by one
            change(client, uri, version + 1, (line, col), (line, col), "abcdefghij"[k % 10])
            col += 1
        else:
            change(client, uri, version + 1, (line, col - 1), (line, col), "")
            col -= 1
        version += 1
        if k % 10 == 9:
            pending.append(asyncio.ensure_future(inline(client, uri, line, col, invoked=False)))
        await asyncio.sleep(0.01)
    assert time.monotonic() - t0 < 5
    results = await asyncio.wait_for(asyncio.gather(*pending), 600)
    assert all(r is None or isinstance(r, types.InlineCompletionList) for r in results[:-1])
    # after the storm the document is the original again: a completion lands at the cursor and fits
    assert col == end_position(text)[1]
    final = await inline(client, uri, line, col)
    assert final is not None and final.items
    assert final.items[0].range.start == types.Position(line, col)
    assert apply_item(text, final.items[0], "utf-16").startswith(text)


async def test_unknown_language_gets_text_only_context(client):
    uri = "file:///tmp/e2e/notes.txt"
    text = "Shopping list:\n- apples\n- bananas\n- "
    open_doc(client, uri, text, language_id="plaintext")
    line, col = end_position(text)
    result = await inline(client, uri, line, col)
    assert isinstance(result, types.InlineCompletionList)
    assert result.items and result.items[0].insert_text.strip()


# -- utf-8 negotiated: one more LS, the same real backend ----------------------------------------------------
@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client8(lsp_client: LanguageClient, backend_url):
    result = await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(["utf-16", "utf-8"]),
            initialization_options={"backendUrl": backend_url, **OPTIONS},
        )
    )
    assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
    yield
    await lsp_client.shutdown_session()


async def test_utf8_positions_with_the_real_model(client8):
    uri = "file:///tmp/e2e/emoji8.py"
    text = 'names = ["中文", "😀"]\nfor name in names:\n    print('
    open_doc(client8, uri, text)
    line, col = end_position(text)
    result = await inline(client8, uri, line, len(b"    print("))
    assert result is not None and result.items
    for item in result.items:
        assert item.range.start == types.Position(line, col)  # ASCII line: utf-8 == code points
        assert apply_item(text, item, "utf-8").startswith(text)
    # a cursor after multi-byte characters: line 0 after "中文", in bytes
    head = 'names = ["中文'
    result = await inline(client8, uri, 0, len(head.encode()))
    assert result is not None
    for item in result.items:
        assert item.range.start == types.Position(0, len(head.encode()))
        after = apply_item(text, item, "utf-8")
        assert after.startswith(head) and after.endswith(text[len(head) :].split("\n", 1)[1])
