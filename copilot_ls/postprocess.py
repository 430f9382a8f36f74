"""Post-processing (pure): raw model outputs -> clean, ranked, deduplicated suggestions with exact ranges.

Rules, applied to every candidate in this order (each is a small function, table-tested):

0. ``strip_non_code`` code files only, outside strings and comments: chat-template tokens (``<|im_end|>``,
                      ``[/INST]`` ...) end the text; markdown fences and chat prose ("Here is the code:") before
                      the code are dropped, and a closing fence ends it.
1. ``normalise``      CRLF -> LF; trailing whitespace off; indentation style (tabs/spaces) of the document.
2. ``first_line``     single-line mode keeps the first line only.
3. ``fix_indent``     the indentation the cursor's line already has is not inserted again.
4. ``scope_end``      stop at the end of the enclosing scope: a line dedented below the cursor's block
                      (indentation languages) or an unbalanced closer (brace languages; kept when the text
                      after the cursor lacks it).
5. ``repeats_below``  cut where the completion starts repeating the lines after the cursor (drop it whole when
                      all of it repeats).
6. ``repetitive``     drop a short pattern repeating; cut a line repeated over and over.
7. ``max_lines``      at most ``max_lines`` lines; a last line cut by the token limit, and trailing lines that
                      open a block (``while x:``) or continue (``a +``), are dropped (multi-line).
8. ``overlap``        text after the cursor on its line that the completion also wrote ("foo)" with ")"
                      following): trimmed, or the range is widened over it.
9. syntax check       the edited document is reparsed (incrementally); candidates that add ERROR / MISSING
                      nodes rank after those that do not. With one distinct suggestion there is nothing to
                      order and no reparse: the bracket balance of the edited line stands in (for confidence).
10. confidence        copilot_ls.confidence over the shown text's token log-probs, the syntax check, the static
                      checks (copilot_ls.static_checks) and agreement among candidates.
11. rank + dedupe     by (no new errors, confidence, else mean log-prob); identical edits kept once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from copilot_ls import confidence as conf
from copilot_ls import static_checks
from copilot_ls.backend import RawCandidate
from copilot_ls.documents import MemoKey, Snapshot
from copilot_ls.languages import LanguageSpec, new_parser


@dataclass(frozen=True)
class Suggestion:
    text: str  # insert text; replaces [start, end)
    start: tuple[int, int]  # (line, code-point col)
    end: tuple[int, int]
    mean_logprob: float
    confidence: float | None = None  # copilot_ls.confidence; None when the server sent no token log-probs
    issues: tuple[str, ...] = ()  # static-check findings ("undefined name 'foo'")
    sources: tuple[int, ...] = ()  # indexes of the raw candidates that show this text (duplicates merged)


OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
_STRING_START = re.compile(r"\"\"\"|'''|[\"'`]")
_REPEAT_WHOLE = re.compile(r"(.{1,24}?)\1{3,}", re.S)
_TRAILING_PUNCT = set(")]}\"'`;:,. ")


@dataclass(frozen=True)
class Cursor:
    """What the rules need to know about the cursor position (computed once per request)."""

    line_text: str  # the cursor's line, without its line ending
    col: int
    prefix: str  # line_text[:col]
    rest: str  # line_text[col:]
    below: tuple[str, ...]  # following lines of the document (a bounded number)
    above: tuple[str, ...]  # preceding lines, nearest last (a bounded number)
    language: LanguageSpec | None
    indent_unit: str  # "    ", "  " or "\t"
    crlf: bool
    in_text: bool = False  # the cursor is inside a string or a comment (markdown may be legitimate there)

    @property
    def prefix_is_blank(self) -> bool:
        return not self.prefix.strip()


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _width(indent: str, tab: int = 4) -> int:
    return sum(tab if c == "\t" else 1 for c in indent)


def detect_indent_unit(lines: Sequence[str]) -> str:
    """The document's indentation unit: "\\t" when tabs dominate, else the most common space step."""
    tabs = spaces = 0
    steps: dict[int, int] = {}
    prev = 0
    for line in lines[:2000]:
        body = line.lstrip(" \t")
        if not body or body.isspace():  # == not line.strip()
            continue
        n = len(line) - len(body)  # the indent: line[:n]
        if n and line[0] == "\t":
            tabs += 1
            continue  # w == prev: no step, prev unchanged
        if n:
            spaces += 1
        if 0 < n - prev <= 8:
            steps[n - prev] = steps.get(n - prev, 0) + 1
        prev = n
    if tabs > spaces:
        return "\t"
    if not steps:
        return "    "
    return " " * max(sorted(steps), key=lambda k: steps[k])


