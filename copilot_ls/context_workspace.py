"""The workspace side of the context builder: definitions and imports of files, found with tree-sitter queries
(copilot_ls/queries/<lang>/{definitions,imports}.scm), import resolution to workspace files, and a name index.

Cost model (a 10,000-file workspace must not slow a keystroke):
- ``file_symbols(path)`` parses one file on demand and caches the result by (path, mtime, size) in a bounded LRU;
  the request path only ever parses the few files the current document imports (once each).
- ``Workspace.definitions_named(name)`` answers from a name index that a background thread builds lazily (a
  cheap regex scan, files and bytes bounded, yielding between files); until it is ready, answers are partial.
- Open documents (snapshots) always win over the disk: their text is what the user sees.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from copilot_ls.documents import Snapshot
from copilot_ls.languages import LanguageSpec, language_for, new_parser

ROOT_MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg", "package.json", "go.mod", "Cargo.toml")
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        "build",
        "dist",
        ".cache",
        "site-packages",
        ".idea",
        ".vscode",
        "target",
    }
)
MAX_FILE_BYTES = 1_000_000


def _too_big(text: str) -> bool:
    """More than MAX_FILE_BYTES in UTF-8 (encoded only when the length alone cannot tell)."""
    if len(text) > MAX_FILE_BYTES:
        return True
    return len(text) * 4 > MAX_FILE_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES
MAX_DEPTH = 64  # folders below the root that the name index walks into
JS_EXTENSIONS = (".js", ".ts", ".tsx", ".jsx", ".mjs", ".cjs", ".mts", ".cts")
# Top-level definitions a regex can spot cheaply (for the background name index).
_NAME_PATTERNS: dict[str, re.Pattern[str]] = {
    "python": re.compile(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", re.M),
    "js": re.compile(
        r"^(?:(?:export\s+(?:default\s+)?)?(?:async\s+)?(?:function\*?|class|const|let|var|interface|type|enum)\s+"
        r"|(?:module\.)?exports\.)([A-Za-z_$][\w$]*)",  # CommonJS: `exports.f = ...`, `module.exports.f = ...`
        re.M,
    ),
}


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str  # "function" | "class" | "method" | "variable" | "type"
    path: str
    start_line: int  # 0-based, inclusive
    end_line: int
    text: str  # the whole definition's source
    container: str | None = None  # class name for methods
    summary: str = ""  # header + docstring (+ method headers for classes): what a long definition shows
    signature: str = ""  # header + the docstring's first line (+ the constructor's header for classes)


@dataclass(frozen=True)
class Import:
    module: str  # "pkg.mod", ".mod" (relative, Python), "./lib.js" (JS)
    names: tuple[
        tuple[str, str], ...
    ]  # (imported name, local name); ("*", "*") = star; () = the module itself
    local: str | None = None  # local name of the module itself (``import x as y`` / ``import * as ns``)
    line: int = 0
    commonjs: bool = False  # ``const x = require('./m')``: ``local`` is also m's ``module.exports`` (its default)


@dataclass(frozen=True)
class FileSymbols:
    path: str
    language: str
    definitions: tuple[Definition, ...]
    imports: tuple[Import, ...]
    # JS/TS: the name of the `export default` / CommonJS `module.exports = f` definition ("default": anonymous)
    default_export: str | None = None
    aliases: tuple[tuple[str, str], ...] = ()  # CommonJS (exported, local): `module.exports = { g: helper }`

    def named(self, name: str) -> list[Definition]:
        """Top-level definitions of ``name`` (or of what the file exports as ``name``: ``exports.g = helper``);
        ``@overload`` stubs after the implementation they describe."""
        found = [d for d in self.definitions if d.name == name and d.kind != "method"]
        if not found and self.aliases:
            local = self.local_name(name)
            if local != name:
                found = [d for d in self.definitions if d.name == local and d.kind != "method"]
        return sorted(found, key=_is_overload_stub) if len(found) > 1 else found

    def local_name(self, name: str) -> str:
        """The file's own name for what it exports as ``name`` (CommonJS aliases; else ``name``)."""
        return next((local for exported, local in self.aliases if exported == name), name)


