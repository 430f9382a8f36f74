"""Speed of the CPU kernels (model_backend/cpu_kernels.py) per GGUF type at Qwen2.5-Coder-1.5B's matrix shapes.

    .venv/bin/python benchmarks/kernels.py [--types Q8_0,Q4_K] [--threads 1,2] [--m 512] [--json OUT]
    .venv/bin/python benchmarks/kernels.py --vs-llama PROBE.gguf [--m 512]

Types ending in x8 (Q4_1x8) are the 8-row interleaved layout the model loader makes for Q4_0 / Q4_1 / Q8_0. For each
type and shape (N x K = 1536x1536, 8960x1536, 1536x8960, or --shapes) it prints GEMV (M = 1, a decode step) in ms
and GB/s of weight bytes read, and GEMM (M = --m rows, a prompt) in ms and GFLOP/s (2*M*N*K / time), with 1 and
2 threads: wall time, and with 1 thread also the thread's CPU time (what a busy shared machine does not
inflate). Weights are random bytes with sane fp16 scales (speed does not depend on the values). When the
llama.cpp Python package is importable its version is printed; a same-run model-level comparison with it is
benchmarks/engine.py's job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_backend import cpu_kernels as ck  # noqa: E402

SHAPES = ((1536, 1536), (8960, 1536), (1536, 8960))
DEFAULT_TYPES = (
    "Q8_0",
    "Q4_K",
    "Q6_K",
    "Q5_K",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "F16",
    "BF16",
    "Q8_0x8",
    "Q4_0x8",
    "Q4_1x8",
)
# default model (SmolLM2-135M) shapes: q|k|v, o, gate|up, down, the tied output
DEFAULT_MODEL_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576))


def random_weight(qtype: str, n: int, k: int, seed: int = 0) -> ck.PackedWeight:
    """Random blocks of `qtype`; a type ending in "x8" (Q4_1x8) is that type in the 8-row interleaved layout
    the model loader uses (cpu_kernels.interleave)."""
    if qtype.endswith("x8"):
        return ck.interleave(random_weight(qtype[:-2], n, k, seed))
    rng = np.random.default_rng(seed)
    block, size = ck.BLOCKS[qtype]
    if qtype in ("F16", "BF16", "F32"):
        w = torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32) * 0.02)
        w = w.to({"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[qtype])
        return ck.pack(w, qtype, (n, k))
    raw = rng.integers(0, 256, size=(n, k // block, size), dtype=np.uint8)
    scale = rng.uniform(1e-4, 2e-3, size=(n, k // block, 2)).astype(np.float16).view(np.uint8)
    at = {"Q6_K": (208,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q4_1": (0, 2), "Q5_1": (0, 2)}.get(qtype, (0,))
    for i, off in enumerate(at):
        raw[:, :, off : off + 2] = scale[:, :, 2 * i : 2 * i + 2]
    return ck.pack(raw.reshape(n, -1), qtype, (n, k))


def timed(fn, clock=time.perf_counter, min_time: float = 0.3, min_reps: int = 3) -> float:
    """Seconds per call: the fastest of at least min_reps calls and min_time seconds (after one warm-up)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = clock()
        fn()
        times.append(clock() - t)
    return float(min(times))


