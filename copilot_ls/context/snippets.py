"""Snippet candidates: what from other files (and cut-off parts of this one) the model should see, ranked and
deduplicated; which of them fit is ``context.choice``.

Kinds, best first:
1. ``under-test``  the cursor is inside a test: the implementation of what it tests (``context.subjects`` names
                   it, ``context.resolve`` finds it).
2. ``definition``  definitions of names used near the cursor, resolved through imports to workspace files (and
                   definitions of this file that the prefix window cut off).
3. ``similar``     the most similar ~60-line windows of other open documents (Jaccard over identifiers).
Also ``scope_headers``: the headers of the definitions around the cursor that start above the prefix window.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import tree_sitter
from tree_sitter import QueryCursor

from copilot_ls.context.resolve import Resolver, same_file
from copilot_ls.context.subjects import subjects_under_test
from copilot_ls.context.symbols import Definition
from copilot_ls.context.workspace import Workspace
from copilot_ls.documents import Snapshot
from copilot_ls.languages import SYMBOL_LANGUAGES, LanguageSpec
from copilot_ls.lru import LRUCache

NEAR_LINES_BEFORE = 30  # names used in these lines around the cursor are looked up
NEAR_LINES_AFTER = 5
SHORT_DEFINITION_LINES = 30  # whole bodies up to this size; longer definitions show their summary
WINDOW_LINES = 60
WINDOW_STEP = 40
MIN_JACCARD = 0.15
MAX_SIMILAR_DOCS = 10
MAX_DOC_LINES = 2000
_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_DOTTED = re.compile(rb"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_IDENT_TYPES = frozenset(
    {"identifier", "property_identifier", "type_identifier", "shorthand_property_identifier"}
)


@dataclass(frozen=True)
class Snippet:
    kind: str  # "under-test" | "definition" | "similar"
    path: str
    start_line: int  # 0-based inclusive
    end_line: int
    text: str  # full text (whole definition or window)
    summary: str  # shorter form (signature + docstring) for tight budgets; == text when there is none
    score: float
    why: str
    signature: str = ""  # the most compact form (header + the docstring's first line); "" = summary
    brief: str = ""  # classes: the signature with fewer members (the short form in the signature style)


# --- names near the cursor -----------------------------------------------------------------------------------
def names_near(snap: Snapshot, line: int) -> list[tuple[str, str | None]]:
    """(name, qualifier) pairs used around the cursor, nearest first: ``foo`` -> (foo, None),
    ``mod.foo`` -> (foo, mod), Python ``pkg.mod.foo`` -> (foo, pkg.mod)."""
    if snap.tree is None:
        return []
    lo = max(0, line - NEAR_LINES_BEFORE)
    hi = line + NEAR_LINES_AFTER
    seen: dict[tuple[str, str | None], int] = {}
    root = snap.tree.root_node
    query = None if _errors_in_rows(root, lo - 1, hi + 1) else _ident_query(snap.tree.language)
    if query is not None:
        # no ERROR / MISSING nodes near: the identifiers in the rows, found by a query in C (not a walk in Python)
        qc = QueryCursor(query)
        qc.set_point_range((max(lo - 1, 0), 0), (hi + 2, 0))
        found = qc.captures(root).get("id", [])
        if all(n.child_count == 0 for n in found):  # identifiers are leaves (else: the walk below)
            stack = [n for n in found if n.end_point[0] >= lo and n.start_point[0] <= hi]
        else:
            stack = [root]
    else:
        stack = [root]
    while stack:
        node = stack.pop()
        if node.end_point[0] < lo or node.start_point[0] > hi:
            continue
        if node.type in _IDENT_TYPES:
            name = node.text.decode("utf-8", "replace")
            qual = None
            parent = node.parent
            if parent is not None and parent.type in ("attribute", "member_expression"):
                obj = parent.child_by_field_name("object")
                attr = parent.child_by_field_name("attribute") or parent.child_by_field_name("property")
                if (
                    attr is not None
                    and attr.id == node.id
                    and obj is not None
                    and (obj.type == "identifier" or obj.type == "attribute" and _DOTTED.fullmatch(obj.text))
                ):
                    qual = obj.text.decode("utf-8", "replace")
            dist = abs(node.start_point[0] - line)
            key = (name, qual)
            if key not in seen or dist < seen[key]:
                seen[key] = dist
            continue
        count = node.child_count
        if count > 16:  # a long body (module, class): jump to the rows wanted
            stack.extend(_children_in_rows(node, lo, hi))
        elif count:
            stack.extend(node.children)
    return sorted(seen, key=lambda k: (seen[k], k[0], k[1] or ""))


def _errors_in_rows(root, lo: int, hi: int) -> bool:
    """Whether an ERROR or MISSING node touches rows [lo, hi] (only subtrees holding errors are entered)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if not node.has_error or node.end_point[0] < lo or node.start_point[0] > hi:
            continue
        if node.is_error or node.is_missing:
            return True
        count = node.child_count
        if count > 16:
            stack.extend(_children_in_rows(node, lo, hi))
        elif count:
            stack.extend(node.children)
    return False


