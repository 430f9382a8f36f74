"""The CPU decode kernels (model_backend/blockq.py, kernels/blockq.c) against plain torch on the same weights."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from model_backend import blockq

pytestmark = pytest.mark.skipif(blockq.library() is None, reason="no C compiler / AVX2 here")


@pytest.fixture(scope="module")
def default_parts():
    from model_backend.model import build_model
    from model_backend.weights import load_checkpoint

    ckpt = load_checkpoint("default", progress=False)
    return ckpt, build_model(ckpt.config, ckpt.tensors), blockq.load_blocks(ckpt)


def test_every_layer_of_the_default_gguf_matches_its_fp32_weights(default_parts) -> None:
    """Row order (GGUF Q/K permutation undone, RoPE interleave, q|k|v and gate|up fused) and block decoding:
    each BlockLinear gives what the dequantised fp32 layer gives, up to the int16 rounding of activations."""
    _, model, blocks = default_parts
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(blocks) == set(linears)  # every layer of this GGUF is Q4_1 or Q8_0
    assert {kind for kind, _ in blocks.values()} == {"Q4_1", "Q8_0"} and blocks["lm_head"][0] == "Q8_0"
    gen = torch.Generator().manual_seed(0)
    for name, lin in linears.items():
        kind, raw = blocks[name]
        layer = blockq.BlockLinear(raw, kind, lin.in_features, lin.bias, lin)
        for rows in (1, 2, 3):
            x = torch.randn(rows, 1, lin.in_features, generator=gen)
            ref = lin(x)
            got = layer(x)
            assert got.shape == ref.shape
            rel = ((got - ref).abs().max() / ref.abs().max()).item()
            assert rel < 2e-4, (name, rows, rel)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("n", [1, 8, 13, 30])
def test_random_blocks_of_any_row_count(kind: str, n: int) -> None:
    """Rows not a multiple of 8 (the x8 layout pads them), against a dequantisation written out here."""
    gen = torch.Generator().manual_seed(n)
    k = 96
    nb = k // 32
    d = (torch.rand(n, nb, generator=gen) * 0.1 + 0.01).half()
    if kind == "Q4_1":
        m = (torch.randn(n, nb, generator=gen) * 0.1).half()
        q = torch.randint(0, 16, (n, nb, 32), generator=gen, dtype=torch.uint8)
        packed = q[..., :16] | (q[..., 16:] << 4)
        raw = torch.cat([d.view(torch.uint8).view(n, nb, 2), m.view(torch.uint8).view(n, nb, 2), packed], -1)
        w = d.float()[..., None] * q.float() + m.float()[..., None]
    else:
        q = torch.randint(-127, 128, (n, nb, 32), generator=gen, dtype=torch.int8)
        raw = torch.cat([d.view(torch.uint8).view(n, nb, 2), q.view(torch.uint8)], -1)
        w = d.float()[..., None] * q.float()
    w = w.reshape(n, k)
    bias = torch.randn(n, generator=gen)
    layer = blockq.BlockLinear(raw.reshape(n, -1), kind, k, bias, torch.nn.Identity())
    x = torch.randn(3, k, generator=gen)
    ref = x @ w.T + bias
    # int16 activations: each product is off by at most 2^-16 of its block's largest |x| times |w|
    bound = (x.abs().reshape(3, nb, 32).amax(-1).repeat_interleave(32, -1) @ w.abs().T) * 2.0**-15
    assert ((layer(x) - ref).abs() <= bound + 1e-5).all()


def test_more_rows_go_to_the_fallback_and_bad_blocks_are_refused(default_parts) -> None:
    _, model, blocks = default_parts
    lin = model.layers[0].mlp.w_out
    kind, raw = blocks["layers.0.mlp.w_out"]
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return lin(x)

    layer = blockq.BlockLinear(raw, kind, lin.in_features, None, Spy())
    layer(torch.randn(1, blockq.MAX_ROWS, lin.in_features))
    assert calls == []
    layer(torch.randn(1, blockq.MAX_ROWS + 1, lin.in_features))
    assert calls == [torch.Size([1, blockq.MAX_ROWS + 1, lin.in_features])]
    with pytest.raises(ValueError, match="do not fit"):
        blockq.BlockLinear(raw[:, :-1], kind, lin.in_features, None, lin)
    with pytest.raises(ValueError, match="unsupported block type"):
        blockq.BlockLinear(raw, "Q4_K", lin.in_features, None, lin)


def test_blocks_are_cached_with_the_converted_weights(default_parts, tmp_path) -> None:
    ckpt, _, blocks = default_parts
    again = blockq.load_blocks(ckpt)  # from the cache file next to the converted weights
    assert ckpt.metadata.get("cache")
    assert set(again) == set(blocks)
    assert all(torch.equal(again[k][1], blocks[k][1]) and again[k][0] == blocks[k][0] for k in blocks)


@pytest.mark.parametrize("nh,nkv,hd", [(9, 3, 64), (4, 4, 16), (8, 2, 128), (6, 1, 32)])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 100, 1031])
def test_attention_kernel_equals_sdpa(nh: int, nkv: int, hd: int, length: int) -> None:
    fn = blockq.library().bq_attention
    gen = torch.Generator().manual_seed(length)
    max_seq = 1100
    k = torch.randn(nkv, max_seq, hd, generator=gen)
    v = torch.randn(nkv, max_seq, hd, generator=gen)
    q = torch.randn(nh, hd, generator=gen) * 4  # peaky softmax
    out = torch.empty(nh, hd)
    assert fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), nh, nkv, hd, length, k.stride(0),
              hd ** -0.5) == 0
    ref = F.scaled_dot_product_attention(q.view(1, nh, 1, hd), k[None, :, :length], v[None, :, :length],
                                         enable_gqa=True).view(nh, hd)
    assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4), (out - ref).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_step_rotates_writes_the_cache_and_attends(dtype: torch.dtype) -> None:
    """bq_attention_step[_h] against the torch path of model.Attention (RoPE as a complex multiply, cache slice
    write, attention over the cache as stored: fp32, or rounded to fp16)."""
    from model_backend.model import rope_table

    nh, nkv, hd, pos, max_seq = 6, 2, 32, 37, 64
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(nkv, max_seq, hd, generator=gen).to(dtype)
    v = torch.randn(nkv, max_seq, hd, generator=gen).to(dtype)
    qkv = torch.randn(nh + 2 * nkv, hd, generator=gen)
    rope = rope_table(hd, max_seq, 10000.0, 1.0, torch.device("cpu"))[pos]
    rot = torch.view_as_real(torch.view_as_complex(qkv[: nh + nkv].reshape(nh + nkv, hd // 2, 2)) * rope)
    rot = rot.reshape(nh + nkv, hd)
    k_ref, v_ref = k.clone(), v.clone()
    k_ref[:, pos], v_ref[:, pos] = rot[nh:], qkv[nh + nkv:]
    ref = F.scaled_dot_product_attention(rot[:nh].view(1, nh, 1, hd), k_ref[None, :, : pos + 1].float(),
                                         v_ref[None, :, : pos + 1].float(), enable_gqa=True).view(nh, hd)
    out = torch.empty(nh, hd)
    fn = blockq.attention_kernel()[dtype]
    assert fn(qkv.data_ptr(), torch.view_as_real(rope).data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
              nh, nkv, hd, pos, k.stride(0), hd ** -0.5) == 0
    tol = 1e-6 if dtype == torch.float32 else 2e-3  # the C rotation may differ in the last bit (fma)
    assert torch.allclose(k.float(), k_ref.float(), atol=tol) and torch.equal(v, v_ref)
    assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4)


def test_attention_kernel_refuses_shapes_it_does_not_handle() -> None:
    fn = blockq.library().bq_attention
    t = torch.zeros(64)
    assert fn(t.data_ptr(), t.data_ptr(), t.data_ptr(), t.data_ptr(), 4, 3, 8, 1, 8, 1.0) == -2  # 4 % 3
    assert fn(t.data_ptr(), t.data_ptr(), t.data_ptr(), t.data_ptr(), 2, 2, 12, 1, 12, 1.0) == -2  # hd % 8


def test_default_engine_decodes_on_blocks_with_the_greedy_tokens_of_fp32() -> None:
    """The default format on this CPU is `blocks` with an fp16 KV cache; its greedy output equals the fp32
    reference's and its decode logits stay close to it (KL well under 1e-4 nats, see docs/performance.md)."""
    from model_backend.engine import Engine, SamplingParams

    ref = Engine.load("default", quantize="none", max_seq_len=1024, progress=False)
    eng = Engine.load("default", max_seq_len=1024, progress=False)
    assert eng.weight_format == "blocks" and eng.kv_dtype == torch.float16 and ref.kv_dtype == torch.float32
    prompt = "def fibonacci(n):\n    "
    params = SamplingParams(max_tokens=24, temperature=0)
    assert eng.generate(prompt, params)[0].text == ref.generate(prompt, params)[0].text
    ids = ref.tokenizer.encode("import os\nimport sys\n\n\ndef main(argv):\n    for arg in argv:\n")
    logits = []
    for e in (ref, eng):
        with torch.inference_mode():
            e.model(torch.tensor([ids[:-6]]), [0], [0])
            logits.append(torch.stack([e.model(torch.tensor([[ids[i]]]), [i], [0])[0]
                                       for i in range(len(ids) - 6, len(ids))]))
    lp_ref, lp = (torch.log_softmax(x.double(), -1) for x in logits)
    kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1).mean().item()
    assert kl < 1e-4 and torch.equal(lp.argmax(-1), lp_ref.argmax(-1))
    assert not math.isnan(kl)


