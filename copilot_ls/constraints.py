"""Guided decoding, the language server's side (pure): after ``obj.`` where the class of ``obj`` and ALL its
members are known, the completion must start with one of those members (issue 14, item 3).

``member_constraint`` answers only where it is sure, else None:
  - Python only; the cursor right after ``obj.`` or ``obj.pa`` (a partly typed member), not inside a string or
    a comment, not in the middle of a word;
  - ``obj`` is ``self`` / ``cls`` (the first parameter of a method of a class; not at the start of a statement,
    where ``self.new = ...`` may be binding a new attribute), a class name, a local variable bound exactly once
    as ``obj = Cls(...)`` / ``obj = mod.Cls(...)``, or a parameter annotated ``obj: Cls`` and never rebound;
  - the class is defined in the document or found through its imports (context.resolve, the workspace);
  - its members are all visible: no ``__getattr__`` / ``__getattribute__`` / ``setattr(`` / ``__dict__`` /
    ``vars(``, no metaclass, no class decorator but a few known ones, and every base class known the same way.
Members: the class body's defs, nested classes and assignments, every ``self.name`` / ``cls.name`` it mentions,
those of its bases, and ``object``'s. The constraint is what may follow what is already typed (the member names
less the typed part); the engine (model_backend/guide.py) masks every token that leaves those names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from copilot_ls.context.resolve import Resolver
from copilot_ls.context.workspace import Workspace
from copilot_ls.documents import MemoKey, Snapshot
from copilot_ls.static_checks import code_only

MAX_BASE_DEPTH = 6  # base classes followed this deep
_CODE: MemoKey[str] = MemoKey("code only (constraints)")
_OBJECT_MEMBERS = frozenset(dir(object))
_AT_DOT = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)?$")
_DEF = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(")
_CLASS = re.compile(r"^([ \t]*)class[ \t]+(\w+)")
_DYNAMIC = re.compile(r"__getattr__|__getattribute__|\bsetattr\s*\(|__dict__|\bvars\s*\(|\bmetaclass\s*=")
_DYNAMIC_WORDS = ("__getattr", "__dict__", "setattr", "vars", "metaclass")  # cheap test before _DYNAMIC
_DEF_ANY = re.compile(r"^([ \t]*)(?:async\s+)?def\s+(\w+)\s*\(\s*(\w+)?", re.M)
_BLOCK_LINE = re.compile(r"(?:if|elif|else|try|except|finally|for|while|with|match|import|from|exec)\b")
_CLASS_LINE = re.compile(r"class\s+(\w+)")
_ASSIGN_LINE = re.compile(r"([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?::[^=]*)?(?:=(?!=)|$)")
_NAME = re.compile(r"[A-Za-z_]\w*")
_SAFE_DECORATORS = re.compile(
    r"@(?:dataclasses\.)?dataclass\b|@(?:functools\.)?total_ordering\b|@(?:typing\.)?final\b"
)
_KNOWN_EMPTY_BASES = {"object", "ABC", "abc.ABC", "Protocol", "typing.Protocol", "Generic", "typing.Generic"}
# what may come right before ``obj.`` for it to be read, not bound (at bracket depth 0)
_LOAD_WORDS = {
    "return",
    "yield",
    "if",
    "elif",
    "while",
    "and",
    "or",
    "not",
    "in",
    "is",
    "assert",
    "await",
    "del",
}
_LOAD_END = re.compile(r"(?:[=+\-*/%<>|&^~@]|\b(?:" + "|".join(sorted(_LOAD_WORDS)) + r"))$")


@dataclass(frozen=True)
class Constraint:
    """The completion must start with one of ``identifiers`` (then a non-identifier character, or end)."""

    identifiers: tuple[str, ...]  # each member's name less the typed part, sorted
    typed: str  # the part of the member already typed before the cursor
    owner: str  # the class whose members these are
    obj: str  # the name before the dot


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _depth(code: str) -> int:
    d = 0
    for ch in code:
        if ch in "([{":
            d += 1
        elif ch in ")]}":
            d = max(0, d - 1)
    return d


def _is_load(head: str) -> bool:
    """Whether ``obj.`` after ``head`` (the line's code before it) is read rather than (maybe) bound."""
    stripped = head.rstrip()
    if not stripped.strip():
        return False
    if _depth(stripped) > 0:
        return not re.search(r"\b(?:for|as|import|def|class|lambda)\b", stripped)
    if re.match(r"\s*(?:for|with|import|from|def|class|global|nonlocal)\b", stripped):
        return bool(re.search(r"\bin$", stripped)) and stripped.lstrip().startswith("for")
    return bool(_LOAD_END.search(stripped))


@dataclass
class _Scope:
    def_line: int | None  # the innermost enclosing def's header line
    first_param: str | None
    decorators: tuple[str, ...]
    class_line: int | None  # the class whose method that def is (directly in its body)


def _scope(lines: list[str], line: int, indent: int) -> _Scope:
    """The def around ``line`` (indented ``indent``) and, when it is a method, its class (by indentation over
    code-only lines)."""
    limit = indent
    def_line = class_line = None
    for i in range(line - 1, -1, -1):
        text = lines[i]
        if not text.strip() or text.lstrip()[0] in ")]}@":
            continue
        ind = _indent(text)
        if ind >= limit:
            continue
        limit = ind
        if def_line is None:
            if _DEF.match(text):
                def_line = i
                continue
            if _CLASS.match(text):
                return _Scope(None, None, (), None)  # directly in a class body: no method around
            continue
        if _CLASS.match(text):
            class_line = i
        break  # the def's parent block: a class (a method) or anything else (a nested function)
    if def_line is None:
        return _Scope(None, None, (), None)
    m = re.match(
        r"[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(\s*(\w+)", "\n".join(lines[def_line : def_line + 3])
    )
    decos = []
    for j in range(def_line - 1, -1, -1):
        if lines[j].strip().startswith("@") and _indent(lines[j]) == _indent(lines[def_line]):
            decos.append(lines[j].strip())
        else:
            break
    return _Scope(def_line, m.group(1) if m else None, tuple(decos), class_line)


def _block_end(lines: list[str], header: int) -> int:
    """The line after the block that ``lines[header]`` opens (the first non-blank line indented no deeper than
    the header, closing brackets of a multi-line header aside)."""
    ind = re.escape(lines[header][: _indent(lines[header])])
    rest = "\n".join(lines[header + 1 :])
    m = re.search(rf"^(?!{ind}[ \t])[ \t]*[^\s)\]}}]", rest, re.M)
    return header + 1 + rest.count("\n", 0, m.start()) if m else len(lines)


def class_members(lines: list[str], header: int) -> tuple[set[str], list[str]] | None:
    """(member names, base class expressions) of the class whose header is ``lines[header]`` (code-only lines),
    or None when its members cannot all be known from its text."""
    end = _block_end(lines, header)
    ind = _indent(lines[header])
    for j in range(header - 1, -1, -1):  # class decorators
        s = lines[j].strip()
        if not s.startswith("@") or _indent(lines[j]) != ind:
            break
        if not _SAFE_DECORATORS.match(s):
            return None
    head_text = "\n".join(lines[header : min(end, header + 6)])
    hm = re.match(r"[ \t]*class[ \t]+\w+[ \t]*(?:\[[^\]]*\])?[ \t]*(\(([^)]*)\))?[ \t]*:", head_text)
    if hm is None:
        return None
    body = "\n".join(lines[header + 1 : end])
    for text in (head_text.split(":", 1)[0], body):
        if any(w in text for w in _DYNAMIC_WORDS) and _DYNAMIC.search(text):
            return None
    bases = [b.strip() for b in (hm.group(2) or "").split(",") if b.strip()]
    if any("=" in b or "*" in b for b in bases):
        return None
    first = re.search(r"^([ \t]*)\S", body, re.M)
    if first is None:
        return None
    body_ind = first.group(1)
    members: set[str] = set()
    selves = {"self", "cls"}
    for m in _DEF_ANY.finditer(body):  # at any depth: a nested function's name is a harmless extra
        members.add(m.group(2))
        if m.group(3) and m.group(1) == body_ind:
            selves.add(m.group(3))
    for m in re.finditer(rf"^{re.escape(body_ind)}(\S.*)$", body, re.M):
        s = m.group(1)
        if s.startswith(("def ", "async ", "@")):
            continue
        if _BLOCK_LINE.match(s):
            return None  # members defined conditionally, in a loop or by an import: not sure of them all
        c = _CLASS_LINE.match(s)
        if c:
            members.add(c.group(1))
            continue
        a = _ASSIGN_LINE.match(s) if (":" in s or "=" in s) else None
        if a:
            members.update(_NAME.findall(a.group(1)))
    alts = "|".join(sorted(selves))
    members.update(re.findall(rf"(?<![\w.])(?:{alts})\.([A-Za-z_]\w*)", body))
    return members, bases


def _base_key(base: str) -> str:
    return re.sub(r"\[.*", "", base).strip()


class _Classes:
    """Class lookups for one request: the document's own classes and, through the resolver, imported ones."""

    def __init__(self, doc_lines: list[str], resolver: Resolver) -> None:
        self.doc_lines = doc_lines
        self.res = resolver
        self._text: str | None = None

    def doc_class(self, name: str) -> int | None:
        """The header line of the document's top-level class ``name`` (the first one), or None."""
        if self._text is None:
            self._text = "\n".join(self.doc_lines)
        m = re.search(rf"^class[ \t]+{re.escape(name)}\b", self._text, re.M)
        return self._text.count("\n", 0, m.start()) if m else None

    def members_in_doc(self, header: int, depth: int = 0) -> set[str] | None:
        found = class_members(self.doc_lines, header)
        if found is None:
            return None
        members, bases = found
        return self._with_bases(members, bases, None, depth)

    def members_of_definition(self, d, depth: int) -> set[str] | None:
        lines = code_only(d.text, keep_lines=True).split("\n")
        header = next((i for i, ln in enumerate(lines) if _CLASS.match(ln)), None)
        if header is None:
            return None
        found = class_members(lines, header)
        if found is None:
            return None
        members, bases = found
        return self._with_bases(members, bases, d.path, depth)

    def _with_bases(
        self, members: set[str], bases: list[str], path: str | None, depth: int
    ) -> set[str] | None:
        out = set(members) | _OBJECT_MEMBERS
        for b in bases:
            key = _base_key(b)
            if key in _KNOWN_EMPTY_BASES:
                continue
            if depth >= MAX_BASE_DEPTH:
                return None
            got = self.members_of_name(key, path, depth + 1)
            if got is None:
                return None
            out |= got
        return out

    def members_of_name(self, name: str, path: str | None, depth: int = 0) -> set[str] | None:
        """Members of the class ``name`` (``mod.Cls`` too) as seen from the document (path None) or from the
        workspace file ``path``; None when it is not a class known in full."""
        qual, _, short = name.rpartition(".")
        if not re.fullmatch(r"[\w.]+", name):
            return None
        if path is None:
            if not qual:
                header = self.doc_class(short)
                if header is not None:
                    return self.members_in_doc(header, depth)
            defs = self.res.definition_of(short, qual or None)
        else:
            if qual:
                return None
            fs = self.res.file(path)
            if fs is None:
                return None
            defs = fs.named(short)
            if not defs:
                for imp in fs.imports:
                    for imported, local in imp.names:
                        if local == short and imported != "*":
                            defs = self.res.lookup(short, imp, imported, from_path=path)
                            break
                    if defs:
                        break
        classes = [d for d in defs if d.kind == "class"]
        if len(classes) != 1 or len(defs) != 1:
            return None
        return self.members_of_definition(classes[0], depth)


def _bindings(code: str, name: str) -> list[str]:
    """Every statement text in ``code`` that (may) bind ``name`` -- assignment, augmented assignment, tuple
    target, for, as, :=, global, nonlocal, del, import, def, class, keyword argument (counted: erring wide)."""
    n = re.escape(name)
    pats = [
        rf"(?<![\w.]){n}\s*(?::[^=\n]*)?=(?!=)[^\n]*",
        rf"(?<![\w.]){n}\s*(?:[-+*/%&|^@]|//|\*\*|>>|<<)=",
        rf"\bfor\b[^\n]*?(?<![\w.]){n}\b[^\n]*?\bin\b",
        rf"\bas\s+{n}\b",
        rf"(?<![\w.]){n}\s*:=",
        rf"\b(?:global|nonlocal|del|import)\b[^\n]*(?<![\w.]){n}\b",
        rf"\b(?:def|class)\s+{n}\b",
        rf"(?<![\w.]){n}\s*,[^\n=]*=(?!=)",
        rf",\s*{n}\s*(?:,[^\n=]*)?=(?!=)",
        rf"\*{n}\b",
    ]
    out: list[str] = []
    for p in pats:
        out.extend(m.group(0) for m in re.finditer(p, code))
    return out


def _function_bindings(lines: list[str], scope: _Scope, name: str) -> list[str]:
    assert scope.def_line is not None
    return _bindings("\n".join(lines[scope.def_line : _block_end(lines, scope.def_line)]), name)


def _variable_class(lines: list[str], scope: _Scope, line: int, obj: str) -> str | None:
    """The class of the local variable / parameter ``obj`` (``Cls`` or ``mod.Cls``) when it is bound exactly
    once, to ``Cls(...)`` or as a parameter annotated ``Cls``; else None."""
    if scope.def_line is not None:
        end = _block_end(lines, scope.def_line)
        header_end = scope.def_line
        while header_end < end - 1 and not re.search(r":\s*$", lines[header_end]):
            header_end += 1
        header = "\n".join(lines[scope.def_line : header_end + 1])
        body = "\n".join(lines[header_end + 1 : end])
    else:
        header, body = "", "\n".join(lines)
    found = _bindings(body, obj)
    params = header[header.find("(") + 1 : header.rfind(")")] if header else ""
    if params and not re.search(rf"(?<![\w.]){re.escape(obj)}\b", params):
        params = ""
    pm = re.search(rf"(?:^|[,(\s]){re.escape(obj)}\s*(?::\s*([\w.]+)\s*)?(?:=[^,]*)?(?:,|$)", params)
    if params:  # a parameter: only with a plain class annotation, never rebound
        if pm is None or found or not pm.group(1):
            return None
        return pm.group(1)
    if len(found) != 1:
        return None
    m = re.match(rf"{re.escape(obj)}\s*(?::\s*[\w.]+\s*)?=\s*([A-Za-z_][\w.]*)\s*\(", found[0])
    if m is None or not m.group(1)[m.group(1).rfind(".") + 1 :][:1].isupper():
        return None  # a class by convention starts upper-case; a factory function returns anything
    return m.group(1)


def _owner_and_members(
    code_lines: list[str], line: int, raw_line: str, head: str, obj: str, resolver: Resolver
) -> tuple[str, set[str] | None] | None:
    """The class `obj` is (its name) and all its members, None members when unknown; None when `obj.` here is
    not a read (an assignment target may be defining a new attribute)."""
    scope = _scope(code_lines, line, _indent(raw_line))
    classes = _Classes(code_lines, resolver)
    if (
        scope.class_line is not None
        and obj == scope.first_param
        and not any(d.startswith("@staticmethod") for d in scope.decorators)
    ):
        if not _is_load(head):
            return None  # `self.x = ...` may be defining a new attribute
        owner = _CLASS.match(code_lines[scope.class_line]).group(2)  # type: ignore[union-attr]
        return owner, classes.members_in_doc(scope.class_line)
    if head.strip() and not _is_load(head) and _depth(head) == 0:
        return None  # `for obj.x in`, `with a as obj.x`: not a read
    cls = _variable_class(code_lines, scope, line, obj)
    if cls is not None:
        return cls, classes.members_of_name(cls, None)
    if obj[:1].isupper() and (scope.def_line is None or not _function_bindings(code_lines, scope, obj)):
        return obj, classes.members_of_name(obj, None)  # a class itself: instance attributes too (a superset)
    return "", None


def member_constraint(
    snap: Snapshot,
    line: int,
    col: int,
    *,
    others: Sequence[Snapshot] = (),
    workspace: Workspace | None = None,
) -> Constraint | None:
    """The constraint at (line, code-point col) of ``snap``, or None where the server is not sure."""
    if snap.language_id != "python":
        return None
    lines = snap.lines()
    if line >= len(lines):
        return None
    raw_line = lines[line]
    after = raw_line[col:]
    if after[:1].isalnum() or after[:1] == "_":
        return None  # in the middle of a word
    prefix = raw_line[:col]
    m = _AT_DOT.search(prefix)
    if m is None:
        return None
    obj, typed = m.group(1), m.group(2) or ""
    offset = snap.offset(line, col)
    code = snap.memo(_CODE, lambda: code_only(snap.text, keep_lines=True))
    if code[offset - len(m.group(0)) : offset] != m.group(0):
        return None  # inside a string or a comment
    # code-only lines, with what the user is typing blanked (it is not a member)
    code_lines = re.split(r"\r\n|\r|\n", code) if "\r" in code else code.split("\n")  # as snap.lines()
    if line >= len(code_lines):
        return None
    cur = code_lines[line]
    code_lines[line] = cur[: m.start()] + " " * len(m.group(0)) + cur[col:]
    head = code_lines[line][: m.start()]
    found = _owner_and_members(code_lines, line, raw_line, head, obj, Resolver(snap, others, workspace))
    if found is None:
        return None
    owner, members = found
    if not members:
        return None
    choices = sorted(n[len(typed) :] for n in members if n.startswith(typed))
    if not choices:
        return None  # a name no member starts with: maybe a new one; not sure
    return Constraint(tuple(choices), typed, owner, obj)
