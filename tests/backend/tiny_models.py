"""Tiny, randomly initialised transformers models saved to disk, for tests that go through the real loader.

    path = make_tiny_model("qwen2", tmp_path / "qwen2")   # config.json + model.safetensors + tokenizer.json
    ckpt = model_backend.weights.load_checkpoint(path)

Each model has 2 layers, hidden 64, 4 query / 2 KV heads (GQA), intermediate 128 and a small byte-level BPE
tokenizer trained on a few lines of code (vocab ~380, with the family's special tokens: ChatML for llama,
Qwen-style FIM for qwen2, StarCoder-style FIM for starcoder2). Biases and norm weights are randomised, since
transformers initialises them to 0 / 1 and that would hide loading mistakes. Deterministic for a given seed.

The same models as GGUF files, written the way llama.cpp's converter writes them:

    path, expected = make_tiny_gguf("llama", tmp_path / "m.gguf", qtype="Q4_1")  # expected: HF-named tensors
    path, _ = make_tiny_gguf("llama", tmp_path / "spm.gguf", tokenizer="spm")     # CodeLlama-style vocabulary
    rewrite_gguf(path, tmp_path / "bad.gguf", drop={"blk.1.ffn_down.weight"})     # damaged copies for tests
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCHS = ("llama", "qwen2", "starcoder2")
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, CONTEXT = 64, 128, 2, 4, 2, 512
TOKENIZER_VOCAB = 384

# arch -> (GGUF pre-tokenizer name whose regexes the tokenizer uses, special tokens)
TOKENIZER_FLAVOUR: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("smollm", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>")),
    "qwen2": (
        "qwen2",
        (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        ),
    ),
    "starcoder2": (
        "starcoder",
        (
            "<|endoftext|>",
            "<fim_prefix>",
            "<fim_middle>",
            "<fim_suffix>",
            "<fim_pad>",
            "<repo_name>",
            "<file_sep>",
        ),
    ),
}

TRAINING_TEXT = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

for i in range(10):
    print(f"value {i}: {i * i}")
\tindented_with_tab = True  # a comment
import os, sys
from pathlib import Path
function add(a, b) { return a + b; }
const xs = [1, 2, 3].map((x) => x * 2);
fn main() { println!("hello, world"); }
int main(void) { return 0; }
SELECT name, count(*) FROM users WHERE id = 42;
The quick brown fox jumps over the lazy dog. It's what we'll do, they're sure.
'''


@cache
def tokenizer_json(arch: str) -> str:
    """The tiny tokenizer of `arch` as tokenizer.json text (trained once per process; deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from model_backend.tokenizer import byte_level_pre_tokenizer

    pre, specials = TOKENIZER_FLAVOUR[arch]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = byte_level_pre_tokenizer(pre)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True) * 3, trainer)
    return tk.to_str()


def _hf_config(
    arch: str,
    vocab_size: int,
    *,
    rope_theta: float,
    rope_scaling: float,
    tie: bool | None,
    hidden: int,
    intermediate: int,
) -> Any:
    import transformers

    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling != 1.0:
        rope = {"rope_type": "linear", "factor": rope_scaling, "rope_theta": rope_theta}
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rope_parameters=rope,
        bos_token_id=0,
        eos_token_id=0,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**common, rms_norm_eps=1e-5, tie_word_embeddings=bool(tie))
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, rms_norm_eps=1e-6, tie_word_embeddings=bool(tie))
    if arch == "starcoder2":
        return transformers.Starcoder2Config(
            **common, norm_epsilon=1e-5, use_bias=True, tie_word_embeddings=True if tie is None else tie
        )
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def build_tiny_model(
    arch: str,
    *,
    seed: int = 0,
    rope_theta: float = 10000.0,
    rope_scaling: float = 1.0,
    tie: bool | None = None,
    hidden: int = HIDDEN,
    intermediate: int = INTERMEDIATE,
    vocab_size: int | None = None,
) -> Any:
    """A tiny random transformers `*ForCausalLM` (eval mode, fp32) whose vocab matches `tokenizer_json(arch)`
    (or has `vocab_size` rows)."""
    import transformers
    from tokenizers import Tokenizer

    if vocab_size is None:
        vocab_size = Tokenizer.from_str(tokenizer_json(arch)).get_vocab_size(with_added_tokens=True)
    cfg = _hf_config(
        arch,
        vocab_size,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie=tie,
        hidden=hidden,
        intermediate=intermediate,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def make_tiny_model(arch: str, out_dir: Path, seed: int = 0, **kwargs: Any) -> Path:
    """Save a tiny random `arch` model (config.json + model.safetensors + tokenizer.json) in `out_dir`.

    kwargs: rope_theta (10000.0), rope_scaling (1.0 = none, else linear factor), tie (arch default),
    hidden (64), intermediate (128).
    Returns `out_dir`.
    """
    from transformers.utils import logging as hf_logging

    out_dir = Path(out_dir)
    model = build_tiny_model(arch, seed=seed, **kwargs)
    hf_logging.disable_progress_bar()
    model.save_pretrained(out_dir)
    (out_dir / "tokenizer.json").write_text(tokenizer_json(arch), encoding="utf-8")
    return out_dir


def reference_tensors(model: Any) -> dict[str, torch.Tensor]:
    """The model's state dict, float32 copies (what `load_checkpoint` must reproduce)."""
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def tokenizer_vocab(arch: str) -> dict[str, int]:
    return json.loads(tokenizer_json(arch))["model"]["vocab"]


# --- the same tiny models as GGUF files ---------------------------------------------------------------------
#
# Written the way llama.cpp's convert_hf_to_gguf.py does it (names, metadata, llama's Q/K row permutation), but
# with code independent of model_backend.weights, so loading them back checks the loader against the converter.

_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}

