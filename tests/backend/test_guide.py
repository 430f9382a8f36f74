"""Guided decoding in the engine (model_backend/guide.py): the exact allowed-token sets, and that the default
model's completions obey `allowed_identifiers` with greedy, sampled, beam and speculative decoding."""

from __future__ import annotations

import time

import pytest

from model_backend.guide import continues_identifier, state
from model_backend.sequences import SamplingParams

CHOICES = (b"norm", b"name", b"x")


def test_state_follows_the_text():
    assert state(CHOICES, b"") == "open"
    assert state(CHOICES, b"no") == "open"
    assert state(CHOICES, b"norm") == "open"  # may still end, or go on with a non-identifier character
    assert state(CHOICES, b"norm(") == "done"
    assert state(CHOICES, b"x ") == "done"
    assert state(CHOICES, b"normal") == "off"
    assert state(CHOICES, b"xy") == "off"
    assert state((b"",), b"") == "open"
    assert state((b"",), b".") == "done"
    assert (
        not continues_identifier(ord("(")) and continues_identifier(ord("_")) and continues_identifier(0xC3)
    )


def _naive_allowed(guide, choices, generated, pending, eos):
    """Every token id whose bytes keep the text on a choice's path (a whole-vocabulary scan)."""
    keys, ids = guide.healer._sorted_vocab()
    out = set()
    for b, t in zip(keys, ids, strict=True):
        if not b or not b.startswith(pending):  # token healing: a token starts with all the pending bytes
            continue
        if state(choices, generated + b[len(pending) :]) in ("open", "done"):  # done: a choice ended in it
            out.add(t)
    if not pending and generated in choices:
        out |= set(eos)
    return out


@pytest.mark.parametrize(
    "choices,generated,pending",
    [
        ((b"norm", b"name", b"x"), b"", b""),
        ((b"norm", b"name", b"x"), b"n", b""),
        ((b"norm", b"name", b"x"), b"norm", b""),
        ((b"", b"s"), b"", b""),
        ((b"art", b"op"), b"", b"st"),  # token healing: a token must start with the healed "st"
        ((b"append", b"add"), b"", b"."),
    ],
)
def test_allowed_is_exactly_the_tokens_that_stay_on_a_path(default_engine, choices, generated, pending):
    guide = default_engine.guide
    got = set(guide.allowed(choices, generated, pending).tolist())
    want = _naive_allowed(guide, choices, generated, pending, default_engine.eos_ids)
    # a token past a finished choice into a non-identifier byte, or still inside a choice: both allowed
    assert got == want
    assert got


def test_no_constraint_once_the_identifier_is_done(default_engine):
    assert default_engine.guide.allowed((b"norm",), b"norm(", b"") is None
    assert default_engine.guide.allowed((b"norm",), b"other", b"") is None


PROMPT = (
    "class Shape:\n    def __init__(self, w, h):\n        self.qwidth = w\n        self.qheight = h\n\n"
    "    def area(self):\n        return self."
)
MEMBERS = ("qwidth", "qheight", "area", "__init__")


def _first_identifier(text: str) -> str:
    out = ""
    for ch in text:
        if not (ch.isalnum() or ch == "_"):
            break
        out += ch
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.0),
        dict(temperature=1.2, n=4, seed=3),
        dict(temperature=0.0, beam_width=3, n=3),
    ],
)
def test_default_model_obeys_allowed_identifiers(default_engine, kw):
    params = SamplingParams(max_tokens=10, stop=["\n"], allowed_identifiers=MEMBERS, **kw)
    for c in default_engine.generate(PROMPT, params):
        assert _first_identifier(c.text) in MEMBERS, c.text


def test_guided_with_speculation_and_healing(default_engine):
    default_engine.set_speculation("ngram")
    try:
        # the prompt ends in half an identifier ("self.qw"): token healing backs it off; the guide composes
        c = default_engine.generate(
            PROMPT + "qw",
            SamplingParams(max_tokens=10, temperature=0.0, stop=["\n"], allowed_identifiers=("idth",)),
        )[0]
        assert c.text.startswith("idth") and _first_identifier(c.text) == "idth", c.text
        free = default_engine.generate(PROMPT, SamplingParams(max_tokens=16, temperature=0.0, stop=["\n"]))[0]
        again = default_engine.generate(
            PROMPT, SamplingParams(max_tokens=16, temperature=0.0, stop=["\n"], allowed_identifiers=MEMBERS)
        )[0]
        if (
            _first_identifier(free.text) in MEMBERS
        ):  # the model picked a member anyway: the mask changed nothing
            assert again.text == free.text
    finally:
        default_engine.set_speculation("off")


def test_bad_allowed_identifiers_are_errors():
    for bad in ((), ("a b",), ("x" * 201,)):
        with pytest.raises(ValueError, match="allowed_identifiers"):
            SamplingParams(allowed_identifiers=bad).validate()


def test_guided_steps_cost_little(default_engine):
    """The mask's own cost: building a choice set's tensor once, then cached (well under a decode step)."""
    guide = default_engine.guide
    names = tuple(f"member_{i}".encode() for i in range(200))
    t0 = time.perf_counter()
    guide.allowed(names, b"", b"")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        guide.allowed(names, b"", b"")
    cached = (time.perf_counter() - t0) / 100
    assert first < 0.5 and cached < 0.005, (first, cached)
