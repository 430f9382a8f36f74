"""How each part looks in the prompt text: LF line breaks, guarded control-token strings, the file header, and
snippets in one of the ``SNIPPET_STYLES``. Pure string work (paths shown relative to the workspace root).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from copilot_ls.context.snippets import Snippet
from copilot_ls.context.workspace import display_path
from copilot_ls.documents import Snapshot

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


def lf(text: str) -> str:
    """CRLF line breaks as LF: the prompt is sent with LF only (the stop strings are LF-based: a model shown
    CRLF writes CRLF, which a blank-line stop ``\n\n`` never matches; post-processing gives the answer the
    document's CRLF back)."""
    return text.replace("\r\n", "\n") if "\r" in text else text


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
    (never whole bodies; a class: its fields and method signatures, fewer of them when ``short``). The function
    under test keeps its implementation in every style: asserts need what it does, not just its name
    (docs/context.md); similar windows and recent edits are code in every style."""
    if style == "signature" and snip.kind not in ("similar", "under-test", "edit"):
        body = ((short and snip.brief) or snip.signature or snip.summary).rstrip()
    else:
        body = (snip.summary if short else snip.text).rstrip()
    body = lf(body)
    where = display_path(snip.path, root)
    if style == "comment":
        lines = "\n".join(f"{comment} {ln}".rstrip() for ln in body.split("\n"))
        return f"{comment} Compare this snippet from {where}:\n{lines}\n\n"
    return f"{comment} Path: {where}\n{body}\n\n"
