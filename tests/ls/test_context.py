"""The basic context builder: windows within the budget, FIM formatting, multi-line decision, stop strings."""

from __future__ import annotations

import pytest

from copilot_ls.context import (
    FimTemplate,
    PromptBudget,
    build_prompt,
    estimate_tokens,
    is_multiline,
    stop_strings,
)
from copilot_ls.context.budget import fit_head, fit_tail
from copilot_ls.context.fim import FAMILIES, template_for
from copilot_ls.documents import Document
from copilot_ls.languages import language_for

CURSOR = "█"


def snap_at(lang: str, source: str, path: str = "/w/pkg/mod.py"):
    before, after = source.split(CURSOR)
    line = before.count("\n")
    col = len(before) - (before.rfind("\n") + 1)
    return Document("file://" + path, lang, 1, before + after).snapshot(), line, col


MULTILINE_CASES = [
    ("py-after-docstring-col0", "python", 'def f(x):\n    """Doc."""\n█', True),
    ("py-after-docstring-indented", "python", 'def f(x):\n    """Doc."""\n    █', True),
    ("py-empty-body", "python", "def f(x):\n    █", True),
    ("py-empty-body-before-next-def", "python", "def f(x):\n    █\n\ndef g():\n    pass\n", True),
    ("py-end-of-header", "python", "def f(x):█", True),
    ("py-class-body", "python", "class A:\n    █\n", True),
    ("py-body-not-empty", "python", "def f(x):\n    █\n    return 1\n", False),
    ("py-after-statement", "python", "def f(x):\n    y = 1\n    █\n", False),
    ("py-dict-colon", "python", 'x = {"a":\n█', False),
    ("py-slice-colon", "python", "y = x[1:█", False),
    ("py-mid-call", "python", "assert common_prefix(█", False),
    ("py-text-after-cursor", "python", "def f(x):\n    return █x\n", False),
    ("js-empty-function", "javascript", "function f(a) {\n  █\n}\n", True),
    ("js-unclosed-function", "javascript", "function f(a) {\n  █", True),
    ("js-nonempty-block", "javascript", "function f(a) {\n  x();\n  █\n}\n", False),
    ("js-arrow-body", "javascript", "const f = (a) => {\n  █\n};\n", True),
    ("js-mid-line", "javascript", "const x = █;\n", False),
    ("go-empty-func", "go", "package m\n\nfunc f() int {\n\t█\n}\n", True),
    ("rust-empty-fn", "rust", "fn f() -> i32 {\n    █\n}\n", True),
    ("text-only-brace", "plaintext", "foo {\n  █\n}\n", True),
    ("empty-document", "python", "█", True),
]


@pytest.mark.parametrize(
    ("lang", "source", "expected"), [c[1:] for c in MULTILINE_CASES], ids=[c[0] for c in MULTILINE_CASES]
)
def test_multiline_decision(lang: str, source: str, expected: bool) -> None:
    snap, line, col = snap_at(lang, source)
    assert is_multiline(snap, line, col) is expected


def test_prefix_only_prompt_without_fim() -> None:
    src = "import os\n\n\ndef f(x):\n    █\n\ndef g():\n    return 2\n"
    snap, line, col = snap_at("python", src)
    p = build_prompt(snap, line, col)
    # the indentation before the cursor stays out of the prompt; the model writes the whole line
    assert p.prompt.endswith("def f(x):\n")
    assert "return 2" not in p.prompt  # nothing after the cursor goes into a prefix-only prompt
    assert p.prompt.startswith("# Path: mod.py (python)\n")
    assert p.prefix == "import os\n\n\ndef f(x):\n    "
    assert p.suffix.startswith("\n\ndef g():")  # raw suffix kept for post-processing / --explain
    assert p.multiline and "\ndef " in p.stop and "\n" not in p.stop
    assert [s.kind for s in p.sources] == ["header", "prefix"]
    assert p.sources[1].start_line == 0 and p.sources[1].end_line == line


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fim_formatting_per_family(family: str) -> None:
    tpl = FAMILIES[family]
    snap, line, col = snap_at("javascript", "function f(a) {\n  return █;\n}\n", path="/w/a.js")
    p = build_prompt(snap, line, col, fim=tpl)
    body = "// Path: a.js (javascript)\nfunction f(a) {\n  return "
    assert p.prompt == tpl.format(body, ";\n}\n")
    assert p.suffix == ";\n}\n"
    assert not p.multiline and p.stop[0] == "\n"
    assert tpl.middle in p.stop or tpl.middle.strip() in p.stop
    if family == "codellama":
        assert p.prompt == f"<PRE> {body} <SUF>;\n}}\n <MID>"
    if family == "qwen":
        assert p.prompt == f"<|fim_prefix|>{body}<|fim_suffix|>;\n}}\n<|fim_middle|>"


