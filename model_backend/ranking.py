"""Ranking candidates: the n with the highest mean token log-prob (OpenAI's best_of; the Codex heuristic).

The one ranking the engine (best_of and beam search in `generate`) and the server (best_of over HTTP) share.
Standard library only, so the server can import it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Ranked(Protocol):
    index: int
    mean_logprob: float


C = TypeVar("C", bound=Ranked)


def best_n(candidates: Sequence[C], n: int) -> list[C]:
    """The n candidates with the highest mean_logprob, best first; ties keep the lower index first."""
    return sorted(candidates, key=lambda c: (-c.mean_logprob, c.index))[:n]
