"""Guided decoding: a completion that must start with one of a few identifiers (`allowed_identifiers`).

The language server sends the identifiers only where it is sure of them (after `obj.` with obj's members fully
known: copilot_ls/constraints.py). The constraint: the generated text starts with one of the choices, followed by
a character that cannot continue an identifier (or the end of the text); after that the model is free.

`IdentifierGuide.allowed` gives the exact set of tokens that keep the text on that path, as a tensor of token
ids (the sampling step masks every other token, as for token healing). It is computed from the sorted vocabulary
(bisect on byte prefixes), not by scanning the vocabulary, and cached per (pending healed bytes, remainders), so
a constrained step costs well under a millisecond after the first. Token healing composes: while healed prompt
bytes are pending, a token must start with them and what follows them must keep the constraint.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

import torch

from model_backend.healing import TokenHealer

_CACHE = 256  # (pending, remainders) -> allowed ids, most recently used kept


def continues_identifier(byte: int) -> bool:
    """A byte that would extend an identifier: ASCII letters, digits, "_", and any non-ASCII byte (part of a
    character that may be a letter: counted as extending, so a choice is never followed by one)."""
    return byte >= 0x80 or chr(byte).isalnum() or byte == 0x5F


def state(choices: tuple[bytes, ...], text: bytes) -> str:
    """ "done" (text has passed a whole choice into a non-identifier byte: no more constraint), "open" (text is
    a prefix of some choice, the choice itself included) or "off" (neither: it left the path, e.g. cut by a stop
    string; no constraint)."""
    for c in choices:
        if len(text) > len(c) and text.startswith(c) and not continues_identifier(text[len(c)]):
            return "done"
    return "open" if any(c.startswith(text) for c in choices) else "off"


class IdentifierGuide:
    """The allowed-token sets of one engine's vocabulary (built lazily, on the first constrained request)."""

    def __init__(self, healer: TokenHealer, eos_ids: frozenset[int]) -> None:
        self.healer = healer
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=healer.device)
        self._by_bytes: dict[bytes, int] | None = None
        self._boundary: torch.Tensor | None = None  # tokens starting with a non-identifier byte, and EOS
        self._cache: OrderedDict[tuple[bytes, tuple[bytes, ...]], torch.Tensor] = OrderedDict()

    def _tables(self) -> tuple[dict[bytes, int], torch.Tensor]:
        if self._by_bytes is None:
            keys, ids = self.healer._sorted_vocab()
            self._by_bytes = {}
            for k, i in zip(keys, ids, strict=True):
                self._by_bytes.setdefault(k, i)
            boundary = [i for k, i in zip(keys, ids, strict=True) if k and not continues_identifier(k[0])]
            self._boundary = torch.cat(
                [torch.tensor(boundary, dtype=torch.long, device=self.healer.device), self.eos]
            )
        assert self._boundary is not None
        return self._by_bytes, self._boundary

    def _starting_with(self, prefix: bytes) -> list[tuple[bytes, int]]:
        keys, ids = self.healer._sorted_vocab()
        lo = bisect.bisect_left(keys, prefix)
        hi = lo
        while hi < len(keys) and keys[hi].startswith(prefix):
            hi += 1
        return list(zip(keys[lo:hi], ids[lo:hi], strict=True))

    def allowed(self, choices: tuple[bytes, ...], generated: bytes, pending: bytes) -> torch.Tensor | None:
        """Token ids that may come next, or None when the constraint no longer applies. `generated`: the text
        produced so far (after the healed bytes); `pending`: healed prompt bytes not yet regenerated."""
        if state(choices, generated) != "open":
            return None
        rest = tuple(sorted({c[len(generated) :] for c in choices if c.startswith(generated)}))
        key = (pending, rest)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        by_bytes, boundary = self._tables()
        out: set[int] = set()
        for r in rest:
            full = pending + r
            for k in range(max(1, len(pending)), len(full) + 1):  # a token that is a prefix of pending + r
                t = by_bytes.get(full[:k])
                if t is not None:
                    out.add(t)
            # a token that finishes the choice and goes on with a non-identifier byte
            if full:
                out.update(
                    t
                    for b, t in self._starting_with(full)
                    if len(b) > len(full) and not continues_identifier(b[len(full)])
                )
        ids = torch.tensor(sorted(out), dtype=torch.long, device=self.healer.device)
        if not pending and b"" in rest:  # a whole choice: any non-identifier byte may follow, or the end
            ids = torch.cat([ids, boundary])
        if ids.numel() == 0:
            return None  # nothing in the vocabulary can follow (cannot happen with byte-level tokens): free
        self._cache[key] = ids
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return ids
