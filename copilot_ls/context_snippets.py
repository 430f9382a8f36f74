"""Snippet selection for the context builder: what from other files (and cut-off parts of this one) the model
should see, ranked and deduplicated. Pure given the files it reads (see context_workspace).

Kinds, best first:
1. ``under-test``  the cursor is inside a test (``test_*`` functions / methods, ``describe``/``it``/``test``
                   blocks): the implementation of what it tests, found by name (``test_common_prefix`` ->
                   ``common_prefix``), through the file's imports, the test file's naming convention
                   (``test_lib.py`` -> ``lib.py``, ``lib.test.js`` -> ``lib.js``), open documents and the
                   workspace name index.
2. ``definition``  definitions of names used near the cursor, resolved through imports to workspace files (and
                   definitions of this file that the prefix window cut off).
3. ``similar``     the most similar ~60-line windows of other open documents (Jaccard over identifiers).
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tree_sitter
from tree_sitter import QueryCursor

from copilot_ls.context_workspace import (
    Definition,
    FileSymbols,
    Import,
    Workspace,
    current_file,
    extract_symbols,
    open_overlays,
    resolved,
)
from copilot_ls.documents import Snapshot
from copilot_ls.languages import LanguageSpec

SUPPORTED = ("python", "javascript", "typescript", "tsx")
NEAR_LINES_BEFORE = 30  # names used in these lines around the cursor are looked up
NEAR_LINES_AFTER = 5
SHORT_DEFINITION_LINES = 30  # whole bodies up to this size; longer definitions show their summary
WINDOW_LINES = 60
WINDOW_STEP = 40
MIN_JACCARD = 0.15
MAX_SIMILAR_DOCS = 10
MAX_DOC_LINES = 2000
MAX_REEXPORT_DEPTH = 2  # `from pkg import f` -> pkg/__init__.py -> `from .impl import f` -> pkg/impl.py
MAX_REEXPORT_FILES = 16
_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_DOTTED = re.compile(rb"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
MODULE_EXPORTS = "module.exports"  # the imported name of `const x = require('./m')` used as x itself
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
                if attr is not None and attr.id == node.id and obj is not None and (
                    obj.type == "identifier" or obj.type == "attribute" and _DOTTED.fullmatch(obj.text)
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


def node_at_cursor(snap: Snapshot, line: int, col: int):
    """(node, min_col): the innermost node around the cursor. On a blank (or whitespace-only) line of an
    indentation language the cursor belongs to the code above it, but only to definitions that start left of
    the cursor's column (``min_col``; None when it does not apply)."""
    off = snap.offset(line, col)
    spec = snap.language
    lines = snap.lines()
    line_text = lines[min(line, len(lines) - 1)] if lines else ""
    p = off - 1
    while p >= 0 and snap.text[p] in " \t\r\n":
        p -= 1
    if p < 0:
        return snap.tree.root_node, None
    blank = not line_text[:col].strip()
    if spec is not None and not spec.indent_scoped and snap.text[p] == "}":
        bo = snap.byte_offset(off)  # after a closed block: the node at the cursor itself
        return snap.tree.root_node.descendant_for_byte_range(max(0, bo - 1), bo), None
    bp = snap.byte_offset(p)
    node = snap.tree.root_node.descendant_for_byte_range(bp, bp + 1)
    return node, (col if blank and spec is not None and spec.indent_scoped else None)


# --- test detection -----------------------------------------------------------------------------------------
def subjects_under_test(snap: Snapshot, line: int, col: int) -> list[str]:
    """Names the test around the cursor probably tests, best first; [] when the cursor is not in a test."""
    spec = snap.language
    if spec is None or snap.tree is None:
        return []
    node, min_col = node_at_cursor(snap, line, col)
    out: list[str] = []
    in_test_file = bool(spec.test_file.search((snap.path or snap.uri).replace("\\", "/")))
    while node is not None:
        scoped = node.type in spec.function_types or node.type in spec.class_types
        if min_col is not None and scoped and node.start_point[1] >= min_col:
            node = node.parent  # the cursor is dedented out of this definition
            continue
        if node.type in spec.function_types:
            name_node = node.child_by_field_name("name")
            name = name_node.text.decode("utf-8", "replace") if name_node is not None else ""
            if name and spec.test_function.search(name):
                out.extend(_subjects_from_name(name))
        elif node.type in spec.class_types:
            name_node = node.child_by_field_name("name")
            name = name_node.text.decode("utf-8", "replace") if name_node is not None else ""
            if name.startswith("Test") and len(name) > 4:
                out.extend([name[4:], _snake(name[4:])])
        elif node.type == "call_expression" and spec.test_calls:
            fn = node.child_by_field_name("function")
            if fn is not None and fn.text.decode("utf-8", "replace") in spec.test_calls:
                args = node.child_by_field_name("arguments")
                first = args.named_children[0] if args is not None and args.named_child_count else None
                if first is not None and first.type in ("string", "template_string"):
                    desc = first.text.decode("utf-8", "replace").strip("'\"`")
                    out.extend(_IDENT.findall(desc)[:3])
        elif node.is_error and spec.test_calls:
            # typing leaves calls unclosed: `describe('x', () => {` is then an identifier, "(" and a string in
            # an ERROR node, no call_expression
            out.extend(_test_calls_in_error(node, snap.byte_offset(snap.offset(line, col)), spec))
        node = node.parent
    if not out and in_test_file:
        out.extend(_subjects_from_path(snap.path or snap.uri))
    return list(dict.fromkeys(n for n in out if n and not n.lower().startswith("test")))