def make_cursor(snap: Snapshot, line: int, col: int, *, below_lines: int = 40) -> Cursor:
    lines = snap.lines()
    line = max(0, min(line, len(lines) - 1))
    text = lines[line]
    col = max(0, min(col, len(text)))
    return Cursor(
        line_text=text,
        col=col,
        prefix=text[:col],
        rest=text[col:],
        below=tuple(lines[line + 1 : line + 1 + below_lines]),
        above=tuple(lines[max(0, line - below_lines) : line]),
        language=snap.language,
        indent_unit=detect_indent_unit(lines[max(0, line - 200) : line + 50]),
        crlf=snap.has_crlf(),
        in_text=_in_string_or_comment(snap, line, col),
    )


def _in_string_or_comment(snap: Snapshot, line: int, col: int) -> bool:
    spec = snap.language
    if spec is None or snap.tree is None:
        return False
    off = snap.byte_offset(snap.offset(line, col))
    node = snap.tree.root_node.descendant_for_byte_range(max(0, off - 1), off)
    kinds = spec.string_types | spec.comment_types
    while node is not None:
        if node.type in kinds:
            return True
        node = node.parent
    return False


# --- rules -------------------------------------------------------------------------------------------------
# Chat-template and end-of-turn markers of common model families; never code in a code file's completion.
_TEMPLATE_TOKENS = re.compile(
    r"<\|(?:im_end|im_start|endoftext|eot_id|end_of_text|start_header_id|end_header_id|end|assistant|user|system)\|>"
    r"|</s>|\[/INST\]|\[INST\]|<end_of_turn>|<start_of_turn>|<\|fim_(?:prefix|suffix|middle|pad)\|>"
)
_FENCE = re.compile(r"^\s*(?:```|~~~)[\w+#.-]*\s*$")
# A line of chat prose: an English opener, then words, and nothing that reads as an assignment or a block.
_PROSE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|here(?:'s| is| are)|below (?:is|are)|the following|"
    r"this (?:is|code|function|will|completes|implementation|snippet)|i(?:'ve| have| will|'ll)|let me|"
    r"note:|explanation:)[\s,!:.]",
    re.I,
)
_CODE_MARKS = re.compile(r"\s=\s|:=|->|=>|;\s*$|[{}]\s*$")


def _is_prose(line: str) -> bool:
    return bool(_PROSE.match(line)) and not _CODE_MARKS.search(line)


def _cut_template_tokens(text: str) -> str:
    """Text up to the first chat-template token that is not inside a quoted string on its line."""
    for m in _TEMPLATE_TOKENS.finditer(text):
        line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        if line.count('"') % 2 == 0 and line.count("'") % 2 == 0 and line.count("`") % 2 == 0:
            return text[: m.start()]
    return text


_PATH_HEADER = re.compile(r"^\s*(?:#|//|--|;+|%)\s*Path: \S")  # the prompt's file header (context.render)


