"""The context builder (pure): (snapshot, cursor, other documents, budget, FIM template) -> Prompt.

The prompt is, in order: a header comment with the file's path and language, snippets from other files (see
``context_snippets``), then the window of text before the cursor; with a FIM template also the window after it.
Everything is measured in tokens of the target model (``count_tokens``; a conservative character estimate when
it is None) and the whole prompt never exceeds ``budget.max_prompt_tokens``. Same input, same prompt.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from copilot_ls.context_snippets import Snippet, collect, node_at_cursor
from copilot_ls.context_workspace import Workspace, _fs_cached, find_root, resolved, workspace_for
from copilot_ls.documents import Snapshot
from copilot_ls.fim import FAMILIES, FimTemplate, template_for
from copilot_ls.languages import LanguageSpec

__all__ = [
    "DEFAULT_SNIPPET_STYLE",
    "KEEP_IN_PREFIX",
    "SNIPPET_STYLES",
    "FimTemplate",
    "Prompt",
    "PromptBudget",
    "SnippetSource",
    "build_prompt",
    "estimate_tokens",
    "is_multiline",
    "stop_strings",
]

CountTokens = Callable[[str], int]
CHARS_PER_TOKEN_ESTIMATE = 3.0  # code BPE averages ~3.5-4 chars/token; 3 errs on the safe (smaller) side
SUFFIX_LINES_WITHOUT_FIM = 20  # raw suffix kept for post-processing when the prompt is prefix-only


@dataclass(frozen=True)
class PromptBudget:
    max_prompt_tokens: int = 1536
    suffix_fraction: float = 0.25
    max_tokens_out: int = 128
    snippet_fraction: float = 0.5  # at most this share of what is left after the suffix goes to snippets
    # What snippets may never push out of the prefix window: "none"; "function" = the lines of the function
    # around the cursor, from its header on (a function longer than the window leaves no room for snippets);
    # "file" = anything (snippets only fill what the prefix leaves; the default: with the default model any
    # displacement cost edit similarity, docs/quality.md).
    keep_in_prefix: str = "file"


KEEP_IN_PREFIX = ("none", "function", "file")


@dataclass(frozen=True)
class SnippetSource:
    """Where one part of the prompt came from (for ``--explain``)."""

    kind: str  # "header" | "prefix" | "suffix" | "definition" | "under-test" | "similar" | "scope"
    path: str | None  # file the text came from (None: the current document's URI was not a file)
    start_line: int  # 0-based, inclusive
    end_line: int  # 0-based, inclusive
    tokens: int
    why: str = ""


@dataclass(frozen=True)
class Prompt:
    prompt: str  # sent as `prompt` to /v1/completions (already FIM-formatted when the template has FIM)
    prefix: str  # raw text window before the cursor (the prompt leaves out the indentation right before it)
    suffix: str  # raw text window after the cursor
    multiline: bool
    stop: list[str]
    sources: list[SnippetSource] = field(default_factory=list)
    # The FIM prompt's prefix part before FIM formatting (snippets + header + prefix window), for servers that
    # take `suffix` separately and insert the FIM tokens themselves (ours: they are never parsed from text);
    # "" for prefix-only prompts (then `prompt` is the whole text).
    fim_body: str = ""
    # Control-token strings (the model's special tokens, the FIM template's) that occurred in the code and were
    # guarded there (see `guard`); `unguard` restores them in what the model writes.
    guarded: tuple[str, ...] = ()


GUARD = "\u200b"  # zero-width space, put after the first character of a control-token string found in code


def guard(text: str, specials: Sequence[str]) -> str:
    """``text`` with every occurrence of a control-token string broken by a zero-width space, so that the
    server's tokenizer reads it as text: a file that mentions ``<|endoftext|>`` or ``<|fim_suffix|>`` (tokenizer
    code, LLM tooling) must not end the document or reshape the FIM prompt for the model."""
    for s in specials:
        if s in text:
            text = text.replace(s, s[0] + GUARD + s[1:])
    return text


def unguard(text: str, specials: Sequence[str]) -> str:
    """`guard` undone (the model may copy a guarded string from the prompt)."""
    for s in specials:
        text = text.replace(s[0] + GUARD + s[1:], s)
    return text


def _lf(text: str) -> str:
    """CRLF line breaks as LF: the prompt is sent with LF only (the stop strings are LF-based: a model shown
    CRLF writes CRLF, which a blank-line stop ``\n\n`` never matches; post-processing gives the answer the
    document's CRLF back)."""
    return text.replace("\r\n", "\n") if "\r" in text else text


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


# --- windows -----------------------------------------------------------------------------------------------
def fit_tail(text: str, budget: int, count: CountTokens) -> str:
    """The longest tail of ``text`` within ``budget`` tokens, cut at a line start when it has to be cut
    (the cursor's own partial line is cut by characters only if it alone is over budget)."""
    if budget <= 0 or not text:
        return ""
    cand = text[-max(1, budget * 8) :]
    if len(cand) < len(text) and "\n" in cand:  # else the cursor's line alone is longer: cut by characters
        cand = _from_line_start(cand)
    for _ in range(12):
        n = count(cand)
        if n <= budget:
            return cand
        keep = int(len(cand) * budget / n * 0.95) - 1
        if keep <= 0:
            return ""
        shorter = _from_line_start(cand[-keep:])
        cand = shorter if shorter else cand[-keep:]
    while cand and count(cand) > budget:  # pathological tokenizers: shrink linearly
        cand = cand[len(cand) // 8 + 1 :]
    return cand


def fit_head(text: str, budget: int, count: CountTokens) -> str:
    """The longest head of ``text`` within ``budget`` tokens, cut at a line end when it has to be cut."""
    if budget <= 0 or not text:
        return ""
    cand = text[: max(1, budget * 8)]
    if len(cand) < len(text) and "\n" in cand:  # else the cursor's line alone is longer: cut by characters
        cand = _to_line_end(cand)
    for _ in range(12):
        n = count(cand)
        if n <= budget:
            return cand
        keep = int(len(cand) * budget / n * 0.95) - 1
        if keep <= 0:
            return ""
        shorter = _to_line_end(cand[:keep])
        cand = shorter if shorter else cand[:keep]
    while cand and count(cand) > budget:
        cand = cand[: len(cand) * 7 // 8]
    return cand


def _from_line_start(s: str) -> str:
    i = s.find("\n")
    return s[i + 1 :] if i >= 0 else ""


def _to_line_end(s: str) -> str:
    i = s.rfind("\n")
    return s[: i + 1] if i >= 0 else ""


# --- syntax-derived decisions ------------------------------------------------------------------------------
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


# --- stop strings -------------------------------------------------------------------------------------------
# Multi-line completions end where a new top-level statement starts (the Codex paper's stop sequences, per
# language); single-line completions end at the line break.
MULTILINE_STOPS: dict[str, tuple[str, ...]] = {
    "python": ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n@"),
    "javascript": ("\nfunction ", "\nclass ", "\nexport ", "\nimport ", "\ndescribe(", "\ntest(", "\nit("),
    "typescript": (
        "\nfunction ",
        "\nclass ",
        "\nexport ",
        "\nimport ",
        "\ninterface ",
        "\ndescribe(",
        "\ntest(",
    ),
    "tsx": ("\nfunction ", "\nclass ", "\nexport ", "\nimport ", "\ninterface "),
    "go": ("\nfunc ", "\ntype ", "\nvar ", "\nconst ", "\nimport "),
    "rust": ("\nfn ", "\npub fn ", "\nimpl ", "\nstruct ", "\n#[", "\nmod "),
    "java": ("\n}\n\n", "\npublic class ", "\nclass ", "\nimport "),
    "c": ("\n#include", "\n#define", "\nint main("),
    "cpp": ("\n#include", "\n#define", "\nint main("),
}


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


# --- the builder --------------------------------------------------------------------------------------------
_DISPLAY: dict = {}  # (path, root) -> shown path, for a short while (like the resolved paths it is made of)


def display_path(path: str | None, root: str | os.PathLike[str] | None = None) -> str:
    """A path as the prompt shows it: relative to the workspace root when inside it, else its last 3 parts."""
    if not path:
        return ""
    if root is not None:
        try:
            return _fs_cached(_DISPLAY, (path, os.fspath(root)),
                              lambda: Path(resolved(path)).relative_to(resolved(root)).as_posix())
        except (ValueError, OSError):
            pass
    parts = [p for p in path.replace(os.sep, "/").split("/") if p]
    return "/".join(parts[-3:])


def header_for(snap: Snapshot, root: str | os.PathLike[str] | None = None) -> str:
    """``# Path: pkg/mod.py (python)`` (with the language's comment prefix); nothing for unnamed buffers."""
    shown = display_path(snap.path, root)
    if not shown:
        return ""
    comment = snap.language.comment if snap.language else "#"
    lang = f" ({snap.language.id})" if snap.language else ""
    return f"{comment} Path: {shown}{lang}\n"


SNIPPET_STYLES = ("code", "comment", "signature")
DEFAULT_SNIPPET_STYLE = "signature"


def render_snippet(snip: Snippet, comment: str, root, *, short: bool = False, style: str = "code") -> str:
    """A snippet as the prompt shows it (prefix-only / single-file FIM). ``code``: a path comment, then the
    code; ``comment``: every line commented out, Copilot style ("Compare this snippet from ..."); ``signature``:
    like ``code`` but definitions of names used near the cursor only as header + the docstring's first line
    (never whole bodies). The function under test keeps its implementation in every style: asserts need what it
    does, not just its name (a signature-only `common_prefix` made the demo suggest `("a", "b") == "a"`)."""
    if style == "signature" and snip.kind not in ("similar", "under-test"):
        body = (snip.signature or snip.summary).rstrip()
    else:
        body = (snip.summary if short else snip.text).rstrip()
    body = _lf(body)
    where = display_path(snip.path, root)
    if style == "comment":
        lines = "\n".join(f"{comment} {ln}".rstrip() for ln in body.split("\n"))
        return f"{comment} Compare this snippet from {where}:\n{lines}\n\n"
    return f"{comment} Path: {where}\n{body}\n\n"


def _resolve_fim(fim: FimTemplate | None) -> FimTemplate | None:
    """A template built from bare token strings gets its family's layout and stops."""
    if fim is None or fim.family != "psm":
        return fim
    known = template_for(
        {"prefix": fim.prefix, "suffix": fim.suffix, "middle": fim.middle, "file_sep": fim.file_sep}
    )
    return known if known is not None and known.family in FAMILIES else fim


def scope_headers(snap: Snapshot, line: int, col: int, window_start_line: int) -> list[tuple[int, str]]:
    """(line, text) of the header lines of the classes / functions around the cursor that start above the prefix
    window (outermost first): the model then still knows where it is."""
    spec = snap.language
    if spec is None or snap.tree is None or window_start_line <= 0:
        return []
    off = snap.byte_offset(snap.offset(line, col))
    node = snap.tree.root_node.descendant_for_byte_range(max(0, off - 1), off)
    lines = snap.lines()
    out: list[tuple[int, str]] = []
    while node is not None:
        if node.type in spec.function_types or node.type in spec.class_types:
            first = node.start_point[0]
            body = node.child_by_field_name("body")
            body_line = body.start_point[0] if body is not None else first
            last = min(body_line - 1 if body_line > first else first, first + 3)
            if first < window_start_line:
                for ln in range(min(last, window_start_line - 1), first - 1, -1):
                    out.append((ln, lines[ln]))
        node = node.parent
    out.sort()
    return list(dict.fromkeys(out))


def _kept_prefix(snap: Snapshot, line: int, col: int, keep: str) -> int | None:
    """Offset from which the text before the cursor must stay in the prefix window (``keep_in_prefix``), or
    None when snippets may take any of it."""
    if keep == "file":
        return 0
    if keep != "function" or snap.language is None or snap.tree is None:
        return None
    node, min_col = node_at_cursor(snap, line, col)
    spec = snap.language
    while node is not None:
        if node.type in spec.function_types and (min_col is None or node.start_point[1] < min_col):
            return snap.offset(node.start_point[0], 0)
        node = node.parent
    return None


def build_prompt(
    snap: Snapshot,
    line: int,
    col: int,
    *,
    others: Sequence[Snapshot] = (),
    budget: PromptBudget = PromptBudget(),
    fim: FimTemplate | None = None,
    count_tokens: CountTokens | None = None,
    workspace: Workspace | None | str = "auto",
    snippets: bool = True,
    snippet_style: str = DEFAULT_SNIPPET_STYLE,
    specials: Sequence[str] = (),
) -> Prompt:
    """The prompt for a completion at (line, code-point col) of ``snap``. Deterministic.

    ``workspace``: "auto" = the shared index of the project around ``snap.path`` (files read on demand,
    cached); None = open documents only. ``snippets=False`` gives the plain prefix/suffix prompt (the baseline
    of ``copilot-ls eval context``). ``specials``: the model's control-token strings; they and the FIM
    template's are guarded in the code text (`guard`).
    """
    if budget.keep_in_prefix not in KEEP_IN_PREFIX:
        raise ValueError(f"unknown keep_in_prefix {budget.keep_in_prefix!r}; expected one of "
                         f"{', '.join(KEEP_IN_PREFIX)}")
    if snippet_style not in SNIPPET_STYLES:
        raise ValueError(
            f"unknown snippet style {snippet_style!r}; expected one of {', '.join(SNIPPET_STYLES)}"
        )
    count = count_tokens or estimate_tokens
    fim = _resolve_fim(fim)
    # longest first: a special that contains another is guarded whole
    controls = sorted({*specials, *(fim.stops if fim is not None else ())}, key=lambda s: (-len(s), s))
    controls = [s for s in controls if len(s) > 1]
    root = None
    if workspace == "auto":
        workspace = workspace_for(snap.path) if snippets else None
        if not snippets and snap.path:  # the same path header as with snippets
            root = find_root(snap.path)[0]
    if isinstance(workspace, Workspace):
        root = workspace.root
    off = snap.offset(line, col)
    line, col = snap.position(off)
    text = snap.text
    before, after = _lf(text[:off]), _lf(text[off:])
    multiline = is_multiline(snap, line, col)
    cursor_line = snap.lines()[line] if snap.lines() else ""
    stop = stop_strings(snap.language, multiline, fim, blank_line=not cursor_line.strip())
    comment = snap.language.comment if snap.language else "#"

    total = max(0, budget.max_prompt_tokens)
    overhead = count(fim.format("", "")) if fim is not None else 0
    header = header_for(snap, root)
    header_tokens = count(header) if header else 0
    if header_tokens + overhead > total // 4:
        header, header_tokens = "", 0
    available = max(0, total - overhead - header_tokens)

    suffix = ""
    if fim is not None:
        suffix_budget = int(available * max(0.0, min(1.0, budget.suffix_fraction)))
        suffix = fit_head(after, suffix_budget, count)
        available -= count(suffix) if suffix else 0

    # Snippets: chosen greedily by rank within their share; the prefix window gets the rest.
    chosen: list[tuple[Snippet, str, int]] = []
    kept = None  # the kept text's offset in `before` when it fits (keep_in_prefix)
    if snippets and available > 0:
        snippet_budget = int(available * max(0.0, min(1.0, budget.snippet_fraction)))
        kept = _kept_prefix(snap, line, col, budget.keep_in_prefix)
        if kept is not None:
            kept = len(_lf(text[:kept]))  # an offset into `before`
            need = count(before[kept:])
            snippet_budget = min(snippet_budget, max(0, available - need - 1))
            if need > available:
                kept = None
        # the window the prefix would get without snippets tells which local definitions are cut off
        rough_start = line - fit_tail(before, available - snippet_budget, count).count("\n")
        used = 0
        for snip in collect(
            snap,
            line,
            col,
            others=others,
            workspace=workspace if isinstance(workspace, Workspace) else None,
            window_start_line=rough_start,
        ):
            for short in (False, True):
                rendered = render_snippet(snip, comment, root, short=short, style=snippet_style)
                t = count(rendered)
                if used + t <= snippet_budget:
                    chosen.append((snip, rendered, t))
                    used += t
                    break
                if snip.summary == snip.text:
                    break
        available -= used

    prefix = fit_tail(before, available, count)
    if kept is not None and len(prefix) < len(before) - kept:
        prefix = before[kept:]  # fit_tail errs on the short side; the kept text is known to fit
    window_start = line - prefix.count("\n")
    scope = scope_headers(snap, line, col, window_start)
    scope_text = "".join(t + "\n" for _, t in scope)
    if scope_text and count(scope_text) < available // 4:
        prefix = fit_tail(before, available - count(scope_text), count)
        window_start = line - prefix.count("\n")
        scope = [(ln, t) for ln, t in scope if ln < window_start]
        scope_text = "".join(t + "\n" for _, t in scope)
    else:
        scope, scope_text = [], ""

    # Indentation before the cursor stays out of the prompt (BPE models see "    return" as spaces + " return";
    # a prompt ending in spaces is unnatural): the model writes the whole line, postprocess.fix_indent drops
    # what the line already has.
    line_head = snap.lines()[line][:col] if snap.lines() else ""
    cut = len(line_head) if line_head and not line_head.strip() else 0

    def body() -> str:
        ordered = list(reversed(chosen))  # the best snippet closest to the code
        pre = prefix[: len(prefix) - cut] if cut and len(prefix) >= cut else prefix
        return guard("".join(r for _, r, _ in ordered) + header + scope_text + pre, controls)

    def assemble() -> str:
        if fim is not None and fim.file_sep and chosen:
            ordered = list(reversed(chosen))
            pre = prefix[: len(prefix) - cut] if cut and len(prefix) >= cut else prefix
            files = [(display_path(s.path, root), guard(r.split("\n", 1)[1].rstrip("\n"), controls))
                     for s, r, _ in ordered]
            return fim.format(guard(header + scope_text + pre, controls), guard(suffix, controls), files=files)
        return fim.format(body(), guard(suffix, controls)) if fim is not None else body()

    prompt = assemble()
    # Token counts of parts need not add up exactly (BPE merges across the seams): check the whole and trim.
    for _ in range(40):
        over = count(prompt) - total
        if over <= 0:
            break
        if chosen:
            chosen.pop()
        elif header:
            header, header_tokens = "", 0
        elif scope_text:
            scope, scope_text = [], ""
        elif prefix:
            prefix = fit_tail(prefix, max(0, count(prefix) - over - 1), count)
        elif suffix:
            suffix = fit_head(suffix, max(0, count(suffix) - over - 1), count)
        else:
            break
        prompt = assemble()

    sources: list[SnippetSource] = []
    for snip, _, t in chosen:
        sources.append(SnippetSource(snip.kind, snip.path, snip.start_line, snip.end_line, t, snip.why))
    if header:
        sources.append(SnippetSource("header", snap.path, 0, 0, header_tokens, "file path and language"))
    for ln, _t in scope:
        sources.append(
            SnippetSource("scope", snap.path, ln, ln, count(_t), "enclosing header above the window")
        )
    if prefix:
        first = line - prefix.count("\n")
        sources.append(
            SnippetSource("prefix", snap.path, first, line, count(prefix), "text before the cursor")
        )
    if fim is None:
        raw_suffix = "\n".join(
            after.split("\n", SUFFIX_LINES_WITHOUT_FIM + 1)[: SUFFIX_LINES_WITHOUT_FIM + 1]
        )
    else:
        raw_suffix = suffix
        if suffix:
            last = line + suffix.count("\n")
            sources.append(
                SnippetSource("suffix", snap.path, line, last, count(suffix), "text after the cursor")
            )
    return Prompt(
        prompt=prompt,
        prefix=prefix,
        suffix=raw_suffix,
        multiline=multiline,
        stop=stop,
        sources=sources,
        fim_body=body() if fim is not None else "",
        guarded=tuple(s for s in controls if s[0] + GUARD + s[1:] in prompt),
    )