def _test_calls_in_error(node, before: int, spec: LanguageSpec) -> list[str]:
    """Subjects of the ``describe('name'`` / ``it(`` / ``test(`` calls that an ERROR node holds as loose
    tokens before byte ``before``, innermost (last) first."""
    kids = node.children
    found: list[list[str]] = []
    for i, c in enumerate(kids[:-2]):
        if c.start_byte >= before:
            break
        if (c.type == "identifier" and kids[i + 1].type == "(" and kids[i + 2].type in ("string", "template_string")
                and c.text.decode("utf-8", "replace") in spec.test_calls):
            desc = kids[i + 2].text.decode("utf-8", "replace").strip("'\"`")
            found.append(_IDENT.findall(desc)[:3])
    return [name for names in reversed(found) for name in names]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _subjects_from_name(name: str) -> list[str]:
    """test_common_prefix_empty -> common_prefix_empty, common_prefix, common; testCommonPrefix -> commonPrefix,
    CommonPrefix, common_prefix."""
    base = re.sub(r"^test_?", "", name, flags=re.I)
    if not base:
        return []
    out = []
    if "_" in base:
        parts = base.split("_")
        out.extend("_".join(parts[:k]) for k in range(len(parts), 0, -1))
    else:
        out.extend([base[0].lower() + base[1:], base, _snake(base)])
    return out


def _subjects_from_path(path: str) -> list[str]:
    stem = Path(path).name.split(".")[0]
    stem = re.sub(r"^test_|_test$", "", stem)
    return [stem] if stem else []


def subject_files(path: str) -> list[str]:
    """Files a test file conventionally tests: test_lib.py / lib_test.py -> lib.py (here, in .., in ../src);
    lib.test.js / lib.spec.ts -> lib.js / lib.ts ..."""
    p = Path(path)
    name = p.name
    cands: list[str] = []
    m = re.match(r"^(?:test_)?(.+?)(?:_test)?\.py$", name)
    if name.endswith(".py") and m and m.group(1) != name[:-3] or name.startswith("test_"):
        stem = m.group(1) if m else name
        for d in (p.parent, p.parent.parent, p.parent.parent / "src"):
            cands.append(str(d / f"{stem}.py"))
    m = re.match(r"^(.+?)\.(?:test|spec)\.([cm]?[jt]sx?)$", name)
    if m:
        for d in (p.parent, p.parent.parent, p.parent.parent / "src"):
            for ext in ("js", "ts", "tsx", "jsx", "mjs"):
                cands.append(str(d / f"{m.group(1)}.{ext}"))
    return cands


