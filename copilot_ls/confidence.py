"""Confidence of a suggestion (pure): how likely the text actually shown is what the user will keep.

Post-processing changes the model's text (first line only, indentation dropped, overlap trimmed), so the
model's own mean log-prob scores text the user never sees. Here:

1. ``shown_span``  maps the shown text back onto the raw tokens that produced it (character alignment of the
                   shown text against the concatenated token texts; a token counts when any of its characters
                   was kept);
2. ``features``    mean and lowest token log-prob of that span, its length in tokens, new syntax errors, the
                   static-check issues (copilot_ls.static_checks) and, with n > 1, the share of candidates that
                   show the same text;
3. ``confidence``  a logistic score in [0, 1] of those features (``WEIGHTS``; the default ``minConfidence`` is
                   chosen on the precision / coverage curve of `copilot-ls eval context`, docs/quality.md).

A candidate from a server that sends no per-token log-probs has no confidence (None): the ``minConfidence``
gate lets it through rather than hiding every suggestion of such a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from copilot_ls.backend import RawCandidate


@dataclass(frozen=True)
class Features:
    mean_logprob: float  # mean token log-prob of the shown span
    min_logprob: float  # the lowest one
    tokens: int  # tokens in the shown span
    syntax_errors: int  # ERROR / MISSING nodes the suggestion adds (or unbalanced brackets, see postprocess)
    static_issues: int  # undefined names + unknown members (copilot_ls.static_checks)
    agreement: float  # share of the request's candidates showing the same text (1.0 with n = 1)


# Logistic weights over the features (intercept first), set by hand: a score that orders suggestions, not a
# calibrated probability. `copilot-ls eval context --fit-weights` fits them by logistic regression; with the
# default model's few exact hits the fit is not better on held-out cases (docs/quality.md).
WEIGHTS = {
    "bias": 1.0,
    "mean_logprob": 2.0,
    "min_logprob": 0.4,
    "log_tokens": 0.0,
    "syntax_errors": -1.5,
    "static_issues": -1.2,
    "agreement": 1.5,
}


def shown_span(tokens: Sequence[str], shown: str) -> list[int]:
    """Indexes of the tokens whose text contributed to ``shown`` (in order). ``shown`` is the post-processed
    text, in LF form; characters it has that no token has (re-indentation) map to nothing."""
    if not tokens or not shown:
        return []
    raw = "".join(tokens)
    kept = [False] * len(raw)
    for block in SequenceMatcher(None, raw, shown, autojunk=False).get_matching_blocks():
        for k in range(block.a, block.a + block.size):
            kept[k] = True
    out: list[int] = []
    pos = 0
    for i, tok in enumerate(tokens):
        end = pos + len(tok)
        if any(kept[pos:end]):
            out.append(i)
        pos = end
    return out


def span_logprobs(cand: RawCandidate, shown: str) -> list[float] | None:
    """Log-probs of the tokens behind ``shown`` (None when the server sent no per-token data)."""
    if not cand.tokens or len(cand.tokens) != len(cand.token_logprobs):
        return None
    idx = shown_span(cand.tokens, shown.replace("\r\n", "\n"))
    if not idx:  # nothing aligned (the shown text is all re-indentation): score the whole output
        idx = list(range(len(cand.tokens)))
    return [cand.token_logprobs[i] for i in idx]


def features(
    cand: RawCandidate, shown: str, *, syntax_errors: int = 0, static_issues: int = 0, agreement: float = 1.0
) -> Features | None:
    lps = span_logprobs(cand, shown)
    if not lps:
        return None
    return Features(sum(lps) / len(lps), min(lps), len(lps), syntax_errors, static_issues, agreement)


def score(f: Features, weights: dict[str, float] | None = None) -> float:
    """The logistic confidence of ``f`` in [0, 1]."""
    w = weights or WEIGHTS
    z = (
        w["bias"]
        + w["mean_logprob"] * f.mean_logprob
        + w["min_logprob"] * f.min_logprob
        + w["log_tokens"] * math.log1p(f.tokens)
        + w["syntax_errors"] * min(f.syntax_errors, 3)
        + w["static_issues"] * min(f.static_issues, 3)
        + w["agreement"] * (f.agreement - 1.0)
    )
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def confidence(cand: RawCandidate, shown: str, **kw) -> float | None:
    """The confidence of showing ``shown`` for ``cand`` (None: no per-token log-probs to judge by)."""
    f = features(cand, shown, **kw)
    return None if f is None else score(f)


def agreement(texts: Sequence[str]) -> list[float]:
    """Per candidate, the share of all candidates whose (stripped) shown text is the same."""
    keys = [t.strip() for t in texts]
    n = len(keys)
    return [keys.count(k) / n for k in keys] if n else []


def passes(conf: float | None, min_confidence: float) -> bool:
    """The ``minConfidence`` gate: a suggestion without a confidence (no log-probs) always passes."""
    return min_confidence <= 0 or conf is None or conf >= min_confidence
