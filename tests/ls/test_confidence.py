"""Confidence (copilot_ls.confidence), static checks (copilot_ls.static_checks), the gate and the settings:
pure functions, table-driven."""

from __future__ import annotations

import math

import pytest

from copilot_ls import confidence as conf
from copilot_ls import static_checks as sc
from copilot_ls.backend import RawCandidate, parse_completion
from copilot_ls.documents import Document
from copilot_ls.lsp.settings import SettingsError, from_dict
from copilot_ls.postprocess import postprocess


def snap_of(text: str, lang: str = "python"):
    return Document(f"file:///w/x.{'py' if lang == 'python' else 'js'}", lang, 1, text).snapshot()


# --- backend: per-token log-probs ----------------------------------------------------------------------------
def test_parse_completion_keeps_tokens_and_logprobs():
    body = {
        "choices": [
            {
                "text": "ab",
                "index": 0,
                "finish_reason": "stop",
                "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.5]},
            }
        ]
    }
    (c,) = parse_completion(body)
    assert c.tokens == ("a", "b") and c.token_logprobs == (-0.5, -1.5) and c.mean_logprob == -1.0


@pytest.mark.parametrize(
    "logprobs",
    [
        None,  # a server without logprobs
        {"token_logprobs": [-0.1]},  # no token texts
        {"tokens": ["a", "b"], "token_logprobs": [-0.1]},  # lengths differ
        {"tokens": ["a"], "token_logprobs": ["x"]},  # not numbers
    ],
)
def test_parse_completion_degrades_without_usable_token_data(logprobs):
    (c,) = parse_completion({"choices": [{"text": "ab", "logprobs": logprobs}]})
    assert c.tokens == () and c.token_logprobs == ()


def test_non_finite_token_logprob_counts_as_very_unlikely():
    (c,) = parse_completion(
        {"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [float("-inf")]}}]}
    )
    assert c.token_logprobs == (-30.0,)


# --- span mapping --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tokens, shown, want",
    [
        (["    ", "return", " x", "\n", "    ", "y"], "return x", [1, 2]),  # indentation and line 2 cut
        (["foo", "(", "a", ")", ")"], "foo(a)", [0, 1, 2, 3]),  # overlap trimmed: last ")" out
        (["x", " =", " 1"], "x = 1", [0, 1, 2]),  # all of it
        (["ab", "cd"], "bc", [0, 1]),  # a token partly kept counts
        ([], "x", []),
        (["x"], "", []),
    ],
)
def test_shown_span(tokens, shown, want):
    assert conf.shown_span(tokens, shown) == want


def test_span_logprobs_score_the_shown_text_only():
    cand = RawCandidate(
        "    return x\n    y = 2",
        -1.0,
        "stop",
        ("    ", "return", " x", "\n", "    y = 2"),
        (-0.1, -0.2, -0.3, -4.0, -5.0),
    )
    assert conf.span_logprobs(cand, "return x") == [-0.2, -0.3]
    f = conf.features(cand, "return x")
    assert f is not None and math.isclose(f.mean_logprob, -0.25) and f.min_logprob == -0.3 and f.tokens == 2
    assert conf.features(RawCandidate("x", -0.5), "x") is None  # no token data: no confidence


# --- the score -----------------------------------------------------------------------------------------------
BASE = conf.Features(
    mean_logprob=-0.3, min_logprob=-1.0, tokens=8, syntax_errors=0, static_issues=0, agreement=1.0
)


@pytest.mark.parametrize(
    "change, lower",
    [
        ({"mean_logprob": -1.5}, True),
        ({"min_logprob": -6.0}, True),
        ({"syntax_errors": 1}, True),
        ({"static_issues": 2}, True),
        ({"agreement": 0.25}, True),
        ({"mean_logprob": -0.05}, False),
    ],
)
def test_score_moves_with_each_feature(change, lower):
    from dataclasses import replace

    base, other = conf.score(BASE), conf.score(replace(BASE, **change))
    assert 0 < other < 1 and ((other < base) if lower else (other > base))


def test_agreement():
    assert conf.agreement(["a", " a", "b", "c"]) == [0.5, 0.5, 0.25, 0.25]
    assert conf.agreement([]) == []


@pytest.mark.parametrize(
    "c, gate, shown",
    [
        (0.2, 0.0, True),  # gate off
        (0.2, 0.3, False),
        (0.3, 0.3, True),  # at the threshold: shown
        (0.9, 0.3, True),
        (None, 0.9, True),  # no log-probs from this server: never hidden
    ],
)
def test_gate(c, gate, shown):
    assert conf.passes(c, gate) is shown


# --- static checks -------------------------------------------------------------------------------------------
SRC = """import os
from pkg import helper

class Point:
    def __init__(self, x):
        self.x = x

    def norm(self):
        return abs(self.x)

class Child(Base):
    pass

def f(values):
    total = 0
"""


@pytest.mark.parametrize(
    "prefix, text, want",
    [
        ("    ", "return helper(values)", []),  # imported and parameter names
        ("    ", "return frobnicate(values)", ["frobnicate"]),  # defined nowhere
        ("    ", "for item in values: total += item", []),  # bound by the text itself
        ("    ", "result = [v for v in values if v]", []),
        ("    ", "g = lambda a, b: a + b", []),
        ("", "def g_force(frame, body=None, *rest): return frame(body, *rest)", []),  # parameters
        ("    ", "return sorted(values, key=len, reverse=True)", []),  # builtins, keyword arguments
        ("    ", "return os.path.joinx(values)", []),  # attributes are not names
        ("    ", "print('undefined_in_string')  # nor in a comment", []),
        ("    pri", "nt(values)", []),  # continues the word at the cursor
        ("    ", "return missing + missing", ["missing"]),  # once each
    ],
)
def test_undefined_names(prefix, text, want):
    assert sc.undefined_names(snap_of(SRC), prefix, text) == want


