"""model_backend.tokenizer: byte-level BPE from GGUF metadata and from tokenizer.json; exact round trips of
code, agreement with a reference tokenizer, special tokens discovered from the vocabulary, raw token bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tiny_models import ARCHS, TOKENIZER_FLAVOUR, make_tiny_gguf, make_tiny_model, rewrite_gguf

from model_backend.tokenizer import PRE_TOKENIZER_REGEXES, Tokenizer, TokenizerError
from model_backend.weights import ModelLoadError, load_checkpoint

REPO = Path(__file__).resolve().parents[2]

SAMPLES = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'k': [1, 2, 3]}\n\n\n",
    "x = 12345 + 0.5e-10  # 数字 and ünïcödé\n",
    "print('こんにちは世界')  # 🎉🐍 emoji, 👩‍💻 ZWJ sequence\n",
    "\n    \n        \n    ",  # whitespace runs, indentation without code
    "if (a &&b||c) { return a->b[i++]; }\r\n",  # CRLF
    "    ",
    "\n",
    "",
    " leading space, trailing spaces   ",
    "it's we'll THEY'RE you'd I'M",
    "<|im_start|>user\nwrite code<|im_end|>\n",
    "SELECT * FROM t WHERE name = 'O''Brien';\n-- comment\n",
    'fn main() {\n    let s = "tab\\there";\n    println!("{s}");\n}\n',
    "\u00a0non-breaking\u2003em-space\u200bzero-width\t\v\f",
]


def _repo_code() -> list[str]:
    files = sorted((REPO / "model_backend").glob("*.py")) + sorted((REPO / "tests" / "backend").glob("*.py"))
    import json as json_mod
    import textwrap

    files += [Path(json_mod.__file__).parent / "decoder.py", Path(textwrap.__file__)]
    return [f.read_text(encoding="utf-8") for f in files if f.is_file()]


# --- the default model's tokenizer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_tok() -> Tokenizer:
    return load_checkpoint("default", progress=False).tokenizer


@pytest.fixture(scope="module")
def default_tok_from_gguf() -> Tokenizer:
    """Built straight from the GGUF metadata (not from the converted-weights cache)."""
    from model_backend.weights import resolve_model

    return Tokenizer.from_gguf(gguf.GGUFReader(resolve_model("default")))


def test_default_tokenizer_facts(default_tok):
    tok = default_tok
    v = tok.tk.get_vocab()
    assert tok.vocab_size == 49152
    assert tok.add_bos is False
    assert tok.bos_id == v["<|im_start|>"] and tok.eos_id == v["<|im_end|>"]
    assert tok.eos_ids == {v["<|im_end|>"], v["<|endoftext|>"]}
    assert tok.special == {"repo_name": v["<repo_name>"], "file_sep": v["<file_sep>"]}  # no FIM tokens
    assert tok.encode("<|im_end|>") == [v["<|im_end|>"]]
    assert tok.token_bytes(v["<|im_end|>"]) == b"<|im_end|>"
    assert tok.token_bytes(v["Ġthe"]) == b" the" and tok.token_bytes(v["Ċ"]) == b"\n"


def test_cached_tokenizer_equals_the_one_built_from_gguf(default_tok, default_tok_from_gguf):
    a, b = default_tok, default_tok_from_gguf
    assert (a.vocab_size, a.bos_id, a.eos_id, a.eos_ids, a.special, a.add_bos) == (
        b.vocab_size,
        b.bos_id,
        b.eos_id,
        b.eos_ids,
        b.special,
        b.add_bos,
    )
    for text in SAMPLES + _repo_code():
        assert a.encode(text) == b.encode(text)
    assert a.all_token_bytes() == b.all_token_bytes()


@pytest.mark.parametrize("i", range(len(SAMPLES)))
def test_default_round_trip_and_bytes(default_tok, i):
    text = SAMPLES[i]
    ids = default_tok.encode(text)
    assert default_tok.decode(ids) == text
    assert b"".join(default_tok.token_bytes(t) for t in ids) == text.encode("utf-8")


def test_default_round_trip_of_real_files(default_tok):
    for text in _repo_code():
        ids = default_tok.encode(text)
        assert default_tok.decode(ids) == text
        assert b"".join(default_tok.token_bytes(t) for t in ids) == text.encode("utf-8")
        assert len(ids) < len(text) / 2.0  # it really merges: code is ~3-4 characters per token


def test_default_splits_digits_and_keeps_indent_runs(default_tok):
    tok = default_tok
    assert [tok.token_text(t) for t in tok.encode("x = 12345")] == ["x", " =", " ", "1", "2", "3", "4", "5"]
    # llama.cpp's gpt2-style `\s+(?!\S)`: the newline+indent run leaves its last space to the next word
    pieces = [tok.token_text(t) for t in tok.encode("a:\n        return b")]
    assert "".join(pieces) == "a:\n        return b"
    assert pieces[-2:] == [" return", " b"]


def test_token_bytes_of_split_characters(default_tok):
    text = "🐍"  # four UTF-8 bytes, not one token in this vocabulary
    ids = default_tok.encode(text)
    parts = [default_tok.token_bytes(t) for t in ids]
    assert len(ids) > 1 and b"".join(parts) == text.encode()
    assert any(not p.decode("utf-8", errors="ignore") for p in parts)  # a token holding part of a character
    assert len(default_tok.all_token_bytes()) == default_tok.vocab_size


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_default_round_trip_property(default_tok_from_gguf, text):
    tok = default_tok_from_gguf
    assume(tok.representable(text))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(t) for t in ids) == text.encode("utf-8")


def test_bytes_missing_from_the_vocabulary_are_dropped(default_tok):
    assert not default_tok.representable("a\x04b") and default_tok.representable("a\tb 🐍 世界")
    assert default_tok.decode(default_tok.encode("a\x04b")) == "ab"


@pytest.fixture(scope="module")
def reference_tokenizer():
    """transformers' tokenizer built from the same GGUF (offline; slow, so once per module)."""
    transformers = pytest.importorskip("transformers")
    from model_backend.weights import resolve_model

    path = resolve_model("default")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _smollm2_reference(reference_tokenizer):
    """transformers' GGUF tokenizer gives every `gpt2` vocabulary GPT-2's pre-tokenizer and so ignores the
    file's `smollm` pre-tokenizer name. SmolLM2's own tokenizer.json (and llama.cpp's "smollm") first isolates
    each digit: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]. Put that back."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    backend = HFTokenizer.from_str(reference_tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return backend


@pytest.mark.slow
def test_default_ids_agree_with_reference_tokenizer(default_tok, reference_tokenizer):
    ref = _smollm2_reference(reference_tokenizer)
    for text in SAMPLES + _repo_code():
        assert default_tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, text[:60]
    # without digits the pre-tokenizers agree, and so does transformers' tokenizer as it comes
    for text in SAMPLES + _repo_code():
        if not any(ch.isdigit() for ch in text):
            assert default_tok.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False)
    # where they differ, ours is SmolLM2's: a digit never joins the whitespace before it
    assert [default_tok.token_text(t) for t in default_tok.encode(":\n  1.")] == [":", "\n  ", "1", "."]


# --- tiny tokenizers: GGUF metadata vs tokenizer.json -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory) -> dict[str, tuple[Tokenizer, Tokenizer]]:
    """(from tokenizer.json, from GGUF metadata) per architecture."""
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for arch in ARCHS:
        hf = load_checkpoint(make_tiny_model(arch, root / arch)).tokenizer
        path, _ = make_tiny_gguf(arch, root / f"{arch}.gguf")
        out[arch] = (hf, Tokenizer.from_gguf(gguf.GGUFReader(path)))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_gguf_tokenizer_equals_tokenizer_json(tiny_pairs, arch):
    a, b = tiny_pairs[arch]
    assert a.vocab_size == b.vocab_size
    assert a.special == b.special and a.eos_ids == b.eos_ids
    for text in SAMPLES + _repo_code()[:3]:
        ids = b.encode(text)
        assert ids == a.encode(text)
        assert b.decode(ids) == text
        assert b"".join(b.token_bytes(t) for t in ids) == text.encode("utf-8")
    assert a.all_token_bytes() == b.all_token_bytes()


def test_tiny_special_tokens_are_discovered(tiny_pairs):
    q = tiny_pairs["qwen2"][1]
    qv = q.tk.get_vocab()
    assert {
        k: qv[s]
        for k, s in [
            ("fim_prefix", "<|fim_prefix|>"),
            ("fim_suffix", "<|fim_suffix|>"),
            ("fim_middle", "<|fim_middle|>"),
            ("fim_pad", "<|fim_pad|>"),
            ("file_sep", "<|file_sep|>"),
            ("repo_name", "<|repo_name|>"),
        ]
    } == q.special
    assert q.eos_ids == {qv["<|endoftext|>"], qv["<|im_end|>"]}
    s = tiny_pairs["starcoder2"][1]
    sv = s.tk.get_vocab()
    assert s.special["fim_prefix"] == sv["<fim_prefix>"] and s.special["repo_name"] == sv["<repo_name>"]
    assert s.encode("<fim_prefix>def<fim_suffix>") == [
        sv["<fim_prefix>"],
        *s.encode("def"),
        sv["<fim_suffix>"],
    ]
    assert "fim_prefix" not in tiny_pairs["llama"][1].special


@pytest.mark.parametrize("arch", ARCHS)
def test_json_round_trip_of_the_tokenizer(tiny_pairs, arch):
    tok = tiny_pairs[arch][1]
    back = Tokenizer.from_json(tok.to_json())
    assert (back.bos_id, back.eos_id, back.add_bos, back.special, back.eos_ids) == (
        tok.bos_id,
        tok.eos_id,
        tok.add_bos,
        tok.special,
        tok.eos_ids,
    )
    for text in SAMPLES:
        assert back.encode(text) == tok.encode(text)


def test_pre_tokenizer_table_covers_the_tiny_flavours():
    for pre, _ in TOKENIZER_FLAVOUR.values():
        assert pre in PRE_TOKENIZER_REGEXES


def test_unknown_pre_tokenizer_is_a_clear_error(tmp_path):
    path, _ = make_tiny_gguf("llama", tmp_path / "m.gguf")
    r = gguf.GGUFReader(path)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    with pytest.raises(TokenizerError, match="unknown pre-tokenizer 'klingon'"):
        Tokenizer.from_vocab(
            tokens, merges, [1] * len(tokens), pre="klingon", bos_id=None, eos_id=None, add_bos=False
        )
    with pytest.raises(TokenizerError, match="inconsistent BPE"):
        Tokenizer.from_vocab(
            tokens, ["zzz qqq"], [1] * len(tokens), pre="gpt2", bos_id=None, eos_id=None, add_bos=False
        )
    bad = rewrite_gguf(path, tmp_path / "sp.gguf", drop_keys=("tokenizer.ggml.model",))
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_checkpoint(bad, cache_dir=tmp_path / "cache", progress=False)


def test_tokenizer_json_with_tokenizer_config(tmp_path):
    d = make_tiny_model("llama", tmp_path / "m")
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": True}
        )
    )
    tok = Tokenizer.from_tokenizer_json(d / "tokenizer.json")
    v = tok.tk.get_vocab()
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (v["<|im_start|>"], v["<|im_end|>"], True)
    assert tok.encode("hi") == tok.encode("hi")  # encode never adds BOS itself
    assert tok.bos_id not in tok.encode("hi")


def test_missing_or_broken_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="missing tokenizer file"):
        Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="unreadable tokenizer file"):
        Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")


# --- SentencePiece vocabularies (CodeLlama-style GGUF: tokenizer.ggml.model == "llama") ---------------------


@pytest.fixture(scope="module")
def spm_pair(tmp_path_factory):
    """(our tokenizer from a tiny SentencePiece GGUF, the `sentencepiece` processor it was exported from)."""
    spm = pytest.importorskip("sentencepiece")
    from tiny_models import spm_model_proto

    path, _ = make_tiny_gguf("llama", tmp_path_factory.mktemp("spm") / "spm.gguf", tokenizer="spm")
    tok = load_checkpoint(path, cache_dir=tmp_path_factory.mktemp("cache"), progress=False).tokenizer
    return tok, spm.SentencePieceProcessor(model_proto=spm_model_proto())


def _plain(texts: list[str]) -> list[str]:
    """Texts without the strings of control tokens or a literal '▁' (both are ambiguous in SentencePiece)."""
    return [t for t in texts if "▁" not in t and not any(s in t for s in ("<s>", "</s>", "<unk>"))]


def test_sentencepiece_gguf_matches_the_sentencepiece_library(spm_pair):
    from tiny_models import TRAINING_TEXT

    tok, sp = spm_pair
    assert tok.kind == "sentencepiece" and tok.space_prefix
    texts = _plain(
        SAMPLES + [TRAINING_TEXT, "<PRE> def f(): <SUF>\n    return 1<MID>", "a<EOT>  b"] + _repo_code()
    )
    assert len(texts) > 15
    for text in texts:
        ids = tok.encode(text)
        assert ids == sp.encode(text), text[:60]
        assert tok.decode(ids) == text
        # the dummy prefix is the one byte that is not the text's own
        assert b"".join(tok.token_bytes(t) for t in ids) == (b" " + text.encode() if text else b"")


def test_sentencepiece_specials_bytes_and_bos(spm_pair):
    tok, sp = spm_pair
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (sp.bos_id(), sp.eos_id(), True)
    v = tok.tk.get_vocab()
    assert tok.special == {"fim_prefix": v["<PRE>"], "fim_suffix": v["<SUF>"], "fim_middle": v["<MID>"]}
    assert tok.eos_ids == {v["</s>"], v["<EOT>"]}
    assert tok.token_bytes(v["<0x0A>"]) == b"\n" and tok.token_bytes(v["▁▁▁▁"]) == b"    "
    assert tok.token_bytes(v["<PRE>"]) == b"<PRE>"
    ids = tok.encode("世界🐍")  # not in the tiny vocabulary: byte fallback
    assert b"".join(tok.token_bytes(t) for t in ids) == " 世界🐍".encode()
    assert tok.representable("世界🐍\x04")
    back = Tokenizer.from_json(tok.to_json())
    assert back.kind == "sentencepiece" and back.space_prefix
    assert back.encode("    x = 1\n") == tok.encode("    x = 1\n") == sp.encode("    x = 1\n")


def test_codellama_fim_prompt_ids_follow_the_codellama_layout(spm_pair):
    """A CodeLlama-style vocabulary's FIM prompt is `<PRE> {prefix} <SUF>{suffix} <MID>` (model_backend/fim.py): the
    prefix keeps SentencePiece's dummy-prefix space, the suffix gets none."""
    from model_backend import fim

    tok, sp = spm_pair
    tokens = fim.fim_tokens(tok)
    assert tokens is not None and tokens.layout == fim.FAMILIES["codellama"].layout
    prefix, suffix = "def f(x):\n    return", "\n\nprint(f(1))\n"
    ids = fim.fim_prompt_ids(tok, tokens, prefix, suffix)
    assert ids[0] == tok.bos_id and ids[1] == tokens.prefix_id and ids[-1] == tokens.middle_id
    assert b"".join(tok.token_bytes(t) for t in ids[1:]) == f"<PRE> {prefix} <SUF>{suffix} <MID>".encode()
    assert ids[2 : ids.index(tokens.suffix_id)] == sp.encode(
        prefix + " "
    )  # the prefix as SentencePiece encodes it
    assert tok.encode(suffix + " ", dummy_prefix=False) == ids[ids.index(tokens.suffix_id) + 1 : -1]


