"""Position-encoding conversion: UTF-16 / UTF-8 / UTF-32 client columns <-> code points."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copilot_ls.documents import Document, from_codepoints, split_lines, to_codepoints

EMOJI = "x = '😀' + y"  # 😀 is U+1F600: 2 UTF-16 units, 4 UTF-8 bytes
CJK = "名前 = '東京'"  # each CJK char: 1 UTF-16 unit, 3 UTF-8 bytes
COMBINING = "cafe\u0301 = 1"  # e + COMBINING ACUTE ACCENT: two code points, one glyph


@pytest.mark.parametrize(
    ("line", "cp", "utf16", "utf8"),
    [
        (EMOJI, 5, 5, 5),  # before the emoji
        (EMOJI, 6, 7, 9),  # after the emoji
        (EMOJI, len(EMOJI), len(EMOJI) + 1, len(EMOJI) + 3),  # end of line
        (CJK, 1, 1, 3),
        (CJK, 2, 2, 6),
        (CJK, len(CJK), len(CJK), len(CJK.encode())),
        (COMBINING, 4, 4, 4),
        (COMBINING, 5, 5, 6),  # after the combining mark (U+0301 is 2 UTF-8 bytes)
        ("", 0, 0, 0),
    ],
)
def test_known_columns_both_ways(line: str, cp: int, utf16: int, utf8: int) -> None:
    assert from_codepoints(line, cp, "utf-16") == utf16
    assert from_codepoints(line, cp, "utf-8") == utf8
    assert from_codepoints(line, cp, "utf-32") == cp
    assert to_codepoints(line, utf16, "utf-16") == cp
    assert to_codepoints(line, utf8, "utf-8") == cp
    assert to_codepoints(line, cp, "utf-32") == cp


def test_past_the_end_clamps() -> None:
    for enc in ("utf-8", "utf-16", "utf-32"):
        assert to_codepoints(EMOJI, 10_000, enc) == len(EMOJI)
        assert from_codepoints(EMOJI, 10_000, enc) == from_codepoints(EMOJI, len(EMOJI), enc)
        assert to_codepoints(EMOJI, -3, enc) == 0


def test_inside_a_surrogate_pair_rounds_down() -> None:
    # UTF-16 column 6 is between the two halves of 😀 (which starts at unit 5): round to its start.
    assert to_codepoints(EMOJI, 6, "utf-16") == 5
    # UTF-8 columns 6..8 are inside the emoji's 4 bytes.
    assert [to_codepoints(EMOJI, c, "utf-8") for c in (6, 7, 8)] == [5, 5, 5]


def test_unknown_encoding_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown position encoding 'latin-1'"):
        to_codepoints("abc", 1, "latin-1")


@given(st.text(max_size=40), st.data())
def test_round_trip_property(line: str, data: st.DataObject) -> None:
    line = "".join(split_lines(line))  # one line
    cp = data.draw(st.integers(0, len(line)))
    for enc in ("utf-8", "utf-16", "utf-32"):
        units = from_codepoints(line, cp, enc)
        assert to_codepoints(line, units, enc) == cp
    assert from_codepoints(line, cp, "utf-16") == len(line[:cp].encode("utf-16-le", "surrogatepass")) // 2
    assert from_codepoints(line, cp, "utf-8") == len(line[:cp].encode("utf-8", "surrogatepass"))


def test_edit_after_emoji_and_cjk_lands_in_the_right_place() -> None:
    """A client sends a UTF-16 position after an emoji; converting with the line text puts the edit right."""
    doc = Document("file:///tmp/u.py", "python", 1, "s = '😀'\nt = '東京'\n")
    line0 = doc.snapshot().lines()[0]
    col = to_codepoints(line0, from_codepoints(line0, len(line0), "utf-16"), "utf-16")
    doc.apply_change("  # ok", (0, col), (0, col))
    line1 = doc.snapshot().lines()[1]
    col = to_codepoints(line1, 7, "utf-8")  # after "t = '東" (5 + 3 bytes -> 8; 7 is inside 東 -> before it)
    assert col == 5
    doc.apply_change("大", (1, to_codepoints(line1, 8, "utf-8")), (1, to_codepoints(line1, 8, "utf-8")))
    assert doc.text == "s = '😀'  # ok\nt = '東大京'\n"
    fresh = doc._parser.parse(doc.text.encode())
    assert str(doc.tree.root_node) == str(fresh.root_node)
    assert not doc.tree.root_node.has_error
