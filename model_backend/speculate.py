"""Speculative decoding: draft a few tokens cheaply, verify them in one batched forward of the real model.

The output never changes. Greedy: a draft token is kept only while it equals the model's own argmax, and the
first disagreement is replaced by that argmax, so the text is the text without speculation. Sampling: standard
speculative rejection sampling (Leviathan et al. 2023, Chen et al. 2023): draft token x with draft probability
q(x) is kept with probability min(1, p(x) / q(x)), where p is the distribution the sampler would draw from
(after temperature, top-k, top-p); on rejection the token is drawn from norm(max(0, p - q)). Every emitted token
is then distributed exactly as p. A prompt-lookup draft is deterministic (q is a point mass), so it is kept with
probability p(x) and replaced by a draw from p without x.

Drafters:
- `NgramDrafter` (prompt lookup): the tokens that followed the latest earlier occurrence of the last n tokens,
  in the prompt or in what was generated. Code completion copies a lot (a renamed method, a series of asserts).
- a draft model with the same vocabulary, run by the engine (`DraftDistribution` carries its probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from model_backend.cli_options import SPECULATE_MODES as MODES
from model_backend.sampling import candidate_set

MAX_DRAFT = 8  # draft tokens verified per step at most


class NgramDrafter:
    """Prompt-lookup drafts over one growing token sequence, indexed incrementally.

    For each n in [min_n, max_n] the index maps an n-gram to the position right after its latest occurrence
    that has a continuation; `propose` tries the longest suffix n-gram first.
    """

    def __init__(self, *, max_n: int = 4, min_n: int = 2, max_draft: int = 8) -> None:
        self.max_n, self.min_n, self.max_draft = max_n, min_n, max_draft
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            end = len(self.tokens)  # the n-grams ending here now have a continuation (t)
            for n in range(self.min_n, self.max_n + 1):
                if end >= n:
                    self._index[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(t)

    def propose(self, limit: int | None = None) -> list[int]:
        k = self.max_draft if limit is None else min(limit, self.max_draft)
        if k <= 0:
            return []
        toks = self.tokens
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(toks) < n:
                continue
            at = self._index.get(tuple(toks[len(toks) - n :]))
            if at is not None:
                return toks[at : min(at + k, len(toks))]
        return []


@dataclass
class DraftDistribution:
    """What a draft model proposed: its tokens and, per token, the full distribution it sampled from
    ([k, vocab]; None for a deterministic drafter)."""

    tokens: list[int]
    probs: Tensor | None = None


class AcceptanceTracker:
    """How many draft tokens to ask for next: the running acceptance rate decides, so a stretch where drafts
    keep failing costs at most one extra verified token per step."""

    def __init__(self, max_draft: int = 8, decay: float = 0.7) -> None:
        self.max_draft, self.decay = max_draft, decay
        self.rate = 0.5

    def update(self, proposed: int, accepted: int) -> None:
        if proposed:
            self.rate = self.decay * self.rate + (1 - self.decay) * accepted / proposed

    def budget(self) -> int:
        if self.rate < 0.15:
            return 1
        return max(1, min(self.max_draft, round(self.rate * self.max_draft * 1.5)))


class DraftModel:
    """A small model with the target's vocabulary (e.g. Qwen2.5-Coder 0.5B for 7B) that drafts tokens.

    It runs in an engine of its own (one KV slot); its slot keeps the last context, so each step prefills only
    the tokens the target accepted since. Drafts are greedy for a greedy request, else sampled from the draft's
    own distribution under the request's temperature / top-k / top-p (the probabilities go to verification).
    """

    def __init__(self, engine: Any, target_tokenizer: Any) -> None:
        mine, theirs = engine.tokenizer, target_tokenizer
        if mine.vocab_size != theirs.vocab_size or any(
            mine.token_bytes(t) != theirs.token_bytes(t) for t in range(0, mine.vocab_size, 97)
        ):
            raise ValueError(
                f"the draft model's vocabulary ({mine.vocab_size} tokens) differs from the model's "
                f"({theirs.vocab_size}): a draft model must share the tokenizer"
            )
        self.engine = engine
        self.tokens: list[int] = []  # what the draft's slot holds

    def propose(
        self, context: list[int], k: int, params: Any, generator: torch.Generator | None
    ) -> DraftDistribution:
        eng = self.engine
        if k < 1 or len(context) + k >= eng.max_seq_len:
            return DraftDistribution([])
        common = 0
        for a, b in zip(self.tokens, context, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)  # at least one token computed: its logits start the draft
        logits = eng.forward_tokens(context[common:], common, 0)
        self.tokens = list(context)
        out: list[int] = []
        probs: list[Tensor] = []
        for i in range(k):
            if params.temperature <= 0:
                token = int(torch.argmax(logits).item())
            else:
                ids, p = candidate_set(logits, params.temperature, params.top_k, params.top_p)
                q = torch.zeros(logits.shape[-1], dtype=p.dtype, device=p.device)
                q[ids] = p
                token = int(torch.multinomial(q, 1, generator=generator).item())
                probs.append(q)
            out.append(token)
            if i < k - 1:
                logits = eng.forward_tokens([token], len(self.tokens), 0)
                self.tokens.append(token)
        return DraftDistribution(out, torch.stack(probs) if probs else None)


class Speculator:
    """The engine's speculation state: the mode, the draft model if any, and per sequence an n-gram index of its
    tokens and how well its drafts have been doing."""

    def __init__(self) -> None:
        self.mode = "off"
        self.draft_model: DraftModel | None = None
        self._seqs: dict[tuple[str, int], tuple[NgramDrafter, AcceptanceTracker]] = {}

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def configure(self, mode: str, draft_engine: Any, tokenizer: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"speculate must be one of {', '.join(MODES)}, got {mode!r}")
        if draft_engine is not None:
            self.draft_model = DraftModel(draft_engine, tokenizer)
        if mode == "draft" and self.draft_model is None:
            raise ValueError("speculate=draft needs a draft model (--draft-model)")
        self.mode = mode

    def draft(
        self,
        key: tuple[str, int],
        context: list[int],
        budget: int,
        params: Any,
        generator: torch.Generator | None,
    ) -> DraftDistribution:
        """Draft tokens to follow `context` (the prompt and what the sequence generated), at most `budget`."""
        if key not in self._seqs:
            self._seqs[key] = (NgramDrafter(max_draft=MAX_DRAFT), AcceptanceTracker(MAX_DRAFT))
        ngram, tracker = self._seqs[key]
        ngram.extend(context[len(ngram.tokens) :])
        k = min(budget, tracker.budget())
        if self.mode in ("ngram", "auto"):
            tokens = ngram.propose(k)
            if tokens:
                return DraftDistribution(tokens)
        if self.mode in ("draft", "auto") and self.draft_model is not None:
            return self.draft_model.propose(context, k, params, generator)
        return DraftDistribution([])

    def verify(
        self,
        key: tuple[str, int],
        draft: DraftDistribution,
        logits: Tensor,
        params: Any,
        generator: torch.Generator | None,
    ) -> list[int]:
        """The tokens to emit, from the model's logits [len(draft) + 1, vocab] over the pending token and the
        draft (greedy: agreeing prefix + argmax; sampling: rejection sampling)."""
        if params.temperature <= 0:
            emitted = verify_greedy(draft.tokens, logits.argmax(dim=-1).tolist())
        else:
            target = [candidate_set(row, params.temperature, params.top_k, params.top_p) for row in logits]
            emitted = verify_sampled(draft, target, generator)
        self._seqs[key][1].update(len(draft.tokens), len(emitted) - 1)
        return emitted

    def forget(self, request_id: str) -> None:
        for key in [k for k in self._seqs if k[0] == request_id]:
            del self._seqs[key]


def verify_greedy(draft: Sequence[int], target_argmax: Sequence[int]) -> list[int]:
    """Tokens to emit after a greedy verification.

    target_argmax[i] is the model's argmax after the context plus draft[:i] (len(draft) + 1 entries). Returns
    the agreeing draft prefix followed by the model's own next token: 1 to len(draft) + 1 tokens.
    """
    out: list[int] = []
    for d, t in zip(draft, target_argmax, strict=False):
        if d != t:
            break
        out.append(d)
    out.append(target_argmax[len(out)])
    return out


def verify_sampled(
    draft: DraftDistribution,
    target: Sequence[tuple[Tensor, Tensor]],
    generator: torch.Generator | None,
) -> list[int]:
    """Tokens to emit after rejection-sampling verification.

    target[i] = (ids, probs): the sampler's distribution after the context plus draft.tokens[:i] (its candidate
    set, probabilities summing to 1), len(draft.tokens) + 1 entries. Returns 1 to len(draft.tokens) + 1 tokens.
    """
    out: list[int] = []
    for i, x in enumerate(draft.tokens):
        ids, p = target[i]
        p_full = _scatter(ids, p, draft.probs.shape[-1] if draft.probs is not None else None)
        px = _prob_of(ids, p, x)
        qx = 1.0 if draft.probs is None else float(draft.probs[i, x].item())
        if qx > 0 and _uniform(generator) * qx < px:  # keep with probability min(1, p(x) / q(x))
            out.append(x)
            continue
        if draft.probs is None:  # point-mass draft: residual is p without x
            residual_ids, residual = ids, torch.where(ids == x, torch.zeros_like(p), p)
        else:
            residual = torch.clamp(p_full - draft.probs[i].to(p_full.dtype), min=0.0)
            residual_ids = torch.arange(residual.shape[0], device=residual.device)
        out.append(_draw(residual_ids, residual, generator))
        return out
    ids, p = target[len(draft.tokens)]
    out.append(_draw(ids, p, generator))
    return out


def _prob_of(ids: Tensor, probs: Tensor, token: int) -> float:
    hit = (ids == token).nonzero()
    return float(probs[hit[0, 0]].item()) if hit.numel() else 0.0


def _scatter(ids: Tensor, probs: Tensor, vocab: int | None) -> Tensor:
    if vocab is None:
        return probs
    full = torch.zeros(vocab, dtype=probs.dtype, device=probs.device)
    full[ids] = probs
    return full


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator).item())


def _draw(ids: Tensor, weights: Tensor, generator: torch.Generator | None) -> int:
    total = float(weights.sum().item())
    if total <= 0.0:  # p and q agreed exactly: any token of p is fine; take the most likely
        return int(ids[0].item())
    return int(ids[torch.multinomial(weights / total, 1, generator=generator)].item())
