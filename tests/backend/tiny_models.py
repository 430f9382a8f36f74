"""Tiny, randomly initialised transformers models saved to disk, for tests that go through the real loader.

    path = make_tiny_model("qwen2", tmp_path / "qwen2")   # config.json + model.safetensors + tokenizer.json
    ckpt = model_backend.weights.load_checkpoint(path)

Each model has 2 layers, hidden 64, 4 query / 2 KV heads (GQA), intermediate 128 and a small byte-level BPE
tokenizer trained on a few lines of code (vocab ~380, with the family's special tokens: ChatML for llama,
Qwen-style FIM for qwen2, StarCoder-style FIM for starcoder2). Biases and norm weights are randomised, since
transformers initialises them to 0 / 1 and that would hide loading mistakes. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

ARCHS = ("llama", "qwen2", "starcoder2")
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, CONTEXT = 64, 128, 2, 4, 2, 512
TOKENIZER_VOCAB = 384

# arch -> (GGUF pre-tokenizer name whose regexes the tokenizer uses, special tokens)
TOKENIZER_FLAVOUR: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("smollm", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>")),
    "qwen2": ("qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                        "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")),
    "starcoder2": ("starcoder", ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                                 "<repo_name>", "<file_sep>")),
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


def _hf_config(arch: str, vocab_size: int, *, rope_theta: float, rope_scaling: float, tie: bool | None) -> Any:
    import transformers

    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling != 1.0:
        rope = {"rope_type": "linear", "factor": rope_scaling, "rope_theta": rope_theta}
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        rope_parameters=rope, bos_token_id=0, eos_token_id=0,
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
    arch: str, *, seed: int = 0, rope_theta: float = 10000.0, rope_scaling: float = 1.0, tie: bool | None = None
) -> Any:
    """A tiny random transformers `*ForCausalLM` (eval mode, fp32) whose vocab matches `tokenizer_json(arch)`."""
    import transformers
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_str(tokenizer_json(arch)).get_vocab_size(with_added_tokens=True)
    cfg = _hf_config(arch, vocab_size, rope_theta=rope_theta, rope_scaling=rope_scaling, tie=tie)
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

    kwargs: rope_theta (10000.0), rope_scaling (1.0 = none, else linear factor), tie (arch default).
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
