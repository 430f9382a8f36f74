"""Fill-in-the-middle through a chat endpoint (`/v1/chat/completions`): the prompt and the parse of the reply.

A chat-only server (LM Studio, Ollama chat models, hosted OpenAI-compatible APIs, llama.cpp with an instruct
model) takes messages, not a raw prefix/suffix. The prompt is built by ``context.build_prompt`` exactly as for
completions, with `CHAT_FIM` as the FIM template: its markers are plain strings that ``split_prompt`` cuts the
prompt at, giving the same prefix (snippets, path header, scope headers, prefix window) and suffix window. The
user message shows the code with a ``<HOLE>`` marker and strict instructions; ``parse_reply`` turns whatever the
model answers (fences, prose before or after, the prefix or suffix repeated back) into the text that goes at the
cursor, before the usual post-processing. No grammar / guided decoding is used: servers spell it differently
(vLLM `guided_regex`, llama.cpp `grammar`, OpenAI none) and the parse handles every reply shape seen.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from copilot_ls.context.fim import FimTemplate

HOLE = "<HOLE>"

# Marker strings the prompt is cut at; they never reach the server (``split_prompt`` removes them).
_P, _S, _M = "\x00<chat-prefix>\x00", "\x00<chat-suffix>\x00", "\x00<chat-middle>\x00"
CHAT_FIM = FimTemplate(_P, _S, _M, family="chat")

# Tokens the instructions and the chat template add around the code (taken off the prompt budget).
OVERHEAD_TOKENS = 160

SYSTEM = (
    "You are a code completion engine. You fill in the hole marked " + HOLE + " in the user's code. "
    "Reply with only the code that replaces " + HOLE + ": no explanation, no markdown fences, "
    "and do not repeat the code before or after the hole."
)


@dataclass(frozen=True)
class ChatPrompt:
    messages: list[dict[str, str]]
    before: str  # the code shown before the hole (for parse_reply)
    after: str  # the code shown after it

    @property
    def transcript(self) -> str:
        """The messages as readable text (`--explain`, the cache key)."""
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.messages)


def split_prompt(prompt: str) -> tuple[str, str]:
    """(code before the cursor, code after it) of a prompt built with `CHAT_FIM`."""
    head, sep, rest = prompt.partition(_P)
    body = rest if sep else head
    before, _, after = body.partition(_S)
    return before, after.replace(_M, "")


def build_messages(prompt: str, language: str | None, multiline: bool) -> ChatPrompt:
    """The chat messages for one completion (`prompt`: built by build_prompt with CHAT_FIM)."""
    before, after = split_prompt(prompt)
    lang = language or ""
    size = (
        "a few lines of code (at most one block)"
        if multiline
        else "the rest of the current line only (no newline)"
    )
    user = (
        f"Fill in {HOLE} with {size}.\n"
        f"Reply with only the code that replaces {HOLE}, no prose, no fences.\n\n"
        f"```{lang}\n{before}{HOLE}{after}\n```"
    )
    return ChatPrompt(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], before, after
    )


_FENCED = re.compile(r"```[^\n`]*\n(.*?)(?:\n?```|\Z)", re.S)
_PROSE = re.compile(
    r"^\s*(here(?:'s| is| are)|sure|certainly|the (?:code|completion|missing)|this |"
    r"explanation|note:|output:|answer:|i )",
    re.I,
)


def parse_reply(reply: str, before: str, after: str) -> str:
    """The text to insert at the cursor from a chat reply: the fenced block if there is one (else the reply
    without prose lines around it), with the hole marker, a repeated prefix and a repeated suffix taken off."""
    text = reply.replace("\r\n", "\n")
    fenced = _FENCED.search(text)
    if fenced:
        text = fenced.group(1)
    else:
        lines = text.split("\n")
        while lines and (not lines[0].strip() or _PROSE.match(lines[0])):
            if not lines[0].strip() and len(lines) > 1 and not _PROSE.match(lines[1]):
                break
            lines.pop(0)
        while lines and (not lines[-1].strip() or _PROSE.match(lines[-1])):
            lines.pop()
        text = "\n".join(lines)
    if HOLE in text:  # the model echoed the code with the hole: keep what it wrote after the marker
        text = text.split(HOLE, 1)[1] if text.split(HOLE, 1)[1].strip() else text.split(HOLE, 1)[0]
    text = _drop_repeated_prefix(text, before)
    text = _drop_repeated_suffix(text, after).rstrip()
    cursor_line = before.rsplit("\n", 1)[-1]
    if cursor_line.rstrip().endswith((":", "{", "(", "[")) and text[:1] in (" ", "\t"):
        text = "\n" + text  # a block's body written as whole lines goes below the cursor's line
    return text


def _drop_repeated_prefix(text: str, before: str) -> str:
    """A reply that starts with code from before the hole (small models often echo the whole snippet, lightly
    reworded) loses those lines, and the cursor line's start when it echoes that too."""
    if not before:
        return text
    for start in _line_starts(before):  # the longest exact tail of `before` the reply starts with
        tail = before[start:]
        if len(tail) >= 8 and text.startswith(tail):
            return text[len(tail) :]
    *full, cursor_line = before.split("\n")
    lines = text.split("\n")
    k, j = 0, 0  # reply lines consumed; `full` lines passed
    while k < len(lines) - 1 and not lines[k].strip():
        k += 1  # blank lines before an echo
    lead = k
    while k < len(lines) and lines[k].strip():
        hit = next((i for i in range(j, len(full)) if _same_line(lines[k], full[i])), None)
        if hit is None:
            break
        k, j = k + 1, hit + 1
    near_end = j >= len(full) - 3
    more = any(ln.strip() for ln in lines[k:])  # one echoed line is an echo only when code follows it
    echoed = k - lead
    long_line = len(lines[lead].strip()) >= 20 if echoed else False
    if echoed >= 2 or (echoed == 1 and more and (near_end or long_line) and len(lines[lead].strip()) >= 8):
        text = "\n".join(lines[k:])
    if cursor_line.strip():
        first = text.split("\n", 1)[0]
        if first.startswith(cursor_line):
            return text[len(cursor_line) :]
        cl, rest = cursor_line.lstrip(), first.lstrip()
        if rest.startswith(cl.rstrip()):
            rest = rest[len(cl.rstrip()) :]
            return (rest.lstrip() if cl != cl.rstrip() else rest) + text[len(first) :]
    return text


def _same_line(a: str, b: str) -> bool:
    """The same line of code, allowing a small rewording (an echo of the user's code)."""
    a, b = a.strip(), b.strip()
    if not a or not b:
        return False
    if a == b:
        return True
    return min(len(a), len(b)) >= 10 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.85


def _line_starts(text: str) -> list[int]:
    """Offsets where a line of `text` starts, earliest first (longest tails first)."""
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _drop_repeated_suffix(text: str, after: str) -> str:
    """A reply that goes on into the code after the hole is cut where that code starts."""
    head = after.strip()
    if not head:
        return text
    first = next((ln.strip() for ln in after.split("\n") if ln.strip()), "")
    if len(head) >= 8 and (i := text.find(head[: min(len(head), 80)])) > 0:
        return text[:i].rstrip(" \t")
    if len(first) >= 6:
        lines = text.split("\n")
        for k in range(1, len(lines)):
            if lines[k].strip() == first:
                return "\n".join(lines[:k])
    return text
