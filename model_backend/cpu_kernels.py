"""CPU kernels on GGUF weights kept in their own type, and single-query attention.

A leaf module: it imports nothing from the model code. `pack` wraps a tensor's bytes exactly as the GGUF stores
them (no copy when they are contiguous, e.g. a read-only memory-map slice); `matmul` multiplies fp32
activations with them for any number of rows (decode steps and prompts) in C (kernels/quant.c, AVX2 + FMA +
F16C); `dequantize_rows` gives fp32 rows (embedding lookups). The activations are rounded to int8 per block of
32 (per 256 for K-quants) as llama.cpp does; the weights are used exactly as stored, or for Q4_0 / Q4_1 / Q8_0
re-laid out 8 rows at a time by `interleave` (the same bytes). `rmsnorm`, `swiglu`, `attention_rows` and
`LayerStack` (kernels/layer.c) are the rows of a llama / qwen2 decoder layer, for model.py's C-kernel forward.
Layouts, rounding bounds and measured speeds: docs/performance.md ("CPU kernels on GGUF types").

The C library is compiled with the system's compiler on first use and cached under the cache root
(<COPILOT_LS_CACHE or ~/.cache/copilot-ls>/kernels/cpu_kernels-<hash>.so, hashed over its C sources, flags and
the compiler's version). Without a compiler, on a CPU without AVX2/FMA/F16C, or with COPILOT_LS_KERNELS=0,
`available()` is False and the same functions run on numpy/torch, dequantizing a tile of rows at a time.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

GGML_TYPES: tuple[str, ...] = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
# ggml's (values per block, bytes per block); the order is the C side's type id (kernels/quant.c)
BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
_TYPE_ID = {t: i for i, t in enumerate(GGML_TYPES)}
_X8 = 16  # type-id flag of the 8-row interleaved layout (kernels/quant.c's X8)
INTERLEAVED_TYPES = ("Q4_0", "Q4_1", "Q8_0")

KERNEL_DIR = Path(__file__).with_name("kernels")
SOURCES = (KERNEL_DIR / "quant.c", KERNEL_DIR / "attention.c", KERNEL_DIR / "layer.c")
HEADERS = (KERNEL_DIR / "simd.h",)
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared", "-std=c11", "-pthread")


class UnsupportedQuantType(ValueError):
    """A GGUF tensor type these kernels cannot multiply."""

    def __init__(self, qtype: object) -> None:
        super().__init__(
            f"GGUF tensor type {qtype!r} is not supported by the CPU kernels "
            f"(supported: {', '.join(GGML_TYPES)})"
        )
        self.qtype = qtype


# --- the C library -------------------------------------------------------------------------------------------


def cpu_supported() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


def _cache_dir() -> Path:
    env = os.environ.get("COPILOT_LS_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "copilot-ls") / "kernels"


def _compile(cc: str, out: Path) -> bool:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    proc = subprocess.run(
        [cc, *FLAGS, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        os.unlink(tmp)
        log.warning(
            "CPU kernels: compiling %s failed; using the numpy/torch fallback:\n%s",
            ", ".join(map(str, SOURCES)),
            proc.stderr[-2000:],
        )
        return False
    os.replace(tmp, out)  # atomic: a concurrent loader sees no file or the whole file
    return True


@functools.cache
def library() -> Any | None:
    """The compiled kernels (ctypes), or None when they cannot be used here (the reason is logged once)."""
    if os.environ.get("COPILOT_LS_KERNELS", "1") == "0":
        return None
    if not cpu_supported():
        log.info("CPU kernels: this CPU lacks AVX2/FMA/F16C; using the numpy/torch fallback")
        return None
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if cc is None:
        log.warning("CPU kernels: no C compiler (set CC); using the numpy/torch fallback")
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256(
            b"".join(p.read_bytes() for p in SOURCES + HEADERS) + repr((FLAGS, version)).encode()
        )
        out = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if not out.is_file() and not _compile(cc, out):
            return None
        lib = ctypes.CDLL(str(out))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning(
            "CPU kernels: could not build or load the library (%s); using the numpy/torch fallback", e
        )
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ck_matmul.argtypes = [ctypes.c_int, ptr, i64, ptr, ptr, i64, i64, i64, ctypes.c_int, ptr]
    lib.ck_matmul.restype = ctypes.c_int
    lib.ck_dequant_rows.argtypes = [ctypes.c_int, ptr, i64, ptr, i64, i64, i64, ptr]
    lib.ck_dequant_rows.restype = ctypes.c_int
    lib.ck_interleave.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr]
    lib.ck_interleave.restype = ctypes.c_int
    lib.bq_attention.argtypes = [ptr] * 4 + [i64] * 5 + [ctypes.c_float]
    lib.bq_attention.restype = ctypes.c_int
    for fn in (lib.bq_attention_step, lib.bq_attention_step_h):
        fn.argtypes = [ptr] * 5 + [i64] * 5 + [ctypes.c_float]
        fn.restype = ctypes.c_int
    _bind_layer_functions(lib)
    return lib


def _bind_layer_functions(lib: Any) -> None:
    """argtypes of layer.c's row functions and the prompt attention (see rmsnorm, swiglu, LayerStack)."""
    i64, ptr, f32, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    lib.ck_rmsnorm.argtypes = [ptr, ptr, f32, i64, i64, ptr]
    lib.ck_swiglu.argtypes = [ptr, i64, i64, ptr]
    lib.ck_attention_rows.argtypes = [c_int, ptr, ptr, ptr, ptr, ptr] + [i64] * 6 + [f32, c_int]
    lib.ck_decode_layers.argtypes = [ptr, ptr, ptr, ptr, ptr, c_int, i64, i64, i64, c_int]
    for fn in (lib.ck_rmsnorm, lib.ck_swiglu, lib.ck_attention_rows, lib.ck_decode_layers):
        fn.restype = c_int


