"""What the engine is asked for and what it answers (the public data types), and its per-request state.

`SamplingParams` in, `StepOutput` / `Candidate` out (docs/architecture.md). `Request` and `Seq` are the engine's
own bookkeeping: a request owns one or more sequences (samples or beams), each decoding in one KV-cache slot.
Plain data: this module imports no torch at run time, so the server can read the types without loading it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model_backend.stops import TextStream

if TYPE_CHECKING:
    import torch

# guided decoding (guide.py): the most identifiers one request may list, and how long each may be
MAX_CHOICES = 5000
MAX_CHOICE_CHARS = 200
IDENTIFIER_CHARS = re.compile(r"\w*")


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 -> off
    n: int = 1  # candidates returned
    best_of: int | None = None  # generate best_of, return the n with the highest mean log-prob
    beam_width: int = 1  # > 1 -> beam search (length-normalised)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    token_healing: bool = True
    top_logprobs: int = 0  # > 0: each generated token also carries the log-probs of the most likely tokens
    # guided decoding (guide.py): the completion starts with one of these, then a non-identifier character or
    # its end; None: unconstrained
    allowed_identifiers: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be >= n ({self.n})")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.beam_width > 1 and self.n > self.beam_width:
            raise ValueError(f"n ({self.n}) must be <= beam_width ({self.beam_width})")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        if self.allowed_identifiers is not None:
            choices = self.allowed_identifiers
            if not choices or len(choices) > MAX_CHOICES:
                raise ValueError(f"allowed_identifiers must hold 1 to {MAX_CHOICES} names")
            if any(
                not isinstance(c, str) or len(c) > MAX_CHOICE_CHARS or not IDENTIFIER_CHARS.fullmatch(c)
                for c in choices
            ):
                raise ValueError(
                    f"allowed_identifiers: identifier characters only, at most {MAX_CHOICE_CHARS}"
                )

    @property
    def n_sequences(self) -> int:
        if self.beam_width > 1:
            return self.beam_width
        return self.best_of or self.n


@dataclass
class Candidate:
    index: int
    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    tokens: list[str]  # the text of each token
    mean_logprob: float  # over token_logprobs plus the end-of-sequence token when one ended it
    finish_reason: str  # "stop" | "length" | "cancelled"
    # per token: the top_logprobs most likely (text, log-prob) at that step, most likely first; None when not asked
    top_logprobs: list[list[tuple[str, float]]] | None = None


@dataclass
class StepOutput:
    request_id: str
    index: int
    delta: str  # new text (already stop-trimmed; may be "" while a stop string is pending)
    finished: bool
    candidate: Candidate | None  # set when finished


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually computed (the rest came from the prefix cache)
    prefix_cache_hits: int = 0
    prefix_tokens_reused: int = 0
    shared_prefills: int = 0  # sibling samples / beams that copied a prompt's KV instead of recomputing
    generated_tokens: int = 0
    decode_steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    spec_steps: int = 0  # decode steps that verified draft tokens (speculate.py)
    spec_proposed: int = 0  # draft tokens proposed
    spec_accepted: int = 0  # draft tokens the model agreed with: emitted without a forward of their own


@dataclass
class Seq:
    """One sample or beam: its generated tokens, its text, and the slot its KV lives in."""

    index: int
    slot: int
    out: TextStream
    pending: int | None = None  # sampled, not yet in the KV cache
    ids: list[int] = field(default_factory=list)  # generated (an ending EOS included)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per token, when top_logprobs > 0
    finish_reason: str | None = None
    ended_by_eos: bool = False
    guided: bool = False  # the request's allowed_identifiers still constrain this sequence's next token

    @property
    def live(self) -> bool:
        """Still decoding: a token is waiting to go into its slot."""
        return self.pending is not None and self.finish_reason is None

    def total(self) -> float:
        return sum(self.logprobs)

    def end(self, reason: str) -> None:
        if reason == "length":
            self.out.flush()
        self.finish_reason = reason
        self.pending = None


@dataclass
class Request:
    id: str
    params: SamplingParams
    prompt: list[int]
    heal: bytes  # the prompt bytes token healing removed; the first token(s) must regenerate them
    allowed: torch.Tensor | None  # the tokens that may come first (token healing), else None
    generator: torch.Generator
    guide: tuple[bytes, ...] | None = None  # params.allowed_identifiers as UTF-8 (guide.py)
    seqs: list[Seq] = field(default_factory=list)
    beams_finished: list[Seq] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    fresh: bool = True  # its first tokens were sampled during the current step (no decode step for it yet)
    prefilled: int = -1  # prompt tokens in its main slot's cache; -1 before admission; len(prompt) when done

    @property
    def streaming(self) -> bool:
        p = self.params
        return p.beam_width == 1 and (p.best_of is None or p.best_of == p.n)

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.prompt)

    def new_seq(self, index: int, slot: int) -> Seq:
        return Seq(index=index, slot=slot, out=TextStream(self.heal), guided=self.guide is not None)
