"""Definitions of a file, per language, from its tree-sitter tree (queries/<lang>/definitions.scm): names,
kinds, whole texts and the shorter forms (summary, signature) that tight budgets show.

Pure: text or a tree in, records out; no file system. ``current_file`` keeps its answer on the snapshot
(``Snapshot.memo``), so repeated requests at one document state parse nothing again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tree_sitter import QueryCursor

from copilot_ls.context.imports import IMPORT_TYPES, Import, imports_of, node_text
from copilot_ls.documents import MemoKey, Snapshot
from copilot_ls.languages import LanguageSpec, new_parser


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
    signature: str = ""  # header + the docstring's first line (+ fields and method signatures for classes)
    brief: str = ""  # classes: the signature with fewer members, for a tight budget ("" = the signature)


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
        for _, caps in QueryCursor(query).matches(tree.root_node):
            name_nodes = caps.get("name")
            if not name_nodes:
                continue
            # CommonJS `module.exports = {...}`: the definitions are inside the statement that must be top level
            anchor = caps["statement"][0] if caps.get("statement") else None
            if caps.get("alias"):  # `exports.g = helper`: g is helper
                if anchor is not None and _top_level(anchor):
                    aliases.append((node_text(name_nodes[0]), node_text(caps["alias"][0])))
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
    imports = imports_of(tree, spec)
    return FileSymbols(
        path=path,
        language=spec.id,
        definitions=tuple(defs),
        imports=tuple(imports),
        default_export=default_export,
        aliases=tuple(aliases),
    )


def _js_default_export(
    tree, spec: LanguageSpec, data: bytes, path: str
) -> tuple[str | None, Definition | None]:
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
            return node_text(name), None
        value = node.child_by_field_name("value")
        if value is not None and value.type == "identifier":
            return node_text(value), None
        if value is None:
            return None, None
        kind = (
            "function"
            if value.type in spec.function_types
            else "class"
            if value.type in spec.class_types
            else "variable"
        )
        return "default", make_definition(value, keyword, kind, spec, data, path)
    return None, None


def _commonjs_default_export(node, spec: LanguageSpec, data: bytes, path: str):
    """(name, definition) for a top-level ``module.exports = <identifier | function | class>``, else None."""
    expr = node.named_children[0] if node.named_child_count else None
    if expr is None or expr.type != "assignment_expression":
        return None
    left, value = expr.child_by_field_name("left"), expr.child_by_field_name("right")
    if (
        left is None
        or value is None
        or left.type != "member_expression"
        or node_text(left) != "module.exports"
    ):
        return None
    if value.type == "identifier":
        return node_text(value), None
    if value.type in spec.function_types:
        kind = "function"
    elif value.type in spec.class_types:
        kind = "class"
    else:  # an object (its members are found by the definitions query), require(...), a call: no definition
        return None
    name = value.child_by_field_name("name")
    if name is not None:
        return node_text(name), make_definition(node, name, kind, spec, data, path)
    return "default", make_definition(node, None, kind, spec, data, path, name="default")


def make_definition(
    node, name_node, kind: str, spec: LanguageSpec, data: bytes, path: str, *, name: str | None = None
) -> Definition:
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
        brief=summarize(node, data, spec, compact=True, members=CLASS_MEMBERS_BRIEF)
        if kind == "class"
        else "",
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


_CURRENT_FILE: MemoKey[CurrentFile] = MemoKey("current file")


def current_file(snap: Snapshot) -> CurrentFile:
    """Imports and top-level definitions of the edited document, by queries limited to the top level (the
    children of the root, or of a top-level ERROR when the file does not parse): no walk over the whole tree.
    Computed once per document state."""
    assert snap.language is not None and snap.tree is not None
    return snap.memo(_CURRENT_FILE, lambda: _read_current_file(snap))


def _read_current_file(snap: Snapshot) -> CurrentFile:
    spec = snap.language
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
    imports = imports_of(snap.tree, spec, [n for n in tops if n.type in IMPORT_TYPES])
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
    return CurrentFile(tuple(imports), nodes_by_name, spec, snap.encoded(), snap.path or snap.uri)


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


CLASS_MEMBERS = 24  # members (fields, then methods) a class's summary / signature lists
CLASS_MEMBERS_BRIEF = 8  # ... and its brief form, for a tight budget
FIELD_CHARS = 80  # a longer (or multi-line) field line is cut to its name and type


def summarize(
    node, data: bytes, spec: LanguageSpec, *, compact: bool = False, members: int = CLASS_MEMBERS
) -> str:
    """Header (decorators, signature) + docstring, and for classes what the class has: its fields and its
    methods' signatures with the bodies elided (at most ``members`` of them: fields and the constructor first).
    ``compact``: only the docstring's first line of text, and no ``_private`` methods."""
    inner = _definition_node(node)
    body = inner.child_by_field_name("body")
    if body is None:
        return data[node.start_byte : node.end_byte].decode("utf-8", "replace")
    header = data[node.start_byte : body.start_byte].decode("utf-8", "replace").rstrip()
    col = body.start_point[1]
    is_class = inner.type in spec.class_types
    if spec.indent_scoped:
        indent = " " * col if body.start_point[0] > inner.start_point[0] else "    "
        parts = [header]
        doc = _docstring_node(node, spec)
        if doc is not None:
            literal = data[doc.start_byte : doc.end_byte].decode("utf-8", "replace")
            shown = first_docstring_line(literal) if compact else trim_docstring(literal)
            if shown:
                parts.append(indent + shown)
        listed = _python_members(body, data, spec, indent, members, compact) if is_class else []
        parts.extend(indent + m for m in listed)
        if len(parts) == 1 or not (compact or listed):
            # compact: a docstring or members are a body already (a `...` line is what a small model copies
            # after a header)
            parts.append(indent + "...")
        return "\n".join(parts)
    parts = [header + " {"]
    if is_class:
        parts.extend("  " + m for m in _js_members(body, data, members, compact))
    else:
        parts.append("  // ...")
    parts.append("}")
    return "\n".join(parts)