def test_undefined_names_asks_the_workspace_index():
    assert (
        sc.undefined_names(snap_of(SRC), "    ", "return elsewhere()", known=lambda n: n == "elsewhere") == []
    )
    assert sc.undefined_names(snap_of("x = 1\n", "javascript"), "", "nope()") == []  # Python only


@pytest.mark.parametrize(
    "line, prefix, text, want",
    [
        (14, "    ", "return Point.norm", []),
        (14, "    ", "return Point.length", ["Point.length"]),
        (14, "    ", "return Child.anything", []),  # has a base class: members unknown
        (8, "        ", "return self.x + self.y", ["Point.y"]),  # self inside Point
        (8, "        ", "return self.__dict__", []),
        (14, "    ", "return os.nothing", []),  # not a class of this file
    ],
)
def test_unknown_members(line, prefix, text, want):
    assert sc.unknown_members(snap_of(SRC), line, prefix, text) == want


KW_SRC = """import os


def area(width, height=1, *, unit="m"):
    return width * height


def loose(a, **options):
    return a


def positional(a, b, /, c):
    return a + b + c


@functools.cache
def decorated(a):
    return a


class Box:
    def __init__(self, size, label=""):
        self.size = size


class Empty:
    pass


@dataclass
class Point:
    x: int


"""


@pytest.mark.parametrize(
    "prefix, text, want",
    [
        ("x = ", "area(2, height=3, unit='cm')", []),
        ("x = ", "area(2, depth=3)", ["area(depth=)"]),
        ("x = area(2, ", "heigth=3)", ["area(heigth=)"]),  # the call began before the cursor
        ("x = area(2, width=", "3)", []),  # the keyword is in the prefix: not the suggestion's
        ("x = ", "loose(1, anything=2)", []),  # **options
        ("x = ", "positional(1, a=2, c=3)", ["positional(a=)"]),  # a is positional-only
        ("x = ", "decorated(b=1)", []),  # a decorator may change the signature
        ("x = ", "Box(size=1, label='a')", []),
        ("x = ", "Box(colour='red')", ["Box(colour=)"]),
        ("x = ", "Empty(a=1)", ["Empty(a=)"]),
        ("x = ", "Point(x=1)", []),  # a decorated class: @dataclass writes its __init__
        ("x = ", "area(2, height=max(a, key=len))", []),  # max's keyword, not area's
        ("x = ", "area(lambda depth=1: depth)", []),  # a lambda's default, not a keyword argument
        ("x = ", "os.path.join(a, b=1)", []),  # not a function of this file
        ("x = ", "area(2, height == 3)", []),  # a comparison
        ("x = ", "unknown(depth=3)", []),
    ],
)
def test_wrong_keywords(prefix, text, want):
    assert sc.wrong_keywords(snap_of(KW_SRC), prefix, text) == want


def test_wrong_keyword_lowers_confidence_and_rank():
    snap = snap_of(KW_SRC + "x = ")
    line, col = KW_SRC.count("\n"), 4
    wrong = cand("area(2, depth=3)\n", [-0.01])
    right = cand("area(2, height=3)\n", [-0.05])
    out = postprocess([wrong, right], snap, line, col, multiline=False)
    assert [s.text for s in out] == ["area(2, height=3)", "area(2, depth=3)"]
    assert out[1].issues == ("unknown keyword 'area(depth=)'",)


# --- through postprocess -------------------------------------------------------------------------------------
def cand(text: str, lps: list[float]) -> RawCandidate:
    toks = [text[i : i + 3] for i in range(0, len(text), 3)]
    lps = (lps * len(toks))[: len(toks)]
    return RawCandidate(text, sum(lps) / len(lps), "stop", tuple(toks), tuple(lps))


def test_postprocess_gives_every_suggestion_a_confidence_and_ranks_by_it():
    snap = snap_of(SRC + "    ")
    line, col = SRC.count("\n"), 4
    confident = cand("return total\n", [-0.05])
    unsure = cand("return frobnicate(values)\n", [-0.01])  # likelier tokens, but an undefined name
    out = postprocess([unsure, confident], snap, line, col, multiline=False)
    assert [s.text for s in out] == ["return total", "return frobnicate(values)"]
    assert out[1].issues == ("undefined name 'frobnicate'",)
    assert all(s.confidence is not None and 0 < s.confidence < 1 for s in out)
    assert out[0].confidence > out[1].confidence


def test_postprocess_without_token_data_keeps_the_mean_logprob_ranking():
    snap = snap_of("x = ")
    out = postprocess([RawCandidate("1", -0.9), RawCandidate("2", -0.1)], snap, 0, 4, multiline=False)
    assert [s.text for s in out] == ["2", "1"] and all(s.confidence is None for s in out)


def test_single_suggestion_syntax_feature_is_the_line_bracket_balance():
    snap = snap_of("def f(x):\n    ")
    (open_,) = postprocess([cand("return (x +", [-0.1])], snap, 1, 4, multiline=False)
    (closed,) = postprocess([cand("return (x +)", [-0.1])], snap, 1, 4, multiline=False)
    assert open_.confidence < closed.confidence


# --- settings ------------------------------------------------------------------------------------------------
def test_min_confidence_setting():
    assert from_dict({"minConfidence": 0.4}).min_confidence == 0.4
    assert from_dict({"copilot-ls": {"min_confidence": 1}}).min_confidence == 1
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(SettingsError, match="min_confidence"):
            from_dict({"minConfidence": bad})
