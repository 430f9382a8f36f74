"""Byte-level BPE tokenizer, built with the `tokenizers` library from GGUF metadata or a tokenizer.json
(SentencePiece-style vocabularies with byte fallback, as CodeLlama's, are handled too).

Special tokens (end-of-sequence / end-of-turn, FIM, file separators) are discovered from the vocabulary by
name through the tables below; no token id is hard-coded. `encode` never adds BOS (callers add `bos_id` when
`add_bos`), and `token_bytes(id)` gives the raw bytes a token stands for, which is what streaming and token
healing need (a token may hold half of a UTF-8 character).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from model_backend import fim

# --- tables -------------------------------------------------------------------------------------------------

# Tokens that end a completion when the model emits them, besides the file's own EOS.
END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|end|>",
    "<|EOT|>",
    "<EOT>",
    "<end_of_turn>",
    "</s>",
    "<｜end▁of▁sentence｜>",
)

# Role -> the spellings model families use for it (FIM markers, file separators): model_backend/fim.py's table.
SPECIAL_TOKENS: dict[str, tuple[str, ...]] = fim.special_spellings()

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by the GGUF `tokenizer.ggml.pre` name. Each regex splits
# the pieces the previous one produced, exactly as llama.cpp applies them.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_STARCODER = (r"\p{N}", _GPT2)
_DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}")
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")

PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "default": _DEFAULT,
    "gpt-2": (_GPT2,),
    "gpt2": (_GPT2,),
    "phi-2": (_GPT2,),
    "mpt": (_GPT2,),
    "olmo": (_GPT2,),
    "jais": (_GPT2,),
    "starcoder": _STARCODER,
    "smollm": _STARCODER,
    "refact": _STARCODER,
    "command-r": _STARCODER,
    "codeshell": _STARCODER,
    "exaone": _STARCODER,
    "minerva-7b": _STARCODER,
    "qwen2": (_QWEN2,),
    "stablelm2": (_QWEN2,),
    "deepseek-r1-qwen": (_QWEN2,),
    "megrez": (_QWEN2,),
    "llama3": (_LLAMA3,),
    "llama-v3": (_LLAMA3,),
    "llama-bpe": (_LLAMA3,),
    "falcon3": (_LLAMA3,),
    "smaug-bpe": (_LLAMA3,),
    "dbrx": (_LLAMA3,),
    "pixtral": (_LLAMA3,),
    "deepseek-coder": _DEEPSEEK_CODER,
}

# GGUF token types (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4


def _add_gguf_added_tokens(
    tk: tokenizers.Tokenizer,
    tokens: Sequence[str],
    token_types: Sequence[int],
    bos_id: int | None,
    eos_id: int | None,
) -> tuple[int | None, int | None]:
    """Register a GGUF vocabulary's control tokens as special and its user-defined tokens as added ones (both
    kept whole, never split or normalised); returns bos/eos ids, None where they lie outside the vocabulary."""
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, token_types, strict=False)
        if ty == _CONTROL
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, token_types, strict=False)
        if ty == _USER_DEFINED
    ]
    if control:
        tk.add_special_tokens(control)
    if user:
        tk.add_tokens(user)

    def in_vocab(i: int | None) -> int | None:
        return i if i is not None and 0 <= i < len(tokens) else None

    return in_vocab(bos_id), in_vocab(eos_id)


class TokenizerError(ValueError):
    """The tokenizer data is unusable; `weights.load_checkpoint` turns this into a ModelLoadError."""


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character spelling of bytes, inverted: character -> byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _token_to_bytes(token: str, special: bool) -> bytes:
    if special:
        return token.encode("utf-8")
    table = byte_decoder()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError:  # not spelled in the byte alphabet (an added token such as "<|im_end|>")
        return token.encode("utf-8")


_SPM_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _spm_piece_bytes(piece: str, literal: bool) -> bytes:
    if literal:
        return piece.encode("utf-8")
    m = _SPM_BYTE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def spm_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a piece into two pieces, best score
    first (as transformers' `generate_merges` recovers them for GGUF files, which store no merges)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, score in zip(tokens, scores, strict=False):
        local = [
            (piece[:k], piece[k:], score)
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        found.extend(local)
    found.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    regexes = PRE_TOKENIZER_REGEXES.get(pre)
    if regexes is None:
        raise TokenizerError(
            f"unknown pre-tokenizer {pre!r} (known: {', '.join(sorted(PRE_TOKENIZER_REGEXES))})"
        )
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
    return pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def discover_special(vocab: dict[str, int]) -> dict[str, int]:
    found: dict[str, int] = {}
    for role, spellings in SPECIAL_TOKENS.items():
        for s in spellings:
            if s in vocab:
                found[role] = vocab[s]
                break
    return found


def discover_eos(vocab: dict[str, int], eos_id: int | None) -> frozenset[int]:
    ids = {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    if eos_id is not None:
        ids.add(eos_id)
    return frozenset(ids)


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what the engine needs: BOS/EOS ids, special roles and token bytes."""

    def __init__(
        self,
        tk: tokenizers.Tokenizer,
        *,
        bos_id: int | None,
        add_bos: bool,
        eos_id: int | None,
        space_prefix: bool = False,
    ) -> None:
        self.tk = tk
        self.space_prefix = space_prefix  # SentencePiece's dummy prefix: one space before the whole text
        # "byte_level": GPT-2 byte alphabet (SmolLM2, StarCoder2, Qwen2.5, DeepSeek-Coder);
        # "sentencepiece": "▁" for spaces plus <0xHH> byte-fallback tokens (CodeLlama / Llama 2)
        self.kind = "sentencepiece" if getattr(tk.model, "byte_fallback", False) else "byte_level"
        vocab = tk.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values()) + 1 if vocab else 0
        self.bos_id = bos_id
        self.add_bos = add_bos
        self.eos_id = eos_id
        # Special roles are looked up among the added (control / user-defined) tokens of a byte-level vocabulary,
        # where an ordinary merge may well spell "</s>" or "<PRE>"; SentencePiece files (CodeLlama) keep their
        # FIM pieces in the main vocabulary.
        added = {t.content: i for i, t in tk.get_added_tokens_decoder().items()}
        pool = vocab if self.kind == "sentencepiece" else added
        self.eos_ids: frozenset[int] = discover_eos(pool, eos_id)
        self.special: dict[str, int] = discover_special(pool)
        # added tokens whose text is literal rather than spelled in the byte alphabet
        alphabet = set(byte_decoder())
        self.literal_ids: frozenset[int] = frozenset(
            i for i, t in tk.get_added_tokens_decoder().items() if t.special or not set(t.content) <= alphabet
        )
        pieces: list[str] = [""] * self.vocab_size
        for token, i in vocab.items():
            pieces[i] = token
        self._pieces = pieces
        self._bytes: list[bytes | None] = [None] * self.vocab_size
        self._byte_ok: frozenset[int] | None = None
        self._plain: tokenizers.Tokenizer | None = None

    # --- the contract ---------------------------------------------------------------------------------------
    def encode(self, text: str, *, special: bool = True, dummy_prefix: bool = True) -> list[int]:
        """Token ids of `text` (no BOS). Special-token text such as "<|im_end|>" becomes its single id, like
        transformers and llama.cpp do; with special=False it is encoded as the plain text it is (for a user's
        file that happens to contain such strings). A byte the vocabulary has no token for (SmolLM2 lacks a few
        control bytes and 0xF1/0xF2) is dropped, as transformers does; `representable(text)` tells.
        dummy_prefix=False: no SentencePiece dummy-prefix space (a piece of text that continues others, as the
        suffix of a CodeLlama FIM prompt)."""
        if self.space_prefix and dummy_prefix:
            if not text:
                return []
            text = " " + text
        tk = self.tk if special else self._plain_tokenizer()
        return tk.encode(text, add_special_tokens=False).ids

    def _plain_tokenizer(self) -> tokenizers.Tokenizer:
        if self._plain is None:
            self._plain = tokenizers.Tokenizer.from_str(self.tk.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    def decode(self, ids: Sequence[int]) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    def representable(self, text: str) -> bool:
        """True when every byte of `text` has a token, so decode(encode(text)) == text."""
        if self._byte_ok is None:
            vocab = self.tk.get_vocab(with_added_tokens=False)
            if self.kind == "sentencepiece":
                self._byte_ok = frozenset(b for b in range(256) if f"<0x{b:02X}>" in vocab)
            else:
                self._byte_ok = frozenset(b for ch, b in byte_decoder().items() if ch in vocab)
        return set(text.encode("utf-8")) <= self._byte_ok

    def token_bytes(self, id: int) -> bytes:
        b = self._bytes[id]
        if b is None:
            piece = self._pieces[id]
            if self.kind == "sentencepiece":
                b = _spm_piece_bytes(piece, id in self.literal_ids)
            else:
                b = _token_to_bytes(piece, id in self.literal_ids)
            self._bytes[id] = b
        return b

    def all_token_bytes(self) -> list[bytes]:
        """`token_bytes` for every id (index = id): token healing's sorted vocabulary."""
        return [self.token_bytes(i) for i in range(self.vocab_size)]

    def token_text(self, id: int) -> str:
        return self.token_bytes(id).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """Everything needed to rebuild this tokenizer (`from_json`), for the converted-weights cache."""
        return json.dumps(
            {
                "tokenizer": json.loads(self.tk.to_str()),
                "bos_id": self.bos_id,
                "add_bos": self.add_bos,
                "eos_id": self.eos_id,
                "space_prefix": self.space_prefix,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        d = json.loads(text)
        tk = tokenizers.Tokenizer.from_str(json.dumps(d["tokenizer"]))
        return cls(
            tk,
            bos_id=d["bos_id"],
            add_bos=d["add_bos"],
            eos_id=d["eos_id"],
            space_prefix=d.get("space_prefix", False),
        )

    # --- constructors ---------------------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, reader: Any) -> Tokenizer:
        """Build from a `gguf.GGUFReader`'s `tokenizer.ggml.*` metadata: gpt2-style byte-level BPE, or a
        SentencePiece vocabulary ("llama")."""
        fields = reader.fields

        def get(key: str, default: Any = None) -> Any:
            f = fields.get(key)
            return default if f is None else f.contents()

        model = get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError("no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)")
        if model == "llama":
            tokens_ = get("tokenizer.ggml.tokens") or []
            if not tokens_:
                raise TokenizerError("GGUF tokenizer has no tokens")
            return cls.from_sentencepiece(
                tokens_,
                get("tokenizer.ggml.scores") or [0.0] * len(tokens_),
                get("tokenizer.ggml.token_type") or [1] * len(tokens_),
                bos_id=get("tokenizer.ggml.bos_token_id"),
                eos_id=get("tokenizer.ggml.eos_token_id"),
                add_bos=bool(get("tokenizer.ggml.add_bos_token", True)),  # llama.cpp's default for SPM
                add_space_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)),
            )
        if model != "gpt2":
            raise TokenizerError(
                f"unsupported tokenizer model {model!r} (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)"
            )
        tokens: list[str] = get("tokenizer.ggml.tokens") or []
        merges: list[str] = get("tokenizer.ggml.merges") or []
        if not tokens or not merges:
            raise TokenizerError("GGUF tokenizer has no tokens or no merges")
        types: list[int] = get("tokenizer.ggml.token_type") or [1] * len(tokens)
        pre = get("tokenizer.ggml.pre", "default")
        return cls.from_vocab(
            tokens,
            merges,
            types,
            pre=pre,
            bos_id=get("tokenizer.ggml.bos_token_id"),
            eos_id=get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(get("tokenizer.ggml.add_bos_token", False)),
        )

    @classmethod
    def from_vocab(
        cls,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int],
        *,
        pre: str,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
    ) -> Tokenizer:
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError("duplicate tokens in the vocabulary")
        pairs = []
        for m in merges:
            a, sep, b = m.partition(" ")
            if not sep:
                raise TokenizerError(f"malformed merge {m!r}")
            pairs.append((a, b))
        try:
            tk = tokenizers.Tokenizer(
                models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=False)
            )
        except Exception as e:  # tokenizers raises plain Exception, e.g. a merge of unknown tokens
            raise TokenizerError(f"inconsistent BPE vocabulary/merges: {e}") from e
        tk.pre_tokenizer = byte_level_pre_tokenizer(pre)
        tk.decoder = decoders.ByteLevel()
        bos_id, eos_id = _add_gguf_added_tokens(tk, tokens, token_types, bos_id, eos_id)
        return cls(tk, bos_id=bos_id, add_bos=add_bos, eos_id=eos_id)

    @classmethod
    def from_sentencepiece(
        cls,
        tokens: Sequence[str],
        scores: Sequence[float],
        token_types: Sequence[int],
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        add_space_prefix: bool = True,
    ) -> Tokenizer:
        """A SentencePiece-BPE vocabulary (GGUF `tokenizer.ggml.model == "llama"`: CodeLlama, Llama 2): BPE with
        byte fallback, "▁" for spaces and merges recovered from the scores. Plain text encodes as the
        `sentencepiece` library does (tested)."""
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError("duplicate tokens in the vocabulary")
        try:
            bpe = models.BPE(
                vocab=vocab, merges=spm_merges(tokens, scores), fuse_unk=True, byte_fallback=True
            )
        except Exception as e:
            raise TokenizerError(f"inconsistent SentencePiece vocabulary: {e}") from e
        tk = tokenizers.Tokenizer(bpe)
        # SentencePiece adds one dummy-prefix space before the whole text, also when it starts with a space or
        # a special token; `encode` does that (a Metaspace pre-tokenizer or a Prepend normalizer would skip it
        # or repeat it after every special token)
        tk.normalizer = normalizers.Replace(" ", "▁")
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_space_prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
        tk.decoder = decoders.Sequence(steps)
        bos_id, eos_id = _add_gguf_added_tokens(tk, tokens, token_types, bos_id, eos_id)
        return cls(tk, bos_id=bos_id, add_bos=add_bos, eos_id=eos_id, space_prefix=add_space_prefix)

    @classmethod
    def from_tokenizer_json(
        cls, path: str | Path, *, bos_id: int | None = None, eos_id: int | None = None
    ) -> Tokenizer:
        """Load a Hugging Face `tokenizer.json`; BOS/EOS come from a sibling tokenizer_config.json when present,
        else from the ids given (e.g. config.json's `bos_token_id` / `eos_token_id`)."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"missing tokenizer file {path}")
        try:
            tk = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise TokenizerError(f"unreadable tokenizer file {path}: {e}") from e
        cfg: dict[str, Any] = {}
        cfg_path = path.with_name("tokenizer_config.json")
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise TokenizerError(f"unreadable {cfg_path}: {e}") from e

        def token_id(value: Any) -> int | None:
            if isinstance(value, dict):
                value = value.get("content")
            return tk.token_to_id(value) if isinstance(value, str) else None

        bos = token_id(cfg.get("bos_token")) if "bos_token" in cfg else bos_id
        eos = token_id(cfg.get("eos_token")) if cfg.get("eos_token") else eos_id
        add_bos = cfg.get("add_bos_token")
        if add_bos is None:  # a post-processor that inserts BOS means the model was trained with it
            post = json.loads(tk.to_str()).get("post_processor") or {}
            single = post.get("single") or []
            add_bos = bool(bos is not None and single and "SpecialToken" in single[0])
        return cls(tk, bos_id=bos, add_bos=bool(add_bos), eos_id=eos)
