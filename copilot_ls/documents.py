"""Open documents: text + a tree-sitter tree each, edited incrementally; position-encoding conversion.

Positions inside the server are (line, code-point column). Lines are separated by "\\n", "\\r\\n" or "\\r"
(the LSP definition). Clients speak in UTF-16 (default), UTF-8 or UTF-32 code units; ``to_codepoints`` /
``from_codepoints`` convert one line's column. Out-of-range positions clamp, they never raise.

Each change edits the tree (``Tree.edit`` with byte offsets and (row, byte-column) points) and reparses with
the old tree, so a keystroke costs about the size of the change, not of the file. A ``Snapshot`` is an
immutable view (text, tree, version) handed to the completion pipeline; later edits never touch it.
"""

from __future__ import annotations

import bisect
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import tree_sitter

from copilot_ls.languages import LanguageSpec, language_for, new_parser

ENCODINGS = ("utf-8", "utf-16", "utf-32")
# Documents larger than this (UTF-8 bytes) get no tree (text-only context, like an unknown language): tree-sitter
# reparses a multi-MB document in seconds per keystroke (a minified bundle, one huge literal), which would block
# the server for every document. The same limit as the workspace index's (context.workspace.MAX_FILE_BYTES).
MAX_TREE_BYTES = 1_000_000
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _units(ch: str, encoding: str) -> int:
    cp = ord(ch)
    if encoding == "utf-16":
        return 2 if cp > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
    return 1