@functools.lru_cache(maxsize=32)
def _ident_query(language: tree_sitter.Language) -> tree_sitter.Query | None:
    kinds = sorted(k for k in _IDENT_TYPES if language.id_for_node_kind(k, True))
    if not kinds:
        return None
    return tree_sitter.Query(language, "[" + " ".join(f"({k})" for k in kinds) + "] @id")


def _children_in_rows(node, lo: int, hi: int) -> list:
    """The children of ``node`` that end at or after row ``lo`` and start at or before row ``hi`` (a cursor
    jumps to the first of them in C, instead of a Python object per child of a long class or module body)."""
    cursor = node.walk()
    index = cursor.goto_first_child_for_point((lo, 0))
    if index is None:
        # no child ends after (lo, 0); one ending exactly there (zero width) may still count
        if not cursor.goto_last_child():
            return []
        if cursor.node.end_point[0] < lo:
            return []
    elif index > 0:
        while cursor.goto_previous_sibling():
            if cursor.node.end_point[0] < lo:
                cursor.goto_next_sibling()
                break
    out = []
    while True:
        child = cursor.node
        if child.start_point[0] > hi:
            break
        if child.end_point[0] >= lo:
            out.append(child)
        if not cursor.goto_next_sibling():
            break
    return out


def _snippet_from(defn: Definition, kind: str, score: float, why: str) -> Snippet:
    short = defn.end_line - defn.start_line + 1 <= SHORT_DEFINITION_LINES
    text = defn.text if short else (defn.summary or defn.text)
    return Snippet(
        kind,
        defn.path,
        defn.start_line,
        defn.end_line,
        text,
        defn.summary or text,
        score,
        why,
        defn.signature,
        defn.brief,
    )


_BARE_VARIABLE = re.compile(r"^[A-Za-z_]\w*\s*(?::[^=\n]*)?(?:=\s*[A-Za-z_][\w.]*)?\s*;?$")


def informative(defn: Definition) -> bool:
    """Whether a definition tells the model more than its name: not a bare alias (``Matrix = MutableMatrix``)
    or a bare annotation (``slow: Callable[[Any], Any]``)."""
    return defn.kind != "variable" or not _BARE_VARIABLE.match(defn.text.strip())


# --- similar windows ----------------------------------------------------------------------------------------
def _idents(text: str) -> set[str]:
    return set(_IDENT.findall(text))


# (uri, version, length) -> (start line, identifier set) of each window of an open document
_WINDOWS: LRUCache[tuple[str, int, int], list[tuple[int, frozenset[str]]]] = LRUCache(64)


def _windows(doc: Snapshot) -> list[tuple[int, frozenset[str]]]:
    """(start line, identifier set) of each window of an open document, cached per (uri, version)."""
    key = (doc.uri, doc.version, len(doc.text))
    hit = _WINDOWS.get(key)
    if hit is not None:
        return hit
    lines = doc.lines()[:MAX_DOC_LINES]
    out = []
    for start in range(0, max(1, len(lines) - WINDOW_STEP), WINDOW_STEP):
        window = frozenset(_IDENT.findall("\n".join(lines[start : start + WINDOW_LINES])))
        if window:
            out.append((start, window))
    _WINDOWS.put(key, out)
    return out