def available() -> bool:
    """True when the C kernels are built and usable here (compiler, AVX2/FMA/F16C, not COPILOT_LS_KERNELS=0)."""
    return library() is not None


def attention_kernel() -> dict[torch.dtype, Any] | None:
    """{KV-cache dtype: bq_attention_step[_h](qkv, rope, k, v, out, n_heads, n_kv_heads, head_dim, pos,
    head_stride, scale) -> 0} for fp32 and fp16 caches, or None when the library is not available.

    One layer's attention for a single-row decode step after the q|k|v projection: RoPE on q and k, k and v
    written to the sequence's KV cache slice ([n_kv, max_seq, head_dim], fp32 or fp16) at `pos`, then scores, exact
    softmax and probabilities @ V over positions 0..pos (torch runs ~20 ops per layer for this, and its batched
    matmul on the transposed cache view is slow at 1-2k positions)."""
    lib = library()
    return (
        None
        if lib is None
        else {torch.float32: lib.bq_attention_step, torch.float16: lib.bq_attention_step_h}
    )


# --- packed weights ------------------------------------------------------------------------------------------


class PackedWeight:
    """A weight matrix [out_features, in_features] as the GGUF stores it: `data` is uint8 [out_features,
    row bytes] (a view of the caller's array or memory map when it is contiguous: never an fp32 copy), or with
    `interleaved` the same bytes re-laid out 8 rows at a time by `interleave` (rows padded to a multiple of 8)."""

    def __init__(
        self, data: np.ndarray, qtype: str, out_features: int, in_features: int, interleaved: bool = False
    ) -> None:
        self.data, self.qtype = data, qtype
        self.out_features, self.in_features = out_features, in_features
        self.nbytes = int(data.nbytes)
        self.ptr = int(data.ctypes.data)  # the bytes' address, for the C calls (data keeps them alive)
        self.interleaved = interleaved
        self.type_id = _TYPE_ID[qtype] | (_X8 if interleaved else 0)
        self._f32: Tensor | None = None

    @property
    def row_bytes(self) -> int:
        return int(self.data.shape[1])

    def f32_view(self) -> Tensor:
        """The F32 type's weight as a torch tensor sharing the bytes (F32 is multiplied by torch)."""
        if self._f32 is None:
            with warnings.catch_warnings():  # a read-only memory map: torch only reads it
                warnings.simplefilter("ignore", UserWarning)
                self._f32 = torch.from_numpy(self.data.view(np.float32))
        return self._f32

    def __repr__(self) -> str:
        x8 = ", x8" if self.interleaved else ""
        return f"PackedWeight({self.qtype}{x8}, {self.out_features}x{self.in_features}, {self.nbytes} bytes)"


def row_bytes(qtype: str, in_features: int) -> int:
    if qtype not in BLOCKS:
        raise UnsupportedQuantType(qtype)
    block, size = BLOCKS[qtype]
    if in_features % block:
        raise ValueError(f"{qtype} rows hold multiples of {block} values, not {in_features}")
    return in_features // block * size