# --- resolution ---------------------------------------------------------------------------------------------
class _Resolver:
    def __init__(self, snap: Snapshot, others: Sequence[Snapshot], workspace: Workspace | None) -> None:
        self.snap = snap
        self.ws = workspace
        self.overlays = open_overlays(others)
        spec = snap.language
        self.lang = spec.id if spec is not None else ""
        self.current = current_file(snap)
        self.imported: dict[str, tuple[Import, str]] = {}  # local name -> (import, imported name)
        self.modules: dict[str, Import] = {}  # local module name -> import
        self.stars: list[Import] = []
        self.reexport_files = MAX_REEXPORT_FILES  # re-exports followed in this request (each parses files)
        for imp in self.current.imports:
            if imp.local:
                self.modules[imp.local] = imp
            for name, local in imp.names:
                if name == "*":
                    self.stars.append(imp)
                else:
                    self.imported[local] = (imp, name)

    def file(self, path: str) -> FileSymbols | None:
        overlay = self.overlays.get(resolved(path))
        if self.ws is not None:
            return self.ws.file_symbols(path, overlay)
        if overlay is not None and overlay.language is not None and overlay.language.id in SUPPORTED:
            return extract_symbols(overlay.text, overlay.language, overlay.path or path, overlay.tree)
        return None

    def files_of(self, imp: Import, from_path: str | None = None) -> list[str]:
        if self.ws is None or not self.snap.path:
            # without a workspace only open documents can answer
            return [p for p in self.overlays if _module_matches(p, imp.module)]
        return self.ws.resolve(from_path or self.snap.path, imp, "python" if self.lang == "python" else "js")

    def lookup(self, name: str, imp: Import, imported_name: str | None = None, *, from_path: str | None = None,
               depth: int = 0) -> list[Definition]:
        wanted = imported_name or name
        out: list[Definition] = []
        for path in self.files_of(imp, from_path):
            fs = self.file(path)
            if fs is None or _same_file(path, self.snap.path):
                continue
            if wanted in ("default", MODULE_EXPORTS) and fs.default_export:  # `export default`, `module.exports =`
                found = fs.named(fs.default_export)
            else:
                found = fs.named(wanted)
            if not found and wanted == "default" and not fs.default_export:
                # no `export default` nor `module.exports = <definition>`: the file's first definition
                found = [d for d in fs.definitions if d.kind != "method"][:1]
            if not found and depth < MAX_REEXPORT_DEPTH:
                found = self.reexported(fs, path, fs.local_name(wanted), depth)
            out.extend(found)
            if out:
                break
        return out

    def reexported(self, fs: FileSymbols, path: str, wanted: str, depth: int) -> list[Definition]:
        """The definition of ``wanted`` that the file at ``path`` re-exports: a package's ``__init__.py`` with
        ``from .impl import wanted`` / ``from .impl import *``, an ``index.js`` with ``export {wanted} from``
        / ``export * from``. Followed ``MAX_REEXPORT_DEPTH`` files deep, ``MAX_REEXPORT_FILES`` per request."""
        if self.ws is None:
            return []
        for imp in fs.imports:
            for name, local in imp.names:
                if local != wanted and name != "*":
                    continue
                if self.reexport_files <= 0:
                    return []
                self.reexport_files -= 1
                found = self.lookup(wanted if name == "*" else name, imp, from_path=path, depth=depth + 1)
                if found:
                    return found
        return []

    def definition_of(self, name: str, qual: str | None) -> list[Definition]:
        if qual is not None:
            imp = self.modules.get(qual)
            if imp is not None:
                return self.lookup(name, imp)
            if "." in qual:  # Python `import pkg.mod` then `pkg.mod.f`; `import pkg` then `pkg.mod.f`
                parts = qual.split(".")
                for k in range(len(parts) - 1, 0, -1):
                    imp = self.modules.get(".".join(parts[:k]))
                    if imp is not None:
                        return self.lookup(name, Import(".".join([imp.module, *parts[k:]]), ()))
                return []
            if qual in self.imported:  # ``from pkg import mod`` then ``mod.name``
                imp, mod_name = self.imported[qual]
                # `from . import mod` -> ".mod" (not "..mod", the parent package); `from pkg import mod` -> "pkg.mod"
                dot = "" if imp.module.endswith(".") else "."
                sub = Import(f"{imp.module}{dot}{mod_name}" if self.lang == "python" else imp.module, ())
                return self.lookup(name, sub) if self.lang == "python" else []
            return []
        if name in self.imported:
            imp, imported_name = self.imported[name]
            return self.lookup(name, imp, imported_name)
        imp = self.modules.get(name)
        if imp is not None and imp.commonjs:  # `const f = require('./f')`: f is what f.js assigns to module.exports
            return self.lookup(name, imp, MODULE_EXPORTS)
        for imp in self.stars:
            found = self.lookup(name, imp)
            if found:
                return found
        return []

    def anywhere(self, name: str) -> list[Definition]:
        """A definition of ``name`` wherever it can be found: imports, the test file's subject file, open
        documents, the workspace name index."""
        found = self.definition_of(name, None)
        if found:
            return found
        for imp in list(self.modules.values()):
            found = self.lookup(name, imp)
            if found:
                return found
        paths = [p for p in subject_files(self.snap.path or "") if Path(p).is_file() or p in self.overlays]
        paths += sorted(self.overlays)
        if self.ws is not None:
            paths += self.ws.paths_defining(name)
        for path in dict.fromkeys(paths):
            if _same_file(path, self.snap.path):
                continue
            fs = self.file(path)
            if fs is not None and fs.named(name):
                return fs.named(name)
        return []


