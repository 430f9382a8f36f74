"""Choosing the next token: greedy, temperature, top-k, top-p, and the beam-search step.

Everything here is a plain function of a logits row. Log-probs are those of the model's own
distribution (log-softmax of the raw logits, temperature 1), which is what callers rank candidates by.
Top-p never sorts the whole vocabulary: it looks at the `k` most likely tokens (torch.topk of a bounded
candidate set), doubling `k` until the set holds the requested probability mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FIRST_CANDIDATES = 64  # the top-p candidate set starts here and doubles until it holds the mass


def log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def apply_allowed(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Keep only `allowed` token ids (token healing); others get -inf."""
    if allowed is None:
        return logits
    masked = torch.full_like(logits, float("-inf"))
    masked[..., allowed] = logits[..., allowed]
    return masked


def candidate_set(logits: Tensor, temperature: float, top_k: int, top_p: float) -> tuple[Tensor, Tensor]:
    """The tokens a sampler may pick from one logits row [vocab], with their (renormalisable) probabilities.

    Returns (ids, probs), most likely first. top_k <= 0 means off; top_p >= 1 means off.
    """
    vocab = logits.shape[-1]
    scaled = logits.float() / max(temperature, 1e-5)
    probs = torch.softmax(scaled, dim=-1)
    k = min(top_k, vocab) if top_k > 0 else vocab
    if top_p >= 1.0:
        if k == vocab:
            return torch.arange(vocab, device=logits.device), probs
        p, ids = torch.topk(probs, k)
        return ids, p
    n = min(k, FIRST_CANDIDATES)
    while True:
        p, ids = torch.topk(probs, n)  # sorted, descending
        cum = torch.cumsum(p, dim=-1)
        if n >= k or cum[-1].item() >= top_p:
            break
        n = min(k, n * 2)
    # keep the smallest prefix whose mass reaches top_p (at least one token)
    keep = int(torch.searchsorted(cum, torch.tensor([top_p], device=cum.device)).item()) + 1
    keep = max(1, min(keep, n))
    return ids[:keep], p[:keep]


def sample_token(
    logits: Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    allowed: Tensor | None = None,
    lp: Tensor | None = None,
) -> tuple[int, float]:
    """One token from one logits row [vocab]: (token id, its log-prob under the model). `allowed` restricts the
    choice (token healing); `lp` is the row's `log_probs` when the caller has them already (a batch's)."""
    if lp is None:
        lp = log_probs(logits)
    constrained = apply_allowed(logits, allowed)
    if temperature <= 0.0:
        token = int(torch.argmax(constrained).item())
    else:
        ids, p = candidate_set(constrained, temperature, top_k, top_p)
        choice = torch.multinomial(p, 1, generator=generator)
        token = int(ids[choice].item())
    return token, float(lp[token].item())


def top_tokens(lp: Tensor, k: int) -> list[tuple[int, float]] | None:
    """The k most likely (token, log-prob) of one log-probs row, most likely first; None when k <= 0."""
    if k <= 0:
        return None
    vals, ids = torch.topk(lp, k)
    return list(zip(ids.tolist(), vals.tolist(), strict=True))


# -- beam search -----------------------------------------------------------------------------------------


@dataclass
class Hypothesis:
    tokens: list[int]
    logprobs: list[float]

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    @property
    def score(self) -> float:
        """Length-normalised score: mean log-prob per generated token."""
        return self.total / max(1, len(self.logprobs))


def beam_candidates(
    beam_logprobs: Tensor, beam_totals: Tensor, width: int, allowed: Tensor | None = None
) -> list[tuple[int, int, float]]:
    """The 2*width best (parent beam, token, token log-prob) expansions, best cumulative score first.

    beam_logprobs: [beams, vocab] log-probs of the next token; beam_totals: [beams] cumulative log-probs.
    """
    scores = beam_logprobs + beam_totals.unsqueeze(1)
    if allowed is not None:
        scores = apply_allowed(scores, allowed)
    vocab = beam_logprobs.shape[-1]
    top, flat = torch.topk(scores.flatten(), min(2 * width, scores.numel()))
    out = []
    for s, f in zip(top.tolist(), flat.tolist(), strict=True):
        if s == float("-inf"):
            break
        parent, token = divmod(f, vocab)
        out.append((parent, token, float(beam_logprobs[parent, token].item())))
    return out


def beam_done(finished: list[Hypothesis], alive: list[Hypothesis], width: int) -> bool:
    """Stop when `width` hypotheses are finished and none alive can still beat the worst of them.

    An alive beam's mean log-prob can still rise, so this uses its current normalised score as the
    estimate (Hugging Face's early_stopping=False heuristic).
    """
    if not alive:
        return True
    if len(finished) < width:
        return False
    worst_kept = sorted((h.score for h in finished), reverse=True)[width - 1]
    return max(h.score for h in alive) <= worst_kept
