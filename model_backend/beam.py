"""Beam search: one step of expanding a request's beams, and when to stop.

`expand` scores every continuation of the alive beams (sampling.beam_candidates), rebuilds each kept
hypothesis's text, and sorts them into finished ones (end of sequence, a stop string, max_tokens, the context)
and the best `beam_width` still alive. The engine moves the alive ones' KV into the request's slots
(slots.SlotCache.reorder). Imports torch, sampling and the engine's sequence types only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from model_backend import sampling
from model_backend.sequences import Request, Seq


def expand(
    req: Request,
    lps: torch.Tensor,
    beams: list[Seq],
    *,
    tops: list[Any] | None,
    eos_ids: frozenset[int],
    token_bytes: Callable[[int], bytes],
    at_limit: bool,
) -> tuple[list[Seq], list[int]]:
    """The hypotheses still alive after one step and the slot of each one's parent; finished ones go to
    `req.beams_finished`. lps: [beams, vocab] log-probs of the next token; tops: per beam, its top_logprobs
    (or None); at_limit: the context is full after this token."""
    p = req.params
    first = all(not b.ids for b in beams)
    totals = torch.tensor([b.total() for b in beams], device=lps.device)
    cands = sampling.beam_candidates(lps, totals, p.beam_width, req.allowed if first else None)
    alive: list[Seq] = []
    parents: list[int] = []
    for parent, token, logprob in cands:
        src = beams[parent]
        hyp = req.new_seq(0, src.slot)
        hyp.ids, hyp.logprobs = src.ids + [token], src.logprobs + [logprob]
        if tops is not None:
            hyp.top = src.top + [tops[parent]]
        for t in hyp.ids:
            if t in eos_ids:
                hyp.ended_by_eos = True
                break
            hyp.out.push(token_bytes(t))
        stopped = hyp.out.cut_at_stop(p.stop)
        if hyp.ended_by_eos or stopped:
            hyp.finish_reason = "stop"
            req.beams_finished.append(hyp)
        elif len(hyp.ids) >= p.max_tokens or at_limit:
            hyp.end("length")
            req.beams_finished.append(hyp)
        else:
            alive.append(hyp)
            parents.append(src.slot)
            if len(alive) == p.beam_width:
                break
    return alive, parents


def done(req: Request) -> bool:
    """Enough finished hypotheses that no alive beam can beat (sampling.beam_done)."""

    def hyps(seqs: list[Seq]) -> list[sampling.Hypothesis]:
        return [sampling.Hypothesis(s.ids, s.logprobs) for s in seqs]

    return sampling.beam_done(hyps(req.beams_finished), hyps(req.seqs), req.params.beam_width)