def _same_file(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return a == b or resolved(a) == resolved(b)
    except OSError:
        return a == b


def _module_matches(path: str, module: str) -> bool:
    stem = Path(path).with_suffix("").as_posix()
    mod = module.lstrip("./").replace(".", "/") if not module.startswith(".") else module.lstrip("./")
    mod = re.sub(r"\.(js|ts|tsx|jsx|mjs|cjs)$", "", mod)
    return bool(mod) and (stem.endswith("/" + mod) or stem == mod)


def _snippet_from(defn: Definition, kind: str, score: float, why: str) -> Snippet:
    short = defn.end_line - defn.start_line + 1 <= SHORT_DEFINITION_LINES
    text = defn.text if short else (defn.summary or defn.text)
    return Snippet(kind, defn.path, defn.start_line, defn.end_line, text, defn.summary or text, score, why,
                   defn.signature)


_BARE_VARIABLE = re.compile(r"^[A-Za-z_]\w*\s*(?::[^=\n]*)?(?:=\s*[A-Za-z_][\w.]*)?\s*;?$")


def informative(defn: Definition) -> bool:
    """Whether a definition tells the model more than its name: not a bare alias (``Matrix = MutableMatrix``)
    or a bare annotation (``slow: Callable[[Any], Any]``)."""
    return defn.kind != "variable" or not _BARE_VARIABLE.match(defn.text.strip())


# --- similar windows ----------------------------------------------------------------------------------------
def _idents(text: str) -> set[str]:
    return set(_IDENT.findall(text))


_WINDOW_CACHE: OrderedDict[tuple[str, int, int], list[tuple[int, frozenset[str]]]] = OrderedDict()
_WINDOW_CACHE_SIZE = 64
_WINDOW_LOCK = threading.Lock()


def _windows(doc: Snapshot) -> list[tuple[int, frozenset[str]]]:
    """(start line, identifier set) of each window of an open document, cached per (uri, version)."""
    key = (doc.uri, doc.version, len(doc.text))
    with _WINDOW_LOCK:
        hit = _WINDOW_CACHE.get(key)
        if hit is not None:
            _WINDOW_CACHE.move_to_end(key)
            return hit
    lines = doc.lines()[:MAX_DOC_LINES]
    out = []
    for start in range(0, max(1, len(lines) - WINDOW_STEP), WINDOW_STEP):
        window = frozenset(_IDENT.findall("\n".join(lines[start : start + WINDOW_LINES])))
        if window:
            out.append((start, window))
    with _WINDOW_LOCK:
        _WINDOW_CACHE[key] = out
        while len(_WINDOW_CACHE) > _WINDOW_CACHE_SIZE:
            _WINDOW_CACHE.popitem(last=False)
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
    if spec is not None and spec.id in SUPPORTED and snap.tree is not None:
        res = _Resolver(snap, others, workspace)
        # 1. the function under test
        for rank, subject in enumerate(subjects_under_test(snap, line, col)[:4]):
            for defn in res.anywhere(subject)[:1]:
                out.append(
                    _snippet_from(
                        defn, "under-test", 100 - rank, f"implementation of `{subject}`, under test"
                    )
                )
            if out:
                break
        # 2. definitions of names used near the cursor
        for rank, (name, qual) in enumerate(names_near(snap, line)[:60]):
            for defn in [d for d in res.definition_of(name, qual)[:1] if informative(d)]:
                out.append(
                    _snippet_from(defn, "definition", 50 - rank * 0.5, f"definition of `{name}`, used nearby")
                )
            d = res.current.definition(name) if qual is None else None
            if d is not None:
                if d.end_line < window_start_line and not (d.start_line <= line <= d.end_line):
                    out.append(
                        _snippet_from(
                            d, "definition", 40 - rank * 0.5, f"`{name}` of this file, above the window"
                        )
                    )
    # 3. similar windows of other open documents
    out.extend(similar_windows(snap, line, others))
    return dedupe(out)


def dedupe(snippets: list[Snippet]) -> list[Snippet]:
    """Best first; one snippet per place: a snippet overlapping a better one of the same file is dropped."""
    ranked = sorted(snippets, key=lambda s: (-s.score, s.path, s.start_line, s.end_line))
    kept: list[Snippet] = []
    for s in ranked:
        if any(
            _same_file(k.path, s.path) and k.start_line <= s.end_line and s.start_line <= k.end_line
            for k in kept
        ):
            continue
        kept.append(s)
    return kept
