"""Accepted / partially accepted / rejected bookkeeping. Local only: counted in memory, shown by the
`copilot-ls.status` command; nothing leaves the machine.

Each item the LS returns carries an id. Editors report what happened to it through `workspace/executeCommand`
(`copilot-ls.accepted`, `copilot-ls.partiallyAccepted`, `copilot-ls.rejected`).
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class ShownItem:
    id: str
    language_id: str
    text: str


class UnknownItem(KeyError):
    pass


class Stats:
    def __init__(self, remember: int = 1000) -> None:
        self._ids = itertools.count(1)
        self._items: OrderedDict[str, ShownItem] = OrderedDict()  # recent shown items, for the reports
        self._remember = remember
        self._partial: dict[str, int] = {}  # item id -> characters accepted so far
        self.counts: Counter[str] = Counter()  # shown, accepted, partial, rejected
        self.by_language: dict[str, Counter[str]] = {}
        self.accepted_chars = 0
        self.shown_chars = 0

    def _bump(self, language_id: str, event: str) -> None:
        self.counts[event] += 1
        self.by_language.setdefault(language_id, Counter())[event] += 1

    def shown(self, language_id: str, text: str) -> str:
        """Register an item about to be returned; its id goes into the item's command."""
        item = ShownItem(f"c{next(self._ids)}", language_id, text)
        self._items[item.id] = item
        while len(self._items) > self._remember:
            old, _ = self._items.popitem(last=False)
            self._partial.pop(old, None)
        self._bump(language_id, "shown")
        self.shown_chars += len(text)
        return item.id

    def _pop(self, item_id: str) -> ShownItem:
        item = self._items.pop(item_id, None)
        if item is None:
            raise UnknownItem(item_id)
        return item

    def accepted(self, item_id: str) -> None:
        item = self._pop(item_id)
        self._bump(item.language_id, "accepted")
        # the rest after a partial accept (word by word, then Tab): its first part is already counted
        self.accepted_chars += len(item.text) - self._partial.pop(item_id, 0)

    def partially_accepted(self, item_id: str, accepted_length: int) -> None:
        """`accepted_length`: characters of the item's text the user took (e.g. word by word)."""
        item = self._items.get(item_id)
        if item is None:
            raise UnknownItem(item_id)
        before = self._partial.get(item_id, 0)
        if accepted_length >= len(item.text):
            self.accepted(item_id)
            return
        if before == 0:  # editors report the cumulative length after each word; count the item once
            self._bump(item.language_id, "partial")
        self.accepted_chars += max(0, accepted_length - before)
        self._partial[item_id] = max(before, accepted_length)

    def rejected(self, item_id: str) -> None:
        item = self._pop(item_id)
        if self._partial.pop(item_id, None):
            return  # partly taken, then the rest dismissed: already counted as partial
        self._bump(item.language_id, "rejected")

    def summary(self) -> dict:
        shown = self.counts["shown"]
        return {
            "shown": shown,
            "accepted": self.counts["accepted"],
            "partially_accepted": self.counts["partial"],
            "rejected": self.counts["rejected"],
            "acceptance_rate": round(self.counts["accepted"] / shown, 4) if shown else None,
            "accepted_chars": self.accepted_chars,
            "by_language": {lang: dict(c) for lang, c in sorted(self.by_language.items())},
        }
