"""The one table of model families' FIM tokens (model_backend/fim.py) and its three readers: the tokenizer (which
vocabulary tokens are FIM markers), the server (FIM prompts as token ids) and the language server (FIM prompts as
text, copilot_ls/context/fim.py). They must agree on every family's markers and layout."""

from __future__ import annotations

import pytest

from copilot_ls.context import fim as ls_fim
from model_backend import fim
from model_backend.tokenizer import SPECIAL_TOKENS


class CharTokenizer:
    """One id per character (1000 + code point) plus the given markers (ids 0..); `space_prefix` adds a
    SentencePiece dummy-prefix space as model_backend.tokenizer.Tokenizer does."""

    def __init__(self, marks: dict[str, str], space_prefix: bool = False) -> None:
        self.special = {role: i for i, role in enumerate(marks)}
        self._marks = {i: marks[role] for role, i in self.special.items()}
        self.bos_id, self.add_bos, self.space_prefix = None, False, space_prefix

    def encode(self, text: str, dummy_prefix: bool = True) -> list[int]:
        if self.space_prefix and dummy_prefix and text:
            text = " " + text
        return [1000 + ord(c) for c in text]

    def token_bytes(self, i: int) -> bytes:
        return self._marks[i].encode() if i < 1000 else chr(i - 1000).encode()

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode()


PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.mark.parametrize("name", list(fim.FAMILIES))
def test_the_tokenizer_the_server_and_the_language_server_agree(name: str) -> None:
    family = fim.FAMILIES[name]
    # the tokenizer looks for every family's markers
    for role, mark in (
        ("fim_prefix", family.prefix),
        ("fim_suffix", family.suffix),
        ("fim_middle", family.middle),
        ("file_sep", family.file_sep),
        ("fim_pad", family.pad),
    ):
        assert mark is None or mark in SPECIAL_TOKENS[role]
    # the language server's template is the table's
    template = ls_fim.FAMILIES[name]
    assert (
        template.prefix,
        template.suffix,
        template.middle,
        template.file_sep,
        template.layout,
        template.extra_stops,
    ) == (family.prefix, family.suffix, family.middle, family.file_sep, family.layout, family.extra_stops)
    assert (
        ls_fim.template_for(
            {
                "prefix": family.prefix,
                "suffix": family.suffix,
                "middle": family.middle,
                "file_sep": family.file_sep,
            }
        )
        is template
    )
    # the server's FIM token ids spell the language server's prompt text
    tok = CharTokenizer(
        {"fim_prefix": family.prefix, "fim_suffix": family.suffix, "fim_middle": family.middle}
    )
    tokens = fim.fim_tokens(tok)
    assert tokens is not None and tokens.layout == family.layout
    assert tok.decode(fim.fim_prompt_ids(tok, tokens, PREFIX, SUFFIX)) == template.format(PREFIX, SUFFIX)


def test_codellama_sentencepiece_markers_carry_the_layout_s_spaces() -> None:
    """CodeLlama's vocabulary spells the markers "▁<PRE>", "▁<SUF>", "▁<MID>" (text " <PRE>"...), and its tokenizer
    adds a dummy-prefix space: the ids still spell `<PRE> {prefix} <SUF>{suffix} <MID>`, as CodeLlama's reference
    code builds them (one space from each marker, the prefix's dummy space, none before the suffix)."""
    tok = CharTokenizer(
        {"fim_prefix": " <PRE>", "fim_suffix": " <SUF>", "fim_middle": " <MID>"}, space_prefix=True
    )
    tokens = fim.fim_tokens(tok)
    assert tokens is not None and tokens.layout == fim.FAMILIES["codellama"].layout
    ids = fim.fim_prompt_ids(tok, tokens, "x = ", ";")
    assert (
        tok.decode(ids)
        == " " + ls_fim.FAMILIES["codellama"].format("x = ", ";")
        == " <PRE> x =  <SUF>; <MID>"
    )
    assert ids == [
        tokens.prefix_id,
        *tok.encode("x = "),
        tokens.suffix_id,
        *tok.encode(";", dummy_prefix=False),
        tokens.middle_id,
    ]


def test_the_tokenizer_s_spellings_are_the_table_s() -> None:
    """Which spelling of a role the tokenizer looks for first is the table's order (pinned: a vocabulary may hold
    several)."""
    assert SPECIAL_TOKENS == {
        "fim_prefix": ("<fim_prefix>", "<|fim_prefix|>", "<PRE>", "▁<PRE>", "<｜fim▁begin｜>"),
        "fim_suffix": ("<fim_suffix>", "<|fim_suffix|>", "<SUF>", "▁<SUF>", "<｜fim▁hole｜>"),
        "fim_middle": ("<fim_middle>", "<|fim_middle|>", "<MID>", "▁<MID>", "<｜fim▁end｜>"),
        "fim_pad": ("<fim_pad>", "<|fim_pad|>"),
        "file_sep": ("<file_sep>", "<|file_sep|>"),
        "repo_name": ("<repo_name>", "<reponame>", "<|repo_name|>"),
    }


def test_unknown_markers_get_prefix_suffix_middle() -> None:
    tok = CharTokenizer({"fim_prefix": "<A>", "fim_suffix": "<B>", "fim_middle": "<C>"})
    tokens = fim.fim_tokens(tok)
    assert tokens is not None and fim.family_of("<A>", "<B>", "<C>") is None
    assert tok.decode(fim.fim_prompt_ids(tok, tokens, "p", "s")) == "<A>p<B>s<C>"