def vs_llama(path: str, m: int) -> None:
    """One thread, CPU time of the calling thread: our kernels over every matrix of a GGUF (as a forward pass
    uses them: all rows for a prompt of m tokens, the output matrix for the last row only) against llama.cpp's
    whole forward pass on the same file (its matrix products plus attention, norms, RoPE: an upper bound on its
    matrix time), for a prompt of m tokens and for one decode step after it."""
    import llama_cpp  # type: ignore[import-not-found]
    from gguf import GGUFReader

    torch.set_num_threads(1)
    reader = GGUFReader(path)
    shapes: dict[tuple[str, int, int, bool], int] = {}
    for t in reader.tensors:
        if len(t.shape) != 2 or t.name == "token_embd.weight":
            continue
        key = (t.tensor_type.name, int(t.shape[1]), int(t.shape[0]), t.name == "output.weight")
        shapes[key] = shapes.get(key, 0) + 1
    ours_prefill = ours_decode = 0.0
    for (qtype, n, k, last_only), count in sorted(shapes.items()):
        w = random_weight(qtype, n, k)  # same type and shape; the values do not change the speed
        t1 = timed(lambda: ck.matmul(torch.randn(1, k), w), time.thread_time)  # noqa: B023
        tm = (
            t1
            if last_only
            else timed(
                lambda: ck.matmul(torch.randn(m, k), w),  # noqa: B023
                time.thread_time,
                min_time=0.5,
                min_reps=2,
            )
        )
        ours_decode += count * t1
        ours_prefill += count * tm
        print(
            f"  {count:3d} x {qtype:5} {n:>6}x{k:<5}: decode {t1 * 1e3:7.3f} ms, prompt {tm * 1e3:8.1f} ms",
            flush=True,
        )
    llm = llama_cpp.Llama(path, n_threads=1, n_threads_batch=1, n_ctx=m + 64, n_batch=m, verbose=False)
    ids = np.random.default_rng(0).integers(100, 20000, size=m).tolist()
    llm.eval(ids[:8])
    best_prefill, steps = 1e9, []
    for _ in range(2):
        llm.reset()
        t = time.thread_time()
        llm.eval(ids)
        best_prefill = min(best_prefill, time.thread_time() - t)
    for i in range(16):
        t = time.thread_time()
        llm.eval([ids[i]])
        steps.append(time.thread_time() - t)
    llama_decode = float(np.median(steps))
    print(f"{Path(path).name}, 1 thread, CPU time (load average {os.getloadavg()[0]:.1f}):")
    print(
        f"  prompt of {m}: our matrix products {ours_prefill * 1e3:.0f} ms vs llama.cpp forward "
        f"{best_prefill * 1e3:.0f} ms ({best_prefill / ours_prefill:.2f}x)"
    )
    print(
        f"  decode step: our matrix products {ours_decode * 1e3:.1f} ms vs llama.cpp forward "
        f"{llama_decode * 1e3:.1f} ms ({llama_decode / ours_decode:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--m", type=int, default=512, help="rows of the GEMM (a prompt's tokens)")
    ap.add_argument(
        "--shapes",
        default=None,
        help="NxK,... (default: Qwen2.5-Coder-1.5B's; 'default-model': SmolLM2-135M's)",
    )
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument(
        "--vs-llama",
        metavar="GGUF",
        help="instead: our kernels over this file's matrices against "
        "llama.cpp's forward pass on it (needs llama_cpp and gguf)",
    )
    args = ap.parse_args(argv)
    if not ck.available():
        print(
            "the C kernels are not available here (compiler / AVX2 / COPILOT_LS_KERNELS=0)", file=sys.stderr
        )
        return 1
    if args.vs_llama:
        vs_llama(args.vs_llama, args.m)
        return 0
    try:
        import llama_cpp  # type: ignore[import-not-found]

        print(f"llama_cpp {llama_cpp.__version__} importable (model-level comparison: benchmarks/engine.py)")
    except ImportError:
        print("llama_cpp not importable: absolute figures only")
    shapes = (
        SHAPES
        if args.shapes is None
        else DEFAULT_MODEL_SHAPES
        if args.shapes == "default-model"
        else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    )
    print(
        f"{'type':6} {'N x K':>11} {'thr':>3} {'time':>4} | {'GEMV ms':>8} {'GB/s':>6} | {'GEMM ms':>8} "
        f"{'GFLOP/s':>8}"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows = []
    saved = torch.get_num_threads()
    try:
        for qtype in args.types.split(","):
            for n, k in shapes:
                w = random_weight(qtype, n, k)
                x1 = torch.randn(1, k)
                xm = torch.randn(args.m, k)
                for threads in (int(t) for t in args.threads.split(",")):
                    torch.set_num_threads(threads)
                    rows.append(measure_row(qtype, n, k, w, x1, xm, threads))
    finally:
        torch.set_num_threads(saved)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def measure_row(
    qtype: str, n: int, k: int, w: ck.PackedWeight, x1: torch.Tensor, xm: torch.Tensor, threads: int
) -> dict:
    """GEMV (one row) and GEMM (xm's rows) of the N x K weight through the kernel on `threads` threads: one
    printed row."""
    m = xm.shape[0]
    row = {"type": qtype, "n": n, "k": k, "threads": threads, "m": m}
    # wall time; with one thread also the thread's CPU time, which other processes on a shared
    # machine do not inflate (the fair per-core figure there)
    clocks = {"wall": time.perf_counter}
    if threads == 1:
        clocks["cpu"] = time.thread_time
    for name, clock in clocks.items():
        t1 = timed(lambda: ck.matmul(x1, w), clock)
        tm = timed(lambda: ck.matmul(xm, w), clock, min_time=0.5, min_reps=2)
        row[f"gemv_ms_{name}"] = t1 * 1e3
        row[f"gemv_gbs_{name}"] = w.nbytes / t1 / 1e9
        row[f"gemm_ms_{name}"] = tm * 1e3
        row[f"gemm_gflops_{name}"] = 2 * m * n * k / tm / 1e9
        print(
            f"{qtype:6} {n:>5}x{k:<5} {threads:>3} {name:>4} | {row[f'gemv_ms_{name}']:8.3f} "
            f"{row[f'gemv_gbs_{name}']:6.1f} | {row[f'gemm_ms_{name}']:8.1f} "
            f"{row[f'gemm_gflops_{name}']:8.1f}",
            flush=True,
        )
    return row


if __name__ == "__main__":
    raise SystemExit(main())