def _one_line(text: str, cut: str) -> str:
    """``text`` when it is one short line, else ``cut`` (its name and type)."""
    text = text.strip()
    return text if "\n" not in text and len(text) <= FIELD_CHARS else cut


def _ranked(
    fields: list[str], ctor: list[str], methods: list[tuple[bool, str]], limit: int, public_only: bool
) -> list[str]:
    """At most ``limit`` members in source order within each group: fields, the constructor, then methods
    (public ones before ``_private`` ones when not all fit; none of those with ``public_only``: the code that
    imports a class calls its public methods, and a small model copies the last one listed)."""
    if public_only:
        methods = [(private, m) for private, m in methods if not private]
    out = (fields + ctor)[:limit]
    room = limit - len(out)
    if room > 0:
        public = [m for private, m in methods if not private]
        keep = set(public[:room])
        keep.update(m for private, m in methods if private and len(keep) < room and m not in keep)
        out.extend(m for _, m in methods if m in keep)
    return out


def _python_members(
    body, data: bytes, spec: LanguageSpec, indent: str, limit: int, public_only: bool
) -> list[str]:
    """A Python class body as lines (relative to the body's indentation): annotated / assigned class
    attributes (dataclass fields), ``def m(self, ...) -> T: ...`` for each method (decorators kept), the
    ``self.x = ...`` assignments of ``__init__`` under its header, nested classes' headers."""
    fields: list[str] = []
    ctor: list[str] = []
    methods: list[tuple[bool, str]] = []
    for child in body.named_children:
        fn = _definition_node(child)
        if child.type == "expression_statement" and child.named_child_count == 1:
            expr = child.named_children[0]
            if expr.type == "assignment":
                left, typ = expr.child_by_field_name("left"), expr.child_by_field_name("type")
                cut = node_text(left) + (f": {node_text(typ)}" if typ is not None else " = ...")
                fields.append(_one_line(node_text(child), cut))
            continue
        name = fn.child_by_field_name("name")
        fb = fn.child_by_field_name("body")
        if name is None or fb is None:
            continue
        # up to the `:` after the parameters / return type (a comment between it and the body is left out)
        last = (
            fn.child_by_field_name("return_type")
            or fn.child_by_field_name("parameters")
            or fn.child_by_field_name("superclasses")
            or name
        )
        sig = data[child.start_byte : last.end_byte].decode("utf-8", "replace").rstrip() + ":"
        if fn.type in spec.class_types:
            methods.append((node_text(name).startswith("_"), sig + " ..."))
        elif fn.type in spec.function_types:
            if node_text(name) in ("__init__", "__new__", "__post_init__"):
                assigned = _self_assignments(fb, "self", "attribute", "assignment")
                inner_indent = indent if fb.start_point[0] > fn.start_point[0] else "    "
                ctor.append(
                    sig
                    + ("\n" + "\n".join(indent + inner_indent + a for a in assigned) if assigned else " ...")
                )
            else:
                method_name = node_text(name)
                private = method_name.startswith("_") and not method_name.endswith("__")
                methods.append((private, sig + " ..."))
    return _ranked(fields, ctor, methods, limit, public_only)


