"""Prompt assembly (pure): (snapshot, cursor, other documents, budget, FIM template) -> Prompt.

The prompt is, in order: snippets from other files (``context.snippets``, chosen by ``context.choice``), a
header comment with the file's path and language, the headers of the definitions around the cursor that the
window cut off, then the window of text before the cursor; with a FIM template also the window after it.
Everything is measured in tokens of the target model (``context.budget``) and the whole prompt never exceeds
``budget.max_prompt_tokens``. Same input, same prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from copilot_ls.context.budget import (
    KEEP_IN_PREFIX,
    CountTokens,
    PromptBudget,
    anchor_tail,
    estimate_tokens,
    fit_head,
    fit_tail,
    share,
)
from copilot_ls.context.choice import Chosen, RenderSnippet, choose, rough_window_start, snippet_room
from copilot_ls.context.cursor import is_multiline, stop_strings
from copilot_ls.context.edits import EditRegion, edit_snippets
from copilot_ls.context.fim import FAMILIES, FimTemplate, template_for
from copilot_ls.context.render import (
    DEFAULT_SNIPPET_STYLE,
    GUARD,
    SNIPPET_STYLES,
    guard,
    header_for,
    lf,
    render_snippet,
)
from copilot_ls.context.snippets import collect, dedupe, scope_headers
from copilot_ls.context.workspace import Workspace, display_path, find_root, workspace_for
from copilot_ls.documents import Snapshot

SUFFIX_LINES_WITHOUT_FIM = 20  # raw suffix kept for post-processing when the prompt is prefix-only


@dataclass(frozen=True)
class SnippetSource:
    """Where one part of the prompt came from (for ``--explain``)."""

    kind: str  # "header" | "prefix" | "suffix" | "definition" | "under-test" | "similar" | "scope" | "edit"
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
    # Control-token strings (the model's special tokens, the FIM template's) that occurred in the code and were
    # guarded there (see `guard`); `unguard` restores them in what the model writes.
    guarded: tuple[str, ...] = ()


@dataclass
class Parts:
    """The pieces of one prompt; `trim` drops or shortens them until the whole fits."""

    chosen: list[Chosen]  # best first
    header: str
    header_tokens: int
    scope: list[tuple[int, str]]  # (line, text) of cut-off enclosing headers
    prefix: str  # the window before the cursor
    suffix: str  # the window after it (FIM only)
    cut: int  # characters of indentation at the end of `prefix` that the prompt leaves out

    def code(self) -> str:
        """Header, scope headers and the prefix window without the indentation before the cursor."""
        pre = (
            self.prefix[: len(self.prefix) - self.cut]
            if self.cut and len(self.prefix) >= self.cut
            else self.prefix
        )
        return self.header + "".join(t + "\n" for _, t in self.scope) + pre


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
    edits: Sequence[EditRegion] = (),
) -> Prompt:
    """The prompt for a completion at (line, code-point col) of ``snap``. Deterministic.

    ``workspace``: "auto" = the shared index of the project around ``snap.path`` (files read on demand,
    cached); None = open documents only. ``snippets=False`` gives the plain prefix/suffix prompt (the baseline
    of ``copilot-ls eval context``). ``specials``: the model's control-token strings; they and the FIM
    template's are guarded in the code text (`guard`). ``edits``: the recent edit regions (``context.edits``),
    newest first; none (the CLI, the default eval set) gives the same prompt as before they existed.
    """
    _check_options(budget, snippet_style)
    count = count_tokens or estimate_tokens
    fim = _resolve_fim(fim)
    controls = control_strings(specials, fim)
    ws, root = _workspace_and_root(snap, workspace, snippets)
    off = snap.offset(line, col)
    line, col = snap.position(off)
    before, after = lf(snap.text[:off]), lf(snap.text[off:])
    multiline = is_multiline(snap, line, col)
    cursor_line = snap.lines()[line] if snap.lines() else ""
    stop = stop_strings(snap.language, multiline, fim, blank_line=not cursor_line.strip())

    total = max(0, budget.max_prompt_tokens)
    header, header_tokens, available = _header(snap, root, fim, total, count)
    suffix = fit_head(after, share(available, budget.suffix_fraction), count) if fim is not None else ""
    available -= count(suffix) if suffix else 0
    chosen: list[Chosen] = []
    kept = None
    if snippets and available > 0:
        chosen, kept = _snippets(
            snap, line, col, before, suffix, available, budget, count, others, ws, root, snippet_style, edits
        )
        available -= sum(c.tokens for c in chosen)
    prefix, scope = _prefix_window(snap, line, col, before, available, kept, count, budget.window_step)
    parts = Parts(
        chosen, header, header_tokens, scope, prefix, suffix, _indent_before_cursor(snap, line, col)
    )
    prompt = trim(parts, total, count, lambda p: assemble(p, fim, root, controls))
    return Prompt(
        prompt=prompt,
        prefix=parts.prefix,
        suffix=parts.suffix if fim is not None else _raw_suffix(after),
        multiline=multiline,
        stop=stop,
        sources=sources(parts, snap, line, count, fim),
        guarded=tuple(s for s in controls if s[0] + GUARD + s[1:] in prompt),
    )


def _snippets(
    snap: Snapshot,
    line: int,
    col: int,
    before: str,
    suffix: str,
    available: int,
    budget: PromptBudget,
    count: CountTokens,
    others: Sequence[Snapshot],
    ws: Workspace | None,
    root: str | os.PathLike[str] | None,
    snippet_style: str,
    edits: Sequence[EditRegion],
) -> tuple[list[Chosen], int | None]:
    """The snippets chosen within ``available`` tokens (recent edits with their own share), and what
    keep_in_prefix keeps whole (snippet_room's; None when recent edits took its room)."""
    room, kept = snippet_room(snap, line, col, before, available, budget, count)
    extra = share(available, budget.edit_fraction) if edits else 0
    start = rough_window_start(line, before, available - room - extra, count)
    recent = []
    if edits:  # leave out the edits the windows show (the smallest window, anchored as it will be)
        least = available - room - extra
        shown = anchor_tail(fit_tail(before, least, count), line, least, budget.window_step)
        visible = (line - shown.count("\n"), line + suffix.count("\n"))
        recent = edit_snippets(snap, line, edits, others, visible=visible)
    if not recent and extra:  # no edit to show: the window is what it is without edits
        extra, start = 0, rough_window_start(line, before, available - room, count)
    candidates = collect(snap, line, col, others=others, workspace=ws, window_start_line=start)
    if recent:
        candidates = dedupe(recent + candidates)
    chosen = choose(candidates, room, _snippet_renderer(snap, root, snippet_style), count, extra)
    if sum(c.tokens for c in chosen) > room:  # recent edits took room keep_in_prefix keeps: it may not fit
        kept = None
    return chosen, kept


def _check_options(budget: PromptBudget, snippet_style: str) -> None:
    if budget.keep_in_prefix not in KEEP_IN_PREFIX:
        raise ValueError(
            f"unknown keep_in_prefix {budget.keep_in_prefix!r}; expected one of {', '.join(KEEP_IN_PREFIX)}"
        )
    if snippet_style not in SNIPPET_STYLES:
        raise ValueError(
            f"unknown snippet style {snippet_style!r}; expected one of {', '.join(SNIPPET_STYLES)}"
        )


def _resolve_fim(fim: FimTemplate | None) -> FimTemplate | None:
    """A template built from bare token strings gets its family's layout and stops."""
    if fim is None or fim.family != "psm":
        return fim
    known = template_for(
        {"prefix": fim.prefix, "suffix": fim.suffix, "middle": fim.middle, "file_sep": fim.file_sep}
    )
    return known if known is not None and known.family in FAMILIES else fim


def control_strings(specials: Sequence[str], fim: FimTemplate | None) -> list[str]:
    """The strings to guard in code: the model's specials and the template's stops, longest first (a special
    that contains another is guarded whole); single characters never."""
    controls = sorted({*specials, *(fim.stops if fim is not None else ())}, key=lambda s: (-len(s), s))
    return [s for s in controls if len(s) > 1]


def _workspace_and_root(
    snap: Snapshot, workspace: Workspace | None | str, snippets: bool
) -> tuple[Workspace | None, str | os.PathLike[str] | None]:
    """(the workspace snippets come from, the root paths are shown relative to); without snippets an "auto"
    workspace still gives the root, so the path header is the same."""
    root = None
    if workspace == "auto":
        workspace = workspace_for(snap.path) if snippets else None
        if not snippets and snap.path:
            root = find_root(snap.path)[0]
    if isinstance(workspace, Workspace):
        return workspace, workspace.root
    return None, root


def _snippet_renderer(snap: Snapshot, root, style: str) -> RenderSnippet:
    comment = snap.language.comment if snap.language else "#"
    return lambda snip, short: render_snippet(snip, comment, root, short=short, style=style)


def _header(
    snap: Snapshot, root, fim: FimTemplate | None, total: int, count: CountTokens
) -> tuple[str, int, int]:
    """(header, its tokens, tokens left for the rest): no header when it and the FIM tokens would take more
    than a quarter of the budget."""
    overhead = count(fim.format("", "")) if fim is not None else 0
    header = header_for(snap, root)
    header_tokens = count(header) if header else 0
    if header_tokens + overhead > total // 4:
        header, header_tokens = "", 0
    return header, header_tokens, max(0, total - overhead - header_tokens)


def _prefix_window(
    snap: Snapshot,
    line: int,
    col: int,
    before: str,
    available: int,
    kept: int | None,
    count: CountTokens,
    step: float = 0.0,
) -> tuple[str, list[tuple[int, str]]]:
    """(the window before the cursor, the cut-off enclosing headers shown above it): the headers only when
    they take less than a quarter of ``available``, and the window shrinks to make room for them. The window
    starts on an anchor line (``anchor_tail``, a ``step`` share of the window) unless that would cut text
    ``kept`` must keep."""

    def window(tokens: int, first: bool) -> str:
        tail = fit_tail(before, tokens, count)
        if first and kept is not None and len(tail) < len(before) - kept:
            return before[kept:]  # fit_tail errs on the short side; the kept text is known to fit
        anchored = anchor_tail(tail, line, available, step)
        return anchored if kept is None or len(anchored) >= len(before) - kept else tail

    prefix = window(available, True)
    scope = scope_headers(snap, line, col, line - prefix.count("\n"))
    scope_text = "".join(t + "\n" for _, t in scope)
    if not scope_text or count(scope_text) >= available // 4:
        return prefix, []
    prefix = window(available - count(scope_text), False)
    window_start = line - prefix.count("\n")
    return prefix, [(ln, t) for ln, t in scope if ln < window_start]


def _indent_before_cursor(snap: Snapshot, line: int, col: int) -> int:
    """How much indentation before the cursor the prompt leaves out: BPE models see "    return" as spaces +
    " return", and a prompt ending in spaces is unnatural; the model writes the whole line and
    postprocess.fix_indent drops what the line already has."""
    line_head = snap.lines()[line][:col] if snap.lines() else ""
    return len(line_head) if line_head and not line_head.strip() else 0


def assemble(parts: Parts, fim: FimTemplate | None, root, controls: Sequence[str]) -> str:
    """The prompt text: snippets (the best closest to the code), then the code; FIM-formatted with a template,
    the snippets as separate files when the template has a file separator."""
    ordered = list(reversed(parts.chosen))
    if fim is not None and fim.file_sep and ordered:
        files = [
            (display_path(c.snippet.path, root), guard(c.rendered.split("\n", 1)[1].rstrip("\n"), controls))
            for c in ordered
        ]
        return fim.format(guard(parts.code(), controls), guard(parts.suffix, controls), files=files)
    body = guard("".join(c.rendered for c in ordered) + parts.code(), controls)
    return fim.format(body, guard(parts.suffix, controls)) if fim is not None else body


def trim(parts: Parts, total: int, count: CountTokens, render) -> str:
    """``render(parts)`` within ``total`` tokens. Token counts of parts need not add up exactly (BPE merges
    across the seams), so the whole is counted and parts dropped in order: the worst snippet, the header, the
    scope headers; then the prefix and suffix windows shrink."""
    prompt = render(parts)
    for _ in range(40):
        over = count(prompt) - total
        if over <= 0:
            break
        if parts.chosen:
            parts.chosen.pop()
        elif parts.header:
            parts.header, parts.header_tokens = "", 0
        elif parts.scope:
            parts.scope = []
        elif parts.prefix:
            parts.prefix = fit_tail(parts.prefix, max(0, count(parts.prefix) - over - 1), count)
        elif parts.suffix:
            parts.suffix = fit_head(parts.suffix, max(0, count(parts.suffix) - over - 1), count)
        else:
            break
        prompt = render(parts)
    return prompt


def sources(
    parts: Parts, snap: Snapshot, line: int, count: CountTokens, fim: FimTemplate | None
) -> list[SnippetSource]:
    """Where each part of the prompt came from, in prompt order."""
    out = [
        SnippetSource(
            c.snippet.kind, c.snippet.path, c.snippet.start_line, c.snippet.end_line, c.tokens, c.snippet.why
        )
        for c in parts.chosen
    ]
    if parts.header:
        out.append(SnippetSource("header", snap.path, 0, 0, parts.header_tokens, "file path and language"))
    for ln, t in parts.scope:
        out.append(SnippetSource("scope", snap.path, ln, ln, count(t), "enclosing header above the window"))
    if parts.prefix:
        first = line - parts.prefix.count("\n")
        out.append(
            SnippetSource("prefix", snap.path, first, line, count(parts.prefix), "text before the cursor")
        )
    if fim is not None and parts.suffix:
        last = line + parts.suffix.count("\n")
        out.append(
            SnippetSource("suffix", snap.path, line, last, count(parts.suffix), "text after the cursor")
        )
    return out


def _raw_suffix(after: str) -> str:
    """The text after the cursor that post-processing sees when the prompt has no suffix window."""
    return "\n".join(after.split("\n", SUFFIX_LINES_WITHOUT_FIM + 1)[: SUFFIX_LINES_WITHOUT_FIM + 1])