def pack(raw: np.ndarray | Tensor, qtype: str, shape: tuple[int, int]) -> PackedWeight:
    """Wrap a GGUF tensor's bytes (uint8 as stored, or an F32/F16/BF16 array) as a `PackedWeight` of `shape` =
    (out_features, in_features). Contiguous input is not copied."""
    name = getattr(qtype, "name", qtype)  # a gguf GGMLQuantizationType is accepted too
    if name not in BLOCKS:
        raise UnsupportedQuantType(name)
    n, k = (int(s) for s in shape)
    rb = row_bytes(name, k)
    if isinstance(raw, Tensor):
        t = raw.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        raw = (
            t.contiguous().view(torch.uint8).numpy()
            if t.dtype != torch.bfloat16
            else t.contiguous().view(torch.int16).numpy()
        )
    arr = np.asarray(raw)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    arr = arr.reshape(-1).view(np.uint8)
    if arr.size != n * rb:
        raise ValueError(f"{name} tensor of {arr.size} bytes does not hold {n}x{k} values ({n * rb} bytes)")
    return PackedWeight(arr.reshape(n, rb), name, n, k)


def interleave(w: PackedWeight) -> PackedWeight:
    """`w` re-laid out 8 rows at a time for the C kernels (a copy of the same bytes, padded to whole groups of 8
    rows; see kernels/quant.c, "x8"): its decode steps and prompts run ~1.3-2x faster than on the file's layout.
    `w` itself when its type has no such layout or the library is not available."""
    return w if w.interleaved else interleave_parts([w.data], w.qtype, w.in_features) or w


