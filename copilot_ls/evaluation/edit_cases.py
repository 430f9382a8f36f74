"""The ``edits`` case set of `copilot-ls eval context`: the next line repeats a pattern the user just wrote
elsewhere (issue 15, item 4: recently edited ranges as a context source).

Built from real code, deterministically: the Python files of the installed packages (sympy, networkx, mpmath by
default; test files too), in the order of a hash of their path inside the package and ``--seed``. A case is a
one-line statement S2 inside a function whose pattern is new where it is written and was written just before
somewhere else:

    same file    exactly one line above the cursor, outside S2's function, is similar to S2 (the edit: it was
                 added there; the user now makes the same change in this function);
    other file   no line above the cursor is similar to S2, and a sibling module (same folder) has a line that is
                 (the edit: it was made in that open file).

"Similar" = the same first word and edit similarity >= ``SIMILAR`` of the stripped lines. The cursor file is cut
at S2 (after its indentation), as in the other case sets; the recent edit is that one line (``Case.edits``) and
the other file is open in the builder and edits arms. The replay gives the history exactly what the LS would
have recorded for the edit (``EditHistory.record`` of that line).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from copilot_ls.context.edits import EditHistory, EditRegion
from copilot_ls.documents import Document, Snapshot

SIMILAR = 0.7
MAX_PER_FILE = 2
MAX_SIBLINGS = 12
MIN_LEN, MAX_LEN = 12, 100
STATEMENTS = frozenset(
    {"expression_statement", "return_statement", "assert_statement", "raise_statement", "delete_statement"}
)
_FIRST = re.compile(r"\s*([A-Za-z_]\w*)")
Similarity = Callable[[str, str], float]


def _first_word(line: str) -> str | None:
    m = _FIRST.match(line)
    return m.group(1) if m else None


def _bucket(lines: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, ln in enumerate(lines):
        w = _first_word(ln)
        if w is not None and MIN_LEN <= len(ln.strip()) <= MAX_LEN:
            out.setdefault(w, []).append(i)
    return out


def _similar(lines: Sequence[str], rows: Sequence[int], target: str, similarity: Similarity) -> list[int]:
    n, bag = len(target), Counter(target)
    out = []
    for i in rows:
        line = lines[i].strip()
        # edit similarity is at most (characters in common) / longer, and so at most shorter / longer: most
        # lines are ruled out without the quadratic measure
        longer = max(n, len(line))
        if min(n, len(line)) < SIMILAR * longer or (bag & Counter(line)).total() < SIMILAR * longer:
            continue
        if similarity(line, target) >= SIMILAR:
            out.append(i)
    return out


def _functions(root):
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "function_definition":
            yield n
        stack.extend(n.children)


def _statements(fn):
    """One-line simple statements anywhere in ``fn``'s body (not in nested functions)."""
    body = fn.child_by_field_name("body")
    stack = [body] if body is not None else []
    while stack:
        n = stack.pop()
        for c in n.named_children:
            if c.type in STATEMENTS and c.start_point[0] == c.end_point[0]:
                yield c
            elif c.type != "function_definition" and c.type not in STATEMENTS:
                stack.append(c)


def _parse(path: Path) -> Snapshot | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    snap = Document(path.as_uri(), "python", 0, text).snapshot()
    return snap if snap.tree is not None else None


class Siblings:
    """The other modules of a folder, parsed once: (path, lines, first-word buckets)."""

    def __init__(self) -> None:
        self._cache: dict[Path, list[tuple[Path, list[str], dict[str, list[int]]]]] = {}

    def of(self, path: Path, order) -> list[tuple[Path, list[str], dict[str, list[int]]]]:
        folder = path.parent
        if folder not in self._cache:
            files = sorted((p for p in folder.glob("*.py") if p.is_file()), key=order)[: MAX_SIBLINGS + 1]
            out = []
            for p in files:
                try:
                    lines = p.read_text(encoding="utf-8").split("\n")
                except (OSError, UnicodeDecodeError):
                    continue
                out.append((p, lines, _bucket(lines)))
            self._cache[folder] = out
        return [s for s in self._cache[folder] if s[0] != path][:MAX_SIBLINGS]


