"""Speed of the CPU kernels (model_backend/cpu_kernels.py) per GGUF type at Qwen2.5-Coder-1.5B's matrix shapes.

    .venv/bin/python benchmarks/kernels.py [--types Q8_0,Q4_K] [--threads 1,2] [--m 512] [--json OUT]

For each type and shape (N x K = 1536x1536, 8960x1536, 1536x8960) it prints GEMV (M = 1, a decode step) in ms
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
DEFAULT_TYPES = ("Q8_0", "Q4_K", "Q6_K", "Q5_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16")


def random_weight(qtype: str, n: int, k: int, seed: int = 0) -> ck.PackedWeight:
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
        raw[:, :, off:off + 2] = scale[:, :, 2 * i:2 * i + 2]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--m", type=int, default=512, help="rows of the GEMM (a prompt's tokens)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if not ck.available():
        print("the C kernels are not available here (compiler / AVX2 / COPILOT_LS_KERNELS=0)", file=sys.stderr)
        return 1
    try:
        import llama_cpp  # type: ignore[import-not-found]

        print(f"llama_cpp {llama_cpp.__version__} importable (model-level comparison: benchmarks/engine.py)")
    except ImportError:
        print("llama_cpp not importable: absolute figures only")
    rows = []
    print(f"{'type':6} {'N x K':>11} {'thr':>3} {'time':>4} | {'GEMV ms':>8} {'GB/s':>6} | {'GEMM ms':>8} "
          f"{'GFLOP/s':>8}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    saved = torch.get_num_threads()
    try:
        for qtype in args.types.split(","):
            for n, k in SHAPES:
                w = random_weight(qtype, n, k)
                x1 = torch.randn(1, k)
                xm = torch.randn(args.m, k)
                for threads in (int(t) for t in args.threads.split(",")):
                    torch.set_num_threads(threads)
                    row = {"type": qtype, "n": n, "k": k, "threads": threads, "m": args.m}
                    # wall time; with one thread also the thread's CPU time, which other processes on a shared
                    # machine do not inflate (the fair per-core figure there)
                    clocks = {"wall": time.perf_counter, "cpu": time.thread_time} if threads == 1 else \
                        {"wall": time.perf_counter}
                    for name, clock in clocks.items():
                        t1 = timed(lambda: ck.matmul(x1, w), clock)  # noqa: B023
                        tm = timed(lambda: ck.matmul(xm, w), clock, min_time=0.5, min_reps=2)  # noqa: B023
                        row[f"gemv_ms_{name}"] = t1 * 1e3
                        row[f"gemv_gbs_{name}"] = w.nbytes / t1 / 1e9
                        row[f"gemm_ms_{name}"] = tm * 1e3
                        row[f"gemm_gflops_{name}"] = 2 * args.m * n * k / tm / 1e9
                        print(f"{qtype:6} {n:>5}x{k:<5} {threads:>3} {name:>4} | {row[f'gemv_ms_{name}']:8.3f} "
                              f"{row[f'gemv_gbs_{name}']:6.1f} | {row[f'gemm_ms_{name}']:8.1f} "
                              f"{row[f'gemm_gflops_{name}']:8.1f}", flush=True)
                    rows.append(row)
    finally:
        torch.set_num_threads(saved)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
