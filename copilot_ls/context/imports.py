"""Import statements of a file, per language family, from its tree-sitter tree (queries/<lang>/imports.scm).

Pure: a tree in, ``Import`` records out; no file system, no caches. Resolving an import to files is
``context.resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tree_sitter import QueryCursor

from copilot_ls.languages import LanguageSpec


@dataclass(frozen=True)
class Import:
    module: str  # "pkg.mod", ".mod" (relative, Python), "./lib.js" (JS)
    names: tuple[
        tuple[str, str], ...
    ]  # (imported name, local name); ("*", "*") = star; () = the module itself
    local: str | None = None  # local name of the module itself (``import x as y`` / ``import * as ns``)
    line: int = 0
    commonjs: bool = (
        False  # ``const x = require('./m')``: ``local`` is also m's ``module.exports`` (its default)
    )


# Top-level statements that may hold an import (JS: `const x = require('./m')` is a declaration).
IMPORT_TYPES = frozenset(
    {
        "import_statement",
        "import_from_statement",
        "future_import_statement",
        "lexical_declaration",
        "variable_declaration",
    }
)


def node_text(node) -> str:
    """A node's source text ("" for no node)."""
    return node.text.decode("utf-8", "replace") if node is not None else ""


def imports_of(tree, spec: LanguageSpec, roots=None) -> list[Import]:
    """The imports of a file (``roots``: only those under these nodes, e.g. the top-level statements)."""
    if spec.id == "python":
        return _python_imports(tree, spec, roots)
    return _js_imports(tree, spec, roots)


def _python_imports(tree, spec: LanguageSpec, roots=None) -> list[Import]:
    out: list[Import] = []
    query = spec.query("imports")
    if query is None:
        return out
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
                    mod = node_text(child.child_by_field_name("name"))
                    out.append(
                        Import(mod, (), local=node_text(child.child_by_field_name("alias")), line=line)
                    )
                else:
                    mod = node_text(child)
                    out.append(Import(mod, (), local=mod, line=line))
        else:  # import_from_statement
            mod = node_text(node.child_by_field_name("module_name"))
            names: list[tuple[str, str]] = []
            if any(c.type == "wildcard_import" for c in node.children):
                names.append(("*", "*"))
            for child in node.children_by_field_name("name"):
                if child.type == "aliased_import":
                    names.append(
                        (
                            node_text(child.child_by_field_name("name")),
                            node_text(child.child_by_field_name("alias")),
                        )
                    )
                else:
                    names.append((node_text(child), node_text(child)))
            out.append(Import(mod, tuple(names), line=line))
    return out


def _js_imports(tree, spec: LanguageSpec, roots=None) -> list[Import]:
    out: list[Import] = []
    query = spec.query("imports")
    if query is None:
        return out
    matches = [
        m
        for root in (roots if roots is not None else [tree.root_node])
        for m in QueryCursor(query).matches(root)
    ]
    for _, caps in matches:
        source = node_text(caps["source"][0]) if caps.get("source") else ""
        if "import" in caps:
            out.append(_es_import(caps["import"][0], source))
        elif "reexport" in caps:
            out.append(_reexport(caps["reexport"][0], source))
        elif "require" in caps:
            out.extend(_requires(caps["require"][0], source))
    out.sort(key=lambda i: i.line)
    return out


def _es_import(node, source: str) -> Import:
    """``import d, {a, b as c} from './m'`` / ``import * as ns from './m'``."""
    names: list[tuple[str, str]] = []
    local = None
    clause = next((c for c in node.children if c.type == "import_clause"), None)
    for c in clause.children if clause is not None else ():
        if c.type == "identifier":  # default import
            names.append(("default", node_text(c)))
        elif c.type == "namespace_import":
            ids = [x for x in c.children if x.type == "identifier"]
            local = node_text(ids[0]) if ids else None
        elif c.type == "named_imports":
            for spec_node in c.children:
                if spec_node.type != "import_specifier":
                    continue
                name = node_text(spec_node.child_by_field_name("name"))
                alias = spec_node.child_by_field_name("alias")
                names.append((name, node_text(alias) if alias is not None else name))
    return Import(source, tuple(names), local=local, line=node.start_point[0])


def _reexport(node, source: str) -> Import:
    """``export * from './m'``, ``export {a, default as b} from './m'``."""
    names = [("*", "*")] if any(c.type == "*" for c in node.children) else []
    clause = next((c for c in node.children if c.type == "export_clause"), None)
    for c in clause.children if clause is not None else ():
        if c.type != "export_specifier":
            continue
        name_node, alias = c.child_by_field_name("name"), c.child_by_field_name("alias")
        name = node_text(name_node) if name_node is not None else "default"
        names.append((name, node_text(alias) if alias is not None else name))
    return Import(source, tuple(names), line=node.start_point[0])


def _requires(node, source: str) -> list[Import]:
    """``const m = require('./m')`` (the module, CommonJS) and ``const {a, b: c} = require('./m')``."""
    out: list[Import] = []
    for decl in node.children:
        if decl.type != "variable_declarator":
            continue
        target = decl.child_by_field_name("name")
        if target is None:
            continue
        if target.type == "identifier":
            out.append(Import(source, (), local=node_text(target), line=node.start_point[0], commonjs=True))
        elif target.type == "object_pattern":
            names = []
            for c in target.children:
                if c.type == "shorthand_property_identifier_pattern":
                    names.append((node_text(c), node_text(c)))
                elif c.type == "pair_pattern":
                    k, v = c.child_by_field_name("key"), c.child_by_field_name("value")
                    names.append((node_text(k), node_text(v)))
            out.append(Import(source, tuple(names), line=node.start_point[0]))
    return out
