"""CPU kernels on weights as the GGUF stores them: a leaf module (it imports no model code).

STAND-IN: this file is the quant branch's minimal implementation of the contract the `kernels` branch
implements in full (merging that branch replaces it). The contract:
    GGML_TYPES                      ggml type name -> id, for the types `pack` takes
    UnsupportedQuantType            raised by `pack` for any other type
    available()                     whether the compiled kernel runs here
    pack(raw, qtype, (out, in))     -> PackedWeight (raw: uint8 [out, row bytes], the file's bytes)
    matmul(x, w)                    fp32 [M, in] -> fp32 [M, out], any M
    dequantize_rows(w, rows)        fp32 [len(rows), in] (embedding lookups)
    QuantLinear(weight, bias)       nn.Module around one PackedWeight
    attention_kernel()              {KV dtype: C decode-attention step} or None
Here Q4_1 and Q8_0 run on kernels/blockq.c (AVX2 + FMA + F16C); the other types are dequantized a chunk of rows
at a time per call (correct, slow: no float32 copy is kept).

The kernel is compiled from source with the system's C compiler on first use and cached
(<cache root>/kernels/blockq-<hash>.so, hashed over the source, flags and compiler). Without a compiler
or AVX2 (or with COPILOT_LS_KERNELS=0) `library()` is None.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "blockq.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared", "-std=c11")
BLOCK = 32
BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}  # ggml block sizes of the types the C kernel multiplies
GGML_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13,
              "Q6_K": 14, "BF16": 30}
_NAMES = {v: k for k, v in GGML_TYPES.items()}
_CHUNK_ELEMS = 1 << 22  # dequantize at most this many weights at a time in the slow path


class UnsupportedQuantType(ValueError):
    """A tensor type no kernel here multiplies."""


def cpu_supported() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


def _cache_root() -> Path:
    env = os.environ.get("COPILOT_LS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "copilot-ls"


@functools.cache
def library() -> Any | None:
    """The compiled kernel (ctypes), or None when it cannot be used here (the reason is logged once)."""
    if os.environ.get("COPILOT_LS_KERNELS", "1") == "0":
        return None
    if not cpu_supported():
        log.info("CPU kernels: this CPU lacks AVX2/FMA/F16C")
        return None
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if cc is None:
        log.warning("CPU kernels: no C compiler (set CC)")
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("CPU kernels: %s --version failed (%s)", cc, e)
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, version)).encode()).hexdigest()[:16]
    out = _cache_root() / "kernels" / f"blockq-{key}.so"
    if not out.is_file():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
            os.close(fd)
            proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                os.unlink(tmp)
                log.warning("CPU kernels: compiling %s failed:\n%s", SOURCE, proc.stderr[-2000:])
                return None
            os.replace(tmp, out)  # atomic: a concurrent loader sees the old state or the whole file
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("CPU kernels: could not build the kernel (%s)", e)
            return None
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        log.warning("CPU kernels: could not load %s (%s)", out, e)
        return None
    for fn in (lib.bq_gemm_x8_q4_1, lib.bq_gemm_x8_q8_0):
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5
        fn.restype = ctypes.c_int
    lib.bq_attention.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_float]
    lib.bq_attention.restype = ctypes.c_int
    for fn in (lib.bq_attention_step, lib.bq_attention_step_h):
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_float]
        fn.restype = ctypes.c_int
    return lib


def available() -> bool:
    return library() is not None


def attention_kernel() -> dict[torch.dtype, Any] | None:
    """{KV-cache dtype: bq_attention_step[_h](qkv, rope, k, v, out, n_heads, n_kv_heads, head_dim, pos,
    head_stride, scale) -> 0} for fp32 and fp16 caches, or None when the library is not available: one layer's
    attention for a single-row decode step after the q|k|v projection (RoPE, cache write, softmax(qK) V)."""
    lib = library()
    return None if lib is None else {torch.float32: lib.bq_attention_step, torch.float16: lib.bq_attention_step_h}


def interleave8(blocks: Tensor, kind: str) -> Tensor:
    """[N, K/32 blocks] in the file's layout -> the kernel's "x8" layout (kernels/blockq.c): rows in groups of 8
    (zero rows pad N), and per group and block column the 8 scales (and 8 mins), then the 8 rows' quants."""
    n, row_bytes = blocks.shape
    size = BLOCK_BYTES[kind]
    nb = row_bytes // size
    padded = (n + 7) // 8 * 8
    b = torch.zeros(padded, nb, size, dtype=torch.uint8)
    b[:n] = blocks.reshape(n, nb, size)
    g = b.view(padded // 8, 8, nb, size).permute(0, 2, 1, 3)  # [groups, block column, row in group, bytes]
    heads = 4 if kind == "Q4_1" else 2  # fp16 d (and m) before the quants
    parts = [g[..., i:i + 2].reshape(padded // 8, nb, 16) for i in range(0, heads, 2)]
    parts.append(g[..., heads:].reshape(padded // 8, nb, 8 * (size - heads)))
    return torch.cat(parts, dim=-1).reshape(padded // 8, -1).contiguous()


@dataclass
class PackedWeight:
    qtype: int
    shape: tuple[int, int]  # (out, in)
    data: Any  # x8-interleaved blocks (torch uint8) for the C kernel, else the file's bytes (numpy uint8)
    kernel: bool
    raw: np.ndarray  # the file's bytes [out, row bytes] (a view; read for embedding lookups)


def pack(raw: np.ndarray | Tensor, qtype: int | str, shape: tuple[int, int]) -> PackedWeight:
    if isinstance(qtype, str):
        if qtype not in GGML_TYPES:
            raise UnsupportedQuantType(f"unsupported tensor type {qtype}")
        qtype = GGML_TYPES[qtype]
    qtype = int(qtype)
    if qtype not in _NAMES:
        raise UnsupportedQuantType(f"unsupported ggml tensor type {qtype} (supported: {', '.join(GGML_TYPES)})")
    data = raw.numpy() if isinstance(raw, Tensor) else np.asarray(raw)
    data = data.reshape(shape[0], -1).view(np.uint8)
    name = _NAMES[qtype]
    if name in BLOCK_BYTES and available() and shape[1] % BLOCK == 0:
        with warnings.catch_warnings():  # a read-only memory map: torch only reads it here
            warnings.simplefilter("ignore")
            blocks = torch.from_numpy(data)
        return PackedWeight(qtype, shape, interleave8(blocks, name), True, data)
    return PackedWeight(qtype, shape, data, False, data)


def dequantize_rows(w: PackedWeight, rows: Tensor) -> Tensor:
    from model_backend.quants import dequantize  # numpy reference dequantizers (a leaf module too)

    idx = rows.reshape(-1).cpu().numpy()
    return dequantize(w.raw[idx], w.qtype, (len(idx), w.shape[1]))


def matmul(x: Tensor, w: PackedWeight) -> Tensor:
    n, k = w.shape
    x2 = x.reshape(-1, k).float()
    m = x2.shape[0]
    if w.kernel:
        x2 = x2.contiguous()
        y = torch.empty(m, n)
        fn = library().bq_gemm_x8_q4_1 if _NAMES[w.qtype] == "Q4_1" else library().bq_gemm_x8_q8_0
        rc = fn(w.data.data_ptr(), x2.data_ptr(), y.data_ptr(), m, n, k, 0, (n + 7) // 8)
        if rc != 0:
            raise RuntimeError(f"blocks kernel failed (code {rc})")
        return y
    from model_backend.quants import dequantize

    step = max(8, _CHUNK_ELEMS // k)
    outs = [x2 @ dequantize(w.data[r:r + step], w.qtype, (min(step, n - r), k)).T for r in range(0, n, step)]
    return torch.cat(outs, dim=1)


class QuantLinear(nn.Module):
    """y = x W^T (+ bias) with W a PackedWeight."""

    def __init__(self, weight: PackedWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def forward(self, x: Tensor) -> Tensor:
        y = matmul(x, self.weight).view(*x.shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {_NAMES[self.weight.qtype]}"
