"""The CPU kernels on GGUF types (model_backend/cpu_kernels.py, kernels/quant.c) against gguf-py's own
dequantization of the same blocks, for every supported type, in the C path and in the numpy/torch fallback.

Blocks come from `gguf.quants.quantize` where gguf-py has a quantizer (Q4_0..Q8_0, F16, BF16); gguf-py cannot
quantize K-quants, so their blocks are random bytes with sane fp16 scales (every bit pattern of the quants and
packed scales is a valid block, so this covers all of them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GT
from gguf import quants

from model_backend import cpu_kernels as ck

QUANTIZABLE = ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
KERNELS = pytest.mark.skipif(not ck.available(), reason="no C compiler / AVX2 here")


def make_weight(qtype: str, n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw GGUF bytes [n, row bytes], gguf-py's dequantization fp32 [n, k])."""
    rng = np.random.default_rng(seed)
    if qtype == "F32":
        w = rng.standard_normal((n, k), dtype=np.float32)
        return w.view(np.uint8), w
    if qtype in QUANTIZABLE:
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        raw = quants.quantize(w, GT[qtype])
    else:
        block, size = ck.BLOCKS[qtype]
        raw = rng.integers(0, 256, size=(n, k // block, size), dtype=np.uint8)
        d = (
            (rng.uniform(1e-4, 2e-3, size=(n, k // block)).astype(np.float16))
            .view(np.uint8)
            .reshape(n, -1, 2)
        )
        if qtype == "Q6_K":
            raw[:, :, 208:210] = d
        else:
            raw[:, :, 0:2] = d
            raw[:, :, 2:4] = (
                (rng.uniform(1e-4, 2e-3, size=(n, k // block)).astype(np.float16))
                .view(np.uint8)
                .reshape(n, -1, 2)
            )
        raw = raw.reshape(n, -1)
    ref = quants.dequantize(raw, GT[qtype]).astype(np.float32).reshape(n, k)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(n, -1), ref


def tolerance(qtype: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound on |kernel - x @ w.T| per output: each activation is rounded to int8 at scale max|x| / 127 of its
    block (32 values; 256 for K-quants), an error of at most half that scale per value, times |w|; plus fp32
    summation slack. F16/BF16 products are fp32 throughout (slack only)."""
    exact = x.abs() @ w.abs().T
    slack = 1e-5 * exact + 1e-6
    if qtype in ("F16", "BF16", "F32"):
        return slack
    block = 256 if qtype in K_QUANTS else 32
    m, k = x.shape
    half_step = (x.abs().reshape(m, k // block, block).amax(-1) / 127 / 2).repeat_interleave(block, dim=1)
    return half_step @ w.abs().T * 1.001 + slack


ALL = ck.GGML_TYPES


@pytest.mark.parametrize("qtype", ALL)
def test_dequantize_rows_equals_gguf(qtype: str) -> None:
    n, k = 7, 512
    raw, ref = make_weight(qtype, n, k, seed=1)
    w = ck.pack(raw, qtype, (n, k))
    assert w.nbytes == raw.nbytes  # the weight stays in its own type
    rows = torch.tensor([6, 0, 3, 3])
    got = ck.dequantize_rows(w, rows).numpy()
    np.testing.assert_array_equal(got, ref[rows.numpy()])
    np.testing.assert_array_equal(ck.dequantize_numpy(raw[rows.numpy()], qtype, k), ref[rows.numpy()])


@KERNELS
@pytest.mark.parametrize("qtype", ALL)
@pytest.mark.parametrize(("n", "k"), [(5, 256), (9, 768), (3, 4096)])
def test_matmul_matches_dequantized(qtype: str, n: int, k: int) -> None:
    raw, ref = make_weight(qtype, n, k, seed=n + k)
    w = ck.pack(raw, qtype, (n, k))
    wt = torch.from_numpy(ref)
    for m in (1, 3, 8, 64):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        x[0, :40] *= 30.0  # an outlier block, as real activations have
        got = ck.matmul(x, w)
        want = x.double() @ wt.double().T
        err = (got.double() - want).abs()
        tol = tolerance(qtype, x.double(), wt.double())
        assert got.shape == (m, n)
        assert bool((err <= tol).all()), (
            f"{qtype} m={m}: max err {float(err.max()):.3g}, worst err/tol {float((err / tol).max()):.3g}"
        )


@KERNELS
@pytest.mark.parametrize("qtype", ck.GGML_TYPES[1:])
def test_matmul_is_batch_and_thread_invariant(qtype: str) -> None:
    """A row's result does not depend on the other rows of the batch (prompt tiles and decode rows give the same
    bits, so a batched verification agrees with one-row decoding) nor on the thread count."""
    raw, _ = make_weight(qtype, 37, 512, seed=3)
    w = ck.pack(torch.from_numpy(raw), qtype, (37, 512))  # a torch tensor is accepted too
    x = torch.randn(13, 512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ck.matmul(x, w)
        torch.set_num_threads(2)
        two = ck.matmul(x, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for j in range(13):
        assert torch.equal(ck.matmul(x[j : j + 1], w), one[j : j + 1]), f"{qtype} row {j}"
    assert torch.equal(ck.matmul(x[4:7], w), one[4:7])


@KERNELS
def test_quant_linear_and_readonly_memmap(tmp_path) -> None:
    raw, ref = make_weight("Q8_0", 6, 256, seed=4)
    path = tmp_path / "w.bin"
    raw.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    w = ck.pack(mm, "Q8_0", (6, 256))
    assert np.shares_memory(w.data, mm)  # no copy of the file's bytes
    bias = torch.randn(6)
    layer = ck.QuantLinear(w, bias)
    x = torch.randn(2, 3, 256)
    y = layer(x)
    want = x @ torch.from_numpy(ref).T + bias
    assert y.shape == (2, 3, 6)
    assert torch.allclose(y, want, atol=0.05, rtol=0.02)


def test_unknown_type_raises_a_clear_error() -> None:
    with pytest.raises(ck.UnsupportedQuantType) as e:
        ck.pack(np.zeros(110, dtype=np.uint8), "Q2_K", (1, 256))
    assert "Q2_K" in str(e.value) and "Q4_K" in str(e.value) and "Q8_0" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="bytes"):
        ck.pack(np.zeros(10, dtype=np.uint8), "Q8_0", (1, 32))


FALLBACK = """
import numpy as np, torch
from model_backend import cpu_kernels as ck
from tests.backend.test_cpu_kernels import make_weight, tolerance
assert not ck.available()
for qtype in ck.GGML_TYPES:
    raw, ref = make_weight(qtype, 300, 256, seed=5)
    w = ck.pack(raw, qtype, (300, 256))
    np.testing.assert_array_equal(ck.dequantize_rows(w, torch.tensor([0, 299, 7])).numpy(), ref[[0, 299, 7]])
    x = torch.randn(4, 256)
    got = ck.matmul(x, w).double()
    want = x.double() @ torch.from_numpy(ref).double().T
    assert ((got - want).abs() <= 1e-5 * (x.abs().double() @ torch.from_numpy(ref).abs().double().T) + 1e-5).all()
    b = torch.randn(300)
    assert torch.allclose(ck.QuantLinear(w, b)(x[None]), (got + b.double()).float()[None], atol=1e-4)
print("ok")
"""


def test_fallback_without_the_library_is_correct() -> None:
    """COPILOT_LS_KERNELS=0: the numpy/torch path (dequantizing tiles of rows) gives gguf-py's values exactly,
    so its products are fp32-exact."""
    import os

    env = {**os.environ, "COPILOT_LS_KERNELS": "0"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, timeout=300, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


FORK = """
import os, torch
from model_backend import cpu_kernels as ck
from tests.backend.test_cpu_kernels import make_weight
torch.set_num_threads(2)
raw, ref = make_weight("Q8_0", 64, 256)
w = ck.pack(raw, "Q8_0", (64, 256))
x = torch.randn(20, 256)
want = ck.matmul(x, w)  # starts the pool's worker
pid = os.fork()
if pid == 0:
    os._exit(0 if torch.equal(ck.matmul(x, w), want) else 1)
_, status = os.waitpid(pid, 0)
print("ok" if os.waitstatus_to_exitcode(status) == 0 else "child failed")
"""


@KERNELS
def test_kernels_work_in_a_forked_child() -> None:
    """The thread pool does not survive fork(); the child must start its own instead of waiting forever."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


@KERNELS
@pytest.mark.parametrize("qtype", ck.INTERLEAVED_TYPES)
def test_interleaved_layout_matches_gguf_and_is_batch_and_thread_invariant(qtype: str) -> None:
    """The x8 layout (8 rows interleaved, made at load): the same bytes re-laid out, so rows dequantize exactly
    as gguf-py's, products stay within the activation-rounding bound, and a row's bits do not depend on the
    batch or the threads (row counts that are not a multiple of 8 are padded)."""
    n, k = 21, 512
    raw, ref = make_weight(qtype, n, k, seed=11)
    w = ck.interleave(ck.pack(raw, qtype, (n, k)))
    assert w.interleaved and w.out_features == n and w.nbytes == 24 * raw.shape[1]
    rows = torch.tensor([20, 0, 9, 9, 16])
    np.testing.assert_array_equal(ck.dequantize_rows(w, rows).numpy(), ref[rows.numpy()])
    x = torch.randn(11, k, generator=torch.Generator().manual_seed(2))
    x[0, :40] *= 30.0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ck.matmul(x, w)
        torch.set_num_threads(2)
        two = ck.matmul(x, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for j in range(11):
        assert torch.equal(ck.matmul(x[j : j + 1], w), one[j : j + 1]), f"{qtype} row {j}"
    wt = torch.from_numpy(ref).double()
    err = (one.double() - x.double() @ wt.T).abs()
    assert bool((err <= tolerance(qtype, x.double(), wt)).all())


@KERNELS
def test_interleave_parts_equals_interleaving_the_concatenation() -> None:
    """q|k|v and gate|up parts are re-laid out straight into one buffer: the same bytes as interleaving their
    concatenation (parts of 8k rows), and a concatenation first otherwise."""
    a, _ = make_weight("Q4_1", 16, 256, seed=1)
    b, _ = make_weight("Q4_1", 5, 256, seed=2)
    c, _ = make_weight("Q4_1", 3, 256, seed=3)
    for parts in ([a, b], [b, c, a]):
        got = ck.interleave_parts(parts, "Q4_1", 256)
        want = ck.interleave(ck.pack(np.concatenate(parts), "Q4_1", (sum(len(p) for p in parts), 256)))
        assert got is not None and np.array_equal(got.data, want.data)
    assert ck.interleave_parts([a], "Q4_K", 256) is None  # no x8 layout for K-quants


@KERNELS
def test_row_functions_match_torch() -> None:
    """RMSNorm and SwiGLU of the C decode step (kernels/layer.c) against torch's."""
    x = torch.randn(3, 576, generator=torch.Generator().manual_seed(4)) * 3
    w = torch.rand(576) + 0.5
    ref = torch.nn.functional.rms_norm(x, (576,), w, 1e-5)
    assert torch.allclose(ck.rmsnorm(x, w, 1e-5), ref, rtol=1e-5, atol=1e-6)
    h = torch.randn(2, 2 * 1536) * 4
    ref = torch.nn.functional.silu(h[:, :1536]) * h[:, 1536:]
    assert torch.allclose(ck.swiglu(h), ref, rtol=1e-5, atol=1e-6)