def strip_non_code(text: str, cur: Cursor) -> str:
    """What a chat or instruct model wraps around code is not code: template tokens end the text, leading
    fence and prose lines and echoes of the prompt's "# Path: file" header go (with blank lines between them),
    and a later fence ends the code."""
    if cur.language is None or cur.in_text:
        return text
    lines = _cut_template_tokens(text).split("\n")
    first = 0  # leading newlines (the model ending the cursor's line) stay
    while first < len(lines) - 1 and not lines[first].strip():
        first += 1
    k = first
    while k < len(lines):
        ln = lines[k]
        if (
            _FENCE.match(ln)
            or (_PATH_HEADER.match(ln) and (k > 0 or cur.prefix_is_blank))
            or (_is_prose(ln) and (k > 0 or cur.prefix_is_blank))
            or (k > first and not ln.strip())
        ):
            k += 1
        else:
            break
    if k > first:
        # after code on the cursor's line, what is kept starts on a new line
        head = lines[:first] if first else ([] if cur.prefix_is_blank else [""])
        lines = head + lines[k:]
    for i, ln in enumerate(lines):
        if i > 0 and _FENCE.match(ln):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def normalise(text: str, cur: Cursor) -> str:
    """LF line endings, no trailing whitespace at the end or on lines, the document's indentation style."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.rstrip() for ln in text.split("\n")]
    if len(lines) > 1 and cur.indent_unit == "\t":
        lines[1:] = [_spaces_to_tabs(ln) for ln in lines[1:]]
    elif len(lines) > 1 and cur.indent_unit.startswith(" "):
        lines[1:] = [ln.replace("\t", cur.indent_unit) if ln.startswith("\t") else ln for ln in lines[1:]]
    # trailing blank lines carry nothing
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _spaces_to_tabs(line: str, width: int = 4) -> str:
    ind = _indent_of(line)
    if "\t" in ind or not ind:
        return line
    n = len(ind) // width
    return "\t" * n + " " * (len(ind) - n * width) + line[len(ind) :]


def first_line(text: str, cur: Cursor) -> str:
    """Single-line mode: the first line only. On a blank line the first non-blank line (the model may start
    with the newline that ends the empty line it is on); elsewhere a leading newline gives nothing."""
    if not cur.line_text.strip():
        for ln in text.split("\n"):
            if ln.strip():
                return ln
        return ""
    return text.split("\n", 1)[0]


def fix_indent(text: str, cur: Cursor) -> str:
    """The cursor stands after indentation only: the context builder ends the prompt at the line start (a prompt
    ending in spaces is unnatural for BPE models), so the model writes the line with its full indentation.
    Drop the part the line already has; a shorter or different indentation is dropped whole (an insertion
    cannot dedent)."""
    if not cur.prefix or not cur.prefix_is_blank or text[:1] not in (" ", "\t"):
        return text
    head, sep, tail = text.partition("\n")
    lead = head[: len(head) - len(head.lstrip(" \t"))]
    if lead.startswith(cur.prefix):
        head = head[len(cur.prefix) :]
    else:
        head = head[len(lead) :]
    return head + sep + tail


def expected_indent(cur: Cursor) -> int | None:
    """The indentation width a new statement on the cursor's line should have: that of the previous non-blank
    line, one unit more when it opens a block; None when there is no previous line."""
    prev = next((ln for ln in reversed(cur.above) if ln.strip()), None)
    if prev is None:
        return None
    width = _width(_indent_of(prev))
    opener = cur.language.block_open if cur.language else ""
    stripped = prev.rstrip()
    if (opener and stripped.endswith(opener)) or stripped.endswith(("{", "(", "[")):
        width += _width(cur.indent_unit)
    return width


def scope_end(text: str, cur: Cursor) -> str:
    """Cut where the completion leaves the cursor's scope."""
    lang = cur.language
    if lang is None or lang.indent_scoped:
        text = _dedent_end(text, cur)
    return _closer_end(text, cur)


def _dedent_end(text: str, cur: Cursor) -> str:
    """Indentation scopes: the first code line of the completion sets the block's indentation; a later line
    indented less ends the block (not more or equal when the first line opens a block, e.g. ``def f():``)."""
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    first_full = cur.prefix + lines[0]
    if first_full.strip():
        base = _width(_indent_of(first_full))
        # the cursor ends a block header ("def f():") and the completion starts the body on the next line
        opens = not lines[0].strip() and first_full.rstrip().endswith((":", "{"))
        start = 1
    else:  # the completion starts on a later line: its first non-blank line sets the block
        k = next((i for i, ln in enumerate(lines) if ln.strip()), None)
        if k is None:
            return text
        base, opens, start = _width(_indent_of(lines[k])), False, k + 1
    for i in range(start, len(lines)):
        ln = lines[i]
        if not ln.strip():
            continue
        w = _width(_indent_of(ln))
        if w < base or (opens and w <= base):
            return "\n".join(lines[:i]).rstrip()
    return text


