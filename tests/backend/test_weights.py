"""model_backend.weights: HF folders, GGUF files (all quant types, name mapping, Q/K un-permutation), the
converted-weights cache, the default model, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import ARCHS, build_tiny_model, make_tiny_model, reference_tensors

from model_backend.weights import ModelLoadError, expected_tensor_names, load_checkpoint, resolve_model


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHS}


# --- Hugging Face folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_folder_loads_exact_tensors_and_config(tiny_dirs, arch):
    ckpt = load_checkpoint(tiny_dirs[arch])
    ref = reference_tensors(build_tiny_model(arch))
    cfg = ckpt.config
    assert cfg.arch == arch
    assert (cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (2, 64, 4, 2, 16)
    assert cfg.vocab_size == ckpt.tokenizer.vocab_size
    if cfg.tie_word_embeddings:
        ref.pop("lm_head.weight")
    assert set(ckpt.tensors) == set(ref) == set(expected_tensor_names(cfg))
    for name, t in ckpt.tensors.items():
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, ref[name], rtol=0, atol=0)
    traits = {
        "llama": ("rmsnorm", "swiglu", False, False, False, False),
        "qwen2": ("rmsnorm", "swiglu", True, False, False, False),
        "starcoder2": ("layernorm", "gelu", True, True, True, True),
    }[arch]
    assert (cfg.norm_type, cfg.mlp_type, cfg.qkv_bias, cfg.out_bias, cfg.mlp_bias, cfg.tie_word_embeddings) == traits


def test_hf_folder_rope_settings_are_read(tmp_path):
    d = make_tiny_model("llama", tmp_path / "m", rope_theta=123456.0, rope_scaling=4.0, tie=True)
    cfg = load_checkpoint(d).config
    assert cfg.rope_theta == 123456.0
    assert cfg.rope_scaling == 4.0
    assert cfg.tie_word_embeddings
    assert "lm_head.weight" not in load_checkpoint(d).tensors


def test_hf_folder_tokenizer_specials(tiny_dirs):
    tok = load_checkpoint(tiny_dirs["starcoder2"]).tokenizer
    vocab = tok.tk.get_vocab()
    assert tok.special["fim_prefix"] == vocab["<fim_prefix>"]
    assert tok.special["file_sep"] == vocab["<file_sep>"]
    assert vocab["<|endoftext|>"] in tok.eos_ids
    qtok = load_checkpoint(tiny_dirs["qwen2"]).tokenizer
    qv = qtok.tk.get_vocab()
    assert qtok.special["fim_middle"] == qv["<|fim_middle|>"]
    assert {qv["<|endoftext|>"], qv["<|im_end|>"]} <= qtok.eos_ids
    assert "fim_prefix" not in load_checkpoint(tiny_dirs["llama"]).tokenizer.special


# --- bad input ----------------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="model not found"):
        load_checkpoint(tmp_path / "nope.gguf")


@pytest.mark.parametrize(
    "missing, message",
    [("config.json", "missing config.json"), ("tokenizer.json", "missing tokenizer.json"),
     ("model.safetensors", r"no \*\.safetensors weights")],
)
def test_hf_folder_missing_file(tiny_dirs, tmp_path, missing, message):
    d = _copy(tiny_dirs["llama"], tmp_path / "m")
    (d / missing).unlink()
    with pytest.raises(ModelLoadError, match=message) as e:
        load_checkpoint(d)
    assert str(d) in str(e.value)


def test_hf_folder_unknown_arch(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unknown architecture 'mamba'"):
        load_checkpoint(d)


def test_hf_folder_missing_tensor(tiny_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_dirs["qwen2"], tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'"):
        load_checkpoint(d)


def test_hf_folder_corrupt_safetensors(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama"], tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_checkpoint(d)


def test_resolve_model_default_is_the_bundled_gguf():
    p = resolve_model("default")
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.is_file()
