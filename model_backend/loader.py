"""Loading: a model spec -> Checkpoint (weights.py) -> Transformer on its device in its weight format -> Engine.

Weight formats (Engine.weight_format):
  "blocks"      CPU default: every matrix as the checkpoint stores it (a GGUF's quantized blocks, bf16/fp16
                safetensors), packed for model_backend/cpu_kernels.py, for prompts and decode steps; the GGUF
                stays memory-mapped and nothing is converted to float32.
  "fp16"/"int8" CPU, opt-in (and the default for float32 checkpoints, or where the kernels cannot run): fbgemm
                packs of the dense model (see model.quantize_linears).
  "float32", "bfloat16", ...  quantize="none": the dense model (the fp32 reference on the CPU; on CUDA bf16,
                dequantized tensor by tensor at load).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from model_backend.model import CPU_WEIGHT_FORMATS, build_model, build_packed_model, quantize_linears
from model_backend.weights import Checkpoint, ModelLoadError, QTensor, load_checkpoint

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("auto", "none", *CPU_WEIGHT_FORMATS)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device cuda requested but torch sees no CUDA device (torch build {torch.__version__})"
        )
    return torch.device(device)


def load_engine(
    engine_cls: Any,
    model: str = "default",
    *,
    device: str = "auto",
    quantize: str = "auto",
    cache_dir: Any = None,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Engine.load (see its docstring): the checkpoint of `model`, then engine_from_checkpoint with `options`
    (max_batch, max_seq_len, rope_theta, rope_scaling, dtype, pack_in_background and the engine's own)."""
    dev = resolve_device(device)
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be auto, none, fp16, int8 or blocks, got {quantize!r}")
    ckpt = load_checkpoint(model, cache_dir=cache_dir, progress=progress)
    return engine_from_checkpoint(engine_cls, ckpt, device=dev, quantize=quantize, **options)


def _torch_dtype(dtype: str | None, dev: torch.device) -> torch.dtype:
    if dtype is None:
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def stored_compactly(ckpt: Checkpoint) -> bool:
    """Whether the checkpoint's matrices are stored in fewer than 32 bits (GGUF blocks, bf16/fp16), so keeping
    them as stored beats an fp16 pack."""
    return any(
        isinstance(t, QTensor) or (t.dim() == 2 and t.dtype != torch.float32) for t in ckpt.tensors.values()
    )


def cpu_format(quantize: str, ckpt: Checkpoint, tdtype: torch.dtype) -> str:
    """The CPU weight format for `quantize` (see the module docstring)."""
    from model_backend import cpu_kernels

    if quantize == "auto":
        if tdtype != torch.float32:
            return "none"
        return "blocks" if cpu_kernels.available() and stored_compactly(ckpt) else "fp16"
    if quantize == "blocks" and not cpu_kernels.available():
        raise ValueError(
            "the blocks weight format needs the CPU kernels (a C compiler and an AVX2/FMA/F16C "
            "CPU; see model_backend/cpu_kernels.py); use quantize='fp16'"
        )
    return quantize


def build(
    ckpt: Checkpoint, cfg: Any, dev: torch.device, quantize: str, tdtype: torch.dtype
) -> tuple[Any, str]:
    """(model, weight format) for the checkpoint on `dev`."""
    fmt = (
        cpu_format(quantize, ckpt, tdtype)
        if dev.type == "cpu"
        else ("none" if quantize == "auto" else quantize)
    )
    if fmt in CPU_WEIGHT_FORMATS and dev.type != "cpu":
        raise ValueError(f"{fmt} weight packing is a CPU path; on CUDA use quantize='none' (and dtype)")
    if fmt == "blocks":
        from model_backend import cpu_kernels

        try:
            model = build_packed_model(cfg, ckpt.tensors, release=ckpt.release)
        except cpu_kernels.UnsupportedQuantType as e:
            raise ModelLoadError(f"{ckpt.path}: {e}") from e
    else:
        model = build_model(cfg, ckpt.tensors, device=dev, dtype=tdtype)
    model.use_cpu_kernels()
    return model, fmt


def engine_from_checkpoint(
    engine_cls: Any,
    ckpt: Checkpoint,
    *,
    device: torch.device | str = "cpu",
    max_batch: int = 8,
    max_seq_len: int | None = None,
    quantize: str = "auto",
    rope_theta: float | None = None,
    rope_scaling: float | None = None,
    dtype: str | None = None,
    pack_in_background: bool = False,
    **engine_kw: Any,
) -> Any:
    """Engine.from_checkpoint (see Engine.load)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    cfg = ckpt.config
    if rope_theta is not None or rope_scaling is not None:
        cfg = dataclasses.replace(
            cfg,
            rope_theta=cfg.rope_theta if rope_theta is None else float(rope_theta),
            rope_scaling=cfg.rope_scaling if rope_scaling is None else float(rope_scaling),
        )
    tdtype = _torch_dtype(dtype, dev)
    model, fmt = build(ckpt, cfg, dev, quantize, tdtype)
    background = pack_in_background and fmt in ("fp16", "int8")
    if fmt in ("fp16", "int8") and not background:
        model = quantize_linears(model, fmt)
    if fmt in CPU_WEIGHT_FORMATS:
        # packed CPU weights: an fp16 KV cache halves the bytes a decode step reads at long context (the fp32
        # reference format "none" keeps an fp32 cache); see docs/performance.md
        engine_kw.setdefault("kv_dtype", torch.float16)
    engine = engine_cls(
        model, ckpt.tokenizer, cfg, device=dev, max_batch=max_batch, max_seq_len=max_seq_len, **engine_kw
    )
    engine.weight_format = fmt if fmt in CPU_WEIGHT_FORMATS else str(tdtype).removeprefix("torch.")
    engine._blocks = None
    if background:
        engine._start_packing(fmt)
    return engine