def _scan_brackets(text: str, comment: str | None) -> list[tuple[int, str]]:
    """(index, char) of brackets outside strings and line comments (a small lexer, good enough here)."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if comment and text.startswith(comment, i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        m = _STRING_START.match(text, i)
        if m:
            q = m.group(0)
            j = i + len(q)
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(q, j):
                    j += len(q)
                    break
                if text[j] == "\n" and len(q) == 1 and q != "`":
                    break
                j += 1
            i = j
            continue
        if c in OPENERS or c in CLOSERS:
            out.append((i, c))
        i += 1
    return out


def _closer_end(text: str, cur: Cursor) -> str:
    """Stop at the first closer that the completion did not open itself (it closes the enclosing scope).
    When the text after the cursor already has that closer, cut before it; otherwise keep it (and the rest
    of its line) so the scope gets closed once."""
    comment = cur.language.comment if cur.language else None
    stack: list[str] = []
    for i, c in _scan_brackets(text, comment):
        if c in OPENERS:
            stack.append(c)
            continue
        if stack and stack[-1] == CLOSERS[c]:
            stack.pop()
            continue
        if "\n" not in text[:i]:
            return text  # a closer on the cursor's line: ``overlap`` decides (the model may rewrite the line)
        if stack:  # mismatched closer: the model is confused; cut before it
            return text[:i].rstrip()
        following = (cur.rest + "\n" + "\n".join(cur.below)).lstrip()
        if following.startswith(c):
            return text[:i].rstrip()
        j = text.find("\n", i)
        return text if j < 0 else text[:j].rstrip()
    return text


def _nonblank(lines: Sequence[str]) -> list[str]:
    return [ln.strip() for ln in lines if ln.strip()]


def repeats_below(text: str, cur: Cursor) -> str:
    """Cut the completion where it starts repeating the following lines of the document; "" when all of it
    does. A line "repeats" when it equals (stripped) the next non-blank line(s) below the cursor."""
    below = _nonblank(cur.below)
    if not below:
        return text
    lines = text.split("\n")
    full = [cur.prefix + lines[0], *lines[1:]]
    for j, ln in enumerate(full):
        s = ln.strip()
        if not s:
            continue
        if s == below[0]:
            if j and _depth("\n".join(lines[:j]), cur) > 0:
                continue  # this line closes something the completion itself opened
            rest = _nonblank(full[j:])
            k = min(len(rest), len(below))
            if rest[:k] == below[:k]:
                if j == 0:
                    return "" if cur.prefix_is_blank or not lines[0].strip() else text
                return "\n".join(lines[:j]).rstrip()
    return text


def _depth(text: str, cur: Cursor) -> int:
    depth = 0
    for _, c in _scan_brackets(text, cur.language.comment if cur.language else None):
        depth += 1 if c in OPENERS else -1
    return depth


def repetitive(text: str, cur: Cursor) -> str:
    """ "" for a short pattern repeating (whole output); a line repeated 3+ times in a row is kept once."""
    body = text.strip()
    if not body:
        return ""
    if len(body) >= 8 and _REPEAT_WHOLE.fullmatch(body):
        return ""
    lines = text.split("\n")
    full = [cur.prefix + lines[0], *lines[1:]]
    for i in range(2, len(full)):
        if full[i].strip() and full[i] == full[i - 1] == full[i - 2]:
            # the same line three times in a row: keep the first copy
            start = i - 2
            while start > 0 and full[start - 1] == full[i]:
                start -= 1
            return "\n".join(lines[: start + 1]).rstrip()
    # a line that ends in a long run of one short unit ("foo(foo(foo(foo(..."): cut the run
    m = re.search(r"(.{2,8}?)\1{5,}$", body)
    if m and m.start() > 0:
        return text[: text.rfind(m.group(0))].rstrip() if m.group(0) in text else text
    if m:
        return ""
    return text


def limit_lines(text: str, max_lines: int) -> str:
    lines = text.split("\n")
    if max_lines > 0 and len(lines) > max_lines:
        return "\n".join(lines[:max_lines]).rstrip()
    return text


def overlap(text: str, cur: Cursor) -> tuple[str, int]:
    """Handle the text after the cursor on its line. Returns (text, end column).

    - nothing but whitespace after the cursor: the range covers it (no trailing spaces left behind);
    - the completion's first line ends with a prefix of that text ("foo)" before ")"): trimmed;
    - only closers / punctuation after the cursor and the completion writes them again in order: the range
      is widened to the end of the line, so the line reads as the model wrote it.
    """
    end = cur.col
    rest = cur.rest
    if not rest:
        return text, end
    if not rest.strip():
        return text, len(cur.line_text)
    head, sep, tail = text.partition("\n")
    for k in range(min(len(rest), len(head)), 0, -1):  # head can only end with a prefix no longer than it
        if head.endswith(rest[:k]) and rest[:k].strip():
            head = head[: len(head) - k]
            if not sep and k < len(rest):  # remove overlap but keep the remaining text after the cursor
                return head, end
            return head + sep + tail, end
    core = rest.strip()
    if core and set(core) <= _TRAILING_PUNCT and _is_subsequence(core.replace(" ", ""), head):
        return head + sep + tail, len(cur.line_text)
    return text, end


def _is_subsequence(needle: str, hay: str) -> bool:
    it = iter(hay)
    return all(ch in it for ch in needle)


# --- syntax check -----------------------------------------------------------------------------------------
_ERRORS: MemoKey[int] = MemoKey("ERROR / MISSING nodes")


def _count_errors(node) -> int:
    if not node.has_error and not node.is_missing:
        return 0
    n = 1 if (node.is_error or node.is_missing) else 0
    for child in node.children:
        n += _count_errors(child)
    return n


class _SyntaxChecker:
    """Counts ERROR / MISSING nodes after inserting a candidate, by an incremental reparse of the snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.ok = snap.language is not None and snap.tree is not None
        if self.ok:
            self.parser = new_parser(snap.language)
            self.data = snap.encoded()
            # once per document state, not per request / candidate
            self.before = snap.memo(_ERRORS, lambda: _count_errors(snap.tree.root_node))

    def new_errors(self, text: str, start: tuple[int, int], end: tuple[int, int]) -> int:
        if not self.ok:
            return 0
        snap = self.snap
        a = snap.offset(*start)
        b = snap.offset(*end)
        ab, bb = snap.byte_offset(a), snap.byte_offset(b)
        ins = text.encode("utf-8", "surrogatepass")
        data = self.data[:ab] + ins + self.data[bb:]
        tree = snap.tree.copy()
        sp = _point(self.data, ab)
        nl = ins.count(b"\n")
        new_end = (sp[0] + nl, len(ins) - ins.rfind(b"\n") - 1) if nl else (sp[0], sp[1] + len(ins))
        tree.edit(ab, bb, ab + len(ins), sp, _point(self.data, bb), new_end)
        after = _count_errors(self.parser.parse(data, tree).root_node)
        return max(0, after - self.before)