_OVERLOAD = re.compile(r"^@(?:typing\.|t\.)?overload\b", re.M)


def _is_overload_stub(d: Definition) -> bool:
    """A typing ``@overload`` signature (a stub, not the code the model should see)."""
    head = d.text.split("def ", 1)[0]
    return bool(_OVERLOAD.search(head))


# --- extraction ---------------------------------------------------------------------------------------------
def _lines_of(node) -> tuple[int, int]:
    return node.start_point[0], node.end_point[0]


def extract_symbols(text: str, spec: LanguageSpec, path: str, tree=None) -> FileSymbols:
    """Definitions and imports of one file (``tree`` reused when given, else parsed)."""
    data = text.encode("utf-8", "surrogatepass")
    if tree is None:
        tree = new_parser(spec).parse(data)
    defs: list[Definition] = []
    aliases: list[tuple[str, str]] = []
    query = spec.query("definitions")
    if query is not None:
        from tree_sitter import QueryCursor

        for _, caps in QueryCursor(query).matches(tree.root_node):
            name_nodes = caps.get("name")
            if not name_nodes:
                continue
            # CommonJS `module.exports = {...}`: the definitions are inside the statement that must be top level
            anchor = caps["statement"][0] if caps.get("statement") else None
            if caps.get("alias"):  # `exports.g = helper`: g is helper
                if anchor is not None and _top_level(anchor):
                    aliases.append((_txt(name_nodes[0]), _txt(caps["alias"][0])))
                continue
            for key, nodes in caps.items():
                if not key.startswith("definition."):
                    continue
                node = nodes[0]
                kind = key.split(".", 1)[1]
                if kind != "method" and not _top_level(anchor if anchor is not None else node):
                    continue
                defs.append(make_definition(node, name_nodes[0], kind, spec, data, path))
    default_export = None
    if spec.id != "python":
        default_export, anonymous = _js_default_export(tree, spec, data, path)
        if anonymous is not None:
            defs.append(anonymous)
    defs.sort(key=lambda d: (d.start_line, d.name))
    imports = _python_imports(tree, spec) if spec.id == "python" else _js_imports(tree, spec)
    return FileSymbols(path=path, language=spec.id, definitions=tuple(defs), imports=tuple(imports),
                       default_export=default_export, aliases=tuple(aliases))


def _js_default_export(tree, spec: LanguageSpec, data: bytes, path: str) -> tuple[str | None, Definition | None]:
    """(name, definition) of a module's ``export default``: the name of the exported declaration or identifier
    (no new definition), or ``"default"`` and a definition of the anonymous export; (None, None) without one.
    CommonJS ``module.exports = helper`` / ``= function f() {}`` / ``= (a) => ...`` / ``= class {}`` count as
    the default export too (the statement is the definition, named ``f`` or ``"default"``)."""
    for node in tree.root_node.children:
        if node.type == "expression_statement":
            found = _commonjs_default_export(node, spec, data, path)
            if found is not None:
                return found
            continue
        if node.type != "export_statement":
            continue
        keyword = next((c for c in node.children if c.type == "default"), None)
        if keyword is None:
            continue
        decl = node.child_by_field_name("declaration")
        name = decl.child_by_field_name("name") if decl is not None else None
        if name is not None:
            return _txt(name), None
        value = node.child_by_field_name("value")
        if value is not None and value.type == "identifier":
            return _txt(value), None
        if value is None:
            return None, None
        kind = ("function" if value.type in spec.function_types else
                "class" if value.type in spec.class_types else "variable")
        return "default", make_definition(value, keyword, kind, spec, data, path)
    return None, None