# byte offsets of the float16 scale fields in one block, per K-quant (random bytes elsewhere are valid data)
_K_SCALE_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, rest = hf.split(".", 3)
        base, kind = rest.rsplit(".", 1)
        return f"blk.{i}.{_GGUF_NAMES[base]}.{kind}"
    return {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "model.norm.bias": "output_norm.bias",
        "lm_head.weight": "output.weight",
    }[hf]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute (n_head already the KV head count for K)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def transformers_reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' LlamaConverter._reverse_permute_weights (what loading a GGUF must do for llama Q/K)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _encode(w: np.ndarray, qtype: Any, rng: np.random.Generator) -> np.ndarray:
    """`w` stored as `qtype`: quantized with gguf.quants where it can, else (K-quants) random valid blocks."""
    import gguf

    if qtype.name not in _K_SCALE_FIELDS:
        return gguf.quants.quantize(w, qtype) if qtype != gguf.GGMLQuantizationType.F32 else w
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    assert w.shape[-1] % block == 0, f"{qtype.name} needs rows that are a multiple of {block}"
    blocks = rng.integers(0, 256, size=(w.shape[0], w.shape[1] // block, nbytes), dtype=np.uint8)
    for off in _K_SCALE_FIELDS[qtype.name]:
        # scales that keep |weights| near a trained model's (<~0.2), so activations and logits stay ordinary
        scale = rng.uniform(0.00001, 0.00005, size=blocks.shape[:2]).astype("<f2")
        blocks[..., off : off + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(w.shape[0], -1)


SPM_VOCAB = 400
SPM_USER_SYMBOLS = ("<PRE>", "<SUF>", "<MID>", "<EOT>")  # CodeLlama's infilling tokens


@cache
def spm_model_proto() -> bytes:
    """A tiny SentencePiece BPE model with byte fallback (the shape of CodeLlama's), trained with the
    `sentencepiece` library on TRAINING_TEXT; its processor is the reference for SPM vocabularies."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT.splitlines() * 3),
        model_writer=out,
        vocab_size=SPM_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        minloglevel=2,
        num_threads=1,
        user_defined_symbols=list(SPM_USER_SYMBOLS),
    )
    return out.getvalue()


def _add_spm_tokenizer(w: Any) -> None:
    """tokenizer.ggml.* for the SentencePiece model, typed the way llama.cpp's converter types them."""
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=spm_model_proto())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(
            gguf.TokenType.UNKNOWN
            if sp.is_unknown(i)
            else gguf.TokenType.CONTROL
            if sp.is_control(i)
            else gguf.TokenType.BYTE
            if sp.is_byte(i)
            else gguf.TokenType.UNUSED
            if sp.is_unused(i)
            else gguf.TokenType.USER_DEFINED
            if sp.id_to_piece(i) in SPM_USER_SYMBOLS
            else gguf.TokenType.NORMAL
        )
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)


def make_tiny_gguf(
    arch: str,
    out_path: Path,
    *,
    seed: int = 0,
    qtype: str = "F32",
    embed_qtype: str | None = None,
    tokenizer: str = "bpe",
    qtypes: dict[str, str] | None = None,
    **model_kwargs: Any,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write the tiny `arch` model as a GGUF with its matrices stored as `qtype` (F32, F16, BF16, Q8_0, Q4_0,
    Q4_1, Q4_K, Q5_K, Q6_K; K-quants need hidden/intermediate multiples of 256 and hold random blocks) and
    the token embedding as `embed_qtype` (default: qtype); norms stay F32 like llama.cpp's. `qtypes` maps a
    part of a GGUF tensor name to its own type, to mix types as llama.cpp's Q4_K_M does ({"attn_v": "Q6_K"}).

    Returns (path, expected): `expected` is what load_checkpoint must give, under HF names: the reference
    dequantisation (gguf.quants.dequantize) of the stored bytes with llama's Q/K permutation undone the way
    transformers does it. For F32 that is exactly the transformers model's weights.
    tokenizer: "bpe" (the byte-level tokenizer of `tokenizer_json(arch)`) or "spm" (`spm_model_proto()`).
    """
    import gguf

    out_path = Path(out_path)
    if tokenizer == "spm":
        model_kwargs.setdefault("vocab_size", SPM_VOCAB)
    model = build_tiny_model(arch, seed=seed, **model_kwargs)
    hf_cfg = model.config
    tensors = reference_tensors(model)
    if hf_cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    rng = np.random.default_rng(seed)
    n_head, n_kv = hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads

    w = gguf.GGUFWriter(out_path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(hf_cfg.num_hidden_layers)
    w.add_context_length(hf_cfg.max_position_embeddings)
    w.add_embedding_length(hf_cfg.hidden_size)
    w.add_feed_forward_length(hf_cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(hf_cfg.rope_parameters["rope_theta"])
    if hf_cfg.rope_parameters.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hf_cfg.rope_parameters["factor"])
    if arch == "starcoder2":
        w.add_layer_norm_eps(hf_cfg.norm_epsilon)
    else:
        w.add_layer_norm_rms_eps(hf_cfg.rms_norm_eps)
    w.add_rope_dimension_count(hf_cfg.hidden_size // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    if tokenizer == "spm":
        _add_spm_tokenizer(w)
    else:
        tok = json.loads(tokenizer_json(arch))
        vocab = tok["model"]["vocab"]
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        specials = {a["content"] for a in tok["added_tokens"] if a["special"]}
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(TOKENIZER_FLAVOUR[arch][0])
        w.add_token_list(tokens)
        w.add_token_types(
            [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
        )
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        w.add_add_bos_token(False)
    w.add_chat_template("{{ messages }}")

    expected: dict[str, torch.Tensor] = {}
    for hf, t in tensors.items():
        a = t.numpy()
        is_q, is_k = ".q_proj." in hf, ".k_proj." in hf
        if arch == "llama" and (is_q or is_k):
            a = llama_cpp_permute(a, n_head if is_q else n_kv)
        if a.ndim == 1:
            kind = gguf.GGMLQuantizationType.F32
        else:
            name = embed_qtype if hf == "model.embed_tokens.weight" and embed_qtype else qtype
            name = next((q for part, q in (qtypes or {}).items() if part in gguf_name(hf)), name)
            kind = gguf.GGMLQuantizationType[name]
        data = _encode(np.ascontiguousarray(a, dtype=np.float32), kind, rng)
        w.add_tensor(gguf_name(hf), data, raw_dtype=None if kind == gguf.GGMLQuantizationType.F32 else kind)
        back = gguf.quants.dequantize(data, kind).reshape(a.shape)
        if arch == "llama" and (is_q or is_k):
            back = transformers_reverse_permute(back, n_head if is_q else n_kv)
        expected[hf] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path, expected


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    arch: str | None = None,
    drop: frozenset[str] | set[str] = frozenset(),
    add: dict[str, np.ndarray] | None = None,
    drop_keys: tuple[str, ...] = (),
    set_keys: dict[str, tuple[Any, Any]] | None = None,
) -> Path:
    """Copy a GGUF, changing its architecture name, leaving out tensors / metadata keys, adding tensors or
    setting metadata keys."""
    import gguf

    r = gguf.GGUFReader(src)
    old_arch = r.fields["general.architecture"].contents()
    new_arch = arch or old_arch
    w = gguf.GGUFWriter(dst, new_arch)
    for key, f in r.fields.items():
        if (
            key.startswith("GGUF.")
            or key == "general.architecture"
            or key in drop_keys
            or key in (set_keys or {})
        ):
            continue
        new_key = key.replace(f"{old_arch}.", f"{new_arch}.", 1) if key.startswith(f"{old_arch}.") else key
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(new_key, f.contents(), vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(new_key, f.contents(), vtype)
    for t in r.tensors:
        if t.name in drop:
            continue
        native = t.tensor_type in (
            gguf.GGMLQuantizationType.F32,
            gguf.GGMLQuantizationType.F16,
        )  # numpy dtypes; the others are raw bytes per row
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=None if native else t.tensor_type)
    for key, (value, vtype) in (set_keys or {}).items():
        w.add_key_value(key, value, vtype)
    for name, arr in (add or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
