"""The editor session: the open documents, the settings, and what one completion request goes through before and
after `pipeline.complete` (typed-ahead reuse, debounce, supersession, backoff, error handling, counters).

Free of LSP types: positions are (line, code-point column), items are plain `Item`s; the server maps both.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from copilot_ls import pipeline
from copilot_ls.backend import BackendError
from copilot_ls.context.edits import EditHistory
from copilot_ls.documents import DocumentStore, LineSpan, Snapshot
from copilot_ls.lru import LRUCache
from copilot_ls.lsp.settings import SettingsError, from_dict
from copilot_ls.lsp.stats import Stats
from copilot_ls.lsp.supervisor import REFUSED, Say, Supervisor
from copilot_ls.lsp.timing import Debouncer, Shown, Superseded, Supersession, TypedAhead
from copilot_ls.settings import Settings

log = logging.getLogger("copilot_ls")

Pos = tuple[int, int]  # (line, code-point column)


@dataclass(frozen=True)
class Item:
    """One suggestion to show: its bookkeeping id, the text, and the (line, column) range it replaces."""

    id: str
    text: str
    start: Pos
    end: Pos


@dataclass
class Waits:
    """The time one request spent waiting (debounce, backend startup, backend), which is not our overhead.
    `lost`: the request failed or was dropped, so its time says nothing about overhead."""

    t0: float = field(default_factory=time.perf_counter)
    ms: float = 0.0
    lost: bool = False

    def add(self, ms: float) -> None:
        self.ms += ms


class Session:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.store = DocumentStore()
        self.edits = EditHistory()  # recent edit regions of the open documents (a context source)
        self.settings = Settings()
        self.stats = Stats()
        self.debouncer = Debouncer(self.settings.debounce_ms)
        self.supersession = Supersession()
        self.typed = TypedAhead()
        self.cache: pipeline.RawCache = LRUCache(self.settings.cache_size)
        self.backend = Supervisor(lambda: self.settings, say)
        self.counters = {
            "requests": 0,
            "items": 0,
            "backend_calls": 0,
            "cache_hits": 0,
            "typed_ahead": 0,
            "superseded": 0,
            "cancelled": 0,
            "stale": 0,
            "errors": 0,
            "refused": 0,
            "below_confidence": 0,
        }
        self.overhead_ms: deque[float] = deque(maxlen=1000)  # per request: handler time minus waiting

    # -- settings and documents ----------------------------------------------------------------------------
    def apply_settings(self, data: Any) -> None:
        """Merge settings from the editor; an invalid update is reported and ignored as a whole."""
        try:
            new = from_dict(data, base=self.settings)
        except SettingsError as exc:
            self.say(logging.ERROR, f"ignored invalid settings: {exc}", show=True)
            return
        old, self.settings = self.settings, new
        self.debouncer.base_ms = new.debounce_ms
        self.cache.capacity = new.cache_size
        if self.backend.settings_changed(old, new):
            self.cache.clear()

    def changed(self, uri: str) -> None:
        self.debouncer.changed(uri)

    def edited(self, uri: str, span: LineSpan | None) -> None:
        """One change of a document's lines (from `Document.apply_change`), for the recent-edits history."""
        if span is not None:
            self.edits.record(uri, *span)

    def close(self, uri: str) -> None:
        self.supersession.cancel(uri)
        self.store.close(uri)
        self.edits.forget(uri)
        self.typed.forget(uri)
        self.debouncer.forget(uri)

    # -- completion ----------------------------------------------------------------------------------------
    @contextmanager
    def request(self) -> Iterator[Waits]:
        """Count one completion request and record its overhead: its whole time minus its waits."""
        self.counters["requests"] += 1
        waits = Waits()
        try:
            yield waits
        finally:
            if not waits.lost:
                self.overhead_ms.append(max(0.0, (time.perf_counter() - waits.t0) * 1000 - waits.ms))

    async def complete(self, snap: Snapshot, pos: Pos, explicit: bool, waits: Waits) -> list[Item] | None:
        """The items at `pos` of `snap`: the rest of a suggestion the user is typing into, else the pipeline's
        (after the debounce; None when superseded, stale, backing off or failed)."""
        line, col = pos
        cursor = snap.offset(line, col)
        # an explicit request wants the ranked alternatives, not the rest of the suggestion typed into
        wants_more = explicit and self.settings.explicit_n > self.settings.n
        hits = [] if wants_more else self.typed.lookup(snap.uri, snap.text, cursor)
        if hits:
            self.counters["typed_ahead"] += 1
            typed = cursor - hits[0][0].cursor
            shown = [Shown(snap.text, cursor, rest, s.end + typed, s.extra) for s, rest in hits]
            self.typed.remember(snap.uri, shown)
            return self._items(snap, [(s.ghost, pos, snap.position(s.end)) for s in shown])
        try:
            result = await self.supersession.run(snap.uri, lambda: self._compute(snap, pos, explicit, waits))
        except Superseded:
            waits.lost = True
            self.counters["superseded"] += 1
            return None
        except asyncio.CancelledError:
            waits.lost = True
            self.counters["cancelled"] += 1
            raise
        except Exception as exc:  # a bug must cost one completion, never the server
            self.counters["errors"] += 1
            self.say(logging.ERROR, f"completion failed: {exc!r}\n{traceback.format_exc()}")
            return None
        if result is None:
            return None
        entries, shown = [], []
        for s in result.suggestions:
            entries.append((s.text, s.start, s.end))
            start, end = snap.offset(*s.start), snap.offset(*s.end)
            if start <= cursor <= end and s.text.startswith(snap.text[start:cursor]):
                shown.append(Shown(snap.text, cursor, s.text[cursor - start :], end, s.mean_logprob))
        self.typed.remember(snap.uri, shown)
        return self._items(snap, entries)

    async def _compute(
        self, snap: Snapshot, pos: Pos, explicit: bool, waits: Waits
    ) -> pipeline.CompletionResult | None:
        """Debounce, then the pipeline through a ready backend; failures go to the supervisor."""
        delay = 0.0 if explicit else self.debouncer.delay_ms(snap.uri)
        if delay > 0:
            t = time.perf_counter()
            await asyncio.sleep(delay / 1000)
            waits.add((time.perf_counter() - t) * 1000)
            doc = self.store.get(snap.uri)
            if doc is None or doc.version != snap.version:
                self.counters["stale"] += 1
                return None
        if not self.backend.backoff.ready():
            return None
        try:
            t = time.perf_counter()
            client = await self.backend.ready()
            waits.add((time.perf_counter() - t) * 1000)
            calls = client.requests
            result = await pipeline.complete(
                snap,
                *pos,
                client=client,
                settings=self.settings_for(explicit),
                others=self.store.snapshots(exclude=snap.uri),
                cache=self.cache,
                edits=self.edits.regions(),
            )
        except BackendError as exc:
            waits.lost = True  # time lost to a failure is not overhead: not recorded
            if exc.status in REFUSED:  # this request was refused; the backend itself works
                self.counters["refused"] += 1
                self.backend.refused(exc)
            else:
                self.backend.failed(exc)
            return None
        waits.add(result.timings.get("backend_ms", 0.0))
        self.counters["backend_calls"] += client.requests - calls
        self.counters["cache_hits"] += result.cached
        self.counters["below_confidence"] += result.hidden
        self.backend.succeeded(client)
        return result

    def settings_for(self, explicit: bool) -> Settings:
        """An explicit request (manual trigger, cycling) asks for explicitCandidates candidates, ranked."""
        s = self.settings
        return replace(s, n=s.explicit_n) if explicit and s.explicit_n > s.n else s

    def _items(self, snap: Snapshot, entries: list[tuple[str, Pos, Pos]]) -> list[Item]:
        items = [
            Item(self.stats.shown(snap.language_id, text), text, start, end) for text, start, end in entries
        ]
        self.counters["items"] += len(items)
        return items

    def status(self) -> dict:
        """`copilot-ls.status` without the parts only the server knows (version, position encoding)."""
        return {
            "backend": self.backend.status(),
            "documents": len(self.store),
            "counters": dict(self.counters, cache_entries=len(self.cache)),
            "overhead_ms": percentiles(self.overhead_ms),
            "stats": self.stats.summary(),
        }


def percentiles(values) -> dict:
    s = sorted(values)
    if not s:
        return {"n": 0}
    pick = lambda q: round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 3)  # noqa: E731
    return {"n": len(s), "p50": pick(0.5), "p99": pick(0.99), "max": round(s[-1], 3)}