def test_template_chosen_from_token_strings() -> None:
    assert template_for(None) is None
    assert template_for(
        {"prefix": "<fim_prefix>", "suffix": "<fim_suffix>", "middle": "<fim_middle>"}
    ).family == ("starcoder")
    qwen = template_for(
        {"prefix": "<|fim_prefix|>", "suffix": "<|fim_suffix|>", "middle": "<|fim_middle|>", "file_sep": None}
    )
    assert qwen.family == "qwen" and qwen.file_sep == "<|file_sep|>"
    other = template_for({"prefix": "<A>", "suffix": "<B>", "middle": "<C>"})
    assert other.family == "psm" and other.format("x", "y") == "<A>x<B>y<C>"
    assert template_for({"prefix": "<A>", "suffix": None, "middle": "<C>"}) is None
    # A template built from bare token strings (as the pipeline does) gets its family's layout in the prompt.
    snap, line, col = snap_at("python", "x = █\n")
    bare = FimTemplate(prefix="<PRE>", suffix="<SUF>", middle="<MID>")
    assert build_prompt(snap, line, col, fim=bare).prompt.startswith("<PRE> ")


def test_windows_cut_at_line_boundaries_within_budget() -> None:
    lines = [f"value_{i} = compute({i}, 'x')" for i in range(2000)]
    text = "\n".join(lines) + "\n"
    tail = fit_tail(text, 100, estimate_tokens)
    assert estimate_tokens(tail) <= 100 and tail.endswith("\n") and tail.split("\n")[0] in lines
    head = fit_head(text, 100, estimate_tokens)
    assert estimate_tokens(head) <= 100 and head.endswith("\n") and head.startswith("value_0 = ")
    assert fit_tail(text, 0, estimate_tokens) == "" and fit_tail("", 10, estimate_tokens) == ""
    # a cursor line longer than the budget is cut by characters
    assert estimate_tokens(fit_tail("x" * 1000, 10, estimate_tokens)) <= 10