def _self_assignments(block, this: str, member_type: str, assign_type: str, most: int = 12) -> list[str]:
    """The ``self.x = ...`` / ``this.x = ...`` statements directly in a constructor's body (cut to
    ``self.x = ...`` when long): the instance's fields."""
    out: list[str] = []
    for stmt in block.named_children:
        if stmt.type != "expression_statement" or not stmt.named_child_count:
            continue
        expr = stmt.named_children[0]
        if expr.type != assign_type:
            continue
        left = expr.child_by_field_name("left")
        obj = left.child_by_field_name("object") if left is not None and left.type == member_type else None
        if obj is None or node_text(obj) != this:
            continue
        typ = expr.child_by_field_name("type")
        cut = node_text(left) + (f": {node_text(typ)}" if typ is not None else "") + " = ..."
        out.append(_one_line(node_text(stmt), cut))
        if len(out) >= most:
            break
    return out


def _js_members(body, data: bytes, limit: int, public_only: bool) -> list[str]:
    """A JS/TS class or interface body as lines: field declarations (``x: number = 1;``), method signatures
    with ``{ ... }`` bodies (the constructor's ``this.x = ...`` assignments kept), an interface's members."""
    fields: list[str] = []
    ctor: list[str] = []
    methods: list[tuple[bool, str]] = []
    for child in body.named_children:
        if child.type == "method_definition":
            fb = child.child_by_field_name("body")
            name = child.child_by_field_name("name")
            if fb is None or name is None:
                continue
            sig = data[child.start_byte : fb.start_byte].decode("utf-8", "replace").strip()
            if node_text(name) == "constructor":
                assigned = _self_assignments(fb, "this", "member_expression", "assignment_expression")
                ctor.append(
                    sig
                    + " { "
                    + " ".join(a if a.endswith(";") else a + ";" for a in assigned)
                    + (" " if assigned else "")
                    + "... }"
                )
            else:
                methods.append((_js_private(child, name), sig + " { ... }"))
        elif child.type in ("field_definition", "public_field_definition"):
            name = child.child_by_field_name("property") or child.child_by_field_name("name")
            typ = next((c for c in child.named_children if c.type == "type_annotation"), None)
            cut = (node_text(name) if name is not None else "") + (node_text(typ) if typ is not None else "")
            if public_only and _js_private(child, name):
                continue
            fields.append(_one_line(node_text(child), cut).rstrip(";") + ";")
        elif child.type in _TS_MEMBER_SIGNATURES:  # an interface's members are its signature
            fields.append(node_text(child).strip().rstrip(";,") + ";")
    return _ranked(fields, ctor, methods, limit, public_only)


def _js_private(member, name) -> bool:
    """A ``#private`` / ``_private`` / TS ``private`` class member."""
    return (name is not None and node_text(name).startswith(("#", "_"))) or any(
        c.type == "accessibility_modifier" and node_text(c) == "private" for c in member.children
    )


_TS_MEMBER_SIGNATURES = frozenset(
    {
        "method_signature",
        "property_signature",
        "abstract_method_signature",
        "index_signature",
        "call_signature",
        "construct_signature",
    }
)


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
