"""Position encodings over real LSP (stdio): positions after emoji, CJK and combining marks, in utf-16 and utf-8.

The backend here is the small fake of conftest.py, which records the prompt it was sent: the prompt must end
exactly at the cursor, and the item's range must put the reply exactly there. (The same with the real model:
test_lsp_e2e.py.)
"""

from __future__ import annotations

import pytest
import pytest_lsp
from lsp_testing import LS_COMMAND, FakeBackend, apply_item, capabilities, change, inline, open_doc
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the tests share the module's LS (and its loop)

OFFERS = {"utf-16": None, "utf-8": ["utf-16", "utf-8"], "utf-32": ["utf-32"]}


@pytest.fixture(scope="module")
def fake():
    fb = FakeBackend(reply="XYZ")
    yield fb
    fb.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module", params=list(OFFERS))
async def client(lsp_client: LanguageClient, fake, request):
    result = await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(OFFERS[request.param]),
            # one candidate, one request per completion: the tests read the prompt of the last request
            initialization_options={"backendUrl": fake.url, "debounceMs": 0, "explicitCandidates": 1},
        )
    )
    lsp_client.encoding = request.param
    lsp_client.negotiated = result.capabilities.position_encoding
    yield
    await lsp_client.shutdown_session()


def units(s: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(s.encode("utf-8"))
    if encoding == "utf-16":
        return len(s.encode("utf-16-le")) // 2
    return len(s)


async def test_encoding_negotiated(client):
    # utf-8 whenever offered (even when not first), else utf-16
    assert client.negotiated == client.encoding


@pytest.mark.parametrize(
    "line",
    [
        's = "😀😀" + f(',  # astral plane: 2 utf-16 units, 4 utf-8 bytes
        'name = "中文字" + g(',  # CJK: 1 utf-16 unit, 3 utf-8 bytes
        'e = "é" + h(',  # e + combining acute: two code points
        "👩‍👩‍👧 = k(",  # ZWJ sequence
    ],
)
async def test_request_position_after_wide_characters(client, fake, line):
    uri = f"file:///tmp/pos_{abs(hash(line))}_{client.encoding}.py"
    text = f"import os\n{line}\nprint(1)\n"
    open_doc(client, uri, text)
    n0 = len(fake.requests)
    result = await inline(client, uri, 1, units(line, client.encoding))
    assert len(fake.requests) == n0 + 1
    assert fake.requests[-1]["prompt"].endswith(line)  # the cursor is exactly at the end of the line
    assert result is not None and result.items
    after = apply_item(text, result.items[0], client.encoding)
    assert after == f"import os\n{line}XYZ\nprint(1)\n"

    # a cursor in the middle of the line, right after the first wide character
    head = line[: next(i for i, ch in enumerate(line) if not ch.isascii()) + 1]
    result = await inline(client, uri, 1, units(head, client.encoding))
    assert fake.requests[-1]["prompt"].endswith(head)
    assert apply_item(text, result.items[0], client.encoding) == text.replace(
        line, head + "XYZ" + line[len(head) :]
    )


async def test_incremental_change_after_emoji(client, fake):
    uri = f"file:///tmp/edit_{client.encoding}.py"
    text = 'a = "😀中"\nb = 1\n'
    open_doc(client, uri, text)
    # insert " + x(" after the closing quote of line 0, in client units
    col = units('a = "😀中"', client.encoding)
    change(client, uri, 2, (0, col), (0, col), " + x(")
    # replace the "1" on line 1
    change(client, uri, 3, (1, 4), (1, 5), "2")
    result = await inline(client, uri, 0, col + 5)
    assert fake.requests[-1]["prompt"].endswith('a = "😀中" + x(')
    assert (
        apply_item('a = "😀中" + x(\nb = 2\n', result.items[0], client.encoding)
        == 'a = "😀中" + x(XYZ\nb = 2\n'
    )
    await inline(client, uri, 1, 5)
    assert fake.requests[-1]["prompt"].endswith('a = "😀中" + x(\nb = 2')


async def test_crlf_documents(client, fake):
    uri = f"file:///tmp/crlf_{client.encoding}.py"
    text = 'a = "😀"\r\nb = f(\r\nc = 3\r\n'
    open_doc(client, uri, text)
    change(client, uri, 2, (2, 4), (2, 5), "4")  # c = 4, across a CRLF line
    result = await inline(client, uri, 1, 6)
    assert fake.requests[-1]["prompt"].endswith('a = "😀"\r\nb = f(') or fake.requests[-1]["prompt"].endswith(
        'a = "😀"\nb = f('
    )
    item = result.items[0]
    assert item.range.start == types.Position(1, 6) and item.range.end == types.Position(1, 6)
    await inline(client, uri, 2, 5)
    assert fake.requests[-1]["prompt"].rstrip("\r\n").endswith("c = 4")


async def test_position_past_the_end_is_clamped(client, fake):
    uri = f"file:///tmp/clamp_{client.encoding}.py"
    open_doc(client, uri, "x = y(\n")
    result = await inline(client, uri, 0, 999)
    assert fake.requests[-1]["prompt"].endswith("x = y(")
    assert result.items[0].range.start == types.Position(0, 6)


async def test_position_past_the_last_line_is_the_end_of_the_document(client, fake):
    """A line past the end means the end of the document (as a didChange range there does), not the same column
    on the last line: the ghost text went into the middle of the last line."""
    uri = f"file:///tmp/past_eof_{client.encoding}.py"
    text = 'a = 1\ns = "😀" + f('
    open_doc(client, uri, text)
    for line, character in [(5, 0), (2, 3), (9, 999)]:
        result = await inline(client, uri, line, character)
        assert fake.requests[-1]["prompt"].endswith('s = "😀" + f(')
        (item,) = result.items
        end = units('s = "😀" + f(', client.encoding)
        assert item.range.start == item.range.end == types.Position(1, end)
        assert apply_item(text, item, client.encoding) == text + "XYZ"


# -- real editors' capability sets (as recorded by pytest-lsp) -------------------------------------------------
EDITORS = {"visual-studio-code": "utf-16", "neovim@v0.11.0": "utf-8", "emacs": "utf-16"}


@pytest_lsp.fixture(
    config=ClientServerConfig(server_command=LS_COMMAND), scope="module", params=list(EDITORS)
)
async def editor(lsp_client: LanguageClient, fake, request):
    result = await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=pytest_lsp.client_capabilities(request.param),
            # one candidate, one request per completion: the tests read the prompt of the last request
            initialization_options={"backendUrl": fake.url, "debounceMs": 0, "explicitCandidates": 1},
        )
    )
    lsp_client.spec = request.param
    lsp_client.result = result
    yield
    await lsp_client.shutdown_session()


async def test_editor_capability_sets(editor, fake):
    caps = editor.result.capabilities
    offered = editor.capabilities.general.position_encodings if editor.capabilities.general else None
    expected = "utf-8" if offered and "utf-8" in offered else EDITORS[editor.spec] if offered else "utf-16"
    assert caps.position_encoding == expected
    assert caps.inline_completion_provider is not None
    uri = f"file:///tmp/editor_{editor.spec.replace('@', '_')}.py"
    line = 'x = "中😀" + f('
    open_doc(editor, uri, f"{line}\n")
    result = await inline(
        editor,
        uri,
        0,
        units(
            line,
            str(
                caps.position_encoding.value
                if hasattr(caps.position_encoding, "value")
                else caps.position_encoding
            ),
        ),
    )
    assert fake.requests[-1]["prompt"].endswith(line)
    assert result.items[0].insert_text == "XYZ"
