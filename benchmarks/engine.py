"""Engine benchmark on the default GGUF (not a test): prefill, decode, 8 samples, prefix reuse, cold start.

    .venv/bin/python benchmarks/engine.py [--threads 2] [--formats none,fp16,int8] [--json out.json]

Each weight format ("none" = plain fp32 torch, "fp16" = the default CPU fast path, "int8" = lossy opt-in)
is measured in the same run, so the ratios are fair even when the machine is busy; the load average is
printed next to the figures. llama.cpp cannot be installed here quickly (llama-cpp-python is an sdist), so
its figures are the issue author's, printed as an external reference that this run did NOT measure.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_backend.engine import Engine, SamplingParams  # noqa: E402

# Measured by the issue author on this machine with llama.cpp on the same GGUF; NOT measured by this script.
LLAMA_CPP_REFERENCE = {"decode_tok_s": 94.0, "prefill_tok_s": 218.0, "samples8_tok_s": 101.0}


def corpus_ids(engine: Engine, n: int) -> list[int]:
    """n token ids of real Python source (stdlib modules, concatenated)."""
    import argparse as m1
    import dataclasses as m2
    import json.decoder as m3
    import textwrap as m4

    text = "\n\n".join(inspect.getsource(m) for m in (m4, m2, m3, m1))
    ids = engine.tokenizer.encode(text, special=False)
    if len(ids) < n:
        raise SystemExit(f"corpus has only {len(ids)} tokens, need {n}")
    return ids[:n]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, token_healing=False, **kw)


def measure(engine: Engine, decode_tokens: int, reuse_len: int) -> dict[str, float]:
    st = engine.stats
    out: dict[str, float] = {}
    warm = corpus_ids(engine, 64)
    engine.generate(warm, greedy(4))  # first-call initialisation out of the way

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="prefill threads")
    ap.add_argument("--decode-threads", type=int, default=None, help="decode threads (default: --threads)")
    ap.add_argument("--formats", default="none,fp16,int8", help="weight formats to compare")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--reuse-len", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
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

    keys = [("prefill_tok_s", "prefill tok/s (512-token prompt)"), ("decode_tok_s", "decode tok/s, batch 1"),
            ("samples8_tok_s", "decode tok/s in all, 8 samples"),
            ("reuse_plus1_s", "+1 token on a 2,000-token prompt, s"),
            ("cold_prefill_2000_s", "cold prefill of 2,000 tokens, s"),
            ("reuse_ratio", "reuse / cold prefill"), ("cold_start_s", "cold start (cached weights), s"),
            ("cold_start_bg_pack_s", "cold start, packing in background, s")]
    print("\n" + "figure".ljust(42) + "".join(f.rjust(12) for f in formats) + "   llama.cpp (reference)")
    for k, label in keys:
        ref = {"prefill_tok_s": "218", "decode_tok_s": "94", "samples8_tok_s": "101"}.get(k, "-")
        print(label.ljust(42) + "".join(f"{results[f][k]:12.3g}" for f in formats) + f"   {ref}")
    if "none" in results:
        for f in formats:
            if f != "none":
                print(f"{f} vs torch fp32: decode x{results[f]['decode_tok_s'] / results['none']['decode_tok_s']:.2f},"
                      f" prefill x{results[f]['prefill_tok_s'] / results['none']['prefill_tok_s']:.2f},"
                      f" 8 samples x{results[f]['samples8_tok_s'] / results['none']['samples8_tok_s']:.2f}")
    print("llama.cpp figures: the issue author's measurement on this machine, NOT measured in this run "
          "(llama-cpp-python is not installable here quickly).")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results,
                                         "llama_cpp_reference_not_measured": LLAMA_CPP_REFERENCE}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