def _commonjs_default_export(node, spec: LanguageSpec, data: bytes, path: str):
    """(name, definition) for a top-level ``module.exports = <identifier | function | class>``, else None."""
    expr = node.named_children[0] if node.named_child_count else None
    if expr is None or expr.type != "assignment_expression":
        return None
    left, value = expr.child_by_field_name("left"), expr.child_by_field_name("right")
    if left is None or value is None or left.type != "member_expression" or _txt(left) != "module.exports":
        return None
    if value.type == "identifier":
        return _txt(value), None
    if value.type in spec.function_types:
        kind = "function"
    elif value.type in spec.class_types:
        kind = "class"
    else:  # an object (its members are found by the definitions query), require(...), a call: no definition
        return None
    name = value.child_by_field_name("name")
    if name is not None:
        return _txt(name), make_definition(node, name, kind, spec, data, path)
    return "default", make_definition(node, None, kind, spec, data, path, name="default")


_IMPORT_TYPES = frozenset(
    {
        "import_statement",
        "import_from_statement",
        "future_import_statement",
        "lexical_declaration",
        "variable_declaration",
    }
)


def make_definition(node, name_node, kind: str, spec: LanguageSpec, data: bytes, path: str, *,
                    name: str | None = None) -> Definition:
    """A Definition from its node: full text (docstring cut to its first paragraph) and summary; named by
    ``name_node`` (or ``name``)."""
    container = _container_name(node) if kind == "method" else None
    s, e = _lines_of(node)
    full = data[node.start_byte : node.end_byte].decode("utf-8", "replace")
    doc = _docstring_node(node, spec)
    if doc is not None:  # long docstrings (examples, parameters) crowd out code: keep the first paragraph
        a, b = doc.start_byte - node.start_byte, doc.end_byte - node.start_byte
        raw = data[node.start_byte : node.end_byte]
        trimmed = trim_docstring(raw[a:b].decode("utf-8", "replace")).encode("utf-8", "surrogatepass")
        full = (raw[:a] + trimmed + raw[b:]).decode("utf-8", "replace")
    return Definition(
        name=name if name is not None else name_node.text.decode("utf-8", "replace"),
        kind=kind,
        path=path,
        start_line=s,
        end_line=e,
        text=full,
        container=container,
        summary=summarize(node, data, spec),
        signature=summarize(node, data, spec, compact=True),
    )


@dataclass
class CurrentFile:
    """What the request path needs of the document being edited, without a whole-file query: its imports
    (top-level statements) and its top-level definitions by name (Definitions built on demand)."""

    imports: tuple[Import, ...]
    _nodes: dict[str, tuple[object, object, str]]
    _spec: LanguageSpec
    _data: bytes
    _path: str

    def definition(self, name: str) -> Definition | None:
        hit = self._nodes.get(name)
        if hit is None:
            return None
        node, name_node, kind = hit
        return make_definition(node, name_node, kind, self._spec, self._data, self._path)


def current_file(snap: Snapshot) -> CurrentFile:
    """Imports and top-level definitions of the edited document, by queries limited to the top level (the
    children of the root, or of a top-level ERROR when the file does not parse): no walk over the whole tree."""
    spec = snap.language
    assert spec is not None and snap.tree is not None
    cached = snap._cache.get("current_file")
    if cached is not None:
        return cached
    data = snap.encoded()
    root = snap.tree.root_node
    if root.child_count == 1 and root.children[0].type == "ERROR":
        root = root.children[0]
    tops = []
    cursor = root.walk()
    if cursor.goto_first_child():
        while True:
            tops.append(cursor.node)
            if not cursor.goto_next_sibling():
                break
    import_roots = [n for n in tops if n.type in _IMPORT_TYPES]
    if spec.id == "python":
        imports = _python_imports(snap.tree, spec, import_roots)
    else:
        imports = _js_imports(snap.tree, spec, import_roots)
    nodes_by_name: dict[str, tuple[object, object, str]] = {}
    wanted = spec.function_types | spec.class_types
    for n in tops:
        inner = n
        if inner.type in ("export_statement", "decorated_definition"):
            inner = (
                inner.child_by_field_name("declaration") or inner.child_by_field_name("definition") or inner
            )
        if inner.type not in wanted:
            continue
        name_node = inner.child_by_field_name("name")
        if name_node is not None:
            kind = "function" if inner.type in spec.function_types else "class"
            nodes_by_name.setdefault(name_node.text.decode("utf-8", "replace"), (n, name_node, kind))
    out = CurrentFile(tuple(imports), nodes_by_name, spec, data, snap.path or snap.uri)
    snap._cache["current_file"] = out
    return out


