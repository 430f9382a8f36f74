"""Recently edited ranges as a context source (issue 15, item 4): the history of edit regions, the snippets it
gives, their place in the prompt (ranked with the other snippets, inside the same budget, the prefix cache kept),
and the language server feeding it from didChange."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import pytest_lsp
from lsp_testing import LS_COMMAND, FakeBackend, capabilities, change, close_all, inline, open_doc
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from copilot_ls.context import PromptBudget, build_prompt
from copilot_ls.context.edits import MAX_REGIONS, EditHistory, edit_snippets
from copilot_ls.documents import Document, changed_lines


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def record_changes(doc: Document, history: EditHistory, changes) -> None:
    """Apply (text, start, end) changes to a real Document and record the spans it reports."""
    for text, start, end in changes:
        span = doc.apply_change(text, start, end)
        if span is not None:
            history.record(doc.uri, *span)


def spans(history: EditHistory) -> list[tuple[str, int, int]]:
    return [(r.uri, r.start_line, r.end_line) for r in history.regions()]


# --- the history -----------------------------------------------------------------------------------------------
def test_typing_a_line_is_one_region() -> None:
    doc = Document("file:///t/a.py", "python", 1, "def f():\n    return 1\n\n\ndef g():\n    return 2\n")
    h = EditHistory(clock=Clock())
    line = "    log.debug('f called')"
    record_changes(doc, h, [("\n", (0, 8), (0, 8))])  # Enter after `def f():`
    record_changes(doc, h, [(ch, (1, i), (1, i)) for i, ch in enumerate(line)])  # typed key by key
    assert doc.snapshot().lines()[1] == line
    assert spans(h) == [("file:///t/a.py", 0, 1)]
    assert h.regions()[0].last_line == 1


def test_edits_elsewhere_are_new_regions_newest_first_and_move_with_the_text() -> None:
    text = "".join(f"line{i} = {i}\n" for i in range(40))
    doc = Document("file:///t/a.py", "python", 1, text)
    h = EditHistory()
    record_changes(doc, h, [("X", (30, 0), (30, 0))])
    record_changes(doc, h, [("Y", (5, 0), (5, 0))])
    assert spans(h) == [("file:///t/a.py", 5, 5), ("file:///t/a.py", 30, 30)]
    # three lines inserted above both: they move down, their text is still what was edited
    record_changes(doc, h, [("a\nb\nc\n", (0, 0), (0, 0))])
    assert spans(h)[1:] == [("file:///t/a.py", 8, 8), ("file:///t/a.py", 33, 33)]
    assert doc.snapshot().lines()[8].startswith("Yline5") and doc.snapshot().lines()[33].startswith("Xline30")
    # lines deleted above: they move up
    record_changes(doc, h, [("", (0, 0), (3, 0))])
    assert ("file:///t/a.py", 5, 5) in spans(h) and ("file:///t/a.py", 30, 30) in spans(h)


def test_a_deleted_region_is_absorbed_and_bounded_and_forgotten() -> None:
    text = "".join(f"v{i} = {i}\n" for i in range(100))
    doc = Document("file:///t/a.py", "python", 1, text)
    h = EditHistory()
    record_changes(doc, h, [("w = 0\n", (20, 0), (20, 0))])
    record_changes(doc, h, [("", (18, 0), (24, 0))])  # the region's lines deleted with some around them
    assert spans(h) == [("file:///t/a.py", 18, 18)]  # one region: where the deletion happened
    for i in range(MAX_REGIONS + 5):  # far apart: one region each
        record_changes(doc, h, [("#", (30 + 4 * i, 0), (30 + 4 * i, 0))])
    assert len(h) == MAX_REGIONS and spans(h)[0][1] == 30 + 4 * (MAX_REGIONS + 4)
    other = "file:///t/b.py"
    h.record(other, 3, 3, 3)
    h.forget("file:///t/a.py")
    assert spans(h) == [(other, 3, 3)]


def test_whole_text_changes_give_the_changed_lines() -> None:
    assert changed_lines(["a", "b", "c"], ["a", "b", "c"]) is None
    assert changed_lines(["a", "b", "c"], ["a", "X", "c"]) == (1, 1, 1)
    assert changed_lines(["a", "c"], ["a", "b1", "b2", "c"]) == (1, 0, 2)  # inserted: old_end = start - 1
    assert changed_lines(["a", "b", "c"], ["a", "c"]) == (1, 1, 0)  # deleted
    doc = Document("file:///t/a.py", "python", 1, "a = 1\nb = 2\nc = 3\n")
    assert doc.apply_change("a = 1\nb = 20\nc = 3\n") == (1, 1, 1)  # a client that sends whole texts
    assert doc.apply_change("", (0, 0), (0, 0)) is None  # nothing changed


# --- as snippets -------------------------------------------------------------------------------------------------
def snap_of(uri: str, text: str):
    return Document(uri, "python", 1, text).snapshot()


def test_snippets_leave_out_the_cursor_region_what_the_windows_show_and_closed_documents() -> None:
    here = snap_of("file:///t/here.py", "".join(f"x{i} = {i}\n" for i in range(200)))
    other = snap_of("file:///t/other.py", "import logging\n\nlog = logging.getLogger()\nlog.info('x')\n")
    h = EditHistory()
    h.record("file:///t/gone.py", 1, 1, 1)  # not open any more
    h.record(other.uri, 3, 3, 3)
    h.record(here.uri, 10, 10, 10)  # far above the window
    h.record(here.uri, 150, 150, 150)  # inside the window
    h.record(here.uri, 190, 190, 190)  # the cursor's region
    got = edit_snippets(here, 190, h.regions(), [other], visible=(120, 190))
    assert [(s.path, s.start_line, s.end_line) for s in got] == [
        ("/t/here.py", 7, 12),  # the region with 3 lines above and 2 below
        ("/t/other.py", 0, 3),
    ]
    assert got[0].kind == "edit" and got[0].text.split("\n")[3] == "x10 = 10"
    assert got[0].score > got[1].score  # newer first


def test_a_region_next_to_the_cursor_never_shows_the_cursor_line() -> None:
    here = snap_of("file:///t/here.py", "".join(f"x{i} = {i}\n" for i in range(50)) + "y = ")
    h = EditHistory()
    h.record(here.uri, 48, 48, 48)
    got = edit_snippets(here, 50, h.regions(), [], visible=(50, 50))
    assert got and got[0].end_line == 49 and "y = " not in got[0].text


# --- in the prompt --------------------------------------------------------------------------------------------
LONG = "".join(
    f"def handler_{i}(request):\n    data = request.json()\n    return respond(data)\n\n\n" for i in range(80)
)
PATTERN = "    audit.record(request.user, 'handler_3')"


def long_file_with_edit() -> tuple[Document, EditHistory]:
    """A file longer than the window; the user added an audit line to handler_3, far above the cursor, and is
    now in the last handler."""
    doc = Document("file:///t/views.py", "python", 1, LONG + "def handler_new(request):\n")
    h = EditHistory()
    record_changes(doc, h, [("\n" + PATTERN, (16, 27), (16, 27))])
    record_changes(doc, h, [("\n    ", (401, 25), (401, 25))])  # the new line in the last handler
    return doc, h


def test_the_edit_reaches_the_prompt_within_the_budget_even_when_the_file_fills_the_window() -> None:
    doc, h = long_file_with_edit()
    snap = doc.snapshot()
    line = len(snap.lines()) - 1
    budget = PromptBudget(max_prompt_tokens=512)
    without = build_prompt(snap, line, 4, budget=budget, workspace=None)
    with_edits = build_prompt(snap, line, 4, budget=budget, workspace=None, edits=h.regions())
    assert PATTERN.strip() not in without.prompt  # out of the window, and keep_in_prefix=file leaves no room
    assert PATTERN in with_edits.prompt
    assert with_edits.prompt.index(PATTERN) < with_edits.prompt.index("# Path: t/views.py (python)")
    assert [s.kind for s in with_edits.sources][0] == "edit"
    assert len(with_edits.prompt) <= 3 * 512  # the estimate counts 3 characters a token
    # no edits: byte for byte the prompt without the source
    assert build_prompt(snap, line, 4, budget=budget, workspace=None, edits=()).prompt == without.prompt


def test_an_edit_already_in_the_window_or_a_definition_is_not_shown_twice() -> None:
    doc = Document("file:///t/small.py", "python", 1, "def a():\n    return 1\n\n\ndef b():\n    ")
    h = EditHistory()
    record_changes(doc, h, [("\n    audit()", (0, 8), (0, 8))])
    snap = doc.snapshot()
    p = build_prompt(snap, 6, 4, workspace=None, edits=h.regions())
    assert p.prompt.count("audit()") == 1 and "edit" not in [s.kind for s in p.sources]


def test_typing_keeps_the_prompts_beginning_while_edits_elsewhere_are_shown() -> None:
    """The prefix cache (issue 16): the edit regions come first in the prompt, so while the user types in one
    place (a region the prompt leaves out) consecutive prompts still share their beginning."""
    doc, h = long_file_with_edit()
    budget = PromptBudget(max_prompt_tokens=512)
    prompts = []
    for ch in "audit.record(request.user, 'handler_new')\n    return respond(None)":
        snap = doc.snapshot()
        line = len(snap.lines()) - 1
        prompts.append(
            build_prompt(
                snap, line, len(snap.lines()[line]), budget=budget, workspace=None, edits=h.regions()
            ).prompt
        )
        pos = (line, len(snap.lines()[line]))
        record_changes(doc, h, [(ch, pos, pos)])
    head = prompts[0][: prompts[0].index("# Path: t/views.py (python)")]
    assert PATTERN in head
    assert all(p.startswith(head) for p in prompts)
    shared = sum(len(os.path.commonprefix([a, b])) for a, b in zip(prompts, prompts[1:], strict=False))
    assert shared / sum(len(b) for b in prompts[1:]) > 0.9


# --- the language server -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake():
    fb = FakeBackend(reply="pass")
    yield fb
    fb.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=LS_COMMAND), scope="module")
async def client(lsp_client: LanguageClient, fake):
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(),
            initialization_options={"copilot-ls": {"backendUrl": fake.url, "debounceMs": 0}},
        )
    )
    yield
    await lsp_client.shutdown_session()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_server_records_didchange_edits_and_forgets_closed_documents(client, fake, tmp_path: Path):
    models = tmp_path / "models.py"
    models.write_text("")
    views = tmp_path / "views.py"
    views.write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    murl, vurl = models.as_uri(), views.as_uri()
    mtext = "from dataclasses import dataclass\n\n\n@dataclass\nclass User:\n    name: str\n"
    open_doc(client, murl, mtext)
    open_doc(client, vurl, "def show(user):\n    ")
    field = "    email: str = ''"
    change(client, murl, 2, (5, 13), (5, 13), "\n")
    for i, ch in enumerate(field):  # typed key by key: one region
        change(client, murl, 3 + i, (6, i), (6, i), ch)
    res = await inline(client, vurl, 1, 4)
    assert res is not None
    prompt = fake.requests[-1]["prompt"]
    assert "# Path: models.py\n" in prompt and field in prompt and "class User:" in prompt
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=murl))
    )
    change(client, vurl, 2, (1, 4), (1, 4), "r")
    await asyncio.sleep(0.05)
    await inline(client, vurl, 1, 5)
    assert field not in fake.requests[-1]["prompt"]
    close_all(client)
