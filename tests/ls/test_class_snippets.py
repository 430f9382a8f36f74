"""Class snippets say what a class has: its fields and its methods' signatures with the bodies elided (issue 15,
item 5). Before, the default (signature) form of `@dataclass class Circle` was its decorator, class line and
docstring, and the model wrote `assert c.area == 6.0` for the method `area`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lsp_testing import REPO

from copilot_ls.context import PromptBudget, build_prompt
from copilot_ls.context.symbols import CLASS_MEMBERS, CLASS_MEMBERS_BRIEF, extract_symbols
from copilot_ls.documents import Document
from copilot_ls.languages import language_for

CIRCLE_PY = textwrap.dedent(
    '''\
    from dataclasses import dataclass
    import math


    @dataclass
    class Circle:
        """A circle in the plane.

        Long explanation that the signature leaves out.
        """

        radius: float
        center: tuple[float, float] = (0.0, 0.0)

        def area(self) -> float:
            return math.pi * self.radius ** 2

        @property
        def diameter(self) -> float:
            return 2 * self.radius

        def _cache(self):
            return None
    '''
)

# (language, source, class name, the class's signature form)
TABLE = [
    (
        "python",
        CIRCLE_PY,
        "Circle",
        '@dataclass\nclass Circle:\n    """A circle in the plane."""\n    radius: float\n'
        "    center: tuple[float, float] = (0.0, 0.0)\n    def area(self) -> float: ...\n    @property\n"
        "    def diameter(self) -> float: ...",  # no `_cache`: the code importing a class uses its public API
    ),
    (
        "python",  # plain class: the self.x assignments of __init__ are its fields; long ones cut to the name
        "class Account:\n    kind = 'basic'\n\n    def __init__(self, owner, balance=0):  # a comment\n"
        "        self.owner = owner\n        self.balance: int = balance\n"
        "        self.history = [entry for entry in range(100) if entry % 7 == 0 and entry % 11 == 0 and entry > 3]\n"
        "        log('created')\n\n    def deposit(self, amount: int) -> None:\n        # no comment in the signature\n        self.balance += amount\n",
        "Account",
        "class Account:\n    kind = 'basic'\n    def __init__(self, owner, balance=0):\n        self.owner = owner\n"
        "        self.balance: int = balance\n        self.history = ...\n"
        "    def deposit(self, amount: int) -> None: ...",
    ),
    (
        "javascript",
        "export class Circle {\n  static unit = 1;\n  #secret = 2;\n  constructor(r) {\n    this.r = r;\n"
        "    this.label = 'c';\n    init(this);\n  }\n  get area() {\n    return Math.PI * this.r * this.r;\n  }\n"
        "  scaled(k) {\n    return new Circle(this.r * k);\n  }\n}\n",
        "Circle",
        "class Circle {\n  static unit = 1;\n  constructor(r) { this.r = r; this.label = 'c'; ... }\n"
        "  get area() { ... }\n  scaled(k) { ... }\n}",
    ),
    (
        "typescript",
        "export class Circle {\n  readonly radius: number;\n  private cache?: Map<string, number>;\n  label = 'c';\n"
        "  constructor(radius: number) {\n    this.radius = radius;\n  }\n"
        "  area(): number {\n    return Math.PI * this.radius ** 2;\n  }\n}\n",
        "Circle",
        "class Circle {\n  readonly radius: number;\n  label = 'c';\n"
        "  constructor(radius: number) { this.radius = radius; ... }\n  area(): number { ... }\n}",
    ),
]


@pytest.mark.parametrize(
    "lang,source,name,expected", TABLE, ids=[f"{t[0]}-{t[2]}-{i}" for i, t in enumerate(TABLE)]
)
def test_class_signature_lists_fields_and_method_signatures(
    lang: str, source: str, name: str, expected: str
) -> None:
    spec = language_for(lang)
    (defn,) = extract_symbols(source, spec, f"/ws/m.{'py' if lang == 'python' else lang[:2]}").named(name)
    assert defn.signature.endswith(expected), defn.signature
    assert "return" not in defn.signature and "return" not in defn.summary  # bodies elided
    assert all(p not in defn.signature for p in ("_cache", "#secret", "private cache"))
    # the summary (the short form of the code style) lists the same members, with the docstring's paragraph
    for line in expected.split("\n")[2:]:
        assert '"""' in line or line in defn.summary