_BODY_FIELDS = ("body", "value")


def _definition_node(node):
    """The function/class node of a definition capture (through decorators / variable declarations)."""
    if node.type == "decorated_definition":
        inner = node.child_by_field_name("definition")
        return inner if inner is not None else node
    if node.type in ("lexical_declaration", "variable_declaration"):
        for decl in node.children:
            if decl.type == "variable_declarator":
                value = decl.child_by_field_name("value")
                return value if value is not None else node
    if node.type == "expression_statement" and node.named_child_count:  # CommonJS `exports.f = function ...`
        expr = node.named_children[0]
        if expr.type == "assignment_expression":
            value = expr.child_by_field_name("right")
            return value if value is not None else node
    if node.type == "pair":  # `module.exports = { f: function ... }`
        value = node.child_by_field_name("value")
        return value if value is not None else node
    return node


DOCSTRING_LINES = 6


def trim_docstring(doc: str, max_lines: int = DOCSTRING_LINES) -> str:
    """A docstring literal cut to its first paragraph (at most ``max_lines`` lines), quotes kept."""
    m = re.match(r"^([rRbBuUfF]*)(\"\"\"|'''|\"|')", doc)
    if not m or len(m.group(2)) != 3:
        return doc
    quote = m.group(2)
    lines = doc.split("\n")
    cut = next((i for i, ln in enumerate(lines) if i > 0 and not ln.strip()), len(lines))
    cut = min(cut, max_lines)
    if cut >= len(lines):
        return doc
    indent = lines[-1][: len(lines[-1]) - len(lines[-1].lstrip())]
    return "\n".join(lines[:cut]).rstrip() + "\n" + indent + quote


def first_docstring_line(doc: str) -> str:
    """A docstring literal cut to its first line of text, on one line: ``\"\"\"Returns the square root.\"\"\"``."""
    m = re.match(r"^([rRbBuUfF]*)(\"\"\"|'''|\"|')", doc)
    if not m:
        return doc
    quote = m.group(2)
    inner = doc[m.end() :]
    if inner.endswith(quote):
        inner = inner[: -len(quote)]
    text = next((ln.strip() for ln in inner.split("\n") if ln.strip()), "")
    if quote in text or text.endswith("\\"):
        text = ""
    return f"{m.group(1)}{quote}{text}{quote}" if text else ""


def _docstring_node(node, spec: LanguageSpec):
    """The docstring literal of a Python function / class definition, or None."""
    if not spec.indent_scoped:
        return None
    body = _definition_node(node).child_by_field_name("body")
    first = body.named_children[0] if body is not None and body.named_child_count else None
    if first is not None and first.type == "expression_statement" and first.named_child_count == 1:
        lit = first.named_children[0]
        if lit.type in spec.string_types:
            return lit
    return None


