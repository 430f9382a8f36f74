"""Snippet choice: how many tokens snippets may take from the prefix window, and which candidates (best first,
each whole or in its short form) fit into that room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from copilot_ls.context.budget import CountTokens, PromptBudget, fit_tail, share
from copilot_ls.context.cursor import enclosing_function_start
from copilot_ls.context.render import lf
from copilot_ls.context.snippets import Snippet
from copilot_ls.documents import Snapshot

RenderSnippet = Callable[[Snippet, bool], str]  # (snippet, short form) -> its text in the prompt


@dataclass(frozen=True)
class Chosen:
    snippet: Snippet
    rendered: str  # its text in the prompt (path line included)
    tokens: int


def kept_prefix(snap: Snapshot, line: int, col: int, keep: str) -> int | None:
    """Offset from which the text before the cursor must stay in the prefix window (``keep_in_prefix``), or
    None when snippets may take any of it."""
    if keep == "file":
        return 0
    if keep != "function":
        return None
    return enclosing_function_start(snap, line, col)


def snippet_room(
    snap: Snapshot, line: int, col: int, before: str, available: int, budget: PromptBudget, count: CountTokens
) -> tuple[int, int | None]:
    """(tokens snippets may take, offset into ``before`` of the text they may not push out of the prefix
    window, or None): the ``snippet_fraction`` of ``available``, less what ``keep_in_prefix`` keeps."""
    room = share(available, budget.snippet_fraction)
    kept = kept_prefix(snap, line, col, budget.keep_in_prefix)
    if kept is None:
        return room, None
    kept = len(lf(snap.text[:kept]))  # an offset into `before`
    need = count(before[kept:])
    room = min(room, max(0, available - need - 1))
    return room, (kept if need <= available else None)


def rough_window_start(line: int, before: str, tokens: int, count: CountTokens) -> int:
    """The first line the prefix window would have with ``tokens`` (which local definitions it cuts off)."""
    return line - fit_tail(before, tokens, count).count("\n")


def choose(
    candidates: Iterable[Snippet], room: int, render: RenderSnippet, count: CountTokens, edit_room: int = 0
) -> list[Chosen]:
    """Greedily by rank: each candidate whole, else in its short form, while the room lasts. ``edit``
    snippets (recent edits) may also take ``edit_room`` more tokens, which they use before ``room``."""
    chosen: list[Chosen] = []
    used = edits = 0  # tokens of all chosen snippets, of the edit snippets among them
    for snip in candidates:
        for short in (False, True):
            rendered = render(snip, short)
            t = count(rendered)
            e = edits + t if snip.kind == "edit" else edits
            if used + t - min(e, edit_room) <= room:
                chosen.append(Chosen(snip, rendered, t))
                used, edits = used + t, e
                break
            if snip.summary == snip.text and not snip.brief:  # no shorter form
                break
    return chosen
