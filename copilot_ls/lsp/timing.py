"""Timing logic of the editor session, free of LSP types so it can be tested with a fake clock.

- `Debouncer`: how long to wait after the last keystroke before calling the backend (adaptive to typing speed).
- `Supersession`: a newer request for the same document cancels the older one (and so its HTTP call).
- `TypedAhead`: the user typed the first characters of the suggestion shown -> the rest, without the backend.
- `Backoff`: after a backend failure, stop calling it for 1, 2, 4 ... 30 s; one message per outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Clock = Callable[[], float]


class Debouncer:
    """Per-document keystroke times -> how long a completion request should still wait.

    The wait is measured from the last change, not from the request: a user who paused long ago gets an answer
    at once. Adaptive: while someone types faster than `base`, the wait follows their rhythm (1.5x their recent
    inter-keystroke interval, between `min_ms` and `base`), so a fast typist is not answered mid-word, and a slow
    typist does not pay the full default after every key.
    """

    def __init__(
        self,
        base_ms: float = 100,
        *,
        min_ms: float = 25,
        adaptive: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.base_ms = base_ms
        self.min_ms = min_ms
        self.adaptive = adaptive
        self.clock = clock
        self._last: dict[str, float] = {}
        self._interval_ms: dict[str, float] = {}

    def changed(self, key: str) -> None:
        now = self.clock()
        if key in self._last:
            gap = (now - self._last[key]) * 1000
            if gap < 2000:  # pauses longer than 2 s are not typing rhythm
                prev = self._interval_ms.get(key, gap)
                self._interval_ms[key] = 0.7 * prev + 0.3 * gap
        self._last[key] = now

    def delay_ms(self, key: str) -> float:
        """Milliseconds to wait now (0 when the last change is old enough)."""
        if key not in self._last or self.base_ms <= 0:
            return 0.0
        target = self.base_ms
        if self.adaptive and key in self._interval_ms:
            target = min(self.base_ms, max(self.min_ms, 1.5 * self._interval_ms[key]))
        elapsed = (self.clock() - self._last[key]) * 1000
        return max(0.0, target - elapsed)

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
        self._interval_ms.pop(key, None)


class Superseded(Exception):
    """The request was replaced by a newer one for the same key."""


class Supersession:
    """At most one running job per key: starting a new one cancels the previous job's task."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task] = {}
        self.superseded = 0

    async def run(self, key: str, job: Callable[[], Awaitable[T]]) -> T:
        """Run `job` as the newest for `key`; raises Superseded if a newer run replaces it.

        Cancelling the caller (e.g. `$/cancelRequest`) cancels the job too and re-raises CancelledError.
        """
        old = self._running.get(key)
        if old is not None and not old.done():
            old.cancel()
            self.superseded += 1
        task = asyncio.ensure_future(job())
        self._running[key] = task
        try:
            return await task
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if caller is not None and caller.cancelling():
                raise
            raise Superseded() from None
        finally:
            if self._running.get(key) is task:
                del self._running[key]

    def cancel(self, key: str) -> None:
        task = self._running.pop(key, None)
        if task is not None:
            task.cancel()


@dataclass(frozen=True)
class Shown:
    """A suggestion as shown: the document text it was computed on and what it inserts after the cursor."""

    text: str  # document text when shown
    cursor: int  # code-point offset of the cursor
    ghost: str  # the text shown after the cursor
    end: int  # code-point offset where the replaced range ended (>= cursor)
    extra: object = None  # caller data (e.g. the suggestion's mean log-prob)


class TypedAhead:
    """Remembers the suggestions shown per document and answers when the user types into one of them."""

    def __init__(self) -> None:
        self._shown: dict[str, list[Shown]] = {}
        self.hits = 0

    def remember(self, key: str, shown: list[Shown]) -> None:
        if shown:
            self._shown[key] = shown
        else:
            self._shown.pop(key, None)

    def forget(self, key: str) -> None:
        self._shown.pop(key, None)

    def lookup(self, key: str, text: str, cursor: int) -> list[tuple[Shown, str]]:
        """Suggestions still valid after the user typed the text between the old and the new cursor.

        Returns (shown, rest) pairs: `rest` is what remains to insert at `cursor`; the replaced range ends at
        `shown.end + typed` in the new text. Empty when the edit was anything but typing into the suggestion.
        """
        out = []
        for s in self._shown.get(key, ()):
            typed = cursor - s.cursor
            if typed <= 0 or typed >= len(s.ghost) or len(text) != len(s.text) + typed:
                continue
            if not s.ghost.startswith(text[s.cursor : cursor]):
                continue
            if text[cursor:] != s.text[s.cursor :] or text[: s.cursor] != s.text[: s.cursor]:
                continue
            out.append((s, s.ghost[typed:]))
        if out:
            self.hits += 1
        return out


class Backoff:
    """Failure bookkeeping: after k consecutive failures, wait min(base * 2**(k-1), cap) before trying again."""

    def __init__(self, base_s: float = 1.0, cap_s: float = 30.0, clock: Clock = time.monotonic) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.clock = clock
        self.failures = 0
        self._next_try = 0.0
        self.last_error: str | None = None

    def ready(self) -> bool:
        return self.clock() >= self._next_try

    def retry_in(self) -> float:
        return max(0.0, self._next_try - self.clock())

    def failed(self, reason: str) -> bool:
        """Record a failure; True when this starts a new outage (the moment to tell the user, once)."""
        first = self.failures == 0
        self.failures += 1
        self.last_error = reason
        # the exponent is bounded so that a long outage cannot overflow the float
        self._next_try = self.clock() + min(self.base_s * 2 ** min(self.failures - 1, 60), self.cap_s)
        return first

    def succeeded(self) -> bool:
        """Record a success; True when this ends an outage."""
        recovered = self.failures > 0
        self.failures = 0
        self._next_try = 0.0
        self.last_error = None
        return recovered