def _point(data: bytes, off: int) -> tuple[int, int]:
    return data.count(b"\n", 0, off), off - (data.rfind(b"\n", 0, off) + 1)


# --- the pipeline -------------------------------------------------------------------------------------------
_DANGLING = (":", "{", "(", "[", ",", "\\", "=", " +", " -", " *", " /", " and", " or", " &&", " ||")


def complete_lines(text: str, cur: Cursor, *, truncated: bool) -> str:
    """A multi-line answer cut by the token limit loses its last (partial) line; then, and after ``max_lines``,
    trailing lines that open a block or continue onto the next line are dropped (``while x:`` with no body
    would be an IndentationError, ``{`` an unclosed block)."""
    lines = text.split("\n")
    if truncated and len(lines) > 1:
        lines.pop()
    while len(lines) > 1 and (not lines[-1].strip() or lines[-1].rstrip().endswith(_DANGLING)):
        lines.pop()
    return "\n".join(lines)


def clean(
    raw: str, cur: Cursor, *, multiline: bool, max_lines: int, truncated: bool = False
) -> tuple[str, int]:
    """One candidate through rules 1-8: (insert text, end column on the cursor line); "" = dropped.
    ``truncated``: the backend stopped at the token limit (finish_reason "length") mid-line."""
    text = normalise(strip_non_code(raw, cur), cur)
    if not multiline:
        text = first_line(text, cur)
    else:
        text = complete_lines(text, cur, truncated=truncated)
    text = fix_indent(text, cur)
    text = scope_end(text, cur)
    text = repeats_below(text, cur)
    text = repetitive(text, cur)
    text = limit_lines(text, max_lines if multiline else 1)
    if multiline:
        text = complete_lines(text, cur, truncated=False)
    if not text.strip():
        return "", cur.col
    text, end_col = overlap(text, cur)
    if not text.strip():
        return "", cur.col
    return text, end_col


