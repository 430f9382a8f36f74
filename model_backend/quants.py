"""GGUF (ggml) dequantisation to float32, vectorised with numpy over whole tensors (no per-block Python loops).

Block layouts follow ggml-quants.c (`block_q4_0`, `block_q4_K`, ...). Each `_deq_*` takes the raw bytes of a
tensor as a uint8 array of shape (n_blocks, block_bytes) and returns float32 of shape (n_blocks, block_size).
`dequantize(raw, qtype, shape)` is the entry point; tests check it bit-exactly against `gguf.quants.dequantize`.
(numpy, not torch: torch's uint8 bit ops on these small inner dimensions measured 4-10x slower here.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
QK_K = 256


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32, little-endian IEEE half."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) packed bytes -> (n, 32): low nibbles give elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)


def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]).astype(np.float32) - 8.0)


def _deq_q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * _nibbles(b[:, 4:]).astype(np.float32) + _f16(b[:, 2:4])


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of Q4_K/Q5_K -> eight 6-bit scales and eight 6-bit mins, each (n, 8) float32."""
    lo, hi, top = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = np.concatenate([lo & 63, (top & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([hi & 63, (top >> 4) | ((hi >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _k4_low_high(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 8, 32): chunk j of 32 bytes gives sub-block 2j (low nibbles) and 2j+1 (high)."""
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, 8, 32)


def _k_combine(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales_mins(b[:, 4:16])
    y = (d * sc)[:, :, None] * q.astype(np.float32) - (dmin * mn)[:, :, None]
    return y.reshape(-1, QK_K)


def _deq_q4_k(b: np.ndarray) -> np.ndarray:
    return _k_combine(b, _k4_low_high(b[:, 16:144]))


_BITS = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


def _deq_q5_k(b: np.ndarray) -> np.ndarray:
    qh = b[:, 16:48]  # bit i of qh[l] is the fifth bit of element l of sub-block i
    high = ((qh[:, None, :] >> _BITS) & 1) << 4
    return _k_combine(b, _k4_low_high(b[:, 48:176]) | high)


_Q6_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    # per half of 128 outputs: groups of 32 come from low nibbles of ql[0:32], ql[32:64], then high nibbles of
    # the same; their two high bits come from qh[0:32] shifted by 0, 2, 4, 6; one int8 scale per 16 outputs.
    ql = b[:, 0:128].reshape(-1, 2, 2, 32)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # (n, 2, 4, 32)
    q = (low | (((qh >> _Q6_SHIFTS) & 3) << 4)).astype(np.float32) - 32.0
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32).reshape(-1, 2, 4, 2, 1)
    d = _f16(b[:, 208:210]).reshape(-1, 1, 1, 1, 1)
    return (d * scales * q.reshape(-1, 2, 4, 2, 16)).reshape(-1, QK_K)


def _deq_q5(b: np.ndarray, with_min: bool) -> np.ndarray:
    # Q5_0: d, 4 bytes of fifth bits, 16 bytes of nibbles (value - 16); Q5_1: d, m, then the same (value + m)
    off = 4 if with_min else 2
    qh = np.ascontiguousarray(b[:, off : off + 4]).view("<u4")  # (n, 1)
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4
    q = (_nibbles(b[:, off + 4 :]) | high).astype(np.float32)
    if with_min:
        return _f16(b[:, :2]) * q + _f16(b[:, 2:4])
    return _f16(b[:, :2]) * (q - 16.0)


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f4").copy()


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(b).view("<u2").astype(np.uint32) << 16).view(np.float32)


DEQUANTIZERS: dict[Q, Callable[[np.ndarray], np.ndarray]] = {
    Q.F32: _deq_f32,
    Q.F16: _deq_f16,
    Q.BF16: _deq_bf16,
    Q.Q8_0: _deq_q8_0,
    Q.Q4_0: _deq_q4_0,
    Q.Q4_1: _deq_q4_1,
    Q.Q5_0: lambda b: _deq_q5(b, False),
    Q.Q5_1: lambda b: _deq_q5(b, True),
    Q.Q4_K: _deq_q4_k,
    Q.Q5_K: _deq_q5_k,
    Q.Q6_K: _deq_q6_k,
}

SUPPORTED = frozenset(DEQUANTIZERS)


class QuantError(ValueError):
    pass


def check_size(nbytes: int, qtype: Q | int, shape: tuple[int, ...]) -> Q:
    """The type, when it is one this module reads and `nbytes` hold a tensor of `shape`; else QuantError."""
    try:
        qtype = Q(qtype)
    except ValueError:
        raise QuantError(f"unknown GGUF tensor type {qtype}") from None
    if qtype not in DEQUANTIZERS:
        names = ", ".join(sorted(t.name for t in SUPPORTED))
        raise QuantError(f"unsupported GGUF tensor type {qtype.name} (supported: {names})")
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    if n % block_size or nbytes != n // block_size * block_bytes or shape[-1] % block_size:
        raise QuantError(
            f"{qtype.name} data of {nbytes} bytes does not hold a tensor of shape {tuple(shape)}"
        )
    return qtype


def dequantize(raw: np.ndarray, qtype: Q | int, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw GGUF tensor data (a numpy array over its bytes, any dtype/shape) -> float32 torch tensor of `shape`
    (row-major, i.e. GGUF's dims reversed: (rows, cols))."""
    b = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    qtype = check_size(b.size, qtype, shape)
    out = DEQUANTIZERS[qtype](b.reshape(-1, GGML_QUANT_SIZES[qtype][1]))
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32).reshape(shape))