def cases_in_file(path: Path, siblings: Siblings, order, similarity: Similarity) -> list[dict]:
    """The edit cases of one file (see the module doc), as the fields of `context_eval.Case`."""
    snap = _parse(path)
    if snap is None:
        return []
    lines = snap.lines()
    buckets = _bucket(lines)
    out = []
    for fn in _functions(snap.tree.root_node):
        first_row, last_row = fn.start_point[0], fn.end_point[0]
        for stmt in _statements(fn):
            row = stmt.start_point[0]
            target = lines[row].strip()
            word = _first_word(target)
            if row <= first_row or word is None or not MIN_LEN <= len(target) <= MAX_LEN:
                continue
            above = _similar(lines, [i for i in buckets.get(word, ()) if i < row], target, similarity)
            col = len(lines[row]) - len(lines[row].lstrip())
            cid = f"{path.name}:{row + 1}"
            if len(above) == 1 and not first_row <= above[0] <= last_row:
                src = above[0]
                out.append(_case(cid, path, row, col, target, lines[src].strip(), path, True, src))
            elif not above:
                for sib, slines, sbuckets in siblings.of(path, order):
                    found = _similar(slines, sbuckets.get(word, ()), target, similarity)
                    if found:
                        src = found[0]
                        out.append(_case(cid, path, row, col, target, slines[src].strip(), sib, False, src))
                        break
    return out


def _case(
    cid: str, path: Path, row: int, col: int, target: str, source: str, where: Path, same: bool, src: int
):
    return {
        "id": cid,
        "path": str(path),
        "line": row,
        "col": col,
        "expected": target,
        "subject": source,  # the edited line
        "subject_path": str(where),
        "subject_before": same,  # the edit is in the same file
        "edits": ((str(where), src, src),),
    }


def build_edit_cases(
    dirs: Sequence[Path],
    limit: int,
    seed: int,
    *,
    similarity: Similarity,
    stable_hash: Callable[..., int],
    per_file: int = MAX_PER_FILE,
) -> list[dict]:
    """Up to ``limit`` cases (`context_eval.Case` fields) from the package folders ``dirs``, at most
    ``per_file`` per file, chosen by ``seed`` (see the module doc); ``similarity`` and ``stable_hash`` are
    context_eval's."""
    keyed: list[tuple[int, str, Path]] = []
    rel_of: dict[Path, str] = {}
    for pkg in dirs:
        for p in pkg.rglob("*.py"):
            rel = p.relative_to(pkg.parent).as_posix()
            rel_of[p] = rel
            keyed.append((stable_hash(seed, rel), rel, p))

    def order(p: Path):
        rel = rel_of.get(p, p.name)
        return (stable_hash(seed, rel), rel)

    siblings = Siblings()
    cases = []
    for _, _, f in sorted(keyed):
        found = cases_in_file(f, siblings, order, similarity)
        found.sort(key=lambda c: stable_hash(seed, c["id"]))
        cases.extend(found[:per_file])
        if len(cases) >= limit:
            break
    return cases[:limit]


def replay(case, snap: Snapshot) -> tuple[list[Snapshot], tuple[EditRegion, ...]]:
    """(the open documents besides the case's file, the edit history) of a case: what the LS would hold right
    after the edit of ``case.edits``."""
    others: list[Snapshot] = []
    history = EditHistory()
    for path, start, end in reversed(case.edits):  # oldest first
        if Path(path) == Path(case.path):
            uri = snap.uri
        else:
            doc = Document(Path(path).as_uri(), "python", 0, Path(path).read_text(encoding="utf-8"))
            others.append(doc.snapshot())
            uri = doc.uri
        history.record(uri, start, end, end)
    return others, history.regions()
