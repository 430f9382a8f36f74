"""Timing logic of the LS with a fake clock: debounce, supersession, LRU, typed-ahead reuse, backoff; and the
settings / stats bookkeeping that the server wires to LSP."""

from __future__ import annotations

import asyncio

import pytest

from copilot_ls.lru import LRUCache
from copilot_ls.lsp.settings import SettingsError, from_dict
from copilot_ls.lsp.stats import Stats, UnknownItem
from copilot_ls.lsp.timing import Backoff, Debouncer, Shown, Superseded, Supersession, TypedAhead
from copilot_ls.settings import DEFAULT_BACKEND_URL, Settings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, ms: float) -> None:
        self.t += ms / 1000


def test_lru_evicts_least_recently_used():
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)  # evicts b
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    assert (c.hits, c.misses, len(c)) == (3, 1, 2)
    zero: LRUCache[str, int] = LRUCache(0)
    zero.put("a", 1)
    assert zero.get("a") is None


def test_debounce_waits_from_the_last_keystroke():
    clock = Clock()
    d = Debouncer(100, adaptive=False, clock=clock)
    assert d.delay_ms("u") == 0  # never changed: nothing to wait for
    d.changed("u")
    assert d.delay_ms("u") == pytest.approx(100)
    clock.advance(60)
    assert d.delay_ms("u") == pytest.approx(40)
    clock.advance(500)  # the user paused long ago: answer at once
    assert d.delay_ms("u") == 0
    d.forget("u")
    assert d.delay_ms("u") == 0


def test_adaptive_debounce_follows_typing_rhythm():
    clock = Clock()
    d = Debouncer(100, min_ms=25, clock=clock)
    for _ in range(10):  # a fast typist: a key every 30 ms
        d.changed("u")
        clock.advance(30)
    d.changed("u")
    assert 25 <= d.delay_ms("u") <= 50  # ~1.5 x 30 ms, not the full 100 ms
    for _ in range(10):  # slow keys never push the wait above the configured base
        clock.advance(400)
        d.changed("u")
    assert d.delay_ms("u") == pytest.approx(100)


async def test_supersession_cancels_the_older_job_and_its_await():
    s = Supersession()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow():
        started.set()
        try:
            await asyncio.sleep(10)  # stands for the HTTP call
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "old"

    async def fast():
        return "new"

    old = asyncio.ensure_future(s.run("doc", slow))
    await started.wait()
    assert await s.run("doc", fast) == "new"
    with pytest.raises(Superseded):
        await old
    assert cancelled.is_set() and s.superseded == 1
    # another document is not affected
    assert await s.run("other", fast) == "new"


async def test_cancelling_the_caller_cancels_the_job():
    s = Supersession()
    cancelled = asyncio.Event()

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.ensure_future(s.run("doc", slow))
    await asyncio.sleep(0.01)
    caller.cancel()  # what $/cancelRequest does to the handler task
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled.is_set()


def test_typed_ahead_reuses_the_rest_of_the_shown_suggestion():
    t = TypedAhead()
    text = "x = common_prefix(\nprint()\n"
    cursor = len("x = common_prefix(")
    t.remember("u", [Shown(text, cursor, '"abc", "abd")', cursor, -0.1)])
    typed = text[:cursor] + '"ab' + text[cursor:]
    hits = t.lookup("u", typed, cursor + 3)
    assert [rest for _, rest in hits] == ['c", "abd")']
    # typing something else, typing at another place, or deleting -> no reuse
    assert t.lookup("u", text[:cursor] + '"x' + text[cursor:], cursor + 2) == []
    assert t.lookup("u", '"a' + text, 2) == []
    assert t.lookup("u", text[: cursor - 1] + text[cursor:], cursor - 1) == []
    # having typed all of it leaves nothing to reuse
    assert t.lookup("u", text[:cursor] + '"abc", "abd")' + text[cursor:], cursor + 13) == []
    assert t.hits == 1
    t.forget("u")
    assert t.lookup("u", typed, cursor + 3) == []