def interleave_parts(raws: list[np.ndarray], qtype: str, in_features: int) -> PackedWeight | None:
    """The x8 layout of row blocks `raws` (uint8 [rows, row bytes] of `qtype`, as stored) stacked, written
    straight from the parts (no concatenated copy first) when each part but the last has a multiple of 8 rows;
    None when the type has no x8 layout or the library is not available."""
    lib = library()
    if lib is None or qtype not in INTERLEAVED_TYPES:
        return None
    rb = row_bytes(qtype, in_features)
    if any(len(r) % 8 for r in raws[:-1]):
        raws = [np.concatenate(raws)]
    n = sum(len(r) for r in raws)
    out = np.empty((-(-n // 8) * 8, rb), dtype=np.uint8)
    at = 0
    for r in raws:
        r = np.ascontiguousarray(r)
        if r.shape[1] != rb:
            raise ValueError(f"{qtype} rows of {r.shape[1]} bytes do not hold {in_features} values")
        rc = lib.ck_interleave(_TYPE_ID[qtype], r.ctypes.data, rb, len(r), in_features, out[at:].ctypes.data)
        if rc != 0:
            raise RuntimeError(f"CPU kernel ck_interleave failed (code {rc}) for {qtype} {r.shape}")
        at += len(r)
    return PackedWeight(out, qtype, n, in_features, interleaved=True)


# --- products ------------------------------------------------------------------------------------------------


def matmul(x: Tensor, w: PackedWeight, bias: Tensor | None = None) -> Tensor:
    """fp32 x [M, K] @ W.T (+ bias [N], fp32) -> fp32 [M, N] for any M, on torch.get_num_threads() threads."""
    if x.dim() != 2 or x.shape[1] != w.in_features:
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not fit a {w.out_features}x{w.in_features} weight"
        )
    if x.dtype != torch.float32:
        x = x.float()
    if not x.is_contiguous():
        x = x.contiguous()
    lib = library()
    if lib is None or w.qtype == "F32" or x.device.type != "cpu" or w.in_features % 32:
        y = x @ w.f32_view().T if w.qtype == "F32" else _matmul_tiles(x, w)
        return y if bias is None else y.add_(bias)
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.float().contiguous()
    m, n = x.shape[0], w.out_features
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib.ck_matmul(
        w.type_id,
        w.ptr,
        w.row_bytes,
        x.data_ptr(),
        y.data_ptr(),
        m,
        n,
        w.in_features,
        torch.get_num_threads(),
        None if bias is None else bias.data_ptr(),
    )
    if rc != 0:
        raise RuntimeError(f"CPU kernel ck_matmul failed (code {rc}) for {w!r}")
    return y


def _matmul_tiles(x: Tensor, w: PackedWeight) -> Tensor:
    """The fallback: dequantize ~4 MB of weight rows at a time and let torch multiply them."""
    n, k = w.out_features, w.in_features
    step = max(16, (1 << 20) // max(k, 1))
    y = torch.empty(x.shape[0], n, dtype=torch.float32, device=x.device)
    for n0 in range(0, n, step):
        rows = torch.arange(n0, min(n, n0 + step))
        y[:, n0 : n0 + len(rows)] = x @ dequantize_rows(w, rows).to(x.device).T
    return y


def dequantize_rows(w: PackedWeight, rows: Tensor) -> Tensor:
    """Rows of W as fp32 [len(rows), K] (an embedding lookup), identical to gguf-py's dequantization."""
    idx = torch.as_tensor(rows, dtype=torch.int64).reshape(-1).contiguous()
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= w.out_features):
        raise IndexError(f"row index out of range for {w!r}")
    lib = library()
    if lib is None:
        return torch.from_numpy(dequantize_numpy(w.data[idx.numpy()], w.qtype, w.in_features))
    out = torch.empty(len(idx), w.in_features, dtype=torch.float32)
    rc = lib.ck_dequant_rows(
        w.type_id, w.ptr, w.row_bytes, idx.data_ptr(), len(idx), w.out_features, w.in_features, out.data_ptr()
    )
    if rc != 0:
        raise RuntimeError(f"CPU kernel ck_dequant_rows failed (code {rc}) for {w!r}")
    return out


class QuantLinear(nn.Module):
    """A Linear layer whose weight stays a `PackedWeight` (its GGUF type); forward(x[..., K]) -> [..., N]."""

    def __init__(self, weight: PackedWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.bias: Tensor | None
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        y = matmul(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.weight.qtype}, bias={self.bias is not None}"


# --- the rows of a llama / qwen2 layer (kernels/layer.c, attention.c) ----------------------------------------------


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"CPU kernel {what} failed (code {rc})")


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm of each row of fp32 x [..., D] (D % 8 == 0) with fp32 weight [D]: the bits a decode step's
    LayerStack computes for the same row."""
    x = x.contiguous()
    d = x.shape[-1]
    out = torch.empty_like(x)
    _check(
        library().ck_rmsnorm(x.data_ptr(), weight.data_ptr(), eps, x.numel() // d, d, out.data_ptr()),
        "rmsnorm",
    )
    return out


def swiglu(h: Tensor) -> Tensor:
    """silu(gate) * up of fp32 rows h [..., 2I] = gate | up (I % 8 == 0), as LayerStack computes it."""
    h = h.contiguous()
    i = h.shape[-1] // 2
    out = torch.empty(*h.shape[:-1], i, dtype=torch.float32)
    _check(library().ck_swiglu(h.data_ptr(), h.numel() // (2 * i), i, out.data_ptr()), "swiglu")
    return out


def attention_rows(
    qkv: Tensor, rope: Tensor, k: Tensor, v: Tensor, heads: tuple[int, int, int], p0: int, scale: float
) -> Tensor:
    """One sequence's t tokens at positions p0.. after the q|k|v projection: qkv [t, (nh + 2 nkv) hd] fp32,
    contiguous, rotated in place; rope [t, hd] (cos/sin pairs); k, v: the sequence's cache [nkv, capacity, hd]
    (fp32 or fp16, contiguous), written at p0..p0+t-1. Each token attends as a decode step at its position
    would (same bits), the tokens spread over torch.get_num_threads() threads. Returns [t, nh hd]."""
    nh, nkv, hd = heads
    t = qkv.shape[0]
    out = torch.empty(t, nh * hd, dtype=torch.float32)
    rc = library().ck_attention_rows(
        int(k.dtype == torch.float16), qkv.data_ptr(), rope.data_ptr(), k.data_ptr(), v.data_ptr(),
        out.data_ptr(), nh, nkv, hd, p0, t, k.stride(0), scale, torch.get_num_threads(),
    )  # fmt: skip
    _check(rc, "ck_attention_rows")
    return out


class _Mat(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int64),
        ("W", ctypes.c_void_p),
        ("row_bytes", ctypes.c_int64),
        ("N", ctypes.c_int64),
        ("bias", ctypes.c_void_p),
    ]


class _Lin(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int64), ("m", _Mat * 3)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p)] + [
        (name, _Lin) for name in ("qkv", "wo", "w_in", "w_out")
    ]


class _Stack(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("n_layers", "dim", "n_heads", "n_kv", "head_dim", "inter")] + [
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("layers", ctypes.POINTER(_Layer)),
    ]


def _lin(parts: list[QuantLinear]) -> _Lin:
    lin = _Lin(n=len(parts))
    for i, p in enumerate(parts):
        w = p.weight
        bias = None if p.bias is None else p.bias.data_ptr()
        lin.m[i] = _Mat(type=w.type_id, W=w.ptr, row_bytes=w.row_bytes, N=w.out_features, bias=bias)
    return lin


class LayerStack:
    """Every layer of a llama / qwen2 model (RMSNorm, SwiGLU, packed Linears of any non-F32 type: each a list
    of up to 3 QuantLinear parts whose outputs are concatenated) for one C call per decode row (layer.c's
    ck_decode_layers). layers: per layer {"attn_norm", "ffn_norm": fp32 [dim], "qkv", "wo", "w_in", "w_out":
    parts}; shape: (dim, n_heads, n_kv_heads, head_dim, intermediate)."""

    def __init__(
        self, layers: list[dict[str, Any]], shape: tuple[int, ...], eps: float, scale: float
    ) -> None:
        self._keep = layers  # the norms, biases and weights the structures point into
        arr = (_Layer * len(layers))()
        for i, ly in enumerate(layers):
            arr[i] = _Layer(
                ly["attn_norm"].data_ptr(),
                ly["ffn_norm"].data_ptr(),
                *(_lin(ly[n]) for n in ("qkv", "wo", "w_in", "w_out")),
            )
        self._layers = arr
        self._stack = _Stack(len(layers), *shape, eps, scale, arr)
        self._ref = ctypes.byref(self._stack)

    def run(self, x: Tensor, rope: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int, pos: int) -> None:
        """x: one row [dim] fp32 contiguous, updated in place through every layer (RoPE, cache write at `pos`
        of `slot`, attention over 0..pos); rope [hd] fp32 (cos/sin pairs of pos); k_cache, v_cache: the whole
        cache [layers, slots, nkv, capacity, hd] (fp32 or fp16, contiguous)."""
        rc = library().ck_decode_layers(
            self._ref, x.data_ptr(), rope.data_ptr(), k_cache[0, slot].data_ptr(), v_cache[0, slot].data_ptr(),
            int(k_cache.dtype == torch.float16), k_cache.stride(0), k_cache.stride(2), pos,
            torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, "ck_decode_layers")


# --- numpy dequantization (the fallback; the same arithmetic as gguf-py's) ---------------------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] packed bytes -> [n, 32]: low nibbles then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _dequant_blocks(b: np.ndarray, qtype: str) -> np.ndarray:
    """[n blocks, bytes] -> [n blocks, values] float32."""
    n = b.shape[0]
    if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        d = _f16(b[:, 0:2])
        if qtype == "Q8_0":
            return np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32) * d
        off = 4 if qtype in ("Q4_1", "Q5_1") else 2
        if qtype in ("Q4_0", "Q4_1"):
            q = _nibbles(b[:, off:])
        else:
            qh = np.ascontiguousarray(b[:, off : off + 4]).view(np.uint32)
            bits = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
            q = _nibbles(b[:, off + 4 :]) | (bits << 4)
        if qtype == "Q4_0":
            return d * (q.astype(np.int8) - np.int8(8)).astype(np.float32)
        if qtype == "Q5_0":
            return d * (q.astype(np.int8) - np.int8(16)).astype(np.float32)
        return d * q.astype(np.float32) + _f16(b[:, 2:4])
    if qtype == "Q6_K":
        ql, qh = b[:, :128].reshape(n, 2, 1, 64), b[:, 128:192].reshape(n, 2, 1, 32)
        sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
        d = (_f16(b[:, 208:210]) * sc).reshape(n, 16, 1)
        lo = ((ql >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 2, 4, 32)
        hi = ((qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(n, 2, 4, 32)
        q = ((lo | (hi << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16).astype(np.float32)
        return (d * q).reshape(n, 256)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k4_scales(b[:, 4:16])
    ds, dm = (d * sc).reshape(n, 8, 1), (dmin * mn).reshape(n, 8, 1)
    qs = b[:, 48:] if qtype == "Q5_K" else b[:, 16:]
    q = ((qs.reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F).reshape(
        n, 8, 32
    )
    if qtype == "Q5_K":
        qh = (b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
        q = q | (qh << 4)
    return (ds * q.astype(np.float32) - dm).reshape(n, 256)


def dequantize_numpy(data: np.ndarray, qtype: str, in_features: int) -> np.ndarray:
    """uint8 rows [R, row bytes] of `qtype` -> float32 [R, in_features] (numpy only)."""
    rows = data.shape[0]
    if qtype == "F32":
        return np.ascontiguousarray(data).view(np.float32).reshape(rows, in_features).copy()
    if qtype == "F16":
        return _f16(data).reshape(rows, in_features)
    if qtype == "BF16":
        u = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(rows, in_features)
    if qtype not in BLOCKS:
        raise UnsupportedQuantType(qtype)
    _, size = BLOCKS[qtype]
    out = _dequant_blocks(np.ascontiguousarray(data).reshape(-1, size), qtype)
    return out.reshape(rows, in_features).astype(np.float32, copy=False)