def similar_windows(
    snap: Snapshot, line: int, others: Sequence[Snapshot], *, limit: int = 3
) -> list[Snippet]:
    """The most similar ~60-line windows of other open documents (Jaccard of identifier sets against the
    lines before the cursor)."""
    lines = snap.lines()
    query = _idents("\n".join(lines[max(0, line - WINDOW_LINES // 2) : line + 1]))
    if not query:
        return []
    found: list[Snippet] = []
    for other in others[:MAX_SIMILAR_DOCS]:
        if other.uri == snap.uri or not other.text:
            continue
        olines = other.lines()[:MAX_DOC_LINES]
        best: tuple[float, int] | None = None
        nq = len(query)
        for start, window in _windows(other):
            inter = len(query.intersection(window))
            score = inter / (nq + len(window) - inter)
            if best is None or score > best[0]:
                best = (score, start)
        if best is not None and best[0] >= MIN_JACCARD:
            score, start = best
            end = min(len(olines), start + WINDOW_LINES) - 1
            text = "\n".join(olines[start : end + 1])
            path = other.path or other.uri
            found.append(
                Snippet(
                    "similar",
                    path,
                    start,
                    end,
                    text,
                    text,
                    10 * score,
                    f"similar to the code (Jaccard {score:.2f})",
                )
            )
    found.sort(key=lambda s: (-s.score, s.path, s.start_line))
    return found[:limit]


# --- scope headers -------------------------------------------------------------------------------------------
def scope_headers(snap: Snapshot, line: int, col: int, window_start_line: int) -> list[tuple[int, str]]:
    """(line, text) of the header lines of the classes / functions around the cursor that start above the prefix
    window (outermost first): the model then still knows where it is."""
    spec = snap.language
    if spec is None or snap.tree is None or window_start_line <= 0:
        return []
    off = snap.byte_offset(snap.offset(line, col))
    node = snap.tree.root_node.descendant_for_byte_range(max(0, off - 1), off)
    lines = snap.lines()
    out: list[tuple[int, str]] = []
    while node is not None:
        if node.type in spec.function_types or node.type in spec.class_types:
            first = node.start_point[0]
            body = node.child_by_field_name("body")
            body_line = body.start_point[0] if body is not None else first
            last = min(body_line - 1 if body_line > first else first, first + 3)
            if first < window_start_line:
                for ln in range(min(last, window_start_line - 1), first - 1, -1):
                    out.append((ln, lines[ln]))
        node = node.parent
    out.sort()
    return list(dict.fromkeys(out))


# --- all together -------------------------------------------------------------------------------------------
def collect(
    snap: Snapshot,
    line: int,
    col: int,
    *,
    others: Sequence[Snapshot] = (),
    workspace: Workspace | None = None,
    window_start_line: int = 0,
) -> list[Snippet]:
    """Ranked, deduplicated snippets for a completion at (line, col); ``window_start_line`` is the first line of
    the prefix window (definitions of this file above it count as cut off)."""
    spec: LanguageSpec | None = snap.language
    out: list[Snippet] = []
    if spec is not None and spec.id in SYMBOL_LANGUAGES and snap.tree is not None:
        res = Resolver(snap, others, workspace)
        out.extend(_under_test(snap, line, col, res))
        out.extend(_definitions_near(snap, line, res, window_start_line))
    out.extend(similar_windows(snap, line, others))
    return dedupe(out)


def _under_test(snap: Snapshot, line: int, col: int, res: Resolver) -> list[Snippet]:
    """The implementation of the first subject of the test around the cursor that can be found."""
    for rank, subject in enumerate(subjects_under_test(snap, line, col)[:4]):
        for defn in res.anywhere(subject)[:1]:
            return [
                _snippet_from(defn, "under-test", 100 - rank, f"implementation of `{subject}`, under test")
            ]
    return []


def _definitions_near(snap: Snapshot, line: int, res: Resolver, window_start_line: int) -> list[Snippet]:
    """Definitions of the names used near the cursor (nearest first): imported ones, and this file's own that
    the prefix window cut off."""
    out: list[Snippet] = []
    for rank, (name, qual) in enumerate(names_near(snap, line)[:60]):
        for defn in [d for d in res.definition_of(name, qual)[:1] if informative(d)]:
            out.append(
                _snippet_from(defn, "definition", 50 - rank * 0.5, f"definition of `{name}`, used nearby")
            )
        d = res.current.definition(name) if qual is None else None
        if d is not None and d.end_line < window_start_line and not (d.start_line <= line <= d.end_line):
            out.append(
                _snippet_from(d, "definition", 40 - rank * 0.5, f"`{name}` of this file, above the window")
            )
    return out


def dedupe(snippets: list[Snippet]) -> list[Snippet]:
    """Best first; one snippet per place: a snippet overlapping a better one of the same file is dropped."""
    ranked = sorted(snippets, key=lambda s: (-s.score, s.path, s.start_line, s.end_line))
    kept: list[Snippet] = []
    for s in ranked:
        if any(
            same_file(k.path, s.path) and k.start_line <= s.end_line and s.start_line <= k.end_line
            for k in kept
        ):
            continue
        kept.append(s)
    return kept
