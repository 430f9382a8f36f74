"""The default CPU model on weights as stored (model.build_packed_model on model_backend/cpu_kernels.py) against
the fp32 reference of the same weights, and the decode attention kernel against plain torch."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from model_backend import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler / AVX2 here")


@pytest.fixture(scope="module")
def default_parts():
    from model_backend.model import build_model, build_packed_model
    from model_backend.weights import load_checkpoint

    ckpt = load_checkpoint("default", progress=False)
    return ckpt, build_model(ckpt.config, ckpt.tensors), build_packed_model(ckpt.config, ckpt.tensors)


def test_every_layer_of_the_default_gguf_matches_its_fp32_weights(default_parts) -> None:
    """Row order (GGUF Q/K permutation, RoPE interleave, q|k|v and gate|up fused) and block decoding: each
    packed layer gives what the dequantised fp32 layer gives, for decode rows and prompt rows, up to the
    rounding of the activations (int8 per block, as llama.cpp: see cpu_kernels)."""
    _, model, packed = default_parts
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    ours = dict(packed.named_modules())
    assert {type(ours[n]) for n in linears} == {cpu_kernels.QuantLinear}
    assert {ours[n].weight.qtype for n in linears} == {"Q4_1", "Q8_0"} and ours[
        "lm_head"
    ].weight.qtype == "Q8_0"
    assert ours["lm_head"].weight is packed.embed.packed  # tied: one copy of the blocks
    gen = torch.Generator().manual_seed(0)
    for name, lin in linears.items():
        for rows in (1, 2, 3, 40):
            x = torch.randn(rows, 1, lin.in_features, generator=gen)
            ref = lin(x)
            got = ours[name](x)
            assert got.shape == ref.shape
            rel = ((got - ref).norm() / ref.norm()).item()
            assert rel < 2e-2, (name, rows, rel)


def test_the_packed_model_holds_the_files_bytes_not_float32(default_parts) -> None:
    """No dense matrix anywhere: the parameters are norms and biases, and the weights' bytes add up to about
    the file's size (the matrices stay memory-mapped views of it)."""
    ckpt, _, packed = default_parts
    assert all(p.dim() == 1 for p in packed.parameters())
    weights = {id(m.weight): m.weight for m in packed.modules() if isinstance(m, cpu_kernels.QuantLinear)}
    total = sum(w.nbytes for w in weights.values())
    assert 0.9 * ckpt.path.stat().st_size < total < ckpt.path.stat().st_size


@pytest.mark.parametrize("nh,nkv,hd", [(9, 3, 64), (4, 4, 16), (8, 2, 128), (6, 1, 32)])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 100, 1031])
def test_attention_kernel_equals_sdpa(nh: int, nkv: int, hd: int, length: int) -> None:
    fn = cpu_kernels.library().bq_attention
    gen = torch.Generator().manual_seed(length)
    max_seq = 1100
    k = torch.randn(nkv, max_seq, hd, generator=gen)
    v = torch.randn(nkv, max_seq, hd, generator=gen)
    q = torch.randn(nh, hd, generator=gen) * 4  # peaky softmax
    out = torch.empty(nh, hd)
    assert (
        fn(
            q.data_ptr(),
            k.data_ptr(),
            v.data_ptr(),
            out.data_ptr(),
            nh,
            nkv,
            hd,
            length,
            k.stride(0),
            hd**-0.5,
        )
        == 0
    )
    ref = F.scaled_dot_product_attention(
        q.view(1, nh, 1, hd), k[None, :, :length], v[None, :, :length], enable_gqa=True
    ).view(nh, hd)
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
    k_ref[:, pos], v_ref[:, pos] = rot[nh:], qkv[nh + nkv :]
    ref = F.scaled_dot_product_attention(
        rot[:nh].view(1, nh, 1, hd),
        k_ref[None, :, : pos + 1].float(),
        v_ref[None, :, : pos + 1].float(),
        enable_gqa=True,
    ).view(nh, hd)
    out = torch.empty(nh, hd)
    fn = cpu_kernels.attention_kernel()[dtype]
    assert (
        fn(
            qkv.data_ptr(),
            torch.view_as_real(rope).data_ptr(),
            k.data_ptr(),
            v.data_ptr(),
            out.data_ptr(),
            nh,
            nkv,
            hd,
            pos,
            k.stride(0),
            hd**-0.5,
        )
        == 0
    )
    tol = 1e-6 if dtype == torch.float32 else 2e-3  # the C rotation may differ in the last bit (fma)
    assert torch.allclose(k.float(), k_ref.float(), atol=tol) and torch.equal(v, v_ref)
    assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4)


def test_attention_kernel_refuses_shapes_it_does_not_handle() -> None:
    fn = cpu_kernels.library().bq_attention
    t = torch.zeros(64)
    assert fn(t.data_ptr(), t.data_ptr(), t.data_ptr(), t.data_ptr(), 4, 3, 8, 1, 8, 1.0) == -2  # 4 % 3
    assert fn(t.data_ptr(), t.data_ptr(), t.data_ptr(), t.data_ptr(), 2, 2, 12, 1, 12, 1.0) == -2  # hd % 8


