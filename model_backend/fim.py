"""Fill-in-the-middle (FIM): THE table of model families' FIM tokens and prompt layouts, and the backend's FIM prompts.

`FAMILIES` is read by three users: the tokenizer (which vocabulary tokens are the FIM markers:
`special_spellings`), the server (a request with a ``suffix`` becomes token ids in the family's layout:
`fim_prompt_ids`) and the language server (copilot_ls/context/fim.py lays out prompt text for servers that take no
``suffix``). To support a new family, add it here. Standard library only: the language server imports this
module without torch (the one import from copilot_ls into model_backend; docs/backend.md).

Layouts: StarCoder, Qwen2.5-Coder and DeepSeek-Coder were trained on prefix-suffix-middle
``<pre>{prefix}<suf>{suffix}<mid>``. CodeLlama's is ``<PRE> {prefix} <SUF>{suffix} <MID>`` (the paper's reference
code and llama.cpp's infill): one space after ``<PRE>`` (SentencePiece's dummy prefix of the prefix text), none
before the suffix, and one before ``<SUF>`` and ``<MID>``, which CodeLlama's vocabulary spells ``▁<SUF>``, ``▁<MID>``.
The three markers are inserted by token id, so they are exact whatever the tokenizer does with the text around them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Protocol

PSM = "{p}{prefix}{s}{suffix}{m}"  # {p}/{s}/{m}: the markers; {prefix}/{suffix}: the code around the cursor


@dataclass(frozen=True)
class FimFamily:
    prefix: str  # the markers as the family's vocabulary spells them
    suffix: str
    middle: str
    file_sep: str | None = None  # multi-file prompts (StarCoder2, Qwen2.5-Coder)
    layout: str = PSM
    extra_stops: tuple[str, ...] = ()  # end-of-text / end-of-middle markers the model may emit
    pad: str | None = None
    repo_name: tuple[str, ...] = ()
    spm_space: bool = (
        False  # a SentencePiece vocabulary may spell the markers with "▁" in front (CodeLlama's)
    )
    model_ids: str = ""  # regex on a lower-case model id (another server's /v1/models) that names the family


FAMILIES: dict[str, FimFamily] = {
    "starcoder": FimFamily(
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
        file_sep="<file_sep>",
        extra_stops=("<|endoftext|>", "<fim_pad>"),
        pad="<fim_pad>",
        repo_name=("<repo_name>", "<reponame>"),
        model_ids=r"starcoder|stable-?code|refact",
    ),
    "qwen": FimFamily(
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        file_sep="<|file_sep|>",
        extra_stops=("<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|im_end|>"),
        pad="<|fim_pad|>",
        repo_name=("<|repo_name|>",),
        model_ids=r"qwen[\d.]*[-_ ]?coder",
    ),
    "codellama": FimFamily(
        "<PRE>",
        "<SUF>",
        "<MID>",
        layout="{p} {prefix} {s}{suffix} {m}",
        extra_stops=("<EOT>", "</s>"),
        spm_space=True,
        model_ids=r"code-?llama(?!.*\b(34|70)b)",
    ),  # the 34B and 70B CodeLlamas were not trained to infill
    "deepseek": FimFamily(
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
        extra_stops=("<|EOT|>", "<｜end▁of▁sentence｜>"),
        model_ids=r"deepseek[-_ ]?coder",
    ),
}


def special_spellings() -> dict[str, tuple[str, ...]]:
    """Tokenizer.special's roles -> every spelling of that token across the families, in table order (the
    tokenizer takes the first its vocabulary has)."""
    roles: dict[str, list[str]] = {
        r: [] for r in ("fim_prefix", "fim_suffix", "fim_middle", "fim_pad", "file_sep", "repo_name")
    }
    for fam in FAMILIES.values():
        for role, marks in (
            ("fim_prefix", [fam.prefix]),
            ("fim_suffix", [fam.suffix]),
            ("fim_middle", [fam.middle]),
            ("fim_pad", [fam.pad]),
            ("file_sep", [fam.file_sep]),
            ("repo_name", list(fam.repo_name)),
        ):
            for mark in marks:
                if mark is not None:
                    roles[role] += [mark, "▁" + mark] if fam.spm_space and role.startswith("fim_") else [mark]
    return {role: tuple(dict.fromkeys(s)) for role, s in roles.items()}


def bare(token: str) -> str:
    """A marker's string without the spaces (or SentencePiece "▁") a vocabulary may spell around it."""
    return token.strip().removeprefix("▁")