def test_special_false_encodes_special_strings_as_text(default_tok):
    tok = default_tok
    text = 'END = "<|im_end|>"  # a file that mentions <|endoftext|>\n'
    plain = tok.encode(text, special=False)
    assert not set(plain) & (tok.eos_ids | {tok.bos_id})
    assert tok.decode(plain) == text
    assert b"".join(tok.token_bytes(t) for t in plain) == text.encode()
    assert tok.eos_id in tok.encode(text)  # the default matches them, like transformers / llama.cpp
    assert tok.encode("def f(): pass", special=False) == tok.encode("def f(): pass")


def test_byte_level_specials_come_only_from_added_tokens(tmp_path):
    path, _ = make_tiny_gguf("llama", tmp_path / "m.gguf")
    r = gguf.GGUFReader(path)
    tokens = list(r.fields["tokenizer.ggml.tokens"].contents()) + ["</s>", "<PRE>"]
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = list(r.fields["tokenizer.ggml.token_type"].contents()) + [1, 1]  # ordinary tokens
    tok = Tokenizer.from_vocab(tokens, merges, types, pre="smollm", bos_id=None, eos_id=0, add_bos=False)
    assert len(tokens) - 2 not in tok.eos_ids and "fim_prefix" not in tok.special
    types[-2:] = [3, 3]  # control tokens: now they count
    tok = Tokenizer.from_vocab(tokens, merges, types, pre="smollm", bos_id=None, eos_id=0, add_bos=False)
    assert len(tokens) - 2 in tok.eos_ids and tok.special["fim_prefix"] == len(tokens) - 1


def test_tiny_models_are_deterministic(tmp_path):
    import hashlib
    import subprocess
    import sys

    from tiny_models import tokenizer_json

    code = "import hashlib, tiny_models; print(hashlib.sha256(tiny_models.tokenizer_json('qwen2').encode()).hexdigest())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
        timeout=120,
    )
    assert out.stdout.strip() == hashlib.sha256(tokenizer_json("qwen2").encode()).hexdigest()
    a = make_tiny_model("starcoder2", tmp_path / "a", seed=5)
    b = make_tiny_model("starcoder2", tmp_path / "b", seed=5)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