def test_backoff_doubles_and_reports_each_outage_once():
    clock = Clock()
    b = Backoff(base_s=1, cap_s=4, clock=clock)
    assert b.ready()
    assert b.failed("down") is True  # the first failure of an outage: tell the user
    assert not b.ready() and b.retry_in() == pytest.approx(1)
    clock.advance(1000)
    assert b.ready()
    assert b.failed("down") is False  # same outage: no second message
    assert b.retry_in() == pytest.approx(2)
    b.failed("down")
    b.failed("down")
    assert b.retry_in() == pytest.approx(4)  # capped
    assert b.succeeded() is True and b.ready() and b.succeeded() is False


def test_backoff_survives_a_long_outage():
    """2 ** (failures - 1) as a float overflowed at the 1025th consecutive failure (a backend down for hours while
    the user types): OverflowError from every failure, which then never pushed the next try back."""
    clock = Clock()
    b = Backoff(base_s=1, cap_s=30, clock=clock)
    for _ in range(5000):
        b.failed("down")
        clock.advance(30)
    assert b.failures == 5000 and b.retry_in() == pytest.approx(30, abs=0.1)


def test_settings_from_camel_case_sections_and_errors():
    s = from_dict(
        {
            "copilot-ls": {
                "backendUrl": "http://127.0.0.1:9/",
                "apiKey": "k",
                "debounceMs": 50,
                "maxLines": 3,
                "languages": {"markdown": False},
                "somethingNew": 1,
            }
        }
    )
    assert (s.backend_url, s.api_key, s.debounce_ms, s.max_lines) == ("http://127.0.0.1:9", "k", 50, 3)
    assert s.enabled_for("python") and not s.enabled_for("markdown")
    assert not from_dict({"enabled": False}).enabled_for("python")
    assert from_dict({"languages": {"*": False, "go": True}}, base=s).enabled_for("go")
    with pytest.raises(SettingsError, match="debounce_ms"):
        from_dict({"debounceMs": "fast"})
    with pytest.raises(SettingsError, match="backend_url"):
        from_dict({"backendUrl": "127.0.0.1:8765"})
    with pytest.raises(SettingsError, match="'n'"):
        from_dict({"n": 0})
    assert Settings().should_autostart() and Settings().backend_url == DEFAULT_BACKEND_URL
    assert not from_dict({"backendUrl": "http://127.0.0.1:9"}).should_autostart()
    assert from_dict({"backendUrl": "http://127.0.0.1:9", "autostart": True}).should_autostart()
    assert not from_dict({"backendUrl": "http://example.com:9", "autostart": True}).should_autostart()
    assert not from_dict({"backendUrl": "https://127.0.0.1:9", "autostart": True}).should_autostart()


def test_stats_accept_partial_reject():
    st = Stats()
    a, b, c = st.shown("python", "abcdef"), st.shown("python", "xyz"), st.shown("go", "q")
    st.accepted(a)
    st.partially_accepted(b, 1)
    st.partially_accepted(b, 2)  # cumulative length, same item: counted once
    st.rejected(b)  # dismissed after the partial accept: stays partial
    st.rejected(c)
    with pytest.raises(UnknownItem):
        st.accepted(a)  # reported twice
    summary = st.summary()
    assert (summary["shown"], summary["accepted"], summary["partially_accepted"], summary["rejected"]) == (
        3,
        1,
        1,
        1,
    )
    assert summary["accepted_chars"] == 6 + 2
    assert summary["by_language"]["go"] == {"shown": 1, "rejected": 1}


def test_stats_partial_then_accept_counts_each_character_once():
    st = Stats()
    a, b = st.shown("python", "abcdef"), st.shown("python", "xyz")
    st.partially_accepted(a, 2)  # the next word
    st.accepted(a)  # then Tab takes the rest
    st.partially_accepted(b, 1)
    st.partially_accepted(b, 3)  # word by word up to the whole item
    summary = st.summary()
    assert summary["accepted"] == 2 and summary["partially_accepted"] == 2
    assert summary["accepted_chars"] == 6 + 3