def _check_encoding(encoding: str) -> str:
    enc = encoding.lower().replace("_", "-")
    if enc not in ENCODINGS:
        raise ValueError(f"unknown position encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return enc


def to_codepoints(line_text: str, column: int, encoding: str) -> int:
    """A column in client units (``encoding``) -> a code-point index into ``line_text``.

    Past the end clamps to ``len(line_text)``; a column inside a multi-unit character (half a surrogate pair)
    rounds down to the start of that character.
    """
    enc = _check_encoding(encoding)
    if column <= 0:
        return 0
    if enc == "utf-32" or line_text.isascii():
        return min(column, len(line_text))
    units = 0
    for i, ch in enumerate(line_text):
        units += _units(ch, enc)
        if units > column:
            return i
        if units == column:
            return i + 1
    return len(line_text)


def from_codepoints(line_text: str, column: int, encoding: str) -> int:
    """A code-point index into ``line_text`` -> a column in client units (clamped to the line)."""
    enc = _check_encoding(encoding)
    column = max(0, min(column, len(line_text)))
    if enc == "utf-32" or line_text.isascii():
        return column
    head = line_text[:column]
    if enc == "utf-8":
        return len(head.encode("utf-8", "surrogatepass"))
    return len(head.encode("utf-16-le", "surrogatepass")) // 2


def line_starts(text: str) -> list[int]:
    """Code-point offsets where each line starts (line 0 starts at 0)."""
    return [0, *(m.end() for m in _LINE_BREAK.finditer(text))]


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` without their endings ("\\n", "\\r\\n", "\\r")."""
    if "\r" not in text:
        return text.split("\n")
    return _LINE_BREAK.split(text)


def uri_to_path(uri: str) -> str | None:
    """The local file path of a ``file:`` URI, or None for other schemes (untitled:, ...)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return urllib.request.url2pathname(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return uri
    return None


def _clamp_offset(text: str, starts: list[int], line: int, col: int) -> int:
    """(line, code-point col) -> code-point offset; past the last line -> end of text, past a line's end ->
    that line's end (before its line break)."""
    if line < 0:
        return 0
    if line >= len(starts):
        return len(text)
    start = starts[line]
    if line + 1 < len(starts):
        end = starts[line + 1]
        # back over the line break
        if end - 2 >= start and text[end - 2 : end] == "\r\n":
            end -= 2
        else:
            end -= 1
    else:
        end = len(text)
    return start + max(0, min(col, end - start))


# (start, old_end, new_end): a change replaced lines [start, old_end] with lines [start, new_end] (0-based,
# inclusive; old_end = start - 1 when lines were only inserted)
LineSpan = tuple[int, int, int]


def changed_lines(old: Sequence[str], new: Sequence[str]) -> LineSpan | None:
    """(start, old_end, new_end) of the lines that differ between two versions of a text (a whole-text
    change: the common head and tail lines are left out), or None when they are equal."""
    n = min(len(old), len(new))
    head = 0
    while head < n and old[head] == new[head]:
        head += 1
    if head == len(old) == len(new):
        return None
    tail = 0
    while tail < n - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    return head, len(old) - 1 - tail, len(new) - 1 - tail


T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class MemoKey(Generic[T]):
    """A typed key of ``Snapshot.memo``: one value derived from a document state (``MemoKey[int]("errors")``).
    Keys compare by identity: each module owns the keys it creates."""

    name: str


_LINES: MemoKey[list[str]] = MemoKey("lines")
_STARTS: MemoKey[list[int]] = MemoKey("line starts")
_BYTES: MemoKey[bytes] = MemoKey("utf-8 bytes")
_MISSING = object()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """An immutable view of a document at one version, handed to the completion pipeline. Values derived from
    it (its bytes, the current file's symbols, the tree's error count) are kept with ``memo``."""

    uri: str
    path: str | None
    language_id: str
    language: LanguageSpec | None
    version: int
    text: str
    tree: tree_sitter.Tree | None
    _starts: list[int] | None = field(default=None, repr=False)
    _memo: dict[MemoKey, object] = field(default_factory=dict, repr=False, compare=False)
    _lines: list[str] | None = field(default=None, repr=False)
    _crlf: bool | None = field(default=None, repr=False)

    def memo(self, key: MemoKey[T], compute: Callable[[], T]) -> T:
        """``compute()``, computed once per document state: snapshots of one state (repeated requests at one
        version) share the value; every change starts afresh. ``compute`` must depend on the state only."""
        value = self._memo.get(key, _MISSING)
        if value is _MISSING:
            value = self._memo[key] = compute()
        return value  # type: ignore[return-value]

    def lines(self) -> list[str]:
        """The lines without line endings (cached; do not mutate the list)."""
        if self._lines is not None:
            return self._lines
        return self.memo(_LINES, lambda: split_lines(self.text))

    def has_crlf(self) -> bool:
        """Whether the text holds a "\\r\\n" (kept by the Document: no scan of the text per request)."""
        if self._crlf is None:
            return "\r\n" in self.text
        return self._crlf

    def line_starts(self) -> list[int]:
        if self._starts is not None:
            return self._starts
        return self.memo(_STARTS, lambda: line_starts(self.text))

    def offset(self, line: int, col: int) -> int:
        """(line, code-point column) -> code-point offset into ``text``, clamped."""
        return _clamp_offset(self.text, self.line_starts(), line, col)

    def position(self, offset: int) -> tuple[int, int]:
        """Code-point offset -> (line, code-point column), clamped."""
        offset = max(0, min(offset, len(self.text)))
        starts = self.line_starts()
        line = bisect.bisect_right(starts, offset) - 1
        return line, offset - starts[line]

    def byte_offset(self, offset: int) -> int:
        """Code-point offset -> UTF-8 byte offset (what tree-sitter nodes use)."""
        if self.text.isascii():
            return offset
        return len(self.text[:offset].encode("utf-8", "surrogatepass"))

    def char_offset(self, byte_offset: int) -> int:
        """UTF-8 byte offset -> code-point offset."""
        if self.text.isascii():
            return byte_offset
        return len(self.encoded()[:byte_offset].decode("utf-8", "ignore"))

    def encoded(self) -> bytes:
        return self.memo(_BYTES, lambda: self.text.encode("utf-8", "surrogatepass"))


def _ts_point(data: bytes, byte_off: int) -> tuple[int, int]:
    """tree-sitter's point at ``byte_off``: (number of "\\n" before it, bytes since the last "\\n")."""
    row = data.count(b"\n", 0, byte_off)
    col = byte_off - (data.rfind(b"\n", 0, byte_off) + 1)
    return row, col


class Document:
    """One open document: text, line index, and (for known languages, up to MAX_TREE_BYTES) an incrementally
    updated tree."""

    def __init__(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.uri = uri
        self.path = uri_to_path(uri)
        self.language_id = language_id
        self.language = language_for(language_id, self.path)
        self.version = version
        self._parser = new_parser(self.language) if self.language is not None else None
        self._lock = threading.Lock()
        self._set_full(text)

    # -- state -------------------------------------------------------------------------------------------
    def _set_full(self, text: str) -> None:
        self._text = text
        self._bytes = text.encode("utf-8", "surrogatepass")
        self._starts = line_starts(text)
        self._lines = split_lines(text)
        self._crlf_count = text.count("\r\n")
        self._state_memo: dict[MemoKey, object] = {_BYTES: self._bytes}  # shared by this state's snapshots
        self._tree = (
            self._parser.parse(self._bytes)
            if self._parser is not None and len(self._bytes) <= MAX_TREE_BYTES
            else None
        )

    @property
    def text(self) -> str:
        return self._text

    @property
    def tree(self) -> tree_sitter.Tree | None:
        return self._tree

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                uri=self.uri,
                path=self.path,
                language_id=self.language_id,
                language=self.language,
                version=self.version,
                text=self._text,
                tree=self._tree,
                _starts=self._starts,
                _lines=self._lines,
                _crlf=self._crlf_count > 0,
                # one cache per document state: snapshots of the same state (repeated requests at one version)
                # share the per-file analysis (current_file, error count, ...); every change starts a new one
                _memo=self._state_memo,
            )

    # -- edits ---------------------------------------------------------------------------------------------
    def offset(self, line: int, col: int) -> int:
        return _clamp_offset(self._text, self._starts, line, col)

    def apply_change(
        self,
        text: str,
        start: tuple[int, int] | None = None,
        end: tuple[int, int] | None = None,
        version: int | None = None,
    ) -> LineSpan | None:
        """Replace [start, end) (positions in (line, code-point col); None = the whole text) with ``text``.
        Returns the lines changed (for the recent-edits history), or None when nothing changed."""
        with self._lock:
            if start is None or end is None:
                old = self._lines
                self._set_full(text)
                span = changed_lines(old, self._lines)
            else:
                span = self._apply_range(text, start, end)
            if version is not None:
                self.version = version
            return span

    def _apply_range(self, new: str, start: tuple[int, int], end: tuple[int, int]) -> LineSpan | None:
        old_text, old_bytes, starts = self._text, self._bytes, self._starts
        a = self.offset(*start)
        b = self.offset(*end)
        if b < a:
            a, b = b, a
        if a == b and not new:
            return None
        text = old_text[:a] + new + old_text[b:]
        # Byte offsets (ASCII fast path: bytes == code points).
        if old_text.isascii():
            ab, bb = a, b
        else:
            ab = len(old_text[:a].encode("utf-8", "surrogatepass"))
            bb = ab + len(old_text[a:b].encode("utf-8", "surrogatepass"))
        new_b = new.encode("utf-8", "surrogatepass")
        data = old_bytes[:ab] + new_b + old_bytes[bb:]
        self._starts = self._update_starts(starts, text, a, b, len(new))
        self._lines = self._update_lines(self._lines, starts, self._starts, text, a, b)
        # "\r\n" pairs touching the edit lie in [a - 1, b + 1) before and [a - 1, a + len(new) + 1) after it
        lo = max(a - 1, 0)
        self._crlf_count += text.count("\r\n", lo, a + len(new) + 1) - old_text.count("\r\n", lo, b + 1)
        self._text, self._bytes = text, data
        self._state_memo = {_BYTES: data}
        if self._parser is not None and (len(data) > MAX_TREE_BYTES or self._tree is None):
            # over the limit: no tree; back under it: one full parse
            self._tree = self._parser.parse(data) if len(data) <= MAX_TREE_BYTES else None
        elif self._parser is not None:
            start_point = _ts_point(old_bytes, ab)
            old_end_point = _ts_point(old_bytes, bb)
            nl = new_b.count(b"\n")
            if nl:
                new_end_point = (start_point[0] + nl, len(new_b) - (new_b.rfind(b"\n") + 1))
            else:
                new_end_point = (start_point[0], start_point[1] + len(new_b))
            # Edit a copy: the old tree may be held by a Snapshot, which must stay valid.
            tree = self._tree.copy()
            tree.edit(
                start_byte=ab,
                old_end_byte=bb,
                new_end_byte=ab + len(new_b),
                start_point=start_point,
                old_end_point=old_end_point,
                new_end_point=new_end_point,
            )
            self._tree = self._parser.parse(data, tree)
        first = bisect.bisect_right(starts, a) - 1
        return first, bisect.bisect_right(starts, b) - 1, bisect.bisect_right(self._starts, a + len(new)) - 1

    @staticmethod
    def _update_lines(
        lines: list[str], old_starts: list[int], starts: list[int], text: str, a: int, b: int
    ) -> list[str]:
        """The lines after the edit (the same rescanned span as ``_update_starts``; the rest reused): no split of
        the whole text per keystroke."""
        sl = bisect.bisect_right(old_starts, a) - 1
        el = bisect.bisect_right(old_starts, b) - 1
        keep = max(sl - 1, 0)
        same_tail = len(old_starts) - (el + 2) if el + 2 < len(old_starts) else 0  # lines after the span
        k = len(starts) - same_tail  # index of the first unchanged line in the new text
        if same_tail:
            seg = split_lines(text[starts[keep] : starts[k]])
            seg.pop()  # the span ends with a line break: "" after it
            out = lines[:keep] + seg + lines[len(lines) - same_tail :]
        else:
            out = lines[:keep] + split_lines(text[starts[keep] :])
        if len(out) != len(starts):  # cannot happen; never serve wrong lines
            return split_lines(text)
        return out

    @staticmethod
    def _update_starts(starts: list[int], text: str, a: int, b: int, new_len: int) -> list[int]:
        """The line-start table after replacing old [a, b) with ``new_len`` code points, rescanning only the
        edited lines plus one line either side (so "\\r" + "\\n" joining across the edit is handled)."""
        delta = new_len - (b - a)
        sl = bisect.bisect_right(starts, a) - 1  # line containing a
        el = bisect.bisect_right(starts, b) - 1  # line containing b
        keep = max(sl - 1, 0)  # starts[0..keep] are unchanged and lie strictly before a (or are 0)
        lo = starts[keep]
        if el + 2 < len(starts):
            hi_old = starts[el + 2]
            hi_new = hi_old + delta
            tail = [s + delta for s in starts[el + 3 :]]
        else:
            hi_new = len(text)
            tail = []
        # finditer with pos/endpos reports absolute positions
        mid = [m.end() for m in _LINE_BREAK.finditer(text, lo, hi_new)]
        return starts[: keep + 1] + mid + tail


class DocumentStore:
    """The open documents by URI. Thread-safe for open/get/close/snapshots."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._touched: dict[str, int] = {}
        self._clock = 0
        self._lock = threading.Lock()

    def _touch(self, uri: str) -> None:
        self._clock += 1
        self._touched[uri] = self._clock

    def open(self, uri: str, language_id: str, version: int, text: str) -> Document:
        doc = Document(uri, language_id, version, text)
        with self._lock:
            self._docs[uri] = doc
            self._touch(uri)
        return doc

    def get(self, uri: str) -> Document | None:
        with self._lock:
            doc = self._docs.get(uri)
            if doc is not None:
                self._touch(uri)
            return doc

    def close(self, uri: str) -> None:
        with self._lock:
            self._docs.pop(uri, None)
            self._touched.pop(uri, None)

    def __contains__(self, uri: str) -> bool:
        return uri in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def snapshots(self, exclude: str | None = None) -> list[Snapshot]:
        """Snapshots of the open documents (but ``exclude``), most recently used first."""
        with self._lock:
            order = sorted(self._docs, key=lambda u: (-self._touched.get(u, 0), u))
            docs = [self._docs[u] for u in order if u != exclude]
        return [d.snapshot() for d in docs]
