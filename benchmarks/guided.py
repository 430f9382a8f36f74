"""Guided decoding benchmark (not a test): greedy decode tok/s with and without `allowed_identifiers`, and the
time spent computing the masks, on the default model.

    .venv/bin/python benchmarks/guided.py [--model default] [--members 77] [--max-tokens 32] [--repeats 3]

Free and guided run alternately on the same loaded engine, best of --repeats each (the ratio holds on a busy
machine); the guide's cache is cleared before each guided run, so its mask time is the uncached one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = (
    "class Shape:\n    def __init__(self, w, h):\n        self.qwidth = w\n        self.qheight = h\n\n"
    "    def area(self):\n        return self."
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--members", type=int, default=77, help="allowed names (a large sympy class has ~80-250)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    from model_backend.engine import Engine
    from model_backend.sequences import SamplingParams

    torch.set_num_threads(1)
    engine = Engine.load(args.model, device="cpu", max_batch=2, max_seq_len=2048, progress=False)
    engine.wait_packed()
    t0 = time.perf_counter()
    engine.guide._tables()
    print(f"guide tables (once per engine): {1000 * (time.perf_counter() - t0):.0f} ms")
    members = tuple([f"m_{i}_name" for i in range(args.members - 2)] + ["qwidth", "qheight"])
    spent: list[float] = []
    allowed = engine.guide.allowed

    def timed(*a):
        t = time.perf_counter()
        out = allowed(*a)
        spent.append(time.perf_counter() - t)
        return out

    engine.guide.allowed = timed  # type: ignore[method-assign]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, choices in (("free", None), ("guided", members)):
            engine.guide._cache.clear()
            spent.clear()
            s0, g0 = engine.stats.decode_seconds, engine.stats.generated_tokens
            params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, allowed_identifiers=choices)
            text = engine.generate(PROMPT, params)[0].text
            rate = (engine.stats.generated_tokens - g0) / (engine.stats.decode_seconds - s0)
            best[name] = max(best.get(name, 0.0), rate)
            print(
                f"{name:6s} decode {rate:5.1f} tok/s, mask {len(spent)} calls {1000 * sum(spent):6.1f} ms  {text[:30]!r}"
            )
    print(f"best of {args.repeats}: free {best['free']:.1f} tok/s, guided {best['guided']:.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
