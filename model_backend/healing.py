"""Token healing: back off a prompt's last token(s) when the tokenizer could have merged them with what follows.

A prompt that ends in a bare "\\n" before an indent, or in half an identifier, ends in a token the model rarely
saw there. The last token is backed off when some longer token starts with its bytes; the one before it too (up
to MAX_HEAL_TOKENS) when a single token can still cover both. The first generated token must then start with all
the removed bytes (`options`); stops.TextStream cuts them from the output. Imports torch (the constraint is a
tensor of token ids) and nothing else of the engine.
"""

from __future__ import annotations

import bisect
from typing import Any

import torch

MAX_HEAL_TOKENS = 3  # token healing backs off at most this many prompt tokens


class TokenHealer:
    def __init__(self, tokenizer: Any, vocab_size: int, device: torch.device) -> None:
        """vocab_size: the ids the model can produce (the tokenizer's may be larger or smaller)."""
        self.tokenizer = tokenizer
        self.vocab_size = min(tokenizer.vocab_size, vocab_size)
        self.device = device
        specials = getattr(tokenizer, "special", {}) or {}
        bos = getattr(tokenizer, "bos_id", None)
        # tokens never backed off nor offered: end of sequence, BOS, FIM markers and other control tokens
        self.never: frozenset[int] = frozenset(
            {
                *(getattr(tokenizer, "eos_ids", ()) or ()),
                *specials.values(),
                *([bos] if bos is not None else []),
            }
        )
        self._index: tuple[list[bytes], list[int]] | None = None
        self._options: dict[bytes, torch.Tensor] = {}

    def _sorted_vocab(self) -> tuple[list[bytes], list[int]]:
        if self._index is None:
            every = self.tokenizer.all_token_bytes()[: self.vocab_size]
            pairs = sorted((b, i) for i, b in enumerate(every) if i not in self.never)
            self._index = ([b for b, _ in pairs], [i for _, i in pairs])
        return self._index

    def tokens_starting_with(self, prefix: bytes) -> list[int]:
        keys, ids = self._sorted_vocab()
        lo = bisect.bisect_left(keys, prefix)
        hi = lo
        while hi < len(keys) and keys[hi].startswith(prefix):
            hi += 1
        return ids[lo:hi]

    def heal(self, ids: list[int]) -> tuple[list[int], bytes, torch.Tensor | None]:
        """(the prompt without the backed-off tokens, their bytes, the tokens that may come first) -- or the
        prompt unchanged, b"" and None when no token is backed off."""
        if len(ids) < 2 or ids[-1] in self.never:
            return ids, b"", None
        removed = self.tokenizer.token_bytes(ids[-1])
        if not removed or len(self.tokens_starting_with(removed)) <= 1:
            return ids, b"", None
        k = 1
        while k < MAX_HEAL_TOKENS and len(ids) > k + 1 and ids[-k - 1] not in self.never:
            wider = self.tokenizer.token_bytes(ids[-k - 1]) + removed
            if not self.tokens_starting_with(wider):
                break
            removed, k = wider, k + 1
        return ids[:-k], removed, self.options(removed)

    def options(self, pending: bytes) -> torch.Tensor:
        """Tokens that may come next while `pending` healed bytes are not yet regenerated: those starting with
        all of them (a token that regenerates only a piece of them, e.g. ")" of a healed "):", puts the model off
        its own tokenization)."""
        opts = self._options.get(pending)
        if opts is None:
            opts = torch.tensor(self.tokens_starting_with(pending), device=self.device)
            self._options[pending] = opts
        return opts