def family_of(prefix: str, suffix: str, middle: str) -> str | None:
    """The family whose markers these token strings are, or None."""
    key = (bare(prefix), bare(suffix), bare(middle))
    for name, fam in FAMILIES.items():
        if (fam.prefix, fam.suffix, fam.middle) == key:
            return name
    return None


# -- the backend's FIM prompts ---------------------------------------------------------------------------------
# Our field -> the key of Tokenizer.special (see docs/architecture.md) that holds its token id.
FIM_KEYS: dict[str, str] = {
    "prefix": "fim_prefix",
    "suffix": "fim_suffix",
    "middle": "fim_middle",
    "file_sep": "file_sep",
}
REQUIRED = ("prefix", "suffix", "middle")


class TokenizerLike(Protocol):
    special: dict[str, int]
    bos_id: int | None
    add_bos: bool

    def encode(self, text: str) -> list[int]: ...
    def token_bytes(self, id: int) -> bytes: ...


@dataclass(frozen=True)
class FimTokens:
    prefix_id: int
    suffix_id: int
    middle_id: int
    file_sep_id: int | None
    strings: dict[str, str | None]  # field -> the token's text, as /v1/models reports it
    layout: str = PSM  # the family's (FAMILIES), PSM for markers no family has


def fim_tokens(tokenizer: TokenizerLike) -> FimTokens | None:
    """The model's FIM tokens, or None when its vocabulary lacks any of prefix / suffix / middle."""
    special = getattr(tokenizer, "special", None) or {}
    ids = {field: special.get(key) for field, key in FIM_KEYS.items()}
    if any(ids[f] is None for f in REQUIRED):
        return None
    strings = {
        field: (tokenizer.token_bytes(i).decode("utf-8", errors="replace") if i is not None else None)
        for field, i in ids.items()
    }
    family = family_of(strings["prefix"] or "", strings["suffix"] or "", strings["middle"] or "")
    layout = FAMILIES[family].layout if family else PSM
    return FimTokens(ids["prefix"], ids["suffix"], ids["middle"], ids["file_sep"], strings, layout)


def describe(tokenizer: TokenizerLike) -> dict[str, str | None] | None:
    """The `fim` field of a /v1/models entry: token strings, or None when the model has no FIM tokens."""
    tokens = fim_tokens(tokenizer)
    return dict(tokens.strings) if tokens else None


def fim_prompt_ids(tokenizer: TokenizerLike, fim: FimTokens, prefix: str, suffix: str) -> list[int]:
    """Token ids of a prefix and a suffix in the family's layout (BOS first when the tokenizer wants one).

    A marker whose vocabulary spelling starts with a space (CodeLlama's "▁<SUF>") stands for the layout's space
    before it; each text between markers is encoded as exactly that text (no SentencePiece dummy prefix)."""
    ids: list[int] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
    marks = {"p": ("prefix", fim.prefix_id), "s": ("suffix", fim.suffix_id), "m": ("middle", fim.middle_id)}
    text = ""
    for literal, field, _, _ in string.Formatter().parse(fim.layout):
        text += literal
        if field in ("prefix", "suffix"):
            text += prefix if field == "prefix" else suffix
        elif field is not None:
            name, mark_id = marks[field]
            spelled = fim.strings.get(name) or ""
            if spelled[:1] in (" ", "▁") and text.endswith(" "):
                text = text[:-1]
            ids.extend(_encode_exact(tokenizer, text))
            ids.append(mark_id)
            text = ""
    ids.extend(_encode_exact(tokenizer, text))
    return ids


def _encode_exact(tokenizer: TokenizerLike, text: str) -> list[int]:
    if not text:
        return []
    if getattr(
        tokenizer, "space_prefix", False
    ):  # SentencePiece: no dummy-prefix space before a piece of text
        return tokenizer.encode(text, dummy_prefix=False)  # type: ignore[call-arg]
    return tokenizer.encode(text)
