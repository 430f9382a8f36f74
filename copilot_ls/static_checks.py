"""Static checks of a suggestion (pure): what the language server knows that the model may not.

- undefined names: an identifier the shown text uses that the document never mentions, that is not a builtin
  or keyword, not found in the workspace index, and not bound by the text itself (``x = ...``, ``for x in``,
  ``def f(a)``, ``lambda a:``, keyword arguments ``f(a=1)``);
- unknown members: ``Cls.member`` / ``self.member`` where the class is defined in the document without base
  classes (so its members are all in its body) and its body never mentions ``member``.

Both err towards silence: "mentioned anywhere in the document" stands in for "in scope", so a name is only
reported when nothing in the file could define it. Python only for now (other languages: no issues).
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Callable

from copilot_ls.documents import MemoKey, Snapshot

_IDENT = re.compile(r"[A-Za-z_]\w*")
_PY_NAMES = (
    frozenset(dir(builtins))
    | frozenset(keyword.kwlist)
    | frozenset(keyword.softkwlist)
    | {"self", "cls", "__name__", "__file__", "__doc__", "__class__"}
)
_STRING = re.compile(
    r"""(?:[rbuRBUfF]{0,2})("\"\"[\s\S]*?(?:\"\"\"|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?)"""
)
_COMMENT = re.compile(r"#[^\n]*")
_BINDERS = re.compile(r"\b(?:for|as|def|class|import|global|nonlocal)\s+([\w\s,()*]+?)(?=\bin\b|[:=(\n]|$)")
_LAMBDA = re.compile(r"\blambda\b([^:]*):")
_DEF_PARAMS = re.compile(r"\bdef\s+\w+\s*\(([^)]*)")
_ASSIGN_LHS = re.compile(r"^([\w\s,.*\[\]()]+?)(?<![=!<>])=(?!=)", re.M)
_KWARG_OR_ANN = re.compile(r"([A-Za-z_]\w*)\s*(?:=(?!=)|:(?=\s*[A-Za-z_]))")
_DOC_NAMES: MemoKey[frozenset[str]] = MemoKey("identifiers mentioned in the document")


def _code_only(text: str) -> str:
    """``text`` with string literals and comments blanked (same length, so offsets hold)."""
    text = _STRING.sub(lambda m: " " * len(m.group(0)), text)
    return _COMMENT.sub(lambda m: " " * len(m.group(0)), text)


def document_names(snap: Snapshot) -> frozenset[str]:
    """Every identifier-like word of the document (computed once per document state)."""
    return snap.memo(_DOC_NAMES, lambda: frozenset(_IDENT.findall(snap.text)))


def bound_names(text: str) -> set[str]:
    """Names the text binds itself."""
    code = _code_only(text)
    out: set[str] = set()
    for rx in (_BINDERS, _LAMBDA, _DEF_PARAMS, _ASSIGN_LHS):
        for m in rx.finditer(code):
            out.update(_IDENT.findall(m.group(1)))
    out.update(m.group(1) for m in _KWARG_OR_ANN.finditer(code))
    return out


def used_names(line_prefix: str, text: str) -> list[str]:
    """Identifiers the shown ``text`` uses as plain names (not after a dot), continuing a word the cursor's
    line already started (``pri`` + ``nt(x)`` uses ``print``)."""
    code = _code_only(line_prefix + text)
    start = len(line_prefix)
    out = []
    for m in _IDENT.finditer(code):
        if m.end() <= start or m.group(0)[0].isdigit():
            continue
        before = code[: m.start()].rstrip()
        if before.endswith("."):
            continue
        out.append(m.group(0))
    return out


def undefined_names(
    snap: Snapshot, line_prefix: str, text: str, known: Callable[[str], bool] | None = None
) -> list[str]:
    """Names the shown text uses that nothing defines (see the module doc), in order, once each."""
    if snap.language_id != "python":
        return []
    doc = document_names(snap)
    bound = bound_names(line_prefix + text)
    out: list[str] = []
    for name in used_names(line_prefix, text):
        if name in doc or name in _PY_NAMES or name in bound or name in out:
            continue
        if known is not None and known(name):
            continue
        out.append(name)
    return out


_CLASS_HEAD = re.compile(r"^([ \t]*)class\s+([A-Za-z_]\w*)\s*(\([^)]*\))?\s*:", re.M)
_MEMBER_USE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)")


_CLASSES: MemoKey[dict[str, tuple[bool, int, int]]] = MemoKey("class bodies (static checks)")


def _class_bodies(source: str) -> dict[str, tuple[bool, int, int]]:
    """class name -> (has bases, start offset, end offset) of top-level and nested classes (indentation)."""
    out: dict[str, tuple[bool, int, int]] = {}
    lines = source.split("\n")
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln) + 1)
    for m in _CLASS_HEAD.finditer(source):
        indent = len(m.group(1))
        bases = (m.group(3) or "()").strip("() \t")
        first = source.count("\n", 0, m.start())
        end_line = len(lines)
        for j in range(first + 1, len(lines)):
            ln = lines[j]
            if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
                end_line = j
                break
        out.setdefault(m.group(2), (bool(bases) and bases != "object", offsets[first], offsets[end_line]))
    return out


def _enclosing_class(classes: dict[str, tuple[bool, int, int]], offset: int) -> str | None:
    best, best_start = None, -1
    for name, (_, start, end) in classes.items():
        if start <= offset < end and start > best_start:
            best, best_start = name, start
    return best


def unknown_members(snap: Snapshot, line: int, line_prefix: str, text: str) -> list[str]:
    """``Cls.member`` / ``self.member`` in the shown text where ``Cls`` (or the class around the cursor) is a
    class of this document without bases whose body never mentions ``member``; as "Cls.member"."""
    if snap.language_id != "python":
        return []
    source = snap.text
    if "class" not in source:
        return []
    classes = snap.memo(_CLASSES, lambda: _class_bodies(source))
    if not classes:
        return []
    code = _code_only(line_prefix + text)
    here = None
    out: list[str] = []
    for m in _MEMBER_USE.finditer(code):
        if m.end() <= len(line_prefix):
            continue
        owner, member = m.group(1), m.group(2)
        if owner in ("self", "cls"):
            if here is None:
                here = _enclosing_class(classes, snap.offset(line, 0)) or ""
            owner = here
        info = classes.get(owner)
        if not info or info[0]:
            continue
        body = source[info[1] : info[2]]
        if not re.search(rf"\b{re.escape(member)}\b", body) and not member.startswith("__"):
            out.append(f"{owner}.{member}")
    return out


def issues(
    snap: Snapshot, line: int, line_prefix: str, text: str, known: Callable[[str], bool] | None = None
) -> list[str]:
    """All static-check findings of showing ``text`` after ``line_prefix`` on ``line`` (empty: none)."""
    found = [f"undefined name {n!r}" for n in undefined_names(snap, line_prefix, text, known)]
    found += [f"unknown member {m!r}" for m in unknown_members(snap, line, line_prefix, text)]
    return found
