"""KV-cache slots and the prefix cache across requests.

The model's KV cache has `n` slots, more than can decode at once (max_batch). A finished request's slot stays
idle with its tokens cached, so the prefix cache holds more sequences (open files) than max_batch; a request
that needs a slot takes the idle one sharing the longest prefix with its prompt, or evicts the least recently
used idle one. `tokens[s]` is always exactly what slot s's KV holds: this module is the one that calls the
model's slot API (setup_caches, copy_slot, reorder_slots) and records what each forward wrote (`extend`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import torch

CACHE_SLOTS_PER_BATCH = 4  # default KV-cache slots = this x max_batch (prefix cache across requests)
CACHE_MEMORY_FRACTION = 0.5  # the default never lets a full KV cache exceed this share of device memory


def default_cache_slots(max_batch: int, bytes_per_slot: int, device: torch.device) -> int:
    """CACHE_SLOTS_PER_BATCH x max_batch, fewer (never below max_batch) when the full cache would take more
    than CACHE_MEMORY_FRACTION of the device's memory (CUDA: free memory now; CPU: physical RAM)."""
    want = CACHE_SLOTS_PER_BATCH * max_batch
    try:
        if device.type == "cuda":
            budget = torch.cuda.mem_get_info(device)[0]
        else:
            budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return want
    fit = int(budget * CACHE_MEMORY_FRACTION) // max(1, bytes_per_slot)
    return max(max_batch, min(want, fit))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Placement:
    """Where a request runs: its slots (the main one first) and the prompt tokens already in the main one."""

    slots: list[int]
    reused: int


class SlotCache:
    def __init__(self, model: Any, n: int, max_seq_len: int, dtype: torch.dtype) -> None:
        self.model = model
        self.n = n
        model.setup_caches(n, max_seq_len, dtype=dtype)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.owner: list[str | None] = [None] * n
        self._used: list[int] = [0] * n  # clock reading of the last release / copy, for LRU eviction
        self._clock = itertools.count(1)

    def busy(self) -> int:
        return self.n - self.owner.count(None)

    def place(self, owner: str, prompt: list[int], n_seqs: int) -> Placement:
        """Claim `n_seqs` idle slots for a prompt and put the longest cached prefix of it (at most all but its
        last token, whose logits start the generation) into the first one.

        The prefix comes from the idle slot sharing the longest prefix with the prompt. The request prefills in
        that slot when the prompt continues most of what it holds (the next keystroke: the slot holds the
        previous prompt + its completion); when the shared part is shorter than what would be overwritten (two
        files that only begin alike), it prefills in the least recently used idle slot after copying the shared
        prefix there, so the other sequence stays cached (if enough idle slots remain for all its samples).
        Sibling samples / beams take the next least recently used idle slots."""
        free = [s for s in range(self.n) if self.owner[s] is None]
        best, best_len = None, 0
        for s in free:
            c = common_prefix(self.tokens[s], prompt)
            if c > best_len:
                best, best_len = s, c
        lru = sorted(free, key=lambda s: self._used[s])
        copy_from = None
        if best is None:
            best = lru[0]
        elif 2 * best_len < len(self.tokens[best]) and lru[0] != best and len(free) > n_seqs:
            best, copy_from = lru[0], best  # copy_from stays idle: the samples still need n slots
        slots = [best] + [s for s in lru if s != best and s != copy_from][: n_seqs - 1]
        for s in slots:
            self.owner[s] = owner
        reuse = min(best_len, len(prompt) - 1)
        if copy_from is not None and reuse > 0:  # the shared prefix moves to this request's slot
            self.model.copy_slot(copy_from, best, reuse)
            self._used[copy_from] = next(self._clock)
        self.tokens[best] = list(prompt[:reuse])
        for s in slots[1:]:
            self.tokens[s] = []
        return Placement(slots, reuse)

    def release(self, owner: str, slots: list[int]) -> None:
        """The slots go idle, their tokens stay cached."""
        for s in slots:
            if self.owner[s] == owner:
                self.owner[s] = None
                self._used[s] = next(self._clock)

    def extend(self, slot: int, tokens: list[int]) -> None:
        """A forward wrote `tokens` into `slot` after what it holds."""
        self.tokens[slot].extend(tokens)

    def copy(self, src: int, dst: int) -> None:
        """Slot dst gets all of src's KV (a prompt shared by sibling samples)."""
        self.model.copy_slot(src, dst, len(self.tokens[src]))
        self.tokens[dst] = list(self.tokens[src])

    def reorder(self, src: list[int], dst: list[int]) -> None:
        """dst[i] gets src[i]'s KV (beam search keeps the best continuations); all hold the same length."""
        if not src:
            return
        length = len(self.tokens[src[0]])
        self.model.reorder_slots(src, dst, length)
        held = [list(self.tokens[s]) for s in src]
        for s, toks in zip(dst, held, strict=True):
            self.tokens[s] = toks
