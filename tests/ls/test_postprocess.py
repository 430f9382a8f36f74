"""Post-processing rules, table-driven, in Python and JavaScript (plus a few other languages)."""

from __future__ import annotations

import pytest

from copilot_ls.backend import RawCandidate
from copilot_ls.documents import Document
from copilot_ls.postprocess import Suggestion, detect_indent_unit, postprocess

CURSOR = "█"


def doc_at(lang: str, source: str):
    """A snapshot of ``source`` (with one CURSOR mark removed) and the cursor's (line, col)."""
    before, after = source.split(CURSOR)
    line = before.count("\n")
    col = len(before) - (before.rfind("\n") + 1)
    ext = {"python": "py", "javascript": "js", "typescript": "ts", "go": "go", "rust": "rs"}.get(lang, "txt")
    doc = Document(f"file:///w/x.{ext}", lang, 1, before + after)
    return doc.snapshot(), line, col


def run(lang: str, source: str, raws: list[str] | str, *, multiline: bool = True, max_lines: int = 10):
    snap, line, col = doc_at(lang, source)
    raws = [raws] if isinstance(raws, str) else raws
    cands = [RawCandidate(t, -0.1 * i) for i, t in enumerate(raws)]
    return postprocess(cands, snap, line, col, multiline=multiline, max_lines=max_lines), snap


def applied(snap, s: Suggestion) -> str:
    a, b = snap.offset(*s.start), snap.offset(*s.end)
    return snap.text[:a] + s.text + snap.text[b:]


# (id, language, source with cursor, raw completion, multiline, expected insert text or None = dropped)
CASES = [
    # --- empty / whitespace / repetitive
    ("empty", "python", "x = █\n", "", False, None),
    ("whitespace-only", "python", "def f():\n    █\n", "   \n  \n", True, None),
    ("repetitive-short-pattern", "python", "x = █\n", "abababababababab", False, None),
    ("repetitive-calls", "javascript", "const x = █;\n", "foo(foo(foo(foo(foo(foo(foo(", False, None),
    (
        "repeated-line-kept-once",
        "python",
        "def f():\n    █\n",
        "x = 1\n    x = 1\n    x = 1\n    x = 1\n    x = 1",
        True,
        "x = 1",
    ),
    ("normal-text-kept", "python", "x = █\n", "compute(1, 2)", False, "compute(1, 2)"),
    # --- single-line vs multi-line
    ("single-line-first-line", "python", "x = █\n", "1\ny = 2\n", False, "1"),
    ("single-line-newline-first", "python", "x = 1█\n", "\ny = 2", False, None),
    (
        "single-line-blank-line-skips-newline",
        "python",
        "def f():\n    x = 1\n█\n",
        "\n    return x\n",
        False,
        "    return x",
    ),
    ("trailing-ws-stripped", "python", "x = █\n", "1   \n\n", False, "1"),
    # --- scope end: dedent (Python)
    (
        "py-dedent-ends-body",
        "python",
        'def f(x):\n    """Double."""\n█',
        "    y = x * 2\n    return y\n\n\ndef g():\n    pass\n",
        True,
        "    y = x * 2\n    return y",
    ),
    (
        "py-dedent-nested-method",
        "python",
        "class A:\n    def f(self):\n        █\n",
        "return 1\n\n    def g(self):\n        return 2\n",
        True,
        "return 1",
    ),
    (
        "py-end-of-header-line",
        "python",
        "def f(x):█",
        "\n    return x\ndef g():\n    pass",
        True,
        "\n    return x",
    ),
    (
        "py-inner-blocks-kept",
        "python",
        "def f(xs):\n    █\n",
        "for x in xs:\n        if x:\n            return x\n    return None",
        True,
        "for x in xs:\n        if x:\n            return x\n    return None",
    ),
    # --- scope end: unbalanced closer (JS)
    (
        "js-closer-already-below",
        "javascript",
        "function f(a) {\n  █\n}\n",
        "return a + 1;\n}\n\nfunction g() {\n  return 2;\n}",
        True,
        "return a + 1;",
    ),
    (
        "js-closer-missing-is-kept",
        "javascript",
        "function f(a) {\n  █",
        "return a + 1;\n}\n\nfunction g() {}\n",
        True,
        "return a + 1;\n}",
    ),
    (
        "js-balanced-inner-braces",
        "javascript",
        "function f(a) {\n  █\n}\n",
        "if (a) {\n    return 1;\n  }\n  return 0;\n}",
        True,
        "if (a) {\n    return 1;\n  }\n  return 0;",
    ),
    (
        "js-braces-in-strings-ignored",
        "javascript",
        "function f() {\n  █\n}\n",
        "return '}';\n}",
        True,
        "return '}';",
    ),
    (
        "js-closer-in-comment-ignored",
        "javascript",
        "function f() {\n  █\n}\n",
        "return 1; // }\n}",
        True,
        "return 1; // }",
    ),
    # --- overlap with the text after the cursor
    ("py-overlap-paren", "python", "print(█)\n", "x, y)", False, "x, y"),
    ("js-overlap-paren-semicolon", "javascript", "foo(█);\n", "a, b);", False, "a, b"),
    ("py-overlap-partial", "python", "f(g(█), 2)\n", "x)", False, "x"),
    ("py-rewrites-closers", "python", "if f(█)\n", "x):", False, "x):"),
    # --- repeats the following lines
    ("repeats-next-line", "python", "def f():\n    █\n    return 1\n", "return 1", True, None),
    (
        "cut-where-repeat-starts",
        "python",
        "def f():\n    █\n    return x\n",
        "x = 2\n    return x",
        True,
        "x = 2",
    ),
    (
        "js-cut-at-repeated-closer",
        "javascript",
        "if (a) {\n  █\n}\nfoo();\n",
        "go();\n}\nfoo();",
        True,
        "go();",
    ),
    # --- indentation
    ("indent-duplicate-removed", "python", "def f():\n    █\n", "    return 1", True, "return 1"),
    (
        "indent-deeper-kept",
        "python",
        "def f():\n    if x:\n    █\n",
        "        return 1",
        True,
        "    return 1",
    ),
    (
        "indent-shorter-dropped",
        "python",
        "def f():\n    if x:\n        █\n",
        "    return 1",
        True,
        "return 1",
    ),
    (
        "go-tabs",
        "go",
        "package m\n\nfunc f() {\n\tif x {\n\t\ty()\n\t}\n\t█\n}\n",
        "for {\n    z()\n\t}",
        True,
        "for {\n\tz()\n\t}",
    ),
]


