"""The full context builder across files: the function under test, definitions through imports, similar
windows, scope headers, budgets counted with the real tokenizer, determinism, unicode, broken files, cycles."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from copilot_ls.context import PromptBudget, build_prompt
from copilot_ls.context.fim import FAMILIES
from copilot_ls.context.subjects import subject_files, subjects_under_test
from copilot_ls.context.symbols import extract_symbols
from copilot_ls.context.workspace import Workspace, find_root
from copilot_ls.documents import Document
from copilot_ls.languages import language_for

CURSOR = "█"

LIB_PY = textwrap.dedent(
    '''\
    """String helpers."""


    def common_prefix(a: str, b: str) -> str:
        """The longest common prefix of a and b."""
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]


    def reverse(s):
        return s[::-1]
    '''
)

LIB_JS = textwrap.dedent(
    """\
    export function commonPrefix(a, b) {
      let n = 0;
      while (n < Math.min(a.length, b.length) && a[n] === b[n]) n++;
      return a.slice(0, n);
    }

    export function shout(s) {
      return s.toUpperCase() + '!';
    }
    """
)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def open_at(path: Path, source: str, lang: str | None = None):
    before, after = source.split(CURSOR)
    line = before.count("\n")
    col = len(before) - (before.rfind("\n") + 1)
    path.write_text(before + after, encoding="utf-8")
    spec = language_for(lang, str(path))
    doc = Document(path.as_uri(), lang or (spec.id if spec else "plaintext"), 1, before + after)
    return doc.snapshot(), line, col


def kinds(prompt) -> list[tuple[str, str]]:
    return [(s.kind, Path(s.path).name if s.path else "") for s in prompt.sources]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path


# --- the common_prefix case -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "test_source",
    [
        "from lib import common_prefix\n\n\ndef test_common_prefix():\n    assert common_prefix(█",
        "import lib\n\n\ndef test_common_prefix():\n    assert lib.common_prefix(█",
        "from lib import *\n\n\ndef test_common_prefix():\n    assert common_prefix(█",
        # no import yet: found by the test's name and the file naming convention (test_lib.py -> lib.py)
        "def test_common_prefix():\n    █",
    ],
    ids=["from-import", "module-import", "star-import", "no-import"],
)
def test_common_prefix_is_selected_from_lib(ws: Path, test_source: str) -> None:
    write(ws, {"lib.py": LIB_PY})
    snap, line, col = open_at(ws / "test_lib.py", test_source)
    p = build_prompt(snap, line, col)
    assert ("under-test", "lib.py") in kinds(p)
    # the function under test keeps its implementation in every style (short: the whole body) ...
    assert "return a[:n]" in p.prompt
    assert "return a[:n]" in build_prompt(snap, line, col, snippet_style="code").prompt
    assert "def reverse" not in p.prompt  # only what is needed
    # the snippet comes first, the current file's text last, ending at the cursor
    assert p.prompt.index("def common_prefix") < p.prompt.index("# Path: test_lib.py")
    before = test_source.split(CURSOR)[0]
    last = before.rsplit("\n", 1)[-1]
    assert p.prompt.endswith(before[: len(before) - len(last)] if not last.strip() else before)
    under = next(s for s in p.sources if s.kind == "under-test")
    assert (under.start_line, under.end_line) == (3, 8) and "common_prefix" in under.why


def test_common_prefix_in_a_package_with_relative_import(ws: Path) -> None:
    write(ws, {"pkg/__init__.py": "", "pkg/strings.py": LIB_PY, "tests/__init__.py": ""})
    src = "from pkg.strings import common_prefix\n\n\ndef test_common_prefix_empty():\n    assert common_prefix('', 'x') == █"
    snap, line, col = open_at(ws / "tests" / "test_strings.py", src)
    assert ("under-test", "strings.py") in kinds(build_prompt(snap, line, col))
    rel = "from ..pkg.strings import common_prefix\n\n\ndef test_x():\n    common_prefix(█"
    write(ws, {"__init__.py": ""})
    snap, line, col = open_at(ws / "tests" / "test_rel.py", rel)
    assert ("definition", "strings.py") in kinds(build_prompt(snap, line, col))


def test_javascript_test_block_selects_the_implementation(ws: Path) -> None:
    write(ws, {"src/lib.js": LIB_JS})
    src = (
        "import { commonPrefix } from './lib.js';\n\n"
        "describe('commonPrefix', () => {\n  it('finds the prefix', () => {\n    expect(commonPrefix(█\n  });\n});\n"
    )
    snap, line, col = open_at(ws / "src" / "lib.test.js", src)
    p = build_prompt(snap, line, col)
    assert ("under-test", "lib.js") in kinds(p)
    assert "export function commonPrefix" in p.prompt or "function commonPrefix(a, b) {" in p.prompt
    assert "shout" not in p.prompt
    assert p.prompt.startswith("// Path: src/lib.js\n")


def test_typescript_definition_through_import(ws: Path) -> None:
    write(
        ws,
        {
            "util.ts": "export interface Point { x: number; y: number }\n\nexport function norm(p: Point): number {\n  return Math.hypot(p.x, p.y);\n}\n"
        },
    )
    src = "import { norm, Point } from './util';\n\nconst p: Point = { x: 3, y: 4 };\nconst n = norm(█"
    snap, line, col = open_at(ws / "main.ts", src)
    p = build_prompt(snap, line, col)
    assert ("definition", "util.ts") in kinds(p)
    assert "function norm(p: Point): number" in p.prompt and "interface Point" in p.prompt


def test_test_subjects_and_conventions(ws: Path) -> None:
    snap, line, col = open_at(
        ws / "test_x.py", "class TestCommonPrefix:\n    def test_empty_strings(self):\n        █"
    )
    assert subjects_under_test(snap, line, col)[:3] == ["empty_strings", "empty", "CommonPrefix"]
    assert "common_prefix" in subjects_under_test(snap, line, col)
    snap, line, col = open_at(ws / "x.py", "def helper():\n    █")
    assert subjects_under_test(snap, line, col) == []
    assert str(ws / "lib.py") in subject_files(str(ws / "test_lib.py"))
    assert str(ws / "lib.js") in subject_files(str(ws / "lib.test.js"))
    assert subject_files(str(ws / "lib.py")) == []


# --- other sources --------------------------------------------------------------------------------------------
def test_open_document_overrides_the_disk(ws: Path) -> None:
    write(ws, {"lib.py": LIB_PY})
    edited = LIB_PY.replace('"""The longest common prefix of a and b."""', '"""EDITED IN THE EDITOR."""')
    other = Document((ws / "lib.py").as_uri(), "python", 7, edited).snapshot()
    snap, line, col = open_at(
        ws / "test_lib.py", "from lib import common_prefix\n\ndef test_common_prefix():\n    █"
    )
    p = build_prompt(snap, line, col, others=[other])
    assert "EDITED IN THE EDITOR" in p.prompt


def test_similar_window_of_another_open_document(ws: Path) -> None:
    similar = "\n".join(
        [
            "import numpy as np",
            "",
            "def load_matrix(path):",
            "    data = np.loadtxt(path, delimiter=',')",
            "    return data.reshape(-1, 3)",
        ]
    )
    unrelated = "\n".join(["SELECT name FROM users;", "-- nothing alike here", "UPDATE accounts SET x = 1;"])
    docs = [
        Document((ws / "other.py").as_uri(), "python", 1, similar).snapshot(),
        Document((ws / "q.sql").as_uri(), "sql", 1, unrelated).snapshot(),
    ]
    src = "import numpy as np\n\ndef load_vectors(path):\n    data = np.loadtxt(path, delimiter=',')\n    █"
    snap, line, col = open_at(ws / "main.py", src)
    p = build_prompt(snap, line, col, others=docs)
    assert ("similar", "other.py") in kinds(p)
    assert "load_matrix" in p.prompt and "UPDATE accounts" not in p.prompt
    assert "Jaccard" in next(s.why for s in p.sources if s.kind == "similar")


def test_local_definition_above_the_window_and_scope_headers(ws: Path) -> None:
    helper = "def scale(v, k):\n    return [x * k for x in v]\n\n\n"
    filler = "".join(f"        total += {i}\n" for i in range(300))
    src = (
        helper
        + "class Stats:\n    def summarize(self, v):\n        total = 0\n"
        + filler
        + "        out = scale(█"
    )
    snap, line, col = open_at(ws / "stats.py", src)
    budget = PromptBudget(max_prompt_tokens=400, keep_in_prefix="none")
    p = build_prompt(snap, line, col, budget=budget, snippet_style="code")
    assert ("definition", "stats.py") in kinds(p)
    assert "return [x * k for x in v]" in p.prompt
    sig = build_prompt(snap, line, col, budget=budget, snippet_style="signature")
    assert "def scale(v, k):\n    ...\n" in sig.prompt and "return [x * k" not in sig.prompt
    # the default keeps the function around the cursor in the window: it is longer than the budget, so any
    # snippet would push some of its lines out, and none is added
    default = build_prompt(snap, line, col, budget=PromptBudget(max_prompt_tokens=400))
    assert "def scale" not in default.prompt and "        out = scale(" in default.prompt
    assert [s.start_line for s in p.sources if s.kind == "scope"] == [4, 5]
    assert "class Stats:\n    def summarize(self, v):\n        total += " in p.prompt


# --- budgets, determinism, robustness -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_count():
    """Token counts of the default model (SmolLM2's tokenizer from its GGUF), as the backend counts them."""
    gguf = pytest.importorskip("gguf")
    from model_backend.tokenizer import Tokenizer
    from model_backend.weights import default_model_path

    tok = Tokenizer.from_gguf(gguf.GGUFReader(default_model_path()))
    return lambda s: len(tok.encode(s))


@pytest.mark.parametrize("max_tokens", [24, 64, 200, 700, 2048])
@pytest.mark.parametrize("fim", [None, "starcoder", "qwen"])
def test_budget_never_exceeded_with_the_real_tokenizer(ws: Path, real_count, max_tokens: int, fim) -> None:
    big_lib = LIB_PY + "".join(
        f"\n\ndef helper_{i}(x):\n    '''名前 😀 {i}'''\n    return x + {i}\n" for i in range(200)
    )
    write(ws, {"lib.py": big_lib})
    other = Document(
        (ws / "notes.py").as_uri(), "python", 1, "def similar(a, b):\n    return common_prefix(a, b)\n" * 40
    )
    src = "from lib import common_prefix, helper_3\n\n" + "x = helper_3(1)  # ünïcödé ✓\n" * 300
    src += "def test_common_prefix():\n    assert common_prefix(█)\n" + "y = 2\n" * 200
    snap, line, col = open_at(ws / "test_lib.py", src)
    template = FAMILIES[fim] if fim else None
    p = build_prompt(
        snap,
        line,
        col,
        others=[other.snapshot()],
        fim=template,
        count_tokens=real_count,
        # snippets may displace the far prefix here (the default keeps the file: this long one would get none)
        budget=PromptBudget(max_prompt_tokens=max_tokens, keep_in_prefix="function"),
    )
    assert real_count(p.prompt) <= max_tokens
    if max_tokens >= 700:
        assert ("under-test", "lib.py") in kinds(p)
    for s in p.sources:
        assert s.tokens >= 0


def test_deterministic_output(ws: Path) -> None:
    write(ws, {"lib.py": LIB_PY, "other.py": "def other():\n    return common_prefix('a', 'b')\n"})
    src = "from lib import common_prefix, reverse\n\ndef test_common_prefix():\n    reverse('x')\n    █"
    snap, line, col = open_at(ws / "test_lib.py", src)
    others = [Document((ws / "other.py").as_uri(), "python", 1, (ws / "other.py").read_text()).snapshot()]
    prompts = {build_prompt(snap, line, col, others=others).prompt for _ in range(3)}
    prompts.add(build_prompt(snap, line, col, others=others, workspace=Workspace(ws)).prompt)
    assert len(prompts) == 1


def test_unicode_paths_and_contents(tmp_path: Path) -> None:
    root = tmp_path / "проект 名前"
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    write(root, {"модуль.py": 'def größe(x):\n    """Größe in 😀."""\n    return len(x)\n'})
    src = "from модуль import größe\n\n\ndef test_größe():\n    assert größe('ß😀') == █"
    snap, line, col = open_at(root / "test_модуль.py", src)
    p = build_prompt(snap, line, col)
    assert ("under-test", "модуль.py") in kinds(p)
    assert "# Path: модуль.py\n" in p.prompt and '"""Größe in 😀."""' in p.prompt


def test_files_that_do_not_parse(ws: Path) -> None:
    broken_lib = LIB_PY + "\ndef broken(:\n    return ((\n"
    write(ws, {"lib.py": broken_lib})
    src = "from lib import common_prefix\nclass (((:\n\ndef test_common_prefix():\n    assert common_prefix(█"
    snap, line, col = open_at(ws / "test_lib.py", src)
    assert snap.tree.root_node.has_error
    p = build_prompt(snap, line, col)
    assert "def common_prefix" in p.prompt
    fs = extract_symbols(broken_lib, language_for("python"), str(ws / "lib.py"))
    assert "common_prefix" in [d.name for d in fs.definitions]


def test_circular_imports(ws: Path) -> None:
    write(
        ws,
        {
            "a.py": "from b import bee\n\n\ndef ay(x):\n    return bee(x) + 1\n",
            "b.py": "from a import ay\n\n\ndef bee(x):\n    return ay(x) - 1\n",
        },
    )
    src = "from a import ay\nfrom b import bee\n\n\ndef test_ay():\n    assert ay(1) == bee(█"
    snap, line, col = open_at(ws / "test_ab.py", src)
    p = build_prompt(snap, line, col)
    assert ("under-test", "a.py") in kinds(p) and ("definition", "b.py") in kinds(p)
    # a file importing itself
    write(ws, {"self_ref.py": "import self_ref\n\ndef f():\n    return self_ref.f()\n"})
    snap, line, col = open_at(ws / "self_ref.py", "import self_ref\n\ndef f():\n    return self_ref.f(█)\n")
    build_prompt(snap, line, col)  # terminates, no snippet of itself
    assert all(s.kind != "definition" for s in build_prompt(snap, line, col).sources)


def test_snippets_off_is_the_plain_prompt(ws: Path) -> None:
    write(ws, {"lib.py": LIB_PY})
    snap, line, col = open_at(
        ws / "test_lib.py", "from lib import common_prefix\n\ndef test_common_prefix():\n    █"
    )
    p = build_prompt(snap, line, col, snippets=False)
    assert "def common_prefix(a" not in p.prompt and [s.kind for s in p.sources] == ["header", "prefix"]


def test_find_root(tmp_path: Path) -> None:
    (tmp_path / "proj" / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    assert find_root(tmp_path / "proj" / "pkg" / "sub" / "x.py") == ((tmp_path / "proj").resolve(), True)
    (tmp_path / "lib" / "a" / "b").mkdir(parents=True)
    (tmp_path / "lib" / "a" / "__init__.py").write_text("")
    (tmp_path / "lib" / "a" / "b" / "__init__.py").write_text("")
    assert find_root(tmp_path / "lib" / "a" / "b" / "x.py") == ((tmp_path / "lib").resolve(), False)
    # an installed library inside a project's virtual environment belongs to site-packages, not the project
    site = tmp_path / "proj" / ".venv" / "lib" / "python3.11" / "site-packages"
    (site / "sympy" / "tests").mkdir(parents=True)
    (site / "sympy" / "__init__.py").write_text("")
    assert find_root(site / "sympy" / "tests" / "test_x.py") == (site.resolve(), False)


def test_big_workspace_does_not_slow_a_keystroke(ws: Path) -> None:
    """10,000 files: the name index builds in the background; a request never waits for it."""
    for d in range(100):
        sub = ws / f"mod{d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"f{i}.py").write_text(f"def func_{d}_{i}(x):\n    return x + {i}\n")
    write(ws, {"lib.py": LIB_PY})
    workspace = Workspace(ws)
    src = "from lib import common_prefix\n\ndef test_common_prefix():\n    x = func_42_7(1)\n    █"
    snap, line, col = open_at(ws / "test_lib.py", src)
    t0 = time.perf_counter()
    build_prompt(snap, line, col, workspace=workspace)  # first request: starts indexing, does not wait
    first = time.perf_counter() - t0
    assert first < 1.0
    assert workspace.wait_indexed(timeout=120)
    assert workspace.files_indexed >= 10_000
    t0 = time.perf_counter()
    p = build_prompt(snap, line, col, workspace=workspace)
    assert time.perf_counter() - t0 < 1.0
    assert ("under-test", "lib.py") in kinds(p)
    assert workspace.paths_defining("func_42_7") == [str(ws / "mod42" / "f7.py")]


def test_an_open_document_over_the_size_limit_is_not_parsed_for_symbols(ws: Path) -> None:
    """A multi-MB open document has no tree (documents.MAX_TREE_BYTES); its symbols are not extracted from
    the text either (a parse of seconds), as for a too-big file on disk."""
    big = "def common_prefix(a, b):\n    return a\n" + "DATA = [" + "1, " * 400_000 + "]\n"
    snap, _, _ = open_at(ws / "lib.py", big + "█")
    assert snap.tree is None
    t0 = time.perf_counter()
    assert Workspace(ws).file_symbols(ws / "lib.py", overlay=snap) is None
    assert time.perf_counter() - t0 < 0.5
    small, _, _ = open_at(ws / "lib.py", LIB_PY + "█")
    assert Workspace(ws).file_symbols(ws / "lib.py", overlay=small) is not None


def test_comment_snippet_style(ws: Path) -> None:
    write(ws, {"lib.py": LIB_PY})
    snap, line, col = open_at(
        ws / "test_lib.py", "from lib import common_prefix\n\ndef test_common_prefix():\n    █"
    )
    p = build_prompt(snap, line, col, snippet_style="comment")
    assert p.prompt.startswith(
        "# Compare this snippet from lib.py:\n# def common_prefix(a: str, b: str) -> str:\n"
    )
    assert "\ndef common_prefix" not in p.prompt  # only commented out
    with pytest.raises(ValueError, match="unknown snippet style 'fancy'"):
        build_prompt(snap, line, col, snippet_style="fancy")


def _names_near_by_walk(snap, line: int) -> list:
    """The reference: a walk over every node in the rows (what names_near did before its query fast path)."""
    from copilot_ls.context import snippets as cs

    lo, hi = max(0, line - cs.NEAR_LINES_BEFORE), line + cs.NEAR_LINES_AFTER
    seen: dict = {}
    stack = [snap.tree.root_node]
    while stack:
        node = stack.pop()
        if node.end_point[0] < lo or node.start_point[0] > hi:
            continue
        if node.type in cs._IDENT_TYPES:
            qual, parent = None, node.parent
            if parent is not None and parent.type in ("attribute", "member_expression"):
                obj = parent.child_by_field_name("object")
                attr = parent.child_by_field_name("attribute") or parent.child_by_field_name("property")
                if (
                    attr is not None
                    and attr.id == node.id
                    and obj is not None
                    and (
                        obj.type == "identifier" or obj.type == "attribute" and cs._DOTTED.fullmatch(obj.text)
                    )
                ):
                    qual = obj.text.decode()
            key, dist = (node.text.decode(), qual), abs(node.start_point[0] - line)
            seen[key] = min(dist, seen.get(key, dist))
            continue
        stack.extend(node.children)
    return sorted(seen, key=lambda k: (seen[k], k[0], k[1] or ""))


@pytest.mark.parametrize(
    "lang, unit",
    [
        (
            "python",
            "class W{i}:\n    def total(self):\n        return sum(x.v for x in self.items) + os.sep\n\n",
        ),
        ("python", "def f{i}(a):\n    return g(a.b, [1,\n\n"),  # broken: ERROR / MISSING nodes
        (
            "javascript",
            "import {{a}} from './b';\nfunction f{i}(a) {{ return a.b + c.d(e, {{x, y: z.w}}); }}\n",
        ),
        ("typescript", "type T{i} = {{a: number}};\nfunction f(a: T): T {{ return {{a: a.a + g.h}}; }}\n"),
    ],
)
def test_names_near_equals_a_walk_of_the_rows(lang: str, unit: str) -> None:
    from copilot_ls.context.snippets import names_near

    text = "".join(unit.format(i=i) for i in range(150))
    snap = Document(f"file:///x.{lang[:2]}", lang, 1, text).snapshot()
    for line in [0, 1, 7, *range(20, len(snap.lines()) + 3, 23)]:
        assert names_near(snap, line) == _names_near_by_walk(snap, line), line


def test_signature_snippet_style(ws: Path) -> None:
    """``signature``: definitions of names near the cursor as header + the docstring's first line, never the body;
    the function under test keeps its implementation."""
    write(ws, {"lib.py": LIB_PY})
    snap, line, col = open_at(
        ws / "app.py", "from lib import common_prefix\n\ndef shortest(a, b):\n    return common_prefix(█"
    )
    p = build_prompt(snap, line, col, snippet_style="signature")
    assert ("definition", "lib.py") in kinds(p)
    assert p.prompt.startswith(
        '# Path: lib.py\ndef common_prefix(a: str, b: str) -> str:\n    """The longest common prefix of a and b."""\n'
        "\n# Path: app.py (python)\n"
    )
    assert "while n <" not in p.prompt
    snap, line, col = open_at(
        ws / "test_lib.py", "from lib import common_prefix\n\ndef test_common_prefix():\n    █"
    )
    p = build_prompt(snap, line, col, snippet_style="signature")
    assert ("under-test", "lib.py") in kinds(p) and "while n <" in p.prompt


def test_overload_stubs_and_bare_aliases_are_not_shown(ws: Path) -> None:
    write(
        ws,
        {
            "alg.py": textwrap.dedent(
                '''\
                from typing import overload

                @overload
                def simplify(expr: int) -> int: ...
                @overload
                def simplify(expr: str) -> str: ...
                def simplify(expr, ratio=1.7):
                    """Simplifies the given expression."""
                    return expr

                Matrix = MutableMatrix
                LIMIT = 3 * 4
                '''
            )
        },
    )
    snap, line, col = open_at(
        ws / "use.py", "from alg import simplify, Matrix, LIMIT\n\nx = simplify(Matrix(LIMIT))\n█"
    )
    p = build_prompt(snap, line, col)
    assert "def simplify(expr, ratio=1.7):" in p.prompt and "@overload" not in p.prompt
    assert "Matrix = MutableMatrix" not in p.prompt  # an alias tells nothing the name does not
    assert "LIMIT = 3 * 4" in p.prompt
    fs = extract_symbols((ws / "alg.py").read_text(), language_for("python", "alg.py"), str(ws / "alg.py"))
    assert [d.text.startswith("@overload") for d in fs.named("simplify")] == [False, True, True]


@pytest.mark.parametrize("keep", ["function", "file"])
def test_keep_in_prefix(ws: Path, keep: str) -> None:
    """Snippets never push the current function's lines (or, with "file", any line) out of the prefix window."""
    write(ws, {"lib.py": LIB_PY})
    body = "".join(f"    assert common_prefix('ab{i}', 'ab') == 'ab'\n" for i in range(12))
    older = "".join(f"def test_old_{i}():\n    assert reverse('a{i}') == '{i}a'\n\n" for i in range(10))
    source = f"from lib import common_prefix, reverse\n\n{older}\ndef test_common_prefix():\n{body}    █"
    snap, line, col = open_at(ws / "test_lib.py", source)
    budget = PromptBudget(max_prompt_tokens=220, keep_in_prefix=keep)
    p = build_prompt(snap, line, col, budget=budget)
    plain = build_prompt(snap, line, col, budget=PromptBudget(max_prompt_tokens=220), snippets=False)
    if keep == "file":
        assert p.prefix == plain.prefix  # the window is what it would be without snippets
    else:
        assert p.prefix.startswith("def test_common_prefix():\n") and "Path: lib.py" in p.prompt
    with pytest.raises(ValueError, match="unknown keep_in_prefix"):
        build_prompt(snap, line, col, budget=PromptBudget(keep_in_prefix="all"))


def test_index_skips_files_that_are_not_regular(ws: Path) -> None:
    """A FIFO (or other special file) with a source name must not block the background index forever."""
    import os

    write(ws, {"lib.py": LIB_PY, "zz_after.py": "def after_fifo():\n    pass\n"})
    os.mkfifo(ws / "a_fifo.py")
    (ws / "b_loop.py").symlink_to(ws / "b_loop.py")
    workspace = Workspace(ws)
    assert workspace.wait_indexed(timeout=30)
    assert workspace.paths_defining("after_fifo") == [str(ws / "zz_after.py")]


@pytest.mark.parametrize("lang, ext", [("javascript", "js"), ("typescript", "ts")])
def test_default_import_is_the_default_export_not_the_first_definition(ws: Path, lang: str, ext: str) -> None:
    """`import mainFn from './lib'` showed lib's first function (a helper) as `mainFn` and as the function
    under test; it is the `export default` declaration (named, by identifier, or anonymous)."""
    write(
        ws,
        {
            f"lib.{ext}": "function helper(x) {\n  return x * 2;\n}\n\n"
            "export default function mainFn(a) {\n  return helper(a) + 1;\n}\n",
            f"byname.{ext}": "function helper2(x) {\n  return x;\n}\nfunction other(a) {\n  return a;\n}\n"
            "export default other;\n",
            f"anon.{ext}": "function helper3(x) {\n  return x;\n}\nexport default function (a) {\n  return a + 3;\n}\n",
        },
    )
    src = (
        "import mainFn from './lib';\nimport other from './byname';\nimport anon from './anon';\n\n"
        "describe('mainFn', () => {\n  it('works', () => {\n    expect(other(1) + anon(2)).toBe(1);\n"
        "    expect(mainFn(2)).toBe(█);\n  });\n});\n"
    )
    snap, line, col = open_at(ws / f"lib.test.{ext}", src, lang)
    p = build_prompt(snap, line, col, snippet_style="code")
    shown = {
        s.why: (Path(s.path).name, s.start_line) for s in p.sources if s.kind in ("under-test", "definition")
    }
    assert shown["implementation of `mainFn`, under test"] == (f"lib.{ext}", 4)
    assert shown["definition of `other`, used nearby"] == (f"byname.{ext}", 3)
    assert shown["definition of `anon`, used nearby"] == (f"anon.{ext}", 3)
    assert "function helper" not in p.prompt


def test_definitions_found_through_reexports(ws: Path) -> None:
    """`from pkg import f` where pkg/__init__.py re-exports f (`from .impl import f`, `from .more import *`),
    and `import {g} from './index'` where index.js has `export * from` / `export {x as g} from`: the
    definition in the implementing file (was: nothing). Circular re-exports end."""
    write(
        ws,
        {
            "pkg/__init__.py": "from .impl import exported\nfrom .more import *\nfrom .loop import *\n",
            "pkg/impl.py": "from . import more\n\n\ndef exported(a, b):\n    return a + b\n",
            "pkg/more.py": "def starred(k):\n    return k * 2\n",
            "pkg/loop.py": "from . import *\nfrom .loop import *\n",
            "src/lib.js": "export function shout(s) {\n  return s + '!';\n}\nexport default function main() {}\n",
            "src/index.js": "export * from './lib';\nexport { default as mainFn, shout as yell } from './lib';\n",
        },
    )
    snap, line, col = open_at(
        ws / "test_use.py",
        "from pkg import exported, starred, missing\n\n\ndef check():\n    x = exported(1, 2) + starred(3) + missing\n"
        "    █",
    )
    p = build_prompt(snap, line, col, snippet_style="code")
    whys = {s.why: (Path(s.path).name, s.start_line) for s in p.sources}
    assert whys["definition of `exported`, used nearby"] == ("impl.py", 3)
    assert whys["definition of `starred`, used nearby"] == ("more.py", 0)
    snap, line, col = open_at(
        ws / "src" / "use.js",
        "import { shout, yell, mainFn } from './index';\n\nconst a = shout('a') + yell('b') + mainFn();\n█",
    )
    p = build_prompt(snap, line, col, snippet_style="code")
    whys = {s.why: (Path(s.path).name, s.start_line) for s in p.sources}
    assert whys["definition of `shout`, used nearby"] == ("lib.js", 0)
    assert whys["definition of `mainFn`, used nearby"] == ("lib.js", 3)
    # `yell` is `shout` under another name: the same definition, shown once
    assert "definition of `yell`, used nearby" not in whys


def test_index_survives_a_pathologically_deep_tree(ws: Path) -> None:
    """os.walk recurses: 1,100 nested folders raised RecursionError in the index thread, which lost every file
    after them (and printed a traceback); the walk stops at MAX_DEPTH folders."""
    d = ws / "a"
    for _ in range(1100):
        d = d / "d"
        d.mkdir(parents=True)
    (d / "leaf.py").write_text("def too_deep():\n    pass\n")
    write(ws, {"b/mod.py": "def after_the_deep_tree():\n    pass\n"})
    try:
        workspace = Workspace(ws)
        assert workspace.wait_indexed(timeout=60)
        assert workspace.paths_defining("after_the_deep_tree") == [str(ws / "b" / "mod.py")]
    finally:  # flatten the tree one level at a time: pytest's recursive cleanup would hit the recursion limit
        a = ws / "a"
        while (a / "d").is_dir():
            (a / "d").rename(ws / "next")
            a.rmdir()
            (ws / "next").rename(a)


def test_import_of_a_symlink_loop_does_not_fail_the_request(ws: Path) -> None:
    """`import {x} from './loopy.js'` where loopy.js is a symlink to itself: Path.resolve raised RuntimeError
    (Python < 3.13) out of build_prompt, so the request failed; now the import just resolves to nothing."""
    (ws / "loopy.js").symlink_to("loopy.js")
    write(ws, {"lib.js": LIB_JS})
    snap, line, col = open_at(
        ws / "use.js",
        "import { x } from './loopy.js';\nimport { shout } from './lib';\n\nconst y = x(shout(█",
    )
    p = build_prompt(snap, line, col)
    assert ("definition", "lib.js") in kinds(p)


def test_typescript_interface_signature_keeps_its_members(ws: Path) -> None:
    """An interface's summary / signature listed only method definitions, which interfaces have none of: the
    default (signature) style showed `interface Shape {\\n}`, an empty interface; its members are its signature."""
    write(
        ws,
        {
            "shapes.ts": "export interface Shape {\n  area(): number;\n  readonly name: string,\n}\n\n"
            "export abstract class Base {\n  abstract run(x: number): void;\n"
            "  go() { return 1; }\n}\n"
        },
    )
    snap, line, col = open_at(
        ws / "use.ts", "import { Shape, Base } from './shapes';\n\nconst s: Shape = f(Base);\n█", "typescript"
    )
    p = build_prompt(snap, line, col)
    assert "interface Shape {\n  area(): number;\n  readonly name: string;\n}" in p.prompt
    assert "abstract class Base {\n  abstract run(x: number): void;\n  go() { ... }\n}" in p.prompt


def test_module_imported_with_from_dot_import(ws: Path) -> None:
    """`from . import more` then `more.starred(...)`: the module was looked up as "..more" (the parent
    package) and not found; `from .sub import deep` / `deep.f` worked."""
    write(
        ws,
        {
            "pkg/__init__.py": "",
            "pkg/more.py": "def starred(k):\n    return k * 2\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/deep.py": "def star_fn(k):\n    return k\n",
        },
    )
    snap, line, col = open_at(
        ws / "pkg" / "user.py",
        "from . import more\nfrom .sub import deep\n\n\ndef use():\n    return more.starred(1) + deep.star_fn(█",
    )
    p = build_prompt(snap, line, col)
    assert ("definition", "more.py") in kinds(p) and ("definition", "deep.py") in kinds(p)


@pytest.mark.parametrize("after", ["", "\n  });\n});\n"])
def test_js_test_blocks_found_while_the_calls_are_unclosed(ws: Path, after: str) -> None:
    """Typing `expect(commonPrefix('ab', 'ac')).toBe(` without auto-closed brackets leaves `describe(` / `it(`
    as loose tokens in an ERROR node: the test was not recognised and the function under test not shown."""
    write(ws, {"lib.js": LIB_JS})
    snap, line, col = open_at(
        ws / "lib.test.js",
        "import { shout } from './lib';\n\ndescribe('commonPrefix', () => {\n  it('handles empty strings', () => {\n"
        "    expect(x).toBe(█" + after,
    )
    assert snap.tree.root_node.has_error
    p = build_prompt(snap, line, col)
    assert ("under-test", "lib.js") in kinds(p) and "function commonPrefix(a, b) {" in p.prompt


def test_commonjs_exports_resolve_to_their_definitions(ws: Path) -> None:
    """CommonJS modules (`exports.f = function`, `exports.f = () =>`, `module.exports.f = ...`,
    `module.exports = { f, g: helper, h() {} }`, `module.exports = function f() {}`) had no definitions of
    their exported names: `const { f } = require('./lib')` / `lib.f(...)` / `describe('f')` got nothing."""
    write(
        ws,
        {
            "ops.js": "function unrelated(x) {\n  return x;\n}\n\n"
            "exports.add = function (a, b) {\n  return a + b;\n};\n"
            "exports.sub = (a) => a - 1;\n"
            "module.exports.mul = function mul(a, b) {\n  return a * b;\n};\n",
            "lib.js": "function helper(x) {\n  return x * 2;\n}\n\nfunction declared(a) {\n  return a + 1;\n}\n\n"
            "module.exports = {\n  declared,\n  twice: helper,\n  neg: function (z) {\n    return -z;\n  },\n"
            "  half(y) {\n    return y / 2;\n  },\n};\n",
            "greet.js": "const PREFIX = 'hi ';\n\nmodule.exports = function greet(name) {\n  return PREFIX + name;\n};\n",
            "anon.js": "function first() {}\n\nmodule.exports = (n) => n + 1;\n",
        },
    )
    src = (
        "const { add, sub } = require('./ops');\nconst ops = require('./ops');\nconst lib = require('./lib');\n"
        "const { twice } = require('./lib');\nconst greet = require('./greet');\nconst anon = require('./anon');\n\n"
        "describe('add', () => {\n  it('adds', () => {\n"
        "    expect(sub(3) + ops.mul(2, 3) + lib.declared(1) + lib.neg(2) + lib.half(4)).toBe(1);\n"
        "    expect(twice(1) + greet('x') + anon(1)).toBe(add(█\n  });\n});\n"
    )
    snap, line, col = open_at(ws / "ops.test.js", src)
    p = build_prompt(snap, line, col, snippet_style="code")
    shown = {
        s.why: (Path(s.path).name, s.start_line) for s in p.sources if s.kind in ("under-test", "definition")
    }
    assert shown == {
        "implementation of `add`, under test": ("ops.js", 4),
        "definition of `sub`, used nearby": ("ops.js", 7),
        "definition of `mul`, used nearby": ("ops.js", 8),
        "definition of `declared`, used nearby": ("lib.js", 4),
        "definition of `neg`, used nearby": ("lib.js", 11),
        "definition of `half`, used nearby": ("lib.js", 14),
        "definition of `twice`, used nearby": ("lib.js", 0),  # `twice: helper`: helper's definition
        "definition of `greet`, used nearby": ("greet.js", 2),
        "definition of `anon`, used nearby": ("anon.js", 2),
    }
    assert "unrelated" not in p.prompt and "first" not in p.prompt  # `ops` / `lib` alone are no definition
    assert build_prompt(snap, line, col, snippet_style="code").prompt == p.prompt  # deterministic
    # the default (signature) style shows them like ES functions: the header, never the body
    sig = build_prompt(snap, line, col).prompt
    assert "exports.sub = (a) =>" in sig and "module.exports.mul = function mul(a, b) {\n  // ...\n}" in sig
    assert "neg: function (z) {\n  // ...\n}" in sig and "half(y) {\n  // ...\n}" in sig
    # the function under test keeps its body; found by the test-file convention too (no require)
    snap, line, col = open_at(
        ws / "ops.test.js", "describe('mul', () => {\n  test('mul works', () => {\n    █"
    )
    p = build_prompt(snap, line, col)
    assert ("under-test", "ops.js") in kinds(p) and "return a * b;" in p.prompt


def test_python_dotted_module_import(ws: Path) -> None:
    """`import pkg.mod` (no alias) then `pkg.mod.f(...)` / `pkg.mod.Thing`: the qualifier `pkg.mod` was not seen
    (only a bare identifier qualified a name), so f got no definition."""
    write(
        ws,
        {
            "pkg/__init__.py": "",
            "pkg/mod.py": "def f(a):\n    return a + 1\n\n\nclass Thing:\n    def __init__(self, n):\n        self.n = n\n",
            "pkg/sub/__init__.py": "def g():\n    return 2\n",
            "other.py": "def f(a):\n    return a - 1\n",
        },
    )
    snap, line, col = open_at(
        ws / "use.py",
        "import pkg.mod\nimport pkg.sub\nfrom other import *\n\n\ndef check(self):\n"
        "    return pkg.mod.f(1) + pkg.sub.g() + pkg.mod.Thing(█",
    )
    from copilot_ls.context.snippets import names_near

    near = names_near(snap, line)
    assert ("f", "pkg.mod") in near and ("Thing", "pkg.mod") in near and ("g", "pkg.sub") in near
    assert ("mod", "pkg") in near and ("f", None) not in near
    p = build_prompt(snap, line, col, snippet_style="code")
    shown = {
        s.why: (Path(s.path).as_posix().rsplit("/", 2)[-2:], s.start_line)
        for s in p.sources
        if s.kind == "definition"
    }
    assert shown["definition of `Thing`, used nearby"] == (["pkg", "mod.py"], 4)
    assert shown["definition of `g`, used nearby"] == (["sub", "__init__.py"], 0)
    # `pkg.mod.f` is mod's f, not the bare name's (the star import's f)
    assert "return a - 1" not in p.prompt and "return a + 1" in p.prompt
    # `import pkg` then `pkg.sub.g()`: the longest imported prefix of the qualifier, then its submodule
    snap, line, col = open_at(ws / "use2.py", "import pkg\n\n\ndef check():\n    return pkg.sub.g(█")
    assert ("definition", "__init__.py") in kinds(build_prompt(snap, line, col))


def test_commonjs_classes_aliases_through_imports_and_es_default_import(ws: Path) -> None:
    """`exports.K = class`, `module.exports = { run: impl }` where impl is required from another file (followed
    there), and `import make from './factory'` of a `module.exports = function make` file."""
    write(
        ws,
        {
            "impl.js": "function impl(job) {\n  return job.go();\n}\nmodule.exports = { impl };\n",
            "api.js": "const { impl } = require('./impl');\n\nexports.K = class K {\n  start() { return 1; }\n};\n"
            "module.exports.run = impl;\n",
            "factory.js": "function unrelated() {}\n\nmodule.exports = function make(kind) {\n  return { kind };\n};\n",
        },
    )
    snap, line, col = open_at(
        ws / "use.js",
        "import make from './factory';\nconst api = require('./api');\n\nconst k = new api.K(make('a'));\napi.run(█",
    )
    p = build_prompt(snap, line, col, snippet_style="code")
    shown = {s.why: (Path(s.path).name, s.start_line) for s in p.sources if s.kind == "definition"}
    assert shown == {
        "definition of `run`, used nearby": ("impl.js", 0),
        "definition of `K`, used nearby": ("api.js", 2),
        "definition of `make`, used nearby": ("factory.js", 2),
    }


def test_default_keeps_the_file_and_a_short_test_still_gets_its_subject(ws: Path) -> None:
    """The default budget never lets snippets push the file's own text out (with the default model any
    displacement cost edit similarity, docs/quality.md); a test file that leaves room still gets the function
    under test, whole (the demo's case)."""
    assert PromptBudget().keep_in_prefix == "file"
    write(ws, {"lib.py": LIB_PY})
    snap, line, col = open_at(
        ws / "test_lib.py",
        "from lib import common_prefix\n\n\ndef test_common_prefix():\n    assert common_prefix(█",
    )
    p = build_prompt(snap, line, col)
    assert ("under-test", "lib.py") in kinds(p) and "return a[:n]" in p.prompt


def test_keep_in_prefix_setting() -> None:
    from copilot_ls.backend import ModelMeta
    from copilot_ls.lsp.settings import SettingsError, from_dict
    from copilot_ls.pipeline import budget_for

    meta = ModelMeta(id="m", context_length=2048, fim=None, count_tokens=None)
    assert budget_for(from_dict({}), meta).keep_in_prefix == "file"
    assert budget_for(from_dict({"keepInPrefix": "function"}), meta).keep_in_prefix == "function"
    with pytest.raises(SettingsError, match="keep_in_prefix.*none, function, file"):
        from_dict({"keepInPrefix": "all"})
