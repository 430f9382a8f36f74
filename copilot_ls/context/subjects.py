"""Test detection: whether the cursor is inside a test, and what that test probably tests (by the test's name,
``describe``/``it``/``test`` descriptions, the test file's name), so the implementation can be shown.
Pure: names and paths out; finding the definitions is ``context.resolve``.
"""

from __future__ import annotations

import re
from pathlib import Path

from copilot_ls.context.cursor import node_at_cursor
from copilot_ls.documents import Snapshot
from copilot_ls.languages import LanguageSpec

_IDENT = re.compile(r"[A-Za-z_$][\w$]*")


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
        if (
            c.type == "identifier"
            and kids[i + 1].type == "("
            and kids[i + 2].type in ("string", "template_string")
            and c.text.decode("utf-8", "replace") in spec.test_calls
        ):
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
