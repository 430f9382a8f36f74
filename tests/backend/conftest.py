"""Fixtures for the engine tests: tiny random transformers models (built in memory) and the default Engine."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import torch


def _model_config_cls() -> Any:
    try:
        from model_backend.weights import ModelConfig
    except ImportError:  # weights.py not there yet: the contract's fields, nothing more
        @dataclasses.dataclass(frozen=True)
        class ModelConfig:  # type: ignore[no-redef]
            arch: str
            vocab_size: int
            hidden_size: int
            intermediate_size: int
            n_layers: int
            n_heads: int
            n_kv_heads: int
            head_dim: int
            context_length: int
            rope_theta: float
            rope_scaling: float = 1.0
            norm_eps: float = 1e-5
            norm_type: str = "rmsnorm"
            mlp_type: str = "swiglu"
            qkv_bias: bool = False
            out_bias: bool = False
            mlp_bias: bool = False
            tie_word_embeddings: bool = False
    return ModelConfig


def tiny_hf_model(arch: str, *, seed: int = 0, rope_theta: float = 10000.0, rope_scaling: float = 1.0,
                  tie: bool | None = None):
    """(transformers model, ModelConfig) for a 2-layer, hidden-64 random model of `arch`."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling != 1.0:
        rope = {"rope_type": "linear", "factor": rope_scaling, "rope_theta": rope_theta}
    if arch == "llama":
        hf_cfg = transformers.LlamaConfig(**common, rms_norm_eps=1e-5, rope_parameters=rope,
                                          tie_word_embeddings=bool(tie))
        model = transformers.LlamaForCausalLM(hf_cfg)
        extra: dict[str, Any] = {}
    elif arch == "qwen2":
        hf_cfg = transformers.Qwen2Config(**common, rms_norm_eps=1e-6, rope_parameters=rope,
                                          tie_word_embeddings=bool(tie))
        model = transformers.Qwen2ForCausalLM(hf_cfg)
        extra = {"qkv_bias": True, "norm_eps": 1e-6}
    elif arch == "starcoder2":
        hf_cfg = transformers.Starcoder2Config(**common, norm_epsilon=1e-5, rope_parameters=rope,
                                               tie_word_embeddings=True if tie is None else tie, use_bias=True)
        model = transformers.Starcoder2ForCausalLM(hf_cfg)
        extra = {"qkv_bias": True, "out_bias": True, "mlp_bias": True, "norm_type": "layernorm",
                 "mlp_type": "gelu"}
    else:
        raise ValueError(arch)
    # random biases and norm weights (transformers initialises them to 0 / 1, which would hide mistakes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    cfg = _model_config_cls()(
        arch=arch, vocab_size=256, hidden_size=64, intermediate_size=128, n_layers=2, n_heads=4, n_kv_heads=2,
        head_dim=16, context_length=512, rope_theta=rope_theta, rope_scaling=rope_scaling,
        tie_word_embeddings=hf_cfg.tie_word_embeddings, **extra)
    return model, cfg


def hf_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


@pytest.fixture
def tiny_hf():
    """tiny_hf(arch, **kw) -> (transformers model, ModelConfig, HF-named fp32 tensors)."""
    def make(arch: str, **kw):
        model, cfg = tiny_hf_model(arch, **kw)
        return model, cfg, hf_tensors(model)
    return make


@pytest.fixture(scope="session")
def default_engine():
    """One Engine on the bundled default model for the whole session (CPU, fast path)."""
    from model_backend.engine import Engine

    torch.set_num_threads(int(os.environ.get("COPILOT_TEST_THREADS", "2")))
    return Engine.load("default", device="cpu", max_batch=8, max_seq_len=2048)