def summarize(node, data: bytes, spec: LanguageSpec, *, compact: bool = False) -> str:
    """Header (decorators, signature) + docstring, and for classes the headers of their methods.
    ``compact``: only the docstring's first line of text, and of a class's methods only the constructor."""
    inner = _definition_node(node)
    body = inner.child_by_field_name("body")
    if body is None:
        return data[node.start_byte : node.end_byte].decode("utf-8", "replace")
    header = data[node.start_byte : body.start_byte].decode("utf-8", "replace").rstrip()
    col = body.start_point[1]
    if spec.indent_scoped:
        indent = " " * col if body.start_point[0] > inner.start_point[0] else "    "
        parts = [header]
        doc = _docstring_node(node, spec)
        if doc is not None:
            literal = data[doc.start_byte : doc.end_byte].decode("utf-8", "replace")
            shown = first_docstring_line(literal) if compact else trim_docstring(literal)
            if shown:
                parts.append(indent + shown)
        if inner.type in spec.class_types:
            for child in body.named_children:
                fn = _definition_node(child)
                if compact and (fn.child_by_field_name("name") is None
                                or fn.child_by_field_name("name").text not in (b"__init__", b"__new__")):
                    continue
                if fn.type in spec.function_types:
                    fb = fn.child_by_field_name("body")
                    if fb is not None:
                        sig = data[child.start_byte : fb.start_byte].decode("utf-8", "replace").rstrip()
                        parts.append(indent + sig + " ...")
        if not compact or len(parts) == 1:
            # compact: a docstring is a body already (a `...` line is what a small model copies after a header)
            parts.append(indent + "...")
        return "\n".join(parts)
    parts = [header + " {"]
    if inner.type in spec.class_types:
        for child in body.named_children:
            if child.type == "method_definition":
                fb = child.child_by_field_name("body")
                if fb is not None:
                    sig = data[child.start_byte : fb.start_byte].decode("utf-8", "replace").strip()
                    parts.append("  " + sig + " { ... }")
            elif child.type in _TS_MEMBER_SIGNATURES:  # an interface's members are its signature
                parts.append("  " + _txt(child).strip().rstrip(";,") + ";")
    else:
        parts.append("  // ...")
    parts.append("}")
    return "\n".join(parts)


_TS_MEMBER_SIGNATURES = frozenset({"method_signature", "property_signature", "abstract_method_signature",
                                   "index_signature", "call_signature", "construct_signature"})


def _top_level(node) -> bool:
    """Directly under the module / program (through ``export``), or under an ERROR at the top of a file that
    does not parse."""
    parent = node.parent
    while parent is not None and parent.type == "export_statement":
        parent = parent.parent
    if (
        parent is not None
        and parent.type == "ERROR"
        and (parent.parent is None or parent.parent.parent is None)
    ):
        return True
    return parent is None or parent.type in ("module", "program")


def _container_name(node) -> str | None:
    p = node.parent
    while p is not None:
        if p.type in ("class_definition", "class_declaration", "class", "abstract_class_declaration"):
            n = p.child_by_field_name("name")
            return n.text.decode("utf-8", "replace") if n is not None else None
        p = p.parent
    return None


def _txt(node) -> str:
    return node.text.decode("utf-8", "replace") if node is not None else ""


def _python_imports(tree, spec: LanguageSpec, roots=None) -> list[Import]:
    out: list[Import] = []
    query = spec.query("imports")
    if query is None:
        return out
    from tree_sitter import QueryCursor

    nodes = sorted(
        (
            n
            for root in (roots if roots is not None else [tree.root_node])
            for ns in QueryCursor(query).captures(root).values()
            for n in ns
        ),
        key=lambda n: n.start_byte,
    )
    for node in nodes:
        line = node.start_point[0]
        if node.type == "import_statement":
            for child in node.children_by_field_name("name"):
                if child.type == "aliased_import":
                    mod = _txt(child.child_by_field_name("name"))
                    out.append(Import(mod, (), local=_txt(child.child_by_field_name("alias")), line=line))
                else:
                    mod = _txt(child)
                    out.append(Import(mod, (), local=mod, line=line))
        else:  # import_from_statement
            mod = _txt(node.child_by_field_name("module_name"))
            names: list[tuple[str, str]] = []
            if any(c.type == "wildcard_import" for c in node.children):
                names.append(("*", "*"))
            for child in node.children_by_field_name("name"):
                if child.type == "aliased_import":
                    names.append(
                        (_txt(child.child_by_field_name("name")), _txt(child.child_by_field_name("alias")))
                    )
                else:
                    names.append((_txt(child), _txt(child)))
            out.append(Import(mod, tuple(names), line=line))
    return out


