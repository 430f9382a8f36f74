"""Fill-in-the-middle (FIM) prompts from the special tokens the tokenizer discovered in the vocabulary.

A request with a ``suffix`` becomes prefix-suffix-middle (PSM) token ids:
``[bos] <fim_prefix> prefix <fim_suffix> suffix <fim_middle>`` — the layout StarCoder, Qwen2.5-Coder,
DeepSeek-Coder and SantaCoder were trained on. The three markers are inserted by id, so they are exact whatever
the tokenizer does with the text around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
    strings: dict[str, str | None]   # field -> the token's text, as /v1/models reports it


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
    return FimTokens(ids["prefix"], ids["suffix"], ids["middle"], ids["file_sep"], strings)


def describe(tokenizer: TokenizerLike) -> dict[str, str | None] | None:
    """The `fim` field of a /v1/models entry: token strings, or None when the model has no FIM tokens."""
    tokens = fim_tokens(tokenizer)
    return dict(tokens.strings) if tokens else None


def fim_prompt_ids(tokenizer: TokenizerLike, fim: FimTokens, prefix: str, suffix: str) -> list[int]:
    """PSM token ids for a prefix and a suffix (BOS first when the tokenizer wants one)."""
    ids: list[int] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
    ids.append(fim.prefix_id)
    ids.extend(tokenizer.encode(prefix))
    ids.append(fim.suffix_id)
    ids.extend(tokenizer.encode(suffix))
    ids.append(fim.middle_id)
    return ids
