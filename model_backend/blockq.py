"""CPU decode kernels: matrix products on the GGUF's own weight blocks (the `blocks` weight format), and
single-query attention (`attention_kernel`, used by every fp32 CPU model).

Decoding one token reads every weight once, so on a CPU its speed is the weight bytes per token. The default
GGUF stores its linear layers as Q4_1 (5 bits per weight) and its tied embedding / lm_head as Q8_0; fp16 packing
reads 16 bits per weight, fp32 32. `BlockLinear` keeps those blocks as they are in the file and multiplies them
with a small C kernel (kernels/blockq.c, AVX2 + FMA + F16C) for the few rows of a decode step; prompts (many
rows) go to the layer's fp16 fbgemm pack, which is faster there. Weights are used exactly as stored: the only
rounding the kernel adds is of the activations, to int16 per block of 32 (relative error <= 2^-16 of the block's
largest value; see kernels/blockq.c), far below fp16 weight rounding.

The kernel is compiled from source with the system's C compiler on first use and cached next to the converted
weights (<cache root>/kernels/blockq-<hash>.so, hashed over the source, flags and compiler). Without a compiler
or AVX2 (or with COPILOT_LS_KERNELS=0) `library()` is None and the engine uses fp16 packing instead.
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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "blockq.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared", "-std=c11")
BLOCK = 32
BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}  # ggml block sizes
# rows of activations up to which the kernel beats the fp16 pack (it unpacks each weight once per pair of rows;
# measured on all layers of the default model, same run, load ~3: 1 row 5.9 vs 12.5 ms; 3 rows 26.5 vs 33.8;
# 4 rows 32 vs 38; 8 rows 64-68 vs 60)
MAX_ROWS = 4


def cpu_supported() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc")


@functools.cache
def library() -> Any | None:
    """The compiled kernel (ctypes), or None when it cannot be used here (the reason is logged once)."""
    if os.environ.get("COPILOT_LS_KERNELS", "1") == "0":
        return None
    if not cpu_supported():
        log.info("blocks weight format: this CPU lacks AVX2/FMA/F16C; using fp16 packing")
        return None
    cc = _compiler()
    if cc is None:
        log.warning("blocks weight format: no C compiler (set CC); using fp16 packing")
        return None
    from model_backend.weights import cache_root

    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("blocks weight format: %s --version failed (%s); using fp16 packing", cc, e)
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, version)).encode()).hexdigest()[:16]
    out = cache_root() / "kernels" / f"blockq-{key}.so"
    if not out.is_file():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
            os.close(fd)
            proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                os.unlink(tmp)
                log.warning("blocks weight format: compiling %s failed; using fp16 packing:\n%s", SOURCE,
                            proc.stderr[-2000:])
                return None
            os.replace(tmp, out)  # atomic: a concurrent loader sees the old state or the whole file
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("blocks weight format: could not build the kernel (%s); using fp16 packing", e)
            return None
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        log.warning("blocks weight format: could not load %s (%s); using fp16 packing", out, e)
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


def attention_kernel() -> dict[torch.dtype, Any] | None:
    """{KV-cache dtype: bq_attention_step[_h](qkv, rope, k, v, out, n_heads, n_kv_heads, head_dim, pos,
    head_stride, scale) -> 0} for fp32 and fp16 caches, or None when the library is not available.

    One layer's attention for a single-row decode step after the q|k|v projection: RoPE on q and k, k and v
    written to the sequence's KV cache slice ([n_kv, max_seq, head_dim], fp32 or fp16) at `pos`, then scores, exact
    softmax and probabilities @ V over positions 0..pos (torch runs ~20 ops per layer for this, and its batched
    matmul on the transposed cache view is slow at 1-2k positions)."""
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


class BlockLinear(nn.Module):
    """A Linear whose weight is kept as GGUF blocks for decode steps (<= MAX_ROWS rows); more rows go to
    `fallback` (the same layer packed as fp16)."""

    def __init__(self, blocks: Tensor, kind: str, in_features: int, bias: Tensor | None,
                 fallback: nn.Module) -> None:
        super().__init__()
        lib = library()
        if lib is None:
            raise RuntimeError("the blocks kernel is not available on this machine")
        if kind not in BLOCK_BYTES:
            raise ValueError(f"unsupported block type {kind!r}")
        if blocks.dtype != torch.uint8 or blocks.dim() != 2 or in_features % BLOCK or \
                blocks.shape[1] != in_features // BLOCK * BLOCK_BYTES[kind]:
            raise ValueError(f"{kind} blocks of shape {tuple(blocks.shape)} do not fit {in_features} inputs")
        self.kind, self.in_features, self.out_features = kind, in_features, blocks.shape[0]
        self.blocks = interleave8(blocks, kind)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.fallback = fallback
        self._fn = lib.bq_gemm_x8_q4_1 if kind == "Q4_1" else lib.bq_gemm_x8_q8_0

    def forward(self, x: Tensor) -> Tensor:
        k, n = self.in_features, self.out_features
        rows = x.numel() // k
        if rows > MAX_ROWS or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.fallback(x)
        x2 = x.reshape(rows, k)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y = torch.empty(*x.shape[:-1], n)
        rc = self._fn(self.blocks.data_ptr(), x2.data_ptr(), y.data_ptr(), rows, n, k, 0, (n + 7) // 8)
        if rc != 0:
            raise RuntimeError(f"blocks kernel failed (code {rc})")
        if self.bias is not None:
            y += self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.kind} (<= {MAX_ROWS} rows), else fallback"


# --- where the blocks come from -------------------------------------------------------------------------------

def gguf_blocks(ckpt: Any) -> dict[str, tuple[str, Tensor]]:
    """{fused model parameter name: (block type, uint8 [rows, row bytes])} for every 2-D weight of a GGUF
    checkpoint whose fused parts are all stored as the same Q4_1 or Q8_0 type, with the rows in the model's
    order (GGUF's Q/K permutation undone, RoPE's interleave, q|k|v and gate|up concatenated).

    The row order comes from running the model's own renaming/fusing (model.fused_state_dict) on tensors of
    (source tensor, row) ids, so it cannot drift from the fp32 path."""
    import numpy as np

    from model_backend.model import fused_state_dict
    from model_backend.weights import _open_gguf, gguf_to_hf_name, gguf_to_hf_rows

    path = Path(ckpt.path)
    if path.is_dir() or path.suffix.lower() != ".gguf":
        return {}
    cfg = ckpt.config
    reader = _open_gguf(path)
    sources: list[tuple[str, Any]] = []  # index -> (type name, reader tensor)
    ids: dict[str, Tensor] = {}
    for t in reader.tensors:
        hf = gguf_to_hf_name(cfg.arch, t.name)
        if hf is None:
            continue
        rows = int(t.shape.tolist()[-1]) if len(t.shape) > 1 else int(t.shape.tolist()[0])
        idx = torch.stack([torch.full((rows,), len(sources), dtype=torch.int64),
                           torch.arange(rows, dtype=torch.int64)], dim=1)
        ids[hf] = gguf_to_hf_rows(cfg, hf, idx)
        sources.append((t.tensor_type.name, t))
    fused = fused_state_dict(cfg, ids)
    raw: dict[int, Tensor] = {}
    out: dict[str, tuple[str, Tensor]] = {}
    for name, idx in fused.items():
        if not name.endswith(".weight") or "norm" in name or name == "embed.weight":
            continue
        srcs = idx[:, 0].unique().tolist()
        kinds = {sources[s][0] for s in srcs}
        if len(kinds) != 1 or (kind := kinds.pop()) not in BLOCK_BYTES:
            continue
        for s in srcs:
            if s not in raw:  # the reader's arrays are read-only memory maps: copy the rows we use
                data = np.array(sources[s][1].data)
                raw[s] = torch.from_numpy(data.view(np.uint8).reshape(data.shape[0], -1))
        # rows come in runs from one source each (a concatenation), so gather run by run
        src_col, row_col = idx[:, 0], idx[:, 1]
        cuts = [0, *((src_col[1:] != src_col[:-1]).nonzero().flatten() + 1).tolist(), len(src_col)]
        parts = [raw[int(src_col[a])][row_col[a:b]] for a, b in zip(cuts, cuts[1:], strict=False)]
        out[name.removesuffix(".weight")] = (kind, torch.cat(parts).contiguous())
    return out


def _layout_key() -> str:
    """Hash of the code that decides the row order, so a cached blocks file never outlives a change to it."""
    import inspect

    from model_backend import model, weights

    src = "".join(inspect.getsource(f) for f in (model.fused_state_dict, model._fused_qkv, model.interleave_rows,
                                                  weights.gguf_to_hf_rows, weights.unpermute_qk))
    return hashlib.sha256((src + inspect.getsource(gguf_blocks)).encode()).hexdigest()[:12]


def load_blocks(ckpt: Any) -> dict[str, tuple[str, Tensor]]:
    """`gguf_blocks`, cached in the checkpoint's converted-weights entry (reading the GGUF's header with the
    gguf package costs seconds; the cached file is read in milliseconds)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    entry = ckpt.metadata.get("cache")
    if not entry:
        return gguf_blocks(ckpt)
    path = Path(entry) / f"blocks-{_layout_key()}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                kinds = dict((f.metadata() or {}).items())
                return {name: (kinds[name], f.get_tensor(name)) for name in f.keys()}
        except Exception as e:  # a damaged file is rebuilt, never used
            log.warning("ignoring damaged blocks cache %s (%s)", path, e)
    blocks = gguf_blocks(ckpt)
    if blocks:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            save_file({k: v for k, (_, v) in blocks.items()}, tmp, metadata={k: kind for k, (kind, _) in blocks.items()})
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write the blocks cache %s: %s", path, e)
    return blocks
