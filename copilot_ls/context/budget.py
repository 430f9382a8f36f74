"""The token budget of a prompt: the limits (``PromptBudget``), token counting (the model's tokenizer, or a
conservative estimate), shares of what is left, and the longest head / tail of a text within a number of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

CountTokens = Callable[[str], int]
CHARS_PER_TOKEN_ESTIMATE = 3.0  # code BPE averages ~3.5-4 chars/token; 3 errs on the safe (smaller) side


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
    # The prefix window's first line is a multiple of a step of this share of the window (in estimated lines),
    # so it stays put while the cursor moves down and consecutive prompts share their beginning (the backend's
    # prefix cache); the window then holds between (1 - window_step) and all of its budget. 0: the window
    # starts wherever the budget runs out, one line further down for each line typed.
    window_step: float = 0.5
    # Recent edits (``context.edits``) may take this share of what is left after the suffix on top of the
    # snippets' room, even where ``keep_in_prefix`` leaves none (they push the prefix window's first lines out).
    edit_fraction: float = 0.15


KEEP_IN_PREFIX = ("none", "function", "file")
TOKENS_PER_LINE_ESTIMATE = 12  # only sizes the anchor step of the prefix window (`anchor_tail`) in lines
MIN_ANCHOR_STEP = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def share(tokens: int, fraction: float) -> int:
    """``fraction`` (clamped to [0, 1]) of ``tokens``, rounded down."""
    return int(tokens * max(0.0, min(1.0, fraction)))


# --- windows -----------------------------------------------------------------------------------------------
def fit_tail(text: str, budget: int, count: CountTokens) -> str:
    """The longest tail of ``text`` within ``budget`` tokens, cut at a line start when it has to be cut
    (the cursor's own partial line is cut by characters only if it alone is over budget)."""
    return _fit(text, budget, count, tail=True)


def fit_head(text: str, budget: int, count: CountTokens) -> str:
    """The longest head of ``text`` within ``budget`` tokens, cut at a line end when it has to be cut."""
    return _fit(text, budget, count, tail=False)


def _fit(text: str, budget: int, count: CountTokens, *, tail: bool) -> str:
    """``fit_tail`` (``tail``) or ``fit_head``: a guess from the character count, then a few proportional
    shrinks measured with ``count``."""
    if budget <= 0 or not text:
        return ""
    at_line = _from_line_start if tail else _to_line_end
    cand = text[-max(1, budget * 8) :] if tail else text[: max(1, budget * 8)]
    if len(cand) < len(text) and "\n" in cand:  # else the cursor's line alone is longer: cut by characters
        cand = at_line(cand)
    for _ in range(12):
        n = count(cand)
        if n <= budget:
            return cand
        keep = int(len(cand) * budget / n * 0.95) - 1
        if keep <= 0:
            return ""
        piece = cand[-keep:] if tail else cand[:keep]
        cand = at_line(piece) or piece
    while cand and count(cand) > budget:  # pathological tokenizers: shrink linearly
        cand = cand[len(cand) // 8 + 1 :] if tail else cand[: len(cand) * 7 // 8]
    return cand


def _from_line_start(s: str) -> str:
    i = s.find("\n")
    return s[i + 1 :] if i >= 0 else ""


def _to_line_end(s: str) -> str:
    i = s.rfind("\n")
    return s[: i + 1] if i >= 0 else ""


def anchor_tail(tail: str, line: int, budget: int, step_share: float) -> str:
    """``tail`` (a tail of the text before the cursor within ``budget`` tokens, cut at a line start, as
    ``fit_tail`` gives it; the cursor on line ``line``) shortened to begin at a line whose number is a multiple
    of a step: about ``step_share`` of the lines ``budget`` holds. The start then stays on the same line while
    the cursor moves down a step's worth of lines. The window keeps at least half its lines (else the step
    halves: lines much longer than the estimate)."""
    first = line - tail.count("\n")
    step = int(budget * max(0.0, min(1.0, step_share)) / TOKENS_PER_LINE_ESTIMATE)
    if first <= 0 or step < MIN_ANCHOR_STEP:
        return tail
    while step >= MIN_ANCHOR_STEP:
        start = -(-first // step) * step
        if 2 * (line - start) >= line - first:
            return tail.split("\n", start - first)[-1] if start > first else tail
        step //= 2
    return tail
