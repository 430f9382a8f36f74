"""copilot_ls/constraints.py: where the language server constrains the completion to a class's members, and
the many places it must not (not sure of the class, of all its members, or that the name is read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from copilot_ls.constraints import member_constraint
from copilot_ls.context.workspace import Workspace
from copilot_ls.documents import Document

POINT = """import math


class Point:
    scale = 2

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm(self):
        return math.sqrt(@1)

    @staticmethod
    def make(a):
        return a
"""


def at(src: str, path: str = "/tmp/constraints/a.py", workspace: Workspace | None = None):
    """The constraint at the "|" in ``src`` (removed), as (owner, typed, non-dunder choices) or None."""
    i = src.index("|")
    src = src.replace("|", "", 1)
    before = src[:i]
    line, col = before.count("\n"), len(before) - (before.rfind("\n") + 1)
    snap = Document(Path(path).as_uri(), "python", 0, src).snapshot()
    c = member_constraint(snap, line, col, workspace=workspace)
    return c and (c.owner, c.typed, [x for x in c.identifiers if not x.startswith("__")])


MEMBERS = ["make", "norm", "scale", "x", "y"]


def point(at_norm: str, tail: str = "") -> str:
    return POINT.replace("@1", at_norm) + tail


def test_self_in_a_method_reads_the_whole_class():
    assert at(point("self.|")) == ("Point", "", MEMBERS)
    assert at(point("self.n|")) == ("Point", "n", ["orm"])  # what may follow the typed "n"
    c = member_constraint(
        Document("file:///a.py", "python", 0, point("self.")).snapshot(),
        11,
        len("        return math.sqrt(self."),
    )
    assert c is not None and "__class__" in c.identifiers  # object's members too


@pytest.mark.parametrize(
    "src",
    [
        point("self.q|"),  # no member starts with "q": maybe a new one
        point('"self.|"'),  # in a string
        point("1  # self.|"),  # in a comment
        point("self.|x"),  # in the middle of a word
        POINT.replace(
            "        return math.sqrt(@1)", "        self.|"
        ),  # statement start: may bind a new attribute
        POINT.replace("class Point:", "class Point(Base):").replace("@1", "self.|"),  # unknown base
        POINT.replace("    scale = 2", "    def __getattr__(self, n):\n        pass").replace("@1", "self.|"),
        POINT.replace("    scale = 2", "    if FLAG:\n        scale = 2").replace(
            "@1", "self.|"
        ),  # conditional
        POINT.replace("class Point:", "@attr.s\nclass Point:").replace("@1", "self.|"),  # unknown decorator
        POINT.replace("class Point:", "class Point(metaclass=M):").replace("@1", "self.|"),
        POINT.replace("        return a", "        setattr(a, 'z', 1)").replace("@1", "self.|"),
        point("1", "\ndef f(p: Point):\n    p = 3\n    return p.|\n"),  # a parameter rebound
        point("1", "\ndef f():\n    p = Point(1, 2)\n    if c:\n        p = other()\n    return p.|\n"),
        point("1", "\ndef f():\n    p = make_point()\n    return p.|\n"),  # a factory: any class
        point("1", "\ndef f():\n    p = Point(1, 2)\n    for p.| in x:\n        pass\n"),  # bound by for
        point("1", "\ndef f():\n    return [p for p in q][0].|\n"),
        point("1", "\ndef f():\n    for p in ps:\n        p = Point(1, 2)\n    return p.|\n"),  # two bindings
        point("1", "\ndef f(p=Point(1, 2)):\n    return p.|\n"),  # a default, not an annotation
        point("1", "\ndef f():\n    p = Unknown(1)\n    return p.|\n"),  # a class nothing defines
        "import os\nos.|",  # a module: its namespace is not known in full here
    ],
)
def test_no_constraint_where_not_sure(src):
    assert at(src) is None


def test_known_variables_and_classes():
    assert at(point("1", "\ndef f():\n    p = Point(1, 2)\n    return p.|\n")) == ("Point", "", MEMBERS)
    assert at(point("1", "\ndef f(p: Point):\n    return p.|\n")) == ("Point", "", MEMBERS)
    assert at(point("1", "\ndef f():\n    p = Point(1, 2)\n    p.|\n")) == ("Point", "", MEMBERS)  # a call
    assert at(point("1", "\ndef f():\n    return Point.|\n")) == ("Point", "", MEMBERS)
    assert at(point("1", "\ndef f():\n    p = Point(1, 2)\n    x = p.|\n")) == ("Point", "", MEMBERS)


def test_bases_in_the_document_are_followed():
    src = point("1", "\n\nclass Q(Point):\n    def g(self):\n        return self.|\n")
    assert at(src) == ("Q", "", ["g", *MEMBERS])


def test_a_class_imported_from_the_workspace(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    pkg = tmp_path / "geo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .shapes import *\n")
    (pkg / "base.py").write_text("class Base:\n    def area(self):\n        return self.w * self.h\n")
    (pkg / "shapes.py").write_text(
        "from .base import Base\n\n\nclass Rect(Base):\n    def __init__(self, w, h):\n"
        "        self.w, self.h = w, h\n\n    def scale(self, k):\n        return Rect(self.w * k, self.h * k)\n"
    )
    ws = Workspace(tmp_path, index=False)
    test = str(tmp_path / "test_geo.py")
    src = "from geo import Rect\n\n\ndef test_rect():\n    r = Rect(1, 2)\n    assert r.|\n"
    assert at(src, test, ws) == ("Rect", "", ["area", "h", "scale", "w"])
    src = "import geo\n\n\ndef test_rect():\n    r = geo.Rect(1, 2)\n    assert r.sc|\n"
    assert at(src, test, ws) == ("geo.Rect", "sc", ["ale"])
    (pkg / "base.py").write_text("class Base(Mystery):\n    pass\n")  # a base of a base not known: not sure
    ws = Workspace(tmp_path, index=False)
    assert at("from geo import Rect\nr = Rect(1, 2)\nr.|\n", test, ws) is None


def test_the_setting_turns_it_off():
    from copilot_ls.lsp.settings import SettingsError, from_dict
    from copilot_ls.pipeline import guide_for

    snap = Document("file:///tmp/constraints/a.py", "python", 0, point("self.")).snapshot()
    col = len("        return math.sqrt(self.")
    assert from_dict({}).guided_decoding == "auto"
    assert guide_for(snap, 11, col, from_dict({})) is not None
    off = from_dict({"guidedDecoding": False})
    assert off.guided_decoding == "off" and guide_for(snap, 11, col, off) is None
    assert from_dict({"guided_decoding": "regex"}).guided_decoding == "regex"
    with pytest.raises(SettingsError, match="guided_decoding"):
        from_dict({"guidedDecoding": "sometimes"})