def _js_imports(tree, spec: LanguageSpec, roots=None) -> list[Import]:
    out: list[Import] = []
    query = spec.query("imports")
    if query is None:
        return out
    from tree_sitter import QueryCursor

    matches = [
        m
        for root in (roots if roots is not None else [tree.root_node])
        for m in QueryCursor(query).matches(root)
    ]
    for _, caps in matches:
        source = _txt(caps["source"][0]) if caps.get("source") else ""
        if "import" in caps:
            node = caps["import"][0]
            names: list[tuple[str, str]] = []
            local = None
            clause = next((c for c in node.children if c.type == "import_clause"), None)
            for c in clause.children if clause is not None else ():
                if c.type == "identifier":  # default import
                    names.append(("default", _txt(c)))
                elif c.type == "namespace_import":
                    ids = [x for x in c.children if x.type == "identifier"]
                    local = _txt(ids[0]) if ids else None
                elif c.type == "named_imports":
                    for spec_node in c.children:
                        if spec_node.type != "import_specifier":
                            continue
                        name = _txt(spec_node.child_by_field_name("name"))
                        alias = spec_node.child_by_field_name("alias")
                        names.append((name, _txt(alias) if alias is not None else name))
            out.append(Import(source, tuple(names), local=local, line=node.start_point[0]))
        elif "reexport" in caps:  # `export * from './m'`, `export {a, default as b} from './m'`
            node = caps["reexport"][0]
            names = [("*", "*")] if any(c.type == "*" for c in node.children) else []
            clause = next((c for c in node.children if c.type == "export_clause"), None)
            for c in clause.children if clause is not None else ():
                if c.type != "export_specifier":
                    continue
                name_node, alias = c.child_by_field_name("name"), c.child_by_field_name("alias")
                name = _txt(name_node) if name_node is not None else "default"
                names.append((name, _txt(alias) if alias is not None else name))
            out.append(Import(source, tuple(names), line=node.start_point[0]))
        elif "require" in caps:
            node = caps["require"][0]
            for decl in node.children:
                if decl.type != "variable_declarator":
                    continue
                target = decl.child_by_field_name("name")
                if target is None:
                    continue
                if target.type == "identifier":
                    out.append(Import(source, (), local=_txt(target), line=node.start_point[0], commonjs=True))
                elif target.type == "object_pattern":
                    names = []
                    for c in target.children:
                        if c.type == "shorthand_property_identifier_pattern":
                            names.append((_txt(c), _txt(c)))
                        elif c.type == "pair_pattern":
                            k, v = c.child_by_field_name("key"), c.child_by_field_name("value")
                            names.append((_txt(k), _txt(v)))
                    out.append(Import(source, tuple(names), line=node.start_point[0]))
    out.sort(key=lambda i: i.line)
    return out


# --- files and import resolution ------------------------------------------------------------------------------
# Path resolution (realpath: a stat per component) and the root search (stats up the tree) ran several times per
# request; their answers are kept for a short while (a new symlink or project marker shows within that time).
_FS_TTL_S = 2.0
_RESOLVED: dict[str, tuple[float, str]] = {}
_ROOTS: dict[str, tuple[float, tuple[Path, bool]]] = {}
_FS_CACHE_MAX = 4096


def _fs_cached(cache: dict, key: str, compute):
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and now - hit[0] < _FS_TTL_S:
        return hit[1]
    value = compute()  # errors (OSError) propagate and are not cached
    if len(cache) >= _FS_CACHE_MAX:
        cache.clear()
    cache[key] = (now, value)
    return value


def resolved(path: str | os.PathLike[str]) -> str:
    """``str(Path(path).resolve())``, cached for a short while (see ``_FS_TTL_S``)."""
    key = os.fspath(path)
    return _fs_cached(_RESOLVED, key, lambda: str(_resolve(Path(key))))