def test_default_engine_decodes_on_blocks_with_the_greedy_tokens_of_fp32() -> None:
    """The default format on this CPU is `blocks` (weights as stored) with an fp16 KV cache; its greedy output
    equals the fp32 reference's and its decode logits stay close to it (KL, see docs/performance.md)."""
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
            logits.append(
                torch.stack(
                    [e.model(torch.tensor([[ids[i]]]), [i], [0])[0] for i in range(len(ids) - 6, len(ids))]
                )
            )
    lp_ref, lp = (torch.log_softmax(x.double(), -1) for x in logits)
    kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1).mean().item()
    # int8-rounded activations (as llama.cpp): 3.2e-3 nats measured (the int16 blockq kernel: < 1e-4)
    assert kl < 5e-3 and torch.equal(lp.argmax(-1), lp_ref.argmax(-1))
    assert not math.isnan(kl)


def test_without_the_kernel_auto_falls_back_to_fp16() -> None:
    code = (
        "from model_backend.engine import Engine; e = Engine.load('default', max_seq_len=256, progress=False);"
        "print(e.weight_format, e.model.layers[0].attn.decode_kernel)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COPILOT_LS_KERNELS": "0"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fp16", "None"]


def test_a_float32_checkpoint_gets_fp16_unless_asked(tiny_dir) -> None:
    """A float32 Hugging Face folder: `auto` packs it as fp16 (half the bytes, no loss that matters); `blocks`
    keeps it as stored (F32) and gives the reference's logits."""
    from model_backend.engine import Engine

    assert Engine.load(str(tiny_dir("llama")), progress=False).weight_format == "fp16"
    eng = Engine.load(str(tiny_dir("llama")), quantize="blocks", progress=False)
    ref = Engine.load(str(tiny_dir("llama")), quantize="none", progress=False)
    assert eng.weight_format == "blocks"
    tokens = torch.tensor([[5, 17, 99, 3, 250, 42]])
    assert torch.allclose(eng.model(tokens, [0], [0]), ref.model(tokens, [0], [0]), atol=1e-4)


def test_an_unusable_cache_folder_falls_back_to_fp16_with_a_warning(tmp_path) -> None:
    """The kernel is built into the cache folder; where that cannot be made (here the cache root is a file, which
    stops root too), the kernel is off and the reason is logged, instead of a failure."""
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file, not a folder")
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING);"
        "from model_backend import cpu_kernels; print(cpu_kernels.library() is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COPILOT_LS_CACHE": str(not_a_dir)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]
    assert "kernel" in out.stderr.lower()  # the reason is logged


def test_prompt_rows_have_the_bits_of_decode_steps() -> None:
    """The default model on the C row functions: a prompt's logits (all positions), the same tokens decoded one
    at a time (one C call per step for every layer), a prompt split in two, two rows decoded together and two
    threads all give identical bits, so batching, prefix reuse and speculative verification never change the
    text."""
    from model_backend.engine import Engine

    eng = Engine.load("default", max_batch=4, max_seq_len=256, progress=False)
    m = eng.model
    assert m.layer_stack is not None
    toks = torch.tensor([eng.tokenizer.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")])
    t = toks.shape[1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            prompt = m(toks, [0], [0], all_logits=True)[0]
            steps = torch.stack([m(toks[:, j : j + 1], [j], [1])[0] for j in range(t)])
            m(toks[:, :5], [0], [2])
            split = m(toks[:, 5:], [5], [2], all_logits=True)[0]
            torch.set_num_threads(2)
            pair = m(toks[:, -1:].repeat(2, 1), [t - 1, t - 1], [0, 1])
            two = m(toks, [0], [3], all_logits=True)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(prompt, steps) and torch.equal(split, prompt[5:]) and torch.equal(two, prompt)
    assert torch.equal(pair[0], prompt[-1]) and torch.equal(pair[1], prompt[-1])


def test_attention_rows_equal_decode_steps() -> None:
    """A prompt's attention in one call (cache writes first, then every token on the pool's threads) gives each
    token the bits of a decode step at its position (bq_attention_step_h)."""
    from model_backend.model import rope_table

    nh, nkv, hd, p0, t, cap = 9, 3, 64, 3, 20, 64
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(t, (nh + 2 * nkv) * hd, generator=gen)
    rope = torch.view_as_real(rope_table(hd, cap, 10000.0, 1.0, torch.device("cpu"))).reshape(cap, hd)
    k0 = torch.randn(nkv, cap, hd, generator=gen).half()
    v0 = torch.randn(nkv, cap, hd, generator=gen).half()
    k, v = k0.clone(), v0.clone()
    got = cpu_kernels.attention_rows(
        qkv.clone(), rope[p0 : p0 + t].contiguous(), k, v, (nh, nkv, hd), p0, hd**-0.5
    )
    fn = cpu_kernels.attention_kernel()[torch.float16]
    for j in range(t):
        q, out = qkv[j].clone(), torch.empty(nh * hd)
        rc = fn(q.data_ptr(), rope[p0 + j].data_ptr(), k0.data_ptr(), v0.data_ptr(), out.data_ptr(),
                nh, nkv, hd, p0 + j, k0.stride(0), hd**-0.5)  # fmt: skip
        assert rc == 0 and torch.equal(out, got[j]), j
    assert torch.equal(k, k0) and torch.equal(v, v0)