def test_big_class_is_shortened_fields_and_public_methods_first() -> None:
    """A class with many members: the signature keeps fields, the constructor, then public methods before
    `_private` ones; the brief form (tight budgets) keeps only the first few."""
    methods = "".join(f"    def _p{i}(self):\n        pass\n\n" for i in range(20))
    methods += "".join(f"    def m{i}(self, x: int) -> int:\n        return x\n\n" for i in range(30))
    src = "class Big:\n    a: int\n    b: str\n\n    def __init__(self):\n        self.c = 1\n\n" + methods
    (defn,) = extract_symbols(src, language_for("python"), "/ws/big.py").named("Big")
    sig = defn.signature.split("\n")
    assert sig[1:5] == ["    a: int", "    b: str", "    def __init__(self):", "        self.c = 1"]
    assert len(sig) == 1 + CLASS_MEMBERS + 1  # the class line, the members, __init__'s assignment
    assert (
        "    def m20(self, x: int) -> int: ..." in sig and "    def m21(self, x: int) -> int: ..." not in sig
    )
    assert "    def _p0(self): ..." not in sig
    brief = defn.brief.split("\n")
    assert len([ln for ln in brief if ln.startswith("    def ")]) == CLASS_MEMBERS_BRIEF - 2
    assert brief[-1] == "    def m4(self, x: int) -> int: ..."  # a, b, __init__, m0..m4


# the issue's example (what a new user tried in VS Code)
ISSUE_GEOMETRY_PY = textwrap.dedent(
    '''\
    from dataclasses import dataclass
    import math


    @dataclass
    class Circle:
        """A circle in the plane."""

        radius: float
        x: float = 0.0
        y: float = 0.0

        def area(self) -> float:
            return math.pi * self.radius ** 2

        def scaled(self, k: float) -> "Circle":
            return Circle(self.radius * k, self.x, self.y)

        @property
        def diameter(self) -> float:
            return 2 * self.radius
    '''
)


def _circle_workspace(tmp_path: Path, geometry: str = CIRCLE_PY) -> tuple:
    (tmp_path / ".git").mkdir()
    (tmp_path / "geometry.py").write_text(geometry)
    text = "from geometry import Circle\n\n\ndef test_circle():\n    c = Circle(radius=2.0)\n    assert c."
    path = tmp_path / "test_geometry.py"
    path.write_text(text)
    snap = Document(path.as_uri(), "python", 1, text).snapshot()
    return snap, 5, len("    assert c.")


def test_prompt_shows_what_the_imported_class_has(tmp_path: Path) -> None:
    """The issue's case end to end through build_prompt (default style and budget)."""
    snap, line, col = _circle_workspace(tmp_path)
    p = build_prompt(snap, line, col)
    assert p.prompt.startswith(
        '# Path: geometry.py\n@dataclass\nclass Circle:\n    """A circle in the plane."""\n    radius: float\n'
        "    center: tuple[float, float] = (0.0, 0.0)\n    def area(self) -> float: ...\n"
    )
    assert "math.pi" not in p.prompt


def test_tight_budget_falls_back_to_the_brief_form(tmp_path: Path) -> None:
    """When the whole signature does not fit the snippet room, the brief form (fewer members) is tried before
    the class is dropped."""
    methods = "".join(
        f"    def method_number_{i}(self, value: int) -> int:\n        return value\n\n" for i in range(30)
    )
    (tmp_path / ".git").mkdir()
    (tmp_path / "big.py").write_text("class Big:\n    size: int\n\n" + methods)
    text = "from big import Big\n\n\ndef test_big():\n    b = Big()\n    assert b."
    snap = Document((tmp_path / "t.py").as_uri(), "python", 1, text).snapshot()
    p = build_prompt(snap, 5, len("    assert b."), budget=PromptBudget(max_prompt_tokens=400))
    shown = [s for s in p.sources if s.kind == "definition"]
    assert shown and "    size: int\n" in p.prompt
    assert "method_number_5(" in p.prompt and "method_number_29(" not in p.prompt


@pytest.mark.e2e
def test_complete_explain_shows_the_class_members_and_the_model_calls_the_method(
    tmp_path: Path, backend_url: str
):
    """The issue's two-file example with `copilot-ls complete --explain` against the real backend and default
    model: the prompt lists the dataclass's fields and `def area(self) -> float: ...`; the suggestion, which
    was `area == 0.0` (an attribute) with the old snippet, calls `area()`."""
    snap, line, col = _circle_workspace(tmp_path, ISSUE_GEOMETRY_PY)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "copilot_ls.cli",
            "complete",
            f"{tmp_path / 'test_geometry.py'}:{line + 1}:{col + 1}",
            "--backend",
            backend_url,
            "--explain",
            "--json",
            "--max-tokens",
            "16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    prompt = out["explain"]["prompt"]
    assert "    radius: float\n" in prompt and "    def area(self) -> float: ...\n" in prompt
    assert out["explain"]["sources"][0]["kind"] == "definition"
    assert out["items"][0]["text"].startswith("area()"), out["items"]
