"""Recently edited ranges: a small history of where the user has just edited, and the snippets it gives.

``EditHistory`` (pure: URIs and line numbers, no LSP types) records each change to an open document as the lines
it produced, merges a change into a region it touches or borders (typing a line is one region, not 40), moves
regions below a change up or down with it, forgets the regions of closed documents and keeps only the newest
``MAX_REGIONS``. ``edit_snippets`` turns the regions into ``edit`` snippets (the region with a few lines around
it, read from the current text; the region alone is the short form), newest first, leaving out what the prompt already shows: the region the cursor
is in and any region inside the prefix or suffix window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from copilot_ls.context.snippets import Snippet
from copilot_ls.context.workspace import find_root
from copilot_ls.documents import Snapshot

MAX_REGIONS = 12  # regions kept (all documents)
MERGE_LINES = 2  # a change within this many lines of a region joins it
MAX_EDIT_SNIPPETS = 3  # regions shown in one prompt, newest first
CONTEXT_BEFORE = 3  # lines shown above a region
CONTEXT_AFTER = 2  # and below it
MAX_SNIPPET_LINES = 16  # a bigger region (a paste) shows the lines around its latest change
EDIT_SCORE = 75.0  # rank: below the function under test (100), above definitions (<= 50)


@dataclass(frozen=True)
class EditRegion:
    """Lines [start_line, end_line] (0-based, inclusive, in the document as it is now) that were edited;
    ``last_line`` is the last line of the latest change inside it, ``seq`` its order (higher = newer)."""

    uri: str
    start_line: int
    end_line: int
    last_line: int
    seq: int
    at: float  # time of the latest change (the history's clock)


class EditHistory:
    """The newest edit regions of the open documents (thread-safe; ``regions`` returns an immutable copy)."""

    def __init__(
        self,
        limit: int = MAX_REGIONS,
        merge_lines: int = MERGE_LINES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.merge_lines = merge_lines
        self._clock = clock
        self._regions: list[EditRegion] = []  # newest first
        self._seq = 0
        self._lock = threading.Lock()

    def record(self, uri: str, start: int, old_end: int, new_end: int) -> None:
        """A change replaced lines [start, old_end] of ``uri`` (``old_end`` = start - 1: nothing replaced, lines
        inserted) with lines [start, new_end] of the new text."""
        delta = new_end - old_end
        lo, hi = start, max(start, new_end)
        with self._lock:
            self._seq += 1
            kept: list[EditRegion] = []
            for r in self._regions:
                if r.uri == uri:
                    r = _moved(r, start, old_end, delta, hi)
                    if r.start_line <= hi + self.merge_lines and lo - self.merge_lines <= r.end_line:
                        lo, hi = min(lo, r.start_line), max(hi, r.end_line)  # joins the new region
                        continue
                kept.append(r)
            new = EditRegion(uri, lo, hi, max(start, new_end), self._seq, self._clock())
            self._regions = [new, *kept][: self.limit]

    def forget(self, uri: str) -> None:
        """The document was closed: its regions go."""
        with self._lock:
            self._regions = [r for r in self._regions if r.uri != uri]

    def regions(self) -> tuple[EditRegion, ...]:
        """The regions, newest first."""
        with self._lock:
            return tuple(self._regions)

    def __len__(self) -> int:
        return len(self._regions)


def _moved(r: EditRegion, start: int, old_end: int, delta: int, new_hi: int) -> EditRegion:
    """``r`` after lines [start, old_end] became [start, old_end + delta]: below the change it moves by
    ``delta``; overlapping it, it keeps its start and ends no earlier than the change's new end."""
    if r.end_line < start:
        return r
    if r.start_line > old_end:
        return replace(
            r, start_line=r.start_line + delta, end_line=r.end_line + delta, last_line=r.last_line + delta
        )
    end = r.end_line + delta if r.end_line > old_end else new_hi
    start_line = min(r.start_line, start)
    end = max(end, start_line)
    return replace(r, start_line=start_line, end_line=end, last_line=min(max(r.last_line, start_line), end))


# --- as snippets ----------------------------------------------------------------------------------------------
def edit_snippets(  # long: the filters below each say why a region is left out
    snap: Snapshot,
    line: int,
    regions: Sequence[EditRegion],
    others: Sequence[Snapshot] = (),
    *,
    visible: tuple[int, int] | None = None,
    limit: int = MAX_EDIT_SNIPPETS,
) -> list[Snippet]:
    """``edit`` snippets of the newest ``regions`` for a completion on ``line`` of ``snap``: the region's lines
    with CONTEXT_BEFORE / CONTEXT_AFTER lines around it, from the document's current text. Left out: regions of
    documents that are not open (``snap`` and ``others``) or belong to another project root; regions of
    ``snap`` that touch the cursor's line or lie inside ``visible`` (the lines the prefix and suffix windows
    show, inclusive); regions with only blank lines (a deletion)."""
    docs = {o.uri: o for o in others}
    docs[snap.uri] = snap
    lo, hi = visible if visible is not None else (line, line)
    root = _root(snap.path)
    out: list[Snippet] = []
    for r in regions:
        doc = docs.get(r.uri)
        if doc is None or len(out) >= limit:
            continue
        if doc.uri == snap.uri:
            if r.start_line <= line <= r.end_line or (lo <= r.start_line and r.end_line <= hi):
                continue
        elif root is not None and _root(doc.path) != root:
            continue
        lines = doc.lines()
        if r.start_line >= len(lines):
            continue
        end = min(r.end_line, len(lines) - 1)
        if not any(ln.strip() for ln in lines[r.start_line : end + 1]):
            continue
        first, last = max(0, r.start_line - CONTEXT_BEFORE), min(len(lines) - 1, end + CONTEXT_AFTER)
        if last - first + 1 > MAX_SNIPPET_LINES:  # keep the lines around the latest change
            last = min(last, max(r.last_line, first) + CONTEXT_AFTER)
            first = max(first, last - MAX_SNIPPET_LINES + 1)
        if doc.uri == snap.uri and first <= line <= last:  # never the cursor's own (unfinished) line
            first, last = (line + 1, last) if r.start_line > line else (first, line - 1)
        while last > end and not lines[last].strip():  # no blank lines of context at either end
            last -= 1
        while first < r.start_line and not lines[first].strip():
            first += 1
        if last < first:
            continue
        text = "\n".join(lines[first : last + 1])
        edited = "\n".join(lines[max(first, r.start_line) : min(last, end) + 1])  # the short form
        age = len(out)
        out.append(
            Snippet(
                "edit",
                doc.path or doc.uri,
                first,
                last,
                text,
                edited if edited.strip() else text,
                EDIT_SCORE - age,
                "recently edited" + (f" ({age + 1} edits back)" if age else " (the latest edit elsewhere)"),
            )
        )
    return out


def _root(path: str | None):
    if not path:
        return None
    try:
        return find_root(path)[0]
    except OSError:
        return None