def _resolve(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop as the OSError it is (Python < 3.13 raises RuntimeError)."""
    try:
        return path.resolve()
    except RuntimeError as exc:
        raise OSError(errno.ELOOP, str(exc), str(path)) from None


LIBRARY_DIRS = frozenset({"site-packages", "dist-packages"})


def find_root(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """(root, marked): the nearest ancestor directory holding a project marker (.git, pyproject.toml,
    package.json, ...) and True; an installed package's ``site-packages`` (a library file belongs to its
    packages, not to the project whose virtual environment holds it) and False; else the folder above the
    outermost Python package around the file (or the file's own folder) and False (no name index is built for
    unmarked roots). Cached for a short while."""
    key = os.fspath(path)
    return _fs_cached(_ROOTS, key, lambda: _find_root(key))


def _find_root(path: str) -> tuple[Path, bool]:
    p = Path(resolved(path)).parent
    for d in (p, *p.parents):
        if any((d / m).exists() for m in ROOT_MARKERS):
            return d, True
        if d.name in LIBRARY_DIRS:
            return d, False
    top = p
    while (top / "__init__.py").exists() and top.parent != top:
        top = top.parent
    return top, False


class _LRU(OrderedDict):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_item(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class Workspace:
    """One workspace root: parsed files on demand (bounded LRU) and a lazily built name index."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_files: int = 20_000,
        cache_files: int = 256,
        index: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.index_enabled = index
        self.max_files = max_files
        self._files: _LRU = _LRU(cache_files)
        self._lock = threading.Lock()
        self._index: dict[str, list[str]] | None = None
        self._index_thread: threading.Thread | None = None
        self._index_done = threading.Event()
        self.files_indexed = 0

    # files
    def file_symbols(
        self, path: str | os.PathLike[str], overlay: Snapshot | None = None
    ) -> FileSymbols | None:
        """Definitions and imports of ``path`` (from ``overlay`` when the file is open), or None when the file
        is not a known language, too big, unreadable or missing."""
        if (
            overlay is not None
            and overlay.language is not None
            and overlay.language.id in ("python",) + _JS_IDS
        ):
            if _too_big(overlay.text):  # as on disk: an open multi-MB document is not parsed (seconds) either
                return None
            key = ("open", overlay.uri, overlay.version, len(overlay.text))
            with self._lock:
                hit = self._files.get_item(key)
            if hit is None:
                hit = extract_symbols(
                    overlay.text, overlay.language, overlay.path or overlay.uri, overlay.tree
                )
                with self._lock:
                    self._files.put(key, hit)
            return hit
        p = str(path)
        spec = language_for(None, p)
        if spec is None or spec.id not in ("python",) + _JS_IDS:
            return None
        try:
            st = os.stat(p)
        except OSError:
            return None
        if st.st_size > MAX_FILE_BYTES or not os.path.isfile(p):
            return None
        key = (p, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._files.get_item(key)
        if hit is not None:
            return hit
        try:
            text = Path(p).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        symbols = extract_symbols(text, spec, p)
        with self._lock:
            self._files.put(key, symbols)
        return symbols

    def resolve(self, from_path: str, imp: Import, language: str) -> list[str]:
        """Workspace files an import may refer to (existing files only, nearest first)."""
        if language == "python":
            return self._resolve_python(from_path, imp)
        return self._resolve_js(from_path, imp.module)

    def _resolve_python(self, from_path: str, imp: Import) -> list[str]:
        module = imp.module
        level = len(module) - len(module.lstrip("."))
        parts = [p for p in module.lstrip(".").split(".") if p]
        here = Path(from_path).parent
        bases: list[Path] = []
        if level:
            base = here
            for _ in range(level - 1):
                base = base.parent
            bases.append(base)
        else:
            bases.extend([here, self.root, self.root / "src"])
            # the package that contains this file: walk up while __init__.py exists
            top = here
            while (top / "__init__.py").exists() and top.parent != top:
                top = top.parent
            bases.append(top)
        out: list[str] = []
        for base in bases:
            target = base.joinpath(*parts) if parts else base
            candidates = [target.with_suffix(".py") if parts else None, target / "__init__.py"]
            # ``from pkg import mod``: each name may be a submodule
            if imp.names:
                for name, _ in imp.names:
                    if name != "*":
                        candidates.append(target / f"{name}.py")
            for c in candidates:
                if c is not None and c.is_file() and _inside(c, self.root):
                    s = str(c)
                    if s not in out:
                        out.append(s)
        return out

    def _resolve_js(self, from_path: str, source: str) -> list[str]:
        if not source.startswith("."):
            return []  # a package from node_modules: not part of the workspace
        try:
            target = _resolve(Path(from_path).parent / source)
        except OSError:  # e.g. an import of a symlink loop
            return []
        candidates = [target] if target.suffix in JS_EXTENSIONS else []
        stem = target.with_suffix("") if target.suffix in (".js", ".mjs", ".cjs", ".jsx") else target
        candidates += [Path(str(stem) + ext) for ext in JS_EXTENSIONS]
        candidates += [target / f"index{ext}" for ext in JS_EXTENSIONS]
        return [str(c) for c in candidates if c.is_file() and _inside(c, self.root)][:1]

    # name index
    def start_indexing(self) -> None:
        with self._lock:
            if self._index_thread is not None:
                return
            self._index_thread = threading.Thread(
                target=self._build_index, name="copilot-ls-index", daemon=True
            )
            self._index_thread.start()

    def wait_indexed(self, timeout: float | None = None) -> bool:
        self.start_indexing()
        return self._index_done.wait(timeout)

    def _build_index(self) -> None:
        index: dict[str, list[str]] = {}
        count = 0
        try:
            for path in iter_source_files(self.root, self.max_files):
                try:
                    st = os.stat(path)
                    # not a regular file (a FIFO named x.py would block the read, and the index, forever)
                    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
                        continue
                    text = Path(path).read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                pattern = _NAME_PATTERNS["python" if path.endswith((".py", ".pyi")) else "js"]
                for m in pattern.finditer(text):
                    paths = index.setdefault(m.group(1), [])
                    if len(paths) < 16 and path not in paths:
                        paths.append(path)
                count += 1
                self.files_indexed = count
                if count % 50 == 0:
                    time.sleep(0.001)  # yield the GIL to the request path
        finally:
            self._index = index
            self._index_done.set()

    def paths_defining(self, name: str) -> list[str]:
        """Files whose top level defines ``name`` (from the name index; [] while it is being built)."""
        index = self._index
        if index is None:
            if self.index_enabled:
                self.start_indexing()
            return []
        return list(index.get(name, ()))


_JS_IDS = ("javascript", "typescript", "tsx")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def iter_source_files(root: Path, max_files: int) -> Iterable[str]:
    """Python / JS / TS files under ``root`` in a stable order, skipping vendored and build folders."""
    n = 0
    top = os.fspath(root).rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.count(os.sep) - top >= MAX_DEPTH:
            dirnames[:] = []  # os.walk recurses: a pathologically deep tree raised RecursionError (index lost)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".py", ".pyi", *JS_EXTENSIONS)):
                yield os.path.join(dirpath, name)
                n += 1
                if n >= max_files:
                    return


_WORKSPACES: _LRU = _LRU(4)
_WS_LOCK = threading.Lock()


def workspace_for(path: str | None) -> Workspace | None:
    """The shared Workspace of the project that contains ``path`` (None for unnamed buffers)."""
    if not path:
        return None
    root, marked = find_root(path)
    with _WS_LOCK:
        ws = _WORKSPACES.get_item(root)
        if ws is None:
            ws = Workspace(root, index=marked)
            _WORKSPACES.put(root, ws)
    return ws


def open_overlays(others: Sequence[Snapshot]) -> dict[str, Snapshot]:
    """Open documents by resolved file path (they override the disk)."""
    out: dict[str, Snapshot] = {}
    for s in others:
        if s.path:
            try:
                out[resolved(s.path)] = s
            except OSError:
                continue
    return out