@pytest.mark.parametrize("fim", [None, FAMILIES["starcoder"], FAMILIES["codellama"]])
@pytest.mark.parametrize("max_tokens", [16, 64, 300, 1536])
def test_budget_never_exceeded_with_estimate(fim, max_tokens: int) -> None:
    body = "".join(f"def f{i}(x):\n    '''名前 😀 {i}'''\n    return x * {i}\n\n" for i in range(400))
    src = body[: len(body) // 2] + CURSOR + body[len(body) // 2 :]
    snap, line, col = snap_at("python", src)
    p = build_prompt(snap, line, col, fim=fim, budget=PromptBudget(max_prompt_tokens=max_tokens))
    assert estimate_tokens(p.prompt) <= max_tokens
    assert p.prefix and snap.text[: snap.offset(line, col)].endswith(p.prefix)
    if fim is not None and max_tokens >= 300:
        assert p.suffix and snap.text[snap.offset(line, col) :].startswith(p.suffix)


def test_budget_with_a_counter_that_disagrees_with_the_parts() -> None:
    """A counter whose count of a whole is larger than the sum of its parts (merges across seams go the other
    way in BPE, but the builder must not rely on either): the final check still holds the budget."""

    def count(s: str) -> int:
        return len(s) // 2 + s.count("\n") * 3 + 5

    src = "x = 1\n" * 500 + "y = █\n" + "z = 2\n" * 500
    snap, line, col = snap_at("python", src)
    for fim in (None, FAMILIES["qwen"]):
        p = build_prompt(
            snap, line, col, fim=fim, count_tokens=count, budget=PromptBudget(max_prompt_tokens=200)
        )
        assert count(p.prompt) <= 200
        assert p.prompt.endswith("y = ") if fim is None else "y = <|fim_suffix|>" in p.prompt


def test_tiny_budget_drops_header_and_still_ends_at_cursor() -> None:
    snap, line, col = snap_at("python", "def f(x):\n    return █\n")
    p = build_prompt(snap, line, col, budget=PromptBudget(max_prompt_tokens=5))
    assert estimate_tokens(p.prompt) <= 5
    assert p.prompt == "" or "def f(x):\n    return ".endswith(p.prompt)


def test_deterministic() -> None:
    src = "import os\n" * 50 + "def f():\n    █\n" + "x = 1\n" * 50
    snap, line, col = snap_at("python", src)
    a = build_prompt(snap, line, col, fim=FAMILIES["starcoder"], budget=PromptBudget(max_prompt_tokens=100))
    b = build_prompt(snap, line, col, fim=FAMILIES["starcoder"], budget=PromptBudget(max_prompt_tokens=100))
    assert a == b


def test_unknown_language_and_untitled_buffer() -> None:
    doc = Document("untitled:Untitled-1", "plaintext", 1, "Dear Sir,\nthank you for ")
    p = build_prompt(doc.snapshot(), 1, 14)
    assert p.prompt == "Dear Sir,\nthank you for " and not p.multiline and p.stop == ["\n"]


def test_stop_strings() -> None:
    py = language_for("python")
    assert stop_strings(py, False, None) == ["\n"]
    assert stop_strings(py, False, None, blank_line=True) == ["\n\n"]
    multi = stop_strings(py, True, FAMILIES["starcoder"])
    assert "\ndef " in multi and "\nclass " in multi and "<fim_prefix>" in multi and "<|endoftext|>" in multi
    assert "\nfunction " in stop_strings(language_for("javascript"), True, None)
    assert stop_strings(None, True, None) == ["\n\n\n\n"]


def test_fim_prompt_at_a_blank_indented_line() -> None:
    """The indentation before the cursor stays out of the FIM prefix too; the suffix starts at the cursor;
    the FIM prompt's prefix part is the unformatted text a prefix-only prompt is made of."""
    tpl = FAMILIES["starcoder"]
    snap, line, col = snap_at("python", "def f(x):\n    █\n\ndef g():\n    return 2\n", path="/w/m.py")
    p = build_prompt(snap, line, col, fim=tpl)
    assert p.prompt == tpl.format("# Path: m.py (python)\ndef f(x):\n", "\n\ndef g():\n    return 2\n")
    assert p.prompt.startswith(tpl.prefix + "# Path: m.py (python)\ndef f(x):\n" + tpl.suffix)
    assert p.prefix.endswith("def f(x):\n    ") and p.multiline
    assert (
        build_prompt(snap, line, col).prompt == "# Path: m.py (python)\ndef f(x):\n"
    )  # no FIM: that text alone


@pytest.mark.parametrize("fim", [None, FAMILIES["starcoder"]])
@pytest.mark.parametrize("max_tokens", [1536, 40])
def test_crlf_document_gets_the_prompt_of_its_lf_text(fim, max_tokens: int) -> None:
    """The prompt is sent with LF line breaks: a model shown CRLF answers in CRLF, which the LF stop strings
    (a blank line's "\\n\\n") never match, so it ran to max_tokens; post-processing restores CRLF."""
    source = (
        "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n\n\n"
        "def main():\n    data = read('x')\n    █\n    print(data)\n"
    )
    budget = PromptBudget(max_prompt_tokens=max_tokens)
    lf = build_prompt(*snap_at("python", source), budget=budget, fim=fim)
    crlf = build_prompt(*snap_at("python", source.replace("\n", "\r\n")), budget=budget, fim=fim)
    assert "\r" not in crlf.prompt
    assert crlf.prompt == lf.prompt and crlf.stop == lf.stop
    assert [(s.kind, s.start_line, s.end_line) for s in crlf.sources] == [
        (s.kind, s.start_line, s.end_line) for s in lf.sources
    ]


@pytest.mark.parametrize("max_tokens", [64, 256, 1536])
def test_a_line_longer_than_the_window_is_cut_by_characters(max_tokens: int) -> None:
    """The cursor's line alone longer than the first guess of the window (budget * 8 characters): the prefix
    (and the FIM suffix) were empty, so the model saw only the path header; now the line is cut by characters."""
    head = "x = [" + ", ".join(str(i) for i in range(5000))
    tail = ", ".join(str(i) for i in range(5000, 10000)) + "]\n"
    snap, line, col = snap_at("python", "import os\n" + head + "█" + tail)
    budget = PromptBudget(max_prompt_tokens=max_tokens)
    p = build_prompt(snap, line, col, budget=budget)
    assert p.prompt.endswith(", 4998, 4999") and len(p.prefix) > max_tokens
    assert estimate_tokens(p.prompt) <= max_tokens
    p = build_prompt(snap, line, col, budget=budget, fim=FAMILIES["starcoder"])
    assert p.suffix.startswith("5000, 5001") and p.prefix.endswith(", 4998, 4999")
    assert estimate_tokens(p.prompt) <= max_tokens