def _bracket_change(text: str, cur: Cursor, end_col: int) -> int:
    """1 when inserting ``text`` changes the bracket balance of the cursor's line (a cheap stand-in for the
    reparse where there is only one suggestion), else 0."""
    if cur.language is None:
        return 0
    head, tail = cur.prefix[-400:], cur.line_text[end_col : end_col + 400]  # bounded: lines can be megabytes
    before = _depth(head + cur.line_text[cur.col : end_col] + tail, cur)
    return int(_depth(head + text + tail, cur) != before)


# (index among the backend's candidates, the candidate, its cleaned text, the end column it replaces up to)
_Cleaned = tuple[int, RawCandidate, str, int]


def postprocess(
    candidates: Sequence[RawCandidate],
    snap: Snapshot,
    line: int,
    col: int,
    *,
    multiline: bool,
    max_lines: int = 10,
    known: Callable[[str], bool] | None = None,
) -> list[Suggestion]:
    """Cleaned, deduplicated suggestions, best first: no new syntax errors before new ones, then by confidence
    (by mean log-prob when a candidate has none); ties keep the backend's order. ``known``: whether the
    workspace defines a name (for the undefined-name check)."""
    if not candidates:
        return []
    cur = make_cursor(snap, line, col)
    line = max(0, min(line, len(snap.lines()) - 1))
    cleaned: list[_Cleaned] = []
    for i, cand in enumerate(candidates):
        truncated = cand.finish_reason == "length" and not cand.text.rstrip(" \t").endswith("\n")
        text, end_col = clean(cand.text, cur, multiline=multiline, max_lines=max_lines, truncated=truncated)
        if text:
            cleaned.append((i, cand, text, end_col))
    errors_of = _new_syntax_errors(cleaned, snap, line, cur)
    agree = conf.agreement([text for _, _, text, _ in cleaned])
    issues_of: dict[str, tuple[str, ...]] = {}
    ranked: list[tuple[int, float, int, Suggestion]] = []
    for k, (i, cand, text, end_col) in enumerate(cleaned):
        out_text = text.replace("\n", "\r\n") if cur.crlf else text
        errors = errors_of.get((text, end_col))
        if errors is None:
            errors = _bracket_change(text, cur, end_col)
        if text not in issues_of:
            issues_of[text] = tuple(static_checks.issues(snap, line, cur.prefix, text, known))
        found = issues_of[text]
        c = conf.confidence(cand, text, syntax_errors=errors, static_issues=len(found), agreement=agree[k])
        sug = Suggestion(out_text, (line, cur.col), (line, end_col), cand.mean_logprob, c, found)
        flag = 1 if errors_of.get((text, end_col)) else 0
        ranked.append((flag, -(c if c is not None else cand.mean_logprob), i, sug))
    return _best_first(ranked)


def _new_syntax_errors(
    cleaned: list[_Cleaned], snap: Snapshot, line: int, cur: Cursor
) -> dict[tuple[str, int], int]:
    """(text, end column) -> the syntax errors inserting it adds, by reparsing the document. The check only
    orders distinct suggestions: with fewer than two distinct ones it cannot change the order, so it is skipped
    (the result is empty)."""
    errors_of: dict[tuple[str, int], int] = {}
    if len({(text, end_col) for _, _, text, end_col in cleaned}) > 1:
        checker = _SyntaxChecker(snap)
        for _, _, text, end_col in cleaned:
            key = (text, end_col)
            if key not in errors_of:
                errors_of[key] = checker.new_errors(text, (line, cur.col), (line, end_col))
    return errors_of


def _best_first(ranked: list[tuple[int, float, int, Suggestion]]) -> list[Suggestion]:
    """Sorted by (new syntax errors, -confidence, backend order), each (text, end) once. With mixed or no
    confidences, the model's own ranking (mean log-prob) replaces the confidence."""
    if any(r[3].confidence is None for r in ranked):
        ranked = [(f, -r.mean_logprob, i, r) for f, _, i, r in ranked]
    ranked.sort(key=lambda r: r[:3])
    merged: dict[tuple[str, tuple[int, int]], tuple[Suggestion, list[int]]] = {}
    for _, _, i, sug in ranked:  # the best-ranked copy of a text stands for all its copies
        merged.setdefault((sug.text, sug.end), (sug, []))[1].append(i)
    return [replace(sug, sources=tuple(idx)) for sug, idx in merged.values()]