def test_without_the_kernel_auto_falls_back_to_fp16() -> None:
    code = ("from model_backend.engine import Engine; e = Engine.load('default', max_seq_len=256, progress=False);"
            "print(e.weight_format, e.model.layers[0].attn.decode_kernel)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COPILOT_LS_KERNELS": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fp16", "None"]


def test_a_checkpoint_without_blocks_gets_fp16(tiny_dir) -> None:
    """A Hugging Face folder has no GGUF blocks: `blocks` (and `auto`) fall back to fp16 packs, and say so."""
    from model_backend.engine import Engine

    for fmt in ("auto", "blocks"):
        eng = Engine.load(str(tiny_dir("llama")), quantize=fmt, progress=False)
        assert eng.weight_format == "fp16"


def test_an_unusable_cache_folder_falls_back_to_fp16_with_a_warning(tmp_path) -> None:
    """The kernel is built into the cache folder; where that cannot be made (here the cache root is a file, which
    stops root too), the kernel is off and the reason is logged, instead of a failure."""
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file, not a folder")
    code = ("import logging; logging.basicConfig(level=logging.WARNING);"
            "from model_backend import blockq; print(blockq.library() is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COPILOT_LS_CACHE": str(not_a_dir)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]
    assert "could not build the kernel" in out.stderr and "using fp16 packing" in out.stderr