@pytest.mark.parametrize(
    ("lang", "source", "raw", "multiline", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rules(lang: str, source: str, raw: str, multiline: bool, expected: str | None) -> None:
    out, _ = run(lang, source, raw, multiline=multiline)
    if expected is None:
        assert out == []
    else:
        assert [s.text for s in out] == [expected]


def test_overlap_widens_range_over_rewritten_closers() -> None:
    out, snap = run("python", "if f(█)\n", "x):", multiline=False)
    (s,) = out
    assert s.start == (0, 5) and s.end == (0, 6)
    assert applied(snap, s) == "if f(x):\n"


def test_whitespace_after_cursor_is_covered() -> None:
    out, snap = run("python", "def f():\n█    \n", "    return 1")
    (s,) = out
    assert applied(snap, s) == "def f():\n    return 1\n"


def test_truncated_and_dangling_lines_are_dropped() -> None:
    src = 'def f(xs):\n    """Doc."""\n█'
    body = "    total = 0\n    for x in xs:\n        total += x\n    while total > 10:\n        total -= 1\n    retu"
    snap, line, col = doc_at("python", src)
    out = postprocess([RawCandidate(body, -0.1, "length")], snap, line, col, multiline=True)
    assert (
        out[0].text
        == "    total = 0\n    for x in xs:\n        total += x\n    while total > 10:\n        total -= 1"
    )
    # max_lines cuts right after a block header: the header goes too
    out = postprocess([RawCandidate(body, -0.1, "stop")], snap, line, col, multiline=True, max_lines=4)
    assert out[0].text == "    total = 0\n    for x in xs:\n        total += x"
    # JS: an opening brace left at the end
    snap, line, col = doc_at("javascript", "function f(a) {\n  █")
    out = postprocess([RawCandidate("let s = 0;\n  if (a) {", -0.1, "stop")], snap, line, col, multiline=True)
    assert out[0].text == "let s = 0;"
    # ordinary endings are not "dangling"
    snap, line, col = doc_at("python", 'def f(command):\n    """Doc."""\n█')
    out = postprocess(
        [RawCandidate("    x = 1\n    run(command\n    return brand", -0.1)], snap, line, col, multiline=True
    )
    assert out[0].text.endswith("return brand")
    # single-line answers cut by the limit are kept (a partial line is still a useful start)
    snap, line, col = doc_at("python", "x = █\n")
    out = postprocess([RawCandidate("compute(1, 2, ", -0.1, "length")], snap, line, col, multiline=False)
    assert out[0].text == "compute(1, 2,"


def test_max_lines() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(30))
    out, _ = run("python", 'def f():\n    """Doc."""\n█', body, max_lines=5)
    assert out[0].text.count("\n") == 4


def test_rank_by_logprob_and_dedupe() -> None:
    snap, line, col = doc_at("python", "x = █\n")
    cands = [
        RawCandidate("1", -2.0),
        RawCandidate("2", -0.5),
        RawCandidate(
            "1\n", -0.1
        ),  # same insert as the first after cleaning: kept once, with the better score
        RawCandidate("3", -1.0),
    ]
    out = postprocess(cands, snap, line, col, multiline=False)
    assert [s.text for s in out] == ["1", "2", "3"]
    assert out[0].mean_logprob == -0.1
    assert [s.sources for s in out] == [(2, 0), (1,), (3,)]  # which raw candidates show each text


def test_syntax_check_prefers_candidates_without_new_errors() -> None:
    # Python: the most likely candidate leaves an unclosed bracket -> ranked after the clean one.
    out, _ = run("python", "def f(x):\n    █\n", ["return (x +", "return x + 1"])
    assert [s.text for s in out] == ["return x + 1", "return (x +"]
    # JavaScript: same with a broken expression.
    out, _ = run("javascript", "function f(x) {\n  █\n}\n", ["return x +;", "return x + 1;"])
    assert [s.text for s in out] == ["return x + 1;", "return x +;"]


def test_existing_errors_elsewhere_do_not_count_against_a_candidate() -> None:
    src = "def broken(:\n    pass\n\ndef f(x):\n    █\n"
    out, _ = run("python", src, ["return x * 2", "return x ** ("])
    assert [s.text for s in out] == ["return x * 2", "return x ** ("]


def test_crlf_document_gets_crlf_suggestions() -> None:
    out, snap = run("python", 'def f(x):\r\n    """Doc."""\r\n█', "    y = x\n    return y\n")
    assert out[0].text == "    y = x\r\n    return y"


def test_cursor_positions_are_code_points_after_emoji() -> None:
    out, snap = run("python", "s = '😀' + f(█)\n", "x)", multiline=False)
    (s,) = out
    assert s.start == (0, 12) and s.text == "x"
    assert applied(snap, s) == "s = '😀' + f(x)\n"


def test_text_only_language() -> None:
    out, _ = run("plaintext", "Dear █\n", "Sir,\nthank you", multiline=False)
    assert [s.text for s in out] == ["Sir,"]


def test_no_candidates_and_cursor_past_the_end() -> None:
    snap, _, _ = doc_at("python", "x = 1█\n")
    assert postprocess([], snap, 0, 5, multiline=False) == []
    out = postprocess([RawCandidate(" + 2")], snap, 99, 99, multiline=False)
    assert out[0].start == (1, 0)


def test_detect_indent_unit() -> None:
    assert detect_indent_unit(["def f():", "  if x:", "    y"]) == "  "
    assert detect_indent_unit(["func f() {", "\tif x {", "\t\ty()"]) == "\t"
    assert detect_indent_unit(["x = 1"]) == "    "


def test_no_reparse_without_two_distinct_suggestions(monkeypatch) -> None:
    """The syntax check only orders distinct suggestions: one candidate (or copies of one) skips the reparse."""
    from copilot_ls import postprocess as pp

    made: list[int] = []
    real = pp._SyntaxChecker

    def counting(snap):
        made.append(1)
        return real(snap)

    monkeypatch.setattr(pp, "_SyntaxChecker", counting)
    out, _ = run("python", "def f(x):\n    █\n", ["return (x +"])
    assert [s.text for s in out] == ["return (x +"] and not made
    out, _ = run("python", "def f(x):\n    █\n", ["return (x +", "return (x +"])
    assert [s.text for s in out] == ["return (x +"] and not made
    out, _ = run("python", "def f(x):\n    █\n", ["return (x +", "return x + 1"])
    assert [s.text for s in out] == ["return x + 1", "return (x +"] and made


def test_overlap_is_not_quadratic_in_the_text_after_the_cursor() -> None:
    """A long line (minified code, a data literal) with the cursor near its start: the overlap check compared
    every prefix of the text after the cursor (O(n^2); a 5 MB line blocked the server for many minutes)."""
    import time

    rest = "1, " * 200_000 + "]"
    snap = Document("file:///w/x.py", "python", 1, "x = [" + rest + "\n").snapshot()
    t = time.perf_counter()
    (s,) = postprocess([RawCandidate("0, 1")], snap, 0, 5, multiline=False)
    assert time.perf_counter() - t < 0.5
    assert (s.text, s.start, s.end) == ("0, ", (0, 5), (0, 5))  # the overlap ("1") is still trimmed


# What chat and instruct models wrap around code never reaches the editor in a code file (rule 0).
NON_CODE_CASES = [
    (
        "fence-around-body",
        "python",
        "def f(x):\n    █\n",
        "```python\n    return x + 1\n```",
        True,
        "return x + 1",
    ),
    (
        "fence-after-newline",
        "python",
        "def f(x):█\n",
        "\n```python\n    return x + 1\n```\n",
        True,
        "\n    return x + 1",
    ),
    ("fence-tilde", "javascript", "function f(x) {\n  █\n}\n", "~~~js\n  return x;\n~~~", True, "return x;"),
    (
        "prose-then-fence",
        "python",
        "def f(x):\n    █\n",
        "Here is the code:\n\n```python\n    return x * 2\n```\nThis function doubles x.",
        True,
        "return x * 2",
    ),
    ("path-header-echo", "python", "def f(n):\n    █\n", "# Path: fib.py", True, None),
    (
        "path-header-then-code",
        "python",
        "def f(n):\n    █\n",
        "# Path: fib.py\n    return n",
        True,
        "return n",
    ),
    (
        "js-path-header",
        "javascript",
        "function f(x) {\n  █\n}\n",
        "// Path: a.js\nreturn x;",
        True,
        "return x;",
    ),
    (
        "sure-prose",
        "python",
        "def f(x):\n    █\n",
        "Sure! The function returns x.\n    return x",
        True,
        "return x",
    ),
    (
        "closing-fence-then-prose",
        "python",
        "def f(x):\n    █\n",
        "    y = x + 1\n    return y\n```\n\nThis adds one.",
        True,
        "y = x + 1\n    return y",
    ),
    ("single-line-fence-only", "python", "x = █\n", "```", False, None),
    (
        "template-token-ends",
        "python",
        "x = █\n",
        "compute(1)<|im_end|>\n<|im_start|>user",
        False,
        "compute(1)",
    ),
    ("inst-token-ends", "python", "def f():\n    █\n", "return 1\n[/INST] Done.", True, "return 1"),
    ("eot-token-ends", "javascript", "const a = █\n", "b + c;<|eot_id|>", False, "b + c;"),
    # kept: a template token inside a string literal, code that starts like prose, markdown inside a docstring
    ("token-in-string-kept", "python", "EOS = █\n", '"<|im_end|>"', False, '"<|im_end|>"'),
    (
        "ok-assignment-kept",
        "python",
        "def f():\n    █\n",
        "ok = check()\n    return ok",
        True,
        "ok = check()\n    return ok",
    ),
    (
        "this-member-kept",
        "javascript",
        "class A {\n  f() {\n    █\n  }\n}\n",
        "this.x = 1;",
        True,
        "this.x = 1;",
    ),
    (
        "fence-in-docstring-kept",
        "python",
        'def f():\n    """Example:\n\n    █\n    """\n',
        "```python",
        False,
        "```python",
    ),
    ("fence-in-comment-kept", "rust", "/// █\nfn f() {}\n", "```rust", False, "```rust"),
]


@pytest.mark.parametrize(
    ("lang", "source", "raw", "multiline", "expected"),
    [c[1:] for c in NON_CODE_CASES],
    ids=[c[0] for c in NON_CODE_CASES],
)
def test_non_code_never_reaches_the_editor(
    lang: str, source: str, raw: str, multiline: bool, expected
) -> None:
    out, _ = run(lang, source, raw, multiline=multiline)
    if expected is None:
        assert out == []
    else:
        assert [s.text for s in out] == [expected]


def test_plain_text_documents_keep_markdown() -> None:
    out, _ = run("plaintext", "Notes:\n█\n", "```python\nx = 1\n```", multiline=True)
    assert [s.text for s in out] == ["```python\nx = 1\n```"]
