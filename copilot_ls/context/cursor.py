"""What the syntax tree says about the cursor: the node it is in, whether the completion may span lines, where
a completion stops, and where the enclosing function starts. Pure: a snapshot in, answers out.
"""

from __future__ import annotations

from copilot_ls.context.fim import FimTemplate
from copilot_ls.documents import Snapshot
from copilot_ls.languages import MULTILINE_STOPS, LanguageSpec


def node_at_cursor(snap: Snapshot, line: int, col: int):
    """(node, min_col): the innermost node around the cursor. On a blank (or whitespace-only) line of an
    indentation language the cursor belongs to the code above it, but only to definitions that start left of
    the cursor's column (``min_col``; None when it does not apply)."""
    off = snap.offset(line, col)
    spec = snap.language
    lines = snap.lines()
    line_text = lines[min(line, len(lines) - 1)] if lines else ""
    p = _prev_code(snap.text, off)
    if p < 0:
        return snap.tree.root_node, None
    blank = not line_text[:col].strip()
    if spec is not None and not spec.indent_scoped and snap.text[p] == "}":
        bo = snap.byte_offset(off)  # after a closed block: the node at the cursor itself
        return snap.tree.root_node.descendant_for_byte_range(max(0, bo - 1), bo), None
    bp = snap.byte_offset(p)
    node = snap.tree.root_node.descendant_for_byte_range(bp, bp + 1)
    return node, (col if blank and spec is not None and spec.indent_scoped else None)


def enclosing_function_start(snap: Snapshot, line: int, col: int) -> int | None:
    """Offset of the first line of the function around the cursor (None outside one, or without a tree)."""
    if snap.language is None or snap.tree is None:
        return None
    node, min_col = node_at_cursor(snap, line, col)
    spec = snap.language
    while node is not None:
        if node.type in spec.function_types and (min_col is None or node.start_point[1] < min_col):
            return snap.offset(node.start_point[0], 0)
        node = node.parent
    return None


# --- multi-line or not ---------------------------------------------------------------------------------------
def _prev_code(text: str, offset: int) -> int:
    """Offset of the last non-whitespace character before ``offset`` (-1 if none)."""
    i = offset - 1
    while i >= 0 and text[i] in " \t\r\n":
        i -= 1
    return i


def _line_indent_width(line: str) -> int:
    ind = line[: len(line) - len(line.lstrip(" \t"))]
    return sum(4 if c == "\t" else 1 for c in ind)


def is_multiline(snap: Snapshot, line: int, col: int) -> bool:
    """Multi-line when the cursor starts an empty block / body: a blank line (or the end of a line) right after
    a block opener (``:`` / ``{``) whose block has nothing after the cursor, or a blank line after a body that
    holds only a docstring / comments. Otherwise single-line."""
    lines = snap.lines()
    if not lines:
        return True
    line = max(0, min(line, len(lines) - 1))
    cur = lines[line]
    col = max(0, min(col, len(cur)))
    if cur[col:].strip():  # text after the cursor on its line: finish this line only
        return False
    text = snap.text
    off = snap.offset(line, col)
    before_line_blank = not cur[:col].strip()
    spec = snap.language
    p = _prev_code(text, off)
    if p < 0:
        return True  # empty document (or only whitespace before the cursor)
    opener_char = text[p]
    opens = opener_char == "{" or (opener_char == ":" and (spec is None or spec.indent_scoped))
    if spec is not None and snap.tree is not None and opens:
        # Confirm with the tree that this is a real block opener, not a ":" in a dict / slice / type hint.
        bp = snap.byte_offset(p)
        node = snap.tree.root_node.descendant_for_byte_range(bp, bp + 1)
        opens = _opens_block(node, spec)
    if opens:
        return _block_empty_after(lines, line, opener_line_indent=_opener_indent(snap, p), spec=spec)
    if not before_line_blank or spec is None or snap.tree is None:
        return False
    body_indent = _docstring_body_indent(snap, off, spec)
    return body_indent is not None and _block_empty_after(
        lines, line, opener_line_indent=body_indent - 1, spec=spec
    )


def _opens_block(node, spec: LanguageSpec) -> bool:
    if node is None:
        return False
    parent = node.parent
    if node.type == "{":
        return parent is None or parent.type in spec.block_types or parent.type == "ERROR" or parent.is_error
    # ":" (Python): a compound statement's colon (followed by its block), or, in an ERROR, the colon of a line
    # that starts with a keyword ("def", "if", ...); not a colon of a dict, slice, lambda or annotation.
    if parent is None:
        return True
    sibling = node.next_sibling
    if sibling is not None and sibling.type in spec.block_types:
        return True
    if parent.type.endswith(
        ("_statement", "_clause", "_definition")
    ):  # e.g. an empty body at the end of file
        return True
    if parent.type == "ERROR" or parent.is_error:
        first = parent.children[0] if parent.children else None
        return first is not None and not first.is_named and first.type.isalpha()
    return False


def _opener_indent(snap: Snapshot, p: int) -> int:
    line, _ = snap.position(p)
    return _line_indent_width(snap.lines()[line])


def _block_empty_after(
    lines: list[str], line: int, *, opener_line_indent: int, spec: LanguageSpec | None
) -> bool:
    """Nothing of the block follows the cursor: the next non-blank line closes it (a closer for brace
    languages, a dedent to the opener's level or below for indentation languages) or the file ends."""
    for nxt in lines[line + 1 :]:
        s = nxt.strip()
        if not s:
            continue
        if spec is None or not spec.indent_scoped:
            return s[0] in "})]"
        return _line_indent_width(nxt) <= opener_line_indent
    return True


def _docstring_body_indent(snap: Snapshot, off: int, spec: LanguageSpec) -> int | None:
    """When the cursor follows a function/class header whose body so far is only a docstring or comments:
    the indentation width of that body; else None."""
    if not spec.indent_scoped:
        return None
    p = _prev_code(snap.text, off)
    bp = snap.byte_offset(p)
    node = snap.tree.root_node.descendant_for_byte_range(bp, bp + 1)
    while node is not None and node.type not in spec.block_types:
        node = node.parent
    if node is None or node.parent is None:
        return None
    if node.parent.type not in spec.function_types | spec.class_types:
        return None
    for child in node.named_children:
        if child.start_byte >= bp + 1:
            break
        if child.type in spec.comment_types:
            continue
        if child.type == "expression_statement" and child.named_child_count == 1:
            if child.named_children[0].type in spec.string_types:
                continue
        return None
    body_line, _ = snap.position(snap.char_offset(node.start_byte))
    return _line_indent_width(snap.lines()[body_line])


def stop_strings(
    spec: LanguageSpec | None, multiline: bool, fim: FimTemplate | None, *, blank_line: bool = False
) -> list[str]:
    """Multi-line: the language's new-top-level-statement markers. Single-line: the line break, except on a
    blank line, where a model often starts with a newline (the line it is "on" is empty): there a blank line
    stops it and post-processing keeps the first non-blank line."""
    if multiline:
        stops = list(MULTILINE_STOPS.get(spec.id, ()) if spec else ())
    else:
        stops = ["\n\n"] if blank_line else ["\n"]
    if multiline:
        stops.append("\n\n\n\n")
    if fim is not None:
        stops.extend(fim.stops)
    return list(dict.fromkeys(stops))
