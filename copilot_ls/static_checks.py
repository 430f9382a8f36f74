"""Static checks of a suggestion (pure): what the language server knows that the model may not.

- undefined names: an identifier the shown text uses that the document never mentions, that is not a builtin
  or keyword, not found in the workspace index, and not bound by the text itself (``x = ...``, ``for x in``,
  ``def f(a)``, ``lambda a:``, keyword arguments ``f(a=1)``);
- unknown members: ``Cls.member`` / ``self.member`` where the class is defined in the document without base
  classes (so its members are all in its body) and its body never mentions ``member``;
- unknown keywords: ``f(name=...)`` where ``f`` is a top-level function of the document (or ``Cls(...)`` a
  base-less class: its ``__init__``) defined once, undecorated, without ``**kwargs``, and has no such parameter.

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


def code_only(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with string literals and comments blanked (same length, so offsets hold); ``keep_lines``: the
    line breaks inside triple-quoted strings stay, so line numbers hold too."""

    def blank(m: re.Match) -> str:
        return re.sub(r"[^\n]", " ", m.group(0)) if keep_lines else " " * len(m.group(0))

    return _COMMENT.sub(blank, _STRING.sub(blank, text))


def document_names(snap: Snapshot) -> frozenset[str]:
    """Every identifier-like word of the document (computed once per document state)."""
    return snap.memo(_DOC_NAMES, lambda: frozenset(_IDENT.findall(snap.text)))


def bound_names(text: str) -> set[str]:
    """Names the text binds itself."""
    code = code_only(text)
    out: set[str] = set()
    for rx in (_BINDERS, _LAMBDA, _DEF_PARAMS, _ASSIGN_LHS):
        for m in rx.finditer(code):
            out.update(_IDENT.findall(m.group(1)))
    out.update(m.group(1) for m in _KWARG_OR_ANN.finditer(code))
    return out


def used_names(line_prefix: str, text: str) -> list[str]:
    """Identifiers the shown ``text`` uses as plain names (not after a dot), continuing a word the cursor's
    line already started (``pri`` + ``nt(x)`` uses ``print``)."""
    code = code_only(line_prefix + text)
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
    code = code_only(line_prefix + text)
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


_DEF_HEAD = re.compile(r"^([ \t]*)def\s+([A-Za-z_]\w*)\s*\(", re.M)
_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\(")
_KEYWORD_ARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=(?!=)")  # at the start of an argument
_SIGNATURES: MemoKey[dict[str, frozenset[str] | None]] = MemoKey("keyword parameters (static checks)")


def _close(code: str, open_at: int) -> int:
    """The offset of the bracket closing the one at ``open_at`` (or len(code) when the text ends first)."""
    depth = 0
    for k in range(open_at, len(code)):
        c = code[k]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return k
    return len(code)


def _arguments(code: str) -> list[tuple[int, str]]:
    """The comma-separated parts of a bracket's contents at its own depth, each with its offset in ``code``."""
    out, depth, begin = [], 0, 0
    for k, c in enumerate(code):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            out.append((begin, code[begin:k]))
            begin = k + 1
    out.append((begin, code[begin:]))
    return out


def _keyword_params(params: str) -> frozenset[str] | None:
    """The names a call may pass by keyword (None: any, the function takes ``**kwargs``)."""
    names: set[str] = set()
    for _, raw in _arguments(params):
        p = raw.split(":")[0].split("=")[0].strip()
        if p.startswith("**"):
            return None
        if p == "/":
            names.clear()  # the parameters before "/" are positional-only
        elif p and not p.startswith("*"):
            names.add(p)
    return frozenset(names)


def _signatures(source: str) -> dict[str, frozenset[str] | None]:
    """Top-level function name -> its keyword parameters; a base-less class -> its ``__init__``'s (without
    ``self``). Names defined more than once (or decorated: a decorator may change the signature) are left out."""
    code = code_only(source)
    out: dict[str, frozenset[str] | None] = {}
    seen: set[str] = set()
    classes = _class_bodies(source)
    for m in _DEF_HEAD.finditer(code):
        name, indent = m.group(2), m.group(1)
        prev = code[: m.start()].rstrip().rsplit("\n", 1)[-1].strip()
        params = code[m.end() : _close(code, m.end() - 1)]
        if not indent:
            key = name
        elif name == "__init__" and (owner := _enclosing_class(classes, m.start())) and not classes[owner][0]:
            key = owner
        else:
            continue
        if key in seen or prev.startswith("@"):
            out.pop(key, None)
            seen.add(key)
            continue
        seen.add(key)
        kw = _keyword_params(params)
        out[key] = kw if kw is None or key == name else kw - {"self"}
    for name, (has_bases, start, end) in classes.items():
        decorated = code[:start].rstrip().rsplit("\n", 1)[-1].strip().startswith("@")  # @dataclass makes one
        if name not in seen and not has_bases and not decorated and "__init__" not in source[start:end]:
            out[name] = frozenset()  # object.__init__ takes no arguments
    return out


def wrong_keywords(snap: Snapshot, line_prefix: str, text: str) -> list[str]:
    """Keyword arguments in the shown text that the called function (a top-level ``def`` of this document, or a
    base-less class of it: its ``__init__``) has no parameter for, as "f(name=)"."""
    if snap.language_id != "python" or "=" not in text:
        return []
    sigs = snap.memo(_SIGNATURES, lambda: _signatures(snap.text))
    if not sigs:
        return []
    code = code_only(line_prefix + text)
    start = len(line_prefix)
    out: list[str] = []
    for call in _CALL.finditer(code):
        params = sigs.get(call.group(1), None)
        if params is None or call.group(1) not in sigs:
            continue
        close = _close(code, call.end() - 1)
        if close <= start:
            continue
        for offset, arg in _arguments(code[call.end() : close]):  # the call's own arguments only
            m = _KEYWORD_ARG.match(arg)
            if m and call.end() + offset + m.start(1) >= start and m.group(1) not in params:
                out.append(f"{call.group(1)}({m.group(1)}=)")
    return list(dict.fromkeys(out))


def issues(
    snap: Snapshot, line: int, line_prefix: str, text: str, known: Callable[[str], bool] | None = None
) -> list[str]:
    """All static-check findings of showing ``text`` after ``line_prefix`` on ``line`` (empty: none)."""
    found = [f"undefined name {n!r}" for n in undefined_names(snap, line_prefix, text, known)]
    found += [f"unknown member {m!r}" for m in unknown_members(snap, line, line_prefix, text)]
    found += [f"unknown keyword {k!r}" for k in wrong_keywords(snap, line_prefix, text)]
    return found
